/* ops_reduce.cu — CUDA reductions (sum, mean, max, their *_all forms, argmax), eq, softmax,
 * log_softmax and cumsum, with backwards. A tensor is viewed as (outer, n, inner) around the dim;
 * sums go through the deterministic cu_reduce (fp32 accumulation, fixed decomposition). The geometry
 * and the output shapes are the CPU's (core/ops_reduce.h). */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_reduce.h"

#define LAUNCH_OK(what)                                                                                   \
  do {                                                                                                    \
    cudaError_t e_ = cudaGetLastError();                                                                  \
    if (e_ != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: kernel launch failed: %s", what, cudaGetErrorString(e_)); \
  } while (0)

/* The start of a backward: gy = dout[0] in x's dtype (a new reference, for bwd_end), din[0] = an empty
 * tensor of x's shape, and the stream. On failure gy is already released. */
static m2_status bwd_begin(m2_opcall *c, m2_tensor **gy, cudaStream_t *st) {
  m2_tensor *x = c->in[0];
  *gy = cu_as(c->dout[0], x->dtype);
  if (!*gy) return m2_errcode();
  m2_tensor *dx = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  m2_status s = dx ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    c->din[0] = dx;
    s = cu_stream(x->device, st);
  }
  if (s != M2_OK) m2_release(*gy);
  return s;
}
/* The end of a backward: releases gy and reports a failed launch of `op`. */
static m2_status bwd_end(m2_tensor *gy, const char *op) {
  m2_release(gy);
  LAUNCH_OK(op);
  return M2_OK;
}

/* ================= sum, mean, sum_all, mean_all ================= */

template <class T> struct load_x {
  const T *x;
  int64_t n, inner;
  __device__ float operator()(int64_t a, int64_t k, int64_t b) const { return to_f(x[(a * n + k) * inner + b]); }
};

/* dx (outer, n, inner) = scale * gy (outer, inner) spread along n */
template <class T>
__global__ void k_spread(const T *gy, T *dx, int64_t n, int64_t inner, int64_t total, float scale) {
  CU_GRID_STRIDE(i, total) {
    int64_t b = i % inner, a = i / (n * inner);
    dx[i] = from_f<T>(to_f(gy[a * inner + b]) * scale);
  }
}

static m2_status sum_mean_fwd(m2_opcall *c, bool mean, bool all) {
  m2_tensor *x = c->in[0];
  M2_TRY(cu_check_float(x, c->op->name, "x"));
  red_geom g = m2_red_geom(c, all);
  m2_tensor *o = m2_red_output(c, all, x->dtype);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  float scale = mean ? (float)(1.0 / (double)g.n) : 1.0f;
  if (g.n == 0) return m2_cuda_fill(o, mean ? NAN : 0.0); /* empty sum = 0, empty mean = NaN (as 0 * 1/0) */
  CU_FLOAT_DISPATCH(x->dtype, {
    load_x<T> L = {(const T *)m2_data(x), g.n, g.inner};
    M2_TRY(cu_reduce(L, g.outer, g.n, g.inner, scale, (T *)m2_data(o), x->device));
  });
  return M2_OK;
}

static m2_status sum_mean_bwd(m2_opcall *c, bool mean, bool all) {
  m2_tensor *x = c->in[0];
  red_geom g = m2_red_geom(c, all);
  m2_tensor *gy;
  cudaStream_t st;
  M2_TRY(bwd_begin(c, &gy, &st));
  int64_t total = m2_numel(x);
  float scale = mean ? (float)(1.0 / (double)g.n) : 1.0f;
  if (total > 0)
    CU_FLOAT_DISPATCH(x->dtype, k_spread<T><<<cu_grid(total, 256), 256, 0, st>>>(
                                    (const T *)m2_data(gy), (T *)m2_data(c->din[0]), g.n, g.inner, total, scale));
  return bwd_end(gy, c->op->name);
}

extern "C" m2_status m2_cuda_sum_fwd(m2_opcall *c) { return sum_mean_fwd(c, false, false); }
extern "C" m2_status m2_cuda_sum_bwd(m2_opcall *c) { return sum_mean_bwd(c, false, false); }
extern "C" m2_status m2_cuda_mean_fwd(m2_opcall *c) { return sum_mean_fwd(c, true, false); }
extern "C" m2_status m2_cuda_mean_bwd(m2_opcall *c) { return sum_mean_bwd(c, true, false); }
extern "C" m2_status m2_cuda_sum_all_fwd(m2_opcall *c) { return sum_mean_fwd(c, false, true); }
extern "C" m2_status m2_cuda_sum_all_bwd(m2_opcall *c) { return sum_mean_bwd(c, false, true); }
extern "C" m2_status m2_cuda_mean_all_fwd(m2_opcall *c) { return sum_mean_fwd(c, true, true); }
extern "C" m2_status m2_cuda_mean_all_bwd(m2_opcall *c) { return sum_mean_bwd(c, true, true); }

/* ================= max, max_all, argmax ================= */

/* comparison keys: floats as float (bf16 widened), f64 as double, integers as long long */
__device__ __forceinline__ float key_of(float v) { return v; }
__device__ __forceinline__ float key_of(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double key_of(double v) { return v; }
__device__ __forceinline__ long long key_of(int32_t v) { return v; }
__device__ __forceinline__ long long key_of(int64_t v) { return v; }
template <class K> __device__ __forceinline__ bool key_nan(K v) { return v != v; }

/* Is (v2, i2) a better max than (v1, i1)? NaN beats numbers (it propagates); ties go to the first index. */
template <class K> __device__ __forceinline__ bool better(K v1, int64_t i1, K v2, int64_t i2) {
  bool n1 = key_nan(v1), n2 = key_nan(v2);
  if (n1 != n2) return n2;
  if (!n1 && v1 != v2) return v2 > v1;
  return i2 < i1;
}

template <class T> __device__ __forceinline__ void store_val(T *p, int64_t i, float v) { p[i] = from_f<T>(v); }

/* rows (inner == 1): one block per row a; vals may be NULL (argmax) */
template <class T, bool VALS>
__global__ void k_max_rows(const T *x, int64_t n, T *vals, int64_t *idx) {
  typedef decltype(key_of(T())) K;
  __shared__ K sv[256];
  __shared__ int64_t si[256];
  int64_t a = blockIdx.x;
  const T *row = x + a * n;
  K best = key_of(row[0]);
  int64_t bi = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    K v = key_of(row[k]);
    if (better(best, bi, v, k)) { best = v; bi = k; }
  }
  sv[threadIdx.x] = best;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s && better(sv[threadIdx.x], si[threadIdx.x], sv[threadIdx.x + s], si[threadIdx.x + s])) {
      sv[threadIdx.x] = sv[threadIdx.x + s];
      si[threadIdx.x] = si[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    idx[a] = si[0];
    if constexpr (VALS) store_val(vals, a, (float)sv[0]);
  }
}
/* columns (inner > 1): one thread per (a, b), scanning n in order */
template <class T, bool VALS>
__global__ void k_max_cols(const T *x, int64_t outer, int64_t n, int64_t inner, T *vals, int64_t *idx) {
  typedef decltype(key_of(T())) K;
  CU_GRID_STRIDE(i, outer * inner) {
    int64_t a = i / inner, b = i % inner;
    const T *p = x + a * n * inner + b;
    K best = key_of(p[0]);
    int64_t bi = 0;
    for (int64_t k = 1; k < n; k++) {
      K v = key_of(p[k * inner]);
      if (better(best, bi, v, k)) { best = v; bi = k; }
    }
    idx[i] = bi;
    if constexpr (VALS) store_val(vals, i, (float)best);
  }
}

template <class T, bool VALS>
static void max_launch(const void *x, red_geom g, void *vals, int64_t *idx, cudaStream_t st) {
  if (g.inner == 1)
    k_max_rows<T, VALS><<<(unsigned)g.outer, 256, 0, st>>>((const T *)x, g.n, (T *)vals, idx);
  else
    k_max_cols<T, VALS><<<cu_grid(g.outer * g.inner, 256), 256, 0, st>>>((const T *)x, g.outer, g.n, g.inner, (T *)vals, idx);
}

/* dx (outer, n, inner) = gy at position idx along n, 0 elsewhere */
template <class T>
__global__ void k_max_scatter(const T *gy, const int64_t *idx, T *dx, int64_t n, int64_t inner, int64_t total) {
  CU_GRID_STRIDE(i, total) {
    int64_t b = i % inner, k = (i / inner) % n, a = i / (n * inner);
    dx[i] = idx[a * inner + b] == k ? gy[a * inner + b] : from_f<T>(0.0f);
  }
}

static m2_status check_rows(int64_t outer, const char *op) {
  if (outer > 0x7fffffffLL) return m2_fail(M2_ERR_UNSUPPORTED, "%s: %lld rows is too many for one launch", op, (long long)outer);
  return M2_OK;
}

/* max: values (..., [1,] ...); saved[0] = argmax (I64, the values' shape). max_all: -> () */
static m2_status max_fwd_common(m2_opcall *c, bool all) {
  m2_tensor *x = c->in[0];
  M2_TRY(cu_check_float(x, c->op->name, "x"));
  red_geom g;
  M2_TRY(m2_red_pick_geom(c, all, "max", &g));
  M2_TRY(check_rows(g.outer, c->op->name));
  m2_tensor *v = m2_red_output(c, all, x->dtype);
  m2_tensor *idx = v ? m2_empty(M2_I64, x->device, v->ndim, v->shape) : NULL;
  if (!idx) { m2_release(v); return m2_errcode(); }
  c->n_out = 1;
  c->out[0] = v;
  m2_save(c, idx);
  m2_release(idx);
  if (g.outer * g.inner == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  CU_FLOAT_DISPATCH(x->dtype, max_launch<T, true>(m2_data(x), g, m2_data(v), (int64_t *)m2_data(c->saved[0]), st));
  LAUNCH_OK(c->op->name);
  return M2_OK;
}
static m2_status max_bwd_common(m2_opcall *c, bool all) {
  m2_tensor *x = c->in[0];
  red_geom g = m2_red_geom(c, all);
  m2_tensor *gy;
  cudaStream_t st;
  M2_TRY(bwd_begin(c, &gy, &st));
  int64_t total = m2_numel(x);
  if (total > 0)
    CU_FLOAT_DISPATCH(x->dtype, k_max_scatter<T><<<cu_grid(total, 256), 256, 0, st>>>(
                                    (const T *)m2_data(gy), (const int64_t *)m2_data(c->saved[0]),
                                    (T *)m2_data(c->din[0]), g.n, g.inner, total));
  return bwd_end(gy, c->op->name);
}
extern "C" m2_status m2_cuda_max_fwd(m2_opcall *c) { return max_fwd_common(c, false); }
extern "C" m2_status m2_cuda_max_bwd(m2_opcall *c) { return max_bwd_common(c, false); }
extern "C" m2_status m2_cuda_max_all_fwd(m2_opcall *c) { return max_fwd_common(c, true); }
extern "C" m2_status m2_cuda_max_all_bwd(m2_opcall *c) { return max_bwd_common(c, true); }

/* argmax: x (..., n, ...) any dtype -> I64 (..., [1,] ...); m2_reduce_attr {dim, keepdim} */
extern "C" m2_status m2_cuda_argmax_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  red_geom g;
  M2_TRY(m2_red_pick_geom(c, false, "argmax", &g));
  M2_TRY(check_rows(g.outer, "argmax"));
  m2_tensor *idx = m2_red_output(c, false, M2_I64);
  if (!idx) return m2_errcode();
  c->n_out = 1;
  c->out[0] = idx;
  if (g.outer * g.inner == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  int64_t *pi = (int64_t *)m2_data(idx);
  switch (x->dtype) {
    case M2_F32: max_launch<float, false>(m2_data(x), g, NULL, pi, st); break;
    case M2_BF16: max_launch<bf16, false>(m2_data(x), g, NULL, pi, st); break;
    case M2_F64: max_launch<double, false>(m2_data(x), g, NULL, pi, st); break;
    case M2_I32: max_launch<int32_t, false>(m2_data(x), g, NULL, pi, st); break;
    case M2_I64: max_launch<int64_t, false>(m2_data(x), g, NULL, pi, st); break;
    default: return m2_fail(M2_ERR_DTYPE, "argmax: unknown dtype");
  }
  LAUNCH_OK("argmax");
  return M2_OK;
}

/* ================= eq: a, b broadcast, any dtypes -> F32 0/1 ================= */

__device__ __forceinline__ double ld_any_d(const void *p, int dt, int64_t i) {
  switch (dt) {
    case M2_F32: return ((const float *)p)[i];
    case M2_F64: return ((const double *)p)[i];
    case M2_BF16: return __bfloat162float(((const bf16 *)p)[i]);
    case M2_I32: return ((const int32_t *)p)[i];
    default: return (double)((const int64_t *)p)[i];
  }
}
__device__ __forceinline__ long long ld_any_i(const void *p, int dt, int64_t i) {
  return dt == M2_I64 ? ((const int64_t *)p)[i] : (long long)((const int32_t *)p)[i];
}

typedef struct eq_geom {
  int nd;
  int64_t shape[M2_MAX_DIMS], sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
} eq_geom;

__global__ void k_eq(const void *a, int da, const void *b, int db, bool ints, float *o, eq_geom g, int64_t n) {
  CU_GRID_STRIDE(i, n) {
    int64_t r = i, oa = 0, ob = 0;
    for (int d = g.nd - 1; d >= 0; d--) {
      int64_t k = r % g.shape[d];
      r /= g.shape[d];
      oa += k * g.sa[d];
      ob += k * g.sb[d];
    }
    bool same = ints ? ld_any_i(a, da, oa) == ld_any_i(b, db, ob) : ld_any_d(a, da, oa) == ld_any_d(b, db, ob);
    o[i] = same ? 1.0f : 0.0f;
  }
}

extern "C" m2_status m2_cuda_eq_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  eq_geom g;
  M2_TRY(m2_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &g.nd, g.shape, "eq"));
  m2_broadcast_strides(a->ndim, a->shape, g.nd, g.shape, g.sa);
  m2_broadcast_strides(b->ndim, b->shape, g.nd, g.shape, g.sb);
  m2_tensor *o = m2_empty(M2_F32, a->device, g.nd, g.shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  int64_t n = m2_numel(o);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(a->device, &st));
  bool ints = !m2_dtype_is_float(a->dtype) && !m2_dtype_is_float(b->dtype);
  k_eq<<<cu_grid(n, 256), 256, 0, st>>>(m2_data(a), a->dtype, m2_data(b), b->dtype, ints, (float *)m2_data(o), g, n);
  LAUNCH_OK("eq");
  return M2_OK;
}

