/* test_ops_reduce.c — sum, mean, max, argmax (along a dim, keepdim or not, negative dims), sum_all,
 * mean_all, max_all, eq, softmax, log_softmax, cumsum: forward against naive references, F32 against
 * F64, double accumulation, gradient checks in F64, ties and NaN, stability, errors, no leaks. */
#include "check.h"

static m2_rng R;

/* ---------------- helpers ---------------- */

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_to_host(t, M2_F64, v);
  return v;
}

static m2_tensor *param(m2_tensor *t) {
  m2_requires_grad_(t, true);
  return t;
}

/* Largest |a - b| / (atol + rtol |b|) over all elements (<= 1 passes; NaN or a size mismatch -> inf). */
static double close_ratio(const m2_tensor *a, const m2_tensor *b, double atol, double rtol) {
  if (!a || !b || m2_numel(a) != m2_numel(b)) return INFINITY;
  double *x = host(a), *y = host(b), worst = 0;
  for (int64_t i = 0; i < m2_numel(a); i++) {
    double r = fabs(x[i] - y[i]) / (atol + rtol * fabs(y[i]));
    if (!(r <= worst)) worst = isnan(r) ? INFINITY : r;
  }
  free(x);
  free(y);
  return worst;
}

static bool shape_is(const m2_tensor *t, int nd, const int64_t *shape) {
  if (!t || t->ndim != nd) return false;
  for (int i = 0; i < nd; i++)
    if (t->shape[i] != shape[i]) return false;
  return true;
}

/* ---------------- the ops under test, by kind ---------------- */

enum { SUM, MEAN, MAX, SOFTMAX, LOG_SOFTMAX, CUMSUM, SUM_ALL, MEAN_ALL, MAX_ALL, N_KINDS };
static const char *const NAMES[] = {"sum", "mean", "max", "softmax", "log_softmax", "cumsum",
                                    "sum_all", "mean_all", "max_all"};
static bool reduces(int k) { return k <= MAX; }
static bool is_all(int k) { return k >= SUM_ALL; }

typedef struct spec {
  int kind, dim;
  bool keepdim;
} spec;

static m2_tensor *apply(const spec *s, m2_tensor *x) {
  switch (s->kind) {
    case SUM: return m2_sum(x, s->dim, s->keepdim);
    case MEAN: return m2_mean(x, s->dim, s->keepdim);
    case MAX: return m2_max(x, s->dim, s->keepdim);
    case SOFTMAX: return m2_softmax(x, s->dim);
    case LOG_SOFTMAX: return m2_log_softmax(x, s->dim);
    case CUMSUM: return m2_cumsum(x, s->dim);
    case SUM_ALL: return m2_sum_all(x);
    case MEAN_ALL: return m2_mean_all(x);
    default: return m2_max_all(x);
  }
}
static m2_tensor *gc_apply(m2_tensor *const *in, void *ud) { return apply(ud, in[0]); }

/* Naive reference: x (host, row-major, shape (nd)) along dim d (already normalised); writes the
 * expected shape and values. Each output element is computed from scratch with its own loop. */
