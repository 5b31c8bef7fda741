/* ops_moe.c — the mixture-of-experts ops (DESIGN 3.5; core/ops_moe.h has the overview): router, permutation by
 * expert, grouped matmul over the experts' variable-size groups, weighted unpermute. CPU references: plain loops in
 * double (F32, F64), the grouped matmul on CBLAS.
 *
 * moe_route (N tokens, E experts, k = top_k):
 *   p = softmax(logits_n) over all E, lse_n = logsumexp(logits_n);
 *   indices[n] = the k largest logits, largest first (ties: the lower expert index first);
 *   weights[n] = softmax of the chosen k logits (normalized top-k);
 *   counts[e] = routed slots of expert e; f_e = counts[e] / (N k); P_e = mean_n p[n, e];
 *   aux[0] = E sum_e f_e P_e (load balance: 1 when perfectly balanced), aux[1] = mean_n lse_n^2 (z-loss).
 *   Backward (f is a count, not differentiated): with ga = daux[0] E f / N and gz = daux[1] 2 lse_n / N,
 *     dlogits[n, i] = p_i (ga_i - sum_e p_e ga_e) + gz p_i  +  at chosen i = indices[n, j]: w_j (g_j - sum_m w_m g_m).
 *   Op row "moe_route": in = {logits}, out = {weights, indices, aux, counts} (kept for backward).
 * moe_permute: slot s = n k + j goes to expert indices[n, j]; the slots are sorted by expert, stably (slot order
 *   within an expert): pos[n, j] = its row, xp[pos[n, j]] = x[n]. Backward dx[n] = sum_j dxp[pos[n, j]] (a gather,
 *   in j order). Op row "moe_permute": in = {x, indices}, out = {xp, pos, offsets}.
 * moe_grouped_matmul: y[m] = x[m] w[e]^T for the rows m of group e (w[e] (out, in), a Linear's layout). Backward
 *   dx[group e] = dy[group e] w[e], dw[e] = dy[group e]^T x[group e] (0 for an empty group). Op row
 *   "moe_grouped_matmul": in = {x, w, offsets}, attributes m2_moe_gmm_attr, out = {y}.
 * moe_unpermute: y[n] = sum_j weights[n, j] yp[pos[n, j]] (j in order). Backward dyp[pos[n, j]] = weights[n, j] dy[n],
 *   dweights[n, j] = dy[n] . yp[pos[n, j]]. pos must be a permutation of the M rows (moe_permute's). Op row
 *   "moe_unpermute": in = {yp, weights, pos}, out = {y}. */
#include "ops.h"
#include "ops_moe.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- checks (shared with the CUDA entry points) ---------------- */

static bool is_int(const m2_tensor *t) { return t->dtype == M2_I32 || t->dtype == M2_I64; }

m2_status m2_moe_route_check(const m2_tensor *logits, int64_t top_k, m2_float_rule check_float) {
  if (!logits) return m2_fail(M2_ERR_VALUE, "moe_route: logits is NULL");
  M2_TRY(check_float(logits, "moe_route", "logits"));
  char s[96];
  if (logits->ndim != 2)
    return m2_fail(M2_ERR_SHAPE, "moe_route: logits %s must be (N, E)", m2_shape_str(logits, s, sizeof s));
  int64_t E = logits->shape[1];
  if (E < 1) return m2_fail(M2_ERR_VALUE, "moe_route: logits %s have no experts (E = 0)", m2_shape_str(logits, s, sizeof s));
  if (top_k < 1 || top_k > E)
    return m2_fail(M2_ERR_VALUE, "moe_route: top_k = %lld must be in [1, E = %lld]", (long long)top_k, (long long)E);
  return M2_OK;
}

