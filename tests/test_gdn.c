/* test_gdn.c — Gated DeltaNet: recurrent op vs a naive loop, chunked == recurrent (values and
 * gradients, T not a multiple of the chunk, small chunks), gradcheck of every input incl. h0,
 * beta in (0, 2), F32, shape/dtype errors, timings at a training-loop size. */
#include "check.h"
#include <string.h>
#include <time.h>

enum { Q, KK, VV, G, BETA, H0 };

typedef struct dims { int64_t B, T, H, K, V; } dims;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: steadier on a shared machine */
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* q, k: unit rows (exactly, as the L2 norm would give up to its eps); v ~ N(0,1); g = -0.5 softplus(z) < 0; beta = 2 sigmoid(z) in (0, 2); h0 ~ N(0, 0.25). */
static void make_inputs(m2_rng *r, m2_dtype dt, dims d, bool with_h0, bool grad, m2_tensor *t[6]) {
  int64_t nqk = d.B * d.T * d.H * d.K, nv = d.B * d.T * d.H * d.V, ng = d.B * d.T * d.H, nh = d.B * d.H * d.K * d.V;
  int64_t sq[4] = {d.B, d.T, d.H, d.K}, sv[4] = {d.B, d.T, d.H, d.V}, sg[3] = {d.B, d.T, d.H}, sh[4] = {d.B, d.H, d.K, d.V};
  double *buf = malloc(sizeof(double) * (size_t)(nqk > nv ? (nqk > nh ? nqk : nh) : (nv > nh ? nv : nh)));
  for (int w = 0; w < 2; w++) { /* q, k */
    m2_tensor *z = m2_randn(r, M2_F64, M2_DEV_CPU, 4, sq);
    m2_to_host(z, M2_F64, buf);
    m2_release(z);
    for (int64_t i = 0; i < nqk; i += d.K) {
      double n = 0;
      for (int64_t j = 0; j < d.K; j++) n += buf[i + j] * buf[i + j];
      for (int64_t j = 0; j < d.K; j++) buf[i + j] /= sqrt(n);
    }
    t[w] = m2_from_data(M2_F64, M2_DEV_CPU, 4, sq, buf);
  }
  m2_tensor *z = m2_randn(r, M2_F64, M2_DEV_CPU, 4, sv);
  t[VV] = z;
  z = m2_randn(r, M2_F64, M2_DEV_CPU, 3, sg);
  m2_to_host(z, M2_F64, buf);
  m2_release(z);
  for (int64_t i = 0; i < ng; i++) buf[i] = -0.5 * log1p(exp(buf[i]));
  t[G] = m2_from_data(M2_F64, M2_DEV_CPU, 3, sg, buf);
  z = m2_randn(r, M2_F64, M2_DEV_CPU, 3, sg);
  m2_to_host(z, M2_F64, buf);
  m2_release(z);
  for (int64_t i = 0; i < ng; i++) buf[i] = 2.0 / (1.0 + exp(-buf[i]));
  t[BETA] = m2_from_data(M2_F64, M2_DEV_CPU, 3, sg, buf);
  t[H0] = NULL;
  if (with_h0) {
    z = m2_randn(r, M2_F64, M2_DEV_CPU, 4, sh);
    t[H0] = m2_clone_raw(z, M2_F64, M2_DEV_CPU);
    m2_release(z);
    m2_to_host(t[H0], M2_F64, buf);
    for (int64_t i = 0; i < nh; i++) buf[i] *= 0.5;
    m2_release(t[H0]);
    t[H0] = m2_from_data(M2_F64, M2_DEV_CPU, 4, sh, buf);
  }
  free(buf);
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

/* The recurrence written out literally, in double: o (B,T,H,V), hT (B,H,K,V). */
static void naive_gdn(dims d, m2_tensor *const t[6], double scale, double *o, double *hT) {
  int64_t B = d.B, T = d.T, H = d.H, K = d.K, V = d.V;
  double *q = malloc(sizeof(double) * B * T * H * K), *k = malloc(sizeof(double) * B * T * H * K);
  double *v = malloc(sizeof(double) * B * T * H * V), *g = malloc(sizeof(double) * B * T * H);
  double *be = malloc(sizeof(double) * B * T * H), *S = malloc(sizeof(double) * K * V);
  double *kS = malloc(sizeof(double) * V), *h0 = malloc(sizeof(double) * B * H * K * V);
  m2_to_host(t[Q], M2_F64, q);
  m2_to_host(t[KK], M2_F64, k);
  m2_to_host(t[VV], M2_F64, v);
  m2_to_host(t[G], M2_F64, g);
  m2_to_host(t[BETA], M2_F64, be);
  if (t[H0]) m2_to_host(t[H0], M2_F64, h0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < V; j++) S[i * V + j] = t[H0] ? h0[((b * H + h) * K + i) * V + j] : 0;
      for (int64_t s = 0; s < T; s++) {
        int64_t r = (b * T + s) * H + h;
        for (int64_t i = 0; i < K * V; i++) S[i] *= exp(g[r]);
        for (int64_t j = 0; j < V; j++) {
          kS[j] = 0;
          for (int64_t i = 0; i < K; i++) kS[j] += S[i * V + j] * k[r * K + i];
        }
        for (int64_t i = 0; i < K; i++)
          for (int64_t j = 0; j < V; j++) S[i * V + j] += k[r * K + i] * be[r] * (v[r * V + j] - kS[j]);
        for (int64_t j = 0; j < V; j++) {
          double acc = 0;
          for (int64_t i = 0; i < K; i++) acc += S[i * V + j] * q[r * K + i] * scale;
          o[r * V + j] = acc;
        }
      }
      memcpy(hT + (b * H + h) * K * V, S, sizeof(double) * K * V);
    }
  free(q), free(k), free(v), free(g), free(be), free(S), free(kS), free(h0);
}