static void naive(const spec *s, const double *x, int nd, const int64_t *shape, int d, int *ond, int64_t *oshape,
                  double *out) {
  int64_t total = 1;
  for (int i = 0; i < nd; i++) total *= shape[i];
  if (is_all(s->kind)) {
    double acc = s->kind == MAX_ALL ? -INFINITY : 0;
    for (int64_t i = 0; i < total; i++) acc = s->kind == MAX_ALL ? fmax(acc, x[i]) : acc + x[i];
    out[0] = s->kind == MEAN_ALL ? acc / (double)total : acc;
    *ond = 0;
    return;
  }
  int64_t n = shape[d], stride = 1;
  for (int i = d + 1; i < nd; i++) stride *= shape[i];
  if (reduces(s->kind)) {
    *ond = 0;
    for (int i = 0; i < nd; i++)
      if (i != d) oshape[(*ond)++] = shape[i];
      else if (s->keepdim) oshape[(*ond)++] = 1;
    int64_t e = 0;
    for (int64_t i = 0; i < total; i++) { /* every element with index 0 along d starts one output */
      if ((i / stride) % n != 0) continue;
      double acc = s->kind == MAX ? -INFINITY : 0;
      for (int64_t k = 0; k < n; k++) acc = s->kind == MAX ? fmax(acc, x[i + k * stride]) : acc + x[i + k * stride];
      out[e++] = s->kind == MEAN ? acc / (double)n : acc;
    }
    return;
  }
  *ond = nd;
  memcpy(oshape, shape, sizeof(int64_t) * (size_t)nd);
  for (int64_t i = 0; i < total; i++) {
    int64_t pos = (i / stride) % n, first = i - pos * stride;
    if (s->kind == CUMSUM) {
      double acc = 0;
      for (int64_t k = 0; k <= pos; k++) acc += x[first + k * stride];
      out[i] = acc;
    } else { /* textbook softmax, no max subtraction (inputs are small) */
      double z = 0;
      for (int64_t k = 0; k < n; k++) z += exp(x[first + k * stride]);
      out[i] = s->kind == SOFTMAX ? exp(x[i]) / z : x[i] - log(z);
    }
  }
}

/* forward (F64 vs naive), F32 vs F64 and (optionally) a gradient check for one op / dim / keepdim */
static void check_op(const spec *s, int nd, const int64_t *shape, bool gradcheck) {
  char what[128], sb[64];
  snprintf(what, sizeof what, "%s(%s, dim %d%s)", NAMES[s->kind], m2_shape_str_raw(nd, shape, sb, sizeof sb), s->dim,
           s->keepdim ? ", keepdim" : "");
  m2_tensor *x = m2_randn(&R, M2_F64, M2_DEV_CPU, nd, shape);
  int d = s->dim < 0 ? s->dim + nd : s->dim;
  double *vx = host(x), *ref = malloc(sizeof(double) * (size_t)m2_numel(x));
  int ond;
  int64_t oshape[M2_MAX_DIMS];
  naive(s, vx, nd, shape, d, &ond, oshape, ref);
  m2_tensor *y = apply(s, x);
  CHECK(shape_is(y, ond, oshape) && y->dtype == M2_F64, "%s: output shape", what);
  if (y && shape_is(y, ond, oshape)) {
    m2_tensor *rt = m2_from_data(M2_F64, M2_DEV_CPU, ond, oshape, ref);
    double r = close_ratio(y, rt, 1e-14, 1e-12);
    CHECK(r <= 1, "%s: forward vs naive, ratio %g", what, r);
    m2_release(rt);
  }
  free(vx);
  free(ref);
  /* F32 vs F64 on the same rounded input */
  m2_tensor *x32 = m2_clone_raw(x, M2_F32, M2_DEV_CPU), *x64 = m2_clone_raw(x32, M2_F64, M2_DEV_CPU);
  m2_tensor *y32 = apply(s, x32), *y64 = apply(s, x64);
  double r32 = (y32 && y32->dtype == M2_F32) ? close_ratio(y32, y64, 1e-30, 1e-6) : INFINITY;
  CHECK(r32 <= 1, "%s: f32 vs f64 ratio %g", what, r32);
  m2_release(x32); m2_release(x64); m2_release(y32); m2_release(y64);
  if (gradcheck) {
    param(x);
    double err;
    CHECK(m2_gradcheck(gc_apply, (void *)s, 1, &x, NULL, &err) == M2_OK, "%s: gradcheck (worst ratio %g)", what, err);
  }
  m2_release(y);
  m2_release(x);
}

