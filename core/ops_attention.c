/* ops_attention.c — softmax attention (DESIGN 3.4) with grouped-query heads, and rotary position
 * embedding (RoPE). CPU reference kernels computing in double (inputs F32 or F64).
 *
 * attention: q (B,T,H,D), k, v (B,S,Hkv,D), Hkv divides H (query head h reads kv head
 * h / (H / Hkv)) -> o (B,T,H,D):
 *   o_t = sum_s softmax_s(scale q_t.k_s) v_s    over s <= t + (S - T) when causal, all s otherwise.
 * A causal query that sees no key (T > S, t < T - S) gets o_t = 0 and no gradient.
 * Op row "attention": in = {q, k, v}, attr = m2_attention_attr (ops_attention.h: the sizes, scale (resolved, never
 * 0), causal, and bf16 products (f32 tensors only, from m2_matmul_precision(): q, k, v and, backward, do are rounded
 * to bf16 as the operands of every product; the CUDA path then runs on tensor cores, which also round P and dS to
 * bf16 before their products)), out = {o} (kept for backward), saved[0] = the log-sum-exp of every row, (B,H,T) F64.
 * Backward (flash-style, no T x S matrix kept): P_ts = exp(scale q_t.k_s - lse_t),
 *   D_t = do_t.o_t ;  dS_ts = P_ts (do_t.v_s - D_t)
 *   dq_t = scale sum_s dS_ts k_s ;  dk_s = scale sum_t dS_ts q_t ;  dv_s = sum_t P_ts do_t
 * with dk, dv summed over the query heads that share a kv head.
 *
 * rope: x (B,T,H,D), D even -> y; for i < D/2, angle a = (t + offset) theta^(-2i/D):
 *   y_i = x_i cos a - x_{i+D/2} sin a ;  y_{i+D/2} = x_i sin a + x_{i+D/2} cos a.
 * Op row "rope": in = {x}, attr = m2_rope_attr {theta, offset}. Backward rotates dy by -a. */
#include "ops.h"
#include "ops_mixers.h"
#include "ops_attention.h"
#include "dbuf.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* double views of float tensors: dbuf.h */

/* ---------------- attention ---------------- */

/* Run by m2_attention before the call (the kernels trust its result). */
m2_status m2_attention_check(m2_tensor *const *in, m2_attention_attr *d) {
  static const char *names[3] = {"q", "k", "v"};
  const char *op = "attention";
  for (int i = 0; i < 3; i++) {
    if (!in[i]) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", op, names[i]);
    M2_TRY(m2_check_float(in[i], op, names[i]));
    M2_TRY(m2_check_same_dtype(in[0], in[i], op));
  }
  m2_tensor *q = in[0], *k = in[1], *v = in[2];
  char a[96], b[96];
  for (int i = 0; i < 3; i++)
    if (in[i]->ndim != 4)
      return m2_fail(M2_ERR_SHAPE, "%s: %s has shape %s, expected 4 dims (%s)", op, names[i],
                     m2_shape_str(in[i], a, sizeof a), i ? "B, S, Hkv, D" : "B, T, H, D");
  d->B = q->shape[0], d->T = q->shape[1], d->H = q->shape[2], d->D = q->shape[3];
  d->S = k->shape[1], d->Hkv = k->shape[2];
  if (!m2_same_shape(k, v))
    return m2_fail(M2_ERR_SHAPE, "%s: k has shape %s but v has %s; both must be (B, S, Hkv, D)", op,
                   m2_shape_str(k, a, sizeof a), m2_shape_str(v, b, sizeof b));
  if (k->shape[0] != d->B || k->shape[3] != d->D)
    return m2_fail(M2_ERR_SHAPE, "%s: k has shape %s, q has %s; the batch B and head dim D must agree", op,
                   m2_shape_str(k, a, sizeof a), m2_shape_str(q, b, sizeof b));
  if (d->Hkv < 1 || d->H % d->Hkv != 0)
    return m2_fail(M2_ERR_SHAPE, "%s: the kv head count %lld must divide the query head count %lld", op,
                   (long long)d->Hkv, (long long)d->H);
  return M2_OK;
}

