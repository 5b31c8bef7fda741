/* test_ops_nn.c — embedding, cross_entropy, rmsnorm, l2norm: forward against naive loops written
 * here, F64 gradient checks, f32 backward against f64, and error cases. */
#include "check.h"

static m2_tensor *randn(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, bool grad) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, nd, shape);
  if (grad) m2_requires_grad_(t, true);
  return t;
}
static m2_tensor *ints(m2_dtype dt, int nd, const int64_t *shape, const int64_t *v) {
  m2_tensor *t = m2_zeros(dt, M2_DEV_CPU, nd, shape);
  for (int64_t i = 0; i < m2_numel(t); i++) {
    if (dt == M2_I64) ((int64_t *)m2_data(t))[i] = v[i];
    else ((int32_t *)m2_data(t))[i] = (int32_t)v[i];
  }
  return t;
}
static double *host(const m2_tensor *t) {
  double *p = malloc(sizeof(double) * (size_t)(m2_numel(t) ? m2_numel(t) : 1));
  m2_to_host(t, M2_F64, p);
  return p;
}
static double item(m2_tensor *t) {
  double v = NAN;
  if (t) m2_item(t, &v);
  return v;
}

/* ---- gradcheck closures: ud carries the non-differentiable arguments ---- */
static m2_tensor *f_embedding(m2_tensor *const *in, void *ud) { return m2_embedding(in[0], (m2_tensor *)ud); }
typedef struct { m2_tensor *t; int64_t ign; } ce_ud;
static m2_tensor *f_ce(m2_tensor *const *in, void *ud) {
  ce_ud *u = ud;
  return m2_cross_entropy(in[0], u->t, u->ign);
}
static m2_tensor *f_rms(m2_tensor *const *in, void *ud) { return m2_rmsnorm(in[0], in[1], 1e-5); }
static m2_tensor *f_rms_nw(m2_tensor *const *in, void *ud) { return m2_rmsnorm(in[0], NULL, 1e-5); }
static m2_tensor *f_l2(m2_tensor *const *in, void *ud) { return m2_l2norm(in[0], 1e-6); }

/* naive cross-entropy: mean over kept rows of logsumexp - picked logit */
static double ref_ce(const m2_tensor *x, const int64_t *t, int64_t rows, int64_t C, int64_t ign) {
  double *v = host(x), tot = 0;
  int64_t kept = 0;
  for (int64_t r = 0; r < rows; r++) {
    if (t[r] == ign) continue;
    double mx = v[r * C];
    for (int64_t j = 1; j < C; j++) mx = fmax(mx, v[r * C + j]);
    double s = 0;
    for (int64_t j = 0; j < C; j++) s += exp(v[r * C + j] - mx);
    tot += mx + log(s) - v[r * C + t[r]];
    kept++;
  }
  free(v);
  return kept ? tot / (double)kept : 0;
}

/* naive norm: rows of x (d) scaled by 1/sqrt(sum x^2 * inv + eps) and by w */
static m2_tensor *ref_norm(const m2_tensor *x, const m2_tensor *w, double eps, bool mean) {
  int64_t d = x->shape[x->ndim - 1], rows = m2_numel(x) / d;
  double *v = host(x), *wv = w ? host(w) : NULL;
  m2_tensor *y = m2_zeros(M2_F64, M2_DEV_CPU, x->ndim, x->shape);
  double *py = m2_data(y);
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t j = 0; j < d; j++) ss += v[r * d + j] * v[r * d + j];
    double den = sqrt((mean ? ss / (double)d : ss) + eps);
    for (int64_t j = 0; j < d; j++) py[r * d + j] = v[r * d + j] / den * (wv ? wv[j] : 1.0);
  }
  free(v);
  free(wv);
  return y;
}

