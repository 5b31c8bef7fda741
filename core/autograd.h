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
  struct m2_node *prev, *next; /* the list of live nodes, oldest first (m2_tape_rows walks it) */
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
/* Whether nodes recorded from now on drop the data of the inputs their op's backward never reads (m2_op.bwd_unread,
 * op.h); on by default. Returns the setting before. */
bool m2_tape_drop_unread(bool on);

/* ---- what the tape holds (memory accounting) ----
 * Every live node holds tensors: the inputs of its op call (retained until its backward ran), the tensors its forward
 * saved, its outputs when the op keeps them (M2_OP_KEEP_OUTPUTS) and, during a backward, its pending output gradients.
 * m2_tape_rows counts the bytes of the buffers (storages) behind them, each buffer ONCE however many tensors and views
 * of it the nodes hold, grouped by (op of the node, role, dtype). A buffer held several times is counted in the row of
 * the first holder: parameters' buffers first (role PARAM: an input that is a leaf requiring grad, held by the model
 * anyway), then the nodes in creation order, in each node inputs, saved, outputs, gradients. Bytes are whole buffers
 * (a view of part of a buffer holds all of it). Buffers also held outside the tape (by the program) are counted too:
 * the rows say what the tape keeps alive, not what backward alone would free. */
enum { M2_TAPE_INPUT, M2_TAPE_PARAM, M2_TAPE_SAVED, M2_TAPE_OUTPUT, M2_TAPE_GRAD, M2_TAPE_NROLES };
typedef struct m2_tape_row {
  const char *op;       /* the op row's name (static; a cast_call node's, core/op_cast.c: the op it wraps) */
  int role;             /* M2_TAPE_* */
  m2_dtype dtype;       /* of the tensors held (a buffer's dtype is its first holder's) */
  long long bytes;      /* bytes of the buffers counted in this row */
  long buffers;         /* buffers counted in this row */
  long refs;            /* tensor references of this row, also those to buffers counted in another row */
} m2_tape_row;
typedef struct m2_tape_totals {
  long nodes;           /* live nodes (consumed ones included: they hold nothing) */
  long long bytes;      /* every distinct buffer once */
  long long param_bytes;/* of which parameters' (role PARAM) */
  long buffers, refs;
} m2_tape_totals;
/* The role's name: "input", "param", "saved", "output", "grad". */
const char *m2_tape_role_name(int role);
/* Copy up to max rows (rows may be NULL with max 0), most bytes first, and the totals into *tot (may be NULL).
 * Returns the number of rows, or -1 when out of host memory. */
int m2_tape_rows(m2_tape_row *rows, int max, m2_tape_totals *tot);

#ifdef __cplusplus
}
#endif
#endif
