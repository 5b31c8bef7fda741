/* ops_optim.cu — optimizer kernels for core/optim.c: SGD and AdamW updates on f32 master parameters
 * (the same float arithmetic as optim.c's f32 CPU kernels), deterministic sums of squares for the
 * global grad norm (double accumulation, fixed order) and in-place scaling for clipping. */
#include <stdlib.h>
#include "ops_common.cuh"

static m2_status check_f32(const m2_tensor *t, const char *what, const char *fn) {
  if (!t) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", fn, what);
  if (t->device.type != M2_CUDA) return m2_fail(M2_ERR_DEVICE, "%s: %s is not on a CUDA device", fn, what);
  if (t->dtype != M2_F32)
    return m2_fail(M2_ERR_DTYPE, "%s: %s is %s; the CUDA optimizer updates f32 (master) tensors", fn, what,
                   m2_dtype_name(t->dtype));
  if (!m2_is_contiguous(t)) return m2_fail(M2_ERR_UNSUPPORTED, "%s: %s is not contiguous", fn, what);
  return M2_OK;
}
static m2_status check_like(const m2_tensor *p, const m2_tensor *t, const char *what, const char *fn) {
  M2_TRY(check_f32(t, what, fn));
  if (!m2_device_eq(p->device, t->device) || m2_numel(p) != m2_numel(t))
    return m2_fail(M2_ERR_SHAPE, "%s: %s does not match the parameter (device or size)", fn, what);
  return M2_OK;
}

__global__ void k_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float mu, float wd, bool nesterov) {
  CU_GRID_STRIDE(i, n) {
    float d = g[i] + wd * p[i];
    if (buf) {
      float b = mu * buf[i] + d;
      buf[i] = b;
      d = nesterov ? d + mu * b : b;
    }
    p[i] -= lr * d;
  }
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2, float eps,
                        float decay, float step, float rbc2) {
  CU_GRID_STRIDE(i, n) {
    float pi = p[i], gi = g[i];
    pi -= decay * pi;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step * mi / (sqrtf(vi) * rbc2 + eps);
  }
}

extern "C" m2_status m2_cuda_sgd_update(m2_tensor *p, const m2_tensor *g, m2_tensor *buf, double lr, double momentum,
                                        double wd, bool nesterov) {
  const char *fn = "sgd (cuda)";
  M2_TRY(check_f32(p, "parameter", fn));
  M2_TRY(check_like(p, g, "gradient", fn));
  if (buf) M2_TRY(check_like(p, buf, "momentum buffer", fn));
  int64_t n = m2_numel(p);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(p->device, &st));
  k_sgd<<<cu_grid(n, 256), 256, 0, st>>>((float *)m2_data(p), (const float *)m2_data(g),
                                        buf ? (float *)m2_data(buf) : NULL, n, (float)lr, (float)momentum, (float)wd,
                                        nesterov);
  M2_CUDA_LAUNCH_CHECK("sgd");
  return M2_OK;
}

extern "C" m2_status m2_cuda_adamw_update(m2_tensor *p, const m2_tensor *g, m2_tensor *m, m2_tensor *v, double lr,
                                          double beta1, double beta2, double eps, double wd, double bc1, double bc2) {
  const char *fn = "adamw (cuda)";
  M2_TRY(check_f32(p, "parameter", fn));
  M2_TRY(check_like(p, g, "gradient", fn));
  M2_TRY(check_like(p, m, "exp_avg", fn));
  M2_TRY(check_like(p, v, "exp_avg_sq", fn));
  int64_t n = m2_numel(p);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(p->device, &st));
  /* scalars in double, then float: as optim.c's f32 kernel */
  float decay = (float)(lr * wd), step = (float)(lr / bc1), rbc2 = (float)(1.0 / sqrt(bc2));
  k_adamw<<<cu_grid(n, 256), 256, 0, st>>>((float *)m2_data(p), (const float *)m2_data(g), (float *)m2_data(m),
                                          (float *)m2_data(v), n, (float)beta1, (float)beta2, (float)eps, decay, step,
                                          rbc2);
  M2_CUDA_LAUNCH_CHECK("adamw");
  return M2_OK;
}

/* ---- sums of squares: per tensor, SQ_BLOCKS-at-most partials in double, then summed in order ---- */

