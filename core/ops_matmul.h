/* ops_matmul.h — internal: the matmul op's typed attributes, checks and output, shared by the CPU op
 * (core/ops_matmul.c) and the CUDA entry points (the CUDA backend's ops_matmul.cu), so both refuse bad input with the same
 * words. */
#ifndef M2_OPS_MATMUL_H
#define M2_OPS_MATMUL_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* matmul: the operands' layouts and the products' precision, fixed by the public entry (m2_matmul) or by an op that
 * runs the matmul kernels itself (linear_cross_entropy); the kernels trust them. */
typedef struct m2_matmul_attr {
  bool ta;   /* a is stored (..., K, M) and used transposed */
  bool tb;   /* b is stored (..., N, K) [or (N, K) shared] and used transposed */
  bool bf16; /* bf16 products, set only for f32 tensors (m2_matmul_precision() == M2_MM_BF16 at the call): the
                operands of every product, forward and backward, are rounded to bf16; fp32 accumulation and results */
} m2_matmul_attr;

typedef struct mm_geom {
  bool ta, tb, shared; /* shared: b is 2-D and a has batch dims */
  int64_t batch, M, N, K;
} mm_geom;

/* a (..., M, K) [ta: (..., K, M)] times b (..., K, N) [tb: (..., N, K)], or b 2-D shared. */
m2_status m2_matmul_geom(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb, mm_geom *g);
/* The same after checking that a and b are float by the backend's rule and of one dtype. */
m2_status m2_matmul_check(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb, m2_float_rule check_float,
                          mm_geom *g);
/* The forward call c (a = in[0], b = in[1], ta and tb from its m2_matmul_attr): check, create out[0] (..., M, N),
 * fill g. */
m2_status m2_matmul_setup(m2_opcall *c, m2_float_rule check_float, mm_geom *g);

#ifdef __cplusplus
}
#endif
#endif