/* ================= softmax, log_softmax along m2_reduce_attr.dim ================= */

/* rows (inner == 1), one warp per row (8 rows a block) */
template <class T, bool LOG>
__global__ void k_softmax_rows_warp(const T *x, T *y, int64_t rows, int64_t n) {
  int64_t a = (int64_t)blockIdx.x * 8 + threadIdx.y;
  if (a >= rows) return;
  const T *xr = x + a * n;
  T *yr = y + a * n;
  float m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < n; k += 32) sm_push(m, s, to_f(xr[k]));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  float ls = logf(s), inv = 1.0f / s;
  for (int64_t k = threadIdx.x; k < n; k += 32) {
    float v = to_f(xr[k]) - m;
    yr[k] = from_f<T>(LOG ? v - ls : expf(v) * inv);
  }
}
/* rows (inner == 1), one block (512) per row */
template <class T, bool LOG>
__global__ void k_softmax_rows_block(const T *x, T *y, int64_t n) {
  __shared__ float sm[32], ss[32];
  int64_t a = blockIdx.x;
  const T *xr = x + a * n;
  T *yr = y + a * n;
  float m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sm_push(m, s, to_f(xr[k]));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) { sm[w] = m; ss[w] = s; }
  __syncthreads();
  m = sm[0];
  s = ss[0];
  for (int i = 1; i < nw; i++) sm_merge(m, s, sm[i], ss[i]);
  float ls = logf(s), inv = 1.0f / s;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    float v = to_f(xr[k]) - m;
    yr[k] = from_f<T>(LOG ? v - ls : expf(v) * inv);
  }
}
/* columns (inner > 1): one thread per (a, b) */
template <class T, bool LOG>
__global__ void k_softmax_cols(const T *x, T *y, int64_t outer, int64_t n, int64_t inner) {
  CU_GRID_STRIDE(i, outer * inner) {
    int64_t a = i / inner, b = i % inner, base = a * n * inner + b;
    float m = -INFINITY, s = 0;
    for (int64_t k = 0; k < n; k++) sm_push(m, s, to_f(x[base + k * inner]));
    float ls = logf(s), inv = 1.0f / s;
    for (int64_t k = 0; k < n; k++) {
      float v = to_f(x[base + k * inner]) - m;
      y[base + k * inner] = from_f<T>(LOG ? v - ls : expf(v) * inv);
    }
  }
}

