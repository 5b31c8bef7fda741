/* ops_nn.cu — CUDA embedding, fused cross-entropy, RMSNorm and L2 norm, with backwards.
 * f32 / bf16 storage, fp32 arithmetic (the loss total in double). Index checks (ids, targets) run on
 * the device and are read back once per call: a bad index fails the call with the CPU's message.
 * Row statistics kept for backward (lse, 1/rms) are F32 tensors of one value per row. */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_nn_check.h"

#define LAUNCH_OK(what)                                                                                   \
  do {                                                                                                    \
    cudaError_t e_ = cudaGetLastError();                                                                  \
    if (e_ != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: kernel launch failed: %s", what, cudaGetErrorString(e_)); \
  } while (0)

/* threads per row block: d rounded up to a warp, between 32 and 256 */
static int row_threads(int64_t d) {
  int64_t t = (d + 31) / 32 * 32;
  return (int)(t < 32 ? 32 : t > 256 ? 256 : t);
}

/* ================= embedding: weight (V, d), ids int (...) -> (..., d) ================= */

template <class T>
__global__ void k_embed(const T *w, const void *ids, bool i64, int64_t V, int64_t d, int64_t n, T *o,
                        unsigned long long *flag) {
  CU_GRID_STRIDE(i, n * d) {
    int64_t r = i / d, j = i - r * d, id = ld_index(ids, i64, r);
    if (id < 0 || id >= V) {
      cu_flag_bad(flag, r);
      o[i] = from_f<T>(0.0f);
    } else {
      o[i] = w[id * d + j];
    }
  }
}
/* acc (V, d) += g (n, d) rows scattered by ids (fp32 atomics) */
template <class T>
__global__ void k_embed_bwd(const T *g, const void *ids, bool i64, int64_t d, int64_t n, float *acc) {
  CU_GRID_STRIDE(i, n * d) {
    int64_t r = i / d, j = i - r * d;
    atomicAdd(&acc[ld_index(ids, i64, r) * d + j], to_f(g[i]));
  }
}

extern "C" m2_status m2_cuda_embedding_fwd(m2_opcall *c) {
  m2_tensor *w = c->in[0], *ids = c->in[1];
  M2_TRY(m2_embedding_check(w, ids, cu_check_float));
  int64_t V = w->shape[0], d = w->shape[1], n = m2_numel(ids);
  M2_TRY(m2_embedding_output(c));
  m2_tensor *o = c->out[0];
  if (n * d == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(w->device, &st));
  m2_tensor *flag = cu_flag_new(w->device);
  if (!flag) return m2_errcode();
  CU_FLOAT_DISPATCH(w->dtype, k_embed<T><<<cu_grid(n * d, 256), 256, 0, st>>>(
                                  (const T *)m2_data(w), m2_data(ids), ids->dtype == M2_I64, V, d, n, (T *)m2_data(o),
                                  (unsigned long long *)m2_data(flag)));
  cudaError_t e = cudaGetLastError();
  int64_t bad = -1;
  m2_status s = e != cudaSuccess ? m2_fail(M2_ERR_CUDA, "embedding: launch failed: %s", cudaGetErrorString(e))
                                 : cu_flag_read(flag, &bad);
  m2_release(flag);
  M2_TRY(s);
  if (bad >= 0)
    return m2_fail(M2_ERR_INDEX, "embedding: id %lld (at flat position %lld) is out of range for vocabulary size V=%lld",
                   (long long)cu_int_at(ids, bad), (long long)bad, (long long)V);
  return M2_OK;
}

extern "C" m2_status m2_cuda_embedding_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *w = c->in[0], *ids = c->in[1];
  int64_t d = w->shape[1], n = m2_numel(ids);
  m2_tensor *g = cu_as(c->dout[0], w->dtype); /* (..., d) */
  if (!g) return m2_errcode();
  /* f32 weights accumulate in place; bf16 ones in an f32 buffer, rounded once at the end */
  m2_tensor *acc = cu_zeros(M2_F32, w->device, 2, w->shape);
  m2_status s = acc ? M2_OK : m2_errcode();
  cudaStream_t st;
  if (s == M2_OK) s = cu_stream(w->device, &st);
  if (s == M2_OK && n * d > 0) {
    CU_FLOAT_DISPATCH(w->dtype, k_embed_bwd<T><<<cu_grid(n * d, 256), 256, 0, st>>>(
                                    (const T *)m2_data(g), m2_data(ids), ids->dtype == M2_I64, d, n, (float *)m2_data(acc)));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "embedding backward: launch failed: %s", cudaGetErrorString(e));
  }
  m2_release(g);
  if (s != M2_OK) { m2_release(acc); return s; }
  if (w->dtype == M2_F32) { c->din[0] = acc; return M2_OK; }
  c->din[0] = cu_as(acc, w->dtype);
  m2_release(acc);
  return c->din[0] ? M2_OK : m2_errcode();
}

