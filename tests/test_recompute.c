/* test_recompute.c — the recompute node and m2_checkpoint from C (core/recompute.h): the context dropped exactly
 * once whatever happens (no grad, an error, after the backward, released without one), grad mode on inside the
 * node's backward and off again after, m2_checkpoint bit for bit against the plain computation (a parameter that is
 * not an input, a nested checkpoint, several outputs), under no_grad a plain call, profiling of the ops inside the
 * node's backward, m2_backward_many, and no leaked nodes or tensors. (The float64 gradient check of a checkpoint is the
 * "recompute" case of tests/op_cases.c.) */
#include "check.h"

typedef struct {
  int drops, calls;
  bool grad_on_inside;
} probe;

static void probe_drop(void *p) { ((probe *)p)->drops++; }

/* y = 3 x: din = 3 dout */
static m2_status triple_bwd(void *ctx, int n_in, m2_tensor *const *in, const bool *needs_din, int n_out,
                            m2_tensor *const *dout, m2_tensor **din) {
  probe *p = ctx;
  p->calls++;
  p->grad_on_inside = m2_grad_enabled();
  if (needs_din[0]) din[0] = m2_scale(dout[0], 3);
  return M2_OK;
}

static void record_cases(m2_rng *r) {
  int64_t sh[1] = {4};
  m2_tensor *x = m2_randn(r, M2_F64, M2_DEV_CPU, 1, sh);
  m2_requires_grad_(x, true);
  m2_tensor *y3 = NULL;
  m2_no_grad_push();
  y3 = m2_scale(x, 3);
  m2_no_grad_pop();

  /* grad mode off: no node, the caller's output itself, ctx dropped at once */
  probe p = {0};
  m2_tensor *out = NULL;
  m2_no_grad_push();
  CHECK_OK(m2_recompute_record(1, &x, 1, &y3, triple_bwd, &p, probe_drop, &out));
  m2_no_grad_pop();
  CHECK(out == y3 && !out->grad_fn && p.drops == 1, "no grad: plain output, dropped once (%d)", p.drops);
  m2_release(out);

  /* an error: dropped once, nothing recorded */
  p = (probe){0};
  const long n0 = m2_live_nodes();
  CHECK_FAILS(m2_recompute_record(1, &x, 0, &y3, triple_bwd, &p, probe_drop, &out) != M2_OK, M2_ERR_VALUE,
              "outputs");
  CHECK(p.drops == 1 && m2_live_nodes() == n0, "an error: dropped once (%d), no node", p.drops);

  /* recorded, backward: the callback runs with grad on, ctx dropped after it and never again */
  p = (probe){0};
  CHECK_OK(m2_recompute_record(1, &x, 1, &y3, triple_bwd, &p, probe_drop, &out));
  CHECK(out != y3 && out->grad_fn && out->requires_grad && m2_live_nodes() == n0 + 1, "recorded");
  CHECK(!y3->grad_fn, "the caller's output keeps no history (the node's output is an alias)");
  m2_tensor *L = m2_sum_all(out);
  CHECK_OK(m2_backward(L, NULL));
  CHECK(p.calls == 1 && p.grad_on_inside, "the callback ran once (%d) with grad on", p.calls);
  CHECK(m2_grad_enabled(), "grad on after the backward");
  CHECK(p.drops == 1, "dropped after the backward (%d)", p.drops);
  double g;
  m2_get(x->grad, (int64_t[]){2}, &g);
  CHECK_CLOSE(g, 3, 0, 0, "the callback's gradient routed to the input");
  m2_release(L);
  m2_release(out);
  CHECK(p.drops == 1 && m2_live_nodes() == n0, "not dropped again at release (%d), node freed", p.drops);

  /* recorded, released without a backward: dropped once */
  p = (probe){0};
  CHECK_OK(m2_recompute_record(1, &x, 1, &y3, triple_bwd, &p, probe_drop, &out));
  m2_release(out);
  CHECK(p.drops == 1 && p.calls == 0 && m2_live_nodes() == n0, "released unused: dropped once (%d)", p.drops);

  /* a backward with no input needing a gradient still runs (the callback may have parameters) */
  m2_tensor *c = m2_detach(x);
  p = (probe){0};
  CHECK_OK(m2_recompute_record(1, &c, 1, &y3, triple_bwd, &p, probe_drop, &out));
  CHECK(out->requires_grad, "a node without a grad input still records");
  L = m2_sum_all(out);
  CHECK_OK(m2_backward(L, NULL));
  CHECK(p.calls == 1 && p.drops == 1, "its backward ran (%d) and dropped (%d)", p.calls, p.drops);
  m2_release(L);
  m2_release(out);
  m2_release(c);
  m2_release(y3);
  m2_release(x);
}

/* f(x) = (tanh(x W) * x, sum(x W)) with the parameter W (ctx) not an input; optionally the tanh part through a
 * nested checkpoint */
typedef struct {
  m2_tensor *w;
  bool nested;
  int runs;
} fctx;

static m2_status inner(void *ctx, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs) {
  fctx *f = ctx;
  m2_tensor *xw = m2_matmul(in[0], f->w, false, false);
  outs[0] = xw ? m2_tanh(xw) : NULL;
  m2_release(xw);
  *n_out = 1;
  return outs[0] ? M2_OK : m2_errcode();
}

static m2_status fn(void *ctx, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs) {
  fctx *f = ctx;
  f->runs++;
  m2_tensor *t = NULL;
  int k = 0;
  m2_status s = f->nested ? m2_checkpoint(inner, f, NULL, 1, in, &k, &t) : inner(f, 1, in, &k, &t);
  if (s != M2_OK) return s;
  outs[0] = m2_mul(t, in[0]);
  m2_tensor *xw = m2_matmul(in[0], f->w, false, false);
  outs[1] = xw ? m2_sum_all(xw) : NULL;
  m2_release(xw);
  m2_release(t);
  *n_out = 2;
  return outs[0] && outs[1] ? M2_OK : m2_errcode();
}

