/* ops_elementwise.c — broadcasting binary ops and unary maps (CPU reference kernels).
 * Kernels compute in double and store in the tensor's dtype (F32 or F64). */
#include "ops.h"
#include <math.h>
#include <string.h>

/* ---------------- broadcasting binary kernel ---------------- */

typedef double (*binfn)(double, double);

/* out = f(a, b) with numpy broadcasting; a, b contiguous, same float dtype. */
static m2_status binary_fwd(m2_opcall *c, binfn f, const char *name) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  M2_TRY(m2_check_float(a, name, "a"));
  M2_TRY(m2_check_same_dtype(a, b, name));
  int nd;
  int64_t shape[M2_MAX_DIMS], sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
  M2_TRY(m2_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape, name));
  m2_broadcast_strides(a->ndim, a->shape, nd, shape, sa);
  m2_broadcast_strides(b->ndim, b->shape, nd, shape, sb);
  m2_tensor *o = m2_empty(a->dtype, a->device, nd, shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  int64_t n = m2_numel(o);
  const void *pa = m2_data(a), *pb = m2_data(b);
  void *po = m2_data(o);
  m2_dtype dt = a->dtype;
  if (m2_same_shape(a, b)) {
    if (dt == M2_F32) {
      const float *x = pa, *y = pb;
      float *z = po;
      for (int64_t i = 0; i < n; i++) z[i] = (float)f(x[i], y[i]);
    } else {
      for (int64_t i = 0; i < n; i++) m2_store(po, dt, i, f(m2_load(pa, dt, i), m2_load(pb, dt, i)));
    }
    return M2_OK;
  }
  int64_t idx[M2_MAX_DIMS] = {0}, oa = 0, ob = 0;
  for (int64_t i = 0; i < n; i++) {
    m2_store(po, dt, i, f(m2_load(pa, dt, oa), m2_load(pb, dt, ob)));
    for (int d = nd - 1; d >= 0; d--) { /* odometer increment */
      idx[d]++;
      oa += sa[d];
      ob += sb[d];
      if (idx[d] < shape[d]) break;
      oa -= sa[d] * shape[d];
      ob -= sb[d] * shape[d];
      idx[d] = 0;
    }
  }
  return M2_OK;
}

static m2_tensor *binary(const m2_op *op, m2_tensor *a, m2_tensor *b) {
  m2_tensor *in[2] = {a, b};
  m2_opcall c;
  m2_call_init(&c, op, 2, in);
  return m2_call1(&c);
}

/* Reduce a broadcast gradient to an input's shape and hand it over as din[i]. */
static m2_status give_din(m2_opcall *c, int i, m2_tensor *g) {
  if (!g) return m2_errcode();
  m2_tensor *r = m2_sum_to_shape(g, c->in[i]->ndim, c->in[i]->shape);
  m2_release(g);
  if (!r) return m2_errcode();
  c->din[i] = r;
  return M2_OK;
}

static double f_add(double x, double y) { return x + y; }
static m2_status add_fwd(m2_opcall *c) { return binary_fwd(c, f_add, "add"); }
static m2_status add_bwd(m2_opcall *c) {
  for (int i = 0; i < 2; i++)
    if (c->needs_din[i]) { m2_retain(c->dout[0]); M2_TRY(give_din(c, i, c->dout[0])); }
  return M2_OK;
}
const m2_op m2_op_add = {"add", add_fwd, add_bwd, NULL, NULL, 0};
m2_tensor *m2_add(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_add, a, b); }

static double f_mul(double x, double y) { return x * y; }
static m2_status mul_fwd(m2_opcall *c) { return binary_fwd(c, f_mul, "mul"); }
static m2_status mul_bwd(m2_opcall *c) {
  if (c->needs_din[0]) M2_TRY(give_din(c, 0, m2_mul(c->dout[0], c->in[1])));
  if (c->needs_din[1]) M2_TRY(give_din(c, 1, m2_mul(c->dout[0], c->in[0])));
  return M2_OK;
}
const m2_op m2_op_mul = {"mul", mul_fwd, mul_bwd, NULL, NULL, 0};
m2_tensor *m2_mul(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_mul, a, b); }
