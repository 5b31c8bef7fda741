/* ops_gdn.h — internal: the Gated DeltaNet op's input check, shared by the CPU op (core/ops_gdn.c) and the
 * CUDA entry points (cuda/ops_gdn.cu) so both refuse bad inputs with the same words. */
#ifndef M2_OPS_GDN_H
#define M2_OPS_GDN_H
#include "ops_mixer_common.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct gdn_dims { int64_t B, T, H, K, V; } gdn_dims;

/* in = {q, k, v, g, beta, h0 (or NULL)}, ia[0] = chunk: presence, dtypes (as r accepts), shapes, K within
 * r's limit, chunk >= 0; fill d. */
m2_status gdn_check(const m2_opcall *c, const char *op, const mixer_rules *r, gdn_dims *d);

#ifdef __cplusplus
}
#endif
#endif