static void test_forward_and_gradients(void) {
  int64_t s345[] = {3, 4, 5}, s27[] = {2, 7}, s9[] = {9}, s2314[] = {2, 3, 1, 4};
  int dims3[] = {0, 1, 2, -1, -2, -3};
  for (int k = 0; k < N_KINDS; k++) {
    for (int keep = 0; keep < 2; keep++) {
      if (!reduces(k) && keep) continue;
      for (int i = 0; i < 6; i++) {
        if (is_all(k) && i > 0) continue;
        spec s = {k, dims3[i], keep};
        check_op(&s, 3, s345, i == 0 || i == 1 || i == 3 || i == 4); /* gradchecks: dims 0, 1, -1, -2 */
      }
      spec s2 = {k, -1, keep}, s0 = {k, 0, keep}, sd = {k, 2, keep};
      check_op(&s2, 2, s27, true);  /* last dim, inner == 1 */
      check_op(&s0, 1, s9, true);   /* a 1-d tensor */
      check_op(&sd, 4, s2314, true); /* a size-1 dim next to the one reduced */
    }
  }

  /* 0-d input: dim 0 is the only dim */
  m2_tensor *z = m2_scalar(M2_F64, M2_DEV_CPU, 1.5);
  m2_tensor *zs = m2_sum(z, 0, false), *zm = m2_softmax(z, 0), *zc = m2_cumsum(z, 0);
  double v1, v2, v3;
  CHECK(zs && zs->ndim == 0 && m2_item(zs, &v1) == M2_OK && v1 == 1.5, "sum of a 0-d tensor");
  CHECK(zm && m2_item(zm, &v2) == M2_OK && v2 == 1, "softmax of a 0-d tensor");
  CHECK(zc && m2_item(zc, &v3) == M2_OK && v3 == 1.5, "cumsum of a 0-d tensor");
  m2_release(z); m2_release(zs); m2_release(zm); m2_release(zc);
}

/* Sums accumulate in double: 2^24 + 1000 ones is exact in float only if accumulated wider. */
static void test_double_accumulation(void) {
  int64_t n = 1001;
  m2_tensor *x = m2_full(M2_F32, M2_DEV_CPU, 1, &n, 1.0);
  m2_set(x, (int64_t[]){0}, 16777216.0);
  m2_tensor *s = m2_sum_all(x), *s0 = m2_sum(x, 0, false), *m = m2_mean_all(x), *c = m2_cumsum(x, 0);
  double vs, vs0, vm, vc;
  m2_item(s, &vs);
  m2_item(s0, &vs0);
  m2_item(m, &vm);
  m2_get(c, (int64_t[]){1000}, &vc);
  CHECK(vs == 16778216.0, "sum_all accumulates in double: %.1f", vs);
  CHECK(vs0 == 16778216.0, "sum accumulates in double: %.1f", vs0);
  CHECK(vc == 16778216.0, "cumsum accumulates in double: %.1f", vc);
  CHECK_CLOSE(vm, 16778216.0 / 1001, 0, 1e-7, "mean_all accumulates in double");
  m2_release(x); m2_release(s); m2_release(s0); m2_release(m); m2_release(c);

  /* the same along a dim with inner > 1 (the summing order of m2_sum_to_shape) */
  m2_tensor *x2 = m2_full(M2_F32, M2_DEV_CPU, 2, (int64_t[]){1001, 3}, 1.0);
  m2_set(x2, (int64_t[]){0, 2}, 16777216.0);
  m2_tensor *t = m2_sum(x2, 0, true);
  double vt;
  m2_get(t, (int64_t[]){0, 2}, &vt);
  CHECK(vt == 16778216.0 && t->ndim == 2 && t->shape[0] == 1, "sum over dim 0, inner 3: %.1f", vt);
  m2_release(x2); m2_release(t);
}