/* softmax: dx = y (gy - sum gy y); log_softmax: dx = gy - exp(y) sum gy */
template <class T, bool LOG> __device__ __forceinline__ float smb_term(float g, float y) { return LOG ? g : g * y; }
template <class T, bool LOG> __device__ __forceinline__ float smb_out(float g, float y, float acc) {
  return LOG ? g - expf(y) * acc : y * (g - acc);
}
template <class T, bool LOG>
__global__ void k_softmax_bwd_rows(const T *gy, const T *y, T *dx, int64_t n) {
  __shared__ float sh[32];
  int64_t a = blockIdx.x;
  const T *g = gy + a * n, *yr = y + a * n;
  float acc = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) acc += smb_term<T, LOG>(to_f(g[k]), to_f(yr[k]));
  acc = block_sum(acc, sh);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
    dx[a * n + k] = from_f<T>(smb_out<T, LOG>(to_f(g[k]), to_f(yr[k]), acc));
}
template <class T, bool LOG>
__global__ void k_softmax_bwd_cols(const T *gy, const T *y, T *dx, int64_t outer, int64_t n, int64_t inner) {
  CU_GRID_STRIDE(i, outer * inner) {
    int64_t a = i / inner, b = i % inner, base = a * n * inner + b;
    float acc = 0;
    for (int64_t k = 0; k < n; k++) acc += smb_term<T, LOG>(to_f(gy[base + k * inner]), to_f(y[base + k * inner]));
    for (int64_t k = 0; k < n; k++) {
      int64_t j = base + k * inner;
      dx[j] = from_f<T>(smb_out<T, LOG>(to_f(gy[j]), to_f(y[j]), acc));
    }
  }
}

