/* cuda_ops.h — every CUDA op entry point (same protocol as the CPU rows, see core/op.h), the backend-table hooks
 * (strided copy and fill, optimizer updates, clipping reductions) that backend.cu hands to core, and the per-file
 * registration functions. C-callable; needs no CUDA headers.
 *
 * Float kernels accept F32 and BF16 (all float inputs of one call share a dtype), accumulate in fp32
 * and write the input dtype; gradients come out in the input's dtype. F64 is refused with M2_ERR_DTYPE.
 * All work is ordered on m2_cuda_stream(device index); nothing synchronises except where a result
 * must reach the host (index checks, the loss's target check, grad norms). */
#ifndef M2_CUDA_OPS_H
#define M2_CUDA_OPS_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the files that register op kernels: each cuda/X.cu defines m2_cuda_register_X() (a table of
 * {row, fwd, bwd} at its end); m2_cuda_register (backend.cu) calls them all. A new kernel file adds one name. ---- */
#define M2_CUDA_OP_FILES(X)                                                                                    \
  X(ops_view) X(ops_elementwise) X(ops_swiglu) X(ops_reduce) X(ops_matmul) X(ops_nn) X(ops_index) X(ops_conv1d) \
  X(ops_m2rnn) X(ops_gdn) X(ops_ssd) X(ops_attention) X(ops_moe)
#define M2_CUDA_DECL_REGISTER(f) m2_status m2_cuda_register_##f(void);
M2_CUDA_OP_FILES(M2_CUDA_DECL_REGISTER)
#undef M2_CUDA_DECL_REGISTER

/* ---- backend-table hooks for strided copies and fills (cuda/ops_view.cu) ---- */
/* dst = src elementwise, both on the same CUDA device, any strides (dst may be a strided view,
 * src may have 0 strides), any dtypes (converted like m2_store); numel must match (row-major order). */
m2_status m2_cuda_copy(m2_tensor *dst, const m2_tensor *src);
/* Every element of t (CUDA, any strides, any dtype) = v. */
m2_status m2_cuda_fill(m2_tensor *t, double v);

/* ---- views and copies (cuda/ops_view.cu) ---- */
m2_status m2_cuda_contiguous_fwd(m2_opcall *c);
m2_status m2_cuda_to_dtype_fwd(m2_opcall *c);
m2_status m2_cuda_to_dtype_bwd(m2_opcall *c);
m2_status m2_cuda_narrow_bwd(m2_opcall *c);

/* ---- elementwise (cuda/ops_elementwise.cu); add/sub/mul/div backward is the CPU file's composite ---- */
m2_status m2_cuda_add_fwd(m2_opcall *c);
m2_status m2_cuda_sub_fwd(m2_opcall *c);
m2_status m2_cuda_mul_fwd(m2_opcall *c);
m2_status m2_cuda_div_fwd(m2_opcall *c);
#define M2_CUDA_UNARY(X) X(neg) X(scale) X(add_scalar) X(exp) X(log) X(tanh) X(sigmoid) X(silu) X(softplus) \
  X(relu) X(square) X(sqrt) X(clamp)
#define M2_CUDA_DECL_FB(n) m2_status m2_cuda_##n##_fwd(m2_opcall *c); m2_status m2_cuda_##n##_bwd(m2_opcall *c);
M2_CUDA_UNARY(M2_CUDA_DECL_FB)

/* ---- reductions (cuda/ops_reduce.cu) ---- */
M2_CUDA_DECL_FB(sum) M2_CUDA_DECL_FB(mean) M2_CUDA_DECL_FB(sum_all) M2_CUDA_DECL_FB(mean_all)
M2_CUDA_DECL_FB(max) M2_CUDA_DECL_FB(max_all) M2_CUDA_DECL_FB(softmax) M2_CUDA_DECL_FB(log_softmax)
M2_CUDA_DECL_FB(cumsum)
m2_status m2_cuda_argmax_fwd(m2_opcall *c);
m2_status m2_cuda_eq_fwd(m2_opcall *c);

/* ---- swiglu(a, b) = silu(a) * b (cuda/ops_swiglu.cu) ---- */
M2_CUDA_DECL_FB(swiglu)

/* ---- matrix products (cuda/ops_matmul.cu, cuBLAS, fp32 accumulation) ---- */
M2_CUDA_DECL_FB(matmul)

/* ---- neural-net ops (cuda/ops_nn.cu) ---- */
M2_CUDA_DECL_FB(embedding) M2_CUDA_DECL_FB(cross_entropy) M2_CUDA_DECL_FB(rmsnorm) M2_CUDA_DECL_FB(l2norm)

/* ---- indexing and joining (cuda/ops_index.cu) ---- */
M2_CUDA_DECL_FB(concat) M2_CUDA_DECL_FB(split) M2_CUDA_DECL_FB(gather) M2_CUDA_DECL_FB(index_select)

/* ---- depthwise causal conv1d (cuda/ops_conv1d.cu) ---- */
M2_CUDA_DECL_FB(conv1d_causal)

/* ---- mixture of experts: router, permutation, grouped GEMMs on cuBLAS, weighted unpermute (cuda/ops_moe.cu) ---- */
M2_CUDA_DECL_FB(moe_route) M2_CUDA_DECL_FB(moe_permute) M2_CUDA_DECL_FB(moe_grouped_matmul)
M2_CUDA_DECL_FB(moe_unpermute)

/* ---- optimizer kernels and clipping reductions, the backend table's (cuda/ops_optim.cu); p, g, state contiguous
 * F32 on one device ---- */
/* SGD (optim.c's maths): d = g + wd p; buf = mu buf + d (buf may be NULL when mu == 0);
 * d = nesterov ? d + mu buf : buf; p -= lr d. */
m2_status m2_cuda_sgd_update(m2_tensor *p, const m2_tensor *g, m2_tensor *buf, double lr, double momentum, double wd,
                             bool nesterov);
/* AdamW: p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). */
m2_status m2_cuda_adamw_update(m2_tensor *p, const m2_tensor *g, m2_tensor *m, m2_tensor *v, double lr, double beta1,
                               double beta2, double eps, double wd, double bc1, double bc2);
/* out[i] = sum of squares of ts[i] (CUDA, contiguous, F32 or BF16; NULL -> 0), accumulated in double in a
 * fixed order (deterministic); one synchronisation per device. */
m2_status m2_cuda_sumsq_many(m2_tensor *const *ts, int n, double *out);
/* t *= s in place (CUDA, contiguous, F32 or BF16). */
m2_status m2_cuda_scale_(m2_tensor *t, double s);
/* sample.cu: the backend's sample_rows hook (core/backend.h) */
m2_status m2_cuda_sample_rows(const m2_tensor *logits, double temperature, const double *u, int64_t *ids,
                              int64_t *bad);

#undef M2_CUDA_DECL_FB
#ifdef __cplusplus
}
#endif
#endif
