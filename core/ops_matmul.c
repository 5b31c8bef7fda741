/* ops_matmul.c — batched matrix product on CBLAS (sgemm / dgemm) and linear = matmul + bias.
 *
 * matmul: a (..., M, K) [(..., K, M) if ta], b (..., K, N) [(..., N, K) if tb] -> c (..., M, N).
 * Batch dims of a and b are equal, or b is 2-D and shared by every batch; then, when !ta,
 * a is one (batch*M, K) matrix and the whole product is a single GEMM.
 * Attributes: m2_matmul_attr (core/ops_matmul.h): ta, tb, and bf16 products (f32 tensors only: the operands of
 * every product, forward and backward, are rounded to bf16; fp32 accumulation and results; m2_set_matmul_precision).
 * Backward is GEMMs too:
 *   d op(a) = dc op(b)^T  (M, K),   d op(b) = op(a)^T dc  (K, N),
 * transposed back to the stored layouts; a shared b sums its gradient over the batch. */
#include "ops.h"
#include "ops_matmul.h"
#include <cblas.h>
#include <limits.h>
#include <string.h>

/* C (rows, cols) = beta C + opX(X) (rows, inner) opY(Y) (inner, cols), row-major.
 * Stored layouts: X is (inner, rows) if tx else (rows, inner); Y is (cols, inner) if ty else (inner, cols).
 * beta is 0 (C may be uninitialised) or 1 (accumulate). */
static void gemm(m2_dtype dt, bool tx, bool ty, int64_t rows, int64_t cols, int64_t inner, const void *X,
                 const void *Y, double beta, void *C) {
  if (rows == 0 || cols == 0) return;
  if (inner == 0) {
    if (beta == 0) memset(C, 0, (size_t)(rows * cols) * (dt == M2_F32 ? 4 : 8));
    return;
  }
  int m = (int)rows, n = (int)cols, k = (int)inner;
  int ldx = tx ? m : k, ldy = ty ? k : n;
  enum CBLAS_TRANSPOSE opx = tx ? CblasTrans : CblasNoTrans, opy = ty ? CblasTrans : CblasNoTrans;
  if (dt == M2_F32)
    cblas_sgemm(CblasRowMajor, opx, opy, m, n, k, 1.0f, X, ldx, Y, ldy, (float)beta, C, n);
  else
    cblas_dgemm(CblasRowMajor, opx, opy, m, n, k, 1.0, X, ldx, Y, ldy, beta, C, n);
}

/* `batch` GEMMs; s* are per-batch strides in elements (0 = the same matrix for every batch).
 * With sc == 0 the products are summed into one C (beta applies to the first only). */
static void bgemm(m2_dtype dt, bool tx, bool ty, int64_t batch, int64_t rows, int64_t cols, int64_t inner,
                  const void *X, int64_t sx, const void *Y, int64_t sy, double beta, void *C, int64_t sc) {
  size_t es = dt == M2_F32 ? 4 : 8;
  for (int64_t i = 0; i < batch; i++) {
    double bi = (sc == 0 && i > 0) ? 1.0 : beta;
    gemm(dt, tx, ty, rows, cols, inner, (const char *)X + (size_t)(i * sx) * es, (const char *)Y + (size_t)(i * sy) * es,
         bi, (char *)C + (size_t)(i * sc) * es);
  }
  if (batch == 0 && sc == 0 && beta == 0) gemm(dt, tx, ty, rows, cols, 0, X, Y, 0, C); /* empty sum = 0 */
}

