/* ops_moe.h — internal: the mixture-of-experts ops' typed attributes and argument checks, shared by the CPU ops
 * (core/ops_moe.c) and the CUDA entry points (the CUDA backend's ops_moe.cu), so both refuse bad input with the same
 * words. The public entries are in ops.h ("mixture of experts").
 *
 * The MoE MLP of DESIGN 3.5 as four ops (N tokens, E experts, k = top_k, M = N k routed slots):
 *   moe_route           logits (N, E) -> weights (N, k), indices (N, k) i64, aux (2) = (load-balance, z-loss),
 *                       counts (E) i64
 *   moe_permute         x (N, d), indices (N, k) -> xp (M, d) sorted by expert (stable), pos (N, k) i64 (the row of
 *                       slot (n, j) in xp), offsets (E + 1) i64 (expert e's rows are [offsets[e], offsets[e+1]))
 *   moe_grouped_matmul  x (M, in), w (E, out, in), offsets (E + 1) -> y (M, out): y[m] = w[e] x[m] for m in group e
 *   moe_unpermute       yp (M, d), weights (N, k), pos (N, k) -> y (N, d): y[n] = sum_j weights[n, j] yp[pos[n, j]]
 * The experts' SwiGLU between them is the swiglu op. */
#ifndef M2_OPS_MOE_H
#define M2_OPS_MOE_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* moe_route: how many experts each token goes to (1 <= top_k <= E). */
typedef struct m2_moe_route_attr {
  int64_t top_k;
} m2_moe_route_attr;

/* moe_permute: the number of experts (E >= 1; every index must lie in [0, E)). */
typedef struct m2_moe_permute_attr {
  int64_t experts;
} m2_moe_permute_attr;

/* moe_grouped_matmul: bf16 products (f32 tensors, m2_matmul_precision() == M2_MM_BF16 at the call), as matmul. */
typedef struct m2_moe_gmm_attr {
  bool bf16;
} m2_moe_gmm_attr;

/* logits (N, E) float by the backend's rule, 1 <= top_k <= E. */
m2_status m2_moe_route_check(const m2_tensor *logits, int64_t top_k, m2_float_rule check_float);
/* x (N, d) float, indices (N, k) i32 / i64, experts >= 1 (index values are checked by the kernels). */
m2_status m2_moe_permute_check(const m2_tensor *x, const m2_tensor *indices, int64_t experts,
                               m2_float_rule check_float);
/* x (M, in) float, w (E, out, in) of x's dtype, offsets (E + 1) i64 (values are checked by the kernels). */
m2_status m2_moe_gmm_check(const m2_tensor *x, const m2_tensor *w, const m2_tensor *offsets,
                           m2_float_rule check_float);
/* The host offsets (E + 1) of M rows: offsets[0] = 0, non-decreasing, offsets[E] = M. */
m2_status m2_moe_offsets_valid(const int64_t *off, int64_t E, int64_t M);
/* yp (M, d) float, weights (N, k) of yp's dtype, pos (N, k) i32 / i64, M = N k. */
m2_status m2_moe_unpermute_check(const m2_tensor *yp, const m2_tensor *weights, const m2_tensor *pos,
                                 m2_float_rule check_float);

#ifdef __cplusplus
}
#endif
#endif
