/* test_ssd.c — Mamba-2 SSD: recurrent op vs a naive loop, chunked == recurrent (values and
 * gradients, T not a multiple of the chunk, small chunks), gradcheck of every input incl. h0 and
 * groups G < H, F32, shape/dtype errors, timings at a training-loop size. */
#include "check.h"
#include <string.h>
#include <time.h>

enum { X, DT, A, BM, CM, H0 };

typedef struct dims { int64_t B, T, H, P, G, N; } dims;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: steadier on a shared machine */
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static m2_tensor *mapped(m2_rng *r, int nd, const int64_t *shape, double (*f)(double)) {
  m2_tensor *z = m2_randn(r, M2_F64, M2_DEV_CPU, nd, shape);
  int64_t n = m2_numel(z);
  double *buf = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_to_host(z, M2_F64, buf);
  for (int64_t i = 0; i < n; i++) buf[i] = f(buf[i]);
  m2_tensor *t = m2_from_data(M2_F64, M2_DEV_CPU, nd, shape, buf);
  free(buf);
  m2_release(z);
  return t;
}
static double f_dt(double z) { return log1p(exp(z - 0.5)); }  /* softplus: dt > 0 */
static double f_A(double z) { return -exp(0.5 * z); }          /* A < 0 */
static double f_half(double z) { return 0.5 * z; }
static double f_id(double z) { return z; }

static void make_inputs(m2_rng *r, m2_dtype dt, dims d, bool with_h0, bool grad, m2_tensor *t[6]) {
  t[X] = mapped(r, 4, (int64_t[]){d.B, d.T, d.H, d.P}, f_id);
  t[DT] = mapped(r, 3, (int64_t[]){d.B, d.T, d.H}, f_dt);
  t[A] = mapped(r, 1, (int64_t[]){d.H}, f_A);
  t[BM] = mapped(r, 4, (int64_t[]){d.B, d.T, d.G, d.N}, f_half);
  t[CM] = mapped(r, 4, (int64_t[]){d.B, d.T, d.G, d.N}, f_half);
  t[H0] = with_h0 ? mapped(r, 4, (int64_t[]){d.B, d.H, d.P, d.N}, f_half) : NULL;
  for (int i = 0; i < 6; i++) {
    if (!t[i]) continue;
    if (dt != M2_F64) {
      m2_tensor *c = m2_clone_raw(t[i], dt, M2_DEV_CPU);
      m2_release(t[i]);
      t[i] = c;
    }
    if (grad) m2_requires_grad_(t[i], true);
  }
}

static void release_all(m2_tensor **t, int n) {
  for (int i = 0; i < n; i++) { m2_release(t[i]); t[i] = NULL; }
}

static double *host(const m2_tensor *t) {
  int64_t n = t ? m2_numel(t) : 0;
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  if (t) m2_to_host(t, M2_F64, p);
  return p;
}

/* The recurrence written out literally: y (B,T,H,P), hT (B,H,P,N). */
static void naive_ssd(dims d, m2_tensor *const t[6], double *y, double *hT) {
  int64_t B = d.B, T = d.T, H = d.H, P = d.P, G = d.G, N = d.N;
  double *x = host(t[X]), *dt = host(t[DT]), *a = host(t[A]), *Bm = host(t[BM]), *Cm = host(t[CM]), *h0 = host(t[H0]);
  double *S = malloc(sizeof(double) * P * N);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      int64_t g = h * G / H;
      for (int64_t i = 0; i < P * N; i++) S[i] = t[H0] ? h0[(b * H + h) * P * N + i] : 0;
      for (int64_t s = 0; s < T; s++) {
        double del = dt[(b * T + s) * H + h];
        for (int64_t p = 0; p < P; p++)
          for (int64_t n = 0; n < N; n++)
            S[p * N + n] = exp(del * a[h]) * S[p * N + n] +
                           del * x[((b * T + s) * H + h) * P + p] * Bm[((b * T + s) * G + g) * N + n];
        for (int64_t p = 0; p < P; p++) {
          double acc = 0;
          for (int64_t n = 0; n < N; n++) acc += S[p * N + n] * Cm[((b * T + s) * G + g) * N + n];
          y[((b * T + s) * H + h) * P + p] = acc;
        }
      }
      memcpy(hT + (b * H + h) * P * N, S, sizeof(double) * P * N);
    }
  free(x), free(dt), free(a), free(Bm), free(Cm), free(h0), free(S);
}