/* max: ties send the gradient to the first maximum; NaN propagates; argmax agrees */
static void test_max_ties_nan(void) {
  double v[] = {1, 3, 3, 2, /* row 2 */ 5, 5, -1, 5};
  m2_tensor *x = param(m2_from_data(M2_F64, M2_DEV_CPU, 2, (int64_t[]){2, 4}, v));
  m2_tensor *mx = m2_max(x, -1, false), *L = m2_sum_all(mx);
  CHECK_OK(m2_backward(L, NULL));
  double want[] = {0, 1, 0, 0, 1, 0, 0, 0};
  double *g = host(x->grad);
  for (int i = 0; i < 8; i++) CHECK(g[i] == want[i], "max grad to the first argmax, element %d: %g", i, g[i]);
  free(g);
  m2_release(x->grad);
  x->grad = NULL;
  m2_release(mx); m2_release(L);
  m2_tensor *ma = m2_max_all(x), *La = m2_sum_all(ma);
  CHECK_OK(m2_backward(La, NULL));
  g = host(x->grad);
  for (int i = 0; i < 8; i++) CHECK(g[i] == (i == 4), "max_all grad to the first argmax, element %d: %g", i, g[i]);
  free(g);
  double mv;
  m2_item(ma, &mv);
  CHECK(mv == 5, "max_all value %g", mv);
  m2_release(ma); m2_release(La);
  m2_tensor *am = m2_argmax(x, 1, false);
  int64_t ai[2] = {-1, -1};
  CHECK(am && am->dtype == M2_I64 && !am->requires_grad && m2_to_host(am, M2_I64, ai) == M2_OK && ai[0] == 1 &&
            ai[1] == 0, "argmax picks the first of ties: %lld %lld", (long long)ai[0], (long long)ai[1]);
  m2_release(am);
  m2_release(x);

  double w[] = {1, NAN, 3};
  m2_tensor *xn = m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){3}, w);
  m2_tensor *mn = m2_max(xn, 0, false), *an = m2_argmax(xn, 0, false);
  double nv = 0, iv = 0;
  m2_item(mn, &nv);
  m2_item(an, &iv);
  CHECK(isnan(nv) && iv == 1, "max propagates NaN (%g at %g)", nv, iv);
  m2_release(xn); m2_release(mn); m2_release(an);
}

/* argmax against a naive loop, keepdim, negative dims, int inputs */
static void test_argmax(void) {
  int64_t shape[] = {3, 4, 5};
  m2_tensor *x = m2_randn(&R, M2_F32, M2_DEV_CPU, 3, shape);
  double *v = host(x);
  int dims[] = {0, 1, 2, -1, -2, -3};
  for (int i = 0; i < 6; i++)
    for (int keep = 0; keep < 2; keep++) {
      int d = dims[i] < 0 ? dims[i] + 3 : dims[i];
      m2_tensor *a = m2_argmax(x, dims[i], keep);
      int64_t oshape[3];
      int ond = 0;
      for (int j = 0; j < 3; j++)
        if (j != d) oshape[ond++] = shape[j];
        else if (keep) oshape[ond++] = 1;
      CHECK(shape_is(a, ond, oshape) && a->dtype == M2_I64, "argmax dim %d keepdim %d: shape/dtype", dims[i], keep);
      if (!a) continue;
      int64_t *got = m2_data(a), stride = 1, e = 0, bad = 0;
      for (int j = d + 1; j < 3; j++) stride *= shape[j];
      for (int64_t f = 0; f < 60; f++) {
        if ((f / stride) % shape[d] != 0) continue;
        int64_t best = 0;
        for (int64_t k = 1; k < shape[d]; k++)
          if (v[f + k * stride] > v[f + best * stride]) best = k;
        bad += got[e++] != best;
      }
      CHECK(bad == 0, "argmax dim %d keepdim %d: %lld wrong", dims[i], keep, (long long)bad);
      m2_release(a);
    }
  free(v);
  m2_release(x);
  int32_t iv[] = {4, -2, 9, 9, 0, 1};
  m2_tensor *xi = m2_from_data(M2_I32, M2_DEV_CPU, 2, (int64_t[]){2, 3}, iv);
  m2_tensor *ai = m2_argmax(xi, -1, true);
  int64_t r[2] = {-1, -1};
  CHECK(ai && shape_is(ai, 2, (int64_t[]){2, 1}) && m2_to_host(ai, M2_I64, r) == M2_OK && r[0] == 2 && r[1] == 0,
        "argmax of an i32 tensor: %lld %lld", (long long)r[0], (long long)r[1]);
  m2_release(xi); m2_release(ai);
}

