/* m2cuda.h — the CUDA backend library's public entry: what a program linking it (the m2lab host, the CUDA tests and
 * benchmarks) calls once at start-up. Core never includes this file. */
#ifndef M2_CUDA_H
#define M2_CUDA_H
#include "status.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Register the CUDA backend into core: every CUDA op kernel into the op registry (op.h), and a probe that, on the
 * first m2_backend_get(M2_CUDA), looks for GPUs and registers the memory / copy / fill / optimizer table when one is
 * present. Touches no device itself (a host without a GPU pays nothing). Idempotent. */
m2_status m2_cuda_register(void);

/* The mixed bf16 / f32 kernels of conv1d_causal, add, sub, mul and swiglu (a bf16 activation with an f32 parameter or
 * the f32 residual stream, without f32 copies): core's switch (m2_mixed_kernels, op.h; the environment variable
 * M2_MIXED_KERNELS, on unless 0) from now on: 1 on, 0 off, -1 keeps; returns the previous setting. Off, such calls
 * convert. */
int m2_cuda_mixed_kernels(int set);
/* Kernel calls (forwards and backwards) that took a mixed path so far (tests check that a call took it). */
long m2_cuda_mixed_calls(void);

/* Calls of the tensor-core attention kernels so far (tests check that a call took that path). */
long m2_cuda_attention_tc_calls(void);
/* The attention forward on Hopper's warpgroup products (cuda/attention_wgmma.cu) from now on: 1 on (sm_90 devices,
 * head dims 64 and 128, calls of the tensor-core path), 2 on with softmax and P v overlapped inside a warpgroup,
 * 0 off; -1 keeps it. Returns the previous setting (at first: 0 where M2_ATTN_WGMMA is "0", 2 where "2", else 1). */
int m2_cuda_attention_wgmma(int set);
/* Forwards run by that kernel so far (tests check that a call took that path; they also count in
 * m2_cuda_attention_tc_calls). */
long m2_cuda_attention_wgmma_calls(void);
/* 1 when this build holds that kernel (its CUDA targets include 90) and the current device runs it (sm_90). */
int m2_cuda_attention_wgmma_device(void);
/* The attention backward on Hopper's warpgroup products (cuda/attention_wgmma_bwd.cu) from now on: 1 on (sm_90
 * devices, head dims 64 and 128, backwards of the M2_ATTN_V2 path), 0 off; -1 keeps it. Returns the previous setting
 * (at first: 1 where M2_ATTN_BWD_WGMMA is "1", else 0: off by default, not yet run on a GPU). */
int m2_cuda_attention_bwd_wgmma(int set);
/* Backwards run by that kernel so far (they also count in m2_cuda_attention_tc_calls and _v2_calls). */
long m2_cuda_attention_bwd_wgmma_calls(void);
/* The M2_ATTN_V2 path of the tensor-core attention (cuda/attention_tc_v2.cuh): set = 1 on, 0 off for this process,
 * -1 only asks; returns the setting (at first: 0 where the environment has M2_ATTN_V2=0, else 1: on by default).
 * On: q, k, v and do are read in place as bf16 (bf16 inputs are no longer converted to f32 by the dispatcher; f32
 * ones pass one vectorized conversion), outputs come in the inputs' dtype, and the backward is one kernel with an
 * fp32 atomicAdd for dq (its summation order varies from run to run). Calls of that path so far. */
int m2_cuda_attn_v2(int set);
long m2_cuda_attention_v2_calls(void);
/* The vectorized memory-bound kernels (cuda/membound_vec.cuh): rmsnorm / l2norm forward and backward, the copies of a
 * column range of contiguous rows (split / concat / narrow along the last dim), the unary maps forward and backward.
 * set = 1 on, 0 off for this process, -1 only asks; returns the setting (at first: 0 where the environment has
 * M2_VEC_MEMBOUND=0, else 1: on by default; read once). Off, the launched kernels are the old ones. On, the unary
 * maps and the copies give the same bits as off; rmsnorm / l2norm sum a row's squares (and the backward's dot
 * product) in another order (the last bits of 1/rms may differ). Launches of those kernels so far (tests check that a
 * call took the path). */