template <class T, bool LOG>
static void softmax_launch(const void *x, void *y, red_geom g, cudaStream_t st) {
  if (g.inner > 1)
    k_softmax_cols<T, LOG><<<cu_grid(g.outer * g.inner, 256), 256, 0, st>>>((const T *)x, (T *)y, g.outer, g.n, g.inner);
  else if (g.n <= 1024)
    k_softmax_rows_warp<T, LOG><<<(unsigned)((g.outer + 7) / 8), dim3(32, 8), 0, st>>>((const T *)x, (T *)y, g.outer, g.n);
  else
    k_softmax_rows_block<T, LOG><<<(unsigned)g.outer, 512, 0, st>>>((const T *)x, (T *)y, g.n);
}
template <class T, bool LOG>
static void softmax_bwd_launch(const void *gy, const void *y, void *dx, red_geom g, cudaStream_t st) {
  if (g.inner > 1)
    k_softmax_bwd_cols<T, LOG><<<cu_grid(g.outer * g.inner, 256), 256, 0, st>>>((const T *)gy, (const T *)y, (T *)dx,
                                                                                 g.outer, g.n, g.inner);
  else
    k_softmax_bwd_rows<T, LOG><<<(unsigned)g.outer, g.n <= 256 ? 64 : 256, 0, st>>>((const T *)gy, (const T *)y,
                                                                                    (T *)dx, g.n);
}

