/* ops_elementwise.cu — CUDA kernels of the broadcasting binary ops (add, sub, mul, div) and the unary
 * maps (neg ... clamp) with their backwards; f32 / bf16 storage, fp32 arithmetic. The binary ops'
 * backwards are the CPU file's composites (other ops), which run here too. */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_elementwise.h"

/* ================= broadcasting binary ops ================= */

enum { B_ADD, B_SUB, B_MUL, B_DIV };

template <int K> __device__ __forceinline__ float bin_apply(float x, float y) {
  if (K == B_ADD) return x + y;
  if (K == B_SUB) return x - y;
  if (K == B_MUL) return x * y;
  return x / y;
}

/* bin_plan: the broadcast iteration space (core/ops_elementwise.h), made by m2_binary_setup as on the CPU. */

/* o[i] = a[i * sa] (op) b[i * sb], sa and sb 0 or 1 (one flat loop). TA, TB: the operands' dtypes when they mix
   (bf16 with f32; the output is then f32, as the cast path's), else T. */
template <class T, int K, class TA = T, class TB = T>
__global__ void k_bin_flat(const TA *a, int64_t sa, const TB *b, int64_t sb, T *o, int64_t n) {
  CU_GRID_STRIDE(i, n) o[i] = from_f<T>(bin_apply<K>(to_f(a[i * sa]), to_f(b[i * sb])));
}

/* general broadcast: output row-major over the plan, operands through their strides */
template <class T, int K, class I, class TA = T, class TB = T>
__global__ void k_bin_nd(const TA *a, const TB *b, T *o, bin_plan p, I n) {
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I r = i, oa = 0, ob = 0;
    for (int d = p.nd - 1; d > 0; d--) {
      I sh = (I)p.shape[d], q = r / sh, k = r - q * sh;
      oa += k * (I)p.sa[d];
      ob += k * (I)p.sb[d];
      r = q;
    }
    oa += r * (I)p.sa[0];
    ob += r * (I)p.sb[0];
    o[i] = from_f<T>(bin_apply<K>(to_f(a[oa]), to_f(b[ob])));
  }
}

template <class T, int K, class TA = T, class TB = T>
static void bin_launch(const void *a, const void *b, void *o, const bin_plan *p, int64_t n, cudaStream_t st) {
  if (p->nd == 1) {
    k_bin_flat<T, K, TA, TB><<<cu_grid(n, 256), 256, 0, st>>>((const TA *)a, p->sa[0], (const TB *)b, p->sb[0],
                                                                (T *)o, n);
  } else if (cu_i32_loop_ok(n, 256)) { /* (n < 2^31 alone let i += stride overflow: illegal accesses above ~1.6 G) */
    k_bin_nd<T, K, int32_t, TA, TB><<<cu_grid(n, 256), 256, 0, st>>>((const TA *)a, (const TB *)b, (T *)o, *p,
                                                                       (int32_t)n);
  } else {
    k_bin_nd<T, K, int64_t, TA, TB><<<cu_grid(n, 256), 256, 0, st>>>((const TA *)a, (const TB *)b, (T *)o, *p, n);
  }
}

/* The mixed kernels' calls so far (m2cuda.h); the switch itself is core's (m2_mixed_kernels, op.h). */
static long g_mixed_calls;
extern "C" void m2_cuda_mixed_count(void) { g_mixed_calls++; }
extern "C" long m2_cuda_mixed_calls(void) { return g_mixed_calls; }
extern "C" int m2_cuda_mixed_kernels(int set) {
  bool old = m2_mixed_kernels_on();
  if (set >= 0) m2_mixed_kernels(set != 0);
  return old ? 1 : 0;
}

/* A bf16 operand with an f32 one (add, sub, mul: the dispatcher lets such calls through only while the mixed-kernel
 * switch is on, M2_OP_MIXED_KERNELS_OPT): each operand read in its own dtype, the f32 kernel's arithmetic, an f32
 * output (the promoting rule, as the cast path's), so the values are the cast path's bit for bit. */
