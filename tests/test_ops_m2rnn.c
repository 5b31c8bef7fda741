/* test_ops_m2rnn.c — the M2RNN recurrence op (DESIGN 3.1):
 *   forward vs plain loops (F64 and F32, head sharing, h0, T across checkpoint boundaries,
 *   T = 1, B = 1, T = 0); gradient checks in F64 of every input; the clipped backward vs a
 *   plain-loop backward; the backward vs autograd through the per-step form built from
 *   primitive ops; error messages. M2_BENCH=1 also times forward + backward at
 *   B=64, T=128, N=8, K=32, V=16 in F32. */
#include "check.h"
#include <time.h>

typedef struct cfg {
  int64_t B, T, K, V;
  int64_t nq, nk, nv, nf, nw; /* head counts */
  bool h0;
} cfg;

static int64_t heads(const cfg *c) {
  int64_t h[5] = {c->nq, c->nk, c->nv, c->nf, c->nw}, n = 0;
  for (int i = 0; i < 5; i++) n = h[i] > n ? h[i] : n;
  return n;
}

static m2_tensor *normal(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, double std) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, nd, shape);
  m2_rng_normal_(r, t, 0, std);
  return t;
}

/* in[0..5] = q, k, v, W, f, h0 (NULL unless c->h0); f uniform in (0.05, 0.95). */
static void make_inputs(m2_rng *r, const cfg *c, m2_dtype dt, m2_tensor **in) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c);
  in[0] = normal(r, dt, 4, (int64_t[]){B, T, c->nq, K}, 0.5);
  in[1] = normal(r, dt, 4, (int64_t[]){B, T, c->nk, K}, 0.5);
  in[2] = normal(r, dt, 4, (int64_t[]){B, T, c->nv, V}, 1.0);
  in[3] = normal(r, dt, 3, (int64_t[]){c->nw, V, V}, 0.4);
  in[4] = m2_empty(dt, M2_DEV_CPU, 3, (int64_t[]){B, T, c->nf});
  m2_rng_uniform_(r, in[4], 0.05, 0.95);
  in[5] = c->h0 ? normal(r, dt, 4, (int64_t[]){B, N, K, V}, 0.5) : NULL;
}

static void release_all(m2_tensor **t, int n) {
  for (int i = 0; i < n; i++) { m2_release(t[i]); t[i] = NULL; }
}

static double *host(const m2_tensor *t) {
  if (!t) return NULL;
  int64_t n = m2_numel(t);
  double *p = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_to_host(t, M2_F64, p);
  return p;
}

/* max |a - b| / max(max |b|, 1e-30) over n values; NaN gives infinity */
static double rel_err(const double *a, const double *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(a[i] - b[i]);
    if (isnan(d)) return INFINITY;
    if (d > num) num = d;
    if (fabs(b[i]) > den) den = fabs(b[i]);
  }
  return num / (den > 1e-30 ? den : 1.0);
}

/* ---------------- plain-loop reference, straight from DESIGN 3.1 ---------------- */

#define IDX4(a, b, c, d, B_, C_, D_) ((((a) * (B_) + (b)) * (C_) + (c)) * (D_) + (d))

/* H (B, T+1, N, K, V): every state, H[:,0] = h0 or 0; Z (B, T, N, K, V); y (B, T, N, V). */
static void ref_forward(const cfg *c, double *const *x, double *H, double *Z, double *y) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c), KV = K * V;
  const double *q = x[0], *k = x[1], *v = x[2], *W = x[3], *f = x[4], *h0 = x[5];
  for (int64_t b = 0; b < B; b++)
    for (int64_t n = 0; n < N; n++) {
      int64_t iq = n / (N / c->nq), ik = n / (N / c->nk), iv = n / (N / c->nv), iff = n / (N / c->nf),
              iw = n / (N / c->nw);
      double *H0 = H + ((b * (T + 1) + 0) * N + n) * KV;
      for (int64_t e = 0; e < KV; e++) H0[e] = h0 ? h0[(b * N + n) * KV + e] : 0.0;
      for (int64_t t = 0; t < T; t++) {
        const double *Hp = H + ((b * (T + 1) + t) * N + n) * KV;
        double *Hn = H + ((b * (T + 1) + t + 1) * N + n) * KV, *Zt = Z + ((b * T + t) * N + n) * KV;
        double ft = f[(b * T + t) * c->nf + iff];
        for (int64_t i = 0; i < K; i++)
          for (int64_t j = 0; j < V; j++) {
            double a = k[IDX4(b, t, ik, i, T, c->nk, K)] * v[IDX4(b, t, iv, j, T, c->nv, V)];
            for (int64_t l = 0; l < V; l++) a += Hp[i * V + l] * W[(iw * V + l) * V + j];
            double z = tanh(a);
            Zt[i * V + j] = z;
            Hn[i * V + j] = ft * Hp[i * V + j] + (1 - ft) * z;
          }
        for (int64_t j = 0; j < V; j++) {
          double a = 0;
          for (int64_t i = 0; i < K; i++) a += q[IDX4(b, t, iq, i, T, c->nq, K)] * Hn[i * V + j];
          y[IDX4(b, t, n, j, T, N, V)] = a;
        }
      }
    }
}

