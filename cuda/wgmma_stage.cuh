/* wgmma_stage.cuh — what the Hopper attention kernels (cuda/attention_wgmma.cu, cuda/attention_wgmma_bwd.cu)
 * share besides the products: cp.async groups, the staging of (L, D) bf16 rows into the 128-byte swizzled tiles of
 * wgmma_layout.h, and the store of two adjacent outputs in the call's dtype. */
#ifndef M2_CUDA_WGMMA_STAGE_CUH
#define M2_CUDA_WGMMA_STAGE_CUH
#include <stdint.h>
#include "mma.cuh"
#include "wgmma_layout.h"

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
/* Two adjacent outputs: fp32, or bf16 bits rounded to nearest (the output dtype of the call; M2_ATTN_V2 keeps bf16). */
__device__ __forceinline__ void wg_store2(float *p, float a, float b) { *(float2 *)p = make_float2(a, b); }
__device__ __forceinline__ void wg_store2(uint16_t *p, float a, float b) { *(uint32_t *)p = mma_pack(a, b); }

/* Stage rows r0 .. r0 + R - 1 of a (L, D) bf16 matrix g (row stride ld elements) into the swizzled tile at shared
 * address s (R rows); rows >= L become 0. NT threads, this one tid: its 16-byte chunks are column c = tid % CH of
 * rows tid / CH + k RS (RS = NT / CH, a multiple of 8, so every row of this thread has the same swizzle phase). */
template <int R, int D, int NT>
__device__ __forceinline__ void wg_stage(uint32_t s, const uint16_t *g, int64_t ld, int r0, int L, int tid) {
  constexpr int CH = D / 8, RS = NT / CH, NK = (R * CH + NT - 1) / NT;
  static_assert(RS % 8 == 0, "one swizzle phase a thread");
  const int rr = tid / CH, c = tid % CH;
  const uint32_t so = s + wg_tile_off(rr, c, R);
  const uint16_t *src = g + (int64_t)(r0 + rr) * ld + c * 8;
#pragma unroll
  for (int k = 0; k < NK; k++) {
    if (R * CH % NT != 0 && k == NK - 1 && rr + k * RS >= R) break; /* a last, partial round */
    const bool ok = r0 + rr + k * RS < L;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(so + k * RS * 128u),
                 "l"(ok ? src + k * RS * ld : g), "r"(ok ? 16 : 0)
                 : "memory");
  }
}
#endif
