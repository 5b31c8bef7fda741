/* cuda_big_index.c — CUDA kernels on a tensor of 1.75 G elements, above where the 32-bit grid-stride loops of the
 * broadcast binary ops, the copy (dtype conversion) and the fill used to overflow: they took an int32 index for
 * any n < 2^31, but the index passes n by up to one grid stride (~537 M) before the loop test stops it, so above
 * ~1.6 G elements it wrapped negative (an illegal memory access; the 400M LM's bf16 cast of its (16384, 100352)
 * logits hit it at B = 4). Each result is checked element by element on rows spread over the tensor, the last
 * one included. Needs ~20 GB of GPU memory; skips (77) without a GPU. */
#include "cuda_parity.h"

#define NR 35000 /* rows */
#define NC 50000 /* columns: NR * NC = 1.75e9 */

/* a[r] + b[c] with a[r] = r % 1024, b[c] = 1024 (c % 1024): exact in f32 and unique per (r % 1024, c % 1024) */
static float want(int64_t r, int64_t c) { return (float)(r % 1024) + 1024.0f * (float)(c % 1024); }

/* row r of a device tensor (NR, NC) of dtype dt, as floats */
static void get_row(m2_tensor *t, int64_t r, float *out) {
  m2_tensor *row = m2_narrow(t, 0, r, 1);
  CHECK(row && m2_to_host(row, M2_F32, out) == M2_OK, "row %lld to the host: %s", (long long)r, m2_errmsg());
  m2_release(row);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_big_index");
  const m2_device gpu = par_gpu;
  float *ha = malloc(sizeof(float) * NR), *hb = malloc(sizeof(float) * NC), *row = malloc(sizeof(float) * NC);
  for (int64_t r = 0; r < NR; r++) ha[r] = (float)(r % 1024);
  for (int64_t c = 0; c < NC; c++) hb[c] = 1024.0f * (float)(c % 1024);
  int64_t sa[2] = {NR, 1}, sb[2] = {1, NC}, so[2] = {NR, NC};
  m2_tensor *a = m2_from_data(M2_F32, gpu, 2, sa, ha), *b = m2_from_data(M2_F32, gpu, 2, sb, hb);
  m2_tensor *o = a && b ? m2_add(a, b) : NULL;       /* broadcast binary op: (NR, 1) + (1, NC) */
  m2_tensor *o16 = o ? m2_clone_raw(o, M2_BF16, gpu) : NULL; /* copy with dtype conversion */
  m2_tensor *fill = m2_full(M2_F32, gpu, 2, so, 3.25);       /* fill */
  CHECK(o && o16 && fill, "allocations and launches: %s", m2_errmsg());
  const int64_t rows[] = {0, 1, 17000, 32100, 33333, NR - 2, NR - 1}; /* 32100 * NC = 1.6e9 */
  for (size_t i = 0; o && o16 && fill && i < sizeof rows / sizeof rows[0]; i++) {
    const int64_t r = rows[i];
    int64_t bad_add = 0, bad_cvt = 0, bad_fill = 0;
    get_row(o, r, row);
    for (int64_t c = 0; c < NC; c++) bad_add += row[c] != want(r, c);
    get_row(o16, r, row);
    for (int64_t c = 0; c < NC; c++) bad_cvt += row[c] != m2_bf16_to_f32(m2_f32_to_bf16(want(r, c)));
    get_row(fill, r, row);
    for (int64_t c = 0; c < NC; c++) bad_fill += row[c] != 3.25f;
    CHECK(bad_add == 0 && bad_cvt == 0 && bad_fill == 0,
          "row %lld (flat index %lld): %lld wrong sums, %lld wrong bf16 conversions, %lld wrong fills", (long long)r,
          (long long)(r * NC), (long long)bad_add, (long long)bad_cvt, (long long)bad_fill);
  }
  m2_release(a), m2_release(b), m2_release(o), m2_release(o16), m2_release(fill);
  free(ha), free(hb), free(row);
  return par_finish("cuda_big_index");
}
