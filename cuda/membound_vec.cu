/* membound_vec.cu — the M2_VEC_MEMBOUND switch (m2cuda.h) of the vectorized memory-bound kernels (rmsnorm / l2norm,
 * row-range copies, unary maps: membound_vec.cuh) and the count of their launches. */
#include <stdlib.h>
#include <string.h>
#include "membound_vec.cuh"

static int g_vec = -1; /* -1: the environment not read yet */
static long g_vec_calls;

extern "C" int m2_cuda_vec_membound(int set) {
  if (set >= 0) g_vec = set ? 1 : 0;
  else if (g_vec < 0) { /* on unless M2_VEC_MEMBOUND=0 (parity on an H100, 2026-12-07: cuda_ops_membound_vec) */
    const char *e = getenv("M2_VEC_MEMBOUND");
    g_vec = !(e && strcmp(e, "0") == 0);
  }
  return g_vec;
}

extern "C" long m2_cuda_vec_membound_calls(void) { return g_vec_calls; }

void cu_vec_membound_count(void) { g_vec_calls++; }