m2_status m2_moe_permute_check(const m2_tensor *x, const m2_tensor *indices, int64_t experts,
                               m2_float_rule check_float) {
  if (!x || !indices) return m2_fail(M2_ERR_VALUE, "moe_permute: %s is NULL", x ? "indices" : "x");
  M2_TRY(check_float(x, "moe_permute", "x"));
  if (!is_int(indices))
    return m2_fail(M2_ERR_DTYPE, "moe_permute: indices must be i32 or i64, got %s", m2_dtype_name(indices->dtype));
  char a[96], b[96];
  if (x->ndim != 2 || indices->ndim != 2 || indices->shape[0] != x->shape[0])
    return m2_fail(M2_ERR_SHAPE, "moe_permute: x %s and indices %s must be (N, d) and (N, k)",
                   m2_shape_str(x, a, sizeof a), m2_shape_str(indices, b, sizeof b));
  if (experts < 1) return m2_fail(M2_ERR_VALUE, "moe_permute: experts = %lld must be >= 1", (long long)experts);
  return M2_OK;
}

m2_status m2_moe_gmm_check(const m2_tensor *x, const m2_tensor *w, const m2_tensor *offsets,
                           m2_float_rule check_float) {
  const char *op = "moe_grouped_matmul";
  if (!x || !w || !offsets) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", op, !x ? "x" : !w ? "w" : "offsets");
  M2_TRY(check_float(x, op, "x"));
  M2_TRY(m2_check_same_dtype(x, w, op));
  if (offsets->dtype != M2_I64)
    return m2_fail(M2_ERR_DTYPE, "%s: offsets must be i64, got %s", op, m2_dtype_name(offsets->dtype));
  char a[96], b[96], c[96];
  if (x->ndim != 2 || w->ndim != 3 || w->shape[2] != x->shape[1] || offsets->ndim != 1 ||
      offsets->shape[0] != w->shape[0] + 1)
    return m2_fail(M2_ERR_SHAPE, "%s: x %s, w %s and offsets %s must be (M, in), (E, out, in) and (E + 1)", op,
                   m2_shape_str(x, a, sizeof a), m2_shape_str(w, b, sizeof b), m2_shape_str(offsets, c, sizeof c));
  return M2_OK;
}

m2_status m2_moe_offsets_valid(const int64_t *off, int64_t E, int64_t M) {
  if (off[0] != 0 || off[E] != M)
    return m2_fail(M2_ERR_VALUE, "moe_grouped_matmul: offsets must run from 0 to the %lld rows of x, got %lld .. %lld",
                   (long long)M, (long long)off[0], (long long)off[E]);
  for (int64_t e = 0; e < E; e++)
    if (off[e + 1] < off[e])
      return m2_fail(M2_ERR_VALUE, "moe_grouped_matmul: offsets decrease at expert %lld (%lld then %lld)",
                     (long long)e, (long long)off[e], (long long)off[e + 1]);
  return M2_OK;
}

m2_status m2_moe_unpermute_check(const m2_tensor *yp, const m2_tensor *weights, const m2_tensor *pos,
                                 m2_float_rule check_float) {
  const char *op = "moe_unpermute";
  if (!yp || !weights || !pos) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", op, !yp ? "yp" : !weights ? "weights" : "pos");
  M2_TRY(check_float(yp, op, "yp"));
  M2_TRY(m2_check_same_dtype(yp, weights, op));
  if (!is_int(pos)) return m2_fail(M2_ERR_DTYPE, "%s: pos must be i32 or i64, got %s", op, m2_dtype_name(pos->dtype));
  char a[96], b[96], c[96];
  if (yp->ndim != 2 || weights->ndim != 2 || !m2_same_shape(weights, pos) ||
      yp->shape[0] != weights->shape[0] * weights->shape[1])
    return m2_fail(M2_ERR_SHAPE, "%s: yp %s, weights %s and pos %s must be (N k, d), (N, k) and (N, k)", op,
                   m2_shape_str(yp, a, sizeof a), m2_shape_str(weights, b, sizeof b), m2_shape_str(pos, c, sizeof c));
  return M2_OK;
}

