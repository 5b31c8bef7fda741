/* test_ops_view.c — the view and conversion ops (core/ops_view.c): contiguous, reshape, narrow, permute (and
 * transpose), expand, to_dtype, to_device. Values against naive index arithmetic, which ops share storage and
 * which copy, gradients (F64 gradchecks, and the backward of each view by hand), edge cases (empty and 0-d
 * tensors, -1 sizes, negative dims) and error messages. */
#include "check.h"

static m2_tensor *arange(m2_dtype dt, int nd, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, nd, shape);
  int64_t n = m2_numel(t);
  for (int64_t i = 0; i < n; i++) m2_store(m2_data(t), dt, i, (double)i);
  return t;
}

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  m2_to_host(t, M2_F64, p);
  return p;
}

/* ---- contiguous, reshape, narrow (the cases that used to live in test_tensor.c, then more) ---- */
static void test_small_views(void) {
  int64_t sh[2] = {2, 3};
  float data[6] = {1, 2, 3, 4, 5, 6}, out[6];
  m2_tensor *a = m2_from_data(M2_F32, M2_DEV_CPU, 2, sh, data);
  double v;

  /* transpose view shares storage; contiguous copies in the transposed order */
  m2_tensor *t = m2_transpose(a, 0, 1);
  CHECK(t && t->shape[0] == 3 && t->shape[1] == 2 && !m2_is_contiguous(t), "transpose view");
  CHECK(t && t->storage == a->storage, "transpose shares storage");
  int64_t i2[2] = {2, 1};
  m2_get(t, i2, &v);
  CHECK_CLOSE(v, 6, 0, 0, "t[2][1]");
  m2_tensor *tc = m2_contiguous(t);
  m2_to_host(tc, M2_F32, out);
  float want[6] = {1, 4, 2, 5, 3, 6};
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], want[i], 0, 0, "contiguous(transpose)");
  CHECK(tc && m2_is_contiguous(tc) && tc->storage != a->storage, "contiguous of a view copies");
  m2_tensor *same = m2_contiguous(a);
  CHECK(same == a, "contiguous of a contiguous tensor is the tensor itself");
  m2_release(same);

  /* narrow */
  m2_tensor *n = m2_narrow(a, 1, 1, 2);
  int64_t i3[2] = {1, 0};
  m2_get(n, i3, &v);
  CHECK_CLOSE(v, 5, 0, 0, "narrow[1][0]");
  CHECK(n && n->storage == a->storage && n->offset == 1, "narrow is a view at offset 1");
  m2_tensor *nneg = m2_narrow(a, -1, 2, 1);
  CHECK(nneg && nneg->shape[0] == 2 && nneg->shape[1] == 1, "narrow with a negative dim");
  m2_tensor *nempty = m2_narrow(a, 0, 2, 0);
  CHECK(nempty && m2_numel(nempty) == 0, "narrow to an empty range");
  CHECK_FAILS(m2_narrow(a, 1, 2, 2) == NULL, M2_ERR_INDEX, "out of bounds");
  CHECK_FAILS(m2_narrow(a, 1, -1, 1) == NULL, M2_ERR_INDEX, "out of bounds");
  CHECK_FAILS(m2_narrow(a, 5, 0, 1) == NULL, M2_ERR_INDEX, "dim 5");

  /* reshape with -1, and bad reshapes */
  int64_t rs[2] = {-1, 2};
  m2_tensor *r = m2_reshape(a, 2, rs);
  CHECK(r && r->shape[0] == 3 && r->shape[1] == 2, "reshape -1");
  CHECK(r && r->storage == a->storage, "reshape of a contiguous tensor is a view");
  int64_t bad[2] = {4, 2}, two[2] = {-1, -1}, neg[2] = {-2, 3};
  CHECK_FAILS(m2_reshape(a, 2, bad) == NULL, M2_ERR_SHAPE, "cannot view");
  CHECK_FAILS(m2_reshape(a, 2, two) == NULL, M2_ERR_SHAPE, "only one dim may be -1");
  CHECK_FAILS(m2_reshape(a, 2, neg) == NULL, M2_ERR_SHAPE, "negative size -2");
  CHECK_FAILS(m2_reshape(a, 7, sh) == NULL, M2_ERR_SHAPE, "at most");

  /* reshape of a non-contiguous view copies */
  m2_tensor *r2 = m2_reshape(t, 1, (int64_t[]){6});
  m2_to_host(r2, M2_F32, out);
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], want[i], 0, 0, "reshape(transpose)");
  CHECK(r2 && r2->storage != a->storage, "reshape of a strided view copies");
  /* to 0-d and back */
  m2_tensor *one = m2_narrow(r2, 0, 4, 1), *s0 = one ? m2_reshape(one, 0, NULL) : NULL;
  CHECK(s0 && s0->ndim == 0 && m2_item(s0, &v) == M2_OK && v == 3, "reshape to 0-d");

  m2_tensor *all[] = {a, t, tc, n, nneg, nempty, r, r2, one, s0};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

