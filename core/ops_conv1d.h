/* ops_conv1d.h — internal: the causal depthwise conv1d's argument check, shared by the CPU op
 * (core/ops_conv1d.c) and the CUDA entry point (cuda/ops_conv1d.cu), so both refuse bad input with the
 * same words. */
#ifndef M2_OPS_CONV1D_H
#define M2_OPS_CONV1D_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* x (B, T, C) and w (C, W >= 1) float by the backend's rule and of one dtype; bias (C) of that dtype or NULL. */
m2_status m2_conv1d_check(const m2_tensor *x, const m2_tensor *w, const m2_tensor *bias, m2_float_rule check_float);

#ifdef __cplusplus
}
#endif
#endif
