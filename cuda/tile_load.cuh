/* tile_load.cuh — a block loads a rows x cols tile of a global bf16 or fp32 tensor into a shared bf16 tile, with
 * several wide loads in flight per thread.
 *
 * Why: the chunked mixer kernels run 4-8 warps an SM (their shared tiles allow 1-2 blocks). A staging loop of one
 * 2-byte load per thread and iteration then keeps ~64 B a warp in flight: with ~1 us of DRAM latency that is ~1 GB/s
 * an SM, ~0.15 TB/s on 132 SMs, 20x under the HBM bandwidth (the GDN prep kernel measured 1.48 ms for ~0.4 GB).
 * Here each thread issues UNROLL loads of 16 bytes (8 bf16, or 2 x 4 fp32) before it converts and stores any, so a
 * warp keeps UNROLL x 512 B (bf16) in flight.
 *
 *   tile_load<UNROLL>(dst, dld, src, sld, rows, valid, cols, f)
 *     dst[r * dld + x] = bf16(f(r, x, src[r * sld + x]))  for r < valid, x < cols
 *     dst[r * dld + x] = bf16(f(r, x, 0))                  for valid <= r < rows  (f sees 0: rows past T)
 *   f: a device functor float(int r, int x, float v), e.g. [] (int, int, float v) { return v; }.
 *   The wide path needs cols % 8 == 0, sld % 8 == 0, dld % 8 == 0 and 16-byte aligned src and dst; otherwise every
 *   element is loaded on its own (UNROLL of them in flight): the same values either way.
 * The caller synchronises (__syncthreads) before reading dst. Every thread of the block must call it. */
#ifndef M2_CUDA_TILE_LOAD_CUH
#define M2_CUDA_TILE_LOAD_CUH
#include <cstdint>
#include <cuda_bf16.h>

namespace tile {

__device__ __forceinline__ uint16_t bfbits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float val(float v) { return v; }
__device__ __forceinline__ float val(__nv_bfloat16 v) { return __bfloat162float(v); }

/* 8 consecutive elements as floats (p 16-byte aligned). */
struct v8 {
  float f[8];
};
__device__ __forceinline__ v8 load8(const __nv_bfloat16 *p) {
  uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
  v8 r;
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    r.f[2 * i] = __uint_as_float(w[i] << 16);
    r.f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
  return r;
}
__device__ __forceinline__ v8 load8(const float *p) {
  float4 a = __ldg(reinterpret_cast<const float4 *>(p)), b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
  v8 r = {{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
  return r;
}
__device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
/* 8 consecutive elements at any alignment: one wide load where p is 16-byte aligned, else 8 loads (issued together). */
template <class T> __device__ __forceinline__ v8 load8u(const T *p) {
  if (aligned16(p)) return load8(p);
  v8 r;
#pragma unroll
  for (int i = 0; i < 8; i++) r.f[i] = val(p[i]);
  return r;
}
/* 8 floats -> 8 bf16 as one 16-byte store (p 16-byte aligned). */
__device__ __forceinline__ void store8(uint16_t *p, const float f[8]) {
  uint32_t o[4];
#pragma unroll
  for (int e = 0; e < 4; e++) o[e] = (uint32_t)bfbits(f[2 * e]) | ((uint32_t)bfbits(f[2 * e + 1]) << 16);
  *reinterpret_cast<uint4 *>(p) = make_uint4(o[0], o[1], o[2], o[3]);
}
/* Two adjacent bf16 as one 4-byte store (p 4-byte aligned): the pairs of an mma C fragment. */
__device__ __forceinline__ void store2(uint16_t *p, float a, float b) {
  *reinterpret_cast<uint32_t *>(p) = (uint32_t)bfbits(a) | ((uint32_t)bfbits(b) << 16);
}

template <int UNROLL = 4, class T, class F>
__device__ __forceinline__ void tile_load(uint16_t *dst, int dld, const T *src, int64_t sld, int rows, int valid,
                                          int cols, F f) {
  const int nt = blockDim.x, tid = threadIdx.x;
  const bool wide = cols % 8 == 0 && sld % 8 == 0 && dld % 8 == 0 && aligned16(src) && aligned16(dst);
  if (wide) {
    const int cg = cols / 8, items = rows * cg;
    for (int i0 = tid; i0 < items; i0 += UNROLL * nt) {
      v8 x[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; u++) { /* every load first */
        int i = i0 + u * nt, r = i / cg;
        if (i < items && r < valid) x[u] = load8(src + (int64_t)r * sld + (i % cg) * 8);
      }
#pragma unroll
      for (int u = 0; u < UNROLL; u++) {
        int i = i0 + u * nt;
        if (i >= items) break;
        int r = i / cg, c0 = (i % cg) * 8;
        uint32_t o[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float lo = f(r, c0 + 2 * e, r < valid ? x[u].f[2 * e] : 0.0f);
          float hi = f(r, c0 + 2 * e + 1, r < valid ? x[u].f[2 * e + 1] : 0.0f);
          o[e] = (uint32_t)bfbits(lo) | ((uint32_t)bfbits(hi) << 16);
        }
        *reinterpret_cast<uint4 *>(dst + r * dld + c0) = make_uint4(o[0], o[1], o[2], o[3]);
      }
    }
  } else {
    const int items = rows * cols;
    for (int i0 = tid; i0 < items; i0 += UNROLL * nt) {
      float x[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; u++) {
        int i = i0 + u * nt, r = i / cols;
        x[u] = (i < items && r < valid) ? val(src[(int64_t)r * sld + i % cols]) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < UNROLL; u++) {
        int i = i0 + u * nt;
        if (i >= items) break;
        int r = i / cols, c = i % cols;
        dst[r * dld + c] = bfbits(f(r, c, x[u]));
      }
    }
  }
}

/* The identity transform. */
struct ident {
  __device__ __forceinline__ float operator()(int, int, float v) const { return v; }
};

}  // namespace tile
#endif
