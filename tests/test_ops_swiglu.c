/* test_ops_swiglu.c — swiglu(a, b) = silu(a) * b in one op (core/ops_swiglu.c): forward against a naive loop in
 * double (F64, F32), both gradients against the closed form and against autograd through silu and mul, F64
 * gradchecks, one input differentiated at a time, saturated gates (|a| up to 40: no NaN or Inf), a strided input,
 * empty and 0-d tensors, and the errors (shapes, dtypes, NULL). */
#include "check.h"

static double sig(double x) { return 1 / (1 + exp(-x)); }

static m2_tensor *uniform(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, double lo, double hi) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, nd, shape);
  m2_rng_uniform_(r, t, lo, hi);
  return t;
}

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  m2_to_host(t, M2_F64, p);
  return p;
}

/* max |got - want| / max(1, max |want|) */
static double err_vs(const m2_tensor *got, const double *want, int64_t n) {
  double *g = host(got), e = 0, m = 1;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(g[i] - want[i]);
    if (isnan(d)) d = INFINITY;
    if (d > e) e = d;
    if (fabs(want[i]) > m) m = fabs(want[i]);
  }
  free(g);
  return e / m;
}

/* forward and both gradients (L = sum(y * w)) against the closed forms, in dt, with a in [lo, hi) */
static void check_values(m2_rng *r, m2_dtype dt, double lo, double hi, double tol) {
  int64_t sh[3] = {3, 5, 7}, n = 105;
  m2_tensor *a = uniform(r, dt, 3, sh, lo, hi), *b = m2_randn(r, dt, M2_DEV_CPU, 3, sh);
  m2_tensor *w = m2_randn(r, dt, M2_DEV_CPU, 3, sh);
  m2_requires_grad_(a, true);
  m2_requires_grad_(b, true);
  double *x = host(a), *z = host(b), *g = host(w), *y = malloc(sizeof(double) * n), *da = malloc(sizeof(double) * n),
         *db = malloc(sizeof(double) * n);
  for (int64_t i = 0; i < n; i++) {
    double s = sig(x[i]);
    y[i] = x[i] * s * z[i];
    da[i] = g[i] * z[i] * s * (1 + x[i] * (1 - s));
    db[i] = g[i] * x[i] * s;
  }
  m2_tensor *o = m2_swiglu(a, b), *p = o ? m2_mul(o, w) : NULL, *L = p ? m2_sum_all(p) : NULL;
  CHECK(o && o->dtype == dt && m2_same_shape(o, a), "swiglu %s: output dtype and shape", m2_dtype_name(dt));
  CHECK_OK(m2_backward(L, NULL));
  if (o && a->grad && b->grad) {
    double ey = err_vs(o, y, n), ea = err_vs(a->grad, da, n), eb = err_vs(b->grad, db, n);
    CHECK(ey <= tol && ea <= tol && eb <= tol, "swiglu %s, a in [%g, %g): errors y %.3g da %.3g db %.3g",
          m2_dtype_name(dt), lo, hi, ey, ea, eb);
  }
  free(x), free(z), free(g), free(y), free(da), free(db);
  m2_release(a), m2_release(b), m2_release(w), m2_release(o), m2_release(p), m2_release(L);
}