static void test_embedding(m2_rng *r) {
  int64_t sw[2] = {7, 4}, sid[2] = {2, 3};
  int64_t idv[6] = {3, 0, 6, 3, 3, 1}; /* repeats: the backward must add */
  for (int k = 0; k < 4; k++) {
    m2_dtype wdt = k & 1 ? M2_F64 : M2_F32, idt = k & 2 ? M2_I64 : M2_I32;
    m2_tensor *w = randn(r, wdt, 2, sw, false), *ids = ints(idt, 2, sid, idv);
    m2_tensor *y = m2_embedding(w, ids);
    CHECK(y && y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 3 && y->shape[2] == 4 && y->dtype == wdt,
          "embedding shape (%s weight, %s ids)", m2_dtype_name(wdt), m2_dtype_name(idt));
    if (y) {
      double *pw = host(w), *py = host(y), worst = 0;
      for (int i = 0; i < 6; i++)
        for (int j = 0; j < 4; j++) worst = fmax(worst, fabs(py[i * 4 + j] - pw[idv[i] * 4 + j]));
      CHECK(worst == 0, "embedding rows copied exactly (%s, %s): %g", m2_dtype_name(wdt), m2_dtype_name(idt), worst);
      free(pw);
      free(py);
    }
    m2_release(w); m2_release(ids); m2_release(y);
  }
  /* gradient: scatter-add over repeated ids */
  m2_tensor *w = randn(r, M2_F64, 2, sw, true), *ids = ints(M2_I64, 2, sid, idv);
  double err;
  CHECK_OK(m2_gradcheck(f_embedding, ids, 1, &w, NULL, &err));
  /* analytic: dL/dw[3] = sum of the three rows' upstream gradients */
  m2_release(w->grad); w->grad = NULL;
  m2_tensor *y = m2_embedding(w, ids);
  m2_tensor *g = m2_randn(r, M2_F64, M2_DEV_CPU, y->ndim, y->shape);
  CHECK_OK(m2_backward(y, g));
  double *pg = host(g), *pd = host(w->grad);
  CHECK_CLOSE(pd[3 * 4 + 1], pg[0 * 4 + 1] + pg[3 * 4 + 1] + pg[4 * 4 + 1], 1e-14, 1e-14, "dw of a thrice-used id");
  CHECK_CLOSE(pd[2 * 4 + 0], 0.0, 0.0, 0.0, "dw of an unused id");
  free(pg); free(pd);
  m2_release(y); m2_release(g);
  /* errors */
  int64_t badv[6] = {0, 1, 7, 2, 2, 2}, negv[6] = {0, -1, 0, 0, 0, 0};
  m2_tensor *bad = ints(M2_I64, 2, sid, badv), *neg = ints(M2_I32, 2, sid, negv);
  CHECK_FAILS(m2_embedding(w, bad) == NULL, M2_ERR_INDEX, "id 7");
  CHECK_FAILS(m2_embedding(w, bad) == NULL, M2_ERR_INDEX, "V=7");
  CHECK_FAILS(m2_embedding(w, neg) == NULL, M2_ERR_INDEX, "id -1");
  m2_tensor *fid = randn(r, M2_F64, 2, sid, false);
  CHECK_FAILS(m2_embedding(w, fid) == NULL, M2_ERR_DTYPE, "integer");
  m2_tensor *wi = m2_zeros(M2_I32, M2_DEV_CPU, 2, sw);
  CHECK_FAILS(m2_embedding(wi, ids) == NULL, M2_ERR_DTYPE, "float");
  m2_tensor *w1 = randn(r, M2_F32, 1, sw, false);
  CHECK_FAILS(m2_embedding(w1, ids) == NULL, M2_ERR_SHAPE, "(V, d)");
  m2_release(w); m2_release(ids); m2_release(bad); m2_release(neg); m2_release(fid); m2_release(wi); m2_release(w1);
}