/* g[0..5] (zeroed, layouts of q, k, v, W, f, h0) receive the gradients for output gradients dy
 * (B,T,N,V) and dhT (B,N,K,V); clip > 0 clamps the carried gradient at every step. */
static void ref_backward(const cfg *c, double *const *x, const double *H, const double *Z, const double *dy,
                         const double *dhT, double clip, double **g) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c), KV = K * V;
  const double *q = x[0], *k = x[1], *v = x[2], *W = x[3], *f = x[4];
  double *G = malloc(sizeof(double) * KV), *Gn = malloc(sizeof(double) * KV), *D = malloc(sizeof(double) * KV),
         *dX = malloc(sizeof(double) * KV);
  for (int64_t b = 0; b < B; b++)
    for (int64_t n = 0; n < N; n++) {
      int64_t iq = n / (N / c->nq), ik = n / (N / c->nk), iv = n / (N / c->nv), iff = n / (N / c->nf),
              iw = n / (N / c->nw);
      for (int64_t e = 0; e < KV; e++) G[e] = dhT[(b * N + n) * KV + e];
      for (int64_t t = T - 1; t >= 0; t--) {
        const double *Hp = H + ((b * (T + 1) + t) * N + n) * KV, *Hc = H + ((b * (T + 1) + t + 1) * N + n) * KV;
        const double *Zt = Z + ((b * T + t) * N + n) * KV;
        double ft = f[(b * T + t) * c->nf + iff];
        if (clip > 0)
          for (int64_t e = 0; e < KV; e++) G[e] = fmin(fmax(G[e], -clip), clip);
        double dft = 0;
        for (int64_t i = 0; i < K; i++)
          for (int64_t j = 0; j < V; j++) {
            double d = q[IDX4(b, t, iq, i, T, c->nq, K)] * dy[IDX4(b, t, n, j, T, N, V)] + G[i * V + j];
            D[i * V + j] = d;
            dft += d * (Hp[i * V + j] - Zt[i * V + j]);
            dX[i * V + j] = (1 - ft) * d * (1 - Zt[i * V + j] * Zt[i * V + j]);
          }
        g[4][(b * T + t) * c->nf + iff] += dft;
        for (int64_t i = 0; i < K; i++) {
          double a = 0, bk = 0;
          for (int64_t j = 0; j < V; j++) {
            a += Hc[i * V + j] * dy[IDX4(b, t, n, j, T, N, V)];
            bk += dX[i * V + j] * v[IDX4(b, t, iv, j, T, c->nv, V)];
          }
          g[0][IDX4(b, t, iq, i, T, c->nq, K)] += a;
          g[1][IDX4(b, t, ik, i, T, c->nk, K)] += bk;
        }
        for (int64_t j = 0; j < V; j++) {
          double a = 0;
          for (int64_t i = 0; i < K; i++) a += dX[i * V + j] * k[IDX4(b, t, ik, i, T, c->nk, K)];
          g[2][IDX4(b, t, iv, j, T, c->nv, V)] += a;
        }
        for (int64_t l = 0; l < V; l++)
          for (int64_t j = 0; j < V; j++) {
            double a = 0;
            for (int64_t i = 0; i < K; i++) a += Hp[i * V + l] * dX[i * V + j];
            g[3][(iw * V + l) * V + j] += a;
          }
        for (int64_t i = 0; i < K; i++)
          for (int64_t l = 0; l < V; l++) {
            double a = ft * D[i * V + l];
            for (int64_t j = 0; j < V; j++) a += dX[i * V + j] * W[(iw * V + l) * V + j];
            Gn[i * V + l] = a;
          }
        memcpy(G, Gn, sizeof(double) * KV);
      }
      if (g[5])
        for (int64_t e = 0; e < KV; e++) g[5][(b * N + n) * KV + e] = G[e];
    }
  free(G); free(Gn); free(D); free(dX);
}

/* ---------------- running the op ---------------- */