/* With bf16 products (attr.bf16) an f32 input's double copy rounded to bf16, as the tensor cores see it. */
static void att_operand(const m2_opcall *c, dbuf *x) {
  if (!M2_ATTR(c, m2_attention_attr)->bf16 || !(x->own || x->held) || !x->t || x->t->dtype != M2_F32) return; /* never round in place */
  for (int64_t i = 0, n = m2_numel(x->t); i < n; i++) x->p[i] = m2_bf16_to_f32(m2_f32_to_bf16((float)x->p[i]));
}

/* Keys that query t may read: s < att_len(t). */
static int64_t att_len(const m2_attention_attr *d, bool causal, int64_t t) {
  if (!causal) return d->S;
  int64_t n = t + d->S - d->T + 1;
  return n < 0 ? 0 : n > d->S ? d->S : n;
}

static m2_status attention_fwd(m2_opcall *c) {
  const m2_attention_attr d = *M2_ATTR(c, m2_attention_attr);
  double scale = d.scale;
  bool causal = d.causal;
  int64_t B = d.B, T = d.T, H = d.H, D = d.D, S = d.S, Hkv = d.Hkv, rep = H / Hkv;
  dbuf q = {0}, k = {0}, v = {0}, o = {0};
  m2_tensor *lse = NULL;
  double *p = NULL;
  m2_status s = dbuf_in(&q, c->in[0]);
  if (s == M2_OK) s = dbuf_in(&k, c->in[1]);
  if (s == M2_OK) s = dbuf_in(&v, c->in[2]);
  if (s == M2_OK) att_operand(c, &q), att_operand(c, &k), att_operand(c, &v);
  if (s == M2_OK) s = dbuf_out(&o, c->in[0]->dtype, 4, c->in[0]->shape);
  if (s == M2_OK && !(lse = m2_empty(M2_F64, M2_DEV_CPU, 3, (int64_t[]){B, H, T}))) s = m2_errcode();
  if (s == M2_OK && !(p = malloc(sizeof(double) * (size_t)(S ? S : 1)))) s = m2_fail(M2_ERR_OOM, "attention: out of memory");
  if (s == M2_OK) {
    double *L = m2_data(lse);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t t = 0; t < T; t++) {
          int64_t n = att_len(&d, causal, t), kh = h / rep;
          const double *qt = q.p + ((b * T + t) * H + h) * D;
          double *ot = o.p + ((b * T + t) * H + h) * D, m = -INFINITY, l = 0;
          for (int64_t j = 0; j < n; j++) {
            const double *ks = k.p + ((b * S + j) * Hkv + kh) * D;
            double acc = 0;
            for (int64_t x = 0; x < D; x++) acc += qt[x] * ks[x];
            p[j] = scale * acc;
            if (p[j] > m) m = p[j];
          }
          for (int64_t j = 0; j < n; j++) l += p[j] = exp(p[j] - m);
          for (int64_t j = 0; j < n; j++) {
            const double *vs = v.p + ((b * S + j) * Hkv + kh) * D;
            double w = p[j] / l;
            for (int64_t x = 0; x < D; x++) ot[x] += w * vs[x];
          }
          L[(b * H + h) * T + t] = n ? m + log(l) : -INFINITY;
        }
    dbuf_store(&o);
  }
  free(p);
  dbuf_free(&q), dbuf_free(&k), dbuf_free(&v), dbuf_free(&o);
  if (s != M2_OK) {
    m2_release(o.t);
    m2_release(lse);
    return s;
  }
  c->n_out = 1;
  c->out[0] = o.t;
  m2_save(c, lse);
  m2_release(lse);
  return M2_OK;
}

