/* mma.cuh — warp-level tensor-core primitives (sm_80+) for the tiled kernels that stage bf16 tiles in shared
 * memory: ldmatrix (plain and transposed), mma.sync m16n8k16 bf16 -> fp32, cp.async with zero fill, bf16x2 pack.
 * Fragment layouts (PTX ISA, "mma.m16n8k16"): lane = 4 g + t; A (16 x 16, row) regs a0..a3 hold (row g | g + 8,
 * cols 2t, 2t+1 | 2t + 8, 2t + 9); B (16 x 8, col) b0, b1 hold (rows 2t, 2t+1 | 2t + 8, 2t + 9, col g);
 * C (16 x 8) c0..c3 hold (row g, cols 2t, 2t+1), (row g + 8, cols 2t, 2t+1). */
#ifndef M2_CUDA_MMA_CUH
#define M2_CUDA_MMA_CUH
#include <stdint.h>

__device__ __forceinline__ uint32_t mma_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* Four 8 x 8 bf16 matrices; lane l gives the address of row l % 8 of matrix l / 8. */
__device__ __forceinline__ void mma_ldsm4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mma_smem(p)));
}
/* The same, each matrix transposed. */
__device__ __forceinline__ void mma_ldsm4t(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mma_smem(p)));
}

/* c += a b (bf16 in, fp32 accumulate). */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* (lo, hi) rounded to bf16 and packed, lo in the low half. */
__device__ __forceinline__ uint32_t mma_pack(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

/* 16 bytes global -> shared, asynchronously; with ok false the 16 shared bytes are zeroed and nothing is read. */
__device__ __forceinline__ void mma_cp16(void *smem, const void *gmem, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(mma_smem(smem)), "l"(gmem), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void mma_cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void mma_cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

#endif
