/* ops_nn.c — embedding, fused cross-entropy, RMSNorm and L2 norm (CPU reference kernels).
 * Row kernels compute in double: an f32 row is widened into a scratch row first. */
#include "ops.h"
#include "ops_nn_check.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- row helpers ---------------- */

/* Row i (n elements) of a contiguous F32/F64 buffer as doubles: a pointer into the buffer
 * for F64, else widened into `tmp`. */
static const double *row_in(const void *p, m2_dtype dt, int64_t off, int64_t n, double *tmp) {
  if (dt == M2_F64) return (const double *)p + off;
  const float *f = (const float *)p + off;
  for (int64_t j = 0; j < n; j++) tmp[j] = f[j];
  return tmp;
}
/* Store n doubles into a contiguous F32/F64 buffer at off. */
static void row_out(void *p, m2_dtype dt, int64_t off, int64_t n, const double *v) {
  if (dt == M2_F64) {
    memcpy((double *)p + off, v, (size_t)n * sizeof(double));
    return;
  }
  float *f = (float *)p + off;
  for (int64_t j = 0; j < n; j++) f[j] = (float)v[j];
}

static double *scratch(int64_t n) { return malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)); }

static m2_status check_int(const m2_tensor *t, const char *op, const char *arg) {
  if (t->dtype == M2_I32 || t->dtype == M2_I64) return M2_OK;
  return m2_fail(M2_ERR_DTYPE, "%s: %s must be an integer tensor (i32 or i64), got %s", op, arg,
                 m2_dtype_name(t->dtype));
}

/* ================= embedding: weight (V, d), ids int (...) -> (..., d) ================= */

/* Shared with the CUDA backend's ops_nn.cu through ops_nn_check.h. */
m2_status m2_embedding_check(const m2_tensor *w, const m2_tensor *ids, m2_float_rule check_float) {
  char b[96];
  M2_TRY(check_float(w, "embedding", "weight"));
  M2_TRY(check_int(ids, "embedding", "ids"));
  if (w->ndim != 2) return m2_fail(M2_ERR_SHAPE, "embedding: weight must be (V, d), got %s", m2_shape_str(w, b, sizeof b));
  if (ids->ndim + 1 > M2_MAX_DIMS)
    return m2_fail(M2_ERR_SHAPE, "embedding: ids %s have too many dims (at most %d)", m2_shape_str(ids, b, sizeof b),
                   M2_MAX_DIMS - 1);
  return M2_OK;
}

/* Shared with the CUDA backend's ops_nn.cu through ops_nn_check.h. */
m2_status m2_embedding_output(m2_opcall *c) {
  m2_tensor *w = c->in[0], *ids = c->in[1];
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
  shape[ids->ndim] = w->shape[1];
  m2_tensor *o = m2_empty(w->dtype, w->device, ids->ndim + 1, shape); /* (..., d) */
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  return M2_OK;
}

static m2_status embedding_fwd(m2_opcall *c) {
  m2_tensor *w = c->in[0], *ids = c->in[1];
  M2_TRY(m2_embedding_check(w, ids, m2_check_float));
  int64_t V = w->shape[0], d = w->shape[1], n = m2_numel(ids);
  const void *pi = m2_data(ids);
  for (int64_t i = 0; i < n; i++) {
    int64_t id = m2_load_int(pi, ids->dtype, i);
    if (id < 0 || id >= V)
      return m2_fail(M2_ERR_INDEX, "embedding: id %lld (at flat position %lld) is out of range for vocabulary size V=%lld",
                     (long long)id, (long long)i, (long long)V);
  }
  M2_TRY(m2_embedding_output(c));
  size_t row = (size_t)d * m2_elsize(w);
  const char *pw = m2_data(w);
  char *po = m2_data(c->out[0]);
  for (int64_t i = 0; i < n; i++) memcpy(po + (size_t)i * row, pw + (size_t)m2_load_int(pi, ids->dtype, i) * row, row);
  return M2_OK;
}

static m2_status embedding_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *w = c->in[0], *ids = c->in[1], *g = c->dout[0]; /* g (..., d) */
  m2_tensor *dw = m2_zeros(w->dtype, w->device, w->ndim, w->shape); /* (V, d) */
  if (!dw) return m2_errcode();
  int64_t d = w->shape[1], n = m2_numel(ids);
  const void *pi = m2_data(ids), *pg = m2_data(g);
  void *pd = m2_data(dw);
  for (int64_t i = 0; i < n; i++) {
    int64_t id = m2_load_int(pi, ids->dtype, i);
    if (w->dtype == M2_F32) {
      float *dst = (float *)pd + id * d;
      const float *src = (const float *)pg + i * d;
      for (int64_t j = 0; j < d; j++) dst[j] += src[j];
    } else {
      double *dst = (double *)pd + id * d;
      const double *src = (const double *)pg + i * d;
      for (int64_t j = 0; j < d; j++) dst[j] += src[j];
    }
  }
  c->din[0] = dw;
  return M2_OK;
}
const m2_op m2_op_embedding = {"embedding", embedding_fwd, embedding_bwd, M2_OP_CAST_IN0, M2_IN(0)};

