/* moe_gmm_tc.h — the grouped GEMMs of moe_grouped_matmul on tensor cores with the group offsets kept on the device
 * (cuda/moe_gmm_tc.cu), called by cuda/ops_moe.cu for bf16 products when M2_MOE_GROUPED=1. */
#ifndef M2_CUDA_MOE_GMM_TC_H
#define M2_CUDA_MOE_GMM_TC_H
#include "../core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* M2_MOE_GROUPED=1 in the environment (read at each call). */
bool m2_moe_grouped_enabled(void);
/* Can the grouped kernels take these sizes (grid limits)? Else the caller keeps the per-expert path. */
bool m2_moe_grouped_fits(int64_t M, int64_t E, int64_t O, int64_t Din);
/* x2 (M, Din) bf16, w2 (E, O, Din) bf16, off (E + 1) i64 on the device -> y (M, O) (f32 or bf16, allocated here).
 * dy2 (M, O) bf16 -> dx (M, Din) and / or dw (E, O, Din) (either may be NULL: not wanted), of dtype dt. */
m2_status m2_moe_gmm_tc_fwd(const m2_tensor *x2, const m2_tensor *w2, const m2_tensor *off, m2_dtype dt, m2_tensor **y);
m2_status m2_moe_gmm_tc_bwd(const m2_tensor *x2, const m2_tensor *w2, const m2_tensor *off, const m2_tensor *dy2,
                            m2_dtype dt, bool want_dx, bool want_dw, m2_tensor **dx, m2_tensor **dw);

#ifdef __cplusplus
}
#endif
#endif