static m2_status attention_bwd(m2_opcall *c) {
  const m2_attention_attr d = *M2_ATTR(c, m2_attention_attr);
  if (c->n_saved < 1 || !c->saved[0] || !c->out[0])
    return m2_fail(M2_ERR_AUTOGRAD, "attention: backward without the saved output and log-sum-exp");
  double scale = d.scale;
  bool causal = d.causal;
  int64_t B = d.B, T = d.T, H = d.H, D = d.D, S = d.S, Hkv = d.Hkv, rep = H / Hkv;
  m2_dtype dt = c->in[0]->dtype;
  dbuf q = {0}, k = {0}, v = {0}, o = {0}, dO = {0}, din[3] = {0};
  m2_status s = dbuf_in(&q, c->in[0]);
  if (s == M2_OK) s = dbuf_in(&k, c->in[1]);
  if (s == M2_OK) s = dbuf_in(&v, c->in[2]);
  if (s == M2_OK) s = dbuf_in(&o, c->out[0]);
  if (s == M2_OK) s = dbuf_in(&dO, c->dout[0]);
  if (s == M2_OK) att_operand(c, &q), att_operand(c, &k), att_operand(c, &v), att_operand(c, &dO);
  for (int i = 0; i < 3 && s == M2_OK; i++) s = dbuf_out(&din[i], dt, 4, c->in[i]->shape);
  if (s == M2_OK) {
    const double *L = m2_data(c->saved[0]);
    double *dq = din[0].p, *dk = din[1].p, *dv = din[2].p;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t t = 0; t < T; t++) {
          int64_t n = att_len(&d, causal, t), kh = h / rep, row = ((b * T + t) * H + h) * D;
          const double *qt = q.p + row, *ot = o.p + row, *dot = dO.p + row;
          double *dqt = dq + row, lse = L[(b * H + h) * T + t], Dt = 0;
          for (int64_t x = 0; x < D; x++) Dt += dot[x] * ot[x];
          for (int64_t j = 0; j < n; j++) {
            int64_t col = ((b * S + j) * Hkv + kh) * D;
            const double *ks = k.p + col, *vs = v.p + col;
            double *dks = dk + col, *dvs = dv + col, qk = 0, dp = 0;
            for (int64_t x = 0; x < D; x++) qk += qt[x] * ks[x], dp += dot[x] * vs[x];
            double P = exp(scale * qk - lse), dS = scale * P * (dp - Dt);
            for (int64_t x = 0; x < D; x++) {
              dqt[x] += dS * ks[x];
              dks[x] += dS * qt[x];
              dvs[x] += P * dot[x];
            }
          }
        }
    for (int i = 0; i < 3; i++) dbuf_store(&din[i]);
  }
  dbuf_free(&q), dbuf_free(&k), dbuf_free(&v), dbuf_free(&o), dbuf_free(&dO);
  for (int i = 0; i < 3; i++) {
    dbuf_free(&din[i]);
    if (s == M2_OK && c->needs_din[i]) c->din[i] = din[i].t;
    else m2_release(din[i].t);
  }
  return s;
}

const m2_op m2_op_attention = {"attention", attention_fwd, attention_bwd,
                                M2_OP_KEEP_OUTPUTS | M2_OP_CAST_IN0 | M2_OP_CAST_F32_KERNELS};

