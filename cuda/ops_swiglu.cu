/* ops_swiglu.cu — swiglu(a, b) = silu(a) * b on CUDA (core/ops_swiglu.c): one grid-stride pass each way, f32 or
 * bf16 storage, fp32 arithmetic (sigmoid through expf). Backward: s = sigmoid(a), da = g b s (1 + a (1 - s)),
 * db = g a s; a gradient that is not needed is not written. */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_elementwise.h"

template <class T>
__global__ void k_swiglu_fwd(const T *a, const T *b, T *y, int64_t n) {
  CU_GRID_STRIDE(i, n) {
    float x = to_f(a[i]);
    y[i] = from_f<T>(x / (1.0f + expf(-x)) * to_f(b[i]));
  }
}

template <class T>
__global__ void k_swiglu_bwd(const T *a, const T *b, const T *g, T *da, T *db, int64_t n) {
  CU_GRID_STRIDE(i, n) {
    float x = to_f(a[i]), gi = to_f(g[i]), s = 1.0f / (1.0f + expf(-x));
    if (da) da[i] = from_f<T>(gi * to_f(b[i]) * s * (1.0f + x * (1.0f - s)));
    if (db) db[i] = from_f<T>(gi * x * s);
  }
}

extern "C" m2_status m2_cuda_swiglu_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(m2_swiglu_check(a, b, cu_check_float));
  cudaStream_t st;
  M2_TRY(cu_stream(a->device, &st));
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
  if (s != M2_OK) {
    m2_release(da), m2_release(db);
    return s;
  }
  c->din[0] = da;
  c->din[1] = db;
  return M2_OK;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_swiglu(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_swiglu, m2_cuda_swiglu_fwd, m2_cuda_swiglu_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
