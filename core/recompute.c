/* recompute.c — activation checkpointing (recompute.h): the "recompute" op row, the node it records
 * (m2_recompute_record) and m2_checkpoint, which runs a sub-computation without keeping its intermediate tensors and
 * runs it again, with grad on, in the backward. Above the ops (it calls them) and beside backward.c, whose
 * m2_backward it calls from inside a node's backward: that nested walk only sees the fresh sub-graph (its roots are
 * the recomputed outputs, its leaves the detached inputs and the parameters), gets its own visit mark, and pushes
 * and pops its own no_grad level. */
#include "recompute.h"
#include "autograd.h"
#include "ops.h"
#include "rng.h"
#include <stdlib.h>

/* ---- grad mode on inside the backward (which runs with it off) ---- */
int m2_enable_grad_push(void) {
  int k = 0;
  while (!m2_grad_enabled()) { m2_no_grad_pop(); k++; }
  return k;
}
void m2_enable_grad_pop(int token) {
  for (int i = 0; i < token; i++) m2_no_grad_push();
}

/* ---- the op row ---- */
static m2_status recompute_fwd(m2_opcall *c) {
  (void)c;
  return m2_fail(M2_ERR_UNSUPPORTED, "recompute: this op is recorded by m2_recompute_record / m2_checkpoint "
                                     "(core/recompute.h), never called");
}

static m2_status recompute_bwd(m2_opcall *c) {
  const m2_recompute_attr *a = M2_ATTR(c, m2_recompute_attr);
  if (!a->backward) return m2_fail(M2_ERR_AUTOGRAD, "recompute: the node has no backward callback");
  const int tok = m2_enable_grad_push();
  m2_status s = a->backward(a->ctx, c->n_in, c->in, c->needs_din, c->n_out, c->dout, c->din);
  m2_enable_grad_pop(tok);
  if (s != M2_OK && m2_errmsg()[0] == 0) m2_fail(s, "recompute: the backward callback failed");
  return s;
}

/* the node lets go of its call (after its backward, or when nothing reaches it): the context once */
static void recompute_drop(m2_opcall *c) {
  m2_recompute_attr *a = (m2_recompute_attr *)(void *)c->attr;
  void (*drop)(void *) = a->drop;
  void *ctx = a->ctx;
  a->drop = NULL;
  a->ctx = NULL;
  a->backward = NULL;
  if (drop) drop(ctx);
}

/* Its kernels are the same on every device (they call other ops). VIEW: inputs are kept as they are. The profiler
 * times the ops of its backward, not the node. */
const m2_op m2_op_recompute = {"recompute", recompute_fwd, recompute_bwd,
                               M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD | M2_OP_BWD_ALWAYS |
                                   M2_OP_PROFILE_INNER,
                               0 /* bwd_unread: the recompute reads every input */, recompute_drop};

m2_status m2_recompute_record(int n_in, m2_tensor *const *in, int n_out, m2_tensor *const *out,
                              m2_recompute_bwd backward, void *ctx, void (*drop)(void *ctx), m2_tensor **outs) {
  m2_status s = M2_OK;
  if (n_in < 0 || n_in > M2_MAX_IN) s = m2_fail(M2_ERR_VALUE, "recompute: %d inputs (at most %d)", n_in, M2_MAX_IN);
  else if (n_out < 1 || n_out > M2_MAX_OUT)
    s = m2_fail(M2_ERR_VALUE, "recompute: %d outputs (1 to %d)", n_out, M2_MAX_OUT);
  else if (!backward) s = m2_fail(M2_ERR_VALUE, "recompute: no backward callback");
  for (int i = 0; s == M2_OK && i < n_out; i++)
    if (!out[i]) s = m2_fail(M2_ERR_VALUE, "recompute: output %d is NULL", i + 1);
  if (s != M2_OK || !m2_grad_enabled()) {
    if (drop) drop(ctx);
    if (s == M2_OK)
      for (int i = 0; i < n_out; i++) { m2_retain(out[i]); outs[i] = out[i]; }
    return s;
  }
  m2_opcall c;
  m2_call_init(&c, &m2_op_recompute, n_in, in);
  m2_recompute_attr a = {backward, drop, ctx};
  M2_SET_ATTR(&c, a);
  c.n_out = n_out;
  for (int i = 0; i < n_out; i++) {
    c.out[i] = m2_alias(out[i]); /* the node's outputs are fresh tensors: never one of the inputs */
    if (!c.out[i]) {
      for (int j = 0; j < i; j++) m2_release(c.out[j]);
      if (drop) drop(ctx);
      return m2_errcode();
    }
  }
  s = m2_record(&c, outs); /* on success the node owns ctx (recompute_drop) */
  if (s != M2_OK) {
    m2_call_clear(&c);
    if (drop) drop(ctx);
  }
  return s;
}

