/* mixer_common.h — internal: what the GDN and SSD ops (core/ops_gdn.c, core/ops_ssd.c and their CUDA entry
 * points, the CUDA backend's ops_gdn.cu and ops_ssd.cu) do alike: both take in = {6 inputs, the last (h0) optional},
 * return out = {y, hT}, and save one tensor of state checkpoints. Here: the input checks and shape messages
 * of their public functions (the only place a call is checked; its kernels then trust the attributes), what a
 * backend's kernels may refuse (dtypes, sizes), the forward's output/checkpoint bookkeeping, the public-API call
 * (which the M2RNN op's public function uses too), and (CPU only) the double-buffer plumbing of the reference
 * kernels. The maths stays in each op's file. */
#ifndef M2_MIXER_COMMON_H
#define M2_MIXER_COMMON_H
#include "op.h"
#include "dbuf.h"
#ifdef __cplusplus
extern "C" {
#endif

/* ---------------- checks of the public functions ---------------- */

/* t has exactly `shape` (nd dims), else M2_ERR_SHAPE "op: arg has shape (..), expected form = (..)". */
m2_status mixer_want_shape(const m2_tensor *t, const char *op, const char *arg, const char *form, int nd,
                           const int64_t *shape);
/* in[0..4] present (names[i] in the message), every present input a float tensor (m2_check_float: f32 or f64, or
 * bf16 on cuda) of in[0]'s dtype. */
m2_status mixer_check_inputs(m2_tensor *const *in, const char *const names[6], const char *op);

/* ---------------- what a backend's kernels take ---------------- */

/* A backend's limits beyond the public checks: the float dtypes its kernels compute in (cu_check_float on CUDA:
 * f32 / bf16, no f64) and the largest state dimension (GDN's K, SSD's N) they take, 0 = any; `kernels` names them
 * in the message. The CPU reference takes every call the public checks let through. */
typedef struct mixer_rules {
  const char *kernels;
  m2_status (*check_float)(const m2_tensor *t, const char *op, const char *arg);
  int64_t max_dim;
} mixer_rules;
/* Every present input of c (names[i] in the message) of a dtype r takes, and the state dimension `what` = n within
 * r's limit (else M2_ERR_UNSUPPORTED). */
m2_status mixer_supports(const m2_opcall *c, const char *const names[6], const char *op, int64_t n, const char *what,
                         const mixer_rules *r);

/* ---------------- forward and API (CPU and CUDA) ---------------- */

/* A tape node will be recorded (some input requires grad): the forward keeps its checkpoints. */
bool mixer_keep(const m2_opcall *c);
/* End a forward: on success out = {y, hT} and saved[0] = ck (when not NULL); on failure all three released.
 * Returns s. */
m2_status mixer_fwd_finish(m2_opcall *c, m2_status s, m2_tensor *y, m2_tensor *hT, m2_tensor *ck);
/* Run op on in[6] with the op's checked attribute struct attr (n bytes, <= M2_MAX_ATTR: each op's header asserts
 * it); *y, *hT get the outputs (each may be NULL: released). */
m2_status mixer_call(const m2_op *op, m2_tensor *const *in, const void *attr, size_t n, m2_tensor **y, m2_tensor **hT);

/* ---------------- CPU reference plumbing (double buffers) ---------------- */

/* Forward: the inputs as doubles, zeroed outputs y, hT in in[0]'s dtype, and (when mixer_keep) the F64
 * checkpoint tensor ck (NULL otherwise). */
typedef struct mixer_fwd_bufs {
  dbuf in[6], y, hT;
  m2_tensor *ck;
} mixer_fwd_bufs;
m2_status mixer_fwd_open(m2_opcall *c, mixer_fwd_bufs *b, const int64_t yshape[4], const int64_t hshape[4],
                         const int64_t ckshape[5]);
/* Store the outputs (when s is M2_OK), free the buffers, and mixer_fwd_finish. Call it whatever open returned. */
m2_status mixer_fwd_close(m2_opcall *c, mixer_fwd_bufs *b, m2_status s);

/* Backward: the inputs, dout[0] (dy) and dout[1] (dhT) as doubles, and zeroed gradients din[i] shaped as in[i]. */
typedef struct mixer_bwd_bufs {
  dbuf in[6], dy, dhT, din[6];
} mixer_bwd_bufs;
m2_status mixer_bwd_open(m2_opcall *c, mixer_bwd_bufs *b);
/* Store the gradients (when s is M2_OK), free the buffers, hand over the wanted ones. Returns s. */
m2_status mixer_bwd_close(m2_opcall *c, mixer_bwd_bufs *b, m2_status s);

/* dst (n doubles) = src, or zeros when src is NULL (a state from h0, a gradient from dhT). */
void mixer_load(double *dst, const double *src, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
