/* ops_index.c — joining and indexing: concat, split, gather, index_select (CPU reference kernels).
 * Forward copies are dtype-agnostic (bytes), so integer tensors can be joined and indexed too;
 * backward (float only) copies or scatter-adds gradients back. A tensor is viewed as
 * (outer, n, inner) around the working dim. */
#include "ops_index.h"
#include "ops.h"
#include <stdlib.h>
#include <string.h>

/* x (contiguous) as (outer, shape[d], inner) */
static void around(const m2_tensor *x, int d, int64_t *outer, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < d; i++) *outer *= x->shape[i];
  for (int i = d + 1; i < x->ndim; i++) *inner *= x->shape[i];
}

static m2_status check_index_dtype(const m2_tensor *t, const char *op) {
  if (t->dtype == M2_I32 || t->dtype == M2_I64) return M2_OK;
  return m2_fail(M2_ERR_DTYPE, "%s: index must be an integer tensor (i32 or i64), got %s", op, m2_dtype_name(t->dtype));
}

/* dst[i] += src[i], i < n, for F32/F64 buffers */
static void add_into(void *dst, const void *src, int64_t n, m2_dtype dt) {
  if (dt == M2_F32) {
    float *a = dst;
    const float *b = src;
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
  } else {
    double *a = dst;
    const double *b = src;
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
  }
}

/* ============ concat: xs[i] (..., n_i, ...) -> (..., sum n_i, ...) along m2_index_attr.dim ============ */

/* Same dtype, ndim and shape except dim d. `first` numbers the inputs in messages. */
static m2_status concat_check(int n, m2_tensor *const *xs, int d, int first) {
  char a[96], b[96];
  if (n < 1) return m2_fail(M2_ERR_VALUE, "concat: needs at least one tensor, got %d", n);
  for (int i = 0; i < n; i++)
    if (!xs[i]) return m2_fail(M2_ERR_VALUE, "concat: tensor %d is NULL", first + i + 1);
  if (xs[0]->ndim < 1) return m2_fail(M2_ERR_SHAPE, "concat: cannot concatenate 0-d tensors");
  for (int i = 1; i < n; i++) {
    const m2_tensor *x = xs[i];
    if (!m2_dtypes_mix(x->dtype, xs[0]->dtype)) /* bf16 with f32: the dispatcher converts (core/op_cast.c) */
      return m2_fail(M2_ERR_DTYPE, "concat: tensor %d is %s but tensor %d is %s", first + i + 1, m2_dtype_name(x->dtype),
                     first + 1, m2_dtype_name(xs[0]->dtype));
    bool ok = x->ndim == xs[0]->ndim;
    for (int k = 0; ok && k < x->ndim; k++) ok = k == d || x->shape[k] == xs[0]->shape[k];
    if (!ok)
      return m2_fail(M2_ERR_SHAPE, "concat: tensor %d %s does not match tensor %d %s outside dim %d", first + i + 1,
                     m2_shape_str(x, a, sizeof a), first + 1, m2_shape_str(xs[0], b, sizeof b), d);
  }
  return M2_OK;
}