/* ===== cross_entropy: logits (..., C), targets int (...) -> 0-d F32 mean over kept rows; m2_cross_entropy_attr
 * (core/ops_nn_check.h): ignore_index, dlogits in bf16 (f32 logits) =====
 * saved[0] = lse (rows, F32), saved[1] = kept count (0-d I64). */

/* per row (one block): lse[r], loss[r] = lse - x[t] (0 for ignored rows), kept[r] in {0, 1} */
template <class T>
__global__ void k_ce_rows(const T *x, const void *tg, bool i64, int64_t C, int64_t ign, float *lse, float *loss,
                          int *kept, unsigned long long *flag) {
  __shared__ float sm[32], ss[32];
  int64_t r = blockIdx.x;
  int64_t t = ld_index(tg, i64, r);
  bool skip = t == ign;
  if (!skip && (t < 0 || t >= C)) {
    if (threadIdx.x == 0) cu_flag_bad(flag, r);
    skip = true;
  }
  if (skip) {
    if (threadIdx.x == 0) { lse[r] = 0; loss[r] = 0; kept[r] = 0; }
    return;
  }
  const T *row = x + r * C;
  float m = -INFINITY, s = 0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) sm_push(m, s, to_f(row[j]));
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    sm_merge(m, s, m2, s2);
  }
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) { sm[w] = m; ss[w] = s; }
  __syncthreads();
  if (threadIdx.x == 0) {
    m = sm[0];
    s = ss[0];
    for (int i = 1; i < nw; i++) sm_merge(m, s, sm[i], ss[i]);
    float l = m + logf(s);
    lse[r] = l;
    loss[r] = l - to_f(row[t]);
    kept[r] = 1;
  }
}
/* one block: out = sum(loss) / sum(kept) (0 if none), in double, fixed order; nkept = sum(kept) */
template <class T>
__global__ void k_ce_total(const float *loss, const int *kept, int64_t rows, T *out, int64_t *nkept) {
  __shared__ double sl[1024];
  __shared__ long long sk[1024];
  double l = 0;
  long long k = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) { l += loss[r]; k += kept[r]; }
  sl[threadIdx.x] = l;
  sk[threadIdx.x] = k;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) { sl[threadIdx.x] += sl[threadIdx.x + s]; sk[threadIdx.x] += sk[threadIdx.x + s]; }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[0] = from_f<T>(sk[0] ? (float)(sl[0] / (double)sk[0]) : 0.0f);
    *nkept = sk[0];
  }
}
/* dx[r, j] = g / kept * (exp(x[r, j] - lse[r]) - [j == t_r]); ignored rows 0. dx is of type TO: T, or bf16 for
   f32 logits when the caller asks for it (bf16_dlogits, set by linear_cross_entropy: its next product rounds dlogits
   to bf16 anyway, so writing them in bf16 saves that copy and half the bytes) */
template <class T, class TO>
__global__ void k_ce_bwd(const T *x, const void *tg, bool i64, int64_t C, int64_t ign, const float *lse,
                         const int64_t *nkept, const T *gout, TO *dx) {
  int64_t r = blockIdx.x;
  int64_t t = ld_index(tg, i64, r);
  TO *drow = dx + r * C;
  long long kept = *nkept;
  if (t == ign || kept == 0) {
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) drow[j] = from_f<TO>(0.0f);
    return;
  }
  float scale = to_f(gout[0]) / (float)kept, l = lse[r];
  const T *row = x + r * C;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    float p = expf(to_f(row[j]) - l);
    drow[j] = from_f<TO>(scale * (j == t ? p - 1.0f : p));
  }
}

