/* ops_attention.h — internal: the attention and rope ops' attributes (the checked sizes and options that
 * m2_attention / m2_rope store on the call) and checks, shared by the CPU ops (core/ops_attention.c) and the CUDA
 * entry points (the CUDA backend's ops_attention.cu), so both read one checked struct and refuse bad input with the same words. */
#ifndef M2_OPS_ATTENTION_H
#define M2_OPS_ATTENTION_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_attention_attr {
  int64_t B, T, H, D, S, Hkv; /* q (B,T,H,D), k and v (B,S,Hkv,D); Hkv divides H */
  double scale;               /* of q.k; resolved (never 0: 1/sqrt(D) when the options leave it 0), finite */
  bool causal;                /* query t reads the keys s <= t + (S - T) only */
  bool bf16;                  /* from m2_matmul_precision(), for f32 or bf16 inputs (the kernels see f32 ones: the op
                                 has M2_OP_CAST_F32_KERNELS; except the CUDA M2_ATTN_V2 path, which takes all-bf16
                                 calls as they are, m2_cast_register_native): q, k, v (and do) are rounded to bf16
                                 as the operands of every product (the CUDA path then runs on tensor cores) */
} m2_attention_attr;
M2_STATIC_ASSERT(sizeof(m2_attention_attr) <= M2_MAX_ATTR, "m2_attention_attr must fit in m2_opcall.attr");

/* Check q (B,T,H,D), k, v (B,S,Hkv,D) (in[0..2]: float, one dtype, Hkv dividing H) and fill a's sizes. Messages
 * name the shapes. */
m2_status m2_attention_check(m2_tensor *const *in, m2_attention_attr *a);

typedef struct m2_rope_attr {
  double theta;   /* base of the angles, finite and > 0 */
  int64_t offset; /* position of the first step */
} m2_rope_attr;
M2_STATIC_ASSERT(sizeof(m2_rope_attr) <= M2_MAX_ATTR, "m2_rope_attr must fit in m2_opcall.attr");

/* Check rope's x (B,T,H,D) (float, D even) and theta (finite, > 0). */
m2_status m2_rope_check(const m2_tensor *x, double theta);

#ifdef __cplusplus
}
#endif
#endif
