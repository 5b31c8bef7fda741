/* ops_conv1d.c — depthwise causal conv1d over time (CPU reference): the short convolution in
 * front of the M2RNN / GDN / Mamba-2 mixers.
 *
 *   x (B, T, C), w (C, W), bias (C) or NULL -> y (B, T, C)
 *   y[b,t,c] = bias[c] + sum_j w[c,j] * x[b, t - (W-1) + j, c]     (x = 0 before t = 0)
 * Backward:
 *   dx[b,s,c] = sum_j w[c,j] * dy[b, s + (W-1) - j, c]               (terms with that t < T)
 *   dw[c,j]   = sum_{b,t} dy[b,t,c] * x[b, t - (W-1) + j, c]
 *   dbias[c]  = sum_{b,t} dy[b,t,c]
 * Computed in double; the loops run over c innermost (contiguous). */
#include "ops.h"
#include "ops_conv1d.h"
#include "ops_mixers.h"
#include <stdlib.h>
#include <string.h>

m2_status m2_conv1d_check(const m2_tensor *x, const m2_tensor *w, const m2_tensor *bias) {
  char a[96], b[96];
  if (!x || !w) return m2_fail(M2_ERR_VALUE, "conv1d_causal: x (B, T, C) and w (C, W) are required (bias may be NULL)");
  M2_TRY(m2_check_float(x, "conv1d_causal", "x"));
  M2_TRY(m2_check_float(w, "conv1d_causal", "w"));
  M2_TRY(m2_check_same_dtype(x, w, "conv1d_causal"));
  if (x->ndim != 3) return m2_fail(M2_ERR_SHAPE, "conv1d_causal: x must be (B, T, C), got %s", m2_shape_str(x, a, sizeof a));
  if (w->ndim != 2 || w->shape[0] != x->shape[2] || w->shape[1] < 1)
    return m2_fail(M2_ERR_SHAPE, "conv1d_causal: w must be (C, W) with C = %lld from x %s and W >= 1, got %s",
                   (long long)x->shape[2], m2_shape_str(x, a, sizeof a), m2_shape_str(w, b, sizeof b));
  if (bias) {
    M2_TRY(m2_check_same_dtype(x, bias, "conv1d_causal"));
    if (bias->ndim != 1 || bias->shape[0] != x->shape[2])
      return m2_fail(M2_ERR_SHAPE, "conv1d_causal: bias must be (C) with C = %lld from x %s, got %s",
                     (long long)x->shape[2], m2_shape_str(x, a, sizeof a), m2_shape_str(bias, b, sizeof b));
  }
  return M2_OK;
}

/* w (C, W) as (W, C) doubles, so the inner loops over c are contiguous. */
static m2_status host_wT(const m2_tensor *wt, double **buf) {
  int64_t C = wt->shape[0], W = wt->shape[1];
  size_t n = (size_t)(C * W > 0 ? C * W : 1);
  double *w = malloc(sizeof(double) * n), *r = malloc(sizeof(double) * n);
  if (!w || !r) { free(w); free(r); *buf = NULL; return m2_fail(M2_ERR_OOM, "conv1d_causal: out of host memory"); }
  m2_status s = m2_to_host(wt, M2_F64, w);
  for (int64_t ch = 0; ch < C; ch++)
    for (int64_t j = 0; j < W; j++) r[j * C + ch] = w[ch * W + j];
  free(w);
  *buf = r;
  return s;
}

/* n doubles from t (NULL -> NULL); *buf must be freed. */
static m2_status host_f64(const m2_tensor *t, double **buf) {
  *buf = NULL;
  if (!t) return M2_OK;
  int64_t n = m2_numel(t);
  *buf = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!*buf) return m2_fail(M2_ERR_OOM, "conv1d_causal: out of host memory (%lld doubles)", (long long)n);
  return m2_to_host(t, M2_F64, *buf);
}

static m2_tensor *from_f64(const m2_tensor *like, const double *src) {
  m2_tensor *t = m2_empty(like->dtype, M2_DEV_CPU, like->ndim, like->shape);
  if (!t) return NULL;
  int64_t n = m2_numel(t);
  if (t->dtype == M2_F64) memcpy(m2_data(t), src, sizeof(double) * (size_t)n);
  else
    for (int64_t i = 0; i < n; i++) ((float *)m2_data(t))[i] = (float)src[i];
  return t;
}

