/* membound_vec.cuh — what the M2_VEC_MEMBOUND kernels share (elementwise_vec.cuh, norm_vec.cuh, copy_rows_vec.cuh):
 * the switch, a count of their launches, and 16-byte packs of f32 / bf16 values.
 *
 * Why: the memory-bound kernels of ops_nn.cu / ops_view.cu / ops_elementwise.cu move one 2- or 4-byte element a
 * thread and iteration, which keeps too few bytes in flight for the HBM (46-57% of the copy ceiling on an H100).
 * The vectorized kernels move 16-byte words (8 where alignment allows no more), several of them in flight a thread
 * (the lesson of tile_load.cuh). Off by default: with M2_VEC_MEMBOUND unset the launched kernels are the old ones.
 * Included by cuda/ops_*.cu after ops_common.cuh. */
#ifndef M2_CUDA_MEMBOUND_VEC_CUH
#define M2_CUDA_MEMBOUND_VEC_CUH
#include <stdint.h>
#include "m2cuda.h"
#include "ops_common.cuh"

/* The switch (m2_cuda_vec_membound(-1), m2cuda.h) and the launch count behind m2_cuda_vec_membound_calls. */
static inline bool cu_vec_membound(void) { return m2_cuda_vec_membound(-1) == 1; }
void cu_vec_membound_count(void);

/* p 16-byte aligned (host or device pointer value) */
__host__ __device__ __forceinline__ bool cu_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---- a 16-byte word as VE<T> values: 4 f32 or 8 bf16; conversions as to_f / from_f (the same bits) ---- */
template <class T> struct vec16 { static const int E = 16 / (int)sizeof(T); };

__device__ __forceinline__ uint32_t vword(const uint4 &u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

/* f[e] = element e of u, e < vec16<T>::E */
__device__ __forceinline__ void vunpack(const uint4 &u, float (&f)[4]) {
  f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void vunpack(const uint4 &u, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; i++) { /* bf16 -> f32 is exact: the bf16 bits are the high half of the f32 */
    uint32_t w = vword(u, i);
    f[2 * i] = __uint_as_float(w << 16);
    f[2 * i + 1] = __uint_as_float(w & 0xffff0000u);
  }
}
/* The 16-byte word of vec16<T>::E values stored as T (from_f's rounding). */
__device__ __forceinline__ uint4 vpack(const float (&f)[4]) {
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}
__device__ __forceinline__ uint4 vpack(const float (&f)[8]) {
  uint32_t o[4];
#pragma unroll
  for (int i = 0; i < 4; i++)
    o[i] = (uint32_t)__bfloat16_as_ushort(from_f<bf16>(f[2 * i])) |
           ((uint32_t)__bfloat16_as_ushort(from_f<bf16>(f[2 * i + 1])) << 16);
  return make_uint4(o[0], o[1], o[2], o[3]);
}

#endif
