/* ops_matmul.h — internal: the matmul op's shape check, shared by the CPU op (core/ops_matmul.c)
 * and the CUDA entry points (cuda/ops_matmul.cu). */
#ifndef M2_OPS_MATMUL_H
#define M2_OPS_MATMUL_H
#include "tensor.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct mm_geom {
  bool ta, tb, shared; /* shared: b is 2-D and a has batch dims */
  int64_t batch, M, N, K;
} mm_geom;

/* a (..., M, K) [ta: (..., K, M)] times b (..., K, N) [tb: (..., N, K)], or b 2-D shared. */
m2_status m2_matmul_geom(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb, mm_geom *g);

#ifdef __cplusplus
}
#endif
#endif