static m2_status concat_fwd(m2_opcall *c) {
  int d = M2_ATTR(c, m2_index_attr)->dim, n = c->n_in;
  M2_TRY(concat_check(n, c->in, d, 0));
  int64_t shape[M2_MAX_DIMS], outer, inner;
  memcpy(shape, c->in[0]->shape, sizeof shape);
  shape[d] = 0;
  for (int i = 0; i < n; i++) shape[d] += c->in[i]->shape[d];
  m2_tensor *o = m2_empty(c->in[0]->dtype, c->in[0]->device, c->in[0]->ndim, shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  around(o, d, &outer, &inner);
  size_t es = m2_elsize(o);
  char *po = m2_data(o);
  for (int64_t r = 0; r < outer; r++)
    for (int i = 0; i < n; i++) {
      size_t bytes = (size_t)(c->in[i]->shape[d] * inner) * es;
      memcpy(po, (const char *)m2_data(c->in[i]) + (size_t)r * bytes, bytes);
      po += bytes;
    }
  return M2_OK;
}

static m2_status concat_bwd(m2_opcall *c) {
  int d = M2_ATTR(c, m2_index_attr)->dim;
  m2_tensor *g = c->dout[0]; /* (..., sum n_i, ...) */
  int64_t outer, inner;
  around(g, d, &outer, &inner);
  size_t es = m2_elsize(g), grow = (size_t)(g->shape[d] * inner) * es;
  size_t at = 0; /* byte offset of input i inside one row of g */
  for (int i = 0; i < c->n_in; i++) {
    m2_tensor *x = c->in[i];
    size_t bytes = (size_t)(x->shape[d] * inner) * es;
    if (c->needs_din[i]) {
      m2_tensor *dx = m2_empty(g->dtype, x->device, x->ndim, x->shape);
      if (!dx) return m2_errcode();
      char *pd = m2_data(dx);
      const char *pg = m2_data(g);
      for (int64_t r = 0; r < outer; r++) memcpy(pd + (size_t)r * bytes, pg + (size_t)r * grow + at, bytes);
      c->din[i] = dx;
    }
    at += bytes;
  }
  return M2_OK;
}
const m2_op m2_op_concat = {"concat", concat_fwd, concat_bwd, 0, M2_IN_ALL};

/* At most M2_MAX_IN tensors per op call: longer lists are concatenated in groups, then the groups. */
static m2_tensor *concat_any(int n, m2_tensor *const *xs, int d) {
  if (n <= M2_MAX_IN) {
    m2_opcall c;
    m2_call_init(&c, &m2_op_concat, n, xs);
    m2_index_attr a = {.dim = d};
    M2_SET_ATTR(&c, a);
    return m2_call1(&c);
  }
  int ng = (n + M2_MAX_IN - 1) / M2_MAX_IN;
  m2_tensor **ps = malloc(sizeof(m2_tensor *) * (size_t)ng), *r = NULL;
  if (!ps) { m2_fail(M2_ERR_OOM, "concat: out of memory"); return NULL; }
  int made = 0;
  for (; made < ng; made++) {
    int k = n - made * M2_MAX_IN < M2_MAX_IN ? n - made * M2_MAX_IN : M2_MAX_IN;
    ps[made] = concat_any(k, xs + made * M2_MAX_IN, d);
    if (!ps[made]) break;
  }
  if (made == ng) r = concat_any(ng, ps, d); /* recurses again when ng > M2_MAX_IN */
  for (int i = 0; i < made; i++) m2_release(ps[i]);
  free(ps);
  return r;
}

m2_tensor *m2_concat(int n, m2_tensor *const *xs, int dim) {
  if (n < 1 || !xs || !xs[0]) { m2_fail(M2_ERR_VALUE, "concat: needs at least one tensor"); return NULL; }
  int d;
  if (m2_norm_dim(xs[0], dim, &d, "concat") != M2_OK) return NULL;
  if (concat_check(n, xs, d, 0) != M2_OK) return NULL;
  if (n == 1) { m2_retain(xs[0]); return xs[0]; }
  return concat_any(n, xs, d);
}

/* ======= split: x (..., n, ...) -> up to 4 pieces (..., len_i, ...) per op call =======
 * m2_split_attr: the dim and each piece's start and length. m2_split makes as many
 * calls as it needs (4 pieces each); each call's backward writes its pieces' gradients into a
 * zero gradient of x and the tape sums the calls. */
static m2_status split_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_split_attr *a = M2_ATTR(c, m2_split_attr);
  int d = a->dim, k = a->k;
  int64_t outer, inner, n = x->shape[d];
  around(x, d, &outer, &inner);
  size_t es = m2_elsize(x);
  c->n_out = k;
  for (int i = 0; i < k; i++) {
    int64_t shape[M2_MAX_DIMS], start = a->start[i], len = a->len[i];
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = len;
    m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, shape);
    if (!o) return m2_errcode();
    c->out[i] = o;
    size_t bytes = (size_t)(len * inner) * es;
    char *po = m2_data(o);
    const char *px = m2_data(x);
    for (int64_t r = 0; r < outer; r++) memcpy(po + (size_t)r * bytes, px + (size_t)((r * n + start) * inner) * es, bytes);
  }
  return M2_OK;
}