extern "C" m2_status m2_cuda_cross_entropy_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *t = c->in[1];
  M2_TRY(m2_cross_entropy_check(x, t, cu_check_float));
  int64_t C = x->shape[x->ndim - 1], rows = m2_numel(t), ign = M2_ATTR(c, m2_cross_entropy_attr)->ignore_index;
  if (rows > 0x7fffffffLL) return m2_fail(M2_ERR_UNSUPPORTED, "cross_entropy: too many rows (%lld)", (long long)rows);
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  int64_t rr = rows > 0 ? rows : 1;
  m2_tensor *o = m2_empty(M2_F32, x->device, 0, NULL); /* the loss is fp32 whatever the logits (M2_OP_CAST_F32) */
  m2_tensor *lse = m2_empty(M2_F32, x->device, 1, &rows), *nk = m2_empty(M2_I64, x->device, 0, NULL);
  m2_tensor *loss = m2_empty(M2_F32, x->device, 1, &rr), *kept = m2_empty(M2_I32, x->device, 1, &rr);
  m2_tensor *flag = cu_flag_new(x->device);
  m2_status s = (o && lse && nk && loss && kept && flag) ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    if (rows > 0 && C == 0) {
      s = m2_fail(M2_ERR_SHAPE, "cross_entropy: logits have no classes");
    } else {
      if (rows > 0)
        CU_FLOAT_DISPATCH(x->dtype, k_ce_rows<T><<<(unsigned)rows, C >= 4096 ? 512 : 128, 0, st>>>(
                                        (const T *)m2_data(x), m2_data(t), t->dtype == M2_I64, C, ign,
                                        (float *)m2_data(lse), (float *)m2_data(loss), (int *)m2_data(kept),
                                        (unsigned long long *)m2_data(flag)));
      k_ce_total<float><<<1, 1024, 0, st>>>((const float *)m2_data(loss), (const int *)m2_data(kept), rows,
                                            (float *)m2_data(o), (int64_t *)m2_data(nk));
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "cross_entropy: launch failed: %s", cudaGetErrorString(e));
    }
  }
  int64_t bad = -1; /* read back (a wait for the device) unless the caller checked the targets already */
  if (s == M2_OK && !M2_ATTR(c, m2_cross_entropy_attr)->targets_checked) s = cu_flag_read(flag, &bad);
  if (s == M2_OK && bad >= 0)
    s = m2_fail(M2_ERR_INDEX, "cross_entropy: target %lld (at flat position %lld) is out of range for %lld classes "
                "(ignore_index is %lld)", (long long)cu_int_at(t, bad), (long long)bad, (long long)C, (long long)ign);
  if (s == M2_OK) {
    c->n_out = 1;
    c->out[0] = o;
    o = NULL;
    m2_save(c, lse);
    m2_save(c, nk);
  }
  m2_release(o);
  m2_release(lse);
  m2_release(nk);
  m2_release(loss);
  m2_release(kept);
  m2_release(flag);
  return s;
}