/* a contiguous copy of g in dtype dt (gradients may arrive strided or in another dtype) */
static m2_tensor *grad_as(m2_tensor *g, m2_dtype dt) {
  if (m2_is_contiguous(g) && g->dtype == dt) return m2_retain(g), g;
  return m2_clone_raw(g, dt, g->device);
}

/* ---------------- moe_route ---------------- */

/* Row n: p (E) = softmax, returns lse; chosen (k) = the top-k experts, largest logit first, ties to the lower index. */
static double route_row(const void *lg, m2_dtype dt, int64_t n, int64_t E, int64_t k, double *p, int64_t *chosen,
                        unsigned char *taken) {
  const int64_t base = n * E;
  double mx = -INFINITY;
  for (int64_t i = 0; i < E; i++) mx = fmax(mx, m2_load(lg, dt, base + i));
  if (!isfinite(mx)) mx = 0; /* all -inf or a NaN: let the NaN / inf flow, no crash */
  double se = 0;
  for (int64_t i = 0; i < E; i++) se += (p[i] = exp(m2_load(lg, dt, base + i) - mx));
  for (int64_t i = 0; i < E; i++) p[i] /= se;
  memset(taken, 0, (size_t)E);
  for (int64_t j = 0; j < k; j++) {
    int64_t best = -1;
    double bv = 0;
    for (int64_t i = 0; i < E; i++) {
      if (taken[i]) continue;
      double v = m2_load(lg, dt, base + i);
      if (best < 0 || v > bv) best = i, bv = v;
    }
    taken[best] = 1;
    chosen[j] = best;
  }
  return mx + log(se);
}

static m2_status route_fwd(m2_opcall *c) {
  m2_tensor *lg = c->in[0];
  const int64_t k = M2_ATTR(c, m2_moe_route_attr)->top_k;
  M2_TRY(m2_moe_route_check(lg, k, m2_check_float));
  const int64_t N = lg->shape[0], E = lg->shape[1];
  const m2_dtype dt = lg->dtype;
  m2_tensor *w = m2_empty(dt, lg->device, 2, (int64_t[]){N, k});
  m2_tensor *idx = m2_empty(M2_I64, lg->device, 2, (int64_t[]){N, k});
  m2_tensor *aux = m2_empty(dt, lg->device, 1, (int64_t[]){2});
  m2_tensor *cnt = m2_zeros(M2_I64, lg->device, 1, (int64_t[]){E});
  double *p = malloc((size_t)E * sizeof *p), *P = calloc((size_t)E, sizeof *P);
  unsigned char *taken = malloc((size_t)E);
  if (!w || !idx || !aux || !cnt || !p || !P || !taken) {
    m2_release(w), m2_release(idx), m2_release(aux), m2_release(cnt), free(p), free(P), free(taken);
    return m2_errcode() != M2_OK ? m2_errcode() : m2_fail(M2_ERR_OOM, "moe_route: out of host memory");
  }
  const void *pl = m2_data(lg);
  int64_t *pi = m2_data(idx), *pc = m2_data(cnt);
  double z = 0;
  for (int64_t n = 0; n < N; n++) {
    int64_t *ch = pi + n * k;
    double lse = route_row(pl, dt, n, E, k, p, ch, taken);
    z += lse * lse;
    for (int64_t i = 0; i < E; i++) P[i] += p[i];
    double m0 = m2_load(pl, dt, n * E + ch[0]), s = 0;
    for (int64_t j = 0; j < k; j++) s += exp(m2_load(pl, dt, n * E + ch[j]) - m0);
    for (int64_t j = 0; j < k; j++) {
      m2_store(m2_data(w), dt, n * k + j, exp(m2_load(pl, dt, n * E + ch[j]) - m0) / s);
      pc[ch[j]]++;
    }
  }
  double lb = 0;
  for (int64_t i = 0; i < E && N > 0; i++) lb += ((double)pc[i] / (double)(N * k)) * (P[i] / (double)N);
  m2_store(m2_data(aux), dt, 0, N > 0 ? (double)E * lb : 0);
  m2_store(m2_data(aux), dt, 1, N > 0 ? z / (double)N : 0);
  free(p), free(P), free(taken);
  c->n_out = 4;
  c->out[0] = w, c->out[1] = idx, c->out[2] = aux, c->out[3] = cnt;
  return M2_OK;
}