/* ---- several roots at once ---- */
m2_status m2_backward_many(int n, m2_tensor *const *roots, m2_tensor *const *g) {
  int k = 0, first = -1;
  for (int i = 0; i < n; i++)
    if (roots[i] && g[i] && roots[i]->requires_grad) { k++; if (first < 0) first = i; }
  if (k == 0) return M2_OK;
  if (k == 1) return m2_backward(roots[first], g[first]);
  /* one scalar sum_i sum(root_i * g_i): its gradient with respect to root_i is 1 * g_i = g_i exactly (the sums are
   * added in f64 when the roots' dtypes differ) */
  bool mixed = false;
  for (int i = 0; i < n; i++)
    if (roots[i] && g[i] && roots[i]->requires_grad) mixed |= roots[i]->dtype != roots[first]->dtype;
  const int tok = m2_enable_grad_push();
  m2_tensor *total = NULL;
  m2_status s = M2_OK;
  for (int i = 0; i < n && s == M2_OK; i++) {
    if (!roots[i] || !g[i] || !roots[i]->requires_grad) continue;
    m2_tensor *p = m2_mul(roots[i], g[i]);
    m2_tensor *t = p ? m2_sum_all(p) : NULL;
    m2_release(p);
    if (t && mixed && t->dtype != M2_F64) {
      m2_tensor *u = m2_to_dtype(t, M2_F64);
      m2_release(t);
      t = u;
    }
    if (!t) { s = m2_errcode(); break; }
    if (!total) { total = t; continue; }
    m2_tensor *sum = m2_add(total, t);
    m2_release(total);
    m2_release(t);
    total = sum;
    if (!total) s = m2_errcode();
  }
  m2_enable_grad_pop(tok);
  if (s == M2_OK) s = m2_backward(total, NULL);
  m2_release(total);
  return s;
}

/* ---- m2_checkpoint ---- */
typedef struct ckpt_ctx {
  m2_checkpoint_fn f;
  void *ctx;
  void (*drop)(void *);
  int n_out;
  m2_rng rng;         /* the default RNG's state before the first run */
  int precision;      /* m2_matmul_precision() of the first run */
  m2_dtype act_dtype; /* m2_activation_dtype() of the first run */
} ckpt_ctx;

static void ckpt_drop(void *p) {
  ckpt_ctx *k = p;
  if (!k) return;
  if (k->drop) k->drop(k->ctx);
  free(k);
}

/* f again, with grad on (the caller, recompute_bwd, turned it on) and the first run's settings */
static m2_status ckpt_rerun(ckpt_ctx *k, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs) {
  m2_rng *r = m2_default_rng(), now = *r;
  const int prec = m2_set_matmul_precision(k->precision);
  const m2_dtype act = m2_set_activation_dtype(k->act_dtype);
  *r = k->rng;
  m2_status s = k->f(k->ctx, n_in, in, n_out, outs);
  *r = now;
  m2_set_activation_dtype(act);
  m2_set_matmul_precision(prec);
  return s;
}

