/* autograd.h — the reverse-mode tape.
 *
 * Every differentiable op run while grad mode is on, with at least one input
 * that requires grad, records a node (its opcall: inputs, saved tensors,
 * attributes). m2_backward() collects the nodes reachable from the root, walks
 * them in reverse creation order (the tape), calls each op's backward, routes
 * gradients to producing nodes, ACCUMULATES (+=) into leaf tensors' .grad, and
 * frees each node's saved tensors as soon as it has run.
 *
 * Two files, on either side of the ops: autograd.c (grad mode, recording, node
 * lifetime) is below the op dispatcher that records into it; backward.c
 * (m2_backward) is above the ops whose backward kernels it runs. */
#ifndef M2_AUTOGRAD_H
#define M2_AUTOGRAD_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_node {
  m2_node_head head;           /* first member: what a tensor sees of the node (head.release = m2_node_release) */
  int refcount;
  uint64_t seq;                /* creation order: the tape position */
  m2_opcall call;              /* inputs retained; outputs aliased only for KEEP_OUTPUTS */
  int n_out;
  int out_ndim[M2_MAX_OUT];
  int64_t out_shape[M2_MAX_OUT][M2_MAX_DIMS];
  m2_dtype out_dtype[M2_MAX_OUT];
  m2_device out_device;
  m2_tensor *gout[M2_MAX_OUT]; /* gradients gathered for the outputs during backward */
  bool consumed;               /* backward already ran through it */
  uint64_t visit;              /* mark of the last backward that collected it */
} m2_node;

/* Grad mode (per thread). no_grad nests. */
bool m2_grad_enabled(void);
void m2_no_grad_push(void);
void m2_no_grad_pop(void);

/* Mark a leaf as a parameter (requires_grad); fails on a non-leaf or an integer tensor. */
m2_status m2_requires_grad_(m2_tensor *t, bool on);
/* A new tensor sharing t's data with no history (requires_grad false). */
m2_tensor *m2_detach(m2_tensor *t);

/* dL/d(leaves) += backprop of `grad` from `root`. grad may be NULL only when root has
 * one element (then it is 1). (backward.c) */
m2_status m2_backward(m2_tensor *root, m2_tensor *grad);

/* Used by the op dispatcher (op.c) and by m2_backward. */
m2_status m2_record(m2_opcall *c, m2_tensor **outs);
void m2_node_retain(m2_node *n);
void m2_node_release(m2_node *n);
/* Release what the node's call holds (inputs, saved tensors, kept outputs, pending output gradients): after its
 * backward ran, or when nothing can reach it any more. */
void m2_node_drop_call(m2_node *n);
/* Number of live nodes (for leak tests; m2_live_tensors is in tensor.h). */
long m2_live_nodes(void);

#ifdef __cplusplus
}
#endif
#endif