static void test_cross_entropy(m2_rng *r) {
  const int64_t C = 6, IGN = -100;
  int64_t sx[3] = {2, 3, 6}, st[2] = {2, 3};
  int64_t tv[6] = {0, 5, -100, 2, 2, 4};
  for (int k = 0; k < 2; k++) {
    m2_dtype dt = k ? M2_F64 : M2_F32;
    m2_tensor *x = randn(r, dt, 3, sx, false), *t = ints(k ? M2_I32 : M2_I64, 2, st, tv);
    m2_tensor *L = m2_cross_entropy(x, t, IGN);
    CHECK(L && L->ndim == 0 && L->dtype == dt, "cross_entropy gives a 0-d %s", m2_dtype_name(dt));
    CHECK_CLOSE(item(L), ref_ce(x, tv, 6, C, IGN), 1e-6, 1e-6, "cross_entropy vs naive (ignore_index rows skipped)");
    m2_release(L);
    /* a different ignore_index: now -100 would be out of range */
    CHECK_FAILS(m2_cross_entropy(x, t, 5) == NULL, M2_ERR_INDEX, "target -100");
    m2_release(x); m2_release(t);
  }
  /* large logits: stable */
  {
    int64_t s2[2] = {2, 3};
    double xv[6] = {1000, 999, -1000, -1000, -1001, 900};
    int64_t t2[2] = {1, 0};
    m2_tensor *x = m2_from_data(M2_F64, M2_DEV_CPU, 2, s2, xv), *t = ints(M2_I64, 1, s2, t2);
    m2_tensor *L = m2_cross_entropy(x, t, -1);
    double want = ((1000 + log(1 + exp(-1.0) + exp(-2000.0)) - 999) + (900 + log(1 + exp(-1900.0)) + 1000)) / 2;
    CHECK_CLOSE(item(L), want, 1e-9, 1e-12, "cross_entropy with logits of +-1000 is finite and exact");
    m2_release(x); m2_release(t); m2_release(L);
  }
  /* gradient (with an ignored row) */
  {
    m2_tensor *x = randn(r, M2_F64, 3, sx, true), *t = ints(M2_I64, 2, st, tv);
    ce_ud u = {t, IGN};
    double err;
    CHECK_OK(m2_gradcheck(f_ce, &u, 1, &x, NULL, &err));
    /* every row ignored: loss 0 and a zero (not NaN) gradient */
    int64_t allign[6] = {-100, -100, -100, -100, -100, -100};
    m2_tensor *ta = ints(M2_I64, 2, st, allign);
    m2_release(x->grad); x->grad = NULL;
    m2_tensor *L = m2_cross_entropy(x, ta, IGN);
    CHECK_CLOSE(item(L), 0.0, 0.0, 0.0, "all targets ignored gives 0");
    CHECK_OK(m2_backward(L, NULL));
    double *pg = x->grad ? host(x->grad) : NULL, worst = pg ? 0 : INFINITY;
    for (int i = 0; pg && i < 36; i++) worst = fmax(worst, fabs(pg[i]) + (isnan(pg[i]) ? INFINITY : 0));
    CHECK(worst == 0, "all-ignored gradient is exactly 0: %g", worst);
    free(pg);
    m2_release(L); m2_release(ta); m2_release(x); m2_release(t);
  }
  /* 1-D logits, 0-d target */
  {
    int64_t s1[1] = {5};
    m2_tensor *x = randn(r, M2_F64, 1, s1, true), *t = m2_scalar(M2_I64, M2_DEV_CPU, 3);
    int64_t t3 = 3;
    m2_tensor *L = m2_cross_entropy(x, t, -100);
    CHECK_CLOSE(item(L), ref_ce(x, &t3, 1, 5, -100), 1e-12, 1e-12, "cross_entropy of one row");
    ce_ud u = {t, -100};
    double err;
    CHECK_OK(m2_gradcheck(f_ce, &u, 1, &x, NULL, &err));
    m2_release(L); m2_release(x); m2_release(t);
  }
  /* f32 backward agrees with f64 */
  {
    m2_tensor *x64 = randn(r, M2_F64, 3, sx, true), *t = ints(M2_I32, 2, st, tv);
    m2_tensor *x32 = m2_clone_raw(x64, M2_F32, M2_DEV_CPU);
    m2_requires_grad_(x32, true);
    m2_tensor *L64 = m2_cross_entropy(x64, t, IGN), *L32 = m2_cross_entropy(x32, t, IGN);
    CHECK_OK(m2_backward(L64, NULL));
    CHECK_OK(m2_backward(L32, NULL));
    double e = max_rel_diff(x32->grad, x64->grad);
    CHECK(e < 1e-6, "cross_entropy f32 backward vs f64: %g", e);
    m2_release(x64); m2_release(x32); m2_release(t); m2_release(L64); m2_release(L32);
  }
  /* errors */
  {
    m2_tensor *x = randn(r, M2_F32, 3, sx, false);
    int64_t big[6] = {0, 6, 1, 1, 1, 1};
    m2_tensor *tb = ints(M2_I64, 2, st, big);
    CHECK_FAILS(m2_cross_entropy(x, tb, -100) == NULL, M2_ERR_INDEX, "target 6");
    CHECK_FAILS(m2_cross_entropy(x, tb, -100) == NULL, M2_ERR_INDEX, "6 classes");
    m2_tensor *tf = randn(r, M2_F32, 2, st, false);
    CHECK_FAILS(m2_cross_entropy(x, tf, -100) == NULL, M2_ERR_DTYPE, "integer");
    m2_tensor *xi = m2_zeros(M2_I64, M2_DEV_CPU, 3, sx);
    CHECK_FAILS(m2_cross_entropy(xi, tb, -100) == NULL, M2_ERR_DTYPE, "float");
    int64_t s32[2] = {3, 2};
    m2_tensor *tw = m2_zeros(M2_I64, M2_DEV_CPU, 2, s32);
    CHECK_FAILS(m2_cross_entropy(x, tw, -100) == NULL, M2_ERR_SHAPE, "(3, 2)");
    CHECK_FAILS(m2_cross_entropy(x, x, -100) == NULL, M2_ERR_DTYPE, "integer");
    m2_release(x); m2_release(tb); m2_release(tf); m2_release(xi); m2_release(tw);
  }
}

