/* tensor.c — tensor and storage lifetime, construction, views, element access, copies. */
#include "tensor.h"
#include "backend.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long g_live_tensors;
long m2_live_tensors(void) { return g_live_tensors; }

/* ---------------- storage ---------------- */

static m2_storage *storage_new(m2_device dev, size_t nbytes) {
  const m2_backend *b = m2_backend_get(dev.type);
  if (!b) {
    m2_fail(M2_ERR_DEVICE, "device %s is not available (built without CUDA or no GPU)",
            dev.type == M2_CUDA ? "cuda" : "cpu");
    return NULL;
  }
  m2_storage *s = calloc(1, sizeof *s);
  if (!s) { m2_fail(M2_ERR_OOM, "out of host memory for a storage header"); return NULL; }
  if (b->alloc(dev.index, nbytes, "a tensor", &s->data) != M2_OK) { free(s); return NULL; }
  s->refcount = 1;
  s->device = dev;
  s->nbytes = nbytes;
  m2_mem_account(dev.type, (long long)nbytes);
  return s;
}

static void storage_release(m2_storage *s) {
  if (!s || --s->refcount > 0) return;
  const m2_backend *b = m2_backend_get(s->device.type);
  if (b) b->free(s->device.index, s->data);
  m2_mem_account(s->device.type, -(long long)s->nbytes);
  free(s);
}

/* ---------------- tensors ---------------- */

m2_status m2_shape_numel(int ndim, const int64_t *shape, const char *what, int64_t *numel) {
  int64_t n = 1, span = 1; /* span: the product with sizes 0 taken as 1 (the contiguous strides' extent) */
  const char *pre = what ? what : "", *sep = what ? ": " : "";
  for (int i = 0; i < ndim; i++) {
    char b[160];
    if (shape[i] < 0)
      return m2_fail(M2_ERR_SHAPE, "%s%snegative size in shape %s", pre, sep, m2_shape_str_raw(ndim, shape, b, sizeof b));
    int64_t d = shape[i] > 0 ? shape[i] : 1;
    if (d > M2_MAX_NUMEL / span)
      return m2_fail(M2_ERR_SHAPE, "%s%sshape %s is too large: its sizes multiply past 2^48 (%lld) elements", pre, sep,
                     m2_shape_str_raw(ndim, shape, b, sizeof b), (long long)M2_MAX_NUMEL);
    span *= d;
    n *= shape[i];
  }
  if (numel) *numel = n;
  return M2_OK;
}

/* Shapes are checked when a tensor is made (m2_shape_numel), so these products stay below M2_MAX_NUMEL. */
void m2_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t st = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = st;
    st *= shape[i] > 0 ? shape[i] : 1;
  }
}

static m2_tensor *tensor_header(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > M2_MAX_DIMS) {
    m2_fail(M2_ERR_SHAPE, "tensors have at most %d dims, asked for %d", M2_MAX_DIMS, ndim);
    return NULL;
  }
  if ((unsigned)dt >= M2_NDTYPES) { m2_fail(M2_ERR_DTYPE, "unknown dtype %d", (int)dt); return NULL; }
  if (m2_shape_numel(ndim, shape, NULL, NULL) != M2_OK) return NULL;
  m2_tensor *t = calloc(1, sizeof *t);
  if (!t) { m2_fail(M2_ERR_OOM, "out of host memory for a tensor header"); return NULL; }
  t->refcount = 1;
  t->dtype = dt;
  t->device = dev;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  m2_contiguous_strides(ndim, shape, t->stride);
  g_live_tensors++;
  return t;
}

m2_tensor *m2_empty(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape) {
  m2_tensor *t = tensor_header(dt, dev, ndim, shape);
  if (!t) return NULL;
  t->storage = storage_new(dev, (size_t)m2_numel(t) * m2_dtype_size(dt));
  if (!t->storage) { g_live_tensors--; free(t); return NULL; }
  return t;
}

m2_tensor *m2_zeros(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, dev, ndim, shape);
  if (t && m2_zero_(t) != M2_OK) { m2_release(t); return NULL; }
  return t;
}

m2_tensor *m2_full(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape, double v) {
  m2_tensor *t = m2_empty(dt, dev, ndim, shape);
  if (t && m2_fill_(t, v) != M2_OK) { m2_release(t); return NULL; }
  return t;
}