/* eq: accuracy-style comparisons (argmax I64 vs I32/I64 targets), broadcasting, mixed dtypes */
static void test_eq(void) {
  int64_t shape[] = {4, 6, 5};
  m2_tensor *logits = param(m2_randn(&R, M2_F32, M2_DEV_CPU, 3, shape));
  m2_tensor *pred = m2_argmax(logits, -1, false); /* (4, 6) I64 */
  int64_t *p = m2_data(pred);
  int32_t t32[24];
  int64_t t64[24];
  int hits = 0;
  for (int i = 0; i < 24; i++) { /* every third target is right */
    t64[i] = i % 3 == 0 ? p[i] : (p[i] + 1 + i % 4) % 5;
    t32[i] = (int32_t)t64[i];
    hits += i % 3 == 0;
  }
  m2_tensor *tg32 = m2_from_data(M2_I32, M2_DEV_CPU, 2, (int64_t[]){4, 6}, t32);
  m2_tensor *tg64 = m2_from_data(M2_I64, M2_DEV_CPU, 2, (int64_t[]){4, 6}, t64);
  for (int j = 0; j < 2; j++) {
    m2_tensor *e = m2_eq(pred, j ? tg64 : tg32);
    CHECK(e && e->dtype == M2_F32 && shape_is(e, 2, (int64_t[]){4, 6}) && !e->requires_grad, "eq: result");
    if (e) {
      float *ev = m2_data(e);
      int bad = 0;
      for (int i = 0; i < 24; i++) bad += ev[i] != (i % 3 == 0 ? 1.0f : 0.0f);
      CHECK(bad == 0, "eq argmax vs %s targets: %d wrong", j ? "i64" : "i32", bad);
      m2_tensor *acc = m2_mean_all(e);
      double a;
      m2_item(acc, &a);
      CHECK_CLOSE(a, hits / 24.0, 1e-7, 0, "accuracy from eq");
      m2_release(acc);
    }
    m2_release(e);
  }
  /* broadcasting (3, 1) against (4), float against float and f64 against i64 */
  double a3[] = {1, 2, 7}, b4[] = {2, 7, 1, 3};
  m2_tensor *a = m2_from_data(M2_F64, M2_DEV_CPU, 2, (int64_t[]){3, 1}, a3);
  m2_tensor *b = m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){4}, b4);
  m2_tensor *bf = m2_clone_raw(b, M2_F32, M2_DEV_CPU), *bi = m2_clone_raw(b, M2_I64, M2_DEV_CPU);
  m2_tensor *outs[3] = {m2_eq(a, b), m2_eq(a, bf), m2_eq(bi, a)};
  for (int j = 0; j < 3; j++) {
    m2_tensor *e = outs[j];
    int bad = 0;
    CHECK(e && shape_is(e, 2, (int64_t[]){3, 4}), "eq broadcast shape (case %d)", j);
    for (int r = 0; e && r < 3; r++)
      for (int c = 0; c < 4; c++) {
        double got;
        m2_get(e, (int64_t[]){r, c}, &got);
        bad += got != (a3[r] == b4[c]);
      }
    CHECK(bad == 0, "eq broadcast values (case %d): %d wrong", j, bad); /* eq(bi, a) is (3, 4) too */
    m2_release(e);
  }
  /* integers compare exactly, beyond the 2^53 that a double holds */
  const int64_t p53 = (int64_t)1 << 53;
  int64_t big[2] = {p53, p53 + 1}, bigr[2] = {p53 + 1, p53 + 1};
  m2_tensor *ba = m2_from_data(M2_I64, M2_DEV_CPU, 1, (int64_t[]){2}, big);
  m2_tensor *bb = m2_from_data(M2_I64, M2_DEV_CPU, 1, (int64_t[]){2}, bigr);
  m2_tensor *be = m2_eq(ba, bb);
  float *bev = be ? m2_data(be) : NULL;
  CHECK(bev && bev[0] == 0 && bev[1] == 1, "eq on i64 beyond 2^53 is exact");
  m2_release(ba); m2_release(bb); m2_release(be);

  m2_tensor *x23 = m2_zeros(M2_F32, M2_DEV_CPU, 2, (int64_t[]){2, 3});
  m2_tensor *x4 = m2_zeros(M2_F32, M2_DEV_CPU, 1, (int64_t[]){4});
  CHECK_FAILS(m2_eq(x23, x4) == NULL, M2_ERR_SHAPE, "(2, 3) and (4)");
  m2_release(x23); m2_release(x4);
  m2_release(a); m2_release(b); m2_release(bf); m2_release(bi);
  m2_release(logits); m2_release(pred); m2_release(tg32); m2_release(tg64);
}

