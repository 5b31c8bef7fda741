/* ops_nn_check.h — internal: the argument checks of embedding, cross_entropy, rmsnorm and l2norm (and
 * the embedding's output shape), shared by the CPU ops (core/ops_nn.c) and the CUDA entry points
 * (cuda/ops_nn.cu) so both refuse bad input with the same words. */
#ifndef M2_OPS_NN_CHECK_H
#define M2_OPS_NN_CHECK_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

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
