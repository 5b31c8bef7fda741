/* ops_index.cu — CUDA concat, split, gather, index_select with backwards. concat and split are strided
 * copies into / out of narrow views (m2_cuda_copy, any dtype); gather and index_select copy raw
 * elements (any dtype) and their backwards scatter-add in fp32 (atomics). Indices are checked on the
 * device and read back once per call. */
#include "ops.h"
#include <string.h>
#include "ops_common.cuh"
#include "../core/ops_index.h"

#define LAUNCH_OK(what)                                                                                   \
  do {                                                                                                    \
    cudaError_t e_ = cudaGetLastError();                                                                  \
    if (e_ != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: kernel launch failed: %s", what, cudaGetErrorString(e_)); \
  } while (0)

/* The slice [start, start + len) of dim d of t, as a view (new ref). */
static m2_tensor *slice_view(m2_tensor *t, int d, int64_t start, int64_t len) {
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = len;
  return m2_view_raw(t, t->ndim, shape, t->stride, t->offset + start * t->stride[d]);
}

/* dst's slice [start, start + len) of dim d = src (or the other way round when `into_src`) */
static m2_status copy_slice(m2_tensor *big, int d, int64_t start, m2_tensor *piece, bool to_big) {
  m2_tensor *v = slice_view(big, d, start, piece->shape[d]);
  if (!v) return m2_errcode();
  m2_status s = to_big ? m2_cuda_copy(v, piece) : m2_cuda_copy(piece, v);
  m2_release(v);
  return s;
}

/* ============ concat: xs[i] (..., n_i, ...) -> (..., sum n_i, ...) along m2_index_attr.dim ============ */

static m2_status concat_check(int n, m2_tensor *const *xs, int d) {
  char a[96], b[96];
  if (n < 1) return m2_fail(M2_ERR_VALUE, "concat: needs at least one tensor, got %d", n);
  for (int i = 0; i < n; i++)
    if (!xs[i]) return m2_fail(M2_ERR_VALUE, "concat: tensor %d is NULL", i + 1);
  if (xs[0]->ndim < 1) return m2_fail(M2_ERR_SHAPE, "concat: cannot concatenate 0-d tensors");
  for (int i = 1; i < n; i++) {
    const m2_tensor *x = xs[i];
    if (x->dtype != xs[0]->dtype)
      return m2_fail(M2_ERR_DTYPE, "concat: tensor %d is %s but tensor %d is %s", i + 1, m2_dtype_name(x->dtype), 1,
                     m2_dtype_name(xs[0]->dtype));
    bool ok = x->ndim == xs[0]->ndim;
    for (int k = 0; ok && k < x->ndim; k++) ok = k == d || x->shape[k] == xs[0]->shape[k];
    if (!ok)
      return m2_fail(M2_ERR_SHAPE, "concat: tensor %d %s does not match tensor %d %s outside dim %d", i + 1,
                     m2_shape_str(x, a, sizeof a), 1, m2_shape_str(xs[0], b, sizeof b), d);
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_concat_fwd(m2_opcall *c) {
  int d = M2_ATTR(c, m2_index_attr)->dim, n = c->n_in;
  M2_TRY(concat_check(n, c->in, d));
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, c->in[0]->shape, sizeof shape);
  shape[d] = 0;
  for (int i = 0; i < n; i++) shape[d] += c->in[i]->shape[d];
  m2_tensor *o = m2_empty(c->in[0]->dtype, c->in[0]->device, c->in[0]->ndim, shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  int64_t at = 0;
  for (int i = 0; i < n; i++) {
    M2_TRY(copy_slice(o, d, at, c->in[i], true));
    at += c->in[i]->shape[d];
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_concat_bwd(m2_opcall *c) {
  int d = M2_ATTR(c, m2_index_attr)->dim;
  m2_tensor *g = c->dout[0];
  int64_t at = 0;
  for (int i = 0; i < c->n_in; i++) {
    m2_tensor *x = c->in[i];
    if (c->needs_din[i]) {
      m2_tensor *dx = m2_empty(g->dtype, x->device, x->ndim, x->shape);
      if (!dx) return m2_errcode();
      c->din[i] = dx;
      M2_TRY(copy_slice(g, d, at, dx, false));
    }
    at += x->shape[d];
  }
  return M2_OK;
}

/* ======= split: m2_split_attr, k pieces [start_i, start_i + len_i) of dim `dim` ======= */

extern "C" m2_status m2_cuda_split_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_split_attr *a = M2_ATTR(c, m2_split_attr);
  int d = a->dim, k = a->k;
  c->n_out = k;
  for (int i = 0; i < k; i++) {
    int64_t shape[M2_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = a->len[i];
    m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, shape);
    if (!o) return m2_errcode();
    c->out[i] = o;
    M2_TRY(copy_slice(x, d, a->start[i], o, false));
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_split_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  const m2_split_attr *a = M2_ATTR(c, m2_split_attr);
  int d = a->dim, k = a->k;
  m2_tensor *dx = cu_zeros(c->dout[0]->dtype, x->device, x->ndim, x->shape);
  if (!dx) return m2_errcode();
  c->din[0] = dx;
  for (int i = 0; i < k; i++) M2_TRY(copy_slice(dx, d, a->start[i], c->dout[i], true));
  return M2_OK;
}

/* ======= gather: x (...), index int with x's ndim -> index's shape; along m2_index_attr.dim ======= */

typedef struct gather_geom {
  int nd, d;
  int64_t ishape[M2_MAX_DIMS]; /* index shape */
  int64_t xst[M2_MAX_DIMS];    /* x's contiguous strides */
  int64_t xn;                  /* x.shape[d] */
} gather_geom;

/* Offset in x of index element i, or -1 (and the flag set) when the index is out of range. */
__device__ __forceinline__ int64_t gather_off(const gather_geom &g, const void *idx, bool i64, int64_t i,
                                              unsigned long long *flag) {
  int64_t v = ld_index(idx, i64, i);
  if (v < 0 || v >= g.xn) {
    if (flag) cu_flag_bad(flag, i);
    return -1;
  }
  int64_t r = i, off = 0;
  for (int j = g.nd - 1; j >= 0; j--) {
    int64_t p = r % g.ishape[j];
    r /= g.ishape[j];
    off += (j == g.d ? v : p) * g.xst[j];
  }
  return off;
}

template <class W>
__global__ void k_gather(const W *x, const void *idx, bool i64, gather_geom g, int64_t n, W *o,
                         unsigned long long *flag) {
  CU_GRID_STRIDE(i, n) {
    int64_t off = gather_off(g, idx, i64, i, flag);
    o[i] = off >= 0 ? x[off] : W(0);
  }
}
template <class T>
__global__ void k_gather_bwd(const T *gy, const void *idx, bool i64, gather_geom g, int64_t n, float *acc) {
  CU_GRID_STRIDE(i, n) {
    int64_t off = gather_off(g, idx, i64, i, NULL);
    if (off >= 0) atomicAdd(&acc[off], to_f(gy[i]));
  }
}

static m2_status gather_check(const m2_tensor *x, int d, const m2_tensor *idx) {
  char a[96], b[96];
  M2_TRY(cu_check_int(idx, "gather", "index"));
  bool ok = x->ndim >= 1 && idx->ndim == x->ndim;
  for (int j = 0; ok && j < x->ndim; j++) ok = j == d || idx->shape[j] <= x->shape[j];
  if (!ok)
    return m2_fail(M2_ERR_SHAPE, "gather: index %s must have the ndim of x %s and be no larger outside dim %d",
                   m2_shape_str(idx, a, sizeof a), m2_shape_str(x, b, sizeof b), d);
  return M2_OK;
}

static gather_geom gather_geom_make(const m2_tensor *x, int d, const m2_tensor *idx) {
  gather_geom g;
  g.nd = x->ndim;
  g.d = d;
  g.xn = x->shape[d];
  m2_contiguous_strides(x->ndim, x->shape, g.xst);
  for (int j = 0; j < x->ndim; j++) g.ishape[j] = idx->shape[j];
  return g;
}

extern "C" m2_status m2_cuda_gather_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *idx = c->in[1];
  int d = M2_ATTR(c, m2_index_attr)->dim;
  M2_TRY(gather_check(x, d, idx));
  int64_t n = m2_numel(idx);
  m2_tensor *o = m2_empty(x->dtype, x->device, idx->ndim, idx->shape); /* index's shape */
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  m2_tensor *flag = cu_flag_new(x->device);
  if (!flag) return m2_errcode();
  gather_geom g = gather_geom_make(x, d, idx);
  unsigned long long *pf = (unsigned long long *)m2_data(flag);
  bool i64 = idx->dtype == M2_I64;
  switch (m2_elsize(x)) { /* raw elements: any dtype */
    case 2: k_gather<uint16_t><<<cu_grid(n, 256), 256, 0, st>>>((const uint16_t *)m2_data(x), m2_data(idx), i64, g, n,
                                                               (uint16_t *)m2_data(o), pf); break;
    case 4: k_gather<uint32_t><<<cu_grid(n, 256), 256, 0, st>>>((const uint32_t *)m2_data(x), m2_data(idx), i64, g, n,
                                                               (uint32_t *)m2_data(o), pf); break;
    default: k_gather<uint64_t><<<cu_grid(n, 256), 256, 0, st>>>((const uint64_t *)m2_data(x), m2_data(idx), i64, g, n,
                                                                (uint64_t *)m2_data(o), pf); break;
  }
  cudaError_t e = cudaGetLastError();
  int64_t bad = -1;
  m2_status s = e != cudaSuccess ? m2_fail(M2_ERR_CUDA, "gather: launch failed: %s", cudaGetErrorString(e))
                                 : cu_flag_read(flag, &bad);
  m2_release(flag);
  M2_TRY(s);
  if (bad >= 0)
    return m2_fail(M2_ERR_INDEX, "gather: index %lld (at flat position %lld) is out of range for dim %d of size %lld",
                   (long long)cu_int_at(idx, bad), (long long)bad, d, (long long)x->shape[d]);
  return M2_OK;
}

/* fp32 accumulator (x's shape) -> din[i] in dtype dt */
static m2_status give_acc(m2_opcall *c, int i, m2_tensor *acc, m2_dtype dt) {
  if (dt == M2_F32) { c->din[i] = acc; return M2_OK; }
  c->din[i] = cu_as(acc, dt);
  m2_release(acc);
  return c->din[i] ? M2_OK : m2_errcode();
}

extern "C" m2_status m2_cuda_gather_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *idx = c->in[1];
  M2_TRY(cu_check_float(x, "gather backward", "x"));
  int d = M2_ATTR(c, m2_index_attr)->dim;
  int64_t n = m2_numel(idx);
  m2_tensor *gy = cu_as(c->dout[0], x->dtype); /* index's shape */
  if (!gy) return m2_errcode();
  m2_tensor *acc = cu_zeros(M2_F32, x->device, x->ndim, x->shape);
  cudaStream_t st;
  m2_status s = acc ? cu_stream(x->device, &st) : m2_errcode();
  if (s == M2_OK && n > 0) {
    gather_geom g = gather_geom_make(x, d, idx);
    CU_FLOAT_DISPATCH(x->dtype, k_gather_bwd<T><<<cu_grid(n, 256), 256, 0, st>>>(
                                    (const T *)m2_data(gy), m2_data(idx), idx->dtype == M2_I64, g, n, (float *)m2_data(acc)));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "gather backward: launch failed: %s", cudaGetErrorString(e));
  }
  m2_release(gy);
  if (s != M2_OK) { m2_release(acc); return s; }
  return give_acc(c, 0, acc, x->dtype);
}

/* ======= index_select: x (outer, n, inner), index int (L) -> (outer, L, inner); along m2_index_attr.dim ======= */

__global__ void k_index_check(const void *idx, bool i64, int64_t L, int64_t n, unsigned long long *flag) {
  CU_GRID_STRIDE(j, L) {
    int64_t v = ld_index(idx, i64, j);
    if (v < 0 || v >= n) cu_flag_bad(flag, j);
  }
}
template <class W>
__global__ void k_index_select(const W *x, const void *idx, bool i64, int64_t n, int64_t L, int64_t inner,
                               int64_t total, W *o) {
  CU_GRID_STRIDE(i, total) {
    int64_t b = i % inner, j = (i / inner) % L, r = i / (inner * L);
    int64_t v = ld_index(idx, i64, j);
    o[i] = (v >= 0 && v < n) ? x[(r * n + v) * inner + b] : W(0);
  }
}
template <class T>
__global__ void k_index_select_bwd(const T *gy, const void *idx, bool i64, int64_t n, int64_t L, int64_t inner,
                                   int64_t total, float *acc) {
  CU_GRID_STRIDE(i, total) {
    int64_t b = i % inner, j = (i / inner) % L, r = i / (inner * L);
    int64_t v = ld_index(idx, i64, j);
    if (v >= 0 && v < n) atomicAdd(&acc[(r * n + v) * inner + b], to_f(gy[i]));
  }
}

static m2_status index_select_check(const m2_tensor *x, const m2_tensor *idx) {
  char b[96];
  M2_TRY(cu_check_int(idx, "index_select", "index"));
  if (x->ndim < 1) return m2_fail(M2_ERR_SHAPE, "index_select: x must have at least 1 dim");
  if (idx->ndim != 1)
    return m2_fail(M2_ERR_SHAPE, "index_select: index must be 1-D, got %s", m2_shape_str(idx, b, sizeof b));
  return M2_OK;
}

static void around(const m2_tensor *x, int d, int64_t *outer, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < d; i++) *outer *= x->shape[i];
  for (int i = d + 1; i < x->ndim; i++) *inner *= x->shape[i];
}

extern "C" m2_status m2_cuda_index_select_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *idx = c->in[1];
  int d = M2_ATTR(c, m2_index_attr)->dim;
  M2_TRY(index_select_check(x, idx));
  int64_t outer, inner, n = x->shape[d], L = idx->shape[0], shape[M2_MAX_DIMS];
  around(x, d, &outer, &inner);
  memcpy(shape, x->shape, sizeof shape);
  shape[d] = L;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  if (L > 0) { /* check the indices first, like the CPU */
    m2_tensor *flag = cu_flag_new(x->device);
    if (!flag) return m2_errcode();
    k_index_check<<<cu_grid(L, 256), 256, 0, st>>>(m2_data(idx), idx->dtype == M2_I64, L, n,
                                                   (unsigned long long *)m2_data(flag));
    cudaError_t e = cudaGetLastError();
    int64_t bad = -1;
    m2_status s = e != cudaSuccess ? m2_fail(M2_ERR_CUDA, "index_select: launch failed: %s", cudaGetErrorString(e))
                                   : cu_flag_read(flag, &bad);
    m2_release(flag);
    M2_TRY(s);
    if (bad >= 0)
      return m2_fail(M2_ERR_INDEX, "index_select: index %lld (at position %lld) is out of range for dim %d of size %lld",
                     (long long)cu_int_at(idx, bad), (long long)bad, d, (long long)n);
  }
  m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, shape); /* (..., L, ...) */
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  int64_t total = outer * L * inner;
  if (total == 0) return M2_OK;
  bool i64 = idx->dtype == M2_I64;
  switch (m2_elsize(x)) {
    case 2: k_index_select<uint16_t><<<cu_grid(total, 256), 256, 0, st>>>((const uint16_t *)m2_data(x), m2_data(idx), i64,
                                                                         n, L, inner, total, (uint16_t *)m2_data(o)); break;
    case 4: k_index_select<uint32_t><<<cu_grid(total, 256), 256, 0, st>>>((const uint32_t *)m2_data(x), m2_data(idx), i64,
                                                                         n, L, inner, total, (uint32_t *)m2_data(o)); break;
    default: k_index_select<uint64_t><<<cu_grid(total, 256), 256, 0, st>>>((const uint64_t *)m2_data(x), m2_data(idx),
                                                                          i64, n, L, inner, total, (uint64_t *)m2_data(o)); break;
  }
  LAUNCH_OK("index_select");
  return M2_OK;
}

