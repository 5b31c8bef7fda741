/* test_ops_elementwise.c — add, sub, mul, div (broadcasting) and the unary maps: forward against naive
 * references in double, F32 against F64, gradient checks in F64 (broadcasting, reused inputs), numerical
 * stability at large |x|, error messages, and no leaked tensors or nodes. */
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

/* Random F64 tensor; `away` > 0 pushes every value to |v| >= away (denominators, log, sqrt). */
static m2_tensor *rnd(int nd, const int64_t *shape, double away, bool positive) {
  m2_tensor *t = m2_randn(&R, M2_F64, M2_DEV_CPU, nd, shape);
  if (away > 0 || positive) {
    int64_t n = m2_numel(t);
    double *v = m2_data(t);
    for (int64_t i = 0; i < n; i++) {
      double a = fabs(v[i]) + away;
      v[i] = positive ? a : (v[i] < 0 ? -a : a);
    }
  }
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

/* Run f on x (F64) rounded to F32, in F32 and in F64, and return the worst relative ratio. */
typedef m2_tensor *(*unary_fn)(m2_tensor *x, const void *ud);
static double f32_vs_f64(unary_fn f, const void *ud, m2_tensor *x) {
  m2_tensor *x32 = m2_clone_raw(x, M2_F32, M2_DEV_CPU);
  m2_tensor *x64 = m2_clone_raw(x32, M2_F64, M2_DEV_CPU);
  m2_tensor *y32 = f(x32, ud), *y64 = f(x64, ud);
  double r = (y32 && y32->dtype == M2_F32) ? close_ratio(y32, y64, 1e-30, 1e-6) : INFINITY;
  m2_release(x32); m2_release(x64); m2_release(y32); m2_release(y64);
  return r;
}

/* ---------------- binary ops ---------------- */

enum { ADD, SUB, MUL, DIV };
static const char *const BIN_NAMES[] = {"add", "sub", "mul", "div"};
static m2_tensor *bin_apply(int k, m2_tensor *a, m2_tensor *b) {
  switch (k) {
    case ADD: return m2_add(a, b);
    case SUB: return m2_sub(a, b);
    case MUL: return m2_mul(a, b);
    default: return m2_div(a, b);
  }
}
static double bin_ref(int k, double x, double y) {
  switch (k) {
    case ADD: return x + y;
    case SUB: return x - y;
    case MUL: return x * y;
    default: return x / y;
  }
}
static m2_tensor *gc_bin(m2_tensor *const *in, void *ud) { return bin_apply(*(const int *)ud, in[0], in[1]); }

/* Naive broadcasting: the output shape, then every element through its own multi-index. */
static void naive_binary(int k, const m2_tensor *a, const m2_tensor *b, int *nd, int64_t *shape, double *out) {
  int n = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < n; i++) {
    int ia = a->ndim - n + i, ib = b->ndim - n + i;
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    shape[i] = da > db ? da : db;
  }
  *nd = n;
  int64_t total = 1;
  for (int i = 0; i < n; i++) total *= shape[i];
  double *va = host(a), *vb = host(b);
  for (int64_t e = 0; e < total; e++) {
    int64_t idx[M2_MAX_DIMS], r = e;
    for (int i = n - 1; i >= 0; i--) { idx[i] = r % shape[i]; r /= shape[i]; }
    int64_t oa = 0, ob = 0;
    for (int i = 0; i < a->ndim; i++) oa = oa * a->shape[i] + (a->shape[i] == 1 ? 0 : idx[n - a->ndim + i]);
    for (int i = 0; i < b->ndim; i++) ob = ob * b->shape[i] + (b->shape[i] == 1 ? 0 : idx[n - b->ndim + i]);
    out[e] = bin_ref(k, va[oa], vb[ob]);
  }
  free(va);
  free(vb);
}

typedef struct { int k; m2_tensor *b; } bin_ud;
static m2_tensor *bin_with_b(m2_tensor *x, const void *ud) {
  const bin_ud *u = ud;
  m2_tensor *b32 = m2_clone_raw(u->b, M2_F32, M2_DEV_CPU); /* b rounded to f32 for both runs */
  m2_tensor *b = m2_clone_raw(b32, x->dtype, M2_DEV_CPU);
  m2_tensor *y = bin_apply(u->k, x, b);
  m2_release(b32);
  m2_release(b);
  return y;
}