static m2_status route_bwd(m2_opcall *c) {
  m2_tensor *lg = c->in[0];
  const int64_t k = M2_ATTR(c, m2_moe_route_attr)->top_k;
  M2_TRY(m2_moe_route_check(lg, k, m2_check_float));
  const int64_t N = lg->shape[0], E = lg->shape[1];
  const m2_dtype dt = lg->dtype;
  m2_tensor *gw = grad_as(c->dout[0], dt), *ga = gw ? grad_as(c->dout[2], dt) : NULL;
  m2_tensor *dl = ga ? m2_empty(dt, lg->device, 2, lg->shape) : NULL;
  double *p = malloc((size_t)E * sizeof *p), *a = malloc((size_t)E * sizeof *a);
  if (!dl || !p || !a) {
    m2_release(gw), m2_release(ga), m2_release(dl), free(p), free(a);
    return m2_errcode() != M2_OK ? m2_errcode() : m2_fail(M2_ERR_OOM, "moe_route: out of host memory");
  }
  const void *pl = m2_data(lg), *pw = m2_data(c->out[0]), *pgw = m2_data(gw), *pga = m2_data(ga);
  const int64_t *pi = m2_data(c->out[1]), *pc = m2_data(c->out[3]);
  const double g_lb = m2_load(pga, dt, 0), g_z = m2_load(pga, dt, 1);
  for (int64_t i = 0; i < E; i++) a[i] = N > 0 ? g_lb * (double)E * ((double)pc[i] / (double)(N * k)) / (double)N : 0;
  for (int64_t n = 0; n < N; n++) {
    double mx = -INFINITY;
    for (int64_t i = 0; i < E; i++) mx = fmax(mx, m2_load(pl, dt, n * E + i));
    if (!isfinite(mx)) mx = 0;
    double se = 0, pa = 0;
    for (int64_t i = 0; i < E; i++) se += (p[i] = exp(m2_load(pl, dt, n * E + i) - mx));
    for (int64_t i = 0; i < E; i++) p[i] /= se, pa += p[i] * a[i];
    const double gz = g_z * 2 * (mx + log(se)) / (double)N;
    for (int64_t i = 0; i < E; i++) m2_store(m2_data(dl), dt, n * E + i, p[i] * (a[i] - pa) + gz * p[i]);
    double wg = 0;
    for (int64_t j = 0; j < k; j++) wg += m2_load(pw, dt, n * k + j) * m2_load(pgw, dt, n * k + j);
    for (int64_t j = 0; j < k; j++) {
      int64_t e = pi[n * k + j];
      double wj = m2_load(pw, dt, n * k + j);
      double d = m2_load(m2_data(dl), dt, n * E + e) + wj * (m2_load(pgw, dt, n * k + j) - wg);
      m2_store(m2_data(dl), dt, n * E + e, d);
    }
  }
  m2_release(gw), m2_release(ga), free(p), free(a);
  c->din[0] = dl;
  return M2_OK;
}

const m2_op m2_op_moe_route = {"moe_route", route_fwd, route_bwd, M2_OP_KEEP_OUTPUTS | M2_OP_CAST_F32};

m2_status m2_moe_route(m2_tensor *logits, int64_t top_k, m2_tensor **weights, m2_tensor **indices, m2_tensor **aux,
                       m2_tensor **counts) {
  M2_TRY(m2_moe_route_check(logits, top_k, m2_check_float));
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_route, 1, &logits);
  m2_moe_route_attr at = {.top_k = top_k};
  M2_SET_ATTR(&c, at);
  m2_tensor *outs[M2_MAX_OUT] = {0};
  M2_TRY(m2_call_run(&c, outs));
  m2_tensor **want[4] = {weights, indices, aux, counts};
  for (int i = 0; i < 4; i++) {
    if (want[i]) *want[i] = outs[i];
    else m2_release(outs[i]);
  }
  return M2_OK;
}

