/* ops_ssd.h — internal: the Mamba-2 SSD ops' attributes (m2_ssd_attr: the checked sizes and options that m2_ssd /
 * m2_ssd_chunked store on the call) and checks, shared by the CPU op (core/ops_ssd.c) and the CUDA entry points
 * (the CUDA backend's ops_ssd.cu), so both read one checked struct and refuse bad inputs with the same words. */
#ifndef M2_OPS_SSD_H
#define M2_OPS_SSD_H
#include "mixer_common.h"
#include "ops_mixers.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_ssd_attr {
  int64_t B, T, H, P, G, N; /* batch, steps, heads, head dim, groups of Bm / Cm (G divides H), state dim (P, N >= 1) */
  int64_t chunk;            /* >= 1: the chunk of ssd_chunked; for both rows also the steps between the states the
                               forward keeps for the backward (the CPU's; the CUDA kernels keep at most 64) */
} m2_ssd_attr;
M2_STATIC_ASSERT(sizeof(m2_ssd_attr) <= M2_MAX_ATTR, "m2_ssd_attr must fit in m2_opcall.attr");

/* in = {x, dt, A, Bm, Cm, h0 (or NULL)} and the options o (NULL: the defaults) of the row "ssd" (chunked false)
 * or "ssd_chunked":
 * presence, float dtypes, shapes, G dividing H, chunk >= 0 (0: M2_SSD_CHUNK for ssd_chunked, M2_SSD_CKPT for ssd);
 * fill a. What the public functions run before the call. */
m2_status ssd_check(m2_tensor *const *in, const m2_ssd_opts *o, bool chunked, m2_ssd_attr *a);
/* Whether a backend's kernels take the checked call c (its dtypes, N within r's limit). */
m2_status ssd_supports(const m2_opcall *c, const mixer_rules *r);

#ifdef __cplusplus
}
#endif
#endif