static m2_status split_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_split_attr *a = M2_ATTR(c, m2_split_attr);
  int d = a->dim, k = a->k;
  int64_t outer, inner, n = x->shape[d];
  around(x, d, &outer, &inner);
  m2_tensor *dx = m2_zeros(c->dout[0]->dtype, x->device, x->ndim, x->shape);
  if (!dx) return m2_errcode();
  size_t es = m2_elsize(dx);
  char *pd = m2_data(dx);
  for (int i = 0; i < k; i++) {
    int64_t start = a->start[i], len = a->len[i];
    size_t bytes = (size_t)(len * inner) * es;
    const char *pg = m2_data(c->dout[i]);
    for (int64_t r = 0; r < outer; r++) memcpy(pd + (size_t)((r * n + start) * inner) * es, pg + (size_t)r * bytes, bytes);
  }
  c->din[0] = dx;
  return M2_OK;
}
const m2_op m2_op_split = {"split", split_fwd, split_bwd, 0, M2_IN(0)};

m2_status m2_split(m2_tensor *x, int dim, int n, const int64_t *sizes, m2_tensor **outs) {
  int d;
  M2_TRY(m2_norm_dim(x, dim, &d, "split"));
  if (x->ndim < 1) return m2_fail(M2_ERR_SHAPE, "split: cannot split a 0-d tensor");
  if (n < 1) return m2_fail(M2_ERR_VALUE, "split: needs at least one piece, got %d", n);
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    if (sizes[i] < 0) return m2_fail(M2_ERR_VALUE, "split: size %d is negative (%lld)", i + 1, (long long)sizes[i]);
    /* saturate: a sum past the dim is wrong whatever it is, and summing on could overflow int64 */
    total = sizes[i] > x->shape[d] - total ? x->shape[d] + 1 : total + sizes[i];
  }
  if (total != x->shape[d]) {
    char b[96];
    if (total > x->shape[d])
      return m2_fail(M2_ERR_SHAPE, "split: sizes add up to more than dim %d of %s (%lld)", d, m2_shape_str(x, b, sizeof b),
                     (long long)x->shape[d]);
    return m2_fail(M2_ERR_SHAPE, "split: sizes add up to %lld but dim %d of %s has %lld", (long long)total, d,
                   m2_shape_str(x, b, sizeof b), (long long)x->shape[d]);
  }
  for (int i = 0; i < n; i++) outs[i] = NULL;
  int64_t start = 0;
  for (int i0 = 0; i0 < n; i0 += M2_MAX_OUT) {
    int k = n - i0 < M2_MAX_OUT ? n - i0 : M2_MAX_OUT;
    m2_opcall c;
    m2_call_init(&c, &m2_op_split, 1, &x);
    m2_split_attr a = {.dim = d, .k = k};
    for (int i = 0; i < k; i++) {
      a.start[i] = start;
      a.len[i] = sizes[i0 + i];
      start += sizes[i0 + i];
    }
    M2_SET_ATTR(&c, a);
    m2_tensor *got[M2_MAX_OUT] = {0};
    m2_status s = m2_call_run(&c, got);
    if (s != M2_OK) {
      for (int i = 0; i < i0; i++) { m2_release(outs[i]); outs[i] = NULL; }
      return s;
    }
    for (int i = 0; i < k; i++) outs[i0 + i] = got[i];
  }
  return M2_OK;
}

/* ======= gather: x (...), index int with x's ndim -> index's shape; along m2_index_attr.dim =======
 * out[i_0, .., i_k] = x[i_0, .., index[i_0, .., i_k], .., i_k] (index at position dim);
 * index.shape[j] <= x.shape[j] for j != dim. Backward scatter-adds. */