#define SQ_BLOCKS 512
template <class T>
__global__ void k_sumsq_partial(const T *x, int64_t n, double *partial) {
  __shared__ double sh[256];
  double s = 0;
  CU_GRID_STRIDE(i, n) {
    double v = (double)to_f(x[i]);
    s += v * v;
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if ((int)threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}
/* out[i] = sum of partial[start[i] .. start[i] + count[i]) in order */
__global__ void k_sumsq_finish(const double *partial, const int *start, const int *count, int n, double *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double s = 0;
  for (int k = 0; k < count[i]; k++) s += partial[start[i] + k];
  out[i] = s;
}

/* The tensors of ts on device `dev` (others untouched): their sums into out. */
static m2_status sumsq_device(m2_tensor *const *ts, int n, int dev, double *out) {
  m2_device d = {M2_CUDA, dev};
  cudaStream_t st;
  M2_TRY(cu_stream(d, &st));
  int *start = (int *)calloc((size_t)n, sizeof(int)), *count = (int *)calloc((size_t)n, sizeof(int));
  double *res = (double *)calloc((size_t)n, sizeof(double));
  if (!start || !count || !res) {
    free(start); free(count); free(res);
    return m2_fail(M2_ERR_OOM, "grad norm: out of host memory");
  }
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    const m2_tensor *t = ts[i];
    if (!t || t->device.type != M2_CUDA || t->device.index != dev || m2_numel(t) == 0) continue;
    int64_t nb = (m2_numel(t) + 256 * 8 - 1) / (256 * 8);
    count[i] = (int)(nb < SQ_BLOCKS ? nb : SQ_BLOCKS);
    start[i] = (int)total;
    total += count[i];
  }
  m2_status s = M2_OK;
  int64_t tn = total > 0 ? total : 1, nn = n;
  m2_tensor *part = m2_empty(M2_F64, d, 1, &tn), *dres = m2_empty(M2_F64, d, 1, &nn);
  m2_tensor *dstart = m2_empty(M2_I32, d, 1, &nn), *dcount = m2_empty(M2_I32, d, 1, &nn);
  if (!part || !dres || !dstart || !dcount) s = m2_errcode();
  for (int i = 0; i < n && s == M2_OK; i++) {
    const m2_tensor *t = ts[i];
    if (!count[i]) continue;
    if (t->dtype != M2_F32 && t->dtype != M2_BF16)
      s = m2_fail(M2_ERR_DTYPE, "grad norm: tensor %d is %s; f32 or bf16 expected on cuda", i, m2_dtype_name(t->dtype));
    else if (!m2_is_contiguous(t))
      s = m2_fail(M2_ERR_UNSUPPORTED, "grad norm: tensor %d is not contiguous", i);
    else {
      double *pp = (double *)m2_data(part) + start[i];
      CU_FLOAT_DISPATCH(t->dtype, k_sumsq_partial<T><<<count[i], 256, 0, st>>>((const T *)m2_data(t), m2_numel(t), pp));
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "grad norm: launch failed: %s", cudaGetErrorString(e));
    }
  }
  if (s == M2_OK) s = m2_memcpy(d, m2_data(dstart), M2_DEV_CPU, start, sizeof(int) * (size_t)n);
  if (s == M2_OK) s = m2_memcpy(d, m2_data(dcount), M2_DEV_CPU, count, sizeof(int) * (size_t)n);
  if (s == M2_OK) {
    k_sumsq_finish<<<(n + 255) / 256, 256, 0, st>>>((const double *)m2_data(part), (const int *)m2_data(dstart),
                                                   (const int *)m2_data(dcount), n, (double *)m2_data(dres));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "grad norm: launch failed: %s", cudaGetErrorString(e));
  }
  if (s == M2_OK) s = m2_memcpy(M2_DEV_CPU, res, d, m2_data(dres), sizeof(double) * (size_t)n); /* synchronises */
  if (s == M2_OK)
    for (int i = 0; i < n; i++)
      if (count[i]) out[i] = res[i];
  m2_release(part); m2_release(dres); m2_release(dstart); m2_release(dcount);
  free(start); free(count); free(res);
  return s;
}

extern "C" m2_status m2_cuda_sumsq_many(m2_tensor *const *ts, int n, double *out) {
  if (n <= 0) return M2_OK;
  bool seen[64] = {0};
  for (int i = 0; i < n; i++) out[i] = 0;
  for (int i = 0; i < n; i++) {
    const m2_tensor *t = ts[i];
    if (!t || t->device.type != M2_CUDA) continue;
    int dev = t->device.index;
    if (dev < 0 || dev >= 64) return m2_fail(M2_ERR_DEVICE, "grad norm: device index %d out of range", dev);
    if (seen[dev]) continue;
    seen[dev] = true;
    M2_TRY(sumsq_device(ts, n, dev, out));
  }
  return M2_OK;
}

template <class T>
__global__ void k_scale_inplace(T *x, int64_t n, float s) {
  CU_GRID_STRIDE(i, n) x[i] = from_f<T>(to_f(x[i]) * s);
}

extern "C" m2_status m2_cuda_scale_(m2_tensor *t, double s) {
  if (t->device.type != M2_CUDA) return m2_fail(M2_ERR_DEVICE, "scale_ (cuda): tensor is not on a CUDA device");
  M2_TRY(cu_check_float(t, "scale_ (cuda)", "tensor"));
  if (!m2_is_contiguous(t)) return m2_fail(M2_ERR_UNSUPPORTED, "scale_ (cuda): tensor is not contiguous");
  int64_t n = m2_numel(t);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(t->device, &st));
  CU_FLOAT_DISPATCH(t->dtype, k_scale_inplace<T><<<cu_grid(n, 256), 256, 0, st>>>((T *)m2_data(t), n, (float)s));
  M2_CUDA_LAUNCH_CHECK("scale_");
  return M2_OK;
}
