/* sample.cu — the temperature-only sampler of core/sample.h on the GPU (the backend's sample_rows hook): one block
 * per row of logits, so that generation copies B ids to the host per token instead of B * V logits (25.7 MB at
 * B = 64, V = 100352). core/sample.c keeps top-k and top-p on the host, and is the reference this kernel is tested
 * against (tests/cuda_sample.c).
 *
 * Per row (V logits x, F32 or BF16), as core/sample.c computes them, in float64:
 *   pass 1  the first NaN / +inf position (an error the host names), and the first largest x (greedy's answer);
 *   pass 2  (temperature > 0) e_i = exp(x_i / t - x_max / t); each thread sums its contiguous segment of ids in id
 *           order, a block scan gives every segment's start, and the thread whose segment holds u * sum(e) walks
 *           it: the first id where the running sum passes u * sum(e) is the token (the host's inverse CDF; only the
 *           grouping of the additions differs, a relative 1e-16). Never an id of probability 0: if rounding puts
 *           the target past the end, the last id with e_i > 0. */
#include <cuda_runtime.h>
#include "cuda_backend.h"
#include "ops_common.cuh"
extern "C" {
#include "../core/tensor.h"
}

#define SAMPLE_THREADS 512

template <class T>
__global__ void __launch_bounds__(SAMPLE_THREADS) k_sample_rows(const T *x, int64_t V, double temperature,
                                                                 const double *u, int64_t *ids, int64_t *bad) {
  const int64_t row = blockIdx.x;
  const T *xr = x + row * V;
  const int tid = threadIdx.x;
  const int64_t seg = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS, i0 = tid * seg, i1 = min(V, i0 + seg);
  __shared__ double s_val[SAMPLE_THREADS];
  __shared__ int64_t s_idx[SAMPLE_THREADS];
  __shared__ int64_t s_bad[SAMPLE_THREADS];

  /* pass 1: first bad position (2 pos + isinf), first largest */
  double best = -INFINITY;
  int64_t best_i = -1, first_bad = INT64_MAX;
  for (int64_t i = i0; i < i1; i++) {
    const double v = (double)to_f(xr[i]);
    if (v != v || v == INFINITY) {
      first_bad = 2 * i + (v == INFINITY);
      break;
    }
    if (v > best) best = v, best_i = i;
  }
  s_val[tid] = best, s_idx[tid] = best_i, s_bad[tid] = first_bad;
  __syncthreads();
  for (int s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
    if (tid < s) {
      const int o = tid + s;
      if (s_bad[o] < s_bad[tid]) s_bad[tid] = s_bad[o];
      /* a tree reduction pairs non-adjacent segments: at equal values the lower id wins explicitly */
      if (s_val[o] > s_val[tid] ||
          (s_val[o] == s_val[tid] && s_idx[o] >= 0 && (s_idx[tid] < 0 || s_idx[o] < s_idx[tid])))
        s_val[tid] = s_val[o], s_idx[tid] = s_idx[o];
    }
    __syncthreads();
  }
  const int64_t rbad = s_bad[0], rbest = s_idx[0];
  const double xmax = s_val[0];
  __syncthreads();
  if (rbad != INT64_MAX || rbest < 0) {
    if (tid == 0) bad[row] = rbad != INT64_MAX ? rbad : -2, ids[row] = -1;
    return;
  }
  if (temperature == 0) {
    if (tid == 0) bad[row] = -1, ids[row] = rbest;
    return;
  }

  /* pass 2: segment sums of e_i in id order, a block scan of them, the walk */
  const double zmax = xmax / temperature;
  double part = 0;
  int64_t last_pos = -1; /* the last id of this segment with e_i > 0 */
  for (int64_t i = i0; i < i1; i++) {
    const double e = exp((double)to_f(xr[i]) / temperature - zmax);
    part += e;
    if (e > 0) last_pos = i;
  }
  s_val[tid] = part, s_idx[tid] = last_pos;
  __syncthreads();
  /* inclusive scan (Hillis-Steele) of the segment sums; the last positive id by a max-reduction alongside */
  __shared__ double s_scan[SAMPLE_THREADS];
  s_scan[tid] = part;
  __syncthreads();
  for (int off = 1; off < SAMPLE_THREADS; off <<= 1) {
    const double add = tid >= off ? s_scan[tid - off] : 0;
    __syncthreads();
    s_scan[tid] += add;
    __syncthreads();
  }
  for (int s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
    if (tid < s && s_idx[tid + s] > s_idx[tid]) s_idx[tid] = s_idx[tid + s];
    __syncthreads();
  }
  const double total = s_scan[SAMPLE_THREADS - 1], target = u[row] * total;
  const double start = tid ? s_scan[tid - 1] : 0; /* the running sum before this segment: the intervals
                                                     [start, s_scan[tid]) partition [0, total) */
  if (tid == 0) ids[row] = s_idx[0], bad[row] = -1; /* target rounded to total: the last id that can be drawn */
  __syncthreads();
  if (start <= target && target < s_scan[tid]) {
    double cum = start;
    int64_t pick = last_pos; /* the walk's sum of this segment rounded below target: its last drawable id */
    for (int64_t i = i0; i < i1; i++) {
      cum += exp((double)to_f(xr[i]) / temperature - zmax);
      if (cum > target) {
        pick = i;
        break;
      }
    }
    ids[row] = pick;
  }
}

/* The backend hook (core/backend.h sample_rows): logits (rows, V) contiguous F32 / BF16 on one CUDA device; u, ids,
 * bad host arrays of rows. */
extern "C" m2_status m2_cuda_sample_rows(const m2_tensor *logits, double temperature, const double *u, int64_t *ids,
                                         int64_t *bad) {
  if (logits->device.type != M2_CUDA || !m2_is_contiguous(logits) ||
      (logits->dtype != M2_F32 && logits->dtype != M2_BF16))
    return m2_fail(M2_ERR_UNSUPPORTED, "sample (cuda): logits must be contiguous F32 or BF16 on a CUDA device");
  const int64_t V = logits->shape[logits->ndim - 1], rows = m2_numel(logits) / V;
  if (rows == 0) return M2_OK;
  if (rows > INT32_MAX) return m2_fail(M2_ERR_SHAPE, "sample (cuda): %lld rows is too many", (long long)rows);
  cudaStream_t st;
  M2_TRY(cu_stream(logits->device, &st));
  int64_t sh[1] = {rows}, sh2[1] = {2 * rows};
  m2_tensor *du = m2_from_data(M2_F64, logits->device, 1, sh, u);
  m2_tensor *dout = m2_empty(M2_I64, logits->device, 1, sh2); /* ids, then bad */
  m2_status s = du && dout ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    int64_t *d_ids = (int64_t *)m2_data(dout), *d_bad = d_ids + rows;
    CU_FLOAT_DISPATCH(logits->dtype, k_sample_rows<T><<<(unsigned)rows, SAMPLE_THREADS, 0, st>>>(
                                         (const T *)m2_data(logits), V, temperature, (const double *)m2_data(du),
                                         d_ids, d_bad));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_DEVICE, "sample (cuda): launch failed: %s", cudaGetErrorString(e));
  }
  if (s == M2_OK) s = m2_memcpy(M2_DEV_CPU, ids, dout->device, m2_data(dout), sizeof(int64_t) * (size_t)rows);
  if (s == M2_OK)
    s = m2_memcpy(M2_DEV_CPU, bad, dout->device, (int64_t *)m2_data(dout) + rows, sizeof(int64_t) * (size_t)rows);
  m2_release(du);
  m2_release(dout);
  return s;
}
