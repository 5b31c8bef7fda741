/* test_ops_ssd.c — Mamba-2 SSD: recurrent op vs a naive loop, chunked == recurrent (values and
 * gradients, T not a multiple of the chunk, small chunks), gradcheck of every input incl. h0 and
 * groups G < H, F32, shape/dtype errors, timings at a training-loop size. The checks shared with
 * test_ops_gdn.c live in mixer_check.h; the inputs, the naive loop and the SSD-only cases are here. */
#include "mixer_check.h"

enum { X, DT, A, BM, CM, H0 };

typedef struct dims { int64_t B, T, H, P, G, N; } dims;

static dims dims_of(const mx_case *c) { return (dims){c->d[0], c->d[1], c->d[2], c->d[3], c->d[4], c->d[5]}; }

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

static void make_inputs(m2_rng *r, m2_dtype dt, const mx_case *c, bool with_h0, bool grad, m2_tensor *t[6]) {
  dims d = dims_of(c);
  t[X] = mapped(r, 4, (int64_t[]){d.B, d.T, d.H, d.P}, f_id);
  t[DT] = mapped(r, 3, (int64_t[]){d.B, d.T, d.H}, f_dt);
  t[A] = mapped(r, 1, (int64_t[]){d.H}, f_A);
  t[BM] = mapped(r, 4, (int64_t[]){d.B, d.T, d.G, d.N}, f_half);
  t[CM] = mapped(r, 4, (int64_t[]){d.B, d.T, d.G, d.N}, f_half);
  t[H0] = with_h0 ? mapped(r, 4, (int64_t[]){d.B, d.H, d.P, d.N}, f_half) : NULL;
  mx_inputs_as(t, dt, grad);
}

static double *host(const m2_tensor *t) {
  int64_t n = t ? m2_numel(t) : 0;
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  if (t) m2_to_host(t, M2_F64, p);
  return p;
}

/* The recurrence written out literally: y (B,T,H,P), hT (B,H,P,N). */
static void naive_ssd(const mx_case *c, m2_tensor *const t[6], double scale, double *y, double *hT) {
  dims d = dims_of(c); /* no scale in SSD */
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

static m2_status run_ssd(bool chunked, int chunk, double scale, m2_tensor *const in[6], m2_tensor **y,
                         m2_tensor **hT) {
  m2_ssd_opts opts = {chunk}; /* no scale in SSD */
  return (chunked ? m2_ssd_chunked : m2_ssd)(in[X], in[DT], in[A], in[BM], in[CM], in[H0], &opts, y, hT);
}

static const mx_op SSD = {"ssd", {"x", "dt", "A", "Bm", "Cm", "h0"}, "y", run_ssd, make_inputs, naive_ssd};

static mx_case ssd_case(dims d) {
  mx_case c = {&SSD, {d.B, d.T, d.H, d.P, d.G, d.N}, {d.B, d.T, d.H, d.P}, {d.B, d.H, d.P, d.N}, ""};
  snprintf(c.dims, sizeof c.dims, "B=%lld T=%lld H=%lld P=%lld G=%lld N=%lld", (long long)d.B, (long long)d.T,
           (long long)d.H, (long long)d.P, (long long)d.G, (long long)d.N);
  return c;
}

static void test_errors(m2_rng *r) {
  mx_case c = ssd_case((dims){2, 5, 4, 3, 2, 4});
  m2_tensor *t[6];
  make_inputs(r, M2_F64, &c, true, false, t);
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
  mx_release_all(t, 6);
}

int main(void) {
  m2_rng r = m2_rng_make(11, 0);
  mx_forward_vs_naive(&r, ssd_case((dims){2, 11, 4, 3, 2, 5}), M2_F64, true, 0, 1e-12);
  mx_forward_vs_naive(&r, ssd_case((dims){1, 9, 3, 4, 1, 2}), M2_F64, false, 0, 1e-12);
  mx_forward_vs_naive(&r, ssd_case((dims){2, 6, 2, 2, 2, 3}), M2_F64, true, 0, 1e-12); /* G = H */
  mx_forward_vs_naive(&r, ssd_case((dims){2, 11, 4, 3, 2, 5}), M2_F32, true, 0, 2e-5);

  /* chunked == recurrent in F64, forward and all gradients */
  int Ts[] = {1, 3, 8, 13, 37};
  int chunks[] = {4, 8};
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 2; j++)
      mx_chunked_equals_recurrent(&r, ssd_case((dims){2, Ts[i], 4, 3, 2, 4}), chunks[j], (i + j) % 2 == 0);
  mx_chunked_equals_recurrent(&r, ssd_case((dims){1, 300, 2, 4, 1, 6}), 0, true); /* default chunk 256, T not a multiple */
  mx_chunked_equals_recurrent(&r, ssd_case((dims){2, 70, 2, 5, 2, 3}), 64, false);

  mx_gradcheck(&r, ssd_case((dims){2, 6, 4, 2, 2, 3}), false, 4, true); /* G < H; checkpoint every 4 steps */
  mx_gradcheck(&r, ssd_case((dims){1, 5, 2, 3, 1, 2}), false, 0, false);
  mx_gradcheck(&r, ssd_case((dims){2, 9, 4, 2, 2, 3}), true, 4, true);
  mx_f32(&r, ssd_case((dims){2, 19, 4, 5, 2, 4})); /* F32 gradients agree with F64 */
  test_errors(&r);
  mx_bench(&r, ssd_case((dims){64, 64, 2, 32, 1, 32}), 0, 2);
  if (getenv("M2_BENCH")) mx_bench(&r, ssd_case((dims){64, 256, 4, 64, 1, 64}), 0, 1);

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_ssd");
}