/* The geometry of one matmul call (dtypes are checked by each device's entry point). */
m2_status m2_matmul_geom(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb, mm_geom *g) {
  char sa[96], sb[96];
  if (a->ndim < 2 || b->ndim < 2)
    return m2_fail(M2_ERR_SHAPE, "matmul: a %s and b %s must both have at least 2 dims", m2_shape_str(a, sa, sizeof sa),
                   m2_shape_str(b, sb, sizeof sb));
  g->ta = ta;
  g->tb = tb;
  g->shared = b->ndim == 2 && a->ndim > 2;
  if (!g->shared) {
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim - 2; i++) same = a->shape[i] == b->shape[i];
    if (!same)
      return m2_fail(M2_ERR_SHAPE, "matmul: batch dims of a %s and b %s differ (b must have the same batch dims or be 2-D)",
                     m2_shape_str(a, sa, sizeof sa), m2_shape_str(b, sb, sizeof sb));
  }
  int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
  int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
  g->M = ta ? ac : ar;
  g->K = ta ? ar : ac;
  int64_t kb = tb ? bc : br;
  g->N = tb ? br : bc;
  if (g->K != kb)
    return m2_fail(M2_ERR_SHAPE, "matmul: inner dims differ: a %s%s gives K=%lld but b %s%s gives K=%lld",
                   m2_shape_str(a, sa, sizeof sa), ta ? " (transposed)" : "", (long long)g->K,
                   m2_shape_str(b, sb, sizeof sb), tb ? " (transposed)" : "", (long long)kb);
  g->batch = 1;
  for (int i = 0; i < a->ndim - 2; i++) g->batch *= a->shape[i];
  int64_t big = g->shared ? g->batch * g->M : g->M;
  if (big > INT_MAX || g->N > INT_MAX || g->K > INT_MAX || g->batch > INT_MAX)
    return m2_fail(M2_ERR_SHAPE, "matmul: a %s, b %s: a matrix dim exceeds the BLAS int range",
                   m2_shape_str(a, sa, sizeof sa), m2_shape_str(b, sb, sizeof sb));
  return M2_OK;
}

m2_status m2_matmul_check(const m2_tensor *a, const m2_tensor *b, bool ta, bool tb, m2_float_rule check_float,
                          mm_geom *g) {
  M2_TRY(check_float(a, "matmul", "a"));
  M2_TRY(check_float(b, "matmul", "b"));
  M2_TRY(m2_check_same_dtype(a, b, "matmul"));
  return m2_matmul_geom(a, b, ta, tb, g);
}

m2_status m2_matmul_setup(m2_opcall *c, m2_float_rule check_float, mm_geom *g) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  const m2_matmul_attr *at = M2_ATTR(c, m2_matmul_attr);
  M2_TRY(m2_matmul_check(a, b, at->ta, at->tb, check_float, g));
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, a->shape, sizeof shape);
  shape[a->ndim - 2] = g->M;
  shape[a->ndim - 1] = g->N;
  m2_tensor *o = m2_empty(a->dtype, a->device, a->ndim, shape); /* (..., M, N) */
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  return M2_OK;
}

static int g_mm_precision = M2_MM_F32;
int m2_set_matmul_precision(int p) {
  const int old = g_mm_precision;
  g_mm_precision = p == M2_MM_BF16 ? M2_MM_BF16 : M2_MM_F32;
  return old;
}
int m2_matmul_precision(void) { return g_mm_precision; }

static m2_dtype g_act_dtype = M2_F32;
m2_dtype m2_set_activation_dtype(m2_dtype dt) {
  const m2_dtype old = g_act_dtype;
  g_act_dtype = dt == M2_BF16 ? M2_BF16 : M2_F32;
  return old;
}
m2_dtype m2_activation_dtype(void) { return g_act_dtype; }

/* Under bf16 activations, whether an operand t of a product is rounded to bf16 first (f32 only: f64 stays). */
static bool act_round(const m2_tensor *t) { return g_act_dtype == M2_BF16 && t->dtype == M2_F32; }

/* An operand of a product: t itself (new ref), or with bf16 products an f32 copy of t rounded to bf16 (what the CUDA
 * path feeds its tensor cores). */
static m2_tensor *operand(m2_tensor *t, const m2_opcall *c) {
  if (!M2_ATTR(c, m2_matmul_attr)->bf16 || t->dtype != M2_F32) return m2_retain(t), t;
  m2_tensor *h = m2_clone_raw(t, M2_BF16, t->device);
  m2_tensor *r = h ? m2_clone_raw(h, M2_F32, t->device) : NULL;
  m2_release(h);
  return r;
}

