/* ops_m2rnn.h — internal: the M2RNN op's attributes, m2_m2rnn_attr (its checked geometry and options, which m2_m2rnn
 * stores on the call), and the checks that fill them. Read by the CPU op (core/ops_m2rnn.c), the CUDA entry points
 * (the CUDA backend's ops_m2rnn.cu) and the raw-pointer CUDA kernels (the CUDA backend's m2rnn.h); none of them checks again. */
#ifndef M2_OPS_M2RNN_H
#define M2_OPS_M2RNN_H
#include "op.h"
#include "ops_mixers.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_m2rnn_attr {
  int64_t B, T, N, K, V;      /* batch, steps, heads (N = the largest head count), key dim, value dim; K, V >= 1 */
  int64_t Nq, Nk, Nv, Nf, Nw; /* head counts of q, k, v, f, W, each dividing N: head n reads index n / (N / Nx) */
  double grad_clip;           /* backward: clamp the carried state gradient to [-grad_clip, grad_clip]; <= 0: off */
  int ckpt_every;             /* steps between the states the CUDA forward keeps for the backward, >= 1 (the CPU
                                 keeps its own spacing: core/ops_m2rnn.c) */
} m2_m2rnn_attr;
M2_STATIC_ASSERT(sizeof(m2_m2rnn_attr) <= M2_MAX_ATTR, "m2_m2rnn_attr must fit in m2_opcall.attr");

/* Check q, k, v, W, f, h0 (in[0..5], h0 may be NULL) and the options o (NULL: the defaults) and fill a, with
 * ckpt_every 0 resolved to M2_M2RNN_CKPT_EVERY. What m2_m2rnn runs before the call; messages name the shapes. */
m2_status m2_m2rnn_check(m2_tensor *const *in, const m2_m2rnn_opts *o, m2_m2rnn_attr *a);

/* For the callers of the raw-pointer CUDA kernels (tests, benchmarks), who have sizes instead of tensors: check an a
 * whose B, T, K, V, head counts, grad_clip and ckpt_every they set, and complete it: N 0 becomes the largest head
 * count (any other N must be it), ckpt_every 0 becomes M2_M2RNN_CKPT_EVERY. */
m2_status m2_m2rnn_attr_resolve(m2_m2rnn_attr *a);

#ifdef __cplusplus
}
#endif
#endif