/* L = sum(y * cy) + sum(hT * ch) */
static m2_tensor *loss_of(m2_tensor *y, m2_tensor *hT, m2_tensor *cy, m2_tensor *ch) {
  m2_tensor *a = m2_mul(y, cy), *b = m2_mul(hT, ch);
  m2_tensor *sa = m2_sum_all(a), *sb = m2_sum_all(b);
  m2_tensor *L = m2_add(sa, sb);
  m2_release(a); m2_release(b); m2_release(sa); m2_release(sb);
  return L;
}

typedef struct gc_ud { m2_tensor *cy, *ch; double clip; } gc_ud;

static m2_tensor *f_m2rnn(m2_tensor *const *in, void *ud) {
  gc_ud *u = ud;
  m2_m2rnn_opts o = {u->clip};
  m2_tensor *y = NULL, *hT = NULL;
  if (m2_m2rnn(in[0], in[1], in[2], in[3], in[4], in[5], &o, &y, &hT) != M2_OK) return NULL;
  m2_tensor *L = loss_of(y, hT, u->cy, u->ch);
  m2_release(y); m2_release(hT);
  return L;
}

/* Forward vs the plain loops, and the op's backward (dy = cy, dhT = ch) vs the plain backward. */
static void check_vs_reference(m2_rng *r, const cfg *c, m2_dtype dt, double clip, const char *what) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c), KV = K * V;
  m2_tensor *in[6];
  make_inputs(r, c, dt, in);
  for (int i = 0; i < 6; i++)
    if (in[i]) m2_requires_grad_(in[i], true);
  m2_tensor *cy = normal(r, dt, 4, (int64_t[]){B, T, N, V}, 1.0), *ch = normal(r, dt, 4, (int64_t[]){B, N, K, V}, 1.0);
  m2_m2rnn_opts o = {clip};
  m2_tensor *y = NULL, *hT = NULL;
  CHECK_OK(m2_m2rnn(in[0], in[1], in[2], in[3], in[4], in[5], &o, &y, &hT));
  if (!y || !hT) { release_all(in, 6); m2_release(cy); m2_release(ch); return; }
  CHECK(y->dtype == dt && y->ndim == 4 && y->shape[0] == B && y->shape[1] == T && y->shape[2] == N && y->shape[3] == V,
        "%s: y shape", what);
  CHECK(hT->ndim == 4 && hT->shape[0] == B && hT->shape[1] == N && hT->shape[2] == K && hT->shape[3] == V,
        "%s: hT shape", what);
  double *x[6];
  for (int i = 0; i < 6; i++) x[i] = host(in[i]);
  double *H = malloc(sizeof(double) * (size_t)(B * (T + 1) * N * KV + 1));
  double *Z = malloc(sizeof(double) * (size_t)(B * T * N * KV + 1)), *yr = malloc(sizeof(double) * (size_t)(B * T * N * V + 1));
  ref_forward(c, x, H, Z, yr);
  double *hTr = malloc(sizeof(double) * (size_t)(B * N * KV));
  for (int64_t b = 0; b < B; b++)
    memcpy(hTr + b * N * KV, H + (b * (T + 1) + T) * N * KV, sizeof(double) * (size_t)(N * KV));
  double tol = dt == M2_F64 ? 1e-12 : 2e-5;
  double *yo = host(y), *ho = host(hT);
  double ey = rel_err(yo, yr, B * T * N * V), eh = rel_err(ho, hTr, B * N * KV);
  CHECK(ey <= tol, "%s: y vs reference, rel err %g", what, ey);
  CHECK(eh <= tol, "%s: hT vs reference, rel err %g", what, eh);

  /* backward */
  m2_tensor *L = loss_of(y, hT, cy, ch);
  CHECK_OK(m2_backward(L, NULL));
  double *dy = host(cy), *dh = host(ch), *g[6];
  for (int i = 0; i < 6; i++) g[i] = in[i] ? calloc((size_t)m2_numel(in[i]), sizeof(double)) : NULL;
  ref_backward(c, x, H, Z, dy, dh, clip, g);
  static const char *names[6] = {"dq", "dk", "dv", "dW", "df", "dh0"};
  double gtol = dt == M2_F64 ? 1e-11 : 1e-4;
  for (int i = 0; i < 6; i++) {
    if (!in[i]) continue;
    CHECK(in[i]->grad != NULL, "%s: %s missing", what, names[i]);
    if (!in[i]->grad) continue;
    double *go = host(in[i]->grad);
    double e = rel_err(go, g[i], m2_numel(in[i]));
    CHECK(e <= gtol, "%s: %s vs plain backward (clip %g), rel err %g", what, names[i], clip, e);
    free(go);
  }
  if (clip > 0) { /* the clipping must have mattered, or this case tests nothing */
    double *g0[6];
    for (int i = 0; i < 6; i++) g0[i] = in[i] ? calloc((size_t)m2_numel(in[i]), sizeof(double)) : NULL;
    ref_backward(c, x, H, Z, dy, dh, 0, g0);
    CHECK(rel_err(g0[3], g[3], m2_numel(in[3])) > 1e-3, "%s: clipping at %g changed nothing", what, clip);
    for (int i = 0; i < 6; i++) free(g0[i]);
  }
  for (int i = 0; i < 6; i++) { free(x[i]); free(g[i]); }
  free(H); free(Z); free(yr); free(hTr); free(yo); free(ho); free(dy); free(dh);
  m2_release(L); m2_release(y); m2_release(hT); m2_release(cy); m2_release(ch);
  release_all(in, 6);
}

