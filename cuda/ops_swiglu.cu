/* ops_swiglu.cu — swiglu(a, b) = silu(a) * b on CUDA (core/ops_swiglu.c): one grid-stride pass each way, f32 or
 * bf16 storage (a and b may mix them, below), fp32 arithmetic (sigmoid through expf).
 * Backward: s = sigmoid(a), da = g b s (1 + a (1 - s)),
 * db = g a s; a gradient that is not needed is not written. */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_elementwise.h"

/* TA, TB: a's and b's dtypes when they mix (bf16 with f32: the output and its gradient are then f32, as the cast
   path's); T otherwise. */
template <class T, class TA = T, class TB = T>
__global__ void k_swiglu_fwd(const TA *a, const TB *b, T *y, int64_t n) {
  CU_GRID_STRIDE(i, n) {
    float x = to_f(a[i]);
    y[i] = from_f<T>(x / (1.0f + expf(-x)) * to_f(b[i]));
  }
}

template <class T, class TA = T, class TB = T>
__global__ void k_swiglu_bwd(const TA *a, const TB *b, const T *g, TA *da, TB *db, int64_t n) {
  CU_GRID_STRIDE(i, n) {
    float x = to_f(a[i]), gi = to_f(g[i]), s = 1.0f / (1.0f + expf(-x));
    if (da) da[i] = from_f<TA>(gi * to_f(b[i]) * s * (1.0f + x * (1.0f - s)));
    if (db) db[i] = from_f<TB>(gi * x * s);
  }
}

/* a and b of different dtypes (bf16 with f32; the dispatcher lets such calls through only while the mixed-kernel
 * switch is on, M2_OP_MIXED_KERNELS_OPT): each read in its own dtype, the f32 kernel's arithmetic, y in f32 (the
 * promoting rule); backward: g in f32, da and db each rounded once to its input's dtype, as the cast path's
 * to_dtype backward rounds them. */
static m2_status swiglu_fwd_mixed(m2_opcall *c, cudaStream_t st) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  m2_tensor *y = m2_empty(M2_F32, a->device, a->ndim, a->shape);
  if (!y) return m2_errcode();
  int64_t n = m2_numel(a);
  if (n > 0) {
    if (a->dtype == M2_BF16)
      k_swiglu_fwd<float, bf16, float><<<cu_grid(n, 256), 256, 0, st>>>(
          (const bf16 *)m2_data(a), (const float *)m2_data(b), (float *)m2_data(y), n);
    else
      k_swiglu_fwd<float, float, bf16><<<cu_grid(n, 256), 256, 0, st>>>(
          (const float *)m2_data(a), (const bf16 *)m2_data(b), (float *)m2_data(y), n);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      m2_release(y);
      return m2_fail(M2_ERR_CUDA, "swiglu: forward launch failed: %s", cudaGetErrorString(e));
    }
    m2_cuda_mixed_count();
  }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

/* A backward's end: on success the input gradients da, db (either may be NULL) go to the call, else they are freed. */
static m2_status bwd_done(m2_opcall *c, m2_status s, m2_tensor *da, m2_tensor *db) {
  if (s != M2_OK) {
    m2_release(da), m2_release(db);
    return s;
  }
  c->din[0] = da;
  c->din[1] = db;
  return M2_OK;
}

static m2_status swiglu_bwd_mixed(m2_opcall *c, cudaStream_t st) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  m2_tensor *g = cu_as(c->dout[0], M2_F32); /* contiguous f32, as the cast path's (y is f32) */
  m2_tensor *da = c->needs_din[0] ? m2_empty(a->dtype, a->device, a->ndim, a->shape) : NULL;
  m2_tensor *db = c->needs_din[1] ? m2_empty(b->dtype, b->device, b->ndim, b->shape) : NULL;
  m2_status s = g && (da || !c->needs_din[0]) && (db || !c->needs_din[1]) ? M2_OK : m2_errcode();
  int64_t n = m2_numel(a);
  if (s == M2_OK && n > 0) {
    const float *pg = (const float *)m2_data(g);
    if (a->dtype == M2_BF16)
      k_swiglu_bwd<float, bf16, float><<<cu_grid(n, 256), 256, 0, st>>>(
          (const bf16 *)m2_data(a), (const float *)m2_data(b), pg, da ? (bf16 *)m2_data(da) : (bf16 *)NULL,
          db ? (float *)m2_data(db) : (float *)NULL, n);
    else
      k_swiglu_bwd<float, float, bf16><<<cu_grid(n, 256), 256, 0, st>>>(
          (const float *)m2_data(a), (const bf16 *)m2_data(b), pg, da ? (float *)m2_data(da) : (float *)NULL,
          db ? (bf16 *)m2_data(db) : (bf16 *)NULL, n);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "swiglu: backward launch failed: %s", cudaGetErrorString(e));
    else m2_cuda_mixed_count();
  }
  m2_release(g);
  return bwd_done(c, s, da, db);
}

extern "C" m2_status m2_cuda_swiglu_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(m2_swiglu_check(a, b, cu_check_float));
  cudaStream_t st;
  M2_TRY(cu_stream(a->device, &st));
  if (a->dtype != b->dtype) return swiglu_fwd_mixed(c, st);
  m2_tensor *y = m2_empty(a->dtype, a->device, a->ndim, a->shape);
  if (!y) return m2_errcode();
  int64_t n = m2_numel(a);
  if (n > 0) {
    CU_FLOAT_DISPATCH(a->dtype, k_swiglu_fwd<T><<<cu_grid(n, 256), 256, 0, st>>>(PC(a), PC(b), PT(y), n));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      m2_release(y);
      return m2_fail(M2_ERR_CUDA, "swiglu: forward launch failed: %s", cudaGetErrorString(e));
    }
  }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

extern "C" m2_status m2_cuda_swiglu_bwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(m2_swiglu_check(a, b, cu_check_float));
  cudaStream_t st;
  M2_TRY(cu_stream(a->device, &st));
  if (a->dtype != b->dtype) return swiglu_bwd_mixed(c, st);
  m2_tensor *g = cu_as(c->dout[0], a->dtype); /* contiguous, in a's dtype */
  m2_tensor *da = c->needs_din[0] ? m2_empty(a->dtype, a->device, a->ndim, a->shape) : NULL;
  m2_tensor *db = c->needs_din[1] ? m2_empty(a->dtype, a->device, a->ndim, a->shape) : NULL;
  m2_status s = g && (da || !c->needs_din[0]) && (db || !c->needs_din[1]) ? M2_OK : m2_errcode();
  int64_t n = m2_numel(a);
  if (s == M2_OK && n > 0) {
    CU_FLOAT_DISPATCH(a->dtype, k_swiglu_bwd<T><<<cu_grid(n, 256), 256, 0, st>>>(PC(a), PC(b), PC(g), PT(da), PT(db), n));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "swiglu: backward launch failed: %s", cudaGetErrorString(e));
  }
  m2_release(g);
  return bwd_done(c, s, da, db);
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_swiglu(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_swiglu, m2_cuda_swiglu_fwd, m2_cuda_swiglu_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
