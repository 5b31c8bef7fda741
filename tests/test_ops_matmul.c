/* test_ops_matmul.c — matmul (every ta/tb combination; 2-D, batched and shared-b) and linear:
 * forward against a naive triple loop, F64 gradient checks, f32 backward against f64, errors. */
#include "check.h"

static m2_tensor *randn(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, bool grad) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, nd, shape);
  if (grad) m2_requires_grad_(t, true);
  return t;
}

/* Naive reference: c[b, i, j] = sum_k A(b, i, k) B(b, k, j), b 2-D means shared. Returns F64. */
static m2_tensor *ref_matmul(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb) {
  int64_t na = m2_numel(a), nb = m2_numel(b);
  double *x = malloc(sizeof(double) * (size_t)na), *y = malloc(sizeof(double) * (size_t)nb);
  m2_to_host(a, M2_F64, x);
  m2_to_host(b, M2_F64, y);
  int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1], br = b->shape[b->ndim - 2],
          bc = b->shape[b->ndim - 1];
  int64_t M = ta ? ac : ar, K = ta ? ar : ac, N = tb ? br : bc, batch = na / (ar * ac);
  bool shared = b->ndim == 2 && a->ndim > 2;
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, a->shape, sizeof shape);
  shape[a->ndim - 2] = M;
  shape[a->ndim - 1] = N;
  m2_tensor *c = m2_zeros(M2_F64, M2_DEV_CPU, a->ndim, shape);
  double *z = m2_data(c);
  for (int64_t p = 0; p < batch; p++) {
    const double *A = x + p * ar * ac, *B = y + (shared ? 0 : p * br * bc);
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
        z[(p * M + i) * N + j] = s;
      }
  }
  free(x);
  free(y);
  return c;
}

typedef struct { bool ta, tb; } tt;
static m2_tensor *f_matmul(m2_tensor *const *in, void *ud) {
  tt *t = ud;
  return m2_matmul(in[0], in[1], t->ta, t->tb);
}
static m2_tensor *f_linear(m2_tensor *const *in, void *ud) { return m2_linear(in[0], in[1], in[2]); }

/* Shapes of a and b for (batch dims, M, K, N, ta, tb); b shared when shared. */
static void shapes(int nb, const int64_t *bd, int64_t M, int64_t K, int64_t N, bool ta, bool tb, bool shared,
                   int *nda, int64_t *sa, int *ndb, int64_t *sb) {
  for (int i = 0; i < nb; i++) sa[i] = sb[i] = bd[i];
  sa[nb] = ta ? K : M;
  sa[nb + 1] = ta ? M : K;
  *nda = nb + 2;
  int o = shared ? 0 : nb;
  sb[o] = tb ? N : K;
  sb[o + 1] = tb ? K : N;
  *ndb = o + 2;
}