static double max_abs_diff_host(const m2_tensor *a, const double *ref, int64_t n, double *refmax) {
  double *x = malloc(sizeof(double) * (size_t)n), m = 0, rm = 0;
  m2_to_host(a, M2_F64, x);
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

/* L = sum(o * w1) + sum(hT * w2), so both outputs feed the gradient */
typedef struct gc_ud {
  bool chunked;
  m2_gdn_opts opts;
  m2_tensor *w1, *w2;
} gc_ud;

static m2_tensor *loss_of(m2_tensor *const *in, void *p) {
  gc_ud *u = p;
  m2_tensor *o = NULL, *hT = NULL;
  m2_status s = (u->chunked ? m2_gdn_chunked : m2_gdn)(in[0], in[1], in[2], in[3], in[4], in[5], &u->opts, &o, &hT);
  if (s != M2_OK) return NULL;
  m2_tensor *a = m2_mul(o, u->w1), *b = m2_mul(hT, u->w2), *sa = m2_sum_all(a), *sb = m2_sum_all(b);
  m2_tensor *L = m2_add(sa, sb);
  m2_release(o), m2_release(hT), m2_release(a), m2_release(b), m2_release(sa), m2_release(sb);
  return L;
}

static void make_weights(m2_rng *r, dims d, m2_dtype dt, gc_ud *u) {
  u->w1 = m2_randn(r, dt, M2_DEV_CPU, 4, (int64_t[]){d.B, d.T, d.H, d.V});
  u->w2 = m2_randn(r, dt, M2_DEV_CPU, 4, (int64_t[]){d.B, d.H, d.K, d.V});
}

/* Gradients of L for the inputs (new refs in g[6]; NULL where an input is absent). */
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
  int64_t no = d.B * d.T * d.H * d.V, nh = d.B * d.H * d.K * d.V;
  double *ro = malloc(sizeof(double) * no), *rh = malloc(sizeof(double) * nh);
  double scale = 0.7;
  naive_gdn(d, t, scale, ro, rh);
  for (int chunked = 0; chunked < 2; chunked++) {
    m2_gdn_opts o = {scale, chunked ? 4 : 0};
    m2_tensor *out = NULL, *hT = NULL;
    CHECK_OK((chunked ? m2_gdn_chunked : m2_gdn)(t[Q], t[KK], t[VV], t[G], t[BETA], t[H0], &o, &out, &hT));
    if (out && hT) {
      double m1, m2v;
      double e1 = max_abs_diff_host(out, ro, no, &m1), e2 = max_abs_diff_host(hT, rh, nh, &m2v);
      CHECK(out->dtype == dt && hT->dtype == dt, "output dtype");
      CHECK(e1 <= tol * (1 + m1), "%s %s T=%lld: o differs from the naive loop by %g", chunked ? "chunked" : "recurrent",
            m2_dtype_name(dt), (long long)d.T, e1);
      CHECK(e2 <= tol * (1 + m2v), "%s %s: hT differs from the naive loop by %g", chunked ? "chunked" : "recurrent",
            m2_dtype_name(dt), e2);
    }
    m2_release(out), m2_release(hT);
  }
  free(ro), free(rh);
  release_all(t, 6);
}

