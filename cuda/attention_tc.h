/* attention_tc.h — internal (C++): the tensor-core attention path (cuda/attention_tc.cu) that
 * cuda/ops_attention.cu takes when the op's products are bf16 (m2_attention_attr.bf16) on f32 tensors with head dim
 * 32, 64 or 128; the fp32 kernels there serve every other call. d is the call's checked attributes. */
#ifndef M2_CUDA_ATTENTION_TC_H
#define M2_CUDA_ATTENTION_TC_H
#include <cuda_runtime.h>
#include "../core/ops_attention.h"

/* Whether call c (attributes d) runs on the tensor-core kernels. */
bool m2_att_tc_applies(const m2_opcall *c, const m2_attention_attr *d);
/* Forward into o (B,T,H,D) f32 and lse (B,H,T) f32, on stream st. */
m2_status m2_att_tc_fwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, m2_tensor *o, m2_tensor *lse);
/* Backward from the contiguous f32 dO and o and the saved lse; Dt is (B,H,T) f32 scratch; din[i] (f32, NULL when
 * not needed) receive dq, dk, dv. */
m2_status m2_att_tc_bwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, const m2_tensor *dO,
                        const m2_tensor *o, const float *lse, float *Dt, m2_tensor *const din[3]);
#endif
