/* test_ops_attention.c — softmax attention (causal with S >= T and S < T, non-causal, GQA, custom
 * scale, huge logits) and RoPE against naive loops; gradchecks of every input; F32; errors; timings. */
#include "check.h"
#include <string.h>
#include <time.h>

typedef struct adims { int64_t B, T, H, D, S, Hkv; } adims;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: steadier on a shared machine */
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  m2_to_host(t, M2_F64, p);
  return p;
}

static m2_tensor *rnd(m2_rng *r, m2_dtype dt, int64_t a, int64_t b, int64_t c, int64_t d, bool grad) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, 4, (int64_t[]){a, b, c, d});
  if (grad) m2_requires_grad_(t, true);
  return t;
}

/* Naive attention: the full logit row, masked, softmax, weighted sum. o (B,T,H,D). */
static void naive_attention(adims d, const m2_tensor *tq, const m2_tensor *tk, const m2_tensor *tv, double scale,
                            bool causal, double *o) {
  double *q = host(tq), *k = host(tk), *v = host(tv), *w = malloc(sizeof(double) * (d.S + 1));
  for (int64_t b = 0; b < d.B; b++)
    for (int64_t t = 0; t < d.T; t++)
      for (int64_t h = 0; h < d.H; h++) {
        int64_t g = h / (d.H / d.Hkv);
        double mx = -INFINITY, sum = 0;
        for (int64_t s = 0; s < d.S; s++) {
          bool ok = !causal || s <= t + d.S - d.T;
          double acc = 0;
          for (int64_t x = 0; x < d.D; x++) acc += q[((b * d.T + t) * d.H + h) * d.D + x] * k[((b * d.S + s) * d.Hkv + g) * d.D + x];
          w[s] = ok ? scale * acc : -INFINITY;
          if (w[s] > mx) mx = w[s];
        }
        for (int64_t s = 0; s < d.S; s++) sum += w[s] = w[s] == -INFINITY ? 0 : exp(w[s] - mx);
        for (int64_t x = 0; x < d.D; x++) {
          double acc = 0;
          for (int64_t s = 0; s < d.S; s++) acc += (sum > 0 ? w[s] / sum : 0) * v[((b * d.S + s) * d.Hkv + g) * d.D + x];
          o[((b * d.T + t) * d.H + h) * d.D + x] = acc;
        }
      }
  free(q), free(k), free(v), free(w);
}

static void test_att_forward(m2_rng *r, m2_dtype dt, adims d, double scale, bool causal, double qmul, double tol) {
  m2_tensor *q = rnd(r, dt, d.B, d.T, d.H, d.D, false), *k = rnd(r, dt, d.B, d.S, d.Hkv, d.D, false);
  m2_tensor *v = rnd(r, dt, d.B, d.S, d.Hkv, d.D, false);
  if (qmul != 1) {
    m2_tensor *q2 = m2_scale(q, qmul);
    if (q2) { m2_release(q); q = q2; }
  }
  int64_t n = d.B * d.T * d.H * d.D;
  double *ref = malloc(sizeof(double) * n);
  naive_attention(d, q, k, v, scale ? scale : 1 / sqrt((double)d.D), causal, ref);
  m2_tensor *o = m2_attention(q, k, v, &(m2_attention_opts){scale, causal});
  CHECK_NOTNULL(o);
  if (o) {
    double *x = host(o), e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
      double di = fabs(x[i] - ref[i]);
      if (!(di == di)) di = INFINITY;
      if (di > e) e = di;
      if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    CHECK(o->dtype == dt, "dtype kept");
    CHECK(e <= tol * (1 + m), "attention %s T=%lld S=%lld H=%lld Hkv=%lld causal=%d: off the naive loop by %g",
          m2_dtype_name(dt), (long long)d.T, (long long)d.S, (long long)d.H, (long long)d.Hkv, causal, e);
    free(x);
  }
  m2_release(o), m2_release(q), m2_release(k), m2_release(v);
  free(ref);
}

typedef struct att_ud { m2_attention_opts o; m2_tensor *w; } att_ud;
static m2_tensor *att_f(m2_tensor *const *in, void *p) {
  att_ud *u = p;
  return m2_attention(in[0], in[1], in[2], &u->o);
}

