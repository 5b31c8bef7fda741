/* ops_view.c — views (reshape, narrow, transpose, permute, expand), dtype and device
 * conversion. All differentiable. (The contiguous copy is op.c's: the dispatcher makes inputs contiguous with it.) */
#include "ops_view.h"
#include "ops.h"
#include <string.h>

/* ---- reshape: x (...) -> (shape), the same elements; m2_shape_attr ---- */
static m2_status reshape_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_shape_attr *a = M2_ATTR(c, m2_shape_attr);
  int64_t st[M2_MAX_DIMS];
  m2_tensor *src = m2_is_contiguous(x) ? (m2_retain(x), x) : m2_clone_raw(x, x->dtype, x->device);
  if (!src) return m2_errcode();
  m2_contiguous_strides(a->ndim, a->shape, st);
  c->n_out = 1;
  c->out[0] = m2_view_raw(src, a->ndim, a->shape, st, src->offset);
  m2_release(src);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status reshape_bwd(m2_opcall *c) {
  c->din[0] = m2_reshape(c->dout[0], c->in[0]->ndim, c->in[0]->shape);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_reshape = {"reshape", reshape_fwd, reshape_bwd, M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD,
                             M2_IN(0)};

m2_tensor *m2_reshape(m2_tensor *x, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > M2_MAX_DIMS) { m2_fail(M2_ERR_SHAPE, "reshape: at most %d dims", M2_MAX_DIMS); return NULL; }
  m2_shape_attr a = {.ndim = ndim};
  int64_t *s = a.shape, known = 1;
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    s[i] = shape[i];
    if (s[i] == -1) {
      if (infer >= 0) { m2_fail(M2_ERR_SHAPE, "reshape: only one dim may be -1"); return NULL; }
      infer = i;
      s[i] = 1; /* counted as 1 until inferred */
    } else if (s[i] < 0) {
      m2_fail(M2_ERR_SHAPE, "reshape: negative size %lld", (long long)s[i]);
      return NULL;
    }
  }
  if (m2_shape_numel(ndim, s, "reshape", &known) != M2_OK) { /* name the shape as asked, -1 included */
    char b[96];
    m2_fail(M2_ERR_SHAPE, "reshape: shape %s is too large: its sizes multiply past 2^48 (%lld) elements",
            m2_shape_str_raw(ndim, shape, b, sizeof b), (long long)M2_MAX_NUMEL);
    return NULL;
  }
  int64_t n = m2_numel(x);
  if (infer >= 0) s[infer] = known ? n / known : 0;
  int64_t total = 1;
  for (int i = 0; i < ndim; i++) total *= s[i]; /* <= n: no overflow */
  if (total != n) {
    char a[96], b[96];
    m2_fail(M2_ERR_SHAPE, "reshape: cannot view %s (%lld elements) as %s", m2_shape_str(x, a, sizeof a), (long long)n,
            m2_shape_str_raw(ndim, shape, b, sizeof b));
    return NULL;
  }
  m2_opcall c;
  m2_call_init(&c, &m2_op_reshape, 1, &x);
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ---- narrow: x (..., n, ...) -> the view (..., len, ...) from start along dim; m2_narrow_attr ---- */
static m2_status narrow_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_narrow_attr *a = M2_ATTR(c, m2_narrow_attr);
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[a->dim] = a->len;
  c->n_out = 1;
  c->out[0] = m2_view_raw(x, x->ndim, shape, x->stride, x->offset + a->start * x->stride[a->dim]);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status narrow_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  m2_tensor *g = m2_zeros(c->dout[0]->dtype, x->device, x->ndim, x->shape);
  if (!g) return m2_errcode();
  const m2_narrow_attr *a = M2_ATTR(c, m2_narrow_attr);
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[a->dim] = a->len;
  m2_tensor *slice = m2_view_raw(g, g->ndim, shape, g->stride, a->start * g->stride[a->dim]);
  m2_status s = slice ? m2_copy_(slice, c->dout[0]) : m2_errcode();
  m2_release(slice);
  if (s != M2_OK) { m2_release(g); return s; }
  c->din[0] = g;
  return M2_OK;
}
const m2_op m2_op_narrow = {"narrow", narrow_fwd, narrow_bwd, M2_OP_VIEW | M2_OP_ANYDEV_FWD, M2_IN(0)};