/* ---- permute against index arithmetic ---- */
static void test_permute(void) {
  int64_t sh[4] = {2, 3, 4, 5};
  m2_tensor *x = arange(M2_F64, 4, sh);
  int perm[4] = {2, 0, 3, 1};
  m2_tensor *p = m2_permute(x, perm), *pc = p ? m2_contiguous(p) : NULL;
  CHECK(p && p->storage == x->storage, "permute is a view");
  CHECK(p && p->shape[0] == 4 && p->shape[1] == 2 && p->shape[2] == 5 && p->shape[3] == 3, "permuted shape");
  if (pc) {
    double *y = host(pc);
    int64_t bad = 0, i = 0;
    for (int64_t c = 0; c < 4; c++)
      for (int64_t a = 0; a < 2; a++)
        for (int64_t d = 0; d < 5; d++)
          for (int64_t b = 0; b < 3; b++) bad += y[i++] != (double)(((a * 3 + b) * 4 + c) * 5 + d);
    CHECK(bad == 0, "permute (2, 0, 3, 1): %lld elements wrong", (long long)bad);
    free(y);
  }
  /* negative entries count from the end; transpose with negative dims */
  int pneg[4] = {-2, 0, -1, 1};
  m2_tensor *pn = m2_permute(x, pneg);
  CHECK(pn && max_rel_diff(pn, p) == 0, "negative permutation entries");
  m2_tensor *t = m2_transpose(x, -1, 0);
  CHECK(t && t->shape[0] == 5 && t->shape[3] == 2, "transpose(-1, 0)");
  int dup[4] = {0, 1, 1, 3}, out[4] = {0, 1, 2, 4};
  CHECK_FAILS(m2_permute(x, dup) == NULL, M2_ERR_INDEX, "not a permutation");
  CHECK_FAILS(m2_permute(x, out) == NULL, M2_ERR_INDEX, "not a permutation");
  CHECK_FAILS(m2_transpose(x, 0, 4) == NULL, M2_ERR_INDEX, "transpose");
  m2_tensor *all[] = {x, p, pc, pn, t};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

/* ---- expand ---- */
/* target shapes whose element count overflows are refused, naming the shape (issue 17): the wrapped count used to
 * pass the check (0 elements viewed as (2^32, 2^32), then written out of bounds; an expand summed to 0) */
static void test_view_overflow(void) {
  const int64_t G = (int64_t)1 << 32;
  int64_t zero[1] = {0}, one[2] = {1, 1}, sq[2] = {G, G}, inf[3] = {-1, G, G};
  m2_tensor *z = m2_zeros(M2_F32, M2_DEV_CPU, 1, zero), *o = m2_full(M2_F32, M2_DEV_CPU, 2, one, 1.0);
  CHECK_FAILS(m2_reshape(z, 2, sq) == NULL, M2_ERR_SHAPE, "reshape: shape (4294967296, 4294967296) is too large");
  CHECK_FAILS(m2_reshape(z, 3, inf) == NULL, M2_ERR_SHAPE, "reshape: shape (-1, 4294967296, 4294967296) is too");
  CHECK_FAILS(m2_expand(o, 2, sq) == NULL, M2_ERR_SHAPE, "expand: shape (4294967296, 4294967296) is too large");
  int64_t neg[2] = {-3, 1};
  CHECK_FAILS(m2_expand(o, 2, neg) == NULL, M2_ERR_SHAPE, "expand: negative size");
  m2_release(z), m2_release(o);
}

static void test_expand(void) {
  int64_t sh[2] = {2, 3};
  m2_tensor *a = arange(M2_F32, 2, sh);
  m2_tensor *row = m2_narrow(a, 0, 1, 1);
  m2_tensor *e = m2_expand(row, 3, (int64_t[]){4, 2, 3});
  CHECK(e && e->shape[0] == 4 && e->stride[0] == 0 && e->stride[1] == 0, "expand strides");
  if (e) {
    m2_tensor *ec = m2_contiguous(e);
    double *y = host(ec);
    int64_t bad = 0;
    for (int64_t i = 0; i < 24; i++) bad += y[i] != 3 + i % 3;
    CHECK(bad == 0, "expanded values: %lld wrong", (long long)bad);
    free(y);
    m2_release(ec);
  }
  m2_tensor *keep = m2_expand(a, 2, (int64_t[]){-1, 3});
  CHECK(keep && keep->stride[0] == 3 && keep->stride[1] == 1, "-1 keeps a dim");
  CHECK_FAILS(m2_expand(a, 2, (int64_t[]){4, 3}) == NULL, M2_ERR_SHAPE, "cannot be expanded");
  CHECK_FAILS(m2_expand(a, 1, (int64_t[]){6}) == NULL, M2_ERR_SHAPE, "cannot expand 2 dims to 1");
  m2_tensor *all[] = {a, row, e, keep};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

/* ---- to_dtype and to_device ---- */
static void test_conversions(void) {
  int64_t sh[2] = {2, 3};
  float data[6] = {1, 2, 3, 4, 5, 6}, out[6];
  m2_tensor *a = m2_from_data(M2_F32, M2_DEV_CPU, 2, sh, data);
  /* bf16 round trip and dtype conversion */
  m2_tensor *b = m2_to_dtype(a, M2_BF16);
  m2_tensor *back = m2_to_dtype(b, M2_F32);
  m2_to_host(back, M2_F32, out);
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], data[i], 0, 0, "bf16 round trip of small ints");
  CHECK(b && b->dtype == M2_BF16 && back && back->dtype == M2_F32, "dtypes");
  /* bf16 rounds to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 */
  int64_t s1[1] = {2};
  float h[2] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256};
  m2_tensor *hv = m2_from_data(M2_F32, M2_DEV_CPU, 1, s1, h), *hb = m2_to_dtype(hv, M2_BF16);
  double v0 = 0, v1 = 0;
  m2_get(hb, (int64_t[]){0}, &v0);
  m2_get(hb, (int64_t[]){1}, &v1);
  CHECK(v0 == 1.0 && v1 == 1.0 + 4.0 / 256, "bf16 rounding to nearest even: %.10g %.10g", v0, v1);
  /* the same dtype is the tensor itself; integer conversion truncates like m2_store */
  m2_tensor *same = m2_to_dtype(a, M2_F32);
  CHECK(same == a, "to_dtype to its own dtype is the tensor itself");
  m2_tensor *i64 = m2_to_dtype(a, M2_I64);
  CHECK(i64 && i64->dtype == M2_I64 && !i64->requires_grad, "to i64");
  /* to_device: the same device is the tensor itself; a device that does not exist fails */
  m2_tensor *d = m2_to_device(a, M2_DEV_CPU);
  CHECK(d == a, "to_device to its own device is the tensor itself");
  m2_device nowhere = {M2_CUDA, 999};
  CHECK_FAILS(m2_to_device(a, nowhere) == NULL, M2_ERR_DEVICE, "");
  m2_tensor *all[] = {a, b, back, hv, hb, same, i64, d};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