template <int K>
static m2_status binary_fwd_mixed(m2_opcall *c, const bin_plan *p, int64_t n, cudaStream_t st) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  if (K == B_DIV) return m2_fail(M2_ERR_DTYPE, "div: dtypes differ (%s and %s); convert one with :to()",
                                 m2_dtype_name(a->dtype), m2_dtype_name(b->dtype));
  if (c->out[0]->dtype != M2_F32) { /* m2_binary_setup made it in a's dtype */
    m2_tensor *o = m2_empty(M2_F32, a->device, c->out[0]->ndim, c->out[0]->shape);
    if (!o) return m2_errcode();
    m2_release(c->out[0]);
    c->out[0] = o;
  }
  if (n == 0) return M2_OK;
  if (a->dtype == M2_BF16) bin_launch<float, K, bf16, float>(m2_data(a), m2_data(b), m2_data(c->out[0]), p, n, st);
  else bin_launch<float, K, float, bf16>(m2_data(a), m2_data(b), m2_data(c->out[0]), p, n, st);
  M2_CUDA_LAUNCH_CHECK(c->op->name);
  m2_cuda_mixed_count();
  return M2_OK;
}

template <int K>
static m2_status binary_fwd(m2_opcall *c) {
  bin_plan p;
  int64_t n;
  M2_TRY(m2_binary_setup(c, cu_check_float, &p, &n));
  m2_tensor *a = c->in[0];
  cudaStream_t st;
  if (a->dtype != c->in[1]->dtype) {
    M2_TRY(cu_stream(a->device, &st));
    return binary_fwd_mixed<K>(c, &p, n, st);
  }
  if (n == 0) return M2_OK;
  M2_TRY(cu_stream(a->device, &st));
  CU_FLOAT_DISPATCH(a->dtype, bin_launch<T, K>(m2_data(a), m2_data(c->in[1]), m2_data(c->out[0]), &p, n, st));
  M2_CUDA_LAUNCH_CHECK(c->op->name);
  return M2_OK;
}

extern "C" m2_status m2_cuda_add_fwd(m2_opcall *c) { return binary_fwd<B_ADD>(c); }
extern "C" m2_status m2_cuda_sub_fwd(m2_opcall *c) { return binary_fwd<B_SUB>(c); }
extern "C" m2_status m2_cuda_mul_fwd(m2_opcall *c) { return binary_fwd<B_MUL>(c); }
extern "C" m2_status m2_cuda_div_fwd(m2_opcall *c) { return binary_fwd<B_DIV>(c); }

/* ================= unary maps: x (...) -> y (...) ================= */

enum { U_NEG, U_SCALE, U_ADD_SCALAR, U_EXP, U_LOG, U_TANH, U_SIGMOID, U_SILU, U_SOFTPLUS, U_RELU, U_SQUARE, U_SQRT,
       U_CLAMP };