static m2_status matmul_fwd(m2_opcall *c) {
  mm_geom g;
  M2_TRY(m2_matmul_setup(c, m2_check_float, &g));
  m2_tensor *a = operand(c->in[0], c), *b = a ? operand(c->in[1], c) : NULL;
  if (!a || !b) {
    m2_release(a);
    return m2_errcode();
  }
  m2_tensor *o = c->out[0];
  const void *pa = m2_data(a), *pb = m2_data(b);
  void *po = m2_data(o);
  if (g.shared && !g.ta) /* (batch*M, K) @ op(b) in one GEMM */
    gemm(a->dtype, false, g.tb, g.batch * g.M, g.N, g.K, pa, pb, 0, po);
  else
    bgemm(a->dtype, g.ta, g.tb, g.batch, g.M, g.N, g.K, pa, g.M * g.K, pb, g.shared ? 0 : g.K * g.N, 0, po,
          g.M * g.N);
  m2_release(a);
  m2_release(b);
  return M2_OK;
}

static m2_status matmul_bwd(m2_opcall *c) {
  const m2_matmul_attr *at = M2_ATTR(c, m2_matmul_attr);
  mm_geom g;
  M2_TRY(m2_matmul_check(c->in[0], c->in[1], at->ta, at->tb, m2_check_float, &g));
  m2_tensor *dc = c->dout[0]; /* (..., M, N) */
  m2_tensor *dc0 = m2_is_contiguous(dc) && dc->dtype == c->in[0]->dtype ? (m2_retain(dc), dc)
                                                                         : m2_clone_raw(dc, c->in[0]->dtype, dc->device);
  m2_tensor *dcc = dc0 ? operand(dc0, c) : NULL;
  m2_release(dc0);
  m2_tensor *a = dcc ? operand(c->in[0], c) : NULL, *b = a ? operand(c->in[1], c) : NULL;
  if (!b) {
    m2_release(dcc);
    m2_release(a);
    return m2_errcode();
  }
  m2_dtype dt = a->dtype;
  const void *pa = m2_data(a), *pb = m2_data(b), *pc = m2_data(dcc);
  int64_t MN = g.M * g.N, MK = g.M * g.K, sb = g.shared ? 0 : g.K * g.N;
  m2_status s = M2_OK;
  if (c->needs_din[0]) {
    m2_tensor *da = m2_empty(dt, a->device, a->ndim, a->shape);
    if (!da) s = m2_errcode();
    else {
      void *pd = m2_data(da);
      if (!g.ta) { /* da (M, K) = dc (M, N) op(b)^T (N, K) */
        if (g.shared) gemm(dt, false, !g.tb, g.batch * g.M, g.K, g.N, pc, pb, 0, pd);
        else bgemm(dt, false, !g.tb, g.batch, g.M, g.K, g.N, pc, MN, pb, sb, 0, pd, MK);
      } else { /* da (K, M) = op(b) (K, N) dc^T (N, M) */
        bgemm(dt, g.tb, true, g.batch, g.K, g.M, g.N, pb, sb, pc, MN, 0, pd, MK);
      }
      c->din[0] = da;
    }
  }
  if (s == M2_OK && c->needs_din[1]) {
    m2_tensor *db = m2_empty(dt, b->device, b->ndim, b->shape);
    if (!db) s = m2_errcode();
    else {
      void *pd = m2_data(db);
      int64_t sd = g.shared ? 0 : g.K * g.N; /* 0: summed over the batch */
      if (!g.tb) { /* db (K, N) = op(a)^T (K, M) dc (M, N) */
        if (g.shared && !g.ta) gemm(dt, true, false, g.K, g.N, g.batch * g.M, pa, pc, 0, pd);
        else bgemm(dt, !g.ta, false, g.batch, g.K, g.N, g.M, pa, MK, pc, MN, 0, pd, sd);
      } else { /* db (N, K) = dc^T (N, M) op(a) (M, K) */
        if (g.shared && !g.ta) gemm(dt, true, false, g.N, g.K, g.batch * g.M, pc, pa, 0, pd);
        else bgemm(dt, true, g.ta, g.batch, g.N, g.K, g.M, pc, MN, pa, MK, 0, pd, sd);
      }
      c->din[1] = db;
    }
  }
  m2_release(dcc);
  m2_release(a);
  m2_release(b);
  return s;
}