m2_tensor *m2_embedding(m2_tensor *weight, m2_tensor *ids) {
  if (m2_embedding_check(weight, ids, m2_check_float) != M2_OK) return NULL;
  m2_tensor *in[2] = {weight, ids};
  m2_opcall c;
  m2_call_init(&c, &m2_op_embedding, 2, in);
  return m2_call1(&c);
}

/* ===== cross_entropy: logits (..., C), targets int (...) -> 0-d; m2_cross_entropy_attr (ignore_index) =====
 * loss = mean over kept rows r of (lse_r - logits[r, t_r]), lse_r = log sum_j exp(logits[r, j]).
 * saved[0] = lse (rows) in F64. dlogits[r, j] = g / n_kept * (exp(logits[r, j] - lse_r) - [j == t_r]). */

/* Shared with the CUDA backend's ops_nn.cu through ops_nn_check.h. */
m2_status m2_cross_entropy_check(const m2_tensor *x, const m2_tensor *t, m2_float_rule check_float) {
  char a[96], b[96];
  M2_TRY(check_float(x, "cross_entropy", "logits"));
  M2_TRY(check_int(t, "cross_entropy", "targets"));
  bool ok = x->ndim >= 1 && t->ndim == x->ndim - 1;
  for (int i = 0; ok && i < t->ndim; i++) ok = t->shape[i] == x->shape[i];
  if (!ok)
    return m2_fail(M2_ERR_SHAPE, "cross_entropy: logits %s must be targets' shape %s plus a class dim",
                   m2_shape_str(x, a, sizeof a), m2_shape_str(t, b, sizeof b));
  return M2_OK;
}

static m2_status cross_entropy_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *t = c->in[1];
  M2_TRY(m2_cross_entropy_check(x, t, m2_check_float));
  int64_t C = x->shape[x->ndim - 1], rows = m2_numel(t), ign = M2_ATTR(c, m2_cross_entropy_attr)->ignore_index;
  const void *pt = m2_data(t), *px = m2_data(x);
  for (int64_t r = 0; r < rows; r++) {
    int64_t k = m2_load_int(pt, t->dtype, r);
    if (k != ign && (k < 0 || k >= C))
      return m2_fail(M2_ERR_INDEX, "cross_entropy: target %lld (at flat position %lld) is out of range for %lld classes "
                     "(ignore_index is %lld)", (long long)k, (long long)r, (long long)C, (long long)ign);
  }
  int64_t one = rows;
  m2_tensor *lse = m2_empty(M2_F64, x->device, 1, &one); /* (rows) */
  double *tmp = scratch(C);
  if (!lse || !tmp) {
    m2_release(lse);
    free(tmp);
    return m2_fail(M2_ERR_OOM, "cross_entropy: out of memory");
  }
  double *pl = m2_data(lse), total = 0;
  int64_t kept = 0;
  for (int64_t r = 0; r < rows; r++) {
    int64_t k = m2_load_int(pt, t->dtype, r);
    if (k == ign) { pl[r] = 0; continue; }
    const double *row = row_in(px, x->dtype, r * C, C, tmp);
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < C; j++) mx = row[j] > mx ? row[j] : mx;
    for (int64_t j = 0; j < C; j++) s += exp(row[j] - mx);
    pl[r] = mx + log(s);
    total += pl[r] - row[k];
    kept++;
  }
  free(tmp);
  c->n_out = 1;
  c->out[0] = m2_scalar(x->dtype, x->device, kept ? total / (double)kept : 0.0);
  m2_save(c, lse);
  m2_release(lse);
  return c->out[0] ? M2_OK : m2_errcode();
}

