/* ops_moe.cu — the mixture-of-experts ops on CUDA (core/ops_moe.c is the reference; core/ops_moe.h the maths):
 * f32 or bf16 storage, fp32 arithmetic, every result deterministic (no float atomics):
 *   moe_route           one warp per token: softmax statistics, top-k by repeated warp argmax (ties to the lower
 *                       index), weights; counts by integer atomics; P and the z-loss by fixed-order block sums.
 *   moe_permute         stable counting sort: the slots in chunks of CHUNK, one thread per chunk counts its slots per
 *                       expert, a scan over (expert, chunk) gives each chunk its first row per expert, the chunk's
 *                       thread then hands out rows in slot order; then a row copy. One sync (the index check).
 *   moe_grouped_matmul  one cuBLAS GEMM per non-empty expert group (cublasGemmEx at pointer offsets; the offsets are
 *                       read to the host: one sync), fp32 accumulation, bf16 tensor cores with bf16 products.
 *                       With M2_MOE_GROUPED=1 and bf16 products: cuda/moe_gmm_tc.cu's grouped kernels instead, the
 *                       offsets staying on the device (no sync; off by default until measured).
 *   moe_unpermute       each output element gathers its token's k rows in j order; backward writes each yp row once
 *                       (pos is a permutation) and dweights by a warp dot product. One sync (the pos range check). */
#include "ops.h"
#include <cublas_v2.h>
#include <stdlib.h>
#include "ops_common.cuh"
#include "moe_gmm_tc.h"
#include "../core/ops_moe.h"

#define M2_CUBLAS_TRY(call)                                                                              \
  do {                                                                                                   \
    cublasStatus_t m2_b_ = (call);                                                                       \
    if (m2_b_ != CUBLAS_STATUS_SUCCESS)                                                                  \
      return m2_fail(M2_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cublasGetStatusString(m2_b_), __FILE__, __LINE__); \
  } while (0)

#define MAX_GPUS 16
static cublasHandle_t g_moe_handle[MAX_GPUS];

/* The cuBLAS handle of a device for this file's GEMMs, bound to its stream. */
static m2_status moe_handle(m2_device dev, cublasHandle_t *h) {
  if (dev.index < 0 || dev.index >= MAX_GPUS) return m2_fail(M2_ERR_DEVICE, "cuda:%d: no cuBLAS handle slot", dev.index);
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  M2_CUDA_TRY(cudaSetDevice(dev.index));
  if (!g_moe_handle[dev.index]) M2_CUBLAS_TRY(cublasCreate(&g_moe_handle[dev.index]));
  M2_CUBLAS_TRY(cublasSetStream(g_moe_handle[dev.index], st));
  *h = g_moe_handle[dev.index];
  return M2_OK;
}

static m2_status launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? M2_OK : m2_fail(M2_ERR_CUDA, "%s: launch failed: %s", what, cudaGetErrorString(e));
}

/* ---------------- moe_route ---------------- */

/* key order of the top-k: a before b when a's logit is larger, or equal with a lower index */
__device__ __forceinline__ bool key_before(float va, int64_t ia, float vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

/* one warp per token n: p (N, E) f32 = softmax, lse2 (N) = lse^2, indices / weights (N, k), counts (E) += */
template <class T>
__global__ void k_route_fwd(const T *lg, int64_t N, int64_t E, int64_t k, float *p, float *lse2, int64_t *idx, T *w,
                            unsigned long long *counts) {
  const int64_t n = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
  const int lane = threadIdx.x;
  if (n >= N) return;
  const T *row = lg + n * E;
  float m = -INFINITY, s = 0;
  for (int64_t i = lane; i < E; i += 32) sm_push(m, s, to_f(row[i]));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  const float lse = (m == -INFINITY ? 0.0f : m) + logf(s);
  for (int64_t i = lane; i < E; i += 32) p[n * E + i] = expf(to_f(row[i]) - lse);
  if (lane == 0) lse2[n] = lse * lse;
  /* top-k: the j-th choice is the first in key order among the keys after the (j-1)-th */
  float pv = INFINITY, v0 = 0, wsum = 0;
  int64_t pi = -1;
  for (int64_t j = 0; j < k; j++) {
    float bv = 0;
    int64_t bi = -1;
    for (int64_t i = lane; i < E; i += 32) {
      float v = to_f(row[i]);
      bool after = pi < 0 || key_before(pv, pi, v, i);
      if (after && (bi < 0 || key_before(v, i, bv, bi))) bv = v, bi = i;
    }
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi >= 0 && (bi < 0 || key_before(ov, oi, bv, bi))) bv = ov, bi = oi;
    }
    if (bi < 0) bi = j < E ? j : 0, bv = to_f(row[bi]); /* only NaNs left: any valid expert, never out of range */
    if (j == 0) v0 = bv;
    wsum += expf(bv - v0);
    if (lane == 0) {
      idx[n * k + j] = bi;
      atomicAdd(&counts[bi], 1ull);
    }
    pv = bv, pi = bi;
  }
  __syncwarp(); /* lane 0's indices are visible to the whole warp */
  for (int64_t j = lane; j < k; j += 32) w[n * k + j] = from_f<T>(expf(to_f(row[idx[n * k + j]]) - v0) / wsum);
}

