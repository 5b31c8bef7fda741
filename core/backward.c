/* backward.c — m2_backward(): the reverse walk over the tape. It collects the nodes reachable from the root, runs
 * each op's backward kernel in reverse creation order, routes gradients to the producing nodes and accumulates (+=)
 * leaf gradients. It sits above the ops (it adds gradients with m2_add); the nodes themselves are autograd.c's. */
#include "autograd.h"
#include "ops.h"
#include "profile.h"
#include "ops_view.h"
#include <stdlib.h>

static uint64_t g_walks; /* backward walks so far: each marks the nodes it collects with its own number */

/* dst += src in place (no recording). */
static m2_status accumulate_into(m2_tensor *dst, m2_tensor *src) {
  m2_tensor *sum = m2_add(dst, src);
  if (!sum) return m2_errcode();
  m2_status s = m2_copy_(dst, sum);
  m2_release(sum);
  return s;
}

/* Add gradient g (borrowed) for tensor t: into its producer's pending output grads, or a leaf's .grad. */
static m2_status route_grad(m2_tensor *t, m2_tensor *g) {
  if (t->grad_fn) {
    m2_tensor **slot = &t->grad_fn->gout[t->grad_fn_out];
    if (!*slot) {
      /* take g when nobody else holds it, else a private copy, so that later in-place
         accumulation cannot touch another tensor's storage */
      if (g->refcount == 1 && m2_is_contiguous(g) && g->storage->refcount == 1) {
        m2_retain(g);
        *slot = g;
        return M2_OK;
      }
      *slot = m2_clone_raw(g, g->dtype, g->device);
      return *slot ? M2_OK : m2_errcode();
    }
    /* a pending gradient is private to this slot (adopted or cloned above): the sum replaces it, no copy back */
    m2_tensor *sum = m2_add(*slot, g);
    if (!sum) return m2_errcode();
    m2_release(*slot);
    *slot = sum;
    return M2_OK;
  }
  if (!t->requires_grad) return M2_OK;
  if (!t->grad && g->refcount == 1 && m2_is_contiguous(g) && g->storage->refcount == 1 && g->dtype == t->dtype) {
    m2_retain(g); /* nobody else holds g: adopt it as the leaf's gradient */
    t->grad = g;
    return M2_OK;
  }
  if (!t->grad) {
    t->grad = m2_clone_raw(g, t->dtype, t->device);
    return t->grad ? M2_OK : m2_errcode();
  }
  return accumulate_into(t->grad, g);
}