/* ---- gradients: each view's backward by hand, then F64 gradchecks of chains of views ---- */
static m2_tensor *f_chain(m2_tensor *const *in, void *ud) {
  /* permute -> narrow -> reshape (copies: strided) -> expand -> contiguous */
  int perm[3] = {2, 0, 1};
  m2_tensor *p = m2_permute(in[0], perm), *n = p ? m2_narrow(p, 0, 1, 3) : NULL;
  m2_tensor *r = n ? m2_reshape(n, 2, (int64_t[]){-1, 3}) : NULL;
  m2_tensor *e = r ? m2_expand(r, 3, (int64_t[]){2, -1, 3}) : NULL, *c = e ? m2_contiguous(e) : NULL;
  m2_release(p), m2_release(n), m2_release(r), m2_release(e);
  return c;
}
static m2_tensor *f_dtype(m2_tensor *const *in, void *ud) {
  m2_tensor *f = m2_to_dtype(in[0], M2_F32), *d = f ? m2_to_dtype(f, M2_F64) : NULL;
  m2_release(f);
  return d;
}

static void test_grads(void) {
  m2_rng r = m2_rng_make(21, 0);
  int64_t sh[3] = {2, 3, 4};
  m2_tensor *x = m2_randn(&r, M2_F64, M2_DEV_CPU, 3, sh);
  m2_requires_grad_(x, true);
  /* narrow: the gradient is dout in the window, 0 elsewhere */
  m2_tensor *n = m2_narrow(x, 2, 1, 2), *L = n ? m2_sum_all(n) : NULL;
  CHECK_OK(m2_backward(L, NULL));
  if (x->grad) {
    double *g = host(x->grad);
    int64_t bad = 0;
    for (int64_t i = 0; i < 24; i++) bad += g[i] != ((i % 4 == 1 || i % 4 == 2) ? 1.0 : 0.0);
    CHECK(bad == 0, "narrow backward: %lld wrong", (long long)bad);
    free(g);
  }
  m2_release(n), m2_release(L);
  /* expand: the gradient sums over the broadcast dims */
  m2_release(x->grad), x->grad = NULL;
  m2_tensor *row = m2_narrow(x, 0, 0, 1), *e = row ? m2_expand(row, 4, (int64_t[]){5, 2, 3, 4}) : NULL;
  L = e ? m2_sum_all(e) : NULL;
  CHECK_OK(m2_backward(L, NULL));
  if (x->grad) {
    double *g = host(x->grad);
    int64_t bad = 0;
    for (int64_t i = 0; i < 24; i++) bad += g[i] != (i < 12 ? 10.0 : 0.0);
    CHECK(bad == 0, "expand backward: %lld wrong", (long long)bad);
    free(g);
  }
  m2_release(row), m2_release(e), m2_release(L);
  /* gradchecks */
  double err = 0;
  m2_release(x->grad), x->grad = NULL;
  CHECK_OK(m2_gradcheck(f_chain, NULL, 1, &x, NULL, &err));
  CHECK(err <= 1, "view chain gradcheck %g", err);
  /* through f32: the step must dwarf f32 rounding */
  m2_gradcheck_opts o = {.eps = 1e-2, .atol = 1e-5, .rtol = 1e-4};
  CHECK_OK(m2_gradcheck(f_dtype, NULL, 1, &x, &o, &err));
  CHECK(err <= 1, "to_dtype gradcheck %g", err);
  /* the gradient of a to_dtype comes back in the input's dtype */
  m2_release(x->grad), x->grad = NULL;
  m2_tensor *f = m2_to_dtype(x, M2_F32);
  L = f ? m2_sum_all(f) : NULL;
  CHECK_OK(m2_backward(L, NULL));
  CHECK(x->grad && x->grad->dtype == M2_F64, "to_dtype backward gives an F64 gradient");
  m2_release(f), m2_release(L), m2_release(x);
}

int main(void) {
  test_small_views();
  test_permute();
  test_expand();
  test_view_overflow();
  test_conversions();
  test_grads();
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_view");
}