/* block e < E: P[e] = sum_n p[n, e]; block E: zsum = sum_n lse2[n] (fixed order: deterministic) */
__global__ void k_route_colsum(const float *p, const float *lse2, int64_t N, int64_t E, float *P) {
  __shared__ float sh[32];
  const int64_t e = blockIdx.x;
  float s = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) s += e < E ? p[n * E + e] : lse2[n];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) P[e] = s;
}

/* aux[0] = E sum_e (counts_e / (N k)) (P_e / N), aux[1] = zsum / N */
template <class T>
__global__ void k_route_aux(const float *P, const unsigned long long *counts, int64_t N, int64_t E, int64_t k, T *aux) {
  __shared__ float sh[32];
  float s = 0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) s += (float)counts[e] * P[e];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    aux[0] = from_f<T>(N > 0 ? (float)E * s / ((float)N * (float)k * (float)N) : 0.0f);
    aux[1] = from_f<T>(N > 0 ? P[E] / (float)N : 0.0f);
  }
}

extern "C" m2_status m2_cuda_moe_route_fwd(m2_opcall *c) {
  m2_tensor *lg = c->in[0];
  const int64_t k = M2_ATTR(c, m2_moe_route_attr)->top_k;
  M2_TRY(m2_moe_route_check(lg, k, cu_check_float));
  const int64_t N = lg->shape[0], E = lg->shape[1];
  cudaStream_t st;
  M2_TRY(cu_stream(lg->device, &st));
  m2_device dev = lg->device;
  m2_tensor *w = m2_empty_v(lg->dtype, dev, 2, (int64_t)(N), (int64_t)(k)), *idx = m2_empty_v(M2_I64, dev, 2, (int64_t)(N), (int64_t)(k));
  m2_tensor *aux = m2_empty_v(lg->dtype, dev, 1, (int64_t)(2)), *cnt = cu_zeros(M2_I64, dev, 1, &E);
  m2_tensor *p = cu_scratch_f32(dev, N * E > 0 ? N * E : 1), *l2 = cu_scratch_f32(dev, N > 0 ? N : 1);
  m2_tensor *P = cu_scratch_f32(dev, E + 1);
  m2_status s = w && idx && aux && cnt && p && l2 && P ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    if (N > 0) {
      dim3 blk(32, 8);
      CU_FLOAT_DISPATCH(lg->dtype, k_route_fwd<T><<<(unsigned)((N + 7) / 8), blk, 0, st>>>(
                                       PC(lg), N, E, k, (float *)m2_data(p), (float *)m2_data(l2), (int64_t *)m2_data(idx),
                                       PT(w), (unsigned long long *)m2_data(cnt)));
      s = launched("moe_route forward");
    }
    if (s == M2_OK) {
      k_route_colsum<<<(unsigned)(E + 1), 256, 0, st>>>((const float *)m2_data(p), (const float *)m2_data(l2), N, E,
                                                         (float *)m2_data(P));
      CU_FLOAT_DISPATCH(lg->dtype, k_route_aux<T><<<1, 256, 0, st>>>((const float *)m2_data(P),
                                                                    (const unsigned long long *)m2_data(cnt), N, E, k,
                                                                    PT(aux)));
      s = launched("moe_route forward (aux)");
    }
  }
  m2_release(p), m2_release(l2), m2_release(P);
  if (s != M2_OK) {
    m2_release(w), m2_release(idx), m2_release(aux), m2_release(cnt);
    return s;
  }
  c->n_out = 4;
  c->out[0] = w, c->out[1] = idx, c->out[2] = aux, c->out[3] = cnt;
  return M2_OK;
}