m2_tensor *m2_scalar(m2_dtype dt, m2_device dev, double v) { return m2_full(dt, dev, 0, NULL, v); }

m2_tensor *m2_from_data(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape, const void *data) {
  m2_tensor *t = m2_empty(dt, dev, ndim, shape);
  if (!t) return NULL;
  if (m2_memcpy(dev, t->storage->data, M2_DEV_CPU, data, t->storage->nbytes) != M2_OK) {
    m2_release(t);
    return NULL;
  }
  return t;
}

m2_tensor *m2_empty_like(const m2_tensor *t) { return m2_empty(t->dtype, t->device, t->ndim, t->shape); }
m2_tensor *m2_zeros_like(const m2_tensor *t) { return m2_zeros(t->dtype, t->device, t->ndim, t->shape); }

static int collect_shape(int ndim, va_list ap, int64_t *shape) {
  if (ndim < 0 || ndim > M2_MAX_DIMS) return -1;
  for (int i = 0; i < ndim; i++) shape[i] = va_arg(ap, int64_t);
  return 0;
}
m2_tensor *m2_empty_v(m2_dtype dt, m2_device dev, int ndim, ...) {
  int64_t shape[M2_MAX_DIMS];
  va_list ap;
  va_start(ap, ndim);
  int bad = collect_shape(ndim, ap, shape);
  va_end(ap);
  if (bad) { m2_fail(M2_ERR_SHAPE, "at most %d dims", M2_MAX_DIMS); return NULL; }
  return m2_empty(dt, dev, ndim, shape);
}
m2_tensor *m2_zeros_v(m2_dtype dt, m2_device dev, int ndim, ...) {
  int64_t shape[M2_MAX_DIMS];
  va_list ap;
  va_start(ap, ndim);
  int bad = collect_shape(ndim, ap, shape);
  va_end(ap);
  if (bad) { m2_fail(M2_ERR_SHAPE, "at most %d dims", M2_MAX_DIMS); return NULL; }
  return m2_zeros(dt, dev, ndim, shape);
}

void m2_retain(m2_tensor *t) { if (t) t->refcount++; }

void m2_release(m2_tensor *t) {
  if (!t || --t->refcount > 0) return;
  storage_release(t->storage);
  m2_release(t->grad);
  if (t->grad_fn) ((m2_node_head *)t->grad_fn)->release(t->grad_fn); /* the node starts with its head */
  free(t->name);
  g_live_tensors--;
  free(t);
}

void m2_set_name(m2_tensor *t, const char *name) {
  free(t->name);
  t->name = name ? strdup(name) : NULL;
}

/* ---------------- properties ---------------- */

/* (the shape was checked when t was made: no overflow) */
int64_t m2_numel(const m2_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

bool m2_is_contiguous(const m2_tensor *t) {
  int64_t st = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != st) return false;
    st *= t->shape[i];
  }
  return true;
}

size_t m2_elsize(const m2_tensor *t) { return m2_dtype_size(t->dtype); }

void *m2_data(const m2_tensor *t) {
  return t->storage ? (char *)t->storage->data + t->offset * (int64_t)m2_elsize(t) : NULL;
}

bool m2_same_shape(const m2_tensor *a, const m2_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

char *m2_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "(");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}
char *m2_shape_str(const m2_tensor *t, char *buf, size_t n) { return m2_shape_str_raw(t->ndim, t->shape, buf, n); }

m2_status m2_norm_dim(const m2_tensor *t, int64_t dim, int *out, const char *what) {
  int64_t d = dim < 0 ? dim + t->ndim : dim;
  if (d < 0 || d >= (t->ndim ? t->ndim : 1)) {
    char b[96];
    return m2_fail(M2_ERR_INDEX, "%s: dim %lld out of range for a tensor of shape %s", what, (long long)dim,
                   m2_shape_str(t, b, sizeof b));
  }
  *out = (int)d;
  return M2_OK;
}

/* ---------------- strided iteration on the host ---------------- */

/* Offset (elements) of the i-th element in row-major logical order. */
static int64_t strided_offset(const m2_tensor *t, int64_t i) {
  int64_t off = t->offset;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t n = t->shape[d];
    off += (i % n) * t->stride[d];
    i /= n;
  }
  return off;
}