/* ---------------- the per-step form built from primitive ops ---------------- */

/* x (B, nx, D) -> (B, N, D): head n reads x[:, n / (N / nx)] */
static m2_tensor *expand_heads(m2_tensor *x, int64_t N) {
  int64_t B = x->shape[0], nx = x->shape[1], D = x->shape[2];
  m2_tensor *a = m2_reshape(x, 4, (int64_t[]){B, nx, 1, D});
  m2_tensor *e = m2_expand(a, 4, (int64_t[]){B, nx, N / nx, D});
  m2_tensor *r = m2_reshape(e, 3, (int64_t[]){B, N, D});
  m2_release(a); m2_release(e);
  return r;
}

/* step t of a (B, T, nx, D) tensor as (B, N, D) */
static m2_tensor *at_step(m2_tensor *x, int64_t t, int64_t N) {
  int64_t B = x->shape[0], nx = x->shape[2], D = x->ndim == 4 ? x->shape[3] : 1; /* f (B, T, nf): D = 1 */
  m2_tensor *s = m2_narrow(x, 1, t, 1);
  m2_tensor *r = m2_reshape(s, 3, (int64_t[]){B, nx, D});
  m2_tensor *e = expand_heads(r, N);
  m2_release(s); m2_release(r);
  return e;
}

static m2_tensor *reshape4(m2_tensor *x, int64_t a, int64_t b, int64_t c, int64_t d) {
  return m2_reshape(x, 4, (int64_t[]){a, b, c, d});
}

/* L = sum_t sum(y_t * cy_t) + sum(H_T * ch), with Z = tanh(H W + k v^T), H = Z + f (H - Z), y = q^T H */
static m2_tensor *loss_by_primitives(m2_tensor *const *in, const cfg *c, m2_tensor *cy, m2_tensor *ch) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c);
  m2_tensor *W = in[3];
  m2_tensor *w4 = reshape4(W, c->nw, 1, V, V), *we = m2_expand(w4, 4, (int64_t[]){c->nw, N / c->nw, V, V});
  m2_tensor *wn = reshape4(we, 1, N, V, V), *Wb = m2_expand(wn, 4, (int64_t[]){B, N, V, V});
  m2_release(w4); m2_release(we); m2_release(wn);
  m2_tensor *H = in[5] ? (m2_retain(in[5]), in[5]) : m2_zeros(W->dtype, M2_DEV_CPU, 4, (int64_t[]){B, N, K, V});
  m2_tensor *L = m2_scalar(W->dtype, M2_DEV_CPU, 0.0);
  for (int64_t t = 0; t < T; t++) {
    m2_tensor *qt = at_step(in[0], t, N), *kt = at_step(in[1], t, N), *vt = at_step(in[2], t, N),
              *ft = at_step(in[4], t, N);
    m2_tensor *k4 = reshape4(kt, B, N, K, 1), *v4 = reshape4(vt, B, N, 1, V), *f4 = reshape4(ft, B, N, 1, 1),
              *q4 = reshape4(qt, B, N, 1, K);
    m2_tensor *X = m2_mul(k4, v4), *HW = m2_matmul(H, Wb, false, false);
    m2_tensor *pre = m2_add(HW, X), *Z = m2_tanh(pre);
    m2_tensor *dHZ = m2_sub(H, Z), *gated = m2_mul(f4, dHZ), *Hn = m2_add(Z, gated);
    m2_tensor *yt = m2_matmul(q4, Hn, false, false); /* (B, N, 1, V) */
    m2_tensor *cyt = m2_narrow(cy, 1, t, 1), *cy4 = reshape4(cyt, B, N, 1, V);
    m2_tensor *p = m2_mul(yt, cy4), *s = m2_sum_all(p), *Ln = m2_add(L, s);
    m2_tensor *tmp[] = {qt, kt, vt, ft, k4, v4, f4, q4, X, HW, pre, Z, dHZ, gated, yt, cyt, cy4, p, s, L, H};
    release_all(tmp, (int)(sizeof tmp / sizeof tmp[0]));
    H = Hn;
    L = Ln;
  }
  m2_tensor *p = m2_mul(H, ch), *s = m2_sum_all(p), *Ln = m2_add(L, s);
  m2_release(p); m2_release(s); m2_release(L); m2_release(H); m2_release(Wb);
  return Ln;
}