/* chunked == recurrent in F64, forward and all gradients */
static void test_chunked_equals_recurrent(m2_rng *r, dims d, int chunk, bool h0) {
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, h0, true, t);
  gc_ud ur = {false, {0, 0}, 0}, uc = {true, {0, chunk}, 0};
  make_weights(r, d, M2_F64, &ur);
  uc.w1 = ur.w1, uc.w2 = ur.w2;
  m2_tensor *o1 = NULL, *h1 = NULL, *o2 = NULL, *h2 = NULL;
  CHECK_OK(m2_gdn(t[0], t[1], t[2], t[3], t[4], t[5], &ur.opts, &o1, &h1));
  CHECK_OK(m2_gdn_chunked(t[0], t[1], t[2], t[3], t[4], t[5], &uc.opts, &o2, &h2));
  if (o1 && o2) {
    double eo = max_rel_diff(o2, o1), eh = max_rel_diff(h2, h1);
    CHECK(eo < 1e-10 && eh < 1e-10, "chunked vs recurrent T=%lld chunk=%d: o %g hT %g", (long long)d.T, chunk, eo, eh);
  }
  m2_release(o1), m2_release(h1), m2_release(o2), m2_release(h2);
  m2_tensor *g1[6], *g2[6];
  grads_of(&ur, t, g1);
  grads_of(&uc, t, g2);
  static const char *nm[6] = {"q", "k", "v", "g", "beta", "h0"};
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
  gc_ud u = {chunked, {0, chunk}, 0};
  make_weights(r, d, M2_F64, &u);
  double err = 0;
  CHECK_OK(m2_gradcheck(loss_of, &u, 6, t, NULL, &err));
  CHECK(err <= 1, "gradcheck %s T=%lld: worst ratio %g", chunked ? "chunked" : "recurrent", (long long)d.T, err);
  m2_release(u.w1), m2_release(u.w2);
  release_all(t, 6);
}

/* F32 forward and gradients agree with F64 */
static void test_f32(m2_rng *r, dims d) {
  m2_tensor *t[6], *t32[6];
  make_inputs(r, M2_F64, d, true, true, t);
  for (int i = 0; i < 6; i++) {
    t32[i] = m2_clone_raw(t[i], M2_F32, M2_DEV_CPU);
    m2_requires_grad_(t32[i], true);
  }
  gc_ud u = {true, {0, 8}, 0}, u32 = {true, {0, 8}, 0};
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

/* beta = 2 with unit keys makes (I - beta k k^T) a reflection (eigenvalue -1): the state norm is
 * preserved without decay, so nothing blows up over a long sequence; and it matches the naive loop. */
static void test_reflection(m2_rng *r) {
  dims d = {1, 200, 1, 4, 3};
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, true, false, t);
  m2_tensor *g0 = m2_zeros(M2_F64, M2_DEV_CPU, 3, (int64_t[]){1, 200, 1});
  m2_tensor *b2 = m2_full(M2_F64, M2_DEV_CPU, 3, (int64_t[]){1, 200, 1}, 2.0);
  m2_tensor *v0 = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){1, 200, 1, 3});
  m2_tensor *hT = NULL, *o = NULL, *hc = NULL, *oc = NULL;
  CHECK_OK(m2_gdn(t[Q], t[KK], v0, g0, b2, t[H0], NULL, &o, &hT));
  CHECK_OK(m2_gdn_chunked(t[Q], t[KK], v0, g0, b2, t[H0], &(m2_gdn_opts){0, 16}, &oc, &hc));
  double a[12], b[12], na = 0, nb = 0;
  m2_to_host(t[H0], M2_F64, a);
  if (hT) m2_to_host(hT, M2_F64, b);
  for (int i = 0; i < 12; i++) na += a[i] * a[i], nb += b[i] * b[i];
  CHECK_CLOSE(nb, na, 1e-10, 1e-10, "reflections keep the state norm");
  if (hc && hT) CHECK(max_rel_diff(hc, hT) < 1e-9, "chunked with beta = 2: %g", max_rel_diff(hc, hT));
  m2_release(o), m2_release(hT), m2_release(oc), m2_release(hc);
  m2_release(g0), m2_release(b2), m2_release(v0);
  release_all(t, 6);
}