/* ---------------- moe_permute ---------------- */

static m2_status permute_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *ix = c->in[1];
  const int64_t E = M2_ATTR(c, m2_moe_permute_attr)->experts;
  M2_TRY(m2_moe_permute_check(x, ix, E, m2_check_float));
  const int64_t N = x->shape[0], d = x->shape[1], k = ix->shape[1], M = N * k;
  const void *pix = m2_data(ix);
  for (int64_t s = 0; s < M; s++) {
    int64_t e = m2_load_int(pix, ix->dtype, s);
    if (e < 0 || e >= E)
      return m2_fail(M2_ERR_INDEX, "moe_permute: indices[%lld, %lld] = %lld is not an expert in [0, %lld)",
                     (long long)(s / k), (long long)(s % k), (long long)e, (long long)E);
  }
  m2_tensor *xp = m2_empty(x->dtype, x->device, 2, (int64_t[]){M, d});
  m2_tensor *pos = m2_empty(M2_I64, x->device, 2, (int64_t[]){N, k});
  m2_tensor *off = m2_zeros(M2_I64, x->device, 1, (int64_t[]){E + 1});
  if (!xp || !pos || !off) {
    m2_release(xp), m2_release(pos), m2_release(off);
    return m2_errcode();
  }
  int64_t *po = m2_data(off), *pp = m2_data(pos);
  for (int64_t s = 0; s < M; s++) po[m2_load_int(pix, ix->dtype, s) + 1]++; /* counts, then their prefix sums */
  for (int64_t e = 0; e < E; e++) po[e + 1] += po[e];
  int64_t *next = malloc((size_t)E * sizeof *next);
  if (!next) {
    m2_release(xp), m2_release(pos), m2_release(off);
    return m2_fail(M2_ERR_OOM, "moe_permute: out of host memory");
  }
  memcpy(next, po, (size_t)E * sizeof *next);
  const size_t row = (size_t)d * m2_elsize(x);
  for (int64_t s = 0; s < M; s++) { /* slots in order: stable within each expert */
    int64_t r = next[m2_load_int(pix, ix->dtype, s)]++;
    pp[s] = r;
    memcpy((char *)m2_data(xp) + (size_t)r * row, (const char *)m2_data(x) + (size_t)(s / k) * row, row);
  }
  free(next);
  c->n_out = 3;
  c->out[0] = xp, c->out[1] = pos, c->out[2] = off;
  return M2_OK;
}

static m2_status permute_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const int64_t N = x->shape[0], d = x->shape[1], k = c->in[1]->shape[1];
  m2_tensor *g = grad_as(c->dout[0], x->dtype);
  m2_tensor *dx = g ? m2_empty(x->dtype, x->device, 2, x->shape) : NULL;
  if (!dx) {
    m2_release(g);
    return m2_errcode();
  }
  const int64_t *pp = m2_data(c->out[1]);
  const void *pg = m2_data(g);
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < d; i++) {
      double s = 0;
      for (int64_t j = 0; j < k; j++) s += m2_load(pg, x->dtype, pp[n * k + j] * d + i);
      m2_store(m2_data(dx), x->dtype, n * d + i, s);
    }
  m2_release(g);
  c->din[0] = dx;
  return M2_OK;
}

const m2_op m2_op_moe_permute = {"moe_permute", permute_fwd, permute_bwd, M2_OP_KEEP_OUTPUTS | M2_OP_CAST_IN0};

