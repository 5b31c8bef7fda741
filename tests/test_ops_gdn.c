/* test_ops_gdn.c — Gated DeltaNet: recurrent op vs a naive loop, chunked == recurrent (values and
 * gradients, T not a multiple of the chunk, small chunks), gradcheck of every input incl. h0,
 * beta in (0, 2), F32, shape/dtype errors, timings at a training-loop size. The checks shared with
 * test_ops_ssd.c live in mixer_check.h; the inputs, the naive loop and the GDN-only cases are here. */
#include "mixer_check.h"

enum { Q, KK, VV, G, BETA, H0 };

typedef struct dims { int64_t B, T, H, K, V; } dims;

static dims dims_of(const mx_case *c) { return (dims){c->d[0], c->d[1], c->d[2], c->d[3], c->d[4]}; }

/* q, k: unit rows (exactly, as the L2 norm would give up to its eps); v ~ N(0,1); g = -0.5 softplus(z) < 0; beta = 2 sigmoid(z) in (0, 2); h0 ~ N(0, 0.25). */
static void make_inputs(m2_rng *r, m2_dtype dt, const mx_case *c, bool with_h0, bool grad, m2_tensor *t[6]) {
  dims d = dims_of(c);
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
  mx_inputs_as(t, dt, grad);
}

/* The recurrence written out literally, in double: o (B,T,H,V), hT (B,H,K,V). */
static void naive_gdn(const mx_case *c, m2_tensor *const t[6], double scale, double *o, double *hT) {
  dims d = dims_of(c);
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

static m2_status run_gdn(bool chunked, int chunk, double scale, m2_tensor *const in[6], m2_tensor **o,
                         m2_tensor **hT) {
  m2_gdn_opts opts = {scale, chunk};
  return (chunked ? m2_gdn_chunked : m2_gdn)(in[Q], in[KK], in[VV], in[G], in[BETA], in[H0], &opts, o, hT);
}

static const mx_op GDN = {"gdn", {"q", "k", "v", "g", "beta", "h0"}, "o", run_gdn, make_inputs, naive_gdn};

static mx_case gdn_case(dims d) {
  mx_case c = {&GDN, {d.B, d.T, d.H, d.K, d.V}, {d.B, d.T, d.H, d.V}, {d.B, d.H, d.K, d.V}, ""};
  snprintf(c.dims, sizeof c.dims, "B=%lld T=%lld H=%lld K=%lld V=%lld", (long long)d.B, (long long)d.T,
           (long long)d.H, (long long)d.K, (long long)d.V);
  return c;
}

/* beta = 2 with unit keys makes (I - beta k k^T) a reflection (eigenvalue -1): the state norm is
 * preserved without decay, so nothing blows up over a long sequence; and it matches the naive loop. */
static void test_reflection(m2_rng *r) {
  mx_case c = gdn_case((dims){1, 200, 1, 4, 3});
  m2_tensor *t[6];
  make_inputs(r, M2_F64, &c, true, false, t);
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
  mx_release_all(t, 6);
}

static void test_errors(m2_rng *r) {
  mx_case c = gdn_case((dims){2, 5, 2, 3, 4});
  m2_tensor *t[6];
  make_inputs(r, M2_F64, &c, true, false, t);
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
  mx_case c0 = gdn_case((dims){2, 0, 2, 3, 4});
  m2_tensor *z[6];
  make_inputs(r, M2_F64, &c0, false, false, z);
  CHECK_OK(m2_gdn_chunked(z[Q], z[KK], z[VV], z[G], z[BETA], t[H0], NULL, &o, &hT));
  if (hT) CHECK(max_rel_diff(hT, t[H0]) == 0, "T = 0 keeps h0");
  m2_release(o), m2_release(hT);
  mx_release_all(z, 6);
  mx_release_all(t, 6);
}

int main(void) {
  m2_rng r = m2_rng_make(7, 0);
  mx_forward_vs_naive(&r, gdn_case((dims){2, 11, 2, 5, 3}), M2_F64, true, 0.7, 1e-12);
  mx_forward_vs_naive(&r, gdn_case((dims){1, 9, 3, 4, 6}), M2_F64, false, 0.7, 1e-12);
  mx_forward_vs_naive(&r, gdn_case((dims){2, 11, 2, 5, 3}), M2_F32, true, 0.7, 2e-5);

  /* chunked == recurrent in F64, forward and all gradients */
  int Ts[] = {1, 3, 8, 13, 37};
  int chunks[] = {4, 8};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 2; j++)
      mx_chunked_equals_recurrent(&r, gdn_case((dims){2, Ts[i], 2, 5, 4}), chunks[j], (i + j) % 2 == 0);
  mx_chunked_equals_recurrent(&r, gdn_case((dims){2, 70, 2, 8, 6}), 0, true); /* default chunk 64, T not a multiple */
  mx_chunked_equals_recurrent(&r, gdn_case((dims){1, 130, 1, 16, 16}), 0, false);
  mx_chunked_equals_recurrent(&r, gdn_case((dims){1, 64, 2, 6, 5}), 64, true); /* exactly one chunk */

  mx_gradcheck(&r, gdn_case((dims){2, 6, 2, 3, 4}), false, 4, true); /* checkpoint every 4 steps: two segments */
  mx_gradcheck(&r, gdn_case((dims){2, 6, 2, 3, 4}), false, 0, false);
  mx_gradcheck(&r, gdn_case((dims){1, 11, 2, 4, 3}), true, 4, true);
  mx_f32(&r, gdn_case((dims){2, 19, 2, 6, 5})); /* F32 gradients agree with F64 */
  test_reflection(&r);
  test_errors(&r);
  mx_bench(&r, gdn_case((dims){64, 64, 2, 32, 32}), 64, 2);
  if (getenv("M2_BENCH")) mx_bench(&r, gdn_case((dims){64, 256, 4, 64, 64}), 64, 1);

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_gdn");
}