/* the one op agrees with silu(a) * b, values and gradients */
static void check_composite(m2_rng *r) {
  int64_t sh[2] = {4, 9};
  m2_tensor *a = m2_randn(r, M2_F64, M2_DEV_CPU, 2, sh), *b = m2_randn(r, M2_F64, M2_DEV_CPU, 2, sh);
  m2_tensor *a2 = m2_clone_raw(a, M2_F64, M2_DEV_CPU), *b2 = m2_clone_raw(b, M2_F64, M2_DEV_CPU);
  m2_tensor *all[] = {a, b, a2, b2};
  for (int i = 0; i < 4; i++) m2_requires_grad_(all[i], true);
  m2_tensor *y1 = m2_swiglu(a, b), *s = m2_silu(a2), *y2 = s ? m2_mul(s, b2) : NULL;
  m2_tensor *L1 = y1 ? m2_sum_all(y1) : NULL, *L2 = y2 ? m2_sum_all(y2) : NULL;
  CHECK_OK(m2_backward(L1, NULL));
  CHECK_OK(m2_backward(L2, NULL));
  CHECK(y1 && y2 && max_rel_diff(y1, y2) <= 1e-15, "swiglu == silu(a) * b");
  CHECK(a->grad && a2->grad && max_rel_diff(a->grad, a2->grad) <= 1e-14, "da == autograd through silu, mul");
  CHECK(b->grad && b2->grad && max_rel_diff(b->grad, b2->grad) <= 1e-14, "db == autograd through silu, mul");
  m2_tensor *rel[] = {a, b, a2, b2, y1, s, y2, L1, L2};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

static m2_tensor *f_swiglu(m2_tensor *const *in, void *ud) { return m2_swiglu(in[0], in[1]); }

static void check_grads(m2_rng *r) {
  int64_t sh[3] = {2, 3, 4};
  m2_tensor *in[2] = {uniform(r, M2_F64, 3, sh, -4, 4), m2_randn(r, M2_F64, M2_DEV_CPU, 3, sh)};
  double err = 0;
  for (int which = 0; which < 3; which++) { /* both, a only, b only */
    for (int i = 0; i < 2; i++) {
      m2_release(in[i]->grad), in[i]->grad = NULL;
      m2_requires_grad_(in[i], which == 0 || which == i + 1);
    }
    CHECK_OK(m2_gradcheck(f_swiglu, NULL, 2, in, NULL, &err));
    CHECK(err <= 1, "swiglu gradcheck (inputs %d): %g", which, err);
    CHECK((in[0]->grad != NULL) == (which != 2) && (in[1]->grad != NULL) == (which != 1),
          "only the inputs that require grad get one (case %d)", which);
  }
  m2_release(in[0]), m2_release(in[1]);
}

static void check_edges(m2_rng *r) {
  /* a strided input is made contiguous by the dispatcher */
  int64_t sh[2] = {5, 4};
  m2_tensor *x = m2_randn(r, M2_F32, M2_DEV_CPU, 2, sh), *t = m2_transpose(x, 0, 1), *tc = m2_contiguous(t);
  m2_tensor *y1 = m2_swiglu(t, t), *y2 = m2_swiglu(tc, tc);
  CHECK(y1 && y2 && max_rel_diff(y1, y2) == 0, "strided input");
  /* empty and 0-d */
  int64_t s0[2] = {3, 0};
  m2_tensor *e = m2_zeros(M2_F32, M2_DEV_CPU, 2, s0), *ye = m2_swiglu(e, e);
  CHECK(ye && m2_numel(ye) == 0 && ye->shape[0] == 3, "empty tensors");
  m2_tensor *a0 = m2_scalar(M2_F64, M2_DEV_CPU, 2.0), *b0 = m2_scalar(M2_F64, M2_DEV_CPU, -3.0), *y0 = m2_swiglu(a0, b0);
  double v = 0;
  CHECK(y0 && y0->ndim == 0 && m2_item(y0, &v) == M2_OK && fabs(v - 2 * sig(2) * -3) < 1e-15, "0-d: %g", v);
  /* errors */
  int64_t s34[2] = {3, 4}, s43[2] = {4, 3};
  m2_tensor *p = m2_zeros(M2_F32, M2_DEV_CPU, 2, s34), *q = m2_zeros(M2_F32, M2_DEV_CPU, 2, s43);
  m2_tensor *p64 = m2_zeros(M2_F64, M2_DEV_CPU, 2, s34), *pi = m2_zeros(M2_I64, M2_DEV_CPU, 2, s34);
  CHECK_FAILS(m2_swiglu(p, q) == NULL, M2_ERR_SHAPE, "must have the same shape");
  CHECK_FAILS(m2_swiglu(p, p64) == NULL, M2_ERR_DTYPE, "swiglu");
  CHECK_FAILS(m2_swiglu(pi, pi) == NULL, M2_ERR_DTYPE, "swiglu");
  CHECK_FAILS(m2_swiglu(p, NULL) == NULL, M2_ERR_VALUE, "b is NULL");
  m2_tensor *rel[] = {x, t, tc, y1, y2, e, ye, a0, b0, y0, p, q, p64, pi};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

int main(void) {
  m2_rng r = m2_rng_make(17, 0);
  check_values(&r, M2_F64, -3, 3, 1e-15);
  check_values(&r, M2_F32, -3, 3, 1e-6);
  check_values(&r, M2_F64, -40, 40, 1e-15); /* saturated gates on both sides */
  check_values(&r, M2_F32, -40, 40, 1e-6);
  check_composite(&r);
  check_grads(&r);
  check_edges(&r);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_swiglu");
}
