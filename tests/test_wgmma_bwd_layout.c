/* test_wgmma_bwd_layout.c — the shared-memory layouts of the Hopper attention backward (cuda/attention_wgmma_bwd.cu)
 * checked on the CPU, as test_wgmma_layout.c does for the forward: for every operand of its five products, where
 * the staging code (or the register store of dS) writes an element against the address the kernel's wgmma
 * descriptors make the hardware read for it (wg_desc_addr_*: the 128-byte-swizzle canonical layouts of the PTX ISA).
 * Tiles: k, v, q, do are 64 rows (keys or queries) x D (64 or 128) staged by 128 threads; dS^T is 64 keys x 64
 * queries written from the accumulator registers of S^T (wg_acc_row / wg_acc_col).
 *   S^T = k q^T, dP^T = v do^T: A = k / v, B = q / do, both K-major (64 rows, D / 16 k-steps)
 *   dV += P^T do, dK += dS^T q: A from registers, B = do / q MN-major (rows queries = K, columns D = N, trans-b)
 *   dQ = dS k: A = dS read from the dS^T tile MN-major (rows keys = K, columns queries = M, trans-a), B = k
 *   MN-major (rows keys = K, columns D = N, trans-b). No GPU needed. */
#include <stdint.h>
#include <string.h>
#include "check.h"
#include "../cuda/wgmma_layout.h"

enum { BASE = 7 * 1024 }; /* a 1024-byte aligned tile base, not 0 */

/* K-major operand: rows 0 .. 63 of a 64 x C tile, every k-step (S^T's A = k, v and B = q, do). */
static void kmajor64(uint32_t C) {
  int bad = 0;
  for (uint32_t ks = 0; ks < C / 16; ks++) {
    uint64_t d = wg_desc_k(BASE, 64, 0, ks);
    for (uint32_t m = 0; m < 64; m++)
      for (uint32_t k = 0; k < 16; k++)
        if (wg_desc_addr_kmajor(d, m, k) != BASE + wg_elem_off(m, 16 * ks + k, 64)) bad++;
  }
  CHECK(bad == 0, "K-major 64 x %u: %d elements read from the wrong place", C, bad);
}

/* MN-major operand (rows K, columns N): a 64 x C tile, 4 k-steps, 64 columns an instruction (B of dV, dK, dQ). */
static void mnmajor64(uint32_t C) {
  int bad = 0;
  for (uint32_t kk = 0; kk < 4; kk++)
    for (uint32_t n0 = 0; n0 < C; n0 += 64) {
      uint64_t d = wg_desc_mn(BASE, 64, kk, n0);
      for (uint32_t k = 0; k < 16; k++)
        for (uint32_t n = 0; n < 64; n++)
          if (wg_desc_addr_mnmajor(d, k, n) != BASE + wg_elem_off(16 * kk + k, n0 + n, 64)) bad++;
    }
  CHECK(bad == 0, "MN-major 64 x %u: %d elements read from the wrong place", C, bad);
}

/* The dS^T tile: each of the 128 threads stores its 32 accumulator elements of S^T (64 keys x 64 queries) in pairs;
 * every element lands once, a pair is one aligned 4-byte word, and the trans-a descriptor of dQ = dS k gives element
 * (m = query, k = key) of A = dS exactly where dS^T (key, query) was stored. */
static void ds_tile(void) {
  static int32_t at[64][64]; /* byte offset where (key, query) was written, -1: not yet */
  memset(at, 0xff, sizeof at);
  int bad_pair = 0, twice = 0, missing = 0, bad_read = 0, bad_row = 0;
  for (uint32_t tid = 0; tid < 128; tid++)
    for (uint32_t i = 0; i < 32; i += 2) {
      const uint32_t r = wg_acc_row(tid, i), c = wg_acc_col(tid, i);
      if (wg_acc_row(tid, i + 1) != r || wg_acc_col(tid, i + 1) != c + 1) bad_row++;
      const uint32_t off = wg_elem_off(r, c, 64);
      if (off % 4 || wg_elem_off(r, c + 1, 64) != off + 2) bad_pair++;
      for (uint32_t e = 0; e < 2; e++) {
        if (at[r][c + e] >= 0) twice++;
        at[r][c + e] = (int32_t)(off + 2 * e);
      }
    }
  for (uint32_t r = 0; r < 64; r++)
    for (uint32_t c = 0; c < 64; c++) missing += at[r][c] < 0;
  for (uint32_t kk = 0; kk < 4; kk++) {
    uint64_t d = wg_desc_mn(BASE, 64, kk, 0);
    for (uint32_t k = 0; k < 16; k++)
      for (uint32_t m = 0; m < 64; m++) /* A's (m, k) = dS (query m, key 16 kk + k) = dS^T (16 kk + k, m) */
        if (at[16 * kk + k][m] < 0 || wg_desc_addr_mnmajor(d, k, m) != BASE + (uint32_t)at[16 * kk + k][m]) bad_read++;
  }
  CHECK(bad_row == 0 && bad_pair == 0, "dS^T store: %d pairs not adjacent in the accumulator, %d not one word", bad_row,
        bad_pair);
  CHECK(twice == 0 && missing == 0, "dS^T store: %d elements written twice, %d never", twice, missing);
  CHECK(bad_read == 0, "dQ's A (dS, trans-a) read from the wrong place: %d elements", bad_read);
}

/* The accumulator map against the fragment layout of wgmma.cuh on a few hand-checked elements. */
static void acc_map(void) {
  CHECK(wg_acc_row(0, 0) == 0 && wg_acc_col(0, 0) == 0, "acc (0, 0)");
  CHECK(wg_acc_row(37, 3) == 16 + 1 + 8 && wg_acc_col(37, 3) == 2 + 1, "acc: tid 37 element 3");
  CHECK(wg_acc_row(127, 31) == 63 && wg_acc_col(127, 31) == 63, "acc: the last element");
}

/* wg_stage with 128 threads: every row of a thread shares one swizzle phase, rows step by 128 bytes. */
static void stage_rows(uint32_t D) {
  const uint32_t NT = 128, CH = D / 8, RS = NT / CH;
  int bad = RS % 8 != 0;
  for (uint32_t tid = 0; tid < NT; tid++)
    for (uint32_t j = 0; tid / CH + j * RS < 64; j++)
      if (wg_tile_off(tid / CH + j * RS, tid % CH, 64) != wg_tile_off(tid / CH, tid % CH, 64) + j * RS * 128) bad++;
  CHECK(bad == 0, "staging 64 x %u with 128 threads: %d chunks misplaced", D, bad);
}

int main(void) {
  for (uint32_t D = 64; D <= 128; D += 64) kmajor64(D), mnmajor64(D), stage_rows(D);
  ds_tile();
  acc_map();
  /* the largest shared address of a block (head dim 128: k, v, two q, two do tiles, dS^T, lse / Dt rows, 1 KB of
   * alignment) fits the descriptor's 18-bit field */
  CHECK(0x3FFFFu >= 6 * 64 * 128 * 2 + 64 * 64 * 2 + 4 * 64 * 4 + 1024, "shared addresses beyond the descriptor's reach");
  return check_finish("test_wgmma_bwd_layout");
}
