/* ops_conv1d.h — internal: the causal depthwise conv1d's argument check, run once by m2_conv1d_causal before the
 * call; the CPU op (core/ops_conv1d.c) and the CUDA entry point (the CUDA backend's ops_conv1d.cu) trust it (the op has no
 * options, so no attribute struct: its sizes are its tensors'). */
#ifndef M2_OPS_CONV1D_H
#define M2_OPS_CONV1D_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* x (B, T, C) and w (C, W >= 1) float (m2_check_float) and of one dtype; bias (C) of that dtype or NULL. */
m2_status m2_conv1d_check(const m2_tensor *x, const m2_tensor *w, const m2_tensor *bias);

#ifdef __cplusplus
}
#endif
#endif