int main(void) {
  m2_rng r = m2_rng_make(2024, 0);
  const int64_t M = 3, K = 5, N = 4;
  const int64_t b1[1] = {3}, b2[2] = {2, 3};
  struct { int nb; const int64_t *bd; bool shared; const char *name; } cases[] = {
      {0, NULL, false, "2-D"}, {2, b2, false, "batched (2, 3)"}, {1, b1, true, "3-D a, shared b"},
      {2, b2, true, "4-D a, shared b"}};

  /* ---- forward vs naive, f32 and f64, every case and ta/tb ---- */
  for (int ci = 0; ci < 4; ci++)
    for (int t = 0; t < 4; t++)
      for (int dti = 0; dti < 2; dti++) {
        bool ta = t & 1, tb = t & 2;
        m2_dtype dt = dti ? M2_F64 : M2_F32;
        int nda, ndb;
        int64_t sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
        shapes(cases[ci].nb, cases[ci].bd, M, K, N, ta, tb, cases[ci].shared, &nda, sa, &ndb, sb);
        m2_tensor *a = randn(&r, dt, nda, sa, false), *b = randn(&r, dt, ndb, sb, false);
        m2_tensor *c = m2_matmul(a, b, ta, tb), *ref = ref_matmul(a, b, ta, tb);
        CHECK(c && c->dtype == dt && c->ndim == nda && c->shape[nda - 2] == M && c->shape[nda - 1] == N,
              "matmul %s ta=%d tb=%d %s: output shape", cases[ci].name, ta, tb, m2_dtype_name(dt));
        double e = c ? max_rel_diff(c, ref) : INFINITY;
        CHECK(e < (dt == M2_F32 ? 1e-5 : 1e-13), "matmul %s ta=%d tb=%d %s vs naive: rel err %g", cases[ci].name, ta, tb,
              m2_dtype_name(dt), e);
        m2_release(a); m2_release(b); m2_release(c); m2_release(ref);
      }

  /* ---- a larger product (blocking paths of the BLAS) ---- */
  {
    int64_t sa[3] = {2, 37, 70}, sb[2] = {70, 45};
    m2_tensor *a = randn(&r, M2_F32, 3, sa, false), *b = randn(&r, M2_F32, 2, sb, false);
    m2_tensor *c = m2_matmul(a, b, false, false), *ref = ref_matmul(a, b, false, false);
    double e = c ? max_rel_diff(c, ref) : INFINITY;
    CHECK(e < 1e-5, "matmul (2,37,70)@(70,45) f32: rel err %g", e);
    m2_release(a); m2_release(b); m2_release(c); m2_release(ref);
  }

  /* ---- gradient checks in F64: both inputs, every case and ta/tb ---- */
  for (int ci = 0; ci < 4; ci++)
    for (int t = 0; t < 4; t++) {
      tt flags = {t & 1, (t & 2) != 0};
      int nda, ndb;
      int64_t sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
      shapes(cases[ci].nb, cases[ci].bd, M, K, N, flags.ta, flags.tb, cases[ci].shared, &nda, sa, &ndb, sb);
      m2_tensor *in[2] = {randn(&r, M2_F64, nda, sa, true), randn(&r, M2_F64, ndb, sb, true)};
      double err = 0;
      m2_status s = m2_gradcheck(f_matmul, &flags, 2, in, NULL, &err);
      CHECK(s == M2_OK, "gradcheck matmul %s ta=%d tb=%d (worst ratio %g)", cases[ci].name, flags.ta, flags.tb, err);
      m2_release(in[0]); m2_release(in[1]);
    }

  /* ---- f32 backward agrees with f64 backward (sgemm paths), shared and batched ---- */
  for (int ci = 1; ci < 4; ci++)
    for (int t = 0; t < 4; t++) {
      bool ta = t & 1, tb = t & 2;
      int nda, ndb;
      int64_t sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
      shapes(cases[ci].nb, cases[ci].bd, M, K, N, ta, tb, cases[ci].shared, &nda, sa, &ndb, sb);
      m2_tensor *a64 = randn(&r, M2_F64, nda, sa, true), *b64 = randn(&r, M2_F64, ndb, sb, true);
      m2_tensor *a32 = m2_clone_raw(a64, M2_F32, M2_DEV_CPU), *b32 = m2_clone_raw(b64, M2_F32, M2_DEV_CPU);
      m2_requires_grad_(a32, true);
      m2_requires_grad_(b32, true);
      m2_tensor *c64 = m2_matmul(a64, b64, ta, tb), *c32 = m2_matmul(a32, b32, ta, tb);
      m2_tensor *g64 = m2_randn(&r, M2_F64, M2_DEV_CPU, c64->ndim, c64->shape);
      m2_tensor *g32 = m2_clone_raw(g64, M2_F32, M2_DEV_CPU);
      CHECK_OK(m2_backward(c64, g64));
      CHECK_OK(m2_backward(c32, g32));
      double ea = max_rel_diff(a32->grad, a64->grad), eb = max_rel_diff(b32->grad, b64->grad);
      CHECK(ea < 1e-5 && eb < 1e-5, "f32 backward %s ta=%d tb=%d: da err %g, db err %g", cases[ci].name, ta, tb, ea, eb);
      m2_release(a64); m2_release(b64); m2_release(a32); m2_release(b32);
      m2_release(c64); m2_release(c32); m2_release(g64); m2_release(g32);
    }

  /* ---- bf16 products (m2_set_matmul_precision): forward and backward are the f64 products of the bf16-rounded
     operands, to fp32 accumulation; the backward uses the setting its forward was recorded with ---- */
  for (int ci = 0; ci < 4; ci++)
    for (int t = 0; t < 4; t++) {
      bool ta = t & 1, tb = t & 2;
      int nda, ndb;
      int64_t sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
      shapes(cases[ci].nb, cases[ci].bd, M, K, N, ta, tb, cases[ci].shared, &nda, sa, &ndb, sb);
      m2_tensor *a32 = randn(&r, M2_F32, nda, sa, true), *b32 = randn(&r, M2_F32, ndb, sb, true);
      m2_tensor *round[2] = {NULL, NULL}, *src[2] = {a32, b32};
      for (int i = 0; i < 2; i++) { /* f64 copies of the bf16-rounded operands, with grad */
        m2_tensor *h = m2_clone_raw(src[i], M2_BF16, M2_DEV_CPU);
        round[i] = m2_clone_raw(h, M2_F64, M2_DEV_CPU);
        m2_release(h);
        m2_requires_grad_(round[i], true);
      }
      CHECK(m2_matmul_precision() == M2_MM_F32, "the default precision is f32");
      m2_tensor *cf = m2_matmul(a32, b32, ta, tb); /* f32 products */
      CHECK(m2_set_matmul_precision(M2_MM_BF16) == M2_MM_F32, "set returns the previous setting");
      m2_tensor *c = m2_matmul(a32, b32, ta, tb);
      m2_set_matmul_precision(M2_MM_F32); /* backward must still use bf16 products */
      m2_tensor *c64 = m2_matmul(round[0], round[1], ta, tb);
      double e = max_rel_diff(c, c64), ef = max_rel_diff(cf, c64);
      CHECK(e < 1e-5, "bf16 products %s ta=%d tb=%d: rel err %g against the rounded operands' f64 product",
            cases[ci].name, ta, tb, e);
      CHECK(ef > 1e-4, "bf16 products %s ta=%d tb=%d: f32 products should differ from them, rel diff %g",
            cases[ci].name, ta, tb, ef);
      m2_tensor *g32 = m2_randn(&r, M2_F32, M2_DEV_CPU, c->ndim, c->shape);
      m2_tensor *gh = m2_clone_raw(g32, M2_BF16, M2_DEV_CPU), *g64 = m2_clone_raw(gh, M2_F64, M2_DEV_CPU);
      CHECK_OK(m2_backward(c, g32));
      CHECK_OK(m2_backward(c64, g64));
      double ea = max_rel_diff(a32->grad, round[0]->grad), eb = max_rel_diff(b32->grad, round[1]->grad);
      CHECK(ea < 1e-5 && eb < 1e-5, "bf16 products backward %s ta=%d tb=%d: da err %g, db err %g", cases[ci].name, ta,
            tb, ea, eb);
      m2_tensor *rel[] = {a32, b32, round[0], round[1], cf, c, c64, g32, gh, g64};
      for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
    }

  /* ---- a strided (transposed view) input equals the ta flag ---- */
  {
    int64_t sa[3] = {2, 5, 3}, sb[3] = {2, 5, 4};
    m2_tensor *a = randn(&r, M2_F64, 3, sa, false), *b = randn(&r, M2_F64, 3, sb, false);
    m2_tensor *at = m2_transpose(a, 1, 2); /* (2, 3, 5) strided */
    m2_tensor *c1 = m2_matmul(at, b, false, false), *c2 = m2_matmul(a, b, true, false);
    CHECK(c1 && c2 && max_rel_diff(c1, c2) < 1e-14, "transposed view == ta");
    m2_release(a); m2_release(b); m2_release(at); m2_release(c1); m2_release(c2);
  }

  /* ---- an empty inner dim gives zeros ---- */
  {
    int64_t sa[2] = {3, 0}, sb[2] = {0, 4};
    m2_tensor *a = m2_empty(M2_F32, M2_DEV_CPU, 2, sa), *b = m2_empty(M2_F32, M2_DEV_CPU, 2, sb);
    m2_tensor *c = m2_matmul(a, b, false, false);
    double v[12], mx = 1;
    if (c && m2_numel(c) == 12) {
      m2_to_host(c, M2_F64, v);
      mx = 0;
      for (int i = 0; i < 12; i++) mx = fabs(v[i]) > mx ? fabs(v[i]) : mx;
    }
    CHECK(c && c->shape[0] == 3 && c->shape[1] == 4 && mx == 0, "K = 0 gives a (3, 4) zero matrix");
    m2_release(a); m2_release(b); m2_release(c);
  }

  /* ---- linear: forward vs reference, gradients for x, w, bias ---- */
  {
    int64_t sx[3] = {2, 3, 5}, sw[2] = {4, 5}, sbias[1] = {4};
    m2_tensor *x = randn(&r, M2_F64, 3, sx, true), *w = randn(&r, M2_F64, 2, sw, true),
              *bias = randn(&r, M2_F64, 1, sbias, true);
    m2_tensor *y = m2_linear(x, w, bias), *y0 = m2_linear(x, w, NULL), *ref = ref_matmul(x, w, false, true);
    double *pr = m2_data(ref), bv[4];
    m2_to_host(bias, M2_F64, bv);
    CHECK(y0 && max_rel_diff(y0, ref) < 1e-13, "linear without bias");
    for (int64_t i = 0; i < m2_numel(ref); i++) pr[i] += bv[i % 4];
    CHECK(y && y->ndim == 3 && y->shape[2] == 4 && max_rel_diff(y, ref) < 1e-13, "linear with bias");
    m2_tensor *in[3] = {x, w, bias};
    double err;
    CHECK_OK(m2_gradcheck(f_linear, NULL, 3, in, NULL, &err));
    /* 1-D input */
    int64_t s1[1] = {5};
    m2_tensor *x1 = randn(&r, M2_F64, 1, s1, true);
    m2_tensor *in1[3] = {x1, w, bias};
    m2_tensor *y1 = m2_linear(x1, w, bias);
    CHECK(y1 && y1->ndim == 1 && y1->shape[0] == 4, "linear of a 1-D input is 1-D (out)");
    CHECK_OK(m2_gradcheck(f_linear, NULL, 3, in1, NULL, &err));
    /* errors */
    int64_t sbad[1] = {3};
    m2_tensor *bb = randn(&r, M2_F64, 1, sbad, false);
    CHECK_FAILS(m2_linear(x, w, bb) == NULL, M2_ERR_SHAPE, "bias (3)");
    CHECK_FAILS(m2_linear(w, x, NULL) == NULL, M2_ERR_SHAPE, "2-D");
    CHECK_FAILS(m2_linear(x, bb, NULL) == NULL, M2_ERR_SHAPE, "2-D");
    m2_tensor *wt = randn(&r, M2_F64, 2, (int64_t[]){5, 4}, false);
    CHECK_FAILS(m2_linear(x, wt, NULL) == NULL, M2_ERR_SHAPE, "(5, 4)");
    m2_release(x); m2_release(w); m2_release(bias); m2_release(y); m2_release(y0); m2_release(ref);
    m2_release(x1); m2_release(y1); m2_release(bb); m2_release(wt);
  }

  /* ---- errors ---- */
  {
    m2_tensor *a = randn(&r, M2_F32, 2, (int64_t[]){2, 3}, false), *b = randn(&r, M2_F32, 2, (int64_t[]){4, 5}, false);
    CHECK_FAILS(m2_matmul(a, b, false, false) == NULL, M2_ERR_SHAPE, "(2, 3)");
    CHECK_FAILS(m2_matmul(a, b, false, false) == NULL, M2_ERR_SHAPE, "(4, 5)");
    CHECK_FAILS(m2_matmul(a, b, false, true) == NULL, M2_ERR_SHAPE, "inner dims");
    m2_tensor *a3 = randn(&r, M2_F32, 3, (int64_t[]){2, 2, 3}, false), *b3 = randn(&r, M2_F32, 3, (int64_t[]){3, 3, 5}, false);
    CHECK_FAILS(m2_matmul(a3, b3, false, false) == NULL, M2_ERR_SHAPE, "batch dims");
    CHECK_FAILS(m2_matmul(a, b3, false, false) == NULL, M2_ERR_SHAPE, "batch dims"); /* 2-D a, batched b */
    m2_tensor *v = randn(&r, M2_F32, 1, (int64_t[]){3}, false);
    CHECK_FAILS(m2_matmul(v, b, false, false) == NULL, M2_ERR_SHAPE, "at least 2 dims");
    m2_tensor *ai = m2_zeros(M2_I32, M2_DEV_CPU, 2, (int64_t[]){3, 4});
    CHECK_FAILS(m2_matmul(ai, b, false, false) == NULL, M2_ERR_DTYPE, "float");
    m2_tensor *b64 = randn(&r, M2_F64, 2, (int64_t[]){3, 5}, false);
    CHECK_FAILS(m2_matmul(a, b64, false, false) == NULL, M2_ERR_DTYPE, "dtypes differ");
    m2_release(a); m2_release(b); m2_release(a3); m2_release(b3); m2_release(v); m2_release(ai); m2_release(b64);
  }

  CHECK(m2_live_tensors() == 0, "leaked tensors: %ld", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked nodes: %ld", m2_live_nodes());
  return check_finish("test_ops_matmul");
}
