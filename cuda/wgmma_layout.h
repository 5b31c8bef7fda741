/* wgmma_layout.h — shared-memory tile layout and matrix descriptors of Hopper's wgmma (sm_90a) for bf16 operands, in
 * plain C so that the kernels (cuda/attention_wgmma.cu) and a CPU test (tests/cuda_ops_attention.c) use one formula.
 *
 * Tiles: a tile of R rows (R a multiple of 8) by C bf16 columns (C a multiple of 64) is stored as C / 64 column
 * blocks of R x 64, block j at byte j * R * 128; inside a block, row r is 128 bytes at r * 128, and its 16-byte chunk
 * c (columns 8c .. 8c + 7) sits at chunk position c ^ (r % 8): the 128-byte swizzle (address bits 4..6 XOR bits
 * 7..9), so the tile's base must be 1024-byte aligned. One 8-row group of a block (1024 bytes) is a swizzle atom.
 *
 * The same tile serves as either operand form of wgmma .m64nNk16 (one k-step of 16):
 *  - K-major (rows are M or N, columns are K: q and k of S = q k^T): the descriptor's start is the block holding
 *    columns 16 ks .. 16 ks + 15 plus (ks % 4) * 32 bytes (and + 1024 per 8 rows skipped); SBO = 1024 (the next 8
 *    rows), LBO unused (1).
 *  - MN-major (rows are K, columns are N, N contiguous: v of o += P v, with the instruction's trans-b flag): the start
 *    is row 16 kk of the block holding columns n0 .. n0 + 63 (each instruction covers N = 64, one swizzle atom wide);
 *    the two 8-row groups of the k-step are 1024 bytes apart. With one atom along N only one of LBO / SBO is read;
 *    both are set to 1024.
 * wg_desc_addr_kmajor / _mnmajor model the address the hardware reads for an element of the operand from a
 * descriptor (the canonical layouts of the PTX ISA, "matrix descriptor", 128-byte swizzle); a CPU test compares them
 * with wg_tile_off, where the staging code writes the element. */
#ifndef M2_CUDA_WGMMA_LAYOUT_H
#define M2_CUDA_WGMMA_LAYOUT_H
#include <stdint.h>

#ifdef __CUDACC__
#define WG_HD __host__ __device__ __forceinline__
#else
#define WG_HD static inline
#endif

/* Byte offset of 16-byte chunk c (columns 8c .. 8c + 7) of row r in a tile of R rows. */
WG_HD uint32_t wg_tile_off(uint32_t r, uint32_t c, uint32_t R) {
  return (c >> 3) * R * 128u + r * 128u + (((c & 7u) ^ (r & 7u)) << 4);
}
/* Byte offset of element (r, col) in a tile of R rows. */
WG_HD uint32_t wg_elem_off(uint32_t r, uint32_t col, uint32_t R) { return wg_tile_off(r, col >> 3, R) + (col & 7u) * 2u; }

/* A 128-byte-swizzle descriptor: shared address addr, leading / stride byte offsets lbo, sbo. */
WG_HD uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFFu) >> 4) | (uint64_t)((lbo >> 4) & 0x3FFFu) << 16 |
         (uint64_t)((sbo >> 4) & 0x3FFFu) << 32 | (uint64_t)1 << 62;
}
/* Descriptor of k-step ks (columns 16 ks ..) for rows m0 .. of a K-major tile of R rows at shared address base. */
WG_HD uint64_t wg_desc_k(uint32_t base, uint32_t R, uint32_t m0, uint32_t ks) {
  return wg_desc(base + (ks >> 2) * R * 128u + m0 * 128u + (ks & 3u) * 32u, 16u, 1024u);
}
/* Descriptor of k-step kk (rows 16 kk ..) and columns n0 .. n0 + 63 (n0 a multiple of 64) of an MN-major tile. */
WG_HD uint64_t wg_desc_mn(uint32_t base, uint32_t R, uint32_t kk, uint32_t n0) {
  return wg_desc(base + (n0 >> 6) * R * 128u + kk * 2048u, 1024u, 1024u);
}

/* The 128-byte swizzle applied to a byte address (the pattern repeats every 1024 bytes). */
WG_HD uint32_t wg_swz(uint32_t a) { return a ^ (((a >> 7) & 7u) << 4); }
/* Shared address that descriptor d gives element (m, k) (m < 64 or N rows, k < 16) of a K-major operand. */
WG_HD uint32_t wg_desc_addr_kmajor(uint64_t d, uint32_t m, uint32_t k) {
  uint32_t start = (uint32_t)(d & 0x3FFFu) << 4, sbo = (uint32_t)((d >> 32) & 0x3FFFu) << 4;
  return wg_swz(start + (m >> 3) * sbo + (m & 7u) * 128u + k * 2u);
}
/* Shared address that descriptor d gives element (k, n) (k < 16, n < 64) of an MN-major operand (one atom wide). */
WG_HD uint32_t wg_desc_addr_mnmajor(uint64_t d, uint32_t k, uint32_t n) {
  uint32_t start = (uint32_t)(d & 0x3FFFu) << 4, sbo = (uint32_t)((d >> 32) & 0x3FFFu) << 4;
  return wg_swz(start + (k >> 3) * sbo + (k & 7u) * 128u + n * 2u);
}
/* Row and column of accumulator element i (i < N / 2) of thread tid (< 128) of a warpgroup after a .m64nNk16
 * product (wgmma.cuh): warp tid / 32 holds rows 16 (tid / 32) .., lane = 4 g + t holds rows g and g + 8 of them,
 * columns 8 (i / 4) + 2 t + (i % 2). The backward (cuda/attention_wgmma_bwd.cu) stores dS^T (keys x queries) from
 * these registers, element pairs (i, i + 1) as one 4-byte word, at wg_elem_off(row, col, 64) of a 64 x 64 tile,
 * which the product dQ = dS K then reads as its MN-major A operand (wg_desc_mn, trans-a). */
WG_HD uint32_t wg_acc_row(uint32_t tid, uint32_t i) { return 16u * (tid >> 5) + ((tid & 31u) >> 2) + 8u * ((i >> 1) & 1u); }
WG_HD uint32_t wg_acc_col(uint32_t tid, uint32_t i) { return 8u * (i >> 2) + 2u * (tid & 3u) + (i & 1u); }
#endif