m2_status m2_moe_permute(m2_tensor *x, m2_tensor *indices, int64_t experts, m2_tensor **xp, m2_tensor **pos,
                         m2_tensor **offsets) {
  M2_TRY(m2_moe_permute_check(x, indices, experts, m2_check_float));
  m2_tensor *in[2] = {x, indices};
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_permute, 2, in);
  m2_moe_permute_attr at = {.experts = experts};
  M2_SET_ATTR(&c, at);
  m2_tensor *outs[M2_MAX_OUT] = {0};
  M2_TRY(m2_call_run(&c, outs));
  m2_tensor **want[3] = {xp, pos, offsets};
  for (int i = 0; i < 3; i++) {
    if (want[i]) *want[i] = outs[i];
    else m2_release(outs[i]);
  }
  return M2_OK;
}

/* ---------------- moe_grouped_matmul ---------------- */

/* C (rows, cols) = opX(X) opY(Y), row-major, X (rows, inner) [tx: (inner, rows)], Y (inner, cols) [ty: (cols, inner)] */
static void gemm(m2_dtype dt, bool tx, bool ty, int64_t rows, int64_t cols, int64_t inner, const void *X,
                 const void *Y, void *C) {
  if (rows == 0 || cols == 0) return;
  if (inner == 0) {
    memset(C, 0, (size_t)(rows * cols) * (dt == M2_F32 ? 4 : 8));
    return;
  }
  int m = (int)rows, n = (int)cols, kk = (int)inner, ldx = tx ? m : kk, ldy = ty ? kk : n;
  enum CBLAS_TRANSPOSE ox = tx ? CblasTrans : CblasNoTrans, oy = ty ? CblasTrans : CblasNoTrans;
  if (dt == M2_F32) cblas_sgemm(CblasRowMajor, ox, oy, m, n, kk, 1.0f, X, ldx, Y, ldy, 0.0f, C, n);
  else cblas_dgemm(CblasRowMajor, ox, oy, m, n, kk, 1.0, X, ldx, Y, ldy, 0.0, C, n);
}

/* an operand of a product: t (new ref), or with bf16 products an f32 copy rounded to bf16 (as matmul) */
static m2_tensor *operand(m2_tensor *t, bool bf16) {
  if (!bf16 || t->dtype != M2_F32) return m2_retain(t), t;
  m2_tensor *h = m2_clone_raw(t, M2_BF16, t->device);
  m2_tensor *r = h ? m2_clone_raw(h, M2_F32, t->device) : NULL;
  m2_release(h);
  return r;
}

/* One of moe_grouped_matmul's products for every expert e, over its rows g = po[e] .. po[e + 1] (row-major):
 *   GMM_Y   y[g] (rows, Dout) = x[g] (rows, Din) w[e]^T       a = x, b = w
 *   GMM_DX  dx[g] (rows, Din) = dy[g] (rows, Dout) w[e]        a = dy, b = w
 *   GMM_DW  dw[e] (Dout, Din) = dy[g]^T (Dout, rows) x[g]      a = dy, b = x (an empty group gives zeros) */
typedef enum { GMM_Y, GMM_DX, GMM_DW } gmm_product;
static void grouped_gemms(gmm_product p, m2_dtype dt, int64_t E, const int64_t *po, int64_t Dout, int64_t Din,
                          const m2_tensor *a, const m2_tensor *b, m2_tensor *out) {
  const size_t es = m2_dtype_size(dt);
  const char *pa = m2_data(a), *pb = m2_data(b);
  char *pc = m2_data(out);
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = po[e], rows = po[e + 1] - po[e];
    const size_t we = (size_t)(e * Dout * Din) * es;
    const size_t gin = (size_t)(r0 * Din) * es, gout = (size_t)(r0 * Dout) * es; /* row r0 of x / dx, of y / dy */
    if (p == GMM_Y) gemm(dt, false, true, rows, Dout, Din, pa + gin, pb + we, pc + gout);
    else if (p == GMM_DX) gemm(dt, false, false, rows, Din, Dout, pa + gout, pb + we, pc + gin);
    else gemm(dt, true, false, Dout, Din, rows, pa + gout, pb + gin, pc + we);
  }
}