static void test_att_grad(m2_rng *r, adims d, bool causal) {
  m2_tensor *in[3] = {rnd(r, M2_F64, d.B, d.T, d.H, d.D, true), rnd(r, M2_F64, d.B, d.S, d.Hkv, d.D, true),
                      rnd(r, M2_F64, d.B, d.S, d.Hkv, d.D, true)};
  att_ud u = {{0.8, causal}, NULL};
  double err = 0;
  CHECK_OK(m2_gradcheck(att_f, &u, 3, in, NULL, &err));
  CHECK(err <= 1, "attention gradcheck T=%lld S=%lld Hkv=%lld causal=%d: %g", (long long)d.T, (long long)d.S,
        (long long)d.Hkv, causal, err);
  for (int i = 0; i < 3; i++) m2_release(in[i]);
}

/* F32 gradients agree with F64 */
static void test_att_f32(m2_rng *r, adims d) {
  m2_tensor *in[3] = {rnd(r, M2_F64, d.B, d.T, d.H, d.D, true), rnd(r, M2_F64, d.B, d.S, d.Hkv, d.D, true),
                      rnd(r, M2_F64, d.B, d.S, d.Hkv, d.D, true)};
  m2_tensor *in32[3];
  for (int i = 0; i < 3; i++) {
    in32[i] = m2_clone_raw(in[i], M2_F32, M2_DEV_CPU);
    m2_requires_grad_(in32[i], true);
  }
  m2_tensor *w = m2_randn(r, M2_F64, M2_DEV_CPU, 4, (int64_t[]){d.B, d.T, d.H, d.D});
  m2_tensor *w32 = m2_clone_raw(w, M2_F32, M2_DEV_CPU);
  for (int pass = 0; pass < 2; pass++) {
    m2_tensor **x = pass ? in32 : in;
    m2_tensor *o = m2_attention(x[0], x[1], x[2], NULL), *p = m2_mul(o, pass ? w32 : w), *L = m2_sum_all(p);
    CHECK_OK(m2_backward(L, NULL));
    m2_release(o), m2_release(p), m2_release(L);
  }
  for (int i = 0; i < 3; i++) {
    CHECK(in32[i]->grad && in32[i]->grad->dtype == M2_F32, "F32 gradient %d", i);
    if (in32[i]->grad && in[i]->grad) {
      double e = max_rel_diff(in32[i]->grad, in[i]->grad);
      CHECK(e < 1e-5, "attention F32 gradient %d off F64 by %g", i, e);
    }
    m2_release(in[i]), m2_release(in32[i]);
  }
  m2_release(w), m2_release(w32);
}

static void test_att_errors(m2_rng *r) {
  m2_tensor *q = rnd(r, M2_F64, 2, 5, 4, 6, false), *k = rnd(r, M2_F64, 2, 5, 2, 6, false);
  m2_tensor *v = rnd(r, M2_F64, 2, 5, 2, 6, false), *v7 = rnd(r, M2_F64, 2, 7, 2, 6, false);
  m2_tensor *k3 = rnd(r, M2_F64, 2, 5, 3, 6, false), *kD = rnd(r, M2_F64, 2, 5, 2, 5, false);
  m2_tensor *kB = rnd(r, M2_F64, 1, 5, 2, 6, false), *q3 = m2_randn(r, M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 24});
  m2_tensor *k32 = m2_clone_raw(k, M2_F32, M2_DEV_CPU);
  CHECK_FAILS(m2_attention(q, k, v7, NULL) == NULL, M2_ERR_SHAPE, "both must be");
  CHECK_FAILS(m2_attention(q, k3, k3, NULL) == NULL, M2_ERR_SHAPE, "must divide");
  CHECK_FAILS(m2_attention(q, kD, kD, NULL) == NULL, M2_ERR_SHAPE, "head dim");
  CHECK_FAILS(m2_attention(q, kB, kB, NULL) == NULL, M2_ERR_SHAPE, "batch");
  CHECK_FAILS(m2_attention(q3, k, v, NULL) == NULL, M2_ERR_SHAPE, "4 dims");
  CHECK_FAILS(m2_attention(q, k32, v, NULL) == NULL, M2_ERR_DTYPE, "dtypes differ");
  CHECK_FAILS(m2_attention(q, NULL, v, NULL) == NULL, M2_ERR_VALUE, "k is NULL");
  CHECK_FAILS(m2_attention(q, k, v, &(m2_attention_opts){NAN, true}) == NULL, M2_ERR_VALUE, "finite");
  /* default options: causal with scale 1/sqrt(D) */
  m2_tensor *a = m2_attention(q, k, v, NULL), *b = m2_attention(q, k, v, &(m2_attention_opts){1 / sqrt(6.0), true});
  CHECK(a && b && max_rel_diff(a, b) == 0, "NULL opts = causal, 1/sqrt(D)");
  m2_release(a), m2_release(b);
  m2_release(q), m2_release(k), m2_release(v), m2_release(v7), m2_release(k3), m2_release(kD), m2_release(kB);
  m2_release(q3), m2_release(k32);
}