/* opts NULL means {scale 1/sqrt(D), causal}. */
m2_tensor *m2_attention(m2_tensor *q, m2_tensor *k, m2_tensor *v, const m2_attention_opts *o) {
  m2_tensor *in[3] = {q, k, v};
  double scale = o ? o->scale : 0;
  if (scale == 0 && q && q->ndim == 4 && q->shape[3] > 0) scale = 1.0 / sqrt((double)q->shape[3]);
  if (!isfinite(scale)) {
    m2_fail(M2_ERR_VALUE, "attention: scale must be finite");
    return NULL;
  }
  m2_attention_attr a;
  if (m2_attention_check(in, &a) != M2_OK) return NULL; /* the one check: the kernels trust a */
  a.scale = scale;
  a.causal = o ? o->causal : true;
  a.bf16 = m2_matmul_precision() == M2_MM_BF16 && (q->dtype == M2_F32 || q->dtype == M2_BF16);
  m2_opcall c;
  m2_call_init(&c, &m2_op_attention, 3, in);
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ---------------- rope ---------------- */

/* Run by m2_rope before the call (the kernels trust its result). */
m2_status m2_rope_check(const m2_tensor *x, double theta) {
  if (!x) return m2_fail(M2_ERR_VALUE, "rope: x is NULL");
  M2_TRY(m2_check_float(x, "rope", "x"));
  char a[96];
  if (x->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "rope: x has shape %s, expected 4 dims (B, T, H, D)", m2_shape_str(x, a, sizeof a));
  if (x->shape[3] % 2 != 0)
    return m2_fail(M2_ERR_SHAPE, "rope: the last dim D = %lld must be even (pairs i, i + D/2)", (long long)x->shape[3]);
  if (!(theta > 0) || !isfinite(theta)) return m2_fail(M2_ERR_VALUE, "rope: theta must be > 0, got %g", theta);
  return M2_OK;
}

/* out = rotate(in) by sign * angle; in, out (B,T,H,D) double. */
static m2_status rope_apply(const double *in, double *out, const int64_t *shape, double theta, int64_t offset,
                            double sign) {
  int64_t B = shape[0], T = shape[1], H = shape[2], D = shape[3], D2 = D / 2;
  double *cs = malloc(sizeof(double) * (size_t)(2 * T * D2 + 1));
  if (!cs) return m2_fail(M2_ERR_OOM, "rope: out of host memory");
  double *sn = cs + T * D2;
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < D2; i++) {
      double a = (double)(t + offset) * exp(-(2.0 * (double)i / (double)D) * log(theta));
      cs[t * D2 + i] = cos(a);
      sn[t * D2 + i] = sign * sin(a);
    }
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++) {
        int64_t row = ((b * T + t) * H + h) * D;
        const double *x = in + row, *c = cs + t * D2, *s = sn + t * D2;
        double *y = out + row;
        for (int64_t i = 0; i < D2; i++) {
          double x0 = x[i], x1 = x[i + D2];
          y[i] = x0 * c[i] - x1 * s[i];
          y[i + D2] = x0 * s[i] + x1 * c[i];
        }
      }
  free(cs);
  return M2_OK;
}

static m2_status rope_run(m2_opcall *c, m2_tensor *src, m2_tensor **dst, double sign) {
  dbuf x = {0}, y = {0};
  m2_status s = dbuf_in(&x, src);
  if (s == M2_OK) s = dbuf_out(&y, src->dtype, 4, src->shape);
  const m2_rope_attr *a = M2_ATTR(c, m2_rope_attr);
  if (s == M2_OK) s = rope_apply(x.p, y.p, src->shape, a->theta, a->offset, sign);
  if (s == M2_OK) dbuf_store(&y);
  dbuf_free(&x), dbuf_free(&y);
  if (s != M2_OK) { m2_release(y.t); return s; }
  *dst = y.t;
  return M2_OK;
}

static m2_status rope_fwd(m2_opcall *c) {
  c->n_out = 1;
  return rope_run(c, c->in[0], &c->out[0], 1.0);
}

static m2_status rope_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  return rope_run(c, c->dout[0], &c->din[0], -1.0);
}

const m2_op m2_op_rope = {"rope", rope_fwd, rope_bwd, M2_OP_CAST_IN0, M2_IN(0)};

m2_tensor *m2_rope(m2_tensor *x, double theta, int64_t offset) {
  if (m2_rope_check(x, theta) != M2_OK) return NULL; /* the one check: the kernels trust it */
  m2_tensor *in[1] = {x};
  m2_rope_attr a = {theta, offset};
  m2_opcall c;
  m2_call_init(&c, &m2_op_rope, 1, in);
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