/* one warp per token: dl = p (a - p.a) + gz p, plus the chosen k's softmax backward */
template <class T>
__global__ void k_route_bwd(const T *lg, const T *w, const int64_t *idx, const unsigned long long *counts, const T *gw,
                            const T *ga, int64_t N, int64_t E, int64_t k, T *dl) {
  const int64_t n = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
  const int lane = threadIdx.x;
  if (n >= N) return;
  const T *row = lg + n * E;
  const float glb = to_f(ga[0]), gz0 = to_f(ga[1]);
  const float ca = glb * (float)E / ((float)N * (float)k * (float)N); /* a_e = ca counts_e */
  float m = -INFINITY, s = 0;
  for (int64_t i = lane; i < E; i += 32) sm_push(m, s, to_f(row[i]));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  const float lse = (m == -INFINITY ? 0.0f : m) + logf(s);
  float pa = 0;
  for (int64_t i = lane; i < E; i += 32) pa += expf(to_f(row[i]) - lse) * ca * (float)counts[i];
  pa = warp_sum(pa);
  const float gz = gz0 * 2.0f * lse / (float)N;
  float wg = 0;
  for (int64_t j = lane; j < k; j += 32) wg += to_f(w[n * k + j]) * to_f(gw[n * k + j]);
  wg = warp_sum(wg);
  for (int64_t i = lane; i < E; i += 32) {
    float pi = expf(to_f(row[i]) - lse), d = pi * (ca * (float)counts[i] - pa) + gz * pi;
    for (int64_t j = 0; j < k; j++) /* the chosen experts are distinct: one term at most */
      if (idx[n * k + j] == i) d += to_f(w[n * k + j]) * (to_f(gw[n * k + j]) - wg);
    dl[n * E + i] = from_f<T>(d);
  }
}

extern "C" m2_status m2_cuda_moe_route_bwd(m2_opcall *c) {
  m2_tensor *lg = c->in[0];
  const int64_t k = M2_ATTR(c, m2_moe_route_attr)->top_k;
  M2_TRY(m2_moe_route_check(lg, k, cu_check_float));
  const int64_t N = lg->shape[0], E = lg->shape[1];
  cudaStream_t st;
  M2_TRY(cu_stream(lg->device, &st));
  m2_tensor *gw = cu_as(c->dout[0], lg->dtype), *ga = gw ? cu_as(c->dout[2], lg->dtype) : NULL;
  m2_tensor *dl = ga ? m2_empty(lg->dtype, lg->device, 2, lg->shape) : NULL;
  m2_status s = dl ? M2_OK : m2_errcode();
  if (s == M2_OK && N > 0) {
    dim3 blk(32, 8);
    CU_FLOAT_DISPATCH(lg->dtype, k_route_bwd<T><<<(unsigned)((N + 7) / 8), blk, 0, st>>>(
                                     PC(lg), PC(c->out[0]), (const int64_t *)m2_data(c->out[1]),
                                     (const unsigned long long *)m2_data(c->out[3]), PC(gw), PC(ga), N, E, k, PT(dl)));
    s = launched("moe_route backward");
  }
  m2_release(gw), m2_release(ga);
  if (s != M2_OK) {
    m2_release(dl);
    return s;
  }
  c->din[0] = dl;
  return M2_OK;
}

/* ---------------- moe_permute ---------------- */

#define CHUNK 256 /* slots per counting thread */

