/* ops_gdn.h — internal: the Gated DeltaNet ops' attributes (m2_gdn_attr: the checked sizes and options that m2_gdn /
 * m2_gdn_chunked store on the call) and checks, shared by the CPU op (core/ops_gdn.c) and the CUDA entry points
 * (the CUDA backend's ops_gdn.cu), so both read one checked struct and refuse bad inputs with the same words. */
#ifndef M2_OPS_GDN_H
#define M2_OPS_GDN_H
#include "mixer_common.h"
#include "ops_mixers.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_gdn_attr {
  int64_t B, T, H, K, V; /* batch, steps, heads, key dim, value dim (K, V >= 1) */
  double scale;          /* applied to q; resolved (never 0: 1/sqrt(K) when the options leave it 0) */
  int64_t chunk;         /* >= 1: the chunk of gdn_chunked; for both rows also the steps between the states the forward
                            keeps for the backward (the CPU's; the CUDA kernels keep at most 64) */
} m2_gdn_attr;
M2_STATIC_ASSERT(sizeof(m2_gdn_attr) <= M2_MAX_ATTR, "m2_gdn_attr must fit in m2_opcall.attr");

/* in = {q, k, v, g, beta, h0 (or NULL)} and the options o (NULL: the defaults) of the row "gdn" (chunked false)
 * or "gdn_chunked":
 * presence, float dtypes, shapes, chunk >= 0; fill a. What the public functions run before the call. */
m2_status gdn_check(m2_tensor *const *in, const m2_gdn_opts *o, bool chunked, m2_gdn_attr *a);
/* Whether a backend's kernels take the checked call c (its dtypes, K within r's limit). */
m2_status gdn_supports(const m2_opcall *c, const mixer_rules *r);

#ifdef __cplusplus
}
#endif
#endif
