/* ops_swiglu.c — swiglu(a, b) = silu(a) * b = a sigmoid(a) b: the gate of SwiGLU MLPs and of the mixers' output
 * gates (y * silu(g)) as one op. One pass instead of two, and only a and b are kept for backward (silu then mul
 * also keeps silu(a), an activation-sized tensor per call).
 * a, b: same shape and float dtype (no broadcasting). CPU reference computing in double (F32, F64, BF16).
 * Backward with s = sigmoid(a):  da = g b s (1 + a (1 - s)),  db = g a s.
 * Op row "swiglu": in = {a, b}, out = {y}. */
#include "ops.h"
#include "ops_elementwise.h"
#include <math.h>

static m2_status swiglu_check(m2_tensor *a, m2_tensor *b, m2_float_rule check_float) {
  if (!a || !b) return m2_fail(M2_ERR_VALUE, "swiglu: %s is NULL", a ? "b" : "a");
  M2_TRY(check_float(a, "swiglu", "a"));
  M2_TRY(m2_check_same_dtype(a, b, "swiglu"));
  if (!m2_same_shape(a, b)) {
    char sa[96], sb[96];
    return m2_fail(M2_ERR_SHAPE, "swiglu: a %s and b %s must have the same shape", m2_shape_str(a, sa, sizeof sa),
                   m2_shape_str(b, sb, sizeof sb));
  }
  return M2_OK;
}
m2_status m2_swiglu_check(m2_tensor *a, m2_tensor *b, m2_float_rule check_float) {
  return swiglu_check(a, b, check_float);
}

static inline double sigm(double x) { return 1 / (1 + exp(-x)); }

static m2_status swiglu_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(swiglu_check(a, b, m2_check_float));
  m2_tensor *y = m2_empty(a->dtype, a->device, a->ndim, a->shape);
  if (!y) return m2_errcode();
  const void *pa = m2_data(a), *pb = m2_data(b);
  void *py = m2_data(y);
  int64_t n = m2_numel(a);
  if (a->dtype == M2_F32) {
    const float *x = pa, *z = pb;
    float *o = py;
    for (int64_t i = 0; i < n; i++) o[i] = (float)((double)x[i] * sigm(x[i]) * z[i]);
  } else {
    for (int64_t i = 0; i < n; i++) {
      double x = m2_load(pa, a->dtype, i);
      m2_store(py, a->dtype, i, x * sigm(x) * m2_load(pb, a->dtype, i));
    }
  }
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}

static m2_status swiglu_bwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(swiglu_check(a, b, m2_check_float));
  m2_tensor *g = m2_contiguous(c->dout[0]); /* gradients may arrive strided */
  if (!g) return m2_errcode();
  m2_tensor *g2 = g->dtype == a->dtype ? (m2_retain(g), g) : m2_clone_raw(g, a->dtype, a->device);
  m2_release(g);
  if (!g2) return m2_errcode();
  m2_tensor *da = c->needs_din[0] ? m2_empty(a->dtype, a->device, a->ndim, a->shape) : NULL;
  m2_tensor *db = c->needs_din[1] ? m2_empty(a->dtype, a->device, a->ndim, a->shape) : NULL;
  if ((c->needs_din[0] && !da) || (c->needs_din[1] && !db)) {
    m2_release(g2), m2_release(da), m2_release(db);
    return m2_errcode();
  }
  const void *pa = m2_data(a), *pb = m2_data(b), *pg = m2_data(g2);
  int64_t n = m2_numel(a);
  if (a->dtype == M2_F32) {
    const float *x = pa, *z = pb, *gg = pg;
    float *ea = da ? m2_data(da) : NULL, *eb = db ? m2_data(db) : NULL;
    for (int64_t i = 0; i < n; i++) {
      double s = sigm(x[i]);
      if (ea) ea[i] = (float)((double)gg[i] * z[i] * s * (1 + x[i] * (1 - s)));
      if (eb) eb[i] = (float)((double)gg[i] * x[i] * s);
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      double x = m2_load(pa, a->dtype, i), z = m2_load(pb, a->dtype, i), gi = m2_load(pg, a->dtype, i), s = sigm(x);
      if (da) m2_store(m2_data(da), a->dtype, i, gi * z * s * (1 + x * (1 - s)));
      if (db) m2_store(m2_data(db), a->dtype, i, gi * x * s);
    }
  }
  m2_release(g2);
  c->din[0] = da;
  c->din[1] = db;
  return M2_OK;
}

const m2_op m2_op_swiglu = {"swiglu", swiglu_fwd, swiglu_bwd, M2_OP_MIXED_KERNELS_OPT};

m2_tensor *m2_swiglu(m2_tensor *a, m2_tensor *b) {
  if (swiglu_check(a, b, m2_check_float) != M2_OK) return NULL;
  m2_tensor *in[2] = {a, b};
  m2_opcall c;
  m2_call_init(&c, &m2_op_swiglu, 2, in);
  return m2_call1(&c);
}