const m2_op m2_op_matmul = {"matmul", matmul_fwd, matmul_bwd, 0};

m2_tensor *m2_matmul(m2_tensor *a, m2_tensor *b, bool ta, bool tb) {
  mm_geom g;
  if (m2_matmul_check(a, b, ta, tb, m2_check_float, &g) != M2_OK) return NULL; /* fail before any contiguous copy */
  if ((act_round(a) || act_round(b)) && a->dtype != M2_F64 && b->dtype != M2_F64) {
    /* bf16 activations: a bf16 x bf16 product with a bf16 result (the CPU computes it in f32 and rounds it once) */
    m2_tensor *a2 = m2_to_dtype(a, M2_BF16), *b2 = a2 ? m2_to_dtype(b, M2_BF16) : NULL;
    m2_tensor *y = b2 ? m2_matmul(a2, b2, ta, tb) : NULL;
    m2_release(a2);
    m2_release(b2);
    return y;
  }
  m2_tensor *in[2] = {a, b};
  m2_opcall c;
  m2_call_init(&c, &m2_op_matmul, 2, in);
  m2_matmul_attr at = {.ta = ta, .tb = tb, .bf16 = g_mm_precision == M2_MM_BF16 && a->dtype == M2_F32};
  M2_SET_ATTR(&c, at);
  return m2_call1(&c);
}

/* x (..., in) @ w (out, in)^T + bias (out) -> (..., out); x may also be 1-D (in). */
m2_tensor *m2_linear(m2_tensor *x, m2_tensor *w, m2_tensor *bias) {
  char sx[96], sw[96], sbias[96];
  if (w->ndim != 2) {
    m2_fail(M2_ERR_SHAPE, "linear: weight must be 2-D (out, in), got %s", m2_shape_str(w, sw, sizeof sw));
    return NULL;
  }
  if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
    m2_fail(M2_ERR_SHAPE, "linear: input %s does not end in the weight's in-features: weight %s is (out, in)",
            m2_shape_str(x, sx, sizeof sx), m2_shape_str(w, sw, sizeof sw));
    return NULL;
  }
  if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0])) {
    m2_fail(M2_ERR_SHAPE, "linear: bias %s must be (%lld) for weight %s", m2_shape_str(bias, sbias, sizeof sbias),
            (long long)w->shape[0], m2_shape_str(w, sw, sizeof sw));
    return NULL;
  }
  m2_tensor *y;
  if (x->ndim == 1) { /* (in) -> (1, in) -> (1, out) -> (out) */
    int64_t s2[2] = {1, x->shape[0]}, s1[1] = {w->shape[0]};
    m2_tensor *x2 = m2_reshape(x, 2, s2);
    m2_tensor *y2 = x2 ? m2_matmul(x2, w, false, true) : NULL;
    y = y2 ? m2_reshape(y2, 1, s1) : NULL;
    m2_release(x2);
    m2_release(y2);
  } else {
    y = m2_matmul(x, w, false, true);
  }
  if (!y || !bias) return y;
  /* bf16 activations: a bf16 product keeps its dtype through the bias (rounded to bf16, as autocast does) */
  m2_tensor *b2 = y->dtype == M2_BF16 && act_round(bias) ? m2_to_dtype(bias, M2_BF16) : (m2_retain(bias), bias);
  m2_tensor *z = b2 ? m2_add(y, b2) : NULL;
  m2_release(b2);
  m2_release(y);
  return z;
}
