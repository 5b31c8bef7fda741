/* dbuf.c — float tensors as double buffers for the double-precision CPU reference kernels. */
#include "dbuf.h"
#include <stdlib.h>

m2_status dbuf_in(dbuf *d, m2_tensor *t) {
  d->t = t;
  d->p = NULL;
  d->own = false;
  d->held = NULL;
  if (!t) return M2_OK;
  if (!m2_is_contiguous(t) || (t->dtype != M2_F64 && t->dtype != M2_F32)) {
    d->held = m2_clone_raw(t, M2_F64, M2_DEV_CPU);
    if (!d->held) return m2_errcode();
    d->p = m2_data(d->held);
    return M2_OK;
  }
  if (t->dtype == M2_F64) { d->p = m2_data(t); return M2_OK; }
  int64_t n = m2_numel(t);
  d->p = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!d->p) return m2_fail(M2_ERR_OOM, "out of host memory for a double-precision buffer");
  d->own = true;
  const float *s = m2_data(t);
  for (int64_t i = 0; i < n; i++) d->p[i] = s[i];
  return M2_OK;
}

/* A new zeroed tensor of dtype dt and a double buffer to compute it in (dbuf_store copies it over). */
m2_status dbuf_out(dbuf *d, m2_dtype dt, int nd, const int64_t *shape) {
  d->held = NULL;
  d->own = false;
  d->p = NULL;
  d->t = m2_zeros(dt, M2_DEV_CPU, nd, shape);
  if (!d->t) return m2_errcode();
  if (dt == M2_F64) { d->p = m2_data(d->t); return M2_OK; }
  int64_t n = m2_numel(d->t);
  d->p = calloc((size_t)(n ? n : 1), sizeof(double));
  if (!d->p) { m2_release(d->t); d->t = NULL; return m2_fail(M2_ERR_OOM, "out of host memory for a double-precision buffer"); }
  d->own = true;
  return M2_OK;
}

void dbuf_store(dbuf *d) {
  if (!d->own || !d->t) return;
  float *o = m2_data(d->t);
  int64_t n = m2_numel(d->t);
  for (int64_t i = 0; i < n; i++) o[i] = (float)d->p[i];
}

void dbuf_free(dbuf *d) {
  if (d->own) free(d->p);
  m2_release(d->held);
  d->held = NULL;
  d->p = NULL;
  d->own = false;
}