/* ---------------- rope ---------------- */

static void naive_rope(const m2_tensor *tx, double theta, int64_t off, double *y) {
  int64_t B = tx->shape[0], T = tx->shape[1], H = tx->shape[2], D = tx->shape[3];
  double *x = host(tx);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < D / 2; i++) {
          double a = (t + off) * pow(theta, -2.0 * i / D);
          int64_t r = ((b * T + t) * H + h) * D;
          y[r + i] = x[r + i] * cos(a) - x[r + i + D / 2] * sin(a);
          y[r + i + D / 2] = x[r + i] * sin(a) + x[r + i + D / 2] * cos(a);
        }
  free(x);
}

typedef struct rope_ud { double theta; int64_t off; } rope_ud;
static m2_tensor *rope_f(m2_tensor *const *in, void *p) {
  rope_ud *u = p;
  return m2_rope(in[0], u->theta, u->off);
}

static void test_rope(m2_rng *r) {
  for (int dti = 0; dti < 2; dti++) {
    m2_dtype dt = dti ? M2_F32 : M2_F64;
    m2_tensor *x = rnd(r, dt, 2, 7, 3, 8, false);
    double *ref = malloc(sizeof(double) * 2 * 7 * 3 * 8);
    naive_rope(x, 10000, 5, ref);
    m2_tensor *y = m2_rope(x, 10000, 5);
    CHECK_NOTNULL(y);
    if (y) {
      double *h = host(y), e = 0;
      for (int i = 0; i < 2 * 7 * 3 * 8; i++) e = fmax(e, fabs(h[i] - ref[i]));
      CHECK(e < (dti ? 1e-5 : 1e-12), "rope %s off the naive loop by %g", m2_dtype_name(dt), e);
      CHECK(y->dtype == dt, "rope keeps the dtype");
      free(h);
    }
    free(ref);
    m2_release(y), m2_release(x);
  }
  /* gradcheck (backward = inverse rotation) */
  m2_tensor *x = rnd(r, M2_F64, 2, 5, 2, 6, true);
  rope_ud u = {100, 3};
  double err = 0;
  CHECK_OK(m2_gradcheck(rope_f, &u, 1, &x, NULL, &err));
  CHECK(err <= 1, "rope gradcheck %g", err);
  m2_release(x);
  /* relative positions: (R_t q).(R_s k) depends on t - s only, whatever the offset */
  m2_tensor *q = rnd(r, M2_F64, 1, 6, 1, 8, false), *k = rnd(r, M2_F64, 1, 6, 1, 8, false);
  m2_tensor *q0 = m2_rope(q, 500, 0), *k0 = m2_rope(k, 500, 0), *q9 = m2_rope(q, 500, 9), *k9 = m2_rope(k, 500, 9);
  double *a = host(q0), *b = host(k0), *c = host(q9), *d = host(k9), worst = 0;
  for (int t = 0; t < 6; t++)
    for (int s = 0; s < 6; s++) {
      double d0 = 0, d9 = 0;
      for (int i = 0; i < 8; i++) d0 += a[t * 8 + i] * b[s * 8 + i], d9 += c[t * 8 + i] * d[s * 8 + i];
      worst = fmax(worst, fabs(d0 - d9));
    }
  CHECK(worst < 1e-12, "rope scores depend on relative position only: %g", worst);
  free(a), free(b), free(c), free(d);
  m2_release(q), m2_release(k), m2_release(q0), m2_release(k0), m2_release(q9), m2_release(k9);
  /* errors */
  m2_tensor *odd = rnd(r, M2_F64, 1, 2, 1, 5, false), *x3 = m2_randn(r, M2_F64, M2_DEV_CPU, 3, (int64_t[]){1, 2, 4});
  m2_tensor *xi = m2_zeros(M2_I32, M2_DEV_CPU, 4, (int64_t[]){1, 2, 1, 4}), *ok = rnd(r, M2_F64, 1, 2, 1, 4, false);
  CHECK_FAILS(m2_rope(odd, 10000, 0) == NULL, M2_ERR_SHAPE, "even");
  CHECK_FAILS(m2_rope(x3, 10000, 0) == NULL, M2_ERR_SHAPE, "4 dims");
  CHECK_FAILS(m2_rope(xi, 10000, 0) == NULL, M2_ERR_DTYPE, "float");
  CHECK_FAILS(m2_rope(ok, 0, 0) == NULL, M2_ERR_VALUE, "theta");
  m2_release(odd), m2_release(x3), m2_release(xi), m2_release(ok);
}