m2_tensor *m2_narrow(m2_tensor *x, int dim, int64_t start, int64_t len) {
  int d;
  if (m2_norm_dim(x, dim, &d, "narrow") != M2_OK) return NULL;
  if (start < 0 || len < 0 || start + len > x->shape[d]) {
    char b[96];
    m2_fail(M2_ERR_INDEX, "narrow: range [%lld, %lld) out of bounds for dim %d of shape %s", (long long)start,
            (long long)(start + len), d, m2_shape_str(x, b, sizeof b));
    return NULL;
  }
  m2_opcall c;
  m2_call_init(&c, &m2_op_narrow, 1, &x);
  m2_narrow_attr a = {.dim = d, .start = start, .len = len};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ---- permute: x -> the view with dims reordered; m2_permute_attr (transpose is a permute) ---- */
static m2_status permute_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const int *perm = M2_ATTR(c, m2_permute_attr)->perm;
  int64_t shape[M2_MAX_DIMS], st[M2_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) {
    shape[i] = x->shape[perm[i]];
    st[i] = x->stride[perm[i]];
  }
  c->n_out = 1;
  c->out[0] = m2_view_raw(x, x->ndim, shape, st, x->offset);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status permute_bwd(m2_opcall *c) {
  const int *perm = M2_ATTR(c, m2_permute_attr)->perm;
  int inv[M2_MAX_DIMS];
  for (int i = 0; i < c->in[0]->ndim; i++) inv[perm[i]] = i;
  c->din[0] = m2_permute(c->dout[0], inv);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_permute = {"permute", permute_fwd, permute_bwd, M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD,
                             M2_IN(0)};

m2_tensor *m2_permute(m2_tensor *x, const int *perm) {
  bool used[M2_MAX_DIMS] = {0};
  m2_permute_attr a = {{0}};
  for (int i = 0; i < x->ndim; i++) {
    int p = perm[i] < 0 ? perm[i] + x->ndim : perm[i];
    if (p < 0 || p >= x->ndim || used[p]) {
      m2_fail(M2_ERR_INDEX, "permute: entry %d (%d) is not a permutation of %d dims", i, perm[i], x->ndim);
      return NULL;
    }
    used[p] = true;
    a.perm[i] = p;
  }
  m2_opcall c;
  m2_call_init(&c, &m2_op_permute, 1, &x);
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

m2_tensor *m2_transpose(m2_tensor *x, int d0, int d1) {
  int a, b;
  if (m2_norm_dim(x, d0, &a, "transpose") != M2_OK || m2_norm_dim(x, d1, &b, "transpose") != M2_OK) return NULL;
  int perm[M2_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  return m2_permute(x, perm);
}

/* ---- expand: x (...) -> the view (shape), size-1 dims (and new leading dims) broadcast with stride 0;
 * m2_shape_attr ---- */
static m2_status expand_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_shape_attr *a = M2_ATTR(c, m2_shape_attr);
  int64_t st[M2_MAX_DIMS];
  for (int i = 0; i < a->ndim; i++) {
    int j = x->ndim - a->ndim + i;
    st[i] = (j >= 0 && x->shape[j] == a->shape[i]) ? x->stride[j] : 0;
  }
  c->n_out = 1;
  c->out[0] = m2_view_raw(x, a->ndim, a->shape, st, x->offset);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status expand_bwd(m2_opcall *c) {
  c->din[0] = m2_sum_to_shape(c->dout[0], c->in[0]->ndim, c->in[0]->shape);
  if (c->din[0] && c->din[0]->ndim != c->in[0]->ndim) { /* x had fewer dims: reshape */
    m2_tensor *r = m2_reshape(c->din[0], c->in[0]->ndim, c->in[0]->shape);
    m2_release(c->din[0]);
    c->din[0] = r;
  }
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_expand = {"expand", expand_fwd, expand_bwd, M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD,
                            M2_IN(0)};

m2_tensor *m2_expand(m2_tensor *x, int ndim, const int64_t *shape) {
  if (ndim < x->ndim || ndim > M2_MAX_DIMS) {
    m2_fail(M2_ERR_SHAPE, "expand: cannot expand %d dims to %d", x->ndim, ndim);
    return NULL;
  }
  m2_shape_attr a = {.ndim = ndim};
  for (int i = 0; i < ndim; i++) {
    int j = x->ndim - ndim + i;
    int64_t have = j >= 0 ? x->shape[j] : 1, want = shape[i] == -1 ? have : shape[i];
    if (have != want && have != 1) {
      char a[96], b[96];
      m2_fail(M2_ERR_SHAPE, "expand: %s cannot be expanded to %s", m2_shape_str(x, a, sizeof a),
              m2_shape_str_raw(ndim, shape, b, sizeof b));
      return NULL;
    }
    a.shape[i] = want;
  }
  if (m2_shape_numel(ndim, a.shape, "expand", NULL) != M2_OK) return NULL;
  m2_opcall c;
  m2_call_init(&c, &m2_op_expand, 1, &x);
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ---- to_dtype: x -> a copy in another dtype; m2_to_dtype_attr ---- */
static m2_status to_dtype_fwd(m2_opcall *c) {
  c->n_out = 1;
  c->out[0] = m2_clone_raw(c->in[0], M2_ATTR(c, m2_to_dtype_attr)->dtype, c->in[0]->device);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status to_dtype_bwd(m2_opcall *c) {
  c->din[0] = m2_clone_raw(c->dout[0], c->in[0]->dtype, c->in[0]->device);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_to_dtype = {"to_dtype", to_dtype_fwd, to_dtype_bwd, M2_OP_VIEW, M2_IN(0)};

m2_tensor *m2_to_dtype(m2_tensor *x, m2_dtype dt) { return m2_to_dtype_for(x, dt, NULL); }
m2_tensor *m2_to_dtype_for(m2_tensor *x, m2_dtype dt, const char *cause) {
  if (x->dtype == dt) { m2_retain(x); return x; }
  m2_opcall c;
  m2_call_init(&c, &m2_op_to_dtype, 1, &x);
  m2_to_dtype_attr a = {.dtype = dt, .cause = cause};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ---- to_device: x -> a copy on another device; m2_to_device_attr. Registered for both devices. ---- */
static m2_status to_device_fwd(m2_opcall *c) {
  c->n_out = 1;
  c->out[0] = m2_clone_raw(c->in[0], c->in[0]->dtype, M2_ATTR(c, m2_to_device_attr)->device);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status to_device_bwd(m2_opcall *c) {
  c->din[0] = m2_clone_raw(c->dout[0], c->in[0]->dtype, c->in[0]->device);
  return c->din[0] ? M2_OK : m2_errcode();
}
const m2_op m2_op_to_device = {"to_device", to_device_fwd, to_device_bwd, M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD,
                               M2_IN(0)};

m2_tensor *m2_to_device(m2_tensor *x, m2_device dev) {
  if (m2_device_eq(x->device, dev)) { m2_retain(x); return x; }
  m2_opcall c;
  m2_call_init(&c, &m2_op_to_device, 1, &x);
  m2_to_device_attr a = {.device = dev};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
