/* attention_wgmma.h — internal (C++): the causal / full attention forward on Hopper's warpgroup products
 * (cuda/attention_wgmma.cu, sm_90a), which m2_att_tc_fwd (cuda/attention_tc.cu) takes instead of its mma.sync kernel
 * when att_wgmma_fwd_ok says so, and the backward (cuda/attention_wgmma_bwd.cu), which att_v2_bwd takes instead of
 * k2_bwd when att_wgmma_bwd_ok says so. Same results as those kernels up to the order of fp32 sums. */
#ifndef M2_CUDA_ATTENTION_WGMMA_H
#define M2_CUDA_ATTENTION_WGMMA_H
#include <cuda_runtime.h>
#include <stdint.h>
#include "../core/ops_attention.h"

/* Whether the forward of d runs here: the switch is on (M2_ATTN_WGMMA=1, or 2 for the variant that overlaps softmax
 * and P v inside a warpgroup; read once, off by default; or m2_cuda_attention_wgmma), the current device is sm_90,
 * this build holds the sm_90a kernel, and D is 64 or 128. */
bool att_wgmma_fwd_ok(const m2_attention_attr *d);

/* o (B,T,H,D) contiguous, f32 or (o_bf16) bf16 bits rounded to nearest, and lse (B,H,T) (natural log; -inf for a row that sees no key) of q (B,T,H,D) against
 * k, v (B,S,Hkv,D), all bf16 bits with element strides q_sb, q_st, q_sh (batch, row, head; each row of D
 * contiguous) and kv_sb, kv_st, kv_sh for k and v. Causal: query t reads keys s < clamp(t + S - T + 1, 0, S). P is
 * rounded to bf16 as the operand of P v. Launches on st; returns the launch's error. */
cudaError_t att_wgmma_fwd(const m2_attention_attr *d, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          int64_t q_sb, int64_t q_st, int64_t q_sh, int64_t kv_sb, int64_t kv_st, int64_t kv_sh,
                          void *o, bool o_bf16, float *lse, float scale, bool causal, cudaStream_t st);
/* A bf16 operand: element (b, row r, head h, d) at p[b sb + r sr + h sh + d]; d contiguous, 16-byte aligned rows
 * (the att_v of cuda/attention_tc_v2.cuh). */
struct wg_opnd {
  const uint16_t *p;
  int64_t sb, sr, sh;
};

/* Whether the backward of d runs on the warpgroup kernel: the switch is on (M2_ATTN_BWD_WGMMA=1, read once, OFF by
 * default; or m2_cuda_attention_bwd_wgmma), the current device is sm_90, this build holds the sm_90a kernel, and D is
 * 64 or 128. */
bool att_wgmma_bwd_ok(const m2_attention_attr *d);

/* The one-pass backward of k2_bwd (cuda/attention_tc_v2.cuh) on q (B,T,H,D), k, v (B,S,Hkv,D), dO (B,T,H,D) bf16
 * operands, lse (B,H,T) natural-log, Dt (B,H,T) = rowsum(dO o): dq added into dqa (B,T,H,D) fp32 (zeroed by the
 * caller; NULL: no dq), dk = scale dK and dv (B,S,Hkv,D) written in f32 or (out_bf16) bf16 rounded to nearest (NULL:
 * not wanted). Causal: query t sees keys s < clamp(t + S - T + 1, 0, S). Launches on st; returns the launch's error. */
cudaError_t att_wgmma_bwd(const m2_attention_attr *d, wg_opnd q, wg_opnd k, wg_opnd v, wg_opnd dO, const float *lse,
                          const float *Dt, float *dqa, void *dk, void *dv, bool out_bf16, float scale, bool causal,
                          cudaStream_t st);
#endif