static void check_vs_primitives(m2_rng *r, const cfg *c, const char *what) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c);
  m2_tensor *in[6], *in2[6];
  make_inputs(r, c, M2_F64, in);
  for (int i = 0; i < 6; i++) {
    in2[i] = in[i] ? m2_clone_raw(in[i], M2_F64, M2_DEV_CPU) : NULL;
    if (in[i]) { m2_requires_grad_(in[i], true); m2_requires_grad_(in2[i], true); }
  }
  m2_tensor *cy = normal(r, M2_F64, 4, (int64_t[]){B, T, N, V}, 1.0), *ch = normal(r, M2_F64, 4, (int64_t[]){B, N, K, V}, 1.0);
  gc_ud u = {cy, ch, 0};
  m2_tensor *L1 = f_m2rnn(in, &u), *L2 = loss_by_primitives(in2, c, cy, ch);
  CHECK(L1 && L2, "%s: losses computed", what);
  if (L1 && L2) {
    double a, b;
    m2_item(L1, &a);
    m2_item(L2, &b);
    CHECK_CLOSE(a, b, 1e-11, 1e-11, "loss: op vs primitive ops");
    CHECK_OK(m2_backward(L1, NULL));
    CHECK_OK(m2_backward(L2, NULL));
    static const char *names[6] = {"dq", "dk", "dv", "dW", "df", "dh0"};
    for (int i = 0; i < 6; i++) {
      if (!in[i]) continue;
      bool have = in[i]->grad && in2[i]->grad;
      CHECK(have, "%s: %s missing", what, names[i]);
      if (have) {
        double e = max_rel_diff(in[i]->grad, in2[i]->grad);
        CHECK(e <= 1e-11, "%s: %s op vs autograd through primitives, rel err %g", what, names[i], e);
      }
    }
  }
  m2_release(L1); m2_release(L2); m2_release(cy); m2_release(ch);
  release_all(in, 6);
  release_all(in2, 6);
}

/* ---------------- gradient checks ---------------- */

static void gradcheck_cfg(m2_rng *r, const cfg *c, int max_checks, const char *what) {
  int64_t B = c->B, T = c->T, K = c->K, V = c->V, N = heads(c);
  m2_tensor *in[6];
  make_inputs(r, c, M2_F64, in);
  for (int i = 0; i < 6; i++)
    if (in[i]) m2_requires_grad_(in[i], true);
  gc_ud u = {normal(r, M2_F64, 4, (int64_t[]){B, T, N, V}, 1.0), normal(r, M2_F64, 4, (int64_t[]){B, N, K, V}, 1.0), 0};
  m2_gradcheck_opts o = {.eps = 1e-6, .atol = 1e-7, .rtol = 1e-5, .seed = 99, .max_checks = max_checks};
  double err = 0;
  CHECK(m2_gradcheck(f_m2rnn, &u, 6, in, &o, &err) == M2_OK, "gradcheck %s (worst ratio %g)", what, err);
  m2_release(u.cy); m2_release(u.ch);
  release_all(in, 6);
}

/* ---------------- errors ---------------- */

static m2_status call(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *W, m2_tensor *f, m2_tensor *h0) {
  m2_tensor *y = NULL, *hT = NULL;
  m2_status s = m2_m2rnn(q, k, v, W, f, h0, NULL, &y, &hT);
  m2_release(y); m2_release(hT);
  return s;
}

