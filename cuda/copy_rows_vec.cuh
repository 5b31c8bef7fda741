/* copy_rows_vec.cuh — the copies of a column range of contiguous rows (ops_view.cu's copy_same_shape: split /
 * concat / narrow along the last dim and their backwards), in words of 16, 8, 4 or 2 bytes. Unless M2_VEC_MEMBOUND=0.
 *
 *   dst (rows, L), row stride sd  <-  src (rows, L), row stride ss   (same dtype: raw bytes; strides in elements)
 * The word is the widest (<= 16 bytes, >= the element) that divides both base addresses and both row strides in
 * bytes: a split of bf16 rows of 2900 at column 84 takes 8-byte words, f32 rows of 2900 16-byte words. Each row's
 * L es bytes are nw words and (when L es is no multiple of the word) a tail of elements, copied by a second launch
 * of the same kernel in element-sized words. Each thread moves COPY_VEC_U words, every load before any store. */
#ifndef M2_CUDA_COPY_ROWS_VEC_CUH
#define M2_CUDA_COPY_ROWS_VEC_CUH
#include "membound_vec.cuh"

#define COPY_VEC_U 4
#define COPY_VEC_BLOCK 256

/* dst[r sd + j] = src[r ss + j] for r < rows, j < nw (in words W). The flat word index i = r nw + j; a thread takes
 * i0, i0 + NT, ..., stepping (r, j) by (qs, rs) = (NT / nw, NT % nw) without a division. */
template <class W>
__global__ void __launch_bounds__(COPY_VEC_BLOCK) k_copy_rows(W *dst, const W *src, int64_t sd, int64_t ss,
                                                              int64_t nw, int64_t rows, int64_t qs, int64_t rs) {
  const int64_t total = rows * nw, tile = (int64_t)blockDim.x * COPY_VEC_U;
  for (int64_t t0 = (int64_t)blockIdx.x * tile + threadIdx.x; t0 < total; t0 += (int64_t)gridDim.x * tile) {
    const int64_t r0 = total <= 0xffffffffLL ? (int64_t)((uint32_t)t0 / (uint32_t)nw) : t0 / nw, j0 = t0 - r0 * nw;
    int64_t r = r0, j = j0;
    W v[COPY_VEC_U];
#pragma unroll
    for (int u = 0; u < COPY_VEC_U; u++) { /* every load first */
      if (r < rows) v[u] = src[r * ss + j];
      j += rs, r += qs;
      if (j >= nw) j -= nw, r++;
    }
    r = r0, j = j0; /* the same words again (offsets recomputed, not held: fewer registers) */
#pragma unroll
    for (int u = 0; u < COPY_VEC_U; u++) {
      if (r < rows) dst[r * sd + j] = v[u];
      j += rs, r += qs;
      if (j >= nw) j -= nw, r++;
    }
  }
}

template <class W>
static void copy_rows_launch(void *dst, const void *src, int64_t sd, int64_t ss, int64_t nw, int64_t rows,
                             cudaStream_t st) {
  const int64_t total = rows * nw;
  if (total == 0) return;
  k_copy_rows<W><<<cu_grid((total + COPY_VEC_U - 1) / COPY_VEC_U, COPY_VEC_BLOCK), COPY_VEC_BLOCK, 0, st>>>(
      (W *)dst, (const W *)src, sd, ss, nw, rows, COPY_VEC_BLOCK / nw, COPY_VEC_BLOCK % nw);
}
/* words of b bytes */
static void copy_rows_words(int b, void *dst, const void *src, int64_t sd, int64_t ss, int64_t nw, int64_t rows,
                            cudaStream_t st) {
  switch (b) {
    case 16: copy_rows_launch<uint4>(dst, src, sd, ss, nw, rows, st); break;
    case 8: copy_rows_launch<uint2>(dst, src, sd, ss, nw, rows, st); break;
    case 4: copy_rows_launch<uint32_t>(dst, src, sd, ss, nw, rows, st); break;
    default: copy_rows_launch<uint16_t>(dst, src, sd, ss, nw, rows, st); break;
  }
}

/* The copy of rows x L elements of es bytes (strides sd, ss in elements, L contiguous on both sides) when the switch
 * is on; false: not taken (the caller runs k_copy). */
static bool copy_rows_vec(void *dst, const void *src, size_t es, int64_t rows, int64_t L, int64_t sd, int64_t ss,
                          cudaStream_t st) {
  if (!cu_vec_membound() || rows < 1 || L < 1 || sd < L || ss < 0 || (es != 2 && es != 4 && es != 8)) return false;
  const uint64_t a = (uint64_t)(uintptr_t)dst | (uint64_t)(uintptr_t)src | (uint64_t)(sd * (int64_t)es) |
                     (uint64_t)(ss * (int64_t)es);
  int b = 16;
  while (b > (int)es && (a & (uint64_t)(b - 1))) b >>= 1;
  const int64_t rowb = L * (int64_t)es, nw = rowb / b, tail = (rowb - nw * b) / (int64_t)es;
  if (nw > 0) copy_rows_words(b, dst, src, sd * (int64_t)es / b, ss * (int64_t)es / b, nw, rows, st);
  if (tail > 0)
    copy_rows_words((int)es, (char *)dst + nw * b, (const char *)src + nw * b, sd, ss, tail, rows, st);
  cu_vec_membound_count();
  return true;
}

#endif