static m2_status gmm_fwd(m2_opcall *c) {
  m2_tensor *x0 = c->in[0], *w0 = c->in[1], *off = c->in[2];
  M2_TRY(m2_moe_gmm_check(x0, w0, off, m2_check_float));
  const int64_t M = x0->shape[0], E = w0->shape[0], Dout = w0->shape[1], Din = w0->shape[2];
  const int64_t *po = m2_data(off);
  M2_TRY(m2_moe_offsets_valid(po, E, M));
  const bool bf = M2_ATTR(c, m2_moe_gmm_attr)->bf16;
  m2_tensor *x = operand(x0, bf), *w = x ? operand(w0, bf) : NULL;
  m2_tensor *y = w ? m2_empty(x0->dtype, x0->device, 2, (int64_t[]){M, Dout}) : NULL;
  if (!y) {
    m2_release(x), m2_release(w);
    return m2_errcode();
  }
  grouped_gemms(GMM_Y, x0->dtype, E, po, Dout, Din, x, w, y);
  m2_release(x), m2_release(w);
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

static m2_status gmm_bwd(m2_opcall *c) {
  m2_tensor *x0 = c->in[0], *w0 = c->in[1], *off = c->in[2];
  M2_TRY(m2_moe_gmm_check(x0, w0, off, m2_check_float));
  const int64_t M = x0->shape[0], E = w0->shape[0], Dout = w0->shape[1], Din = w0->shape[2];
  const int64_t *po = m2_data(off);
  M2_TRY(m2_moe_offsets_valid(po, E, M));
  const bool bf = M2_ATTR(c, m2_moe_gmm_attr)->bf16;
  const m2_dtype dt = x0->dtype;
  m2_tensor *g0 = grad_as(c->dout[0], dt), *g = g0 ? operand(g0, bf) : NULL;
  m2_release(g0);
  m2_tensor *x = g ? operand(x0, bf) : NULL, *w = x ? operand(w0, bf) : NULL;
  m2_tensor *dx = w && c->needs_din[0] ? m2_empty(dt, x0->device, 2, x0->shape) : NULL;
  m2_tensor *dw = w && c->needs_din[1] ? m2_empty(dt, w0->device, 3, w0->shape) : NULL;
  if (!w || (c->needs_din[0] && !dx) || (c->needs_din[1] && !dw)) {
    m2_release(g), m2_release(x), m2_release(w), m2_release(dx), m2_release(dw);
    return m2_errcode();
  }
  if (dx) grouped_gemms(GMM_DX, dt, E, po, Dout, Din, g, w, dx);
  if (dw) grouped_gemms(GMM_DW, dt, E, po, Dout, Din, g, x, dw);
  m2_release(g), m2_release(x), m2_release(w);
  c->din[0] = dx;
  c->din[1] = dw;
  return M2_OK;
}

const m2_op m2_op_moe_grouped_matmul = {"moe_grouped_matmul", gmm_fwd, gmm_bwd, M2_OP_CAST_IN0};

m2_tensor *m2_moe_grouped_matmul(m2_tensor *x, m2_tensor *w, m2_tensor *offsets) {
  if (m2_moe_gmm_check(x, w, offsets, m2_check_float) != M2_OK) return NULL;
  m2_tensor *in[3] = {x, w, offsets};
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_grouped_matmul, 3, in);
  m2_moe_gmm_attr at = {.bf16 = m2_matmul_precision() == M2_MM_BF16 && x->dtype == M2_F32};
  M2_SET_ATTR(&c, at);
  return m2_call1(&c);
}

/* ---------------- moe_unpermute ---------------- */