static void test_errors(m2_rng *r) {
  dims d = {2, 5, 2, 3, 4};
  m2_tensor *t[6];
  make_inputs(r, M2_F64, d, true, false, t);
  m2_tensor *o = NULL, *hT = NULL;
  m2_tensor *k_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 5, 2, 4});
  m2_tensor *v_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 6, 2, 4});
  m2_tensor *g_bad = m2_zeros(M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 3});
  m2_tensor *b_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 5, 2, 1});
  m2_tensor *h_bad = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 2, 4, 3});
  m2_tensor *q3 = m2_zeros(M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 6});
  m2_tensor *k32 = m2_clone_raw(t[KK], M2_F32, M2_DEV_CPU);
  m2_tensor *kint = m2_zeros(M2_I64, M2_DEV_CPU, 4, (int64_t[]){2, 5, 2, 3});
  for (int chunked = 0; chunked < 2; chunked++) {
    m2_status (*f)(m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, const m2_gdn_opts *,
                   m2_tensor **, m2_tensor **) = chunked ? m2_gdn_chunked : m2_gdn;
    CHECK_FAILS(f(t[Q], k_bad, t[VV], t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "k has shape");
    CHECK_FAILS(f(t[Q], t[KK], v_bad, t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "v has shape");
    CHECK_FAILS(f(t[Q], t[KK], t[VV], g_bad, t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "g has shape");
    CHECK_FAILS(f(t[Q], t[KK], t[VV], t[G], b_bad, t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "beta has shape");
    CHECK_FAILS(f(t[Q], t[KK], t[VV], t[G], t[BETA], h_bad, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "h0 has shape");
    CHECK_FAILS(f(q3, t[KK], t[VV], t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "4 dims");
    CHECK_FAILS(f(t[Q], k32, t[VV], t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "dtypes differ");
    CHECK_FAILS(f(t[Q], kint, t[VV], t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "float");
    CHECK_FAILS(f(NULL, t[KK], t[VV], t[G], t[BETA], t[H0], NULL, &o, &hT) != M2_OK, M2_ERR_VALUE, "q is NULL");
    CHECK_FAILS(f(t[Q], t[KK], t[VV], t[G], t[BETA], t[H0], &(m2_gdn_opts){0, -2}, &o, &hT) != M2_OK, M2_ERR_VALUE,
                "chunk");
  }
  m2_release(k_bad), m2_release(v_bad), m2_release(g_bad), m2_release(b_bad), m2_release(h_bad);
  m2_release(q3), m2_release(k32), m2_release(kint);
  /* T = 0: no output rows, hT = h0 */
  dims d0 = {2, 0, 2, 3, 4};
  m2_tensor *z[6];
  make_inputs(r, M2_F64, d0, false, false, z);
  CHECK_OK(m2_gdn_chunked(z[Q], z[KK], z[VV], z[G], z[BETA], t[H0], NULL, &o, &hT));
  if (hT) CHECK(max_rel_diff(hT, t[H0]) == 0, "T = 0 keeps h0");
  m2_release(o), m2_release(hT);
  release_all(z, 6);
  release_all(t, 6);
}

static void bench(m2_rng *r, dims d, int reps) {
  m2_tensor *t[6];
  make_inputs(r, M2_F32, d, true, true, t);
  gc_ud u = {false, {0, 64}, 0};
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
    printf("gdn%s f32 B=%lld T=%lld H=%lld K=%lld V=%lld: forward %.1f ms, backward %.1f ms\n", chunked ? "_chunked" : "",
           (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.K, (long long)d.V, 1e3 * tf / reps,
           1e3 * tb / reps);
  }
  m2_release(u.w1), m2_release(u.w2);
  release_all(t, 6);
}

int main(void) {
  m2_rng r = m2_rng_make(7, 0);
  test_forward_vs_naive(&r, M2_F64, (dims){2, 11, 2, 5, 3}, true, 1e-12);
  test_forward_vs_naive(&r, M2_F64, (dims){1, 9, 3, 4, 6}, false, 1e-12);
  test_forward_vs_naive(&r, M2_F32, (dims){2, 11, 2, 5, 3}, true, 2e-5);

  int Ts[] = {1, 3, 8, 13, 37};
  int chunks[] = {4, 8};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 2; j++) test_chunked_equals_recurrent(&r, (dims){2, Ts[i], 2, 5, 4}, chunks[j], (i + j) % 2 == 0);
  test_chunked_equals_recurrent(&r, (dims){2, 70, 2, 8, 6}, 0, true);   /* default chunk 64, T not a multiple */
  test_chunked_equals_recurrent(&r, (dims){1, 130, 1, 16, 16}, 0, false);
  test_chunked_equals_recurrent(&r, (dims){1, 64, 2, 6, 5}, 64, true);  /* exactly one chunk */

  test_gradcheck(&r, (dims){2, 6, 2, 3, 4}, false, 4, true); /* checkpoint every 4 steps: two segments */
  test_gradcheck(&r, (dims){2, 6, 2, 3, 4}, false, 0, false);
  test_gradcheck(&r, (dims){1, 11, 2, 4, 3}, true, 4, true);
  test_f32(&r, (dims){2, 19, 2, 6, 5});
  test_reflection(&r);
  test_errors(&r);
  bench(&r, (dims){64, 64, 2, 32, 32}, 2);
  if (getenv("M2_BENCH")) bench(&r, (dims){64, 256, 4, 64, 64}, 1);

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_gdn");
}
