/* autograd.c — the tape's nodes: grad mode, recording a node for an op call (m2_record, called by the dispatcher
 * in op.c), node lifetime. It sits below the ops and calls none of them; the reverse walk that runs their
 * backward kernels is m2_backward in backward.c. */
#include "autograd.h"
#include <stdlib.h>
#include <string.h>

static _Thread_local int g_no_grad;
static uint64_t g_seq;
static long g_live_nodes;

bool m2_grad_enabled(void) { return g_no_grad == 0; }
void m2_no_grad_push(void) { g_no_grad++; }
void m2_no_grad_pop(void) { if (g_no_grad > 0) g_no_grad--; }
long m2_live_nodes(void) { return g_live_nodes; }

m2_status m2_requires_grad_(m2_tensor *t, bool on) {
  if (t->grad_fn)
    return m2_fail(M2_ERR_AUTOGRAD, "requires_grad can only be set on leaf tensors (this one was made by '%s'); "
                                    "use detach() first", t->grad_fn->call.op->name);
  if (on && !m2_dtype_is_float(t->dtype))
    return m2_fail(M2_ERR_DTYPE, "only float tensors can require grad, this one is %s", m2_dtype_name(t->dtype));
  t->requires_grad = on;
  return M2_OK;
}

m2_tensor *m2_detach(m2_tensor *t) { return m2_alias(t); }

void m2_node_retain(m2_node *n) { n->refcount++; }

void m2_node_drop_call(m2_node *n) {
  if (n->call.op->drop) n->call.op->drop(&n->call);
  for (int i = 0; i < n->call.n_in; i++) { m2_release(n->call.in[i]); n->call.in[i] = NULL; }
  for (int i = 0; i < M2_MAX_SAVED; i++) { m2_release(n->call.saved[i]); n->call.saved[i] = NULL; }
  for (int i = 0; i < M2_MAX_OUT; i++) {
    m2_release(n->call.out[i]); n->call.out[i] = NULL;
    m2_release(n->gout[i]); n->gout[i] = NULL;
  }
}

void m2_node_release(m2_node *n) {
  if (!n || --n->refcount > 0) return;
  m2_node_drop_call(n);
  g_live_nodes--;
  free(n);
}

m2_status m2_record(m2_opcall *c, m2_tensor **outs) {
  m2_node *n = calloc(1, sizeof *n);
  if (!n) return m2_fail(M2_ERR_OOM, "out of host memory for a tape node");
  g_live_nodes++;
  n->head.release = m2_node_release;
  n->seq = ++g_seq;
  n->call = *c;
  n->n_out = c->n_out;
  for (int i = 0; i < c->n_in; i++) {
    m2_retain(c->in[i]);
    n->call.needs_din[i] = c->in[i] && c->in[i]->requires_grad;
  }
  for (int i = 0; i < c->n_out; i++) {
    m2_tensor *o = c->out[i];
    n->out_ndim[i] = o->ndim;
    memcpy(n->out_shape[i], o->shape, sizeof o->shape);
    n->out_dtype[i] = o->dtype;
    n->out_device = o->device;
    n->call.out[i] = (c->op->flags & M2_OP_KEEP_OUTPUTS) ? m2_alias(o) : NULL;
    o->requires_grad = m2_dtype_is_float(o->dtype);
    if (o->requires_grad) {
      o->grad_fn = n;
      o->grad_fn_out = i;
      n->refcount++;
    }
    outs[i] = o;
    c->out[i] = NULL;
  }
  for (int i = 0; i < c->n_saved; i++) c->saved[i] = NULL; /* moved into the node */
  if (n->refcount == 0) { m2_node_drop_call(n); g_live_nodes--; free(n); }
  return M2_OK;
}

