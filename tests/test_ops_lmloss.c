/* test_ops_lmloss.c — linear_cross_entropy(h, W, targets) (core/ops_lmloss.c): the loss of the logits h W^T
 * computed in chunks of rows. Against cross_entropy(linear(h, W)) in F64 for chunk sizes from 1 row to more than
 * all of them (loss, dh, dW; ignored rows, a first chunk all ignored), the backward scaled by the incoming
 * gradient, a forward without recording, one input differentiated, i32 targets, every row ignored (0, and zero
 * gradients), F32, bf16 products (the CPU rounds the same operands as cross_entropy(linear) does), a gradcheck,
 * and the errors (shapes, dtypes, chunk rows, out-of-range targets). */
#include "check.h"

static m2_tensor *leaf(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, nd, shape);
  m2_requires_grad_(t, true);
  return t;
}

/* targets in [0, V) of shape (B, T) and dtype dt; the positions in ign[0..n_ign) set to -100 */
static m2_tensor *targets(m2_rng *r, m2_dtype dt, int64_t B, int64_t T, int64_t V, const int64_t *ign, int n_ign) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, 2, (int64_t[]){B, T});
  for (int64_t i = 0; i < B * T; i++) m2_store(m2_data(t), dt, i, (double)m2_rng_randint(r, V));
  for (int i = 0; i < n_ign; i++) m2_store(m2_data(t), dt, ign[i], -100);
  return t;
}

static void zero_grads(m2_tensor *a, m2_tensor *b) {
  m2_release(a->grad), a->grad = NULL;
  m2_release(b->grad), b->grad = NULL;
}

/* the unfused reference: loss, and dh, dW of g * loss (clones, new refs) */
static double reference(m2_tensor *h, m2_tensor *w, m2_tensor *t, double g, m2_tensor **dh, m2_tensor **dw) {
  zero_grads(h, w);
  m2_tensor *lg = m2_linear(h, w, NULL), *l = lg ? m2_cross_entropy(lg, t, -100) : NULL, *lgs = l ? m2_scale(l, g) : NULL;
  double v = NAN;
  if (l) m2_item(l, &v);
  CHECK_OK(m2_backward(lgs, NULL));
  *dh = h->grad ? m2_clone_raw(h->grad, h->grad->dtype, M2_DEV_CPU) : NULL;
  *dw = w->grad ? m2_clone_raw(w->grad, w->grad->dtype, M2_DEV_CPU) : NULL;
  m2_release(lg), m2_release(l), m2_release(lgs);
  zero_grads(h, w);
  return v;
}

/* loss and gradients of g * linear_cross_entropy(..., chunk) against the reference within tol */
static void against_reference(m2_tensor *h, m2_tensor *w, m2_tensor *t, int64_t chunk, double g, double tol,
                              const char *what) {
  m2_tensor *rdh = NULL, *rdw = NULL;
  double ref = reference(h, w, t, g, &rdh, &rdw), v = NAN;
  m2_tensor *l = m2_linear_cross_entropy(h, w, t, -100, chunk), *lgs = l ? m2_scale(l, g) : NULL;
  if (l) m2_item(l, &v);
  CHECK(l && l->ndim == 0 && l->dtype == h->dtype, "%s, chunk %lld: a 0-d loss of h's dtype", what, (long long)chunk);
  CHECK_CLOSE(v, ref, tol, tol, what);
  CHECK_OK(m2_backward(lgs, NULL));
  CHECK(h->grad && rdh && max_rel_diff(h->grad, rdh) <= tol, "%s, chunk %lld: dh", what, (long long)chunk);
  CHECK(w->grad && rdw && max_rel_diff(w->grad, rdw) <= tol, "%s, chunk %lld: dW", what, (long long)chunk);
  m2_release(l), m2_release(lgs), m2_release(rdh), m2_release(rdw);
  zero_grads(h, w);
}

static m2_tensor *f_lce(m2_tensor *const *in, void *ud) { return m2_linear_cross_entropy(in[0], in[1], ud, -100, 4); }