/* thread c counts its chunk's slots per expert into hist[c, e]; a bad index flags its slot */
__global__ void k_perm_count(const void *ix, bool i64, int64_t M, int64_t E, int64_t nch, int64_t *hist,
                             unsigned long long *flag) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= nch) return;
  for (int64_t s = c * CHUNK; s < M && s < (c + 1) * CHUNK; s++) {
    int64_t e = ld_index(ix, i64, s);
    if (e < 0 || e >= E) cu_flag_bad(flag, s);
    else hist[c * E + e]++;
  }
}
/* thread e: hist[c, e] = the slots of expert e in chunks before c; total[e] = all of them */
__global__ void k_perm_scan_chunks(int64_t *hist, int64_t nch, int64_t E, int64_t *total) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  int64_t run = 0;
  for (int64_t c = 0; c < nch; c++) {
    int64_t t = hist[c * E + e];
    hist[c * E + e] = run;
    run += t;
  }
  total[e] = run;
}
/* one thread: offsets = exclusive prefix sums of total (E + 1) */
__global__ void k_perm_offsets(const int64_t *total, int64_t E, int64_t *off) {
  int64_t run = 0;
  for (int64_t e = 0; e < E; e++) off[e] = run, run += total[e];
  off[E] = run;
}
/* thread c hands out rows to its slots in order: pos[s] = off[e] + hist[c, e]++ */
__global__ void k_perm_assign(const void *ix, bool i64, int64_t M, int64_t E, int64_t nch, const int64_t *off,
                              int64_t *hist, int64_t *pos) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= nch) return;
  for (int64_t s = c * CHUNK; s < M && s < (c + 1) * CHUNK; s++) {
    int64_t e = ld_index(ix, i64, s);
    pos[s] = off[e] + hist[c * E + e]++;
  }
}
/* xp[pos[s], i] = x[s / k, i] */
template <class T>
__global__ void k_perm_rows(const T *x, const int64_t *pos, int64_t M, int64_t k, int64_t d, T *xp) {
  CU_GRID_STRIDE(t, M * d) {
    int64_t s = t / d, i = t - s * d;
    xp[pos[s] * d + i] = x[(s / k) * d + i];
  }
}

extern "C" m2_status m2_cuda_moe_permute_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *ix = c->in[1];
  const int64_t E = M2_ATTR(c, m2_moe_permute_attr)->experts;
  M2_TRY(m2_moe_permute_check(x, ix, E, cu_check_float));
  const int64_t N = x->shape[0], d = x->shape[1], k = ix->shape[1], M = N * k, nch = (M + CHUNK - 1) / CHUNK;
  m2_device dev = x->device;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  const bool i64 = ix->dtype == M2_I64;
  m2_tensor *xp = m2_empty_v(x->dtype, dev, 2, (int64_t)(M), (int64_t)(d)), *pos = m2_empty_v(M2_I64, dev, 2, (int64_t)(N), (int64_t)(k));
  m2_tensor *off = m2_empty_v(M2_I64, dev, 1, (int64_t)(E + 1)), *tot = m2_empty_v(M2_I64, dev, 1, (int64_t)(E));
  const int64_t nh = nch * E > 0 ? nch * E : 1;
  m2_tensor *hist = cu_zeros(M2_I64, dev, 1, &nh), *flag = cu_flag_new(dev);
  m2_status s = xp && pos && off && tot && hist && flag ? M2_OK : m2_errcode();
  int64_t *ph = s == M2_OK ? (int64_t *)m2_data(hist) : NULL;
  if (s == M2_OK && nch > 0) {
    k_perm_count<<<cu_grid(nch, 128), 128, 0, st>>>(m2_data(ix), i64, M, E, nch, ph,
                                                     (unsigned long long *)m2_data(flag));
    s = launched("moe_permute forward (count)");
    int64_t bad = -1;
    if (s == M2_OK) s = cu_flag_read(flag, &bad);
    if (s == M2_OK && bad >= 0)
      s = m2_fail(M2_ERR_INDEX, "moe_permute: indices[%lld, %lld] = %lld is not an expert in [0, %lld)",
                  (long long)(bad / k), (long long)(bad % k), (long long)cu_int_at(ix, bad), (long long)E);
  }
  if (s == M2_OK) {
    k_perm_scan_chunks<<<cu_grid(E, 128), 128, 0, st>>>(ph, nch, E, (int64_t *)m2_data(tot));
    k_perm_offsets<<<1, 1, 0, st>>>((const int64_t *)m2_data(tot), E, (int64_t *)m2_data(off));
    if (nch > 0) {
      k_perm_assign<<<cu_grid(nch, 128), 128, 0, st>>>(m2_data(ix), i64, M, E, nch, (const int64_t *)m2_data(off), ph,
                                                        (int64_t *)m2_data(pos));
      CU_FLOAT_DISPATCH(x->dtype, k_perm_rows<T><<<cu_grid(M * d, 256), 256, 0, st>>>(
                                      PC(x), (const int64_t *)m2_data(pos), M, k, d, PT(xp)));
    }
    s = launched("moe_permute forward");
  }
  m2_release(tot), m2_release(hist), m2_release(flag);
  if (s != M2_OK) {
    m2_release(xp), m2_release(pos), m2_release(off);
    return s;
  }
  c->n_out = 3;
  c->out[0] = xp, c->out[1] = pos, c->out[2] = off;
  return M2_OK;
}