/* y = f(x); s0, s1: the op's scalars (scale / add_scalar: s0; clamp: lo, hi) */
template <int K> __device__ __forceinline__ float un_fwd(float x, float s0, float s1) {
  switch (K) {
    case U_NEG: return -x;
    case U_SCALE: return x * s0;
    case U_ADD_SCALAR: return x + s0;
    case U_EXP: return expf(x);
    case U_LOG: return logf(x);
    case U_TANH: return tanhf(x);
    case U_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case U_SILU: return x / (1.0f + expf(-x));
    case U_SOFTPLUS: return x > 20.0f ? x : fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
    case U_RELU: return x <= 0.0f ? 0.0f : x; /* relu(NaN) is NaN, as on the CPU */
    case U_SQUARE: return x * x;
    case U_SQRT: return sqrtf(x);
    default: return x < s0 ? s0 : x > s1 ? s1 : x; /* U_CLAMP */
  }
}
/* dx = g f'(x), from x or (exp, tanh, sigmoid, sqrt: ops that keep outputs) from y */
template <int K> __device__ __forceinline__ float un_bwd(float g, float x, float y, float s0, float s1) {
  switch (K) {
    case U_NEG: return -g;
    case U_SCALE: return g * s0;
    case U_ADD_SCALAR: return g;
    case U_EXP: return g * y;
    case U_LOG: return g / x;
    case U_TANH: return g * (1.0f - y * y);
    case U_SIGMOID: return g * y * (1.0f - y);
    case U_SILU: { float s = 1.0f / (1.0f + expf(-x)); return g * s * (1.0f + x * (1.0f - s)); }
    case U_SOFTPLUS: return x > 20.0f ? g : g / (1.0f + expf(-x));
    case U_RELU: return x > 0.0f ? g : x <= 0.0f ? 0.0f : x; /* NaN at a NaN x */
    case U_SQUARE: return 2.0f * x * g;
    case U_SQRT: return g / (2.0f * y);
    default: return (x >= s0 && x <= s1) ? g : 0.0f; /* U_CLAMP */
  }
}
/* ops whose backward reads y = out[0] (the rows carry M2_OP_KEEP_OUTPUTS) */
template <int K> struct un_uses_y { static const bool v = K == U_EXP || K == U_TANH || K == U_SIGMOID || K == U_SQRT; };

template <class T, int K>
__global__ void k_un_fwd(const T *x, T *y, int64_t n, float s0, float s1) {
  CU_GRID_STRIDE(i, n) y[i] = from_f<T>(un_fwd<K>(to_f(x[i]), s0, s1));
}
template <class T, int K>
__global__ void k_un_bwd(const T *g, const T *x, const T *y, T *dx, int64_t n, float s0, float s1) {
  CU_GRID_STRIDE(i, n) {
    float yv = un_uses_y<K>::v ? to_f(y[i]) : 0.0f, xv = un_uses_y<K>::v ? 0.0f : to_f(x[i]);
    dx[i] = from_f<T>(un_bwd<K>(to_f(g[i]), xv, yv, s0, s1));
  }
}

#include "elementwise_vec.cuh" /* the M2_VEC_MEMBOUND forms of k_un_fwd / k_un_bwd */

template <int K>
static m2_status unary_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  M2_TRY(cu_check_float(x, c->op->name, "x"));
  m2_tensor *y = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!y) return m2_errcode();
  c->n_out = 1;
  c->out[0] = y;
  int64_t n = m2_numel(x);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  const m2_unary_attr *a = M2_ATTR(c, m2_unary_attr); /* the op's scalars (core/ops_elementwise.h) */
  float s0 = (float)a->s0, s1 = (float)a->s1;
  CU_FLOAT_DISPATCH(x->dtype, if (!un_fwd_vec<T, K>((const T *)m2_data(x), (T *)m2_data(y), n, s0, s1, st))
                                  k_un_fwd<T, K><<<cu_grid(n, 256), 256, 0, st>>>((const T *)m2_data(x),
                                                                                  (T *)m2_data(y), n, s0, s1));
  M2_CUDA_LAUNCH_CHECK(c->op->name);
  return M2_OK;
}