/* Bring a tensor's bytes to the host as a contiguous buffer (malloc'd, same dtype). */
static m2_status host_contig_bytes(const m2_tensor *t, void **out) {
  size_t es = m2_elsize(t);
  int64_t n = m2_numel(t);
  char *buf = malloc((size_t)(n ? n : 1) * es);
  if (!buf) return m2_fail(M2_ERR_OOM, "out of host memory (%lld elements)", (long long)n);
  if (t->device.type == M2_CPU) {
    const char *base = t->storage->data;
    if (m2_is_contiguous(t)) memcpy(buf, base + t->offset * (int64_t)es, (size_t)n * es);
    else
      for (int64_t i = 0; i < n; i++) memcpy(buf + i * (int64_t)es, base + strided_offset(t, i) * (int64_t)es, es);
  } else {
    /* copy the whole covered span to the host, then gather */
    int64_t lo = 0, hi = 0;
    for (int d = 0; d < t->ndim; d++) {
      if (t->shape[d] == 0) { *out = buf; return M2_OK; }
      int64_t e = (t->shape[d] - 1) * t->stride[d];
      if (e < 0) lo += e; else hi += e;
    }
    int64_t span = hi - lo + 1;
    char *tmp = malloc((size_t)span * es);
    if (!tmp) { free(buf); return m2_fail(M2_ERR_OOM, "out of host memory (%lld elements)", (long long)span); }
    m2_status s = m2_memcpy(M2_DEV_CPU, tmp, t->device, (char *)t->storage->data + (t->offset + lo) * (int64_t)es,
                            (size_t)span * es);
    if (s != M2_OK) { free(tmp); free(buf); return s; }
    for (int64_t i = 0; i < n; i++)
      memcpy(buf + i * (int64_t)es, tmp + (strided_offset(t, i) - t->offset - lo) * (int64_t)es, es);
    free(tmp);
  }
  *out = buf;
  return M2_OK;
}

m2_status m2_to_host(const m2_tensor *t, m2_dtype dt, void *out) {
  void *buf;
  M2_TRY(host_contig_bytes(t, &buf));
  int64_t n = m2_numel(t);
  if (dt == t->dtype) memcpy(out, buf, (size_t)n * m2_dtype_size(dt));
  else if (dt == M2_I64 && t->dtype == M2_I32)
    for (int64_t i = 0; i < n; i++) ((int64_t *)out)[i] = ((int32_t *)buf)[i];
  else
    for (int64_t i = 0; i < n; i++) m2_store(out, dt, i, m2_load(buf, t->dtype, i));
  free(buf);
  return M2_OK;
}

/* ---------------- element access ---------------- */

static m2_status elem_offset(const m2_tensor *t, const int64_t *idx, int64_t *off) {
  int64_t o = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    if (idx[d] < 0 || idx[d] >= t->shape[d]) {
      char b[96];
      return m2_fail(M2_ERR_INDEX, "index %lld out of range for dim %d of a tensor of shape %s", (long long)idx[d],
                     d, m2_shape_str(t, b, sizeof b));
    }
    o += idx[d] * t->stride[d];
  }
  *off = o;
  return M2_OK;
}

m2_status m2_get(const m2_tensor *t, const int64_t *idx, double *out) {
  int64_t o = 0;
  M2_TRY(elem_offset(t, idx, &o));
  char tmp[8];
  size_t es = m2_elsize(t);
  M2_TRY(m2_memcpy(M2_DEV_CPU, tmp, t->device, (char *)t->storage->data + o * (int64_t)es, es));
  *out = m2_load(tmp, t->dtype, 0);
  return M2_OK;
}

m2_status m2_set(m2_tensor *t, const int64_t *idx, double v) {
  int64_t o = 0;
  M2_TRY(elem_offset(t, idx, &o));
  char tmp[8];
  size_t es = m2_elsize(t);
  m2_store(tmp, t->dtype, 0, v);
  return m2_memcpy(t->device, (char *)t->storage->data + o * (int64_t)es, M2_DEV_CPU, tmp, es);
}

m2_status m2_item(const m2_tensor *t, double *out) {
  if (m2_numel(t) != 1) {
    char b[96];
    return m2_fail(M2_ERR_SHAPE, "item() needs a tensor with one element, got shape %s", m2_shape_str(t, b, sizeof b));
  }
  int64_t idx[M2_MAX_DIMS] = {0};
  return m2_get(t, idx, out);
}