/* the loss sum(o0^2) + 2 o1 and the gradients of x and W; mode 0 plain, 1 checkpoint, 2 nested checkpoints */
static void grads(m2_tensor *x0, m2_tensor *w, int mode, m2_tensor **gx, m2_tensor **gw, int *runs) {
  m2_tensor *x = m2_clone_raw(x0, x0->dtype, x0->device);
  m2_requires_grad_(x, true);
  m2_release(w->grad);
  w->grad = NULL;
  fctx f = {w, mode == 2, 0};
  m2_tensor *o[2] = {0};
  int n = 0;
  if (mode == 0) CHECK_OK(fn(&f, 1, &x, &n, o));
  else CHECK_OK(m2_checkpoint(fn, &f, NULL, 1, &x, &n, o));
  CHECK(n == 2, "two outputs (%d)", n);
  m2_tensor *sq = m2_mul(o[0], o[0]), *s0 = m2_sum_all(sq), *s1 = m2_scale(o[1], 2), *L = m2_add(s0, s1);
  CHECK_OK(m2_backward(L, NULL));
  *runs = f.runs;
  *gx = x->grad;
  x->grad = NULL;
  *gw = w->grad;
  w->grad = NULL;
  m2_tensor *all[] = {x, o[0], o[1], sq, s0, s1, L};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

static void checkpoint_cases(m2_rng *r) {
  m2_tensor *x0 = m2_randn(r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){3, 5});
  m2_tensor *w = m2_randn(r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){5, 5});
  m2_requires_grad_(w, true);
  m2_tensor *gx[3], *gw[3];
  int runs[3];
  for (int m = 0; m < 3; m++) grads(x0, w, m, &gx[m], &gw[m], &runs[m]);
  CHECK(runs[0] == 1 && runs[1] == 2 && runs[2] == 2, "f ran once plain, twice checkpointed (%d %d %d)", runs[0],
        runs[1], runs[2]);
  for (int m = 1; m < 3; m++) {
    CHECK(gx[m] && max_rel_diff(gx[m], gx[0]) == 0, "mode %d: the input's gradient bit for bit", m);
    CHECK(gw[m] && max_rel_diff(gw[m], gw[0]) == 0, "mode %d: the parameter's gradient bit for bit", m);
  }
  for (int m = 0; m < 3; m++) m2_release(gx[m]), m2_release(gw[m]);

  /* under no_grad: a plain call, no node */
  const long n0 = m2_live_nodes();
  fctx f = {w, true, 0};
  m2_tensor *o[2] = {0};
  int n = 0;
  m2_no_grad_push();
  CHECK_OK(m2_checkpoint(fn, &f, NULL, 1, &x0, &n, o));
  m2_no_grad_pop();
  CHECK(n == 2 && !o[0]->requires_grad && m2_live_nodes() == n0 && f.runs == 1, "no_grad: one plain call");
  m2_release(o[0]);
  m2_release(o[1]);

  /* profiling: the node itself is not a row; the ops of its backward are, each in its own (tanh: the forward, then
   * the recomputed forward and the backward) */
  m2_profile_reset();
  m2_profile_enable(true);
  int rr;
  grads(x0, w, 1, &gx[0], &gw[0], &rr);
  m2_profile_enable(false);
  m2_profile_row rows[128];
  int nr = m2_profile_rows(rows, 128);
  bool node_row = false;
  long tanh_f = 0, tanh_b = 0;
  for (int i = 0; i < nr && i < 128; i++) {
    node_row |= strcmp(rows[i].op, "recompute") == 0;
    if (strcmp(rows[i].op, "tanh") == 0) tanh_f = rows[i].fwd_calls, tanh_b = rows[i].bwd_calls;
  }
  CHECK(!node_row, "profile: no row for the node itself");
  CHECK(tanh_f == 2 && tanh_b == 1, "profile: tanh forward twice (%ld), backward once (%ld)", tanh_f, tanh_b);
  m2_profile_reset();
  m2_release(gx[0]);
  m2_release(gw[0]);

  /* m2_backward_many: two roots at once = the sum of the two backwards */
  m2_tensor *a = m2_matmul(x0, w, false, false), *b = m2_tanh(a);
  m2_tensor *ga = m2_randn(r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){3, 5}), *gb = m2_randn(r, M2_F32, M2_DEV_CPU, 2,
                                                                                       (int64_t[]){3, 5});
  m2_tensor *roots[2] = {a, b}, *gs[2] = {ga, gb};
  CHECK_OK(m2_backward_many(2, roots, gs));
  m2_tensor *many = w->grad;
  w->grad = NULL;
  m2_release(a);
  m2_release(b);
  a = m2_matmul(x0, w, false, false);
  b = m2_tanh(a);
  /* the same in one graph by hand: d/da = ga + tanh'(a) gb */
  m2_tensor *p = m2_mul(a, ga), *q = m2_mul(b, gb), *sp = m2_sum_all(p), *sq = m2_sum_all(q), *L = m2_add(sp, sq);
  CHECK_OK(m2_backward(L, NULL));
  CHECK(max_rel_diff(many, w->grad) == 0, "backward_many: the gradient of sum(a ga) + sum(b gb)");
  m2_tensor *all[] = {a, b, ga, gb, many, p, q, sp, sq, L, x0, w};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

int main(void) {
  m2_rng r = m2_rng_make(9, 0);
  record_cases(&r);
  checkpoint_cases(&r);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_recompute");
}