/* dx[n, i] = sum_j dxp[pos[n, j], i] (j in order) */
template <class T>
__global__ void k_perm_bwd(const T *g, const int64_t *pos, int64_t N, int64_t k, int64_t d, T *dx) {
  CU_GRID_STRIDE(t, N * d) {
    int64_t n = t / d, i = t - n * d;
    float s = 0;
    for (int64_t j = 0; j < k; j++) s += to_f(g[pos[n * k + j] * d + i]);
    dx[t] = from_f<T>(s);
  }
}

extern "C" m2_status m2_cuda_moe_permute_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const int64_t N = x->shape[0], d = x->shape[1], k = c->in[1]->shape[1];
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  m2_tensor *g = cu_as(c->dout[0], x->dtype), *dx = g ? m2_empty(x->dtype, x->device, 2, x->shape) : NULL;
  m2_status s = dx ? M2_OK : m2_errcode();
  if (s == M2_OK && N * d > 0) {
    CU_FLOAT_DISPATCH(x->dtype, k_perm_bwd<T><<<cu_grid(N * d, 256), 256, 0, st>>>(
                                    PC(g), (const int64_t *)m2_data(c->out[1]), N, k, d, PT(dx)));
    s = launched("moe_permute backward");
  }
  m2_release(g);
  if (s != M2_OK) {
    m2_release(dx);
    return s;
  }
  c->din[0] = dx;
  return M2_OK;
}

/* ---------------- moe_grouped_matmul ---------------- */

/* Row-major C (rows, cols) = opX(X) (rows, inner) opY(Y) (inner, cols) on cuBLAS (column-major: C^T = opY^T opX^T).
 * X (rows, inner) [tx: (inner, rows)], Y (inner, cols) [ty: (cols, inner)]; operands of type ct, C of type cc. */
