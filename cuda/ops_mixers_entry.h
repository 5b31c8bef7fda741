/* ops_mixers_entry.h — CUDA entry points of the sequence-mixer ops (cuda/ops_gdn.cu, cuda/ops_ssd.cu,
 * cuda/ops_attention.cu), registered at the end of those files for the rows of core/ops_gdn.c, core/ops_ssd.c,
 * core/ops_attention.c.
 * Same protocol as every op (core/op.h); inputs F32 or BF16 (one dtype per call), fp32 compute,
 * outputs and gradients in the inputs' dtype, F64 refused with M2_ERR_DTYPE. */
#ifndef M2_CUDA_OPS_MIXERS_ENTRY_H
#define M2_CUDA_OPS_MIXERS_ENTRY_H
#include "../core/op.h"
#ifdef __cplusplus
extern "C" {
#endif
/* Gated DeltaNet: rows "gdn" and "gdn_chunked" both run the recurrent kernels for now. */
m2_status m2_cuda_gdn_fwd(m2_opcall *c);
m2_status m2_cuda_gdn_chunked_fwd(m2_opcall *c);
m2_status m2_cuda_gdn_bwd(m2_opcall *c);
/* Mamba-2 SSD: rows "ssd" and "ssd_chunked" run the chunked tensor-core form (cuda/ssd_chunk.cu) where it applies
 * (unless M2_SSD_CHUNK_TC=0), the recurrent kernels otherwise. */
m2_status m2_cuda_ssd_fwd(m2_opcall *c);
m2_status m2_cuda_ssd_chunked_fwd(m2_opcall *c);
m2_status m2_cuda_ssd_bwd(m2_opcall *c);
/* Causal / full softmax attention (tiled, online softmax) and rotary embedding. */
m2_status m2_cuda_attention_fwd(m2_opcall *c);
m2_status m2_cuda_attention_bwd(m2_opcall *c);
/* How many attention forward and backward calls ran on the tensor-core path (bf16 products) so far. */
long m2_cuda_attention_tc_calls(void);
/* The M2_ATTN_V2 switch and its calls (m2cuda.h). */
int m2_cuda_attn_v2(int set);
long m2_cuda_attention_v2_calls(void);
m2_status m2_cuda_rope_fwd(m2_opcall *c);
m2_status m2_cuda_rope_bwd(m2_opcall *c);
#ifdef __cplusplus
}
#endif
#endif