static m2_status cross_entropy_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *t = c->in[1], *lse = c->saved[0];
  int64_t C = x->shape[x->ndim - 1], rows = m2_numel(t), kept = 0;
  const int64_t ign = M2_ATTR(c, m2_cross_entropy_attr)->ignore_index;
  const void *pt = m2_data(t), *px = m2_data(x);
  for (int64_t r = 0; r < rows; r++) kept += m2_load_int(pt, t->dtype, r) != ign;
  double g;
  M2_TRY(m2_item(c->dout[0], &g));
  m2_tensor *dx = m2_zeros(x->dtype, x->device, x->ndim, x->shape); /* (..., C) */
  double *tmp = scratch(C), *drow = scratch(C);
  if (!dx || !tmp || !drow) {
    m2_release(dx); free(tmp); free(drow);
    return m2_fail(M2_ERR_OOM, "cross_entropy: out of memory in backward");
  }
  const double *pl = m2_data(lse);
  double scale = kept ? g / (double)kept : 0.0;
  void *pd = m2_data(dx);
  for (int64_t r = 0; kept && r < rows; r++) {
    int64_t k = m2_load_int(pt, t->dtype, r);
    if (k == ign) continue; /* row stays 0 */
    const double *row = row_in(px, x->dtype, r * C, C, tmp);
    for (int64_t j = 0; j < C; j++) drow[j] = scale * exp(row[j] - pl[r]);
    drow[k] -= scale;
    row_out(pd, x->dtype, r * C, C, drow);
  }
  free(tmp);
  free(drow);
  c->din[0] = dx;
  return M2_OK;
}
const m2_op m2_op_cross_entropy = {"cross_entropy", cross_entropy_fwd, cross_entropy_bwd, M2_OP_CAST_F32};

m2_tensor *m2_cross_entropy(m2_tensor *logits, m2_tensor *targets, int64_t ignore_index) {
  if (m2_cross_entropy_check(logits, targets, m2_check_float) != M2_OK) return NULL;
  m2_tensor *in[2] = {logits, targets};
  m2_opcall c;
  m2_call_init(&c, &m2_op_cross_entropy, 2, in);
  m2_cross_entropy_attr a = {.ignore_index = ignore_index};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ======= rmsnorm and l2norm: x (..., d) [, weight (d)] -> (..., d); m2_norm_attr (eps) =======
 * y = x * r * w with r = 1 / sqrt(ss * inv + eps), ss = sum_j x_j^2, inv = 1/d (rms) or 1 (l2).
 * saved[0] = r (rows) in F64. With u = x r and gy = dy * w:
 *   dx = r (gy - u * inv * sum_j gy_j u_j),   dw = sum over rows of dy * u. */

/* Shared with the CUDA backend's ops_nn.cu through ops_nn_check.h. */
m2_status m2_norm_check(const m2_tensor *x, const m2_tensor *w, const char *op, m2_float_rule check_float) {
  char a[96], b[96];
  M2_TRY(check_float(x, op, "x"));
  if (x->ndim < 1) return m2_fail(M2_ERR_SHAPE, "%s: x must have at least 1 dim", op);
  if (!w) return M2_OK;
  M2_TRY(check_float(w, op, "weight"));
  M2_TRY(m2_check_same_dtype(x, w, op));
  if (w->ndim != 1 || w->shape[0] != x->shape[x->ndim - 1])
    return m2_fail(M2_ERR_SHAPE, "%s: weight %s must be (d) for x %s", op, m2_shape_str(w, a, sizeof a),
                   m2_shape_str(x, b, sizeof b));
  return M2_OK;
}

/* forward shared by both: in[0] = x, in[1] = weight or NULL (absent for l2norm) */
static m2_status norm_fwd(m2_opcall *c, bool mean, const char *op) {
  m2_tensor *x = c->in[0], *w = c->n_in > 1 ? c->in[1] : NULL;
  M2_TRY(m2_norm_check(x, w, op, m2_check_float));
  int64_t d = x->shape[x->ndim - 1], rows = d ? m2_numel(x) / d : 0;
  double eps = M2_ATTR(c, m2_norm_attr)->eps, inv = mean ? 1.0 / (double)(d ? d : 1) : 1.0;
  int64_t nr = rows;
  m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, x->shape), *rt = m2_empty(M2_F64, x->device, 1, &nr);
  double *tmp = scratch(d), *y = scratch(d), *wv = scratch(d);
  if (!o || !rt || !tmp || !y || !wv) {
    m2_release(o); m2_release(rt); free(tmp); free(y); free(wv);
    return m2_fail(M2_ERR_OOM, "%s: out of memory", op);
  }
  const double *wd = w ? row_in(m2_data(w), w->dtype, 0, d, wv) : NULL;
  const void *px = m2_data(x);
  void *po = m2_data(o);
  double *pr = m2_data(rt);
  for (int64_t i = 0; i < rows; i++) {
    const double *row = row_in(px, x->dtype, i * d, d, tmp);
    double ss = 0;
    for (int64_t j = 0; j < d; j++) ss += row[j] * row[j];
    double r = 1.0 / sqrt(ss * inv + eps);
    pr[i] = r;
    if (wd) for (int64_t j = 0; j < d; j++) y[j] = row[j] * r * wd[j];
    else for (int64_t j = 0; j < d; j++) y[j] = row[j] * r;
    row_out(po, x->dtype, i * d, d, y);
  }
  free(tmp); free(y); free(wv);
  c->n_out = 1;
  c->out[0] = o;
  m2_save(c, rt);
  m2_release(rt);
  return M2_OK;
}