int main(void) {
  m2_rng r = m2_rng_make(9, 0);
  /* h (2, 13, 6), W (17, 6); the first chunk of 5 rows is all ignored, one more row ignored later */
  int64_t sh[3] = {2, 13, 6}, sw[2] = {17, 6}, ign[6] = {0, 1, 2, 3, 4, 19};
  m2_tensor *h = leaf(&r, M2_F64, 3, sh), *w = leaf(&r, M2_F64, 2, sw), *t = targets(&r, M2_I64, 2, 13, 17, ign, 6);
  const int64_t chunks[6] = {0, 1, 4, 5, 26, 100};
  for (int i = 0; i < 6; i++) against_reference(h, w, t, chunks[i], 1.0, 1e-12, "f64");
  /* the backward scales the gradients the forward kept by the incoming gradient */
  against_reference(h, w, t, 4, 3.0, 1e-12, "f64, 3 * loss");
  against_reference(h, w, t, 4, -0.25, 1e-12, "f64, -0.25 * loss");

  /* without recording: the same loss, nothing kept */
  m2_tensor *rdh = NULL, *rdw = NULL;
  double ref = reference(h, w, t, 1.0, &rdh, &rdw), v = NAN;
  m2_no_grad_push();
  m2_tensor *l = m2_linear_cross_entropy(h, w, t, -100, 4);
  m2_no_grad_pop();
  CHECK(l && !l->requires_grad && !l->grad_fn && m2_item(l, &v) == M2_OK, "no-grad forward");
  CHECK_CLOSE(v, ref, 1e-12, 1e-12, "loss without gradients");
  m2_release(l);
  /* only h differentiated (W detached) */
  m2_tensor *wd = m2_detach(w);
  l = m2_linear_cross_entropy(h, wd, t, -100, 4);
  CHECK_OK(m2_backward(l, NULL));
  CHECK(h->grad && max_rel_diff(h->grad, rdh) <= 1e-12 && !wd->grad && !w->grad, "dh without dW");
  m2_release(l), m2_release(wd), m2_release(rdh), m2_release(rdw);
  zero_grads(h, w);
  /* i32 targets */
  m2_tensor *t32 = m2_clone_raw(t, M2_I32, M2_DEV_CPU);
  against_reference(h, w, t32, 7, 1.0, 1e-12, "i32 targets");
  /* every row ignored: 0, and zero gradients */
  m2_tensor *all = m2_full(M2_I64, M2_DEV_CPU, 2, (int64_t[]){2, 13}, -100);
  l = m2_linear_cross_entropy(h, w, all, -100, 4);
  CHECK(l && m2_item(l, &v) == M2_OK && v == 0, "every row ignored: loss %g", v);
  CHECK_OK(m2_backward(l, NULL));
  CHECK(h->grad && w->grad, "every row ignored: gradients exist");
  if (h->grad && w->grad) {
    m2_tensor *z1 = m2_zeros_like(h->grad), *z2 = m2_zeros_like(w->grad);
    CHECK(max_rel_diff(h->grad, z1) == 0 && max_rel_diff(w->grad, z2) == 0, "every row ignored: zero gradients");
    m2_release(z1), m2_release(z2);
  }
  m2_release(l);
  zero_grads(h, w);

  /* F32, and F32 with bf16 products: the fused loss rounds the same operands as linear + cross_entropy */
  m2_tensor *h32 = m2_clone_raw(h, M2_F32, M2_DEV_CPU), *w32 = m2_clone_raw(w, M2_F32, M2_DEV_CPU);
  m2_requires_grad_(h32, true);
  m2_requires_grad_(w32, true);
  against_reference(h32, w32, t, 5, 1.0, 2e-6, "f32");
  /* a chunk of INT64_MAX rows is one chunk: rows + chunk - 1 overflowed int64 (UBSan; found by tests/fuzz/fuzz_lua.c) */
  against_reference(h32, w32, t, INT64_MAX, 1.0, 2e-6, "f32, chunk INT64_MAX");
  double v32 = NAN, v16 = NAN;
  m2_no_grad_push();
  l = m2_linear_cross_entropy(h32, w32, t, -100, 5);
  if (l) m2_item(l, &v32);
  m2_release(l);
  m2_set_matmul_precision(M2_MM_BF16);
  l = m2_linear_cross_entropy(h32, w32, t, -100, 5);
  if (l) m2_item(l, &v16);
  m2_release(l);
  m2_no_grad_pop();
  CHECK(fabs(v16 - v32) > 1e-5 * fabs(v32), "bf16 products change the loss (%.9g vs %.9g)", v16, v32);
  against_reference(h32, w32, t, 5, 1.0, 2e-6, "f32, bf16 products");
  m2_set_matmul_precision(M2_MM_F32);

  /* gradcheck (a small case; one ignored row) */
  int64_t sh2[3] = {2, 5, 3}, sw2[2] = {7, 3}, ign2[1] = {1};
  m2_tensor *gin[2] = {leaf(&r, M2_F64, 3, sh2), leaf(&r, M2_F64, 2, sw2)};
  m2_tensor *ts = targets(&r, M2_I64, 2, 5, 7, ign2, 1);
  double err = 0;
  CHECK_OK(m2_gradcheck(f_lce, ts, 2, gin, NULL, &err));
  CHECK(err <= 1, "linear_cross_entropy gradcheck %g", err);

  /* errors */
  m2_tensor *wbad = m2_zeros(M2_F64, M2_DEV_CPU, 2, (int64_t[]){17, 5});
  m2_tensor *tbad = m2_zeros(M2_I64, M2_DEV_CPU, 2, (int64_t[]){2, 12});
  m2_tensor *trange = m2_clone_raw(t, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(trange))[14] = 40;
  CHECK_FAILS(m2_linear_cross_entropy(h, wbad, t, -100, 0) == NULL, M2_ERR_SHAPE, "must be (..., d), (V, d)");
  CHECK_FAILS(m2_linear_cross_entropy(h, w, tbad, -100, 0) == NULL, M2_ERR_SHAPE, "must be");
  CHECK_FAILS(m2_linear_cross_entropy(h, w, t, -100, -1) == NULL, M2_ERR_VALUE, "chunk rows must be >= 0");
  CHECK_FAILS(m2_linear_cross_entropy(h, w, h, -100, 0) == NULL, M2_ERR_DTYPE, "targets must be an integer tensor");
  CHECK_FAILS(m2_linear_cross_entropy(h, w32, t, -100, 0) == NULL, M2_ERR_DTYPE, "linear_cross_entropy");
  CHECK_FAILS(m2_linear_cross_entropy(h, NULL, t, -100, 0) == NULL, M2_ERR_VALUE, "W is NULL");
  m2_clear_error();
  CHECK(m2_linear_cross_entropy(h, w, trange, -100, 4) == NULL && strstr(m2_errmsg(), "out of range"),
        "an out-of-range target fails: %s", m2_errmsg());
  /* ... naming its position in the whole target tensor, not in its chunk of 4 rows (14 = chunk 3, row 2) */
  CHECK(strstr(m2_errmsg(), "at flat position 14") != NULL, "the position in the whole tensor: %s", m2_errmsg());

  m2_tensor *rel[] = {h, w, t, t32, all, h32, w32, gin[0], gin[1], ts, wbad, tbad, trange};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_lmloss");
}
