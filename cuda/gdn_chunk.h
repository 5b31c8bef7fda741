/* gdn_chunk.h — internal (C++): the chunked tensor-core Gated DeltaNet forward (cuda/gdn_chunk.cu) and backward
 * (cuda/gdn_chunk_bwd.cu) that cuda/ops_gdn.cu takes when they are switched on (the default: both; M2_GDN_CHUNK_TC=fwd the
 * forward only, =0 neither; m2_cuda_gdn_chunk_tc) and the call's shape and precision fit; the recurrent kernels there serve every
 * other call. d is the call's checked attributes. */
#ifndef M2_CUDA_GDN_CHUNK_H
#define M2_CUDA_GDN_CHUNK_H
#include <cuda_runtime.h>
extern "C" {
#include "../core/ops_gdn.h"
}

#define GDN_TC_C 64   /* tokens a chunk (also the interval of the states kept for the backward) */
#define GDN_TC_BV 64  /* state columns (value dims) a scan block owns */
#define GDN_TC_MAXK 256

/* Whether a call with attributes d, checkpoint interval seg fits the tiling: K a multiple of 16 up to 256, V a
 * multiple of 64, seg = 64, T >= 1, B H < 65536, ceil(T / 64) < 65536 (grid dimensions). */
bool gdn_tc_shape_ok(const m2_gdn_attr *d, int64_t seg);
/* Whether the forward (switch 1 or 2) / the backward (switch 1) takes the chunked kernels: the switch (the
 * environment read once, m2_cuda_gdn_chunk_tc), the shape, and the precision: their products round every operand to
 * bf16, so they take bf16 inputs, or f32 inputs only when f32 products were not asked for (m2_matmul_precision() ==
 * M2_MM_BF16, as under precision = "bf16"); f32 inputs under M2_MM_F32 keep the recurrent fp32 kernels. */
bool gdn_tc_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt);
bool gdn_tc_bwd_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt);
/* bf16, or f32 under M2_MM_BF16 */
bool gdn_tc_precision_ok(m2_dtype dt);

/* Whether a forward with these attributes keeps prep's outputs for the backward (M2_GDN_BWD_V2, m2_cuda_gdn_bwd_v2):
 * the switch on and the chunked backward taking the call (gdn_tc_bwd_applies). */
bool gdn_tc_keep_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt);
/* Elements of the two tensors that hold prep's outputs (with NC = ceil(T / 64), R = B H NC 64 padded rows):
 *   keep16 (bf16) = W (R, K) | Q~ (R, K) | K~ (R, K) | U (R, V) | P (B H NC, 64, 64)       : 3 R K + R V + R 64
 *   keep32 (fp32) = T | K K^T | Q K^T (each B H NC, 64, 64) | exp(gam_63) (B H NC)          : 3 R 64 + B H NC
 * 400M layer (B 8, T 4096, H 2, K 256, V 512): 176 MB + 50 MB. */
void gdn_tc_keep_numel(const m2_gdn_attr *d, int64_t *n16, int64_t *n32);

/* Forward on stream st. in = {q, k, v, g, beta, h0 or NULL} (dtype dt: f32 or bf16, contiguous); o (B,T,H,V) and
 * hT (B,H,K,V) in dt; ck (B,H,NS,V,K) fp32 (NS = ceil(T / 64)) or NULL. dev: where the scratch goes. keep16, keep32
 * (gdn_tc_keep_numel's sizes, 16-byte aligned) or both NULL: where prep writes its outputs, T, K K^T and Q K^T too,
 * for the backward (else they are scratch of this call). */
m2_status gdn_tc_forward(const m2_gdn_attr *d, m2_dtype dt, m2_device dev, cudaStream_t st, const void *const in[6],
                         void *o, void *hT, float *ck, void *keep16, float *keep32);

/* Backward on stream st from the forward's fp32 states ck (B,H,NS,V,K). in as for the forward; dy (B,T,H,V) and dhT
 * (B,H,K,V) or NULL, in dt; din = {dq, dk, dv, dg, dbeta, dh0}, each NULL when not wanted, in dt. keep16, keep32:
 * the forward's kept prep outputs (then prep is not run again) or both NULL. With m2_cuda_gdn_bwd_v2 on, the chunk
 * gradients come from k_gdn_bwy2, else from k_gdn_bwy. */
m2_status gdn_tc_backward(const m2_gdn_attr *d, m2_dtype dt, m2_device dev, cudaStream_t st, const void *const in[6],
                          const void *dy, const void *dhT, const float *ck, const void *keep16, const float *keep32,
                          void *const din[6]);
#endif
