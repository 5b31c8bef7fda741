/* ops_elementwise.h — internal: the broadcasting binary ops' (add, sub, mul, div) argument checks, output and
 * iteration plan, and the unary maps' typed attributes, shared by the CPU ops (core/ops_elementwise.c) and the
 * CUDA entry points (the CUDA backend's ops_elementwise.cu), so both refuse bad input with the same words and walk the same
 * plan. */
#ifndef M2_OPS_ELEMENTWISE_H
#define M2_OPS_ELEMENTWISE_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* The unary maps' scalars (0 for the ops that take none), checked by the public entry:
 *   scale: s0 = the factor;  add_scalar: s0 = the addend;  clamp: s0 = lo, s1 = hi (lo <= hi).
 * Kept in double so that F32 rounds the exact x * s or x + s once. */
typedef struct m2_unary_attr {
  double s0; /* scale: factor; add_scalar: addend; clamp: lo */
  double s1; /* clamp: hi */
} m2_unary_attr;

/* The broadcast iteration space with size-1 dims dropped and adjacent dims merged wherever both
 * operands step through them as one (e.g. (B, T, d) + (d) -> (B*T, d) with b strides (0, 1)).
 * Inputs are contiguous, so in the last plan dim each stride is 0 or 1, and not both 0. */
typedef struct bin_plan {
  int nd;                      /* >= 1 */
  int64_t shape[M2_MAX_DIMS];  /* (nd) */
  int64_t sa[M2_MAX_DIMS];     /* (nd) element strides of a; 0 where a is broadcast */
  int64_t sb[M2_MAX_DIMS];     /* (nd) same for b */
} bin_plan;

/* The binary call c: check a = in[0], b = in[1] (float by the backend's rule, the same dtype, broadcastable),
 * create out[0] (the broadcast shape, on a's device) and fill p; *n = the output's element count (0: done). */
m2_status m2_binary_setup(m2_opcall *c, m2_float_rule check_float, bin_plan *p, int64_t *n);

/* swiglu's argument check (core/ops_swiglu.c), shared with the CUDA backend's ops_swiglu.cu: a and b non-NULL, float by the
 * backend's rule, the same dtype and shape. */
m2_status m2_swiglu_check(m2_tensor *a, m2_tensor *b, m2_float_rule check_float);

#ifdef __cplusplus
}
#endif
#endif