static void test_binary_case(int na, const int64_t *sa, int nb, const int64_t *sb, bool gradcheck) {
  for (int k = 0; k < 4; k++) {
    char what[160], s1[64], s2[64];
    snprintf(what, sizeof what, "%s %s %s", BIN_NAMES[k], m2_shape_str_raw(na, sa, s1, sizeof s1),
             m2_shape_str_raw(nb, sb, s2, sizeof s2));
    m2_tensor *a = rnd(na, sa, 0, false), *b = rnd(nb, sb, k == DIV ? 0.5 : 0, false);
    /* forward (F64) against the naive loop */
    m2_tensor *y = bin_apply(k, a, b);
    CHECK_NOTNULL(y);
    int nd;
    int64_t shape[M2_MAX_DIMS];
    double *ref = malloc(sizeof(double) * 4096);
    naive_binary(k, a, b, &nd, shape, ref);
    if (y) {
      CHECK(y->ndim == nd && memcmp(y->shape, shape, sizeof(int64_t) * (size_t)nd) == 0 && y->dtype == M2_F64,
            "%s: output shape", what);
      m2_tensor *rt = m2_from_data(M2_F64, M2_DEV_CPU, nd, shape, ref);
      double r = close_ratio(y, rt, 1e-15, 1e-15);
      CHECK(r <= 1, "%s: forward vs naive, ratio %g", what, r);
      m2_release(rt);
    }
    free(ref);
    /* F32 against F64 on the same (rounded) inputs */
    bin_ud u = {k, b};
    double r32 = f32_vs_f64(bin_with_b, &u, a);
    CHECK(r32 <= 1, "%s: f32 vs f64 ratio %g", what, r32);
    /* gradients of both inputs */
    if (gradcheck) {
      param(a);
      param(b);
      m2_tensor *in[2] = {a, b};
      double err;
      CHECK(m2_gradcheck(gc_bin, &k, 2, in, NULL, &err) == M2_OK, "%s: gradcheck (worst ratio %g)", what, err);
    }
    m2_release(y);
    m2_release(a);
    m2_release(b);
  }
}

static m2_tensor *gc_square_by_mul(m2_tensor *const *in, void *ud) { return m2_mul(in[0], in[0]); }
static m2_tensor *gc_ratio_chain(m2_tensor *const *in, void *ud) {
  /* (a - b) / (a * b + 3) with a (2, 3) and b (3): both inputs used twice, through broadcasting */
  m2_tensor *d = m2_sub(in[0], in[1]), *p = m2_mul(in[0], in[1]), *q = m2_add_scalar(p, 3);
  m2_tensor *y = m2_div(d, q);
  m2_release(d); m2_release(p); m2_release(q);
  return y;
}

