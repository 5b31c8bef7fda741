/* dist_dp.h — data parallelism over a process group (dist.h): gradients summed over the ranks in buckets, the global
 * gradient norm and clipping, and ZeRO-1 (AdamW / SGD state sharded over the ranks, parameters all-gathered after
 * each step).
 *
 * Buckets: the optimizer's parameters in order, packed into buckets of about bucket_elems elements (a parameter is
 * never split; one larger than a bucket gets its own). A bucket of L elements is padded to world * c (c = ceil(L /
 * world)); rank r owns its elements [r c, (r+1) c). Per step (every rank, the same calls in the same order):
 *   m2_dp_sync_grads   the gradients (each rank's, already scaled by 1 / (world * micro-batches)) summed over the
 *                      ranks: plain, an all-reduce of each bucket (every rank then holds every summed gradient);
 *                      ZeRO-1, a reduce-scatter (a rank holds the summed gradient of the elements it owns only, the rest
 *                      of its gradient buffers keep its own unsummed values, which nothing reads)
 *   m2_dp_clip_grad_norm  the norm of the summed gradient; plain: m2_clip_grad_norm on every rank (what one process
 *                      computes); ZeRO-1: each rank's owned elements' sum of squares (double), all-gathered and added in
 *                      rank order (can differ from the plain norm in the last bits of the double)
 *   m2_dp_step         plain: m2_optim_step; ZeRO-1: the optimizer updates the owned elements (m2_optim_set_range),
 *                      then each bucket's parameters are all-gathered from their owners.
 * A parameter no rank computed a gradient for stays without one (the optimizer skips it, as in one process).
 * Overlapping the gradient sums with the backward pass (a bucket sent as soon as its last gradient is ready) is the
 * GPU optimisation still to come: m2_dp_sync_grads runs after the backward. */
#ifndef M2_DIST_DP_H
#define M2_DIST_DP_H
#include "dist.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_dp_opts {
  int64_t bucket_elems; /* <= 0: M2_DP_DEFAULT_BUCKET */
  bool zero;            /* ZeRO-1 */
  /* NULL, or one flag per optimizer parameter: true = rank-local (expert parallelism: each rank holds other experts
   * under the same name). A rank-local parameter is in no bucket: its gradient is not summed over the ranks (its
   * owner already has the whole gradient), ZeRO-1 does not shard it (each rank keeps its whole optimizer state and
   * updates it whole), broadcast_params skips it; its squares count once, from its rank, in the global grad norm,
   * and clipping scales it like the rest. Copied: the array need not outlive the call. */
  const bool *rank_local;
} m2_dp_opts;

#define M2_DP_DEFAULT_BUCKET ((int64_t)1 << 24) /* 16 M elements, 64 MiB of f32 */

typedef struct m2_dp m2_dp;

/* g and opt are borrowed (they must outlive dp). With zero, sets the optimizer's ranges (m2_optim_set_range). Every
 * parameter must be f32, contiguous, and on the backend's device type. */
m2_dp *m2_dp_new(m2_dist *g, m2_optim *opt, const m2_dp_opts *o);
void m2_dp_free(m2_dp *dp);

m2_status m2_dp_sync_grads(m2_dp *dp);
m2_status m2_dp_clip_grad_norm(m2_dp *dp, double max_norm, double *norm);
m2_status m2_dp_step(m2_dp *dp, double lr);
/* Copy parameter values from rank `root` to every rank (a fresh start: the ranks begin equal). */
m2_status m2_dp_broadcast_params(m2_dp *dp, int root);

/* ZeRO-1 checkpoints (collective: every rank calls, in the same order). The whole state tensor j of parameter i,
 * shaped like the parameter, gathered from its owners (a new tensor; NULL when the state does not exist yet);
 * without zero, or for a rank-local parameter, a new reference to the optimizer's own (this rank's). */
m2_tensor *m2_dp_full_state(m2_dp *dp, int i, int j);
/* Set this rank's part of state j of parameter i from the whole tensor `full` (shaped like the parameter; each rank
 * passes the same values, e.g. broadcast from rank 0 after reading a checkpoint). Not collective. */
m2_status m2_dp_load_state(m2_dp *dp, int i, int j, const m2_tensor *full);

/* Facts for messages and the run file: buckets, elements communicated per step (rank-local parameters excluded). */
int m2_dp_nbuckets(const m2_dp *dp);
int64_t m2_dp_elems(const m2_dp *dp);

#ifdef __cplusplus
}
#endif
#endif
