/* ops_reduce.c — reductions along a dim and over everything (CPU reference kernels). */
#include "ops.h"
#include <math.h>
#include <string.h>

/* View x (contiguous) as (outer, n, inner) around dim d. */
static void split3(const m2_tensor *x, int d, int64_t *outer, int64_t *n, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < d; i++) *outer *= x->shape[i];
  for (int i = d + 1; i < x->ndim; i++) *inner *= x->shape[i];
  *n = x->ndim ? x->shape[d] : 1;
}

static m2_tensor *reduced_like(const m2_tensor *x, int d, bool keepdim) {
  int64_t shape[M2_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i == d) { if (keepdim) shape[nd++] = 1; }
    else shape[nd++] = x->shape[i];
  }
  return m2_empty(x->dtype, x->device, nd, shape);
}

/* ---- sum: ia[0] = dim, ia[1] = keepdim ---- */
static m2_status sum_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  M2_TRY(m2_check_float(x, "sum", "x"));
  int d = (int)c->ia[0];
  int64_t outer, n, inner;
  split3(x, d, &outer, &n, &inner);
  m2_tensor *o = reduced_like(x, d, c->ia[1]);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  const void *px = m2_data(x);
  void *po = m2_data(o);
  for (int64_t a = 0; a < outer; a++)
    for (int64_t b = 0; b < inner; b++) {
      double acc = 0;
      for (int64_t k = 0; k < n; k++) acc += m2_load(px, x->dtype, (a * n + k) * inner + b);
      m2_store(po, o->dtype, a * inner + b, acc);
    }
  return M2_OK;
}
static m2_status sum_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *g = c->dout[0];
  int d = (int)c->ia[0];
  m2_tensor *gk = g;
  m2_retain(gk);
  if (!c->ia[1]) { /* re-insert the reduced dim */
    int64_t shape[M2_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = 1;
    m2_tensor *r = m2_reshape(g, x->ndim, shape);
    m2_release(gk);
    if (!r) return m2_errcode();
    gk = r;
  }
  m2_tensor *e = m2_expand(gk, x->ndim, x->shape);
  m2_release(gk);
  if (!e) return m2_errcode();
  c->din[0] = m2_contiguous(e);
  m2_release(e);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_sum = {"sum", sum_fwd, sum_bwd, NULL, NULL, 0};

m2_tensor *m2_sum(m2_tensor *x, int dim, bool keepdim) {
  int d;
  if (m2_norm_dim(x, dim, &d, "sum") != M2_OK) return NULL;
  m2_opcall c;
  m2_call_init(&c, &m2_op_sum, 1, &x);
  c.ia[0] = d;
  c.ia[1] = keepdim;
  return m2_call1(&c);
}

/* ---- sum_all: 0-d ---- */
static m2_status sum_all_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  M2_TRY(m2_check_float(x, "sum_all", "x"));
  int64_t n = m2_numel(x);
  const void *px = m2_data(x);
  double acc = 0;
  for (int64_t i = 0; i < n; i++) acc += m2_load(px, x->dtype, i);
  c->n_out = 1;
  c->out[0] = m2_scalar(x->dtype, x->device, acc);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status sum_all_bwd(m2_opcall *c) {
  m2_tensor *e = m2_expand(c->dout[0], c->in[0]->ndim, c->in[0]->shape);
  if (!e) return m2_errcode();
  c->din[0] = m2_contiguous(e);
  m2_release(e);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_sum_all = {"sum_all", sum_all_fwd, sum_all_bwd, NULL, NULL, 0};

m2_tensor *m2_sum_all(m2_tensor *x) {
  m2_opcall c;
  m2_call_init(&c, &m2_op_sum_all, 1, &x);
  return m2_call1(&c);
}