/* in: x, w, bias (may be NULL), checked by m2_conv1d_causal. out: y (B, T, C). */
static m2_status conv_fwd(m2_opcall *c) {
  m2_tensor *xt = c->in[0], *wt = c->in[1], *bt = c->in[2];
  int64_t B = xt->shape[0], T = xt->shape[1], C = xt->shape[2], W = wt->shape[1];
  double *x = NULL, *w = NULL, *bias = NULL, *y = NULL; /* w: (W, C) */
  m2_status s = host_f64(xt, &x);
  if (s == M2_OK) s = host_wT(wt, &w);
  if (s == M2_OK) s = host_f64(bt, &bias);
  if (s == M2_OK && !(y = malloc(sizeof(double) * (size_t)(B * T * C > 0 ? B * T * C : 1))))
    s = m2_fail(M2_ERR_OOM, "conv1d_causal: out of host memory");
  if (s == M2_OK) {
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++) {
        double *yr = y + (b * T + t) * C;
        for (int64_t ch = 0; ch < C; ch++) yr[ch] = bias ? bias[ch] : 0.0;
        for (int64_t j = 0; j < W; j++) {
          int64_t ts = t - (W - 1) + j;
          if (ts < 0) continue;
          const double *xr = x + (b * T + ts) * C;
          const double *wj = w + j * C;
          for (int64_t ch = 0; ch < C; ch++) yr[ch] += wj[ch] * xr[ch];
        }
      }
    c->n_out = 1;
    c->out[0] = from_f64(xt, y);
    if (!c->out[0]) s = m2_errcode();
  }
  free(x); free(w); free(bias); free(y);
  return s;
}

static m2_status conv_bwd(m2_opcall *c) {
  m2_tensor *xt = c->in[0], *wt = c->in[1];
  int64_t B = xt->shape[0], T = xt->shape[1], C = xt->shape[2], W = wt->shape[1];
  int64_t nx = B * T * C > 0 ? B * T * C : 1;
  double *x = NULL, *w = NULL, *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL; /* w, dw: (W, C) */
  m2_status s = host_f64(xt, &x);
  if (s == M2_OK) s = host_wT(wt, &w);
  if (s == M2_OK) s = host_f64(c->dout[0], &dy);
  if (s == M2_OK) {
    dx = calloc((size_t)nx, sizeof(double));
    dw = calloc((size_t)(C * W), sizeof(double));
    db = calloc((size_t)C, sizeof(double));
    if (!dx || !dw || !db) s = m2_fail(M2_ERR_OOM, "conv1d_causal: out of host memory");
  }
  if (s == M2_OK) {
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++) {
        const double *g = dy + (b * T + t) * C;
        for (int64_t ch = 0; ch < C; ch++) db[ch] += g[ch];
        for (int64_t j = 0; j < W; j++) {
          int64_t ts = t - (W - 1) + j;
          if (ts < 0) continue;
          const double *xr = x + (b * T + ts) * C;
          double *dxr = dx + (b * T + ts) * C, *dwj = dw + j * C;
          const double *wj = w + j * C;
          for (int64_t ch = 0; ch < C; ch++) {
            dxr[ch] += wj[ch] * g[ch];
            dwj[ch] += g[ch] * xr[ch];
          }
        }
      }
    for (int64_t ch = 0; ch < C; ch++) /* dw back to (C, W), reusing w's buffer */
      for (int64_t j = 0; j < W; j++) w[ch * W + j] = dw[j * C + ch];
    double *grads[3] = {dx, w, db};
    for (int i = 0; i < 3 && s == M2_OK; i++) {
      if (!c->needs_din[i] || !c->in[i]) continue;
      c->din[i] = from_f64(c->in[i], grads[i]);
      if (!c->din[i]) s = m2_errcode();
    }
  }
  free(x); free(w); free(dy); free(dx); free(dw); free(db);
  return s;
}

const m2_op m2_op_conv1d_causal = {"conv1d_causal", conv_fwd, conv_bwd,
                                   M2_OP_CAST_IN0 | M2_OP_MIXED_KERNELS_OPT};

m2_tensor *m2_conv1d_causal(m2_tensor *x, m2_tensor *w, m2_tensor *bias) {
  if (m2_conv1d_check(x, w, bias) != M2_OK) return NULL; /* the one check: the kernels trust it */
  m2_tensor *in[3] = {x, w, bias};
  m2_opcall c;
  m2_call_init(&c, &m2_op_conv1d_causal, 3, in);
  return m2_call1(&c);
}