static void check_errors(m2_rng *r) {
  m2_dtype d = M2_F64;
  m2_tensor *q = normal(r, d, 4, (int64_t[]){2, 5, 1, 4}, 1), *k = normal(r, d, 4, (int64_t[]){2, 5, 1, 4}, 1);
  m2_tensor *v = normal(r, d, 4, (int64_t[]){2, 5, 3, 6}, 1), *W = normal(r, d, 3, (int64_t[]){3, 6, 6}, 1);
  m2_tensor *f = normal(r, d, 3, (int64_t[]){2, 5, 3}, 1), *h0 = normal(r, d, 4, (int64_t[]){2, 3, 4, 6}, 1);
  CHECK_OK(call(q, k, v, W, f, h0)); /* the valid baseline */
  m2_tensor *t[16] = {0};
  int nt = 0;
#define T_(...) (t[nt++] = normal(r, d, __VA_ARGS__, 1))
  /* head counts that do not divide N */
  CHECK_FAILS(call(T_(4, (int64_t[]){2, 5, 2, 4}), k, v, W, f, h0) != M2_OK, M2_ERR_SHAPE,
              "every head count must divide N = max(Nq, Nk, Nv, Nw, Nf) = 3, but Nq = 2");
  CHECK_FAILS(call(q, k, v, T_(3, (int64_t[]){2, 6, 6}), f, h0) != M2_OK, M2_ERR_SHAPE, "but Nw = 2");
  /* K or V of 0 */
  m2_tensor *q0 = m2_zeros(d, M2_DEV_CPU, 4, (int64_t[]){2, 5, 1, 0}), *k0 = m2_zeros(d, M2_DEV_CPU, 4, (int64_t[]){2, 5, 1, 0});
  m2_tensor *v0 = m2_zeros(d, M2_DEV_CPU, 4, (int64_t[]){2, 5, 3, 0}), *W0 = m2_zeros(d, M2_DEV_CPU, 3, (int64_t[]){3, 0, 0});
  CHECK_FAILS(call(q0, k0, v, W, f, NULL) != M2_OK, M2_ERR_SHAPE,
              "K and V must be positive, got K = 0 (q (2, 5, 1, 0)) and V = 6");
  CHECK_FAILS(call(q, k, v0, W0, f, NULL) != M2_OK, M2_ERR_SHAPE, "got K = 4 (q (2, 5, 1, 4)) and V = 0 (v (2, 5, 3, 0))");
  /* h0 of the wrong shape */
  CHECK_FAILS(call(q, k, v, W, f, T_(4, (int64_t[]){2, 3, 6, 4})) != M2_OK, M2_ERR_SHAPE,
              "h0 must be (B, N, K, V) = (2, 3, 4, 6), got (2, 3, 6, 4)");
  CHECK_FAILS(call(q, k, v, W, f, T_(3, (int64_t[]){2, 3, 4})) != M2_OK, M2_ERR_SHAPE,
              "h0 must be (B, N, K, V), got shape (2, 3, 4)");
  /* mismatched B / T */
  CHECK_FAILS(call(q, T_(4, (int64_t[]){3, 5, 1, 4}), v, W, f, h0) != M2_OK, M2_ERR_SHAPE,
              "k (3, 5, 1, 4) and q (2, 5, 1, 4) disagree on (B, T)");
  CHECK_FAILS(call(q, k, v, W, T_(3, (int64_t[]){2, 6, 3}), h0) != M2_OK, M2_ERR_SHAPE,
              "f (2, 6, 3) and q (2, 5, 1, 4) disagree on (B, T)");
  CHECK_FAILS(call(q, k, T_(4, (int64_t[]){2, 4, 3, 6}), W, f, h0) != M2_OK, M2_ERR_SHAPE, "v (2, 4, 3, 6) and q");
  /* K and V that disagree */
  CHECK_FAILS(call(q, T_(4, (int64_t[]){2, 5, 1, 5}), v, W, f, h0) != M2_OK, M2_ERR_SHAPE,
              "q (2, 5, 1, 4) and k (2, 5, 1, 5) disagree on K");
  CHECK_FAILS(call(q, k, v, T_(3, (int64_t[]){3, 6, 5}), f, h0) != M2_OK, M2_ERR_SHAPE,
              "W must be (Nw, V, V) with V = 6 from v (2, 5, 3, 6), got W (3, 6, 5)");
  /* ranks, dtypes, missing inputs */
  CHECK_FAILS(call(q, k, v, W, T_(2, (int64_t[]){2, 5}), h0) != M2_OK, M2_ERR_SHAPE, "f must be (B, T, Nf), got shape (2, 5)");
  m2_tensor *f32 = m2_clone_raw(f, M2_F32, M2_DEV_CPU), *fi = m2_zeros(M2_I64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 3});
  CHECK_FAILS(call(q, k, v, W, f32, h0) != M2_OK, M2_ERR_DTYPE, "f is f32 but q is f64");
  CHECK_FAILS(call(q, k, v, W, fi, h0) != M2_OK, M2_ERR_DTYPE, "f must be a float tensor");
  CHECK_FAILS(call(q, k, v, NULL, f, h0) != M2_OK, M2_ERR_VALUE, "W (Nw, V, V) is required");