/* pos as host i64: every value in [0, M) and each row used once (a permutation), else a message naming the slot */
static m2_status check_pos(const m2_tensor *pos, int64_t M, int64_t k) {
  unsigned char *seen = calloc((size_t)(M ? M : 1), 1);
  if (!seen) return m2_fail(M2_ERR_OOM, "moe_unpermute: out of host memory");
  const void *pp = m2_data(pos);
  for (int64_t s = 0; s < M; s++) {
    int64_t r = m2_load_int(pp, pos->dtype, s);
    if (r < 0 || r >= M || seen[r]) {
      free(seen);
      return m2_fail(M2_ERR_INDEX, "moe_unpermute: pos[%lld, %lld] = %lld is %s (pos must be a permutation of the "
                                   "%lld rows of yp, as moe_permute gives)", (long long)(s / k), (long long)(s % k),
                     (long long)r, r < 0 || r >= M ? "out of range" : "used twice", (long long)M);
    }
    seen[r] = 1;
  }
  free(seen);
  return M2_OK;
}

static m2_status unpermute_fwd(m2_opcall *c) {
  m2_tensor *yp = c->in[0], *wt = c->in[1], *pos = c->in[2];
  M2_TRY(m2_moe_unpermute_check(yp, wt, pos, m2_check_float));
  const int64_t N = wt->shape[0], k = wt->shape[1], d = yp->shape[1];
  M2_TRY(check_pos(pos, N * k, k));
  m2_tensor *y = m2_empty(yp->dtype, yp->device, 2, (int64_t[]){N, d});
  if (!y) return m2_errcode();
  const m2_dtype dt = yp->dtype;
  const void *py = m2_data(yp), *pw = m2_data(wt), *pp = m2_data(pos);
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < d; i++) {
      double s = 0;
      for (int64_t j = 0; j < k; j++)
        s += m2_load(pw, dt, n * k + j) * m2_load(py, dt, m2_load_int(pp, pos->dtype, n * k + j) * d + i);
      m2_store(m2_data(y), dt, n * d + i, s);
    }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

static m2_status unpermute_bwd(m2_opcall *c) {
  m2_tensor *yp = c->in[0], *wt = c->in[1], *pos = c->in[2];
  const int64_t N = wt->shape[0], k = wt->shape[1], d = yp->shape[1];
  const m2_dtype dt = yp->dtype;
  m2_tensor *g = grad_as(c->dout[0], dt);
  m2_tensor *dyp = g && c->needs_din[0] ? m2_zeros(dt, yp->device, 2, yp->shape) : NULL;
  m2_tensor *dw = g && c->needs_din[1] ? m2_empty(dt, wt->device, 2, wt->shape) : NULL;
  if (!g || (c->needs_din[0] && !dyp) || (c->needs_din[1] && !dw)) {
    m2_release(g), m2_release(dyp), m2_release(dw);
    return m2_errcode();
  }
  const void *py = m2_data(yp), *pw = m2_data(wt), *pp = m2_data(pos), *pg = m2_data(g);
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < k; j++) {
      const int64_t r = m2_load_int(pp, pos->dtype, n * k + j);
      const double wj = m2_load(pw, dt, n * k + j);
      double dot = 0;
      for (int64_t i = 0; i < d; i++) {
        double gi = m2_load(pg, dt, n * d + i);
        dot += gi * m2_load(py, dt, r * d + i);
        if (dyp) m2_store(m2_data(dyp), dt, r * d + i, wj * gi);
      }
      if (dw) m2_store(m2_data(dw), dt, n * k + j, dot);
    }
  m2_release(g);
  c->din[0] = dyp;
  c->din[1] = dw;
  return M2_OK;
}

const m2_op m2_op_moe_unpermute = {"moe_unpermute", unpermute_fwd, unpermute_bwd, M2_OP_CAST_IN0};

m2_tensor *m2_moe_unpermute(m2_tensor *yp, m2_tensor *weights, m2_tensor *pos) {
  if (m2_moe_unpermute_check(yp, weights, pos, m2_check_float) != M2_OK) return NULL;
  m2_tensor *in[3] = {yp, weights, pos};
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_unpermute, 3, in);
  return m2_call1(&c);
}