/* softmax / log_softmax with huge logits: finite, exact limits */
static void test_softmax_stability(void) {
  double v[] = {1000, 0, -1000, 999};
  for (int dt = 0; dt < 2; dt++) {
    m2_tensor *x64 = m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){4}, v);
    m2_tensor *x = m2_clone_raw(x64, dt ? M2_F32 : M2_F64, M2_DEV_CPU);
    m2_tensor *p = m2_softmax(x, 0), *lp = m2_log_softmax(x, -1);
    double *pv = host(p), *lv = host(lp);
    double lse = 1000 + log1p(exp(-1.0));
    double want_p[] = {1 / (1 + exp(-1.0)), 0, 0, exp(-1.0) / (1 + exp(-1.0))};
    double want_l[] = {1000 - lse, -lse, -1000 - lse, 999 - lse};
    for (int i = 0; i < 4; i++) {
      CHECK(isfinite(pv[i]) && fabs(pv[i] - want_p[i]) <= 1e-6, "softmax of large logits [%d]: %g", i, pv[i]);
      CHECK(isfinite(lv[i]) && fabs(lv[i] - want_l[i]) <= 1e-4, "log_softmax of large logits [%d]: %g", i, lv[i]);
    }
    free(pv); free(lv);
    m2_release(p); m2_release(lp); m2_release(x); m2_release(x64);
  }
}

static void test_errors(void) {
  int64_t s234[] = {2, 3, 4};
  m2_tensor *x = m2_randn(&R, M2_F32, M2_DEV_CPU, 3, s234), *xi = m2_zeros(M2_I32, M2_DEV_CPU, 3, s234);
  m2_tensor *x64i = m2_zeros(M2_I64, M2_DEV_CPU, 3, s234);
  for (int k = 0; k < N_KINDS; k++) {
    spec bad_hi = {k, 3, false}, bad_lo = {k, -4, true}, ok = {k, 1, false};
    if (!is_all(k)) {
      CHECK_FAILS(apply(&bad_hi, x) == NULL, M2_ERR_INDEX, "dim 3 out of range for a tensor of shape (2, 3, 4)");
      CHECK_FAILS(apply(&bad_lo, x) == NULL, M2_ERR_INDEX, "dim -4 out of range");
    }
    CHECK_FAILS(apply(&ok, xi) == NULL, M2_ERR_DTYPE, "must be a float tensor");
    CHECK_FAILS(apply(&ok, x64i) == NULL, M2_ERR_DTYPE, NAMES[k]);
  }
  CHECK_FAILS(m2_argmax(x, 3, false) == NULL, M2_ERR_INDEX, "argmax: dim 3 out of range");
  CHECK_FAILS(m2_argmax(x, -4, true) == NULL, M2_ERR_INDEX, "dim -4");
  m2_tensor *e = m2_zeros(M2_F32, M2_DEV_CPU, 2, (int64_t[]){3, 0});
  CHECK_FAILS(m2_max(e, 1, false) == NULL, M2_ERR_SHAPE, "empty dim");
  CHECK_FAILS(m2_max_all(e) == NULL, M2_ERR_SHAPE, "(3, 0)");
  CHECK_FAILS(m2_argmax(e, -1, false) == NULL, M2_ERR_SHAPE, "empty dim");
  m2_tensor *s0 = m2_sum(e, 1, false); /* an empty sum is 0 */
  double *sv = s0 ? host(s0) : NULL;
  CHECK(s0 && shape_is(s0, 1, (int64_t[]){3}) && sv[0] == 0 && sv[2] == 0, "sum over an empty dim is 0");
  free(sv);
  m2_release(s0); m2_release(e);
  m2_release(x); m2_release(xi); m2_release(x64i);
}

int main(void) {
  R = m2_rng_make(777, 0);
  test_forward_and_gradients();
  test_double_accumulation();
  test_max_ties_nan();
  test_argmax();
  test_eq();
  test_softmax_stability();
  test_errors();
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_reduce");
}