static double max_abs_diff_host(const m2_tensor *a, const double *ref, int64_t n, double *refmax) {
  double *x = host(a), m = 0, rm = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(x[i] - ref[i]);
    if (isnan(x[i])) e = INFINITY;
    if (e > m) m = e;
    if (fabs(ref[i]) > rm) rm = fabs(ref[i]);
  }
  free(x);
  *refmax = rm;
  return m;
}

/* L = sum(y * w1) + sum(hT * w2), so both outputs feed the gradient */
typedef struct gc_ud {
  bool chunked;
  m2_ssd_opts opts;
  m2_tensor *w1, *w2;
} gc_ud;

static m2_tensor *loss_of(m2_tensor *const *in, void *p) {
  gc_ud *u = p;
  m2_tensor *y = NULL, *hT = NULL;
  m2_status s = (u->chunked ? m2_ssd_chunked : m2_ssd)(in[0], in[1], in[2], in[3], in[4], in[5], &u->opts, &y, &hT);
  if (s != M2_OK) return NULL;
  m2_tensor *a = m2_mul(y, u->w1), *b = m2_mul(hT, u->w2), *sa = m2_sum_all(a), *sb = m2_sum_all(b);
  m2_tensor *L = m2_add(sa, sb);
  m2_release(y), m2_release(hT), m2_release(a), m2_release(b), m2_release(sa), m2_release(sb);
  return L;
}

static void make_weights(m2_rng *r, dims d, m2_dtype dt, gc_ud *u) {
  u->w1 = m2_randn(r, dt, M2_DEV_CPU, 4, (int64_t[]){d.B, d.T, d.H, d.P});
  u->w2 = m2_randn(r, dt, M2_DEV_CPU, 4, (int64_t[]){d.B, d.H, d.P, d.N});
}

static void grads_of(gc_ud *u, m2_tensor *t[6], m2_tensor *g[6]) {
  for (int i = 0; i < 6; i++)
    if (t[i]) { m2_release(t[i]->grad); t[i]->grad = NULL; }
  m2_tensor *L = loss_of(t, u);
  CHECK_NOTNULL(L);
  if (L) CHECK_OK(m2_backward(L, NULL));
  m2_release(L);
  for (int i = 0; i < 6; i++) {
    g[i] = t[i] ? t[i]->grad : NULL;
    if (t[i]) t[i]->grad = NULL;
  }
}

static void test_forward_vs_naive(m2_rng *r, m2_dtype dt, dims d, bool h0, double tol) {
  m2_tensor *t[6];
  make_inputs(r, dt, d, h0, false, t);
  int64_t ny = d.B * d.T * d.H * d.P, nh = d.B * d.H * d.P * d.N;
  double *ry = malloc(sizeof(double) * ny), *rh = malloc(sizeof(double) * nh);
  naive_ssd(d, t, ry, rh);
  for (int chunked = 0; chunked < 2; chunked++) {
    m2_ssd_opts o = {chunked ? 4 : 0};
    m2_tensor *y = NULL, *hT = NULL;
    CHECK_OK((chunked ? m2_ssd_chunked : m2_ssd)(t[X], t[DT], t[A], t[BM], t[CM], t[H0], &o, &y, &hT));
    if (y && hT) {
      double m1, m2v;
      double e1 = max_abs_diff_host(y, ry, ny, &m1), e2 = max_abs_diff_host(hT, rh, nh, &m2v);
      CHECK(y->dtype == dt && hT->dtype == dt, "output dtype");
      CHECK(e1 <= tol * (1 + m1), "%s %s T=%lld G=%lld: y differs from the naive loop by %g",
            chunked ? "chunked" : "recurrent", m2_dtype_name(dt), (long long)d.T, (long long)d.G, e1);
      CHECK(e2 <= tol * (1 + m2v), "%s %s: hT differs from the naive loop by %g", chunked ? "chunked" : "recurrent",
            m2_dtype_name(dt), e2);
    }
    m2_release(y), m2_release(hT);
  }
  free(ry), free(rh);
  release_all(t, 6);
}

