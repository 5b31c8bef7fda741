/* ssd_chunk.h — the chunked (state-space dual) Mamba-2 SSD forward and backward on tensor cores (cuda/ssd_chunk.cu),
 * used by both rows ("ssd", "ssd_chunked") of cuda/ops_ssd.cu unless M2_SSD_CHUNK_TC=0 (read once), when the call
 * fits (ssd_chunk_applies); otherwise they run the recurrent kernels. Included by cuda/ops_ssd.cu only. */
#ifndef M2_CUDA_SSD_CHUNK_H
#define M2_CUDA_SSD_CHUNK_H
#include "ops_common.cuh"
extern "C" {
#include "../core/ops_ssd.h"
}

/* Whether the chunked kernels take the checked call c, forward or (bwd) backward: the switch is on, the products may
 * be bf16 (bf16 inputs, or f32 inputs under m2_matmul_precision() == M2_MM_BF16 at the call), the staged tiles fit
 * the device's shared memory, the grid fits. seg: the chunk the kernels use (the checkpoint interval mx_seg(chunk),
 * 1..64). Forward and backward decide apart: either pairs with the other's chunked or recurrent form (same
 * checkpoints). */
bool ssd_chunk_applies(const m2_opcall *c, int64_t seg, bool bwd);

/* The chunked forward of the checked call c with chunk seg (<= 64): y (B,T,H,P) and hT (B,H,P,N) in the inputs'
 * dtype; ck (B,H,NS,P,N) fp32, NS = ceil(T / seg), gets the state before every chunk (the recurrent forward's
 * checkpoints, what the CUDA backward reads). ck must exist (scratch when no node is recorded). */
m2_status ssd_chunk_forward(const m2_opcall *c, int64_t seg, m2_tensor *y, m2_tensor *hT, m2_tensor *ck,
                            cudaStream_t st);

/* The chunked backward of the recorded call c (saved[0]: the checkpoints of chunk seg): dy, dhT contiguous in the
 * inputs' dtype; din[i] (NULL where not wanted) get dx, ddt, dA, dB, dC, dh0. Several heads a group: dB, dC are
 * summed over the group's heads inside the backward kernel (the default where N <= 256), or from per-head fp32
 * partials (M2_SSD_BWD_GROUPED=0, m2_cuda_ssd_bwd_grouped(0); N > 256), the same sums in the same order. */
m2_status ssd_chunk_backward(const m2_opcall *c, int64_t seg, const m2_tensor *dy, const m2_tensor *dhT,
                             m2_tensor *const din[6], cudaStream_t st);

#endif