static void test_binary(void) {
  int64_t s34[] = {3, 4}, s235[] = {2, 3, 5}, s5[] = {5}, s231[] = {2, 3, 1}, s413[] = {4, 1, 3},
          s151[] = {1, 5, 1}, s23[] = {2, 3}, s2131[] = {2, 1, 3, 1}, s412[] = {4, 1, 2}, s6_37[] = {6, 37},
          s37[] = {37}, s1[] = {1}, s637_1[] = {6, 1};
  test_binary_case(2, s34, 2, s34, true);        /* same shape */
  test_binary_case(3, s235, 1, s5, true);        /* (..., n) with (n) */
  test_binary_case(1, s5, 3, s235, true);        /* (n) with (..., n) */
  test_binary_case(3, s235, 3, s231, true);      /* (..., n) with (..., 1) */
  test_binary_case(3, s413, 3, s151, true);      /* both broadcast */
  test_binary_case(0, NULL, 2, s23, true);       /* 0-d with (2, 3) */
  test_binary_case(2, s23, 1, s1, true);         /* (2, 3) with (1) */
  test_binary_case(4, s2131, 3, s412, false);    /* 4-d, interleaved broadcast dims */
  test_binary_case(2, s6_37, 1, s37, false);     /* lengths that are not multiples of the block of 8 */
  test_binary_case(2, s6_37, 2, s6_37, false);
  test_binary_case(2, s637_1, 2, s6_37, false);  /* (6, 1) with (6, 37) */
  test_binary_case(0, NULL, 0, NULL, false);     /* 0-d with 0-d */

  /* an input used twice, and a chain mixing all four ops with broadcasting */
  m2_tensor *a = param(rnd(2, s23, 0, false)), *b = param(rnd(1, (int64_t[]){3}, 0, true));
  double err;
  CHECK(m2_gradcheck(gc_square_by_mul, NULL, 1, &a, NULL, &err) == M2_OK, "mul(a, a) gradcheck %g", err);
  m2_tensor *ab[2] = {a, b};
  CHECK(m2_gradcheck(gc_ratio_chain, NULL, 2, ab, NULL, &err) == M2_OK, "chain gradcheck %g", err);

  /* a strided (transposed) input is made contiguous and still gives the right values and gradient */
  m2_release(a->grad);
  a->grad = NULL;
  m2_tensor *at = m2_transpose(a, 0, 1), *c = rnd(2, (int64_t[]){3, 2}, 0, false);
  m2_tensor *y = m2_sub(at, c);
  double yv, av, cv, gv;
  m2_get(y, (int64_t[]){2, 1}, &yv);
  m2_get(a, (int64_t[]){1, 2}, &av);
  m2_get(c, (int64_t[]){2, 1}, &cv);
  CHECK_CLOSE(yv, av - cv, 1e-15, 0, "sub on a transposed input");
  m2_tensor *L = m2_sum_all(y);
  CHECK_OK(m2_backward(L, NULL));
  m2_get(a->grad, (int64_t[]){1, 2}, &gv);
  CHECK_CLOSE(gv, 1, 0, 0, "gradient through the transposed input");
  m2_release(L); m2_release(y); m2_release(at); m2_release(c);

  /* empty tensors broadcast to empty results */
  m2_tensor *e = m2_zeros(M2_F32, M2_DEV_CPU, 2, (int64_t[]){0, 3});
  m2_tensor *r3 = m2_full(M2_F32, M2_DEV_CPU, 1, (int64_t[]){3}, 2);
  m2_tensor *ye = m2_mul(e, r3);
  CHECK(ye && ye->ndim == 2 && ye->shape[0] == 0 && ye->shape[1] == 3, "empty broadcast");
  m2_release(ye); m2_release(e); m2_release(r3);

  /* errors: the message names both shapes; mixed and integer dtypes */
  m2_tensor *x23 = m2_randn(&R, M2_F32, M2_DEV_CPU, 2, s23), *x4 = m2_randn(&R, M2_F32, M2_DEV_CPU, 1, (int64_t[]){4});
  m2_tensor *x64 = m2_randn(&R, M2_F64, M2_DEV_CPU, 2, s23), *i23 = m2_zeros(M2_I64, M2_DEV_CPU, 2, s23);
  for (int k = 0; k < 4; k++) {
    CHECK_FAILS(bin_apply(k, x23, x4) == NULL, M2_ERR_SHAPE, "(2, 3) and (4)");
    CHECK_FAILS(bin_apply(k, x4, x23) == NULL, M2_ERR_SHAPE, "(4) and (2, 3)");
    CHECK_FAILS(bin_apply(k, x23, x64) == NULL, M2_ERR_DTYPE, "dtypes differ");
    CHECK_FAILS(bin_apply(k, i23, i23) == NULL, M2_ERR_DTYPE, "must be a float tensor");
    CHECK_FAILS(bin_apply(k, x23, i23) == NULL, M2_ERR_DTYPE, BIN_NAMES[k]);
  }
  m2_release(x23); m2_release(x4); m2_release(x64); m2_release(i23);
  m2_release(a); m2_release(b);
}

/* ---------------- unary ops ---------------- */

enum { NEG, SCALE, ADD_SCALAR, EXP_, LOG_, TANH_, SIGMOID, SILU, SOFTPLUS, RELU, SQUARE, SQRT_, CLAMP, N_UNARY };
static const char *const UN_NAMES[] = {"neg", "scale", "add_scalar", "exp", "log", "tanh", "sigmoid",
                                       "silu", "softplus", "relu", "square", "sqrt", "clamp"};
static const double LO = -0.5, HI = 0.7;

static m2_tensor *un_apply(int k, m2_tensor *x) {
  switch (k) {
    case NEG: return m2_neg(x);
    case SCALE: return m2_scale(x, -1.7);
    case ADD_SCALAR: return m2_add_scalar(x, 0.3);
    case EXP_: return m2_exp(x);
    case LOG_: return m2_log(x);
    case TANH_: return m2_tanh(x);
    case SIGMOID: return m2_sigmoid(x);
    case SILU: return m2_silu(x);
    case SOFTPLUS: return m2_softplus(x);
    case RELU: return m2_relu(x);
    case SQUARE: return m2_square(x);
    case SQRT_: return m2_sqrt(x);
    default: return m2_clamp(x, LO, HI);
  }
}
/* textbook formulas (softplus written stably for the large-|x| test) */
static double un_ref(int k, double x) {
  switch (k) {
    case NEG: return -x;
    case SCALE: return -1.7 * x;
    case ADD_SCALAR: return x + 0.3;
    case EXP_: return exp(x);
    case LOG_: return log(x);
    case TANH_: return tanh(x);
    case SIGMOID: return 1 / (1 + exp(-x));
    case SILU: return x / (1 + exp(-x));
    case SOFTPLUS: return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
    case RELU: return x > 0 ? x : 0;
    case SQUARE: return x * x;
    case SQRT_: return sqrt(x);
    default: return x < LO ? LO : x > HI ? HI : x;
  }
}
static m2_tensor *un_fn(m2_tensor *x, const void *ud) { return un_apply(*(const int *)ud, x); }
static m2_tensor *gc_un(m2_tensor *const *in, void *ud) { return un_apply(*(const int *)ud, in[0]); }

