/* mixer_common.c — the checks, output bookkeeping and CPU buffer plumbing shared by the GDN and SSD ops
 * (see mixer_common.h). */
#include "mixer_common.h"
#include "ops.h"
#include <string.h>

/* ---------------- checks ---------------- */

m2_status mixer_want_shape(const m2_tensor *t, const char *op, const char *arg, const char *form, int nd,
                           const int64_t *shape) {
  bool ok = t->ndim == nd;
  for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
  if (ok) return M2_OK;
  char a[96], b[96];
  return m2_fail(M2_ERR_SHAPE, "%s: %s has shape %s, expected %s = %s", op, arg, m2_shape_str(t, a, sizeof a), form,
                 m2_shape_str_raw(nd, shape, b, sizeof b));
}

m2_status mixer_check_inputs(m2_tensor *const *in, const char *const names[6], const char *op) {
  for (int i = 0; i < 5; i++)
    if (!in[i]) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL (only h0 may be omitted)", op, names[i]);
  for (int i = 0; i < 6; i++) {
    if (!in[i]) continue;
    M2_TRY(m2_check_float(in[i], op, names[i]));
    M2_TRY(m2_check_same_dtype(in[0], in[i], op));
  }
  return M2_OK;
}

m2_status mixer_supports(const m2_opcall *c, const char *const names[6], const char *op, int64_t n, const char *what,
                         const mixer_rules *r) {
  for (int i = 0; i < 6; i++)
    if (c->in[i]) M2_TRY(r->check_float(c->in[i], op, names[i]));
  if (r->max_dim <= 0 || n <= r->max_dim) return M2_OK;
  return m2_fail(M2_ERR_UNSUPPORTED, "%s: the %s kernels take %s <= %lld (got %s = %lld)", op, r->kernels, what,
                 (long long)r->max_dim, what, (long long)n);
}

/* ---------------- forward and API ---------------- */

bool mixer_keep(const m2_opcall *c) {
  bool keep = false;
  for (int i = 0; i < 6; i++) keep |= c->in[i] && c->in[i]->requires_grad;
  return keep;
}

m2_status mixer_fwd_finish(m2_opcall *c, m2_status s, m2_tensor *y, m2_tensor *hT, m2_tensor *ck) {
  if (s != M2_OK) {
    m2_release(y), m2_release(hT), m2_release(ck);
    return s;
  }
  c->n_out = 2;
  c->out[0] = y;
  c->out[1] = hT;
  if (ck) {
    m2_save(c, ck);
    m2_release(ck);
  }
  return M2_OK;
}

m2_status mixer_call(const m2_op *op, m2_tensor *const *in, const void *attr, size_t n, m2_tensor **y, m2_tensor **hT) {
  m2_opcall c;
  m2_call_init(&c, op, 6, in);
  m2_call_set_attr(&c, attr, n);
  m2_tensor *outs[M2_MAX_OUT] = {0};
  M2_TRY(m2_call_run(&c, outs));
  if (y) *y = outs[0];
  else m2_release(outs[0]);
  if (hT) *hT = outs[1];
  else m2_release(outs[1]);
  return M2_OK;
}

/* ---------------- CPU plumbing ---------------- */

m2_status mixer_fwd_open(m2_opcall *c, mixer_fwd_bufs *b, const int64_t yshape[4], const int64_t hshape[4],
                         const int64_t ckshape[5]) {
  memset(b, 0, sizeof *b);
  m2_dtype dt = c->in[0]->dtype;
  m2_status s = M2_OK;
  for (int i = 0; i < 6 && s == M2_OK; i++) s = dbuf_in(&b->in[i], c->in[i]);
  if (s == M2_OK) s = dbuf_out(&b->y, dt, 4, yshape);
  if (s == M2_OK) s = dbuf_out(&b->hT, dt, 4, hshape);
  if (s == M2_OK && mixer_keep(c)) {
    b->ck = m2_empty(M2_F64, M2_DEV_CPU, 5, ckshape);
    if (!b->ck) s = m2_errcode();
  }
  return s;
}

m2_status mixer_fwd_close(m2_opcall *c, mixer_fwd_bufs *b, m2_status s) {
  if (s == M2_OK) {
    dbuf_store(&b->y);
    dbuf_store(&b->hT);
  }
  for (int i = 0; i < 6; i++) dbuf_free(&b->in[i]);
  dbuf_free(&b->y);
  dbuf_free(&b->hT);
  return mixer_fwd_finish(c, s, b->y.t, b->hT.t, b->ck);
}

m2_status mixer_bwd_open(m2_opcall *c, mixer_bwd_bufs *b) {
  memset(b, 0, sizeof *b);
  m2_dtype dt = c->in[0]->dtype;
  m2_status s = M2_OK;
  for (int i = 0; i < 6 && s == M2_OK; i++) s = dbuf_in(&b->in[i], c->in[i]);
  if (s == M2_OK) s = dbuf_in(&b->dy, c->dout[0]);
  if (s == M2_OK) s = dbuf_in(&b->dhT, c->dout[1]);
  for (int i = 0; i < 6 && s == M2_OK; i++)
    if (c->in[i]) s = dbuf_out(&b->din[i], dt, c->in[i]->ndim, c->in[i]->shape);
  return s;
}

m2_status mixer_bwd_close(m2_opcall *c, mixer_bwd_bufs *b, m2_status s) {
  if (s == M2_OK)
    for (int i = 0; i < 6; i++) dbuf_store(&b->din[i]);
  for (int i = 0; i < 6; i++) dbuf_free(&b->in[i]);
  dbuf_free(&b->dy);
  dbuf_free(&b->dhT);
  for (int i = 0; i < 6; i++) {
    dbuf_free(&b->din[i]);
    if (s == M2_OK && c->needs_din[i]) c->din[i] = b->din[i].t;
    else m2_release(b->din[i].t);
  }
  return s;
}

void mixer_load(double *dst, const double *src, int64_t n) {
  if (src) memcpy(dst, src, sizeof(double) * (size_t)n);
  else memset(dst, 0, sizeof(double) * (size_t)n);
}