static m2_status softmax_fwd_common(m2_opcall *c, bool log_out) {
  m2_tensor *x = c->in[0];
  M2_TRY(cu_check_float(x, c->op->name, "x"));
  red_geom g = m2_red_geom(c, false);
  M2_TRY(check_rows(g.outer, c->op->name));
  m2_tensor *y = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!y) return m2_errcode();
  c->n_out = 1;
  c->out[0] = y;
  if (m2_numel(x) == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  if (log_out) CU_FLOAT_DISPATCH(x->dtype, softmax_launch<T, true>(m2_data(x), m2_data(y), g, st));
  else CU_FLOAT_DISPATCH(x->dtype, softmax_launch<T, false>(m2_data(x), m2_data(y), g, st));
  LAUNCH_OK(c->op->name);
  return M2_OK;
}
static m2_status softmax_bwd_common(m2_opcall *c, bool log_out) {
  m2_tensor *x = c->in[0], *y = c->out[0];
  if (!y) return m2_fail(M2_ERR_AUTOGRAD, "%s backward: the forward output was not kept", c->op->name);
  red_geom g = m2_red_geom(c, false);
  m2_tensor *gy;
  cudaStream_t st;
  M2_TRY(bwd_begin(c, &gy, &st));
  void *dx = m2_data(c->din[0]);
  if (m2_numel(x) > 0) {
    if (log_out) CU_FLOAT_DISPATCH(x->dtype, softmax_bwd_launch<T, true>(m2_data(gy), m2_data(y), dx, g, st));
    else CU_FLOAT_DISPATCH(x->dtype, softmax_bwd_launch<T, false>(m2_data(gy), m2_data(y), dx, g, st));
  }
  return bwd_end(gy, c->op->name);
}
extern "C" m2_status m2_cuda_softmax_fwd(m2_opcall *c) { return softmax_fwd_common(c, false); }
extern "C" m2_status m2_cuda_softmax_bwd(m2_opcall *c) { return softmax_bwd_common(c, false); }
extern "C" m2_status m2_cuda_log_softmax_fwd(m2_opcall *c) { return softmax_fwd_common(c, true); }
extern "C" m2_status m2_cuda_log_softmax_bwd(m2_opcall *c) { return softmax_bwd_common(c, true); }