static void test_chunked_equals_recurrent(m2_rng *r, dims d, int chunk, bool h0) {
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, h0, true, t);
  gc_ud ur = {false, {0}, 0}, uc = {true, {chunk}, 0};
  make_weights(r, d, M2_F64, &ur);
  uc.w1 = ur.w1, uc.w2 = ur.w2;
  m2_tensor *y1 = NULL, *h1 = NULL, *y2 = NULL, *h2 = NULL;
  CHECK_OK(m2_ssd(t[0], t[1], t[2], t[3], t[4], t[5], &ur.opts, &y1, &h1));
  CHECK_OK(m2_ssd_chunked(t[0], t[1], t[2], t[3], t[4], t[5], &uc.opts, &y2, &h2));
  if (y1 && y2) {
    double ey = max_rel_diff(y2, y1), eh = max_rel_diff(h2, h1);
    CHECK(ey < 1e-10 && eh < 1e-10, "chunked vs recurrent T=%lld chunk=%d: y %g hT %g", (long long)d.T, chunk, ey, eh);
  }
  m2_release(y1), m2_release(h1), m2_release(y2), m2_release(h2);
  m2_tensor *g1[6], *g2[6];
  grads_of(&ur, t, g1);
  grads_of(&uc, t, g2);
  static const char *nm[6] = {"x", "dt", "A", "Bm", "Cm", "h0"};
  for (int i = 0; i < 6; i++) {
    if (!t[i]) continue;
    CHECK(g1[i] && g2[i], "gradient of %s missing", nm[i]);
    if (g1[i] && g2[i]) {
      double e = max_rel_diff(g2[i], g1[i]);
      CHECK(e < 1e-10, "chunked vs recurrent T=%lld chunk=%d: d%s differs by %g", (long long)d.T, chunk, nm[i], e);
    }
  }
  release_all(g1, 6), release_all(g2, 6);
  m2_release(ur.w1), m2_release(ur.w2);
  release_all(t, 6);
}

static void test_gradcheck(m2_rng *r, dims d, bool chunked, int chunk, bool h0) {
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, h0, true, t);
  gc_ud u = {chunked, {chunk}, 0};
  make_weights(r, d, M2_F64, &u);
  double err = 0;
  CHECK_OK(m2_gradcheck(loss_of, &u, 6, t, NULL, &err));
  CHECK(err <= 1, "gradcheck %s T=%lld G=%lld: worst ratio %g", chunked ? "chunked" : "recurrent", (long long)d.T,
        (long long)d.G, err);
  m2_release(u.w1), m2_release(u.w2);
  release_all(t, 6);
}

static void test_f32(m2_rng *r, dims d) {
  m2_tensor *t[6], *t32[6];
  make_inputs(r, M2_F64, d, true, true, t);
  for (int i = 0; i < 6; i++) {
    t32[i] = m2_clone_raw(t[i], M2_F32, M2_DEV_CPU);
    m2_requires_grad_(t32[i], true);
  }
  gc_ud u = {true, {8}, 0}, u32 = {true, {8}, 0};
  make_weights(r, d, M2_F64, &u);
  u32.w1 = m2_clone_raw(u.w1, M2_F32, M2_DEV_CPU), u32.w2 = m2_clone_raw(u.w2, M2_F32, M2_DEV_CPU);
  m2_tensor *g64[6], *g32[6];
  grads_of(&u, t, g64);
  grads_of(&u32, t32, g32);
  for (int i = 0; i < 6; i++) {
    CHECK(g32[i] && g32[i]->dtype == M2_F32, "F32 gradient %d has dtype f32", i);
    if (g32[i] && g64[i]) {
      double e = max_rel_diff(g32[i], g64[i]);
      CHECK(e < 1e-4, "F32 gradient %d differs from F64 by %g", i, e);
    }
  }
  release_all(g64, 6), release_all(g32, 6);
  m2_release(u.w1), m2_release(u.w2), m2_release(u32.w1), m2_release(u32.w2);
  release_all(t, 6), release_all(t32, 6);
}

