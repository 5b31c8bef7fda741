/* test_wgmma_layout.c — the shared-memory tile layout of the Hopper attention kernel (cuda/wgmma_layout.h, used by
 * cuda/attention_wgmma.cu) checked on the CPU: where the staging code writes element (r, c) of a tile
 * (wg_elem_off) against the address that the kernel's wgmma descriptors make the hardware read for that element
 * (wg_desc_addr_*: the 128-byte-swizzle canonical layouts of the PTX ISA), for every operand, k-step and tile shape
 * the kernel uses: q (192 rows, A of S = q k^T, one 64-row slab a warpgroup), k (B of S, K-major, 128 or 64 rows),
 * v (B of o += P v, MN-major, 64 columns an instruction). Also: the layout is a bijection onto the tile's bytes,
 * a staging thread's rows share one swizzle phase, and the descriptor fields round-trip. No GPU needed. */
#include <stdint.h>
#include <string.h>
#include "check.h"
#include "../cuda/wgmma_layout.h"

enum { BASE = 5 * 1024 }; /* a 1024-byte aligned tile base, not 0 */

/* Every 16-byte chunk of an R x C tile lands once, inside R * C * 2 bytes, 16-byte aligned. */
static void bijection(uint32_t R, uint32_t C) {
  static unsigned char seen[192 * 128 * 2 / 16];
  const uint32_t n = R * C * 2 / 16;
  memset(seen, 0, sizeof seen);
  int bad = 0;
  for (uint32_t r = 0; r < R; r++)
    for (uint32_t c = 0; c < C / 8; c++) {
      uint32_t off = wg_tile_off(r, c, R);
      if (off % 16 || off / 16 >= n || seen[off / 16]++) bad++;
    }
  CHECK(bad == 0, "tile %u x %u: %d chunks collide or fall outside", R, C, bad);
}

/* The K-major operand rows m0 .. m0 + M - 1 of a tile of R rows and C columns, every k-step. */
static void kmajor(uint32_t R, uint32_t C, uint32_t m0, uint32_t M) {
  int bad = 0;
  for (uint32_t ks = 0; ks < C / 16; ks++) {
    uint64_t d = wg_desc_k(BASE, R, m0, ks);
    for (uint32_t m = 0; m < M; m++)
      for (uint32_t k = 0; k < 16; k++)
        if (wg_desc_addr_kmajor(d, m, k) != BASE + wg_elem_off(m0 + m, 16 * ks + k, R)) bad++;
  }
  CHECK(bad == 0, "K-major tile %u x %u rows %u..: %d elements read from the wrong place", R, C, m0, bad);
}

/* The MN-major operand (rows K, columns N) of a tile of R rows and C columns: k-steps of 16 rows, 64 columns an
 * instruction. */
static void mnmajor(uint32_t R, uint32_t C) {
  int bad = 0;
  for (uint32_t kk = 0; kk < R / 16; kk++)
    for (uint32_t n0 = 0; n0 < C; n0 += 64) {
      uint64_t d = wg_desc_mn(BASE, R, kk, n0);
      for (uint32_t k = 0; k < 16; k++)
        for (uint32_t n = 0; n < 64; n++)
          if (wg_desc_addr_mnmajor(d, k, n) != BASE + wg_elem_off(16 * kk + k, n0 + n, R)) bad++;
    }
  CHECK(bad == 0, "MN-major tile %u x %u: %d elements read from the wrong place", R, C, bad);
}

/* wg_stage: thread tid of NT stages chunk column tid % (D / 8) of rows tid / (D / 8) + j NT / (D / 8); the kernel
 * adds j (NT / (D / 8)) 128 bytes to the first row's offset. */
static void stage_rows(uint32_t R, uint32_t D, uint32_t NT) {
  const uint32_t CH = D / 8, RS = NT / CH;
  int bad = RS % 8 != 0;
  for (uint32_t tid = 0; tid < NT; tid++)
    for (uint32_t j = 0; tid / CH + j * RS < R; j++)
      if (wg_tile_off(tid / CH + j * RS, tid % CH, R) != wg_tile_off(tid / CH, tid % CH, R) + j * RS * 128) bad++;
  CHECK(bad == 0, "staging %u x %u with %u threads: %d chunks misplaced", R, D, NT, bad);
}

int main(void) {
  /* the kernel's tiles: q 192 x D, k and v 128 x 64 (D 64) or 64 x 128 (D 128) */
  const uint32_t tiles[][2] = {{192, 64}, {192, 128}, {128, 64}, {64, 128}};
  for (unsigned i = 0; i < sizeof tiles / sizeof tiles[0]; i++) bijection(tiles[i][0], tiles[i][1]);
  for (uint32_t wg = 0; wg < 3; wg++) kmajor(192, 64, 64 * wg, 64), kmajor(192, 128, 64 * wg, 64);
  kmajor(128, 64, 0, 128);
  kmajor(64, 128, 0, 64);
  mnmajor(128, 64);
  mnmajor(64, 128);
  for (unsigned i = 0; i < sizeof tiles / sizeof tiles[0]; i++) stage_rows(tiles[i][0], tiles[i][1], 384);

  /* descriptor fields: start >> 4 in bits 0..13, LBO 16..29, SBO 32..45, 128-byte swizzle (1) in bits 62..63 */
  uint64_t d = wg_desc(0x1C400, 16, 1024);
  CHECK((d & 0x3FFF) == 0x1C400 >> 4 && (d >> 16 & 0x3FFF) == 1 && (d >> 32 & 0x3FFF) == 64 && d >> 62 == 1 &&
            (d >> 46 & 0xFFFF) == 0,
        "descriptor fields: %#llx", (unsigned long long)d);
  /* the largest tile address of a block (head dim 128: 112 KB + 1 KB of alignment) fits the 18-bit field */
  CHECK(0x3FFFFu >= 192 * 128 * 2 + 4 * 64 * 128 * 2 + 1024, "shared addresses beyond the descriptor's reach");
  return check_finish("test_wgmma_layout");
}
