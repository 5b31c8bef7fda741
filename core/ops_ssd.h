/* ops_ssd.h — internal: the Mamba-2 SSD op's input check, shared by the CPU op (core/ops_ssd.c) and the
 * CUDA entry points (cuda/ops_ssd.cu) so both refuse bad inputs with the same words. */
#ifndef M2_OPS_SSD_H
#define M2_OPS_SSD_H
#include "ops_mixer_common.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct ssd_dims { int64_t B, T, H, P, G, N; } ssd_dims;

/* in = {x, dt, A, Bm, Cm, h0 (or NULL)}, ia[0] = chunk: presence, dtypes (as r accepts), shapes, G dividing H,
 * N within r's limit, chunk >= 0; fill d. */
m2_status ssd_check(const m2_opcall *c, const char *op, const mixer_rules *r, ssd_dims *d);

#ifdef __cplusplus
}
#endif
#endif