extern "C" m2_status m2_cuda_cross_entropy_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *t = c->in[1];
  int64_t C = x->shape[x->ndim - 1], rows = m2_numel(t), ign = M2_ATTR(c, m2_cross_entropy_attr)->ignore_index;
  m2_tensor *g = cu_as(c->dout[0], x->dtype); /* 0-d, read on the device */
  if (!g) return m2_errcode();
  const bool to16 = M2_ATTR(c, m2_cross_entropy_attr)->bf16_dlogits; /* dlogits in bf16 (see k_ce_bwd) */
  m2_tensor *dx = m2_empty(to16 ? M2_BF16 : x->dtype, x->device, x->ndim, x->shape);
  if (!dx) { m2_release(g); return m2_errcode(); }
  c->din[0] = dx;
  cudaStream_t st;
  m2_status s = cu_stream(x->device, &st);
  const unsigned nb = (unsigned)rows, nt = C >= 4096 ? 512 : 128;
  if (s == M2_OK && rows > 0 && C > 0 && to16) {
    k_ce_bwd<float, bf16><<<nb, nt, 0, st>>>((const float *)m2_data(x), m2_data(t), t->dtype == M2_I64, C, ign,
                                              (const float *)m2_data(c->saved[0]),
                                              (const int64_t *)m2_data(c->saved[1]), (const float *)m2_data(g),
                                              (bf16 *)m2_data(dx));
  } else if (s == M2_OK && rows > 0 && C > 0) {
    CU_FLOAT_DISPATCH(x->dtype, k_ce_bwd<T, T><<<nb, nt, 0, st>>>(
                                    (const T *)m2_data(x), m2_data(t), t->dtype == M2_I64, C, ign,
                                    (const float *)m2_data(c->saved[0]), (const int64_t *)m2_data(c->saved[1]),
                                    (const T *)m2_data(g), (T *)m2_data(dx)));
  }
  if (s == M2_OK && rows > 0 && C > 0) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "cross_entropy backward: launch failed: %s", cudaGetErrorString(e));
  }
  m2_release(g);
  return s;
}

/* ======= rmsnorm and l2norm: x (..., d) [, weight (d)] -> (..., d); m2_norm_attr (eps) =======
 * y = x r w, r = 1 / sqrt(inv * sum x^2 + eps), inv = 1/d (rms) or 1 (l2); saved[0] = r (rows, F32).
 * Backward: gy = dy w, dx = r (gy - x r inv sum_j gy_j x_j r), dw = sum over rows of dy x r. */

template <class T>
__global__ void k_norm_fwd(const T *x, const T *w, int64_t d, float inv, float eps, T *y, float *rs) {
  __shared__ float sh[32];
  int64_t r = blockIdx.x;
  const T *xr = x + r * d;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) { float v = to_f(xr[j]); ss += v * v; }
  ss = block_sum(ss, sh);
  float rr = 1.0f / sqrtf(ss * inv + eps);
  if (threadIdx.x == 0) rs[r] = rr;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = to_f(xr[j]) * rr;
    y[r * d + j] = from_f<T>(w ? v * to_f(w[j]) : v);
  }
}
template <class T>
__global__ void k_norm_bwd(const T *x, const T *w, const T *dy, const float *rs, int64_t d, float inv, T *dx) {
  __shared__ float sh[32];
  int64_t r = blockIdx.x;
  const T *xr = x + r * d, *gr = dy + r * d;
  float rr = rs[r], dot = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float gy = w ? to_f(gr[j]) * to_f(w[j]) : to_f(gr[j]);
    dot += gy * to_f(xr[j]);
  }
  dot = block_sum(dot, sh) * rr;
  float m = dot * inv;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float gy = w ? to_f(gr[j]) * to_f(w[j]) : to_f(gr[j]);
    dx[r * d + j] = from_f<T>(rr * (gy - to_f(xr[j]) * rr * m));
  }
}
/* dw[j] = sum over rows k of dy[k, j] x[k, j] r[k] (through the deterministic column reduction) */
template <class T> struct load_dw {
  const T *x, *dy;
  const float *rs;
  int64_t d;
  __device__ float operator()(int64_t a, int64_t k, int64_t b) const {
    return to_f(dy[k * d + b]) * to_f(x[k * d + b]) * rs[k];
  }
};

#include "norm_vec.cuh" /* the M2_VEC_MEMBOUND forms of k_norm_fwd / k_norm_bwd */