/* ---------------- in-place fills and copies ---------------- */

m2_status m2_zero_(m2_tensor *t) { return m2_fill_(t, 0.0); }

m2_status m2_fill_(m2_tensor *t, double v) {
  int64_t n = m2_numel(t);
  if (n == 0) return M2_OK;
  size_t es = m2_elsize(t);
  if (t->device.type != M2_CPU) { /* the device's own fill, when its backend has one */
    const m2_backend *b = m2_backend_get(t->device.type);
    if (b && b->fill) return b->fill(t, v);
  }
  if (t->device.type != M2_CPU || !m2_is_contiguous(t)) {
    /* build on the host, then copy in */
    m2_tensor *h = m2_full(t->dtype, M2_DEV_CPU, t->ndim, t->shape, v);
    if (!h) return m2_errcode();
    m2_status s = m2_copy_(t, h);
    m2_release(h);
    return s;
  }
  char *p = m2_data(t);
  if (v == 0.0) { memset(p, 0, (size_t)n * es); return M2_OK; }
  char one[8];
  m2_store(one, t->dtype, 0, v);
  for (int64_t i = 0; i < n; i++) memcpy(p + i * (int64_t)es, one, es);
  return M2_OK;
}

m2_status m2_copy_(m2_tensor *dst, const m2_tensor *src) {
  if (!m2_same_shape(dst, src) && m2_numel(dst) != m2_numel(src)) {
    char a[96], b[96];
    return m2_fail(M2_ERR_SHAPE, "copy: destination %s and source %s differ", m2_shape_str(dst, a, sizeof a),
                   m2_shape_str(src, b, sizeof b));
  }
  int64_t n = m2_numel(src);
  if (n == 0) return M2_OK;
  size_t es = m2_elsize(dst);
  bool fast = dst->dtype == src->dtype && m2_is_contiguous(dst) && m2_is_contiguous(src);
  if (fast) return m2_memcpy(dst->device, m2_data(dst), src->device, m2_data(src), (size_t)n * es);
  const m2_backend *db = dst->device.type != M2_CPU ? m2_backend_get(dst->device.type) : NULL;
  if (db && db->copy_tensor) { /* strided or converting copy on the device */
    if (m2_device_eq(dst->device, src->device)) return db->copy_tensor(dst, src);
    /* from elsewhere: gather src on the host, upload it contiguous, then copy on the device */
    m2_tensor *host = m2_clone_raw(src, src->dtype, M2_DEV_CPU);
    m2_tensor *staged = host ? m2_empty(src->dtype, dst->device, src->ndim, src->shape) : NULL;
    m2_status s = staged ? m2_memcpy(dst->device, m2_data(staged), M2_DEV_CPU, m2_data(host), (size_t)n * m2_elsize(src))
                         : m2_errcode();
    if (s == M2_OK) s = db->copy_tensor(dst, staged);
    m2_release(staged);
    m2_release(host);
    return s;
  }
  if (dst->device.type == M2_CPU) {
    void *buf;
    M2_TRY(host_contig_bytes(src, &buf));
    char *base = dst->storage->data;
    bool dc = m2_is_contiguous(dst);
    for (int64_t i = 0; i < n; i++) {
      int64_t o = dc ? dst->offset + i : strided_offset(dst, i);
      if (dst->dtype == src->dtype) memcpy(base + o * (int64_t)es, (char *)buf + i * (int64_t)es, es);
      else if (dst->dtype == M2_I64 && src->dtype == M2_I32) ((int64_t *)base)[o] = ((int32_t *)buf)[i];
      else m2_store(base, dst->dtype, o, m2_load(buf, src->dtype, i));
    }
    free(buf);
    return M2_OK;
  }
  /* non-CPU destination: convert on the host into a contiguous buffer, then upload */
  if (!m2_is_contiguous(dst))
    return m2_fail(M2_ERR_UNSUPPORTED, "copy into a strided %s tensor is not supported yet", "cuda");
  void *buf;
  M2_TRY(host_contig_bytes(src, &buf));
  void *conv = malloc((size_t)n * es);
  if (!conv) { free(buf); return m2_fail(M2_ERR_OOM, "out of host memory"); }
  for (int64_t i = 0; i < n; i++) m2_store(conv, dst->dtype, i, m2_load(buf, src->dtype, i));
  if (dst->dtype == src->dtype) memcpy(conv, buf, (size_t)n * es);
  m2_status s = m2_memcpy(dst->device, m2_data(dst), M2_DEV_CPU, conv, (size_t)n * es);
  free(conv);
  free(buf);
  return s;
}