#undef T_
  release_all(t, nt);
  m2_tensor *rest[] = {q, k, v, W, f, h0, q0, k0, v0, W0, f32, fi};
  release_all(rest, (int)(sizeof rest / sizeof rest[0]));
}

/* ---------------- benchmark (M2_BENCH=1) ---------------- */

/* A tensor with batch rows 0 and 1 first: *nan0 = NaN values in row 0, *fin1 = finite values in row 1 (of *half). */
static void nan_rows(const m2_tensor *t, int64_t *nan0, int64_t *fin1, int64_t *half) {
  double *p = host(t);
  int64_t h = m2_numel(t) / 2;
  *nan0 = *fin1 = 0;
  for (int64_t i = 0; i < h; i++) {
    *nan0 += isnan(p[i]);
    *fin1 += isfinite(p[h + i]);
  }
  *half = h;
  free(p);
}

/* A NaN in q, k, v, W or f comes out as NaN in y and (but q's) hT (the tanh must not clamp it to +-1: a finite, wrong
 * output) and stays in its batch row (W is shared by both rows). */
static void check_nan_propagates(m2_rng *r) {
  static const char *const nm[5] = {"q", "k", "v", "W", "f"};
  cfg c = {2, 3, 3, 4, 1, 1, 1, 1, 1, true};
  for (int d = 0; d < 2; d++) {
    m2_dtype dt = d ? M2_F32 : M2_F64;
    for (int which = 0; which < 5; which++) {
      m2_tensor *in[6];
      make_inputs(r, &c, dt, in);
      int64_t at[4] = {0, 0, 0, 1}; /* batch row 0, step 0, head 0 (W: head 0, element (0, 1)) */
      CHECK_OK(m2_set(in[which], which == 3 ? at + 1 : at, NAN));
      m2_tensor *y = NULL, *hT = NULL;
      CHECK_OK(m2_m2rnn(in[0], in[1], in[2], in[3], in[4], in[5], NULL, &y, &hT));
      if (y && hT) {
        int64_t ny, fy, hy, nh, fh, hh;
        nan_rows(y, &ny, &fy, &hy);
        nan_rows(hT, &nh, &fh, &hh);
        CHECK(ny > 0 && (nh > 0 || which == 0), "NaN in %s (%s): row 0 of y has %lld NaN, of hT %lld", nm[which], m2_dtype_name(dt),
              (long long)ny, (long long)nh);
        CHECK(which == 3 || (fy == hy && fh == hh), "NaN in %s (%s): row 1 has %lld of %lld y and %lld of %lld hT "
              "finite", nm[which], m2_dtype_name(dt), (long long)fy, (long long)hy, (long long)fh, (long long)hh);
      }
      m2_release(y); m2_release(hT);
      release_all(in, 6);
    }
  }
}

static double now(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench(void) {
  cfg c = {64, 128, 32, 16, 8, 8, 8, 8, 8, false};
  m2_rng r = m2_rng_make(5, 0);
  m2_tensor *in[6];
  make_inputs(&r, &c, M2_F32, in);
  for (int i = 0; i < 5; i++) m2_requires_grad_(in[i], true);
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    m2_tensor *y = NULL, *hT = NULL;
    m2_m2rnn(in[0], in[1], in[2], in[3], in[4], NULL, NULL, &y, &hT);
    double t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    m2_tensor *L = m2_sum_all(y);
    double t2 = now(CLOCK_MONOTONIC), c2 = now(CLOCK_PROCESS_CPUTIME_ID);
    m2_backward(L, NULL);
    double t3 = now(CLOCK_MONOTONIC), c3 = now(CLOCK_PROCESS_CPUTIME_ID);
    printf("bench m2rnn f32 B=64 T=128 N=8 K=32 V=16: forward %.3f s, backward %.3f s, total %.3f s wall "
           "(%.3f s cpu over all threads)\n",
           t1 - t0, t3 - t2, t1 - t0 + t3 - t2, c1 - c0 + c3 - c2);
    m2_release(y); m2_release(hT); m2_release(L);
  }
  release_all(in, 6);
}

