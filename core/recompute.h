/* recompute.h — activation checkpointing: one tape node for a whole sub-computation, recomputed in the backward.
 *
 * Two levels:
 *  - m2_recompute_record: the tape node itself. The caller computed the outputs (under no_grad, so none of the
 *    sub-computation's intermediate tensors is kept); the node holds only the inputs, and its backward calls the
 *    caller's callback with the output gradients to get the input gradients back.
 *  - m2_checkpoint: torch.utils.checkpoint on top of it. It runs f under no_grad and records the node; its backward
 *    detaches the inputs (those that needed a gradient require grad again), runs f once more with grad mode on and
 *    the settings of the first run (matmul precision, activation dtype, the default RNG's state), backpropagates the
 *    output gradients through that fresh sub-graph (a nested m2_backward: parameters' .grad accumulate as usual)
 *    and returns the detached inputs' gradients.
 * The node is one row of the op registry, "recompute" (core/recompute.c), whose forward is never dispatched. Its
 * backward runs even when no input needs a gradient (M2_OP_BWD_ALWAYS): f's parameters may. Profiling
 * (profile.h) times the ops the backward runs, each in its row (M2_OP_PROFILE_INNER): the recomputed forward shows as
 * more forward calls of its ops. */
#ifndef M2_RECOMPUTE_H
#define M2_RECOMPUTE_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The backward of a recorded sub-computation: for every input i with needs_din[i], ALLOCATE din[i] (a new ref of
 * exactly in[i]'s shape and dtype); dout[0..n_out) are the output gradients (never NULL). Runs with grad mode ON
 * (the tape's backward itself runs with it off). */
typedef m2_status (*m2_recompute_bwd)(void *ctx, int n_in, m2_tensor *const *in, const bool *needs_din, int n_out,
                                      m2_tensor *const *dout, m2_tensor **din);

/* The recompute op's typed attributes (kept on its tape node). */
typedef struct m2_recompute_attr {
  m2_recompute_bwd backward;
  void (*drop)(void *ctx); /* called once when the node lets go of ctx (after its backward, or unreachable); or NULL */
  void *ctx;
} m2_recompute_attr;

/* Record one node with inputs in[0..n_in) (n_in <= M2_MAX_IN, NULL entries allowed) and the caller's outputs
 * out[0..n_out) (1 <= n_out <= M2_MAX_OUT, borrowed): outs[i] get new refs to aliases of out[i] whose history is the
 * node (float outputs require grad). When grad mode is off no node is recorded: outs[i] are new refs to out[i]
 * themselves. drop(ctx) is called exactly once in every case, an error included: at once when no node was kept. */
m2_status m2_recompute_record(int n_in, m2_tensor *const *in, int n_out, m2_tensor *const *out,
                              m2_recompute_bwd backward, void *ctx, void (*drop)(void *ctx), m2_tensor **outs);

/* A sub-computation for m2_checkpoint: reads in[0..n_in) and writes outs[0..*n_out) (new refs, 1 <= *n_out <=
 * M2_MAX_OUT). It must compute the same thing every time it is called (it may draw from the default RNG: the
 * recompute replays the same state). */
typedef m2_status (*m2_checkpoint_fn)(void *ctx, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs);

/* outs[0..*n_out) = f(in) (new refs) without keeping f's intermediate tensors: see the top. With grad mode off it
 * is a plain call of f. drop(ctx) (or NULL) is called exactly once, when ctx is no longer needed. */
m2_status m2_checkpoint(m2_checkpoint_fn f, void *ctx, void (*drop)(void *ctx), int n_in, m2_tensor *const *in,
                        int *n_out, m2_tensor **outs);

/* dL/d(leaves) += backprop of the gradients g[i] from roots[i] (i < n): m2_backward over several roots at once
 * (roots that do not require grad, or with a NULL gradient, are skipped). */
m2_status m2_backward_many(int n, m2_tensor *const *roots, m2_tensor *const *g);

/* Grad mode ON until the matching pop, whatever no_grad nesting is around (the pop restores that nesting). */
int m2_enable_grad_push(void);
void m2_enable_grad_pop(int token);

#ifdef __cplusplus
}
#endif
#endif