static void test_unary(void) {
  int64_t shape[2] = {3, 37}; /* 111 elements: blocks of 8 plus a remainder */
  for (int k = 0; k < N_UNARY; k++) {
    const char *name = UN_NAMES[k];
    bool positive = k == LOG_ || k == SQRT_;
    m2_tensor *x = rnd(2, shape, positive ? 0.1 : 0, positive);
    if (k == EXP_ || k == SIGMOID || k == SILU || k == SOFTPLUS || k == TANH_) { /* reach further out */
      m2_tensor *x3 = m2_scale(x, 3);
      m2_release(x);
      x = x3;
    }
    m2_tensor *y = un_apply(k, x);
    CHECK(y && m2_same_shape(y, x) && y->dtype == M2_F64, "%s: output", name);
    double *vx = host(x), worst = 0;
    if (y) {
      double *vy = host(y);
      for (int64_t i = 0; i < m2_numel(x); i++) {
        double want = un_ref(k, vx[i]), r = fabs(vy[i] - want) / (1e-300 + 1e-14 * fabs(want));
        if (!(r <= worst)) worst = isnan(r) ? INFINITY : r;
      }
      free(vy);
    }
    free(vx);
    CHECK(worst <= 1, "%s: forward vs naive, ratio %g", name, worst);
    double r32 = f32_vs_f64(un_fn, &k, x);
    CHECK(r32 <= 1, "%s: f32 vs f64 ratio %g", name, r32);
    m2_release(y);
    m2_release(x);

    /* gradient check on a smaller tensor (log/sqrt on positive inputs) */
    m2_tensor *g = param(rnd(2, (int64_t[]){4, 5}, positive ? 0.2 : 0, positive));
    double err;
    CHECK(m2_gradcheck(gc_un, &k, 1, &g, NULL, &err) == M2_OK, "%s: gradcheck (worst ratio %g)", name, err);
    m2_release(g);

    /* integer input is refused */
    m2_tensor *it = m2_zeros(M2_I32, M2_DEV_CPU, 1, (int64_t[]){3});
    CHECK_FAILS(un_apply(k, it) == NULL, M2_ERR_DTYPE, "must be a float tensor");
    m2_release(it);
  }

  /* ops whose backward reads the output keep it */
  const char *keep[] = {"exp", "tanh", "sigmoid", "sqrt"};
  for (int i = 0; i < 4; i++) {
    const m2_op *op = m2_op_find(keep[i]);
    CHECK(op && (op->flags & M2_OP_KEEP_OUTPUTS), "%s keeps its output for backward", keep[i]);
  }

  /* large |x| (finite, stable) and tiny |x| (tanh's series branch) in both dtypes */
  double big[] = {-1000, -100, -30, -20.5, -1, -0.02, -3e-5, 0, 1e-5, 9.99e-5,
                  1e-4,  2e-4, 5e-3, 1,     19.5, 20,  20.5,  30, 100, 1000};
  int nb = (int)(sizeof big / sizeof big[0]);
  m2_tensor *xb = m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){nb}, big);
  for (int dt = 0; dt < 2; dt++) {
    m2_tensor *x = m2_clone_raw(xb, dt ? M2_F32 : M2_F64, M2_DEV_CPU);
    int ks[] = {SOFTPLUS, SIGMOID, SILU, TANH_};
    for (int j = 0; j < 4; j++) {
      m2_tensor *y = un_apply(ks[j], x);
      double *v = y ? host(y) : NULL;
      for (int i = 0; v && i < nb; i++) {
        double want = un_ref(ks[j], big[i]);
        CHECK(isfinite(v[i]), "%s(%g) finite (%s)", UN_NAMES[ks[j]], big[i], dt ? "f32" : "f64");
        CHECK_CLOSE(v[i], want, dt ? 1e-37 : 1e-300, dt ? 2e-6 : 1e-9, UN_NAMES[ks[j]]); /* f32: e^-100 underflows */
      }
      free(v);
      m2_release(y);
    }
    m2_release(x);
  }
  m2_release(xb);

  /* gradient at large |x| stays finite: softplus' = sigmoid, silu' -> 0 or 1 */
  m2_tensor *xg = param(m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){nb}, big));
  for (int j = 0; j < 2; j++) {
    m2_tensor *y = j ? m2_silu(xg) : m2_softplus(xg), *L = m2_sum_all(y);
    CHECK_OK(m2_backward(L, NULL));
    double *gv = host(xg->grad);
    for (int i = 0; i < nb; i++) {
      double want = 1 / (1 + exp(-big[i]));
      if (j) want = want * (1 + big[i] * (1 - want));
      CHECK(isfinite(gv[i]) && fabs(gv[i] - want) <= 1e-8, "%s'(%g) = %g, want %g", j ? "silu" : "softplus",
            big[i], gv[i], want);
    }
    free(gv);
    m2_release(xg->grad);
    xg->grad = NULL;
    m2_release(L);
    m2_release(y);
  }
  m2_release(xg);

  /* relu and clamp gradients: 0 outside, 1 inside, 1 at the clamp bounds */
  double pts[] = {-2, -0.5, -0.1, 0.3, 0.7, 2};
  m2_tensor *xp = param(m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){6}, pts));
  m2_tensor *yc = m2_clamp(xp, LO, HI), *Lc = m2_sum_all(yc);
  CHECK_OK(m2_backward(Lc, NULL));
  double want_c[] = {0, 1, 1, 1, 1, 0}, want_r[] = {0, 0, 0, 1, 1, 1};
  double *gc = host(xp->grad);
  for (int i = 0; i < 6; i++) CHECK(gc[i] == want_c[i], "clamp grad at %g: %g", pts[i], gc[i]);
  free(gc);
  m2_release(xp->grad);
  xp->grad = NULL;
  m2_tensor *yr = m2_relu(xp), *Lr = m2_sum_all(yr);
  CHECK_OK(m2_backward(Lr, NULL));
  double *gr = host(xp->grad);
  for (int i = 0; i < 6; i++) CHECK(gr[i] == want_r[i], "relu grad at %g: %g", pts[i], gr[i]);
  free(gr);
  m2_release(yc); m2_release(Lc); m2_release(yr); m2_release(Lr); m2_release(xp);

  /* relu does not hide a NaN: relu(NaN) is NaN and so is its gradient there (F32 and F64) */
  for (int d = 0; d < 2; d++) {
    m2_dtype dt = d ? M2_F32 : M2_F64;
    double xs[] = {NAN, -1, 2}, yv[3], gv[3];
    m2_tensor *xn = param(m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){3}, xs));
    m2_tensor *xd = m2_to_dtype(xn, dt), *yn = m2_relu(xd), *Ln = m2_sum_all(yn);
    CHECK_OK(m2_backward(Ln, NULL));
    m2_to_host(yn, M2_F64, yv);
    m2_to_host(xn->grad, M2_F64, gv);
    CHECK(isnan(yv[0]) && yv[1] == 0 && yv[2] == 2, "relu(NaN, -1, 2) %s: %g %g %g", m2_dtype_name(dt), yv[0],
          yv[1], yv[2]);
    CHECK(isnan(gv[0]) && gv[1] == 0 && gv[2] == 1, "relu grad at (NaN, -1, 2) %s: %g %g %g", m2_dtype_name(dt),
          gv[0], gv[1], gv[2]);
    m2_release(Ln); m2_release(yn); m2_release(xd); m2_release(xn);
  }

  /* 0-d input */
  m2_tensor *s = m2_scalar(M2_F64, M2_DEV_CPU, 0.25), *es = m2_exp(s);
  double v;
  CHECK(es && es->ndim == 0 && m2_item(es, &v) == M2_OK && fabs(v - exp(0.25)) < 1e-15, "exp of a 0-d tensor");
  m2_release(s); m2_release(es);

  /* clamp with lo > hi */
  m2_tensor *x3 = m2_zeros(M2_F32, M2_DEV_CPU, 1, (int64_t[]){3});
  CHECK_FAILS(m2_clamp(x3, 1, -1) == NULL, M2_ERR_VALUE, "clamp");
  m2_release(x3);
}

int main(void) {
  R = m2_rng_make(20240607, 0);
  test_binary();
  test_unary();
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_elementwise");
}