static m2_status gather_check(const m2_tensor *x, int d, const m2_tensor *idx) {
  char a[96], b[96];
  M2_TRY(check_index_dtype(idx, "gather"));
  bool ok = x->ndim >= 1 && idx->ndim == x->ndim;
  for (int j = 0; ok && j < x->ndim; j++) ok = j == d || idx->shape[j] <= x->shape[j];
  if (!ok)
    return m2_fail(M2_ERR_SHAPE, "gather: index %s must have the ndim of x %s and be no larger outside dim %d",
                   m2_shape_str(idx, a, sizeof a), m2_shape_str(x, b, sizeof b), d);
  return M2_OK;
}

/* Offset in x of each index element, checked. offs has numel(idx) entries. */
static m2_status gather_offsets(const m2_tensor *x, int d, const m2_tensor *idx, int64_t *offs) {
  int64_t n = m2_numel(idx), pos[M2_MAX_DIMS] = {0}, st[M2_MAX_DIMS];
  m2_contiguous_strides(x->ndim, x->shape, st);
  const void *pi = m2_data(idx);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = m2_load_int(pi, idx->dtype, i);
    if (v < 0 || v >= x->shape[d])
      return m2_fail(M2_ERR_INDEX, "gather: index %lld (at flat position %lld) is out of range for dim %d of size %lld",
                     (long long)v, (long long)i, d, (long long)x->shape[d]);
    int64_t off = v * st[d];
    for (int j = 0; j < x->ndim; j++)
      if (j != d) off += pos[j] * st[j];
    offs[i] = off;
    for (int j = idx->ndim - 1; j >= 0; j--) { /* odometer over the index shape */
      if (++pos[j] < idx->shape[j]) break;
      pos[j] = 0;
    }
  }
  return M2_OK;
}

static m2_status gather_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *idx = c->in[1];
  int d = M2_ATTR(c, m2_index_attr)->dim;
  M2_TRY(gather_check(x, d, idx));
  int64_t n = m2_numel(idx);
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  if (!offs) return m2_fail(M2_ERR_OOM, "gather: out of memory");
  m2_status s = gather_offsets(x, d, idx, offs);
  m2_tensor *o = s == M2_OK ? m2_empty(x->dtype, x->device, idx->ndim, idx->shape) : NULL; /* index's shape */
  if (s == M2_OK && !o) s = m2_errcode();
  if (s == M2_OK) {
    size_t es = m2_elsize(x);
    const char *px = m2_data(x);
    char *po = m2_data(o);
    for (int64_t i = 0; i < n; i++) memcpy(po + (size_t)i * es, px + (size_t)offs[i] * es, es);
    c->n_out = 1;
    c->out[0] = o;
  }
  free(offs);
  return s;
}

static m2_status gather_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *idx = c->in[1], *g = c->dout[0]; /* g: index's shape */
  M2_TRY(m2_check_float(g, "gather backward", "gradient"));
  int d = M2_ATTR(c, m2_index_attr)->dim;
  int64_t n = m2_numel(idx);
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  if (!offs) return m2_fail(M2_ERR_OOM, "gather: out of memory");
  m2_status s = gather_offsets(x, d, idx, offs);
  m2_tensor *dx = s == M2_OK ? m2_zeros(g->dtype, x->device, x->ndim, x->shape) : NULL;
  if (s == M2_OK && !dx) s = m2_errcode();
  if (s == M2_OK) {
    void *pd = m2_data(dx);
    const void *pg = m2_data(g);
    if (g->dtype == M2_F32)
      for (int64_t i = 0; i < n; i++) ((float *)pd)[offs[i]] += ((const float *)pg)[i];
    else
      for (int64_t i = 0; i < n; i++) ((double *)pd)[offs[i]] += ((const double *)pg)[i];
    c->din[0] = dx;
  }
  free(offs);
  return s;
}
const m2_op m2_op_gather = {"gather", gather_fwd, gather_bwd, 0, M2_IN(0)};