static int by_seq_desc(const void *a, const void *b) {
  const m2_node *x = *(m2_node *const *)a, *y = *(m2_node *const *)b;
  return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

static m2_status run_node(m2_node *n) {
  m2_opcall *c = &n->call;
  bool any = false;
  for (int i = 0; i < n->n_out; i++) any |= n->gout[i] != NULL;
  bool needed = false;
  for (int i = 0; i < c->n_in; i++) needed |= c->needs_din[i];
  needed |= (c->op->flags & M2_OP_BWD_ALWAYS) != 0;
  if (!any || !needed) return M2_OK;
  for (int i = 0; i < n->n_out; i++)
    if (!n->gout[i]) {
      n->gout[i] = m2_zeros(n->out_dtype[i], n->out_device, n->out_ndim[i], n->out_shape[i]);
      if (!n->gout[i]) return m2_errcode();
    }
  m2_op_fn bwd = m2_op_kernel(c->op, n->out_device, true);
  if (!bwd) return m2_fail(M2_ERR_AUTOGRAD, "%s: no backward for this device", c->op->name);
  for (int i = 0; i < n->n_out; i++) c->dout[i] = n->gout[i];
  const bool prof = m2_profile_on() && !(c->op->flags & M2_OP_PROFILE_INNER);
  const double t0 = prof ? m2_profile_begin(n->out_device) : 0;
  m2_status s = bwd(c);
  if (prof) m2_profile_end(c->op->name, true, n->out_device, t0);
  if (s != M2_OK) return m2_fail_context(s, "backward of %s", c->op->name);
  if (prof && c->op == &m2_op_to_dtype && c->din[0] && M2_ATTR(c, m2_to_dtype_attr)->cause) {
    const m2_tensor *d = c->din[0]; /* a dispatcher's conversion: counted under its cause */
    m2_profile_cast(M2_ATTR(c, m2_to_dtype_attr)->cause, true, (double)m2_numel(d) * (double)m2_elsize(d));
  }
  for (int i = 0; i < c->n_in && s == M2_OK; i++) {
    if (!c->needs_din[i]) continue;
    m2_tensor *in = c->in[i], *g = c->din[i];
    if (!g) return m2_fail(M2_ERR_AUTOGRAD, "backward of %s did not produce the gradient of input %d", c->op->name, i + 1);
    if (!m2_same_shape(in, g)) {
      char a[96], b[96];
      return m2_fail(M2_ERR_AUTOGRAD, "backward of %s: gradient of input %d has shape %s, input has %s", c->op->name,
                     i + 1, m2_shape_str(g, a, sizeof a), m2_shape_str(in, b, sizeof b));
    }
    s = route_grad(in, g);
  }
  for (int i = 0; i < c->n_in; i++) { m2_release(c->din[i]); c->din[i] = NULL; }
  return s;
}

m2_status m2_backward(m2_tensor *root, m2_tensor *grad) {
  if (!root->requires_grad)
    return m2_fail(M2_ERR_AUTOGRAD, "backward: this tensor does not require grad "
                                    "(no parameter with requires_grad took part in computing it)");
  m2_tensor *g = grad;
  if (!g) {
    if (m2_numel(root) != 1) {
      char b[96];
      return m2_fail(M2_ERR_AUTOGRAD, "backward on a non-scalar tensor of shape %s needs an explicit gradient",
                     m2_shape_str(root, b, sizeof b));
    }
    g = m2_full(root->dtype, root->device, root->ndim, root->shape, 1.0);
    if (!g) return m2_errcode();
  } else if (!m2_same_shape(g, root)) {
    char a[96], b[96];
    return m2_fail(M2_ERR_SHAPE, "backward: gradient shape %s differs from the tensor's %s", m2_shape_str(g, a, sizeof a),
                   m2_shape_str(root, b, sizeof b));
  } else {
    m2_retain(g);
  }
  m2_status s = M2_OK;
  m2_no_grad_push();
  if (!root->grad_fn) {
    s = route_grad(root, g);
    goto done;
  }
  /* collect the reachable nodes (depth-first, explicit stack) */
  size_t cap = 64, cnt = 0, top = 0;
  m2_node **all = malloc(cap * sizeof *all), **stack = malloc(cap * sizeof *stack);
  size_t scap = cap;
  if (!all || !stack) { free(all); free(stack); s = m2_fail(M2_ERR_OOM, "backward: out of memory"); goto done; }
  uint64_t mark = ++g_walks; /* unique visit mark (a new node has visit 0) */
  stack[top++] = root->grad_fn;
  while (top) {
    m2_node *n = stack[--top];
    if (n->visit == mark) continue;
    n->visit = mark;
    if (n->consumed) {
      s = m2_fail(M2_ERR_AUTOGRAD, "backward through the graph a second time: %s's saved tensors were already "
                                   "freed by the first backward (compute the loss again)", n->call.op->name);
      break;
    }
    if (cnt == cap) { cap *= 2; all = realloc(all, cap * sizeof *all); }
    all[cnt++] = n;
    for (int i = 0; i < n->call.n_in; i++) {
      m2_tensor *in = n->call.in[i];
      if (!in || !in->grad_fn) continue;
      if (top == scap) { scap *= 2; stack = realloc(stack, scap * sizeof *stack); }
      stack[top++] = in->grad_fn;
    }
  }
  free(stack);
  if (s == M2_OK) {
    qsort(all, cnt, sizeof *all, by_seq_desc);
    for (size_t i = 0; i < cnt; i++) m2_node_retain(all[i]); /* keep alive while inputs are released */
    root->grad_fn->gout[root->grad_fn_out] = m2_clone_raw(g, g->dtype, g->device);
    for (size_t i = 0; i < cnt; i++) {
      if (s == M2_OK) s = run_node(all[i]);
      all[i]->consumed = true;
      m2_node_drop_call(all[i]); /* free saved tensors and drop the inputs */
    }
    for (size_t i = 0; i < cnt; i++) m2_node_release(all[i]);
  }
  free(all);
done:
  m2_no_grad_pop();
  m2_release(g);
  return s;
}