template <int K>
static m2_status unary_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *y = c->out[0]; /* y is set only for ops that keep outputs */
  if (un_uses_y<K>::v && !y) return m2_fail(M2_ERR_AUTOGRAD, "%s backward: the forward output was not kept", c->op->name);
  m2_tensor *g = cu_as(c->dout[0], x->dtype);
  if (!g) return m2_errcode();
  m2_tensor *dx = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!dx) { m2_release(g); return m2_errcode(); }
  c->din[0] = dx;
  int64_t n = m2_numel(x);
  cudaStream_t st = NULL; /* set when s is M2_OK (initialised: GCC's maybe-uninitialized) */
  m2_status s = cu_stream(x->device, &st);
  if (s == M2_OK && n > 0) {
    const m2_unary_attr *a = M2_ATTR(c, m2_unary_attr); /* the op's scalars (core/ops_elementwise.h) */
    float s0 = (float)a->s0, s1 = (float)a->s1;
    const void *py = y ? m2_data(y) : NULL;
    CU_FLOAT_DISPATCH(x->dtype, if (!un_bwd_vec<T, K>((const T *)m2_data(g), (const T *)m2_data(x), (const T *)py,
                                                      (T *)m2_data(dx), n, s0, s1, st))
                                  k_un_bwd<T, K><<<cu_grid(n, 256), 256, 0, st>>>(
                                      (const T *)m2_data(g), (const T *)m2_data(x), (const T *)py, (T *)m2_data(dx), n,
                                      s0, s1));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s backward launch failed: %s", c->op->name, cudaGetErrorString(e));
  }
  m2_release(g);
  return s;
}

#define UNARY_ENTRY(name, K)                                                    \
  extern "C" m2_status m2_cuda_##name##_fwd(m2_opcall *c) { return unary_fwd<K>(c); } \
  extern "C" m2_status m2_cuda_##name##_bwd(m2_opcall *c) { return unary_bwd<K>(c); }
UNARY_ENTRY(neg, U_NEG)
UNARY_ENTRY(scale, U_SCALE)
UNARY_ENTRY(exp, U_EXP)
UNARY_ENTRY(log, U_LOG)
UNARY_ENTRY(tanh, U_TANH)
UNARY_ENTRY(sigmoid, U_SIGMOID)
UNARY_ENTRY(silu, U_SILU)
UNARY_ENTRY(softplus, U_SOFTPLUS)
UNARY_ENTRY(relu, U_RELU)
UNARY_ENTRY(square, U_SQUARE)
UNARY_ENTRY(sqrt, U_SQRT)
UNARY_ENTRY(clamp, U_CLAMP)

extern "C" m2_status m2_cuda_add_scalar_fwd(m2_opcall *c) { return unary_fwd<U_ADD_SCALAR>(c); }
/* dx = g: the same tensor, in x's dtype */
extern "C" m2_status m2_cuda_add_scalar_bwd(m2_opcall *c) {
  c->din[0] = cu_as(c->dout[0], c->in[0]->dtype);
  return c->din[0] ? M2_OK : m2_errcode();
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_elementwise(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_add, m2_cuda_add_fwd, NULL},
      {&m2_op_sub, m2_cuda_sub_fwd, NULL},
      {&m2_op_mul, m2_cuda_mul_fwd, NULL},
      {&m2_op_div, m2_cuda_div_fwd, NULL},
      {&m2_op_neg, m2_cuda_neg_fwd, m2_cuda_neg_bwd},
      {&m2_op_scale, m2_cuda_scale_fwd, m2_cuda_scale_bwd},
      {&m2_op_add_scalar, m2_cuda_add_scalar_fwd, m2_cuda_add_scalar_bwd},
      {&m2_op_exp, m2_cuda_exp_fwd, m2_cuda_exp_bwd},
      {&m2_op_log, m2_cuda_log_fwd, m2_cuda_log_bwd},
      {&m2_op_tanh, m2_cuda_tanh_fwd, m2_cuda_tanh_bwd},
      {&m2_op_sigmoid, m2_cuda_sigmoid_fwd, m2_cuda_sigmoid_bwd},
      {&m2_op_silu, m2_cuda_silu_fwd, m2_cuda_silu_bwd},
      {&m2_op_softplus, m2_cuda_softplus_fwd, m2_cuda_softplus_bwd},
      {&m2_op_relu, m2_cuda_relu_fwd, m2_cuda_relu_bwd},
      {&m2_op_square, m2_cuda_square_fwd, m2_cuda_square_bwd},
      {&m2_op_sqrt, m2_cuda_sqrt_fwd, m2_cuda_sqrt_bwd},
      {&m2_op_clamp, m2_cuda_clamp_fwd, m2_cuda_clamp_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
