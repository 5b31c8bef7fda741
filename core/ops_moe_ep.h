/* ops_moe_ep.h — expert parallelism for the MoE MLP: the token exchange between the ranks as two autograd ops
 * (core/ops_moe_ep.c; DISTRIBUTED.md "Expert parallelism"). The public entries are in ops.h.
 *
 * R ranks, E experts; rank r owns the El = E / R experts [r El, (r+1) El). Every rank routes its own tokens and sorts
 * their slots by expert (moe_permute: xp (M, d), offsets (E + 1)); since the experts of a rank are consecutive, xp is
 * already in blocks by destination rank. Then:
 *   moe_dispatch  xp (M, d), offsets (E + 1) i64 -> xl (Ml, d), loff (El + 1) i64, counts (R, E) i64
 *                 counts first (an all-gather of every rank's slots per expert: counts[q, e] = rank q's slots for
 *                 expert e), then the rows (an all-to-all: rank q's rows for my experts), regrouped so that xl holds
 *                 my local expert 0's rows (rank 0's, then rank 1's, ...), then expert 1's, ...: in the order one
 *                 process would see them for the whole global batch (rank r's tokens are rows [r B/R, (r+1) B/R)).
 *                 loff: the groups' offsets for moe_grouped_matmul on my experts' weights (El, out, in).
 *   moe_combine   yl (Ml, d), counts (R, E) -> yp (M, d): the reverse (regroup by source rank, all-to-all back); yp's
 *                 rows line up with xp's, so moe_unpermute finishes as in one process.
 * Backward: moe_dispatch's is the combine exchange of dxl, moe_combine's the dispatch exchange of dyp (the counts are
 * known then: no count exchange). Both are collectives: every rank calls them (and their backwards, in tape order)
 * in the same order. A NULL group means one process (the exchange is a copy). */
#ifndef M2_OPS_MOE_EP_H
#define M2_OPS_MOE_EP_H
#include "dist.h"
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* moe_dispatch / moe_combine: the process group (NULL: one process; borrowed, it must outlive the tape) and E. */
typedef struct m2_moe_ep_attr {
  m2_dist *g;
  int64_t experts;
} m2_moe_ep_attr;

#ifdef __cplusplus
}
#endif
#endif