static m2_status norm_bwd(m2_opcall *c, bool mean, const char *op) {
  m2_tensor *x = c->in[0], *w = c->n_in > 1 ? c->in[1] : NULL, *dy = c->dout[0];
  bool need_w = w && c->needs_din[1];
  if (!c->needs_din[0] && !need_w) return M2_OK;
  int64_t d = x->shape[x->ndim - 1], rows = d ? m2_numel(x) / d : 0;
  double inv = mean ? 1.0 / (double)(d ? d : 1) : 1.0;
  const double *pr = m2_data(c->saved[0]);
  m2_tensor *dx = c->needs_din[0] ? m2_empty(x->dtype, x->device, x->ndim, x->shape) : NULL;
  double *tx = scratch(d), *tg = scratch(d), *tw = scratch(d), *gy = scratch(d), *out = scratch(d);
  double *dw = need_w ? calloc((size_t)(d ? d : 1), sizeof(double)) : NULL;
  if ((c->needs_din[0] && !dx) || !tx || !tg || !tw || !gy || !out || (need_w && !dw)) {
    m2_release(dx); free(tx); free(tg); free(tw); free(gy); free(out); free(dw);
    return m2_fail(M2_ERR_OOM, "%s: out of memory in backward", op);
  }
  const double *wd = w ? row_in(m2_data(w), w->dtype, 0, d, tw) : NULL;
  const void *px = m2_data(x), *pg = m2_data(dy);
  for (int64_t i = 0; i < rows; i++) {
    const double *xr = row_in(px, x->dtype, i * d, d, tx), *g = row_in(pg, dy->dtype, i * d, d, tg);
    double r = pr[i], dot = 0;
    for (int64_t j = 0; j < d; j++) {
      gy[j] = wd ? g[j] * wd[j] : g[j];
      dot += gy[j] * xr[j] * r;
      if (dw) dw[j] += g[j] * xr[j] * r;
    }
    if (dx) {
      double m = dot * inv;
      for (int64_t j = 0; j < d; j++) out[j] = r * (gy[j] - xr[j] * r * m);
      row_out(m2_data(dx), x->dtype, i * d, d, out);
    }
  }
  m2_status s = M2_OK;
  if (need_w) {
    m2_tensor *dwt = m2_empty(w->dtype, w->device, 1, w->shape); /* (d) */
    if (dwt) { row_out(m2_data(dwt), w->dtype, 0, d, dw); c->din[1] = dwt; }
    else s = m2_errcode();
  }
  c->din[0] = dx;
  free(tx); free(tg); free(tw); free(gy); free(out); free(dw);
  return s;
}

static m2_status rmsnorm_fwd(m2_opcall *c) { return norm_fwd(c, true, "rmsnorm"); }
static m2_status rmsnorm_bwd(m2_opcall *c) { return norm_bwd(c, true, "rmsnorm"); }
const m2_op m2_op_rmsnorm = {"rmsnorm", rmsnorm_fwd, rmsnorm_bwd, M2_OP_CAST_IN0};

static bool bad_eps(double eps, const char *op) {
  if (eps >= 0) return false;
  m2_fail(M2_ERR_VALUE, "%s: eps must be >= 0, got %g", op, eps);
  return true;
}

m2_tensor *m2_rmsnorm(m2_tensor *x, m2_tensor *weight, double eps) {
  if (m2_norm_check(x, weight, "rmsnorm", m2_check_float) != M2_OK || bad_eps(eps, "rmsnorm"))
    return NULL;
  m2_tensor *in[2] = {x, weight};
  m2_opcall c;
  m2_call_init(&c, &m2_op_rmsnorm, 2, in); /* in[1] may be NULL: the dispatcher skips it */
  m2_norm_attr a = {.eps = eps};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

static m2_status l2norm_fwd(m2_opcall *c) { return norm_fwd(c, false, "l2norm"); }
static m2_status l2norm_bwd(m2_opcall *c) { return norm_bwd(c, false, "l2norm"); }
const m2_op m2_op_l2norm = {"l2norm", l2norm_fwd, l2norm_bwd, M2_OP_CAST_IN0};

m2_tensor *m2_l2norm(m2_tensor *x, double eps) {
  if (m2_norm_check(x, NULL, "l2norm", m2_check_float) != M2_OK || bad_eps(eps, "l2norm"))
    return NULL;
  m2_opcall c;
  m2_call_init(&c, &m2_op_l2norm, 1, &x);
  m2_norm_attr a = {.eps = eps};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