/* ================= cumsum along m2_reduce_attr.dim; backward = reverse cumsum ================= */

/* rows (inner == 1): one warp per row, 32-wide inclusive scans with a running carry */
template <class T>
__global__ void k_cumsum_rows(const T *x, T *y, int64_t rows, int64_t n, bool reverse) {
  int64_t a = (int64_t)blockIdx.x * 8 + threadIdx.y;
  if (a >= rows) return;
  float carry = 0;
  int lane = threadIdx.x;
  for (int64_t k0 = 0; k0 < n; k0 += 32) {
    int64_t kk = k0 + lane, k = reverse ? n - 1 - kk : kk;
    float v = kk < n ? to_f(x[a * n + k]) : 0.0f;
    for (int o = 1; o < 32; o <<= 1) {
      float u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    v += carry;
    if (kk < n) y[a * n + k] = from_f<T>(v);
    carry = __shfl_sync(0xffffffffu, v, 31);
  }
}
/* columns (inner > 1): one thread per (a, b) */
template <class T>
__global__ void k_cumsum_cols(const T *x, T *y, int64_t outer, int64_t n, int64_t inner, bool reverse) {
  CU_GRID_STRIDE(i, outer * inner) {
    int64_t a = i / inner, b = i % inner, base = a * n * inner + b;
    float s = 0;
    for (int64_t kk = 0; kk < n; kk++) {
      int64_t j = base + (reverse ? n - 1 - kk : kk) * inner;
      s += to_f(x[j]);
      y[j] = from_f<T>(s);
    }
  }
}

static m2_status cumsum_run(m2_tensor *x, int d, bool reverse, m2_tensor **out) {
  red_geom g = m2_red_geom_dim(x, d);
  m2_tensor *y = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!y) return m2_errcode();
  *out = y;
  if (m2_numel(x) == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  if (g.inner == 1)
    CU_FLOAT_DISPATCH(x->dtype, k_cumsum_rows<T><<<(unsigned)((g.outer + 7) / 8), dim3(32, 8), 0, st>>>(
                                    (const T *)m2_data(x), (T *)m2_data(y), g.outer, g.n, reverse));
  else
    CU_FLOAT_DISPATCH(x->dtype, k_cumsum_cols<T><<<cu_grid(g.outer * g.inner, 256), 256, 0, st>>>(
                                    (const T *)m2_data(x), (T *)m2_data(y), g.outer, g.n, g.inner, reverse));
  LAUNCH_OK("cumsum");
  return M2_OK;
}
extern "C" m2_status m2_cuda_cumsum_fwd(m2_opcall *c) {
  M2_TRY(cu_check_float(c->in[0], "cumsum", "x"));
  c->n_out = 1;
  return cumsum_run(c->in[0], M2_ATTR(c, m2_reduce_attr)->dim, false, &c->out[0]);
}
extern "C" m2_status m2_cuda_cumsum_bwd(m2_opcall *c) {
  m2_tensor *g = cu_as(c->dout[0], c->in[0]->dtype);
  if (!g) return m2_errcode();
  m2_status s = cumsum_run(g, M2_ATTR(c, m2_reduce_attr)->dim, true, &c->din[0]);
  m2_release(g);
  return s;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_reduce(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_sum, m2_cuda_sum_fwd, m2_cuda_sum_bwd},
      {&m2_op_mean, m2_cuda_mean_fwd, m2_cuda_mean_bwd},
      {&m2_op_sum_all, m2_cuda_sum_all_fwd, m2_cuda_sum_all_bwd},
      {&m2_op_mean_all, m2_cuda_mean_all_fwd, m2_cuda_mean_all_bwd},
      {&m2_op_max, m2_cuda_max_fwd, m2_cuda_max_bwd},
      {&m2_op_max_all, m2_cuda_max_all_fwd, m2_cuda_max_all_bwd},
      {&m2_op_argmax, m2_cuda_argmax_fwd, NULL},
      {&m2_op_eq, m2_cuda_eq_fwd, NULL},
      {&m2_op_softmax, m2_cuda_softmax_fwd, m2_cuda_softmax_bwd},
      {&m2_op_log_softmax, m2_cuda_log_softmax_fwd, m2_cuda_log_softmax_bwd},
      {&m2_op_cumsum, m2_cuda_cumsum_fwd, m2_cuda_cumsum_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
