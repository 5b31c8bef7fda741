/* ops_m2rnn.h — internal: the M2RNN op's shape check, shared by the CPU op (core/ops_m2rnn.c)
 * and the CUDA entry points (cuda/ops_m2rnn.cu) so both refuse bad shapes with the same words. */
#ifndef M2_OPS_M2RNN_H
#define M2_OPS_M2RNN_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2rnn_geom {
  int64_t B, T, N, K, V;
  int64_t nq, nk, nv, nf, nw; /* head counts of q, k, v, f, W */
  int64_t S;                  /* CPU checkpoints: ceil(T / 64) */
} m2rnn_geom;

/* Check q, k, v, W, f, h0 (in[0..5], h0 may be NULL) and fill g. Messages name the shapes. */
m2_status m2rnn_check(m2_tensor *const *in, m2rnn_geom *g);

#ifdef __cplusplus
}
#endif
#endif
