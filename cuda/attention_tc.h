/* attention_tc.h — internal (C++): the tensor-core attention path (cuda/attention_tc.cu) that
 * cuda/ops_attention.cu takes when the op's products are bf16 (m2_attention_attr.bf16) on f32 tensors with head dim
 * 32, 64 or 128; the fp32 kernels there serve every other call. d is the call's checked attributes. */
#ifndef M2_CUDA_ATTENTION_TC_H
#define M2_CUDA_ATTENTION_TC_H
#include <cuda_runtime.h>
#include "../core/ops_attention.h"

/* Whether call c (attributes d) runs on the tensor-core kernels: f32 q, k, v with bf16 products; with the v2 path on
 * (M2_ATTN_V2, on unless 0, m2_cuda_attn_v2 in m2cuda.h) also bf16 ones, which the dispatcher then leaves unconverted
 * (m2_att_tc_takes_bf16, registered with m2_cast_register_native). */
bool m2_att_tc_applies(const m2_opcall *c, const m2_attention_attr *d);
/* Whether the v2 path takes the all-bf16 call c as it is (its attributes checked; bf16 products, D 32 / 64 / 128). */
extern "C" bool m2_att_tc_takes_bf16(const m2_opcall *c);
/* Forward into o (B,T,H,D) f32 (bf16 on the v2 path for bf16 inputs) and lse (B,H,T) f32, on stream st. */
m2_status m2_att_tc_fwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, m2_tensor *o, m2_tensor *lse);
/* Backward from the contiguous dO and o (f32; bf16 on the v2 path for bf16 inputs) and the saved lse; Dt is (B,H,T)
 * f32 scratch; din[i] (in q's dtype, zeroed; NULL when not needed) receive dq, dk, dv. */
m2_status m2_att_tc_bwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, const m2_tensor *dO,
                        const m2_tensor *o, const float *lse, float *Dt, m2_tensor *const din[3]);
#endif