static void bench(m2_rng *r, adims d, int reps) {
  m2_tensor *in[3] = {rnd(r, M2_F32, d.B, d.T, d.H, d.D, true), rnd(r, M2_F32, d.B, d.S, d.Hkv, d.D, true),
                      rnd(r, M2_F32, d.B, d.S, d.Hkv, d.D, true)};
  m2_tensor *w = m2_randn(r, M2_F32, M2_DEV_CPU, 4, (int64_t[]){d.B, d.T, d.H, d.D});
  double tf = 0, tb = 0, tr = 0;
  for (int k = 0; k < reps; k++) {
    double t0 = now();
    m2_tensor *o = m2_attention(in[0], in[1], in[2], NULL);
    double t1 = now();
    m2_tensor *p = m2_mul(o, w), *L = m2_sum_all(p);
    double t2 = now();
    CHECK_OK(m2_backward(L, NULL));
    double t3 = now();
    m2_tensor *y = m2_rope(in[0], 10000, 0);
    tr += now() - t3;
    m2_release(o), m2_release(p), m2_release(L), m2_release(y);
    tf += t1 - t0, tb += t3 - t2;
  }
  printf("attention f32 causal B=%lld T=S=%lld H=%lld Hkv=%lld D=%lld: forward %.1f ms, backward %.1f ms; rope %.1f ms\n",
         (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.Hkv, (long long)d.D, 1e3 * tf / reps,
         1e3 * tb / reps, 1e3 * tr / reps);
  for (int i = 0; i < 3; i++) m2_release(in[i]);
  m2_release(w);
}

int main(void) {
  m2_rng r = m2_rng_make(3, 0);
  test_att_forward(&r, M2_F64, (adims){2, 5, 4, 6, 5, 2}, 0, true, 1, 1e-12);   /* causal, GQA */
  test_att_forward(&r, M2_F64, (adims){2, 5, 2, 4, 9, 1}, 0, true, 1, 1e-12);   /* causal, S > T (cache) */
  test_att_forward(&r, M2_F64, (adims){1, 7, 2, 4, 3, 2}, 0, true, 1, 1e-12);   /* causal, S < T: empty rows */
  test_att_forward(&r, M2_F64, (adims){2, 6, 3, 5, 4, 3}, 0.3, false, 1, 1e-12); /* not causal, custom scale */
  test_att_forward(&r, M2_F64, (adims){1, 9, 2, 8, 9, 1}, 0, true, 300, 1e-12); /* logits ~ 1e3: stable softmax */
  test_att_forward(&r, M2_F32, (adims){2, 9, 4, 8, 9, 2}, 0, true, 1, 1e-5);

  test_att_grad(&r, (adims){2, 4, 4, 3, 4, 2}, true);
  test_att_grad(&r, (adims){1, 3, 2, 4, 6, 1}, true);  /* S > T */
  test_att_grad(&r, (adims){1, 5, 2, 3, 3, 2}, true);  /* S < T: empty rows */
  test_att_grad(&r, (adims){2, 4, 3, 3, 5, 1}, false);
  test_att_f32(&r, (adims){2, 7, 4, 8, 7, 2});
  test_att_errors(&r);
  test_rope(&r);
  bench(&r, (adims){16, 128, 4, 64, 128, 4}, 1);
  if (getenv("M2_BENCH")) bench(&r, (adims){64, 256, 4, 64, 256, 4}, 1);

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_attention");
}