static m2_status norm_fwd(m2_opcall *c, bool mean, const char *op) {
  m2_tensor *x = c->in[0], *w = c->n_in > 1 ? c->in[1] : NULL;
  M2_TRY(m2_norm_check(x, w, op, cu_check_float));
  int64_t d = x->shape[x->ndim - 1], rows = d ? m2_numel(x) / d : 0;
  if (rows > 0x7fffffffLL) return m2_fail(M2_ERR_UNSUPPORTED, "%s: too many rows (%lld)", op, (long long)rows);
  float inv = mean ? (float)(1.0 / (double)(d ? d : 1)) : 1.0f, eps = (float)M2_ATTR(c, m2_norm_attr)->eps;
  m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  m2_tensor *rt = m2_empty(M2_F32, x->device, 1, &rows);
  if (!rt) return m2_errcode();
  m2_save(c, rt);
  m2_release(rt);
  if (rows == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  float *rs = (float *)m2_data(c->saved[0]);
  CU_FLOAT_DISPATCH(x->dtype, if (!norm_fwd_vec<T>(PC(x), PC(w), rows, d, inv, eps, PT(o), rs, st))
                                  k_norm_fwd<T><<<(unsigned)rows, row_threads(d), 0, st>>>(
                                      (const T *)m2_data(x), w ? (const T *)m2_data(w) : (const T *)NULL, d, inv, eps,
                                      (T *)m2_data(o), rs));
  LAUNCH_OK(op);
  return M2_OK;
}

static m2_status norm_bwd(m2_opcall *c, bool mean, const char *op) {
  m2_tensor *x = c->in[0], *w = c->n_in > 1 ? c->in[1] : NULL;
  bool need_w = w && c->needs_din[1];
  if (!c->needs_din[0] && !need_w) return M2_OK;
  int64_t d = x->shape[x->ndim - 1], rows = d ? m2_numel(x) / d : 0;
  float inv = mean ? (float)(1.0 / (double)(d ? d : 1)) : 1.0f;
  m2_tensor *dy = cu_as(c->dout[0], x->dtype);
  if (!dy) return m2_errcode();
  cudaStream_t st;
  m2_status s = cu_stream(x->device, &st);
  const float *rs = (const float *)m2_data(c->saved[0]);
  if (s == M2_OK && c->needs_din[0]) {
    m2_tensor *dx = m2_empty(x->dtype, x->device, x->ndim, x->shape);
    if (!dx) s = m2_errcode();
    else {
      c->din[0] = dx;
      if (rows > 0) {
        CU_FLOAT_DISPATCH(x->dtype, if (!norm_bwd_vec<T>(PC(x), PC(w), PC(dy), rs, rows, d, inv, PT(dx), st))
                                        k_norm_bwd<T><<<(unsigned)rows, row_threads(d), 0, st>>>(
                                            (const T *)m2_data(x), w ? (const T *)m2_data(w) : (const T *)NULL,
                                            (const T *)m2_data(dy), rs, d, inv, (T *)m2_data(dx)));
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s backward: launch failed: %s", op, cudaGetErrorString(e));
      }
    }
  }
  if (s == M2_OK && need_w) {
    m2_tensor *dw = m2_empty(w->dtype, w->device, 1, w->shape); /* (d) */
    if (!dw) s = m2_errcode();
    else {
      c->din[1] = dw;
      if (rows == 0) s = m2_cuda_fill(dw, 0.0);
      else
        CU_FLOAT_DISPATCH(x->dtype, {
          load_dw<T> L = {(const T *)m2_data(x), (const T *)m2_data(dy), rs, d};
          s = cu_reduce(L, 1, rows, d, 1.0f, (T *)m2_data(dw), x->device);
        });
    }
  }
  m2_release(dy);
  return s;
}

extern "C" m2_status m2_cuda_rmsnorm_fwd(m2_opcall *c) { return norm_fwd(c, true, "rmsnorm"); }
extern "C" m2_status m2_cuda_rmsnorm_bwd(m2_opcall *c) { return norm_bwd(c, true, "rmsnorm"); }
extern "C" m2_status m2_cuda_l2norm_fwd(m2_opcall *c) { return norm_fwd(c, false, "l2norm"); }
extern "C" m2_status m2_cuda_l2norm_bwd(m2_opcall *c) { return norm_bwd(c, false, "l2norm"); }

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_nn(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_embedding, m2_cuda_embedding_fwd, m2_cuda_embedding_bwd},
      {&m2_op_cross_entropy, m2_cuda_cross_entropy_fwd, m2_cuda_cross_entropy_bwd},
      {&m2_op_rmsnorm, m2_cuda_rmsnorm_fwd, m2_cuda_rmsnorm_bwd},
      {&m2_op_l2norm, m2_cuda_l2norm_fwd, m2_cuda_l2norm_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