static m2_status gemm(cublasHandle_t h, cudaDataType_t ct, cudaDataType_t cc, bool tx, bool ty, int64_t rows,
                      int64_t cols, int64_t inner, const void *X, const void *Y, void *C) {
  int m = (int)cols, n = (int)rows, kk = (int)inner;
  int lda = ty ? kk : m, ldb = tx ? n : kk;
  float one = 1.0f, zero = 0.0f;
  M2_CUBLAS_TRY(cublasGemmEx(h, ty ? CUBLAS_OP_T : CUBLAS_OP_N, tx ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, kk, &one, Y, ct,
                             lda, X, ct, ldb, &zero, C, cc, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return M2_OK;
}

/* the offsets on the host, checked (synchronises the stream); *out is malloc'd */
static m2_status host_offsets(const m2_tensor *off, int64_t E, int64_t M, int64_t **out) {
  int64_t *h = (int64_t *)malloc((size_t)(E + 1) * sizeof *h);
  if (!h) return m2_fail(M2_ERR_OOM, "moe_grouped_matmul: out of host memory");
  m2_status s = m2_memcpy(M2_DEV_CPU, h, off->device, m2_data(off), (size_t)(E + 1) * sizeof *h);
  if (s == M2_OK) s = m2_moe_offsets_valid(h, E, M);
  if (s != M2_OK) {
    free(h);
    return s;
  }
  *out = h;
  return M2_OK;
}

extern "C" m2_status m2_cuda_moe_grouped_matmul_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *w = c->in[1], *off = c->in[2];
  M2_TRY(m2_moe_gmm_check(x, w, off, cu_check_float));
  const int64_t M = x->shape[0], E = w->shape[0], O = w->shape[1], Din = w->shape[2];
  const bool x16 = M2_ATTR(c, m2_moe_gmm_attr)->bf16;
  if ((x16 || x->dtype == M2_BF16) && m2_moe_grouped_enabled() && m2_moe_grouped_fits(M, E, O, Din)) {
    m2_tensor *x2 = cu_as(x, M2_BF16), *w2 = x2 ? cu_as(w, M2_BF16) : NULL, *y = NULL;
    m2_status s = w2 ? m2_moe_gmm_tc_fwd(x2, w2, off, x->dtype, &y) : m2_errcode();
    m2_release(x2), m2_release(w2);
    if (s != M2_OK) return s;
    c->n_out = 1;
    c->out[0] = y;
    return M2_OK;
  }
  int64_t *po = NULL;
  M2_TRY(host_offsets(off, E, M, &po));
  m2_tensor *x2 = x16 ? cu_as(x, M2_BF16) : (m2_retain(x), x), *w2 = x2 ? (x16 ? cu_as(w, M2_BF16) : (m2_retain(w), w)) : NULL;
  const int64_t ys[2] = {M, O};
  m2_tensor *y = w2 ? (Din == 0 ? cu_zeros : m2_empty)(x->dtype, x->device, 2, ys) : NULL;
  m2_status s = y ? M2_OK : m2_errcode();
  cublasHandle_t h = NULL;
  if (s == M2_OK && M > 0) s = moe_handle(x->device, &h);
  const cudaDataType_t ct = x2 && x2->dtype == M2_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t cc = x->dtype == M2_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const size_t es = x2 ? m2_elsize(x2) : 0, eo = m2_elsize(x);
  for (int64_t e = 0; s == M2_OK && e < E; e++) { /* y[group e] (rows, O) = x[group e] (rows, Din) w[e]^T */
    const int64_t rows = po[e + 1] - po[e];
    if (rows == 0 || O == 0 || Din == 0) continue; /* Din == 0: y is zeros */
    s = gemm(h, ct, cc, false, true, rows, O, Din, (const char *)m2_data(x2) + (size_t)(po[e] * Din) * es,
             (const char *)m2_data(w2) + (size_t)(e * O * Din) * es, (char *)m2_data(y) + (size_t)(po[e] * O) * eo);
  }
  free(po);
  m2_release(x2), m2_release(w2);
  if (s != M2_OK) {
    m2_release(y);
    return s;
  }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

extern "C" m2_status m2_cuda_moe_grouped_matmul_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *w = c->in[1], *off = c->in[2];
  M2_TRY(m2_moe_gmm_check(x, w, off, cu_check_float));
  const int64_t M = x->shape[0], E = w->shape[0], O = w->shape[1], Din = w->shape[2];
  const bool x16 = M2_ATTR(c, m2_moe_gmm_attr)->bf16;
  const m2_dtype ot = x16 ? M2_BF16 : x->dtype; /* the products' operand dtype */
  if (ot == M2_BF16 && m2_moe_grouped_enabled() && m2_moe_grouped_fits(M, E, O, Din)) {
    m2_tensor *g = cu_as(c->dout[0], M2_BF16), *x2 = g ? cu_as(x, M2_BF16) : NULL, *w2 = x2 ? cu_as(w, M2_BF16) : NULL;
    m2_tensor *dx = NULL, *dw = NULL;
    m2_status s = w2 ? m2_moe_gmm_tc_bwd(x2, w2, off, g, x->dtype, c->needs_din[0], c->needs_din[1], &dx, &dw)
                     : m2_errcode();
    m2_release(g), m2_release(x2), m2_release(w2);
    if (s != M2_OK) return s;
    c->din[0] = dx;
    c->din[1] = dw;
    return M2_OK;
  }
  int64_t *po = NULL;
  M2_TRY(host_offsets(off, E, M, &po));
  m2_tensor *g = cu_as(c->dout[0], ot), *x2 = g ? cu_as(x, ot) : NULL, *w2 = x2 ? cu_as(w, ot) : NULL;
  m2_tensor *dx = w2 && c->needs_din[0] ? cu_zeros(x->dtype, x->device, 2, x->shape) : NULL;
  m2_tensor *dw = w2 && c->needs_din[1] ? cu_zeros(w->dtype, w->device, 3, w->shape) : NULL; /* empty groups: 0 */
  m2_status s = w2 && (dx || !c->needs_din[0]) && (dw || !c->needs_din[1]) ? M2_OK : m2_errcode();
  cublasHandle_t h = NULL;
  if (s == M2_OK && M > 0) s = moe_handle(x->device, &h);
  const cudaDataType_t ct = ot == M2_BF16 ? CUDA_R_16BF : CUDA_R_32F, cc = x->dtype == M2_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const size_t es = m2_dtype_size(ot), eo = m2_elsize(x);
  for (int64_t e = 0; s == M2_OK && e < E; e++) {
    const int64_t r0 = po[e], rows = po[e + 1] - po[e];
    if (rows == 0 || O == 0 || Din == 0) continue;
    const char *pg = (const char *)m2_data(g) + (size_t)(r0 * O) * es;
    if (dx) /* dx[group] (rows, Din) = dy[group] (rows, O) w[e] (O, Din) */
      s = gemm(h, ct, cc, false, false, rows, Din, O, pg, (const char *)m2_data(w2) + (size_t)(e * O * Din) * es,
               (char *)m2_data(dx) + (size_t)(r0 * Din) * eo);
    if (s == M2_OK && dw) /* dw[e] (O, Din) = dy[group]^T (O, rows) x[group] (rows, Din) */
      s = gemm(h, ct, cc, true, false, O, Din, rows, pg, (const char *)m2_data(x2) + (size_t)(r0 * Din) * es,
               (char *)m2_data(dw) + (size_t)(e * O * Din) * eo);
  }
  free(po);
  m2_release(g), m2_release(x2), m2_release(w2);
  if (s != M2_OK) {
    m2_release(dx), m2_release(dw);
    return s;
  }
  c->din[0] = dx;
  c->din[1] = dw;
  return M2_OK;
}

/* ---------------- moe_unpermute ---------------- */

/* y[n, i] = sum_j w[n, j] yp[pos[n, j], i] (j in order); a pos out of [0, M) is flagged and skipped */
template <class T>
__global__ void k_unperm_fwd(const T *yp, const T *w, const void *pos, bool i64, int64_t N, int64_t k, int64_t d,
                             T *y, unsigned long long *flag) {
  const int64_t M = N * k;
  CU_GRID_STRIDE(t, N * d) {
    int64_t n = t / d, i = t - n * d;
    float s = 0;
    for (int64_t j = 0; j < k; j++) {
      int64_t r = ld_index(pos, i64, n * k + j);
      if (r < 0 || r >= M) {
        cu_flag_bad(flag, n * k + j);
        continue;
      }
      s += to_f(w[n * k + j]) * to_f(yp[r * d + i]);
    }
    y[t] = from_f<T>(s);
  }
}

extern "C" m2_status m2_cuda_moe_unpermute_fwd(m2_opcall *c) {
  m2_tensor *yp = c->in[0], *wt = c->in[1], *pos = c->in[2];
  M2_TRY(m2_moe_unpermute_check(yp, wt, pos, cu_check_float));
  const int64_t N = wt->shape[0], k = wt->shape[1], d = yp->shape[1];
  cudaStream_t st;
  M2_TRY(cu_stream(yp->device, &st));
  m2_tensor *y = m2_empty_v(yp->dtype, yp->device, 2, (int64_t)(N), (int64_t)(d)), *flag = y ? cu_flag_new(yp->device) : NULL;
  m2_status s = flag ? M2_OK : m2_errcode();
  if (s == M2_OK && N * d > 0) {
    CU_FLOAT_DISPATCH(yp->dtype, k_unperm_fwd<T><<<cu_grid(N * d, 256), 256, 0, st>>>(
                                     PC(yp), PC(wt), m2_data(pos), pos->dtype == M2_I64, N, k, d, PT(y),
                                     (unsigned long long *)m2_data(flag)));
    s = launched("moe_unpermute forward");
    int64_t bad = -1;
    if (s == M2_OK) s = cu_flag_read(flag, &bad);
    if (s == M2_OK && bad >= 0)
      s = m2_fail(M2_ERR_INDEX, "moe_unpermute: pos[%lld, %lld] = %lld is out of range (pos must be a permutation of "
                                "the %lld rows of yp, as moe_permute gives)", (long long)(bad / k), (long long)(bad % k),
                  (long long)cu_int_at(pos, bad), (long long)(N * k));
  }
  m2_release(flag);
  if (s != M2_OK) {
    m2_release(y);
    return s;
  }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

/* dyp[pos[n, j], i] = w[n, j] dy[n, i] (each row written once) */
template <class T>
__global__ void k_unperm_dyp(const T *g, const T *w, const void *pos, bool i64, int64_t N, int64_t k, int64_t d,
                             T *dyp) {
  const int64_t M = N * k;
  CU_GRID_STRIDE(t, M * d) {
    int64_t s = t / d, i = t - s * d, r = ld_index(pos, i64, s);
    if (r >= 0 && r < M) dyp[r * d + i] = from_f<T>(to_f(w[s]) * to_f(g[(s / k) * d + i]));
  }
}
/* one warp per slot s = (n, j): dw[s] = dy[n] . yp[pos[s]] */
template <class T>
__global__ void k_unperm_dw(const T *g, const T *yp, const void *pos, bool i64, int64_t N, int64_t k, int64_t d, T *dw) {
  const int64_t s = (int64_t)blockIdx.x * blockDim.y + threadIdx.y, M = N * k;
  if (s >= M) return;
  int64_t r = ld_index(pos, i64, s), n = s / k;
  float acc = 0;
  if (r >= 0 && r < M)
    for (int64_t i = threadIdx.x; i < d; i += 32) acc += to_f(g[n * d + i]) * to_f(yp[r * d + i]);
  acc = warp_sum(acc);
  if (threadIdx.x == 0) dw[s] = from_f<T>(acc);
}

extern "C" m2_status m2_cuda_moe_unpermute_bwd(m2_opcall *c) {
  m2_tensor *yp = c->in[0], *wt = c->in[1], *pos = c->in[2];
  const int64_t N = wt->shape[0], k = wt->shape[1], d = yp->shape[1], M = N * k;
  const m2_dtype dt = yp->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(yp->device, &st));
  const bool i64 = pos->dtype == M2_I64;
  m2_tensor *g = cu_as(c->dout[0], dt);
  m2_tensor *dyp = g && c->needs_din[0] ? cu_zeros(dt, yp->device, 2, yp->shape) : NULL;
  m2_tensor *dw = g && c->needs_din[1] ? m2_empty(dt, wt->device, 2, wt->shape) : NULL;
  m2_status s = g && (dyp || !c->needs_din[0]) && (dw || !c->needs_din[1]) ? M2_OK : m2_errcode();
  if (s == M2_OK && dyp && M * d > 0)
    CU_FLOAT_DISPATCH(dt, k_unperm_dyp<T><<<cu_grid(M * d, 256), 256, 0, st>>>(PC(g), PC(wt), m2_data(pos), i64, N, k,
                                                                              d, PT(dyp)));
  if (s == M2_OK && dw && M > 0) {
    dim3 blk(32, 8);
    CU_FLOAT_DISPATCH(dt, k_unperm_dw<T><<<(unsigned)((M + 7) / 8), blk, 0, st>>>(PC(g), PC(yp), m2_data(pos), i64, N,
                                                                                 k, d, PT(dw)));
  }
  if (s == M2_OK) s = launched("moe_unpermute backward");
  m2_release(g);
  if (s != M2_OK) {
    m2_release(dyp), m2_release(dw);
    return s;
  }
  c->din[0] = dyp;
  c->din[1] = dw;
  return M2_OK;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_moe(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_moe_route, m2_cuda_moe_route_fwd, m2_cuda_moe_route_bwd},
      {&m2_op_moe_permute, m2_cuda_moe_permute_fwd, m2_cuda_moe_permute_bwd},
      {&m2_op_moe_grouped_matmul, m2_cuda_moe_grouped_matmul_fwd, m2_cuda_moe_grouped_matmul_bwd},
      {&m2_op_moe_unpermute, m2_cuda_moe_unpermute_fwd, m2_cuda_moe_unpermute_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
