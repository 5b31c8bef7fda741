/* ops_nn_check.h — internal: the argument checks of embedding, cross_entropy, rmsnorm and l2norm (and
 * the embedding's output shape) and the typed attributes of cross_entropy and the norms, shared by the CPU ops
 * (core/ops_nn.c) and the CUDA entry points (the CUDA backend's ops_nn.cu) so both refuse bad input with the same words. */
#ifndef M2_OPS_NN_CHECK_H
#define M2_OPS_NN_CHECK_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* cross_entropy: set by the public entry (m2_cross_entropy) or by linear_cross_entropy, which runs the kernels
 * itself. */
typedef struct m2_cross_entropy_attr {
  int64_t ignore_index; /* rows whose target equals it count neither in the loss nor in the mean */
  bool bf16_dlogits;    /* CUDA, f32 logits only: the backward writes dlogits in bf16 (linear_cross_entropy with bf16
                           products, whose next product rounds them to bf16 anyway); false from m2_cross_entropy */
  bool targets_checked; /* the caller has checked every target's range (linear_cross_entropy, on the host, over all
                           chunks at once): CUDA's forward does not read its range flag back, so it does not wait for
                           the device; false from m2_cross_entropy */
} m2_cross_entropy_attr;

/* rmsnorm and l2norm. */
typedef struct m2_norm_attr {
  double eps; /* >= 0 (checked by the public entry), added to the mean (rms) or sum (l2) of squares */
} m2_norm_attr;

/* weight (V, d) float, ids integer (...) with room for one more dim. */
m2_status m2_embedding_check(const m2_tensor *w, const m2_tensor *ids, m2_float_rule check_float);
/* out[0] of the embedding call c: a new empty (..., d) tensor for ids = in[1] (...), weight = in[0] (V, d). */
m2_status m2_embedding_output(m2_opcall *c);
/* logits (..., C) float, targets integer (...) of the logits' shape without the class dim. */
m2_status m2_cross_entropy_check(const m2_tensor *x, const m2_tensor *t, m2_float_rule check_float);
/* x (..., d) float with at least 1 dim; weight (d) of x's dtype, or NULL. op names the caller. */
m2_status m2_norm_check(const m2_tensor *x, const m2_tensor *w, const char *op, m2_float_rule check_float);

#ifdef __cplusplus
}
#endif
#endif