static void test_errors(m2_rng *r) {
  dims d = {2, 5, 4, 3, 2, 4};
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, true, false, t);
  m2_tensor *y = NULL, *hT = NULL;
  m2_tensor *dt_bad = m2_zeros(M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 3});
  m2_tensor *A_bad = m2_zeros(M2_F64, M2_DEV_CPU, 1, (int64_t[]){2});
  m2_tensor *B_g3 = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 5, 3, 4});
  m2_tensor *C_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 5, 2, 5});
  m2_tensor *B_t = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 6, 2, 4});
  m2_tensor *h_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 4, 4, 3});
  m2_tensor *x3 = m2_zeros(M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 12});
  m2_tensor *dt32 = m2_clone_raw(t[DT], M2_F32, M2_DEV_CPU);
  for (int chunked = 0; chunked < 2; chunked++) {
    m2_status (*f)(m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, const m2_ssd_opts *,
                   m2_tensor **, m2_tensor **) = chunked ? m2_ssd_chunked : m2_ssd;
    CHECK_FAILS(f(t[X], dt_bad, t[A], t[BM], t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "dt has shape");
    CHECK_FAILS(f(t[X], t[DT], A_bad, t[BM], t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "A has shape");
    CHECK_FAILS(f(t[X], t[DT], t[A], B_g3, B_g3, t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "must divide");
    CHECK_FAILS(f(t[X], t[DT], t[A], t[BM], C_bad, t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "Cm has shape");
    CHECK_FAILS(f(t[X], t[DT], t[A], B_t, t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "Bm has shape");
    CHECK_FAILS(f(t[X], t[DT], t[A], t[BM], t[CM], h_bad, NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "h0 has shape");
    CHECK_FAILS(f(x3, t[DT], t[A], t[BM], t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_SHAPE, "4 dims");
    CHECK_FAILS(f(t[X], dt32, t[A], t[BM], t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_DTYPE, "dtypes differ");
    CHECK_FAILS(f(t[X], t[DT], NULL, t[BM], t[CM], t[H0], NULL, &y, &hT) != M2_OK, M2_ERR_VALUE, "A is NULL");
    CHECK_FAILS(f(t[X], t[DT], t[A], t[BM], t[CM], t[H0], &(m2_ssd_opts){-1}, &y, &hT) != M2_OK, M2_ERR_VALUE, "chunk");
  }
  m2_release(dt_bad), m2_release(A_bad), m2_release(B_g3), m2_release(C_bad), m2_release(B_t), m2_release(h_bad);
  m2_release(x3), m2_release(dt32);
  release_all(t, 6);
}

static void bench(m2_rng *r, dims d, int reps) {
  m2_tensor *t[6];
  make_inputs(r, M2_F32, d, true, true, t);
  gc_ud u = {false, {0}, 0};
  make_weights(r, d, M2_F32, &u);
  for (int chunked = 0; chunked < 2; chunked++) {
    u.chunked = chunked;
    double tf = 0, tb = 0;
    for (int k = 0; k < reps; k++) {
      for (int i = 0; i < 6; i++) { m2_release(t[i]->grad); t[i]->grad = NULL; }
      double t0 = now();
      m2_tensor *L = loss_of(t, &u);
      double t1 = now();
      CHECK_OK(m2_backward(L, NULL));
      double t2 = now();
      m2_release(L);
      tf += t1 - t0, tb += t2 - t1;
    }
    printf("ssd%s f32 B=%lld T=%lld H=%lld P=%lld G=%lld N=%lld: forward %.1f ms, backward %.1f ms\n",
           chunked ? "_chunked" : "", (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.P, (long long)d.G,
           (long long)d.N, 1e3 * tf / reps, 1e3 * tb / reps);
  }
  m2_release(u.w1), m2_release(u.w2);
  release_all(t, 6);
}

int main(void) {
  m2_rng r = m2_rng_make(11, 0);
  test_forward_vs_naive(&r, M2_F64, (dims){2, 11, 4, 3, 2, 5}, true, 1e-12);
  test_forward_vs_naive(&r, M2_F64, (dims){1, 9, 3, 4, 1, 2}, false, 1e-12);
  test_forward_vs_naive(&r, M2_F64, (dims){2, 6, 2, 2, 2, 3}, true, 1e-12); /* G = H */
  test_forward_vs_naive(&r, M2_F32, (dims){2, 11, 4, 3, 2, 5}, true, 2e-5);

  int Ts[] = {1, 3, 8, 13, 37};
  int chunks[] = {4, 8};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 2; j++)
      test_chunked_equals_recurrent(&r, (dims){2, Ts[i], 4, 3, 2, 4}, chunks[j], (i + j) % 2 == 0);
  test_chunked_equals_recurrent(&r, (dims){1, 300, 2, 4, 1, 6}, 0, true);  /* default chunk 256, T not a multiple */
  test_chunked_equals_recurrent(&r, (dims){2, 70, 2, 5, 2, 3}, 64, false);

  test_gradcheck(&r, (dims){2, 6, 4, 2, 2, 3}, false, 4, true); /* G < H; checkpoint every 4 steps */
  test_gradcheck(&r, (dims){1, 5, 2, 3, 1, 2}, false, 0, false);
  test_gradcheck(&r, (dims){2, 9, 4, 2, 2, 3}, true, 4, true);
  test_f32(&r, (dims){2, 19, 4, 5, 2, 4});
  test_errors(&r);
  bench(&r, (dims){64, 64, 2, 32, 1, 32}, 2);
  if (getenv("M2_BENCH")) bench(&r, (dims){64, 256, 4, 64, 1, 64}, 1);

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ssd");
}