static m2_status ckpt_backward(void *p, int n_in, m2_tensor *const *in, const bool *needs_din, int n_out,
                               m2_tensor *const *dout, m2_tensor **din) {
  ckpt_ctx *k = p;
  m2_tensor *x[M2_MAX_IN] = {0}, *o[M2_MAX_OUT] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < n_in && s == M2_OK; i++) {
    if (!in[i]) continue;
    x[i] = m2_detach(in[i]);
    if (!x[i]) s = m2_errcode();
    else if (needs_din[i]) s = m2_requires_grad_(x[i], true);
  }
  int m = 0;
  if (s == M2_OK) s = ckpt_rerun(k, n_in, x, &m, o);
  if (s == M2_OK && m != n_out)
    s = m2_fail(M2_ERR_AUTOGRAD, "checkpoint: the recomputed function returned %d outputs, the first run %d (it "
                                 "must compute the same thing every time)", m, n_out);
  for (int i = 0; i < n_out && s == M2_OK; i++)
    if (!m2_same_shape(o[i], dout[i]) || o[i]->dtype != dout[i]->dtype) {
      char a[96], b[96];
      s = m2_fail(M2_ERR_AUTOGRAD, "checkpoint: recomputed output %d is %s %s, the first run's was %s %s (the "
                  "function must compute the same thing every time)", i + 1, m2_dtype_name(o[i]->dtype),
                  m2_shape_str(o[i], a, sizeof a), m2_dtype_name(dout[i]->dtype), m2_shape_str(dout[i], b, sizeof b));
    }
  if (s == M2_OK) s = m2_backward_many(n_out, o, dout);
  for (int i = 0; i < M2_MAX_OUT; i++) m2_release(o[i]);
  for (int i = 0; i < n_in && s == M2_OK; i++) {
    if (!needs_din[i]) continue;
    if (x[i]->grad) { /* taken from the detached input */
      din[i] = x[i]->grad;
      x[i]->grad = NULL;
    } else { /* the function did not use this input differentiably */
      din[i] = m2_zeros(in[i]->dtype, in[i]->device, in[i]->ndim, in[i]->shape);
      if (!din[i]) s = m2_errcode();
    }
  }
  for (int i = 0; i < n_in; i++) m2_release(x[i]);
  if (s != M2_OK)
    for (int i = 0; i < n_in; i++) { m2_release(din[i]); din[i] = NULL; }
  return s;
}

m2_status m2_checkpoint(m2_checkpoint_fn f, void *ctx, void (*drop)(void *ctx), int n_in, m2_tensor *const *in,
                        int *n_out, m2_tensor **outs) {
  *n_out = 0;
  if (!f) {
    if (drop) drop(ctx);
    return m2_fail(M2_ERR_VALUE, "checkpoint: no function");
  }
  if (n_in < 0 || n_in > M2_MAX_IN) {
    if (drop) drop(ctx);
    return m2_fail(M2_ERR_VALUE, "checkpoint: %d inputs (at most %d)", n_in, M2_MAX_IN);
  }
  if (!m2_grad_enabled()) { /* nothing to save: a plain call */
    m2_status s = f(ctx, n_in, in, n_out, outs);
    if (s == M2_OK && (*n_out < 1 || *n_out > M2_MAX_OUT))
      s = m2_fail(M2_ERR_VALUE, "checkpoint: the function returned %d outputs (1 to %d)", *n_out, M2_MAX_OUT);
    if (drop) drop(ctx);
    return s;
  }
  ckpt_ctx *k = calloc(1, sizeof *k);
  if (!k) {
    if (drop) drop(ctx);
    return m2_fail(M2_ERR_OOM, "checkpoint: out of host memory");
  }
  *k = (ckpt_ctx){f, ctx, drop, 0, *m2_default_rng(), m2_matmul_precision(), m2_activation_dtype()};
  m2_tensor *o[M2_MAX_OUT] = {0};
  int m = 0;
  m2_no_grad_push();
  m2_status s = f(ctx, n_in, in, &m, o);
  m2_no_grad_pop();
  if (s == M2_OK && (m < 1 || m > M2_MAX_OUT))
    s = m2_fail(M2_ERR_VALUE, "checkpoint: the function returned %d outputs (1 to %d)", m, M2_MAX_OUT);
  for (int i = 0; s == M2_OK && i < m; i++)
    if (!o[i]) s = m2_fail(M2_ERR_VALUE, "checkpoint: the function left output %d NULL", i + 1);
  if (s != M2_OK) {
    for (int i = 0; i < M2_MAX_OUT; i++) m2_release(o[i]);
    ckpt_drop(k);
    return s;
  }
  k->n_out = m;
  s = m2_recompute_record(n_in, in, m, o, ckpt_backward, k, ckpt_drop, outs);
  for (int i = 0; i < m; i++) m2_release(o[i]);
  if (s == M2_OK) *n_out = m;
  return s;
}
