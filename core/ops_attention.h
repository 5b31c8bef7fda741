/* ops_attention.h — internal: the attention and rope ops' argument checks, shared by the CPU ops
 * (core/ops_attention.c) and the CUDA entry points (cuda/ops_attention.cu) so both refuse bad input
 * with the same words. */
#ifndef M2_OPS_ATTENTION_H
#define M2_OPS_ATTENTION_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct att_geom { int64_t B, T, H, D, S, Hkv; } att_geom;

/* Check q (B,T,H,D), k, v (B,S,Hkv,D) (in[0..2], Hkv dividing H) and fill g. Messages name the shapes. */
m2_status m2_attention_check(m2_tensor *const *in, m2_float_rule check_float, att_geom *g);

/* Check the rope call c: x = in[0] (B,T,H,D) with D even, theta = fa[0] finite and > 0. */
m2_status m2_rope_check(const m2_opcall *c, m2_float_rule check_float);

#ifdef __cplusplus
}
#endif
#endif