static void test_norms(m2_rng *r) {
  int64_t sx[3] = {2, 3, 8}, sw[1] = {8};
  for (int k = 0; k < 2; k++) {
    m2_dtype dt = k ? M2_F64 : M2_F32;
    double tol = k ? 1e-13 : 1e-6;
    m2_tensor *x = randn(r, dt, 3, sx, false), *w = randn(r, dt, 1, sw, false);
    m2_tensor *y = m2_rmsnorm(x, w, 1e-5), *ref = ref_norm(x, w, 1e-5, true);
    CHECK(y && y->dtype == dt && max_rel_diff(y, ref) < tol, "rmsnorm with weight vs naive (%s)", m2_dtype_name(dt));
    m2_release(y); m2_release(ref);
    y = m2_rmsnorm(x, NULL, 1e-5);
    ref = ref_norm(x, NULL, 1e-5, true);
    CHECK(y && max_rel_diff(y, ref) < tol, "rmsnorm without weight vs naive (%s)", m2_dtype_name(dt));
    m2_release(y); m2_release(ref);
    y = m2_l2norm(x, 1e-6);
    ref = ref_norm(x, NULL, 1e-6, false);
    CHECK(y && max_rel_diff(y, ref) < tol, "l2norm vs naive (%s)", m2_dtype_name(dt));
    m2_release(y); m2_release(ref);
    m2_release(x); m2_release(w);
  }
  /* rows of l2norm have unit length (eps small) */
  {
    int64_t s[2] = {4, 16};
    m2_tensor *x = randn(r, M2_F64, 2, s, false), *y = m2_l2norm(x, 1e-12);
    double *p = host(y), worst = 0;
    for (int i = 0; i < 4; i++) {
      double ss = 0;
      for (int j = 0; j < 16; j++) ss += p[i * 16 + j] * p[i * 16 + j];
      worst = fmax(worst, fabs(ss - 1));
    }
    CHECK(worst < 1e-10, "l2norm rows have unit norm: %g", worst);
    free(p);
    m2_release(x); m2_release(y);
  }
  /* gradients */
  {
    m2_tensor *x = randn(r, M2_F64, 3, sx, true), *w = randn(r, M2_F64, 1, sw, true);
    m2_tensor *in[2] = {x, w};
    double err;
    CHECK_OK(m2_gradcheck(f_rms, NULL, 2, in, NULL, &err));
    m2_tensor *in1[2] = {x, NULL};
    CHECK_OK(m2_gradcheck(f_rms_nw, NULL, 2, in1, NULL, &err));
    CHECK_OK(m2_gradcheck(f_l2, NULL, 1, &x, NULL, &err));
    /* weight only (x not a parameter) */
    m2_tensor *xc = randn(r, M2_F64, 3, sx, false);
    m2_tensor *in2[2] = {xc, w};
    CHECK_OK(m2_gradcheck(f_rms, NULL, 2, in2, NULL, &err));
    m2_release(xc);
    /* through a strided input (dispatcher copy) */
    m2_tensor *xt = m2_transpose(x, 0, 2); /* (8, 3, 2) */
    m2_tensor *wt = randn(r, M2_F64, 1, (int64_t[]){2}, true);
    m2_tensor *y = m2_rmsnorm(xt, wt, 1e-5);
    m2_tensor *xtc = m2_clone_raw(xt, M2_F64, M2_DEV_CPU), *ref = ref_norm(xtc, wt, 1e-5, true);
    CHECK(y && max_rel_diff(y, ref) < 1e-13, "rmsnorm of a transposed view");
    m2_release(xt); m2_release(wt); m2_release(y); m2_release(xtc); m2_release(ref);
    m2_release(x); m2_release(w);
  }
  /* f32 backward agrees with f64 */
  {
    m2_tensor *x64 = randn(r, M2_F64, 3, sx, true), *w64 = randn(r, M2_F64, 1, sw, true);
    m2_tensor *x32 = m2_clone_raw(x64, M2_F32, M2_DEV_CPU), *w32 = m2_clone_raw(w64, M2_F32, M2_DEV_CPU);
    m2_requires_grad_(x32, true);
    m2_requires_grad_(w32, true);
    m2_tensor *y64 = m2_rmsnorm(x64, w64, 1e-5), *y32 = m2_rmsnorm(x32, w32, 1e-5);
    m2_tensor *g64 = m2_randn(r, M2_F64, M2_DEV_CPU, 3, sx), *g32 = m2_clone_raw(g64, M2_F32, M2_DEV_CPU);
    CHECK_OK(m2_backward(y64, g64));
    CHECK_OK(m2_backward(y32, g32));
    double ex = max_rel_diff(x32->grad, x64->grad), ew = max_rel_diff(w32->grad, w64->grad);
    CHECK(ex < 1e-5 && ew < 1e-5, "rmsnorm f32 backward vs f64: dx %g dw %g", ex, ew);
    m2_release(x64); m2_release(w64); m2_release(x32); m2_release(w32);
    m2_release(y64); m2_release(y32); m2_release(g64); m2_release(g32);
  }
  /* errors */
  {
    m2_tensor *x = randn(r, M2_F32, 3, sx, false), *w7 = randn(r, M2_F32, 1, (int64_t[]){7}, false);
    m2_tensor *w64 = randn(r, M2_F64, 1, sw, false), *xi = m2_zeros(M2_I32, M2_DEV_CPU, 3, sx);
    CHECK_FAILS(m2_rmsnorm(x, w7, 1e-5) == NULL, M2_ERR_SHAPE, "(7)");
    CHECK_FAILS(m2_rmsnorm(x, w64, 1e-5) == NULL, M2_ERR_DTYPE, "dtypes differ");
    CHECK_FAILS(m2_rmsnorm(xi, NULL, 1e-5) == NULL, M2_ERR_DTYPE, "float");
    CHECK_FAILS(m2_rmsnorm(x, NULL, -1) == NULL, M2_ERR_VALUE, "eps");
    CHECK_FAILS(m2_l2norm(xi, 1e-6) == NULL, M2_ERR_DTYPE, "float");
    CHECK_FAILS(m2_l2norm(x, -1e-6) == NULL, M2_ERR_VALUE, "eps");
    m2_release(x); m2_release(w7); m2_release(w64); m2_release(xi);
  }
}

int main(void) {
  m2_rng r = m2_rng_make(7, 0);
  test_embedding(&r);
  test_cross_entropy(&r);
  test_norms(&r);
  CHECK(m2_live_tensors() == 0, "leaked tensors: %ld", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked nodes: %ld", m2_live_nodes());
  return check_finish("test_ops_nn");
}