/* ---------------- views ---------------- */

m2_tensor *m2_view_raw(const m2_tensor *t, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset) {
  m2_tensor *v = tensor_header(t->dtype, t->device, ndim, shape);
  if (!v) return NULL;
  for (int i = 0; i < ndim; i++) v->stride[i] = stride[i];
  v->offset = offset;
  v->storage = t->storage;
  t->storage->refcount++;
  return v;
}

m2_tensor *m2_alias(const m2_tensor *t) { return m2_view_raw(t, t->ndim, t->shape, t->stride, t->offset); }

m2_tensor *m2_meta_raw(const m2_tensor *t) {
  m2_tensor *v = tensor_header(t->dtype, t->device, t->ndim, t->shape);
  if (!v) return NULL;
  for (int i = 0; i < t->ndim; i++) v->stride[i] = t->stride[i];
  v->offset = t->offset;
  return v;
}

m2_tensor *m2_clone_raw(const m2_tensor *t, m2_dtype dt, m2_device dev) {
  m2_tensor *c = m2_empty(dt, dev, t->ndim, t->shape);
  if (!c) return NULL;
  if (m2_copy_(c, t) != M2_OK) { m2_release(c); return NULL; }
  return c;
}

/* ---------------- printing ---------------- */

void m2_format(const m2_tensor *t, char *buf, size_t n) {
  size_t k = 0;
  int64_t numel = m2_numel(t);
  char sh[96], dev[32];
  m2_device_name(t->device, dev, sizeof dev);
  m2_shape_str(t, sh, sizeof sh);
  double *vals = NULL;
  int64_t *ivals = NULL; /* integer tensors print exactly, not through a double (2^63 - 1 as a double is 2^63) */
  const int64_t maxshow = 64;
  const bool isint = !m2_dtype_is_float(t->dtype);
  if (numel <= maxshow) {
    vals = malloc(sizeof(double) * (size_t)(numel ? numel : 1));
    if (vals && isint) {
      ivals = (int64_t *)vals; /* same size */
      if (m2_to_host(t, M2_I64, ivals) != M2_OK) { free(vals); vals = NULL; ivals = NULL; }
    } else if (vals && m2_to_host(t, M2_F64, vals) != M2_OK) { free(vals); vals = NULL; }
  }
  k += (size_t)snprintf(buf + k, n - k, "tensor(");
  if (vals) {
    int64_t inner[M2_MAX_DIMS + 1];
    inner[t->ndim] = 1;
    for (int d = t->ndim - 1; d >= 0; d--) inner[d] = inner[d + 1] * t->shape[d];
    for (int64_t i = 0; i < numel && k < n; i++) {
      for (int d = 0; d < t->ndim; d++)
        if (i % inner[d] == 0) k += (size_t)snprintf(buf + k, n - k, "[");
      if (k >= n) break;
      if (!isint) k += (size_t)snprintf(buf + k, n - k, "%.6g", vals[i]);
      else k += (size_t)snprintf(buf + k, n - k, "%lld", (long long)ivals[i]);
      for (int d = t->ndim - 1; d >= 0 && k < n; d--)
        if ((i + 1) % inner[d] == 0) k += (size_t)snprintf(buf + k, n - k, "]");
      if (i + 1 < numel && k < n) k += (size_t)snprintf(buf + k, n - k, ", ");
    }
    if (numel == 0 && k < n) k += (size_t)snprintf(buf + k, n - k, "[]");
    if (k < n) k += (size_t)snprintf(buf + k, n - k, ", ");
  }
  if (k < n) snprintf(buf + k, n - k, "shape=%s, %s, %s%s)", sh, m2_dtype_name(t->dtype), dev,
                      t->requires_grad ? ", requires_grad" : "");
  free(vals);
}

void m2_print(const m2_tensor *t, const char *label) {
  char buf[4096];
  m2_format(t, buf, sizeof buf);
  printf("%s%s%s\n", label ? label : "", label ? ": " : "", buf);
}