int main(void) {
  m2_rng r = m2_rng_make(2026, 0);
  /* forward and backward (unclipped and clipped) vs the plain loops */
  cfg share = {2, 6, 3, 4, 1, 1, 3, 3, 3, true};      /* Nq = Nk = 1, Nv = Nf = Nw = N = 3 */
  cfg mixed = {3, 130, 4, 3, 2, 1, 2, 2, 1, false};   /* T = 130: three segments, the last partial */
  cfg v16 = {2, 70, 8, 16, 1, 1, 4, 4, 4, true};      /* the V = 16 of the paper */
  cfg one = {1, 1, 5, 3, 2, 2, 2, 1, 2, true};        /* T = 1, B = 1 */
  cfg exact = {2, 64, 3, 2, 1, 2, 2, 2, 2, true};     /* T = one checkpoint interval */
  cfg two = {1, 128, 2, 5, 1, 1, 1, 1, 1, false};     /* T = two intervals, one head */
  cfg big = {5, 40, 6, 5, 2, 2, 4, 4, 2, true};       /* batch split over two threads */
  const cfg *all[] = {&share, &mixed, &v16, &one, &exact, &two, &big};
  const char *names[] = {"share", "mixed", "v16", "one", "exact", "two", "big"};
  for (int i = 0; i < 7; i++) {
    char w[64];
    snprintf(w, sizeof w, "%s f64", names[i]);
    check_vs_reference(&r, all[i], M2_F64, 0, w);
    snprintf(w, sizeof w, "%s f64 clip", names[i]);
    check_vs_reference(&r, all[i], M2_F64, 0.02, w);
    snprintf(w, sizeof w, "%s f32", names[i]);
    check_vs_reference(&r, all[i], M2_F32, 0, w);
    snprintf(w, sizeof w, "%s f32 clip", names[i]);
    check_vs_reference(&r, all[i], M2_F32, 0.02, w);
  }

  /* gradient checks in F64 of every input, including h0 and with head sharing */
  gradcheck_cfg(&r, &share, 0, "Nq=Nk=1, Nv=Nf=Nw=3, h0");
  cfg sh2 = {2, 5, 2, 3, 2, 1, 1, 2, 1, true}; /* Nk = Nv = Nw = 1 shared by two heads */
  gradcheck_cfg(&r, &sh2, 0, "Nk=Nv=Nw=1, Nq=Nf=2, h0");
  cfg longer = {1, 67, 2, 2, 1, 1, 2, 2, 1, true}; /* crosses the checkpoint at t = 64 */
  gradcheck_cfg(&r, &longer, 40, "T=67 across a checkpoint");
  cfg noh0 = {2, 3, 3, 2, 1, 1, 1, 1, 1, false};
  gradcheck_cfg(&r, &noh0, 0, "no h0");

  /* autograd through the per-step form built from primitive ops */
  check_vs_primitives(&r, &share, "share");
  check_vs_primitives(&r, &sh2, "sh2");
  cfg prim = {2, 70, 3, 4, 1, 2, 2, 2, 2, false};
  check_vs_primitives(&r, &prim, "T=70");

  /* h0 = NULL means a zero state; y only (hT not wanted); T = 0 returns h0 */
  {
    m2_tensor *in[6];
    make_inputs(&r, &share, M2_F64, in);
    m2_tensor *zero = m2_zeros(M2_F64, M2_DEV_CPU, 4, (int64_t[]){2, 3, 3, 4});
    m2_tensor *y1 = NULL, *y2 = NULL, *h1 = NULL;
    CHECK_OK(m2_m2rnn(in[0], in[1], in[2], in[3], in[4], NULL, NULL, &y1, NULL));
    CHECK_OK(m2_m2rnn(in[0], in[1], in[2], in[3], in[4], zero, NULL, &y2, &h1));
    CHECK(y1 && y2 && max_rel_diff(y1, y2) == 0, "h0 = NULL is a zero state");
    m2_release(y1); m2_release(y2); m2_release(h1); m2_release(zero);
    release_all(in, 6);

    cfg empty = {2, 0, 3, 4, 1, 1, 3, 3, 3, true};
    make_inputs(&r, &empty, M2_F64, in);
    m2_requires_grad_(in[5], true);
    m2_tensor *y = NULL, *hT = NULL;
    CHECK_OK(m2_m2rnn(in[0], in[1], in[2], in[3], in[4], in[5], NULL, &y, &hT));
    CHECK(y && y->shape[1] == 0 && hT && max_rel_diff(hT, in[5]) == 0, "T = 0: hT = h0");
    if (hT) {
      m2_tensor *L = m2_sum_all(hT);
      CHECK_OK(m2_backward(L, NULL));
      double g;
      m2_get(in[5]->grad, (int64_t[]){1, 2, 2, 3}, &g);
      CHECK_CLOSE(g, 1.0, 0, 0, "T = 0: dh0 = dhT");
      m2_release(L);
    }
    m2_release(y); m2_release(hT);
    release_all(in, 6);
  }

  check_errors(&r);
  check_nan_propagates(&r);
  if (getenv("M2_BENCH")) bench();

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_m2rnn");
}