int m2_cuda_vec_membound(int set);
/* Host -> device copies without waiting for them (M2_ASYNC_H2D=1; off by default, not yet run on a GPU): set = 1 on,
 * 0 off, -1 only asks; returns the setting. The source is staged by the driver before the call returns (pageable
 * memory), so it may be reused at once; the host no longer waits for the stream's earlier work when a batch goes up.
 * Device -> host copies always wait. */
int m2_cuda_async_h2d(int set);
long m2_cuda_vec_membound_calls(void);
/* SSD forwards (rows "ssd" and "ssd_chunked") run by the chunked tensor-core kernels so far. */
long m2_cuda_ssd_chunk_tc_calls(void);
/* SSD backwards run by the chunked tensor-core kernels so far. */
long m2_cuda_ssd_chunk_tc_bwd_calls(void);
/* The chunked SSD kernels' mode from now on (tests, benchmarks): 0 off, 1 on (the chain kernel), 2 on with the chunk
 * states made in two launches (chunk-local states, then a pass over them); -1 keeps it. Returns the previous mode
 * (at first: M2_SSD_CHUNK_TC: 1 when unset, 0 for "0" or "off", 2 for "2"). */
int m2_cuda_ssd_chunk_mode(int mode);
/* The chunked SSD backward's grouped form from now on: 1 sums the dB, dC of a group's heads inside the backward
 * kernel (one block a (batch, group, chunk) running the group's heads in head order; no per-head fp32 partials),
 * 0 off (per-head partials, then a sum over each group's heads); -1 keeps it. Returns the previous setting (at
 * first: 0 where M2_SSD_BWD_GROUPED is "0", else 1). Applies where a group has several heads and N <= 256; the sums
 * are those of the per-head path, in the same order. Grouped backwards run so far (tests check that a call took it). */
int m2_cuda_ssd_bwd_grouped(int set);
long m2_cuda_ssd_bwd_grouped_calls(void);

/* The chunked tensor-core Gated DeltaNet kernels (cuda/gdn_chunk.cu, gdn_chunk_bwd.cu): set = 1 switches forward
 * and backward on for this process, 2 the forward only (the backward stays recurrent), 0 off; set = -1 only asks;
 * returns the setting. On (1) unless the environment has M2_GDN_CHUNK_TC=0 (or =fwd: 2), read at the first call; it
 * applies to bf16 inputs and to f32 inputs under M2_MM_BF16 products (cuda/gdn_chunk.h).
 * Calls of the chunked forward / backward so far (tests check that a call took that path). */
int m2_cuda_gdn_chunk_tc(int set);
long m2_cuda_gdn_chunk_tc_calls(void);
long m2_cuda_gdn_chunk_tc_bwd_calls(void);
/* The chunked GDN backward's second form from now on (off by default until its parity is measured on a GPU): 1 keeps
 * prep's outputs (W, U, Q~, K~, P, T, K K^T, Q K^T, the chunk decays) from the forward as saved tensors of the op, so
 * that the backward does not run prep again, and runs the chunk-gradient kernel k_gdn_bwy2 (cuda/gdn_chunk_bwy2.cuh)
 * in place of k_gdn_bwy; 0 off; -1 only asks. Returns the setting (at first: 1 where M2_GDN_BWD_V2 is "1", else 0;
 * read once). Applies where the chunked backward does (m2_cuda_gdn_chunk_tc 1, cuda/gdn_chunk.h).
 * Forwards that kept prep's outputs, backwards that used them (no prep launch), backwards that ran k_gdn_bwy2. */
int m2_cuda_gdn_bwd_v2(int set);
long m2_cuda_gdn_keep_calls(void);
long m2_cuda_gdn_keep_used_calls(void);
long m2_cuda_gdn_bwy2_calls(void);

#ifdef __cplusplus
}
#endif
#endif