extern "C" m2_status m2_cuda_index_select_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  m2_tensor *x = c->in[0], *idx = c->in[1];
  M2_TRY(cu_check_float(x, "index_select backward", "x"));
  int d = M2_ATTR(c, m2_index_attr)->dim;
  int64_t outer, inner, n = x->shape[d], L = idx->shape[0];
  around(x, d, &outer, &inner);
  m2_tensor *gy = cu_as(c->dout[0], x->dtype); /* (..., L, ...) */
  if (!gy) return m2_errcode();
  m2_tensor *acc = cu_zeros(M2_F32, x->device, x->ndim, x->shape);
  cudaStream_t st;
  m2_status s = acc ? cu_stream(x->device, &st) : m2_errcode();
  int64_t total = outer * L * inner;
  if (s == M2_OK && total > 0) {
    CU_FLOAT_DISPATCH(x->dtype, k_index_select_bwd<T><<<cu_grid(total, 256), 256, 0, st>>>(
                                    (const T *)m2_data(gy), m2_data(idx), idx->dtype == M2_I64, n, L, inner, total,
                                    (float *)m2_data(acc)));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "index_select backward: launch failed: %s", cudaGetErrorString(e));
  }
  m2_release(gy);
  if (s != M2_OK) { m2_release(acc); return s; }
  return give_acc(c, 0, acc, x->dtype);
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_index(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_concat, m2_cuda_concat_fwd, m2_cuda_concat_bwd},
      {&m2_op_split, m2_cuda_split_fwd, m2_cuda_split_bwd},
      {&m2_op_gather, m2_cuda_gather_fwd, m2_cuda_gather_bwd},
      {&m2_op_index_select, m2_cuda_index_select_fwd, m2_cuda_index_select_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