m2_tensor *m2_gather(m2_tensor *x, int dim, m2_tensor *index) {
  int d;
  if (m2_norm_dim(x, dim, &d, "gather") != M2_OK || gather_check(x, d, index) != M2_OK) return NULL;
  m2_tensor *in[2] = {x, index};
  m2_opcall c;
  m2_call_init(&c, &m2_op_gather, 2, in);
  m2_index_attr a = {.dim = d};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

/* ======= index_select: x (..., n, ...), index int (L) -> (..., L, ...); along m2_index_attr.dim ======= */

static m2_status index_select_check(const m2_tensor *x, const m2_tensor *idx) {
  char b[96];
  M2_TRY(check_index_dtype(idx, "index_select"));
  if (x->ndim < 1) return m2_fail(M2_ERR_SHAPE, "index_select: x must have at least 1 dim");
  if (idx->ndim != 1)
    return m2_fail(M2_ERR_SHAPE, "index_select: index must be 1-D, got %s", m2_shape_str(idx, b, sizeof b));
  return M2_OK;
}

static m2_status index_select_range(const m2_tensor *x, int d, const m2_tensor *idx) {
  const void *pi = m2_data(idx);
  for (int64_t j = 0; j < idx->shape[0]; j++) {
    int64_t v = m2_load_int(pi, idx->dtype, j);
    if (v < 0 || v >= x->shape[d])
      return m2_fail(M2_ERR_INDEX, "index_select: index %lld (at position %lld) is out of range for dim %d of size %lld",
                     (long long)v, (long long)j, d, (long long)x->shape[d]);
  }
  return M2_OK;
}

static m2_status index_select_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *idx = c->in[1];
  int d = M2_ATTR(c, m2_index_attr)->dim;
  M2_TRY(index_select_check(x, idx));
  M2_TRY(index_select_range(x, d, idx));
  int64_t outer, inner, n = x->shape[d], L = idx->shape[0], shape[M2_MAX_DIMS];
  around(x, d, &outer, &inner);
  memcpy(shape, x->shape, sizeof shape);
  shape[d] = L;
  m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, shape); /* (..., L, ...) */
  if (!o) return m2_errcode();
  size_t es = m2_elsize(x), blk = (size_t)inner * es;
  const char *px = m2_data(x);
  char *po = m2_data(o);
  const void *pi = m2_data(idx);
  for (int64_t r = 0; r < outer; r++)
    for (int64_t j = 0; j < L; j++)
      memcpy(po + (size_t)(r * L + j) * blk, px + (size_t)(r * n + m2_load_int(pi, idx->dtype, j)) * blk, blk);
  c->n_out = 1;
  c->out[0] = o;
  return M2_OK;
}

static m2_status index_select_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *idx = c->in[1], *g = c->dout[0]; /* g (..., L, ...) */
  M2_TRY(m2_check_float(g, "index_select backward", "gradient"));
  int d = M2_ATTR(c, m2_index_attr)->dim;
  int64_t outer, inner, n = x->shape[d], L = idx->shape[0];
  around(x, d, &outer, &inner);
  m2_tensor *dx = m2_zeros(g->dtype, x->device, x->ndim, x->shape);
  if (!dx) return m2_errcode();
  size_t es = m2_elsize(dx);
  char *pd = m2_data(dx);
  const char *pg = m2_data(g);
  const void *pi = m2_data(idx);
  for (int64_t r = 0; r < outer; r++)
    for (int64_t j = 0; j < L; j++)
      add_into(pd + (size_t)((r * n + m2_load_int(pi, idx->dtype, j)) * inner) * es,
               pg + (size_t)((r * L + j) * inner) * es, inner, g->dtype);
  c->din[0] = dx;
  return M2_OK;
}
const m2_op m2_op_index_select = {"index_select", index_select_fwd, index_select_bwd, 0, M2_IN(0)};

m2_tensor *m2_index_select(m2_tensor *x, int dim, m2_tensor *index) {
  int d;
  if (m2_norm_dim(x, dim, &d, "index_select") != M2_OK || index_select_check(x, index) != M2_OK) return NULL;
  m2_tensor *in[2] = {x, index};
  m2_opcall c;
  m2_call_init(&c, &m2_op_index_select, 2, in);
  m2_index_attr a = {.dim = d};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
