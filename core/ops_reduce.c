/* ops_reduce.c — reductions along a dim (sum, mean, max, argmax) and over everything (sum_all,
 * mean_all, max_all), eq, softmax, log_softmax and cumsum: CPU reference kernels. Also m2_sum_to_shape, which the
 * backward of broadcasting ops uses to undo broadcasting.
 *
 * Every kernel views its contiguous input as (outer, n, inner) around the dim it works along (the
 * *_all ops use (1, numel, 1)) and accumulates in double. A kernel is written once over a dtype
 * argument and called through FLOAT_KERNEL with a constant F32 or F64, so that the dtype switch in
 * m2_load / m2_store folds away at compile time and each instance is a plain typed loop. */
#include "ops.h"
#include "ops_reduce.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL static inline __attribute__((always_inline))
/* kernel(dt, ...) with dt a compile-time constant M2_F32 or M2_F64. */
#define FLOAT_KERNEL(dt, kernel, ...)                 \
  do {                                                \
    if ((dt) == M2_F32) kernel(M2_F32, __VA_ARGS__);  \
    else kernel(M2_F64, __VA_ARGS__);                 \
  } while (0)

/* ---- geometry, shared with the CUDA backend's ops_reduce.cu through ops_reduce.h ---- */

red_geom m2_red_geom_dim(const m2_tensor *x, int d) {
  red_geom g = {1, x->ndim ? x->shape[d] : 1, 1};
  for (int i = 0; i < d; i++) g.outer *= x->shape[i];
  for (int i = d + 1; i < x->ndim; i++) g.inner *= x->shape[i];
  return g;
}

red_geom m2_red_geom(const m2_opcall *c, bool all) {
  m2_tensor *x = c->in[0];
  return all ? (red_geom){1, m2_numel(x), 1} : m2_red_geom_dim(x, M2_ATTR(c, m2_reduce_attr)->dim);
}

m2_status m2_red_pick_geom(const m2_opcall *c, bool all, const char *what, red_geom *g) {
  *g = m2_red_geom(c, all);
  if (g->n > 0) return M2_OK;
  char b[96];
  return m2_fail(M2_ERR_SHAPE, "%s: cannot take the %s over an empty dim of a tensor of shape %s", c->op->name, what,
                 m2_shape_str(c->in[0], b, sizeof b));
}

m2_tensor *m2_red_output(const m2_opcall *c, bool all, m2_dtype dt) {
  m2_tensor *x = c->in[0];
  const m2_reduce_attr *a = M2_ATTR(c, m2_reduce_attr);
  int64_t shape[M2_MAX_DIMS];
  int nd = 0;
  for (int i = 0; !all && i < x->ndim; i++) {
    if (i == a->dim) { if (a->keepdim) shape[nd++] = 1; }
    else shape[nd++] = x->shape[i];
  }
  return m2_empty(dt, x->device, nd, shape);
}

/* Scratch of `inner` doubles for the kernels that walk n outside inner (NULL when inner == 1). */
static m2_status scratch(red_geom g, double **acc) {
  *acc = NULL;
  if (g.inner == 1) return M2_OK;
  *acc = malloc((size_t)g.inner * sizeof(double));
  return *acc ? M2_OK : m2_fail(M2_ERR_OOM, "out of host memory for a reduction buffer");
}

/* ================= kernels ================= */

/* e^v; for F32 through expf (as accurate as the f32 result needs, and faster). */
KERNEL double exp_dt(m2_dtype dt, double v) { return dt == M2_F32 ? (double)expf((float)v) : exp(v); }

/* o (outer, inner) = scale * sum over n of x (outer, n, inner); acc (inner) scratch if inner > 1. */
KERNEL void sum_kernel(m2_dtype dt, const void *x, void *o, red_geom g, double scale, double *acc) {
  for (int64_t a = 0; a < g.outer; a++) {
    if (g.inner == 1) { /* four running sums: independent add chains run in parallel */
      const int64_t base = a * g.n;
      double s[4] = {0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 4 <= g.n; k += 4)
        for (int j = 0; j < 4; j++) s[j] += m2_load(x, dt, base + k + j);
      for (; k < g.n; k++) s[0] += m2_load(x, dt, base + k);
      m2_store(o, dt, a, ((s[0] + s[1]) + (s[2] + s[3])) * scale);
      continue;
    }
    memset(acc, 0, (size_t)g.inner * sizeof *acc);
    for (int64_t k = 0; k < g.n; k++) { /* rows of x are contiguous: walk them in order */
      int64_t row = (a * g.n + k) * g.inner;
      for (int64_t b = 0; b < g.inner; b++) acc[b] += m2_load(x, dt, row + b);
    }
    for (int64_t b = 0; b < g.inner; b++) m2_store(o, dt, a * g.inner + b, acc[b] * scale);
  }
}

/* dx (outer, n, inner) = scale * gy (outer, inner) broadcast along n. */
KERNEL void spread_kernel(m2_dtype dt, const void *gy, void *dx, red_geom g, double scale) {
  for (int64_t a = 0; a < g.outer; a++)
    for (int64_t k = 0; k < g.n; k++) {
      int64_t row = (a * g.n + k) * g.inner;
      for (int64_t b = 0; b < g.inner; b++) m2_store(dx, dt, row + b, m2_load(gy, dt, a * g.inner + b) * scale);
    }
}

/* vals (outer, inner) = max over n of x (outer, n, inner) [vals may be NULL], idx (outer, inner) = the
 * first position of the max. NaN counts as the largest value (it propagates, as in torch). */
KERNEL void max_kernel(m2_dtype dt, const void *x, void *vals, int64_t *idx, red_geom g) {
  for (int64_t a = 0; a < g.outer; a++)
    for (int64_t b = 0; b < g.inner; b++) {
      int64_t base = a * g.n * g.inner + b, bk = 0;
      double best = m2_load(x, dt, base);
      for (int64_t k = 1; k < g.n; k++) {
        double v = m2_load(x, dt, base + k * g.inner);
        if (v > best || (isnan(v) && !isnan(best))) { best = v; bk = k; }
      }
      if (vals) m2_store(vals, dt, a * g.inner + b, best);
      idx[a * g.inner + b] = bk;
    }
}

/* dx (outer, n, inner) = gy (outer, inner) at position idx (outer, inner) along n, 0 elsewhere. */
KERNEL void scatter_kernel(m2_dtype dt, const void *gy, const int64_t *idx, void *dx, red_geom g) {
  for (int64_t a = 0; a < g.outer; a++)
    for (int64_t b = 0; b < g.inner; b++) {
      for (int64_t k = 0; k < g.n; k++) m2_store(dx, dt, (a * g.n + k) * g.inner + b, 0);
      m2_store(dx, dt, (a * g.n + idx[a * g.inner + b]) * g.inner + b, m2_load(gy, dt, a * g.inner + b));
    }
}

/* y = softmax(x) or log_softmax(x) along n; x, y (outer, n, inner). Subtracts the max first. */
KERNEL void softmax_kernel(m2_dtype dt, const void *x, void *y, red_geom g, bool log_out) {
  const int64_t s = g.inner;
  for (int64_t a = 0; a < g.outer; a++)
    for (int64_t b = 0; b < g.inner; b++) {
      int64_t base = a * g.n * s + b;
      double m = -INFINITY;
      for (int64_t k = 0; k < g.n; k++) {
        double v = m2_load(x, dt, base + k * s);
        if (v > m || isnan(v)) m = v;
      }
      double sum = 0;
      for (int64_t k = 0; k < g.n; k++) {
        double e = exp_dt(dt, m2_load(x, dt, base + k * s) - m);
        sum += e;
        if (!log_out) m2_store(y, dt, base + k * s, e);
      }
      if (log_out) {
        double lse = log(sum);
        for (int64_t k = 0; k < g.n; k++) m2_store(y, dt, base + k * s, (m2_load(x, dt, base + k * s) - m) - lse);
      } else {
        double inv = 1 / sum;
        for (int64_t k = 0; k < g.n; k++) m2_store(y, dt, base + k * s, m2_load(y, dt, base + k * s) * inv);
      }
    }
}

/* softmax:     dx = y * (gy - sum_n(gy * y));
 * log_softmax: dx = gy - exp(y) * sum_n(gy).     gy, y, dx (outer, n, inner) */
KERNEL void softmax_bwd_kernel(m2_dtype dt, const void *gy, const void *y, void *dx, red_geom g, bool log_out) {
  const int64_t s = g.inner;
  for (int64_t a = 0; a < g.outer; a++)
    for (int64_t b = 0; b < g.inner; b++) {
      int64_t base = a * g.n * s + b;
      double acc = 0;
      for (int64_t k = 0; k < g.n; k++) {
        double gk = m2_load(gy, dt, base + k * s);
        acc += log_out ? gk : gk * m2_load(y, dt, base + k * s);
      }
      for (int64_t k = 0; k < g.n; k++) {
        int64_t i = base + k * s;
        double gk = m2_load(gy, dt, i), yk = m2_load(y, dt, i);
        m2_store(dx, dt, i, log_out ? gk - exp_dt(dt, yk) * acc : yk * (gk - acc));
      }
    }
}

/* y = running sum of x along n (from the end if reverse); x, y (outer, n, inner); acc (inner). */
KERNEL void cumsum_kernel(m2_dtype dt, const void *x, void *y, red_geom g, bool reverse, double *acc) {
  for (int64_t a = 0; a < g.outer; a++) {
    if (g.inner == 1) {
      double s = 0;
      for (int64_t kk = 0; kk < g.n; kk++) {
        int64_t i = a * g.n + (reverse ? g.n - 1 - kk : kk);
        s += m2_load(x, dt, i);
        m2_store(y, dt, i, s);
      }
      continue;
    }
    memset(acc, 0, (size_t)g.inner * sizeof *acc);
    for (int64_t kk = 0; kk < g.n; kk++) {
      int64_t row = (a * g.n + (reverse ? g.n - 1 - kk : kk)) * g.inner;
      for (int64_t b = 0; b < g.inner; b++) {
        acc[b] += m2_load(x, dt, row + b);
        m2_store(y, dt, row + b, acc[b]);
      }
    }
  }
}

/* ================= sum and mean (along a dim, and over everything) ================= */

/* m2_reduce_attr {dim, keepdim} for the dim versions; `all` reduces everything to 0-d. */
static m2_status sum_mean_fwd(m2_opcall *c, bool mean, bool all) {
  m2_tensor *x = c->in[0];
  M2_TRY(m2_check_float(x, c->op->name, "x"));
  red_geom g = m2_red_geom(c, all);
  m2_tensor *o = m2_red_output(c, all, x->dtype);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  double *acc;
  M2_TRY(scratch(g, &acc));
  FLOAT_KERNEL(x->dtype, sum_kernel, m2_data(x), m2_data(o), g, mean ? 1.0 / (double)g.n : 1.0, acc);
  free(acc);
  return M2_OK;
}
static m2_status sum_mean_bwd(m2_opcall *c, bool mean, bool all) {
  m2_tensor *x = c->in[0];
  red_geom g = m2_red_geom(c, all);
  m2_tensor *dx = m2_empty_like(x);
  if (!dx) return m2_errcode();
  FLOAT_KERNEL(x->dtype, spread_kernel, m2_data(c->dout[0]), m2_data(dx), g, mean ? 1.0 / (double)g.n : 1.0);
  c->din[0] = dx;
  return M2_OK;
}

static m2_tensor *dim_op(const m2_op *op, m2_tensor *x, int dim, bool keepdim) {
  int d;
  if (m2_norm_dim(x, dim, &d, op->name) != M2_OK) return NULL;
  m2_opcall c;
  m2_call_init(&c, op, 1, &x);
  m2_reduce_attr a = {.dim = d, .keepdim = keepdim};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
static m2_tensor *all_op(const m2_op *op, m2_tensor *x) {
  m2_opcall c;
  m2_call_init(&c, op, 1, &x);
  return m2_call1(&c);
}

/* ---- sum: x (..., n, ...) -> (..., [1,] ...) along dim; m2_reduce_attr ---- */
static m2_status sum_fwd(m2_opcall *c) { return sum_mean_fwd(c, false, false); }
static m2_status sum_bwd(m2_opcall *c) { return sum_mean_bwd(c, false, false); }
const m2_op m2_op_sum = {"sum", sum_fwd, sum_bwd, 0, M2_IN(0)};
m2_tensor *m2_sum(m2_tensor *x, int dim, bool keepdim) { return dim_op(&m2_op_sum, x, dim, keepdim); }

/* ---- mean: as sum, divided by n ---- */
static m2_status mean_fwd(m2_opcall *c) { return sum_mean_fwd(c, true, false); }
static m2_status mean_bwd(m2_opcall *c) { return sum_mean_bwd(c, true, false); }
const m2_op m2_op_mean = {"mean", mean_fwd, mean_bwd, 0, M2_IN(0)};
m2_tensor *m2_mean(m2_tensor *x, int dim, bool keepdim) { return dim_op(&m2_op_mean, x, dim, keepdim); }

/* ---- sum_all, mean_all: x (...) -> () ---- */
static m2_status sum_all_fwd(m2_opcall *c) { return sum_mean_fwd(c, false, true); }
static m2_status sum_all_bwd(m2_opcall *c) { return sum_mean_bwd(c, false, true); }
const m2_op m2_op_sum_all = {"sum_all", sum_all_fwd, sum_all_bwd, 0, M2_IN(0)};
m2_tensor *m2_sum_all(m2_tensor *x) { return all_op(&m2_op_sum_all, x); }

static m2_status mean_all_fwd(m2_opcall *c) { return sum_mean_fwd(c, true, true); }
static m2_status mean_all_bwd(m2_opcall *c) { return sum_mean_bwd(c, true, true); }
const m2_op m2_op_mean_all = {"mean_all", mean_all_fwd, mean_all_bwd, 0, M2_IN(0)};
m2_tensor *m2_mean_all(m2_tensor *x) { return all_op(&m2_op_mean_all, x); }

/* ---- sum_to_shape: g (broadcast shape) -> (shape), with the sum op above (recorded like any op) ---- */
m2_tensor *m2_sum_to_shape(m2_tensor *g, int ndim, const int64_t *shape) {
  m2_tensor *cur = g;
  m2_retain(cur);
  /* sum away extra leading dims */
  while (cur->ndim > ndim) {
    m2_tensor *nx = m2_sum(cur, 0, false);
    m2_release(cur);
    if (!nx) return NULL;
    cur = nx;
  }
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1 && cur->shape[d] != 1) {
      m2_tensor *nx = m2_sum(cur, d, true);
      m2_release(cur);
      if (!nx) return NULL;
      cur = nx;
    }
  }
  return cur;
}

/* ================= max, max_all, argmax ================= */

/* max: x (..., n, ...) -> values (..., [1,] ...); saved[0] = argmax (I64, the values' shape);
 * the gradient goes to the first argmax. m2_reduce_attr {dim, keepdim}. max_all: -> (), flat argmax. */
static m2_status max_fwd_common(m2_opcall *c, bool all) {
  m2_tensor *x = c->in[0];
  M2_TRY(m2_check_float(x, c->op->name, "x"));
  red_geom g;
  M2_TRY(m2_red_pick_geom(c, all, "max", &g));
  m2_tensor *v = m2_red_output(c, all, x->dtype);
  m2_tensor *idx = v ? m2_empty(M2_I64, x->device, v->ndim, v->shape) : NULL;
  if (!idx) { m2_release(v); return m2_errcode(); }
  FLOAT_KERNEL(x->dtype, max_kernel, m2_data(x), m2_data(v), m2_data(idx), g);
  c->n_out = 1;
  c->out[0] = v;
  m2_save(c, idx);
  m2_release(idx);
  return M2_OK;
}
static m2_status max_bwd_common(m2_opcall *c, bool all) {
  m2_tensor *x = c->in[0];
  red_geom g = m2_red_geom(c, all);
  m2_tensor *dx = m2_empty_like(x);
  if (!dx) return m2_errcode();
  FLOAT_KERNEL(x->dtype, scatter_kernel, m2_data(c->dout[0]), m2_data(c->saved[0]), m2_data(dx), g);
  c->din[0] = dx;
  return M2_OK;
}

static m2_status max_fwd(m2_opcall *c) { return max_fwd_common(c, false); }
static m2_status max_bwd(m2_opcall *c) { return max_bwd_common(c, false); }
const m2_op m2_op_max = {"max", max_fwd, max_bwd, 0, M2_IN(0)};
m2_tensor *m2_max(m2_tensor *x, int dim, bool keepdim) { return dim_op(&m2_op_max, x, dim, keepdim); }

static m2_status max_all_fwd(m2_opcall *c) { return max_fwd_common(c, true); }
static m2_status max_all_bwd(m2_opcall *c) { return max_bwd_common(c, true); }
const m2_op m2_op_max_all = {"max_all", max_all_fwd, max_all_bwd, 0, M2_IN(0)};
m2_tensor *m2_max_all(m2_tensor *x) { return all_op(&m2_op_max_all, x); }

/* ---- argmax: x (..., n, ...) any dtype -> I64 (..., [1,] ...); first position of the max ---- */
static m2_status argmax_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  red_geom g;
  M2_TRY(m2_red_pick_geom(c, false, "argmax", &g));
  m2_tensor *idx = m2_red_output(c, false, M2_I64);
  if (!idx) return m2_errcode();
  switch (x->dtype) { /* typed loops for the float dtypes; the rest through the generic load */
    case M2_F32: max_kernel(M2_F32, m2_data(x), NULL, m2_data(idx), g); break;
    case M2_F64: max_kernel(M2_F64, m2_data(x), NULL, m2_data(idx), g); break;
    default: max_kernel(x->dtype, m2_data(x), NULL, m2_data(idx), g); break;
  }
  c->n_out = 1;
  c->out[0] = idx;
  return M2_OK;
}
const m2_op m2_op_argmax = {"argmax", argmax_fwd, NULL, M2_OP_NONDIFF};
m2_tensor *m2_argmax(m2_tensor *x, int dim, bool keepdim) { return dim_op(&m2_op_argmax, x, dim, keepdim); }

/* ================= eq: a (...), b (...) broadcast, any dtypes -> F32 0/1 ================= */

static m2_status eq_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  int nd;
  int64_t shape[M2_MAX_DIMS], sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
  M2_TRY(m2_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape, "eq"));
  m2_broadcast_strides(a->ndim, a->shape, nd, shape, sa);
  m2_broadcast_strides(b->ndim, b->shape, nd, shape, sb);
  m2_tensor *o = m2_empty(M2_F32, a->device, nd, shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  bool ints = !m2_dtype_is_float(a->dtype) && !m2_dtype_is_float(b->dtype); /* compare exactly */
  const void *pa = m2_data(a), *pb = m2_data(b);
  float *po = m2_data(o);
  int64_t n = m2_numel(o), idx[M2_MAX_DIMS] = {0}, oa = 0, ob = 0;
  for (int64_t i = 0; i < n; i++) {
    bool same = ints ? m2_load_int(pa, a->dtype, oa) == m2_load_int(pb, b->dtype, ob)
                     : m2_load(pa, a->dtype, oa) == m2_load(pb, b->dtype, ob);
    po[i] = same ? 1.0f : 0.0f;
    for (int d = nd - 1; d >= 0; d--) { /* odometer */
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
const m2_op m2_op_eq = {"eq", eq_fwd, NULL, M2_OP_NONDIFF | M2_OP_CAST_F32};
m2_tensor *m2_eq(m2_tensor *a, m2_tensor *b) {
  m2_tensor *in[2] = {a, b};
  m2_opcall c;
  m2_call_init(&c, &m2_op_eq, 2, in);
  return m2_call1(&c);
}

/* ========= softmax, log_softmax: x (...) -> y (...) along m2_reduce_attr.dim ========= */

static m2_status softmax_fwd_common(m2_opcall *c, bool log_out) {
  m2_tensor *x = c->in[0];
  M2_TRY(m2_check_float(x, c->op->name, "x"));
  m2_tensor *y = m2_empty_like(x);
  if (!y) return m2_errcode();
  FLOAT_KERNEL(x->dtype, softmax_kernel, m2_data(x), m2_data(y), m2_red_geom(c, false), log_out);
  c->n_out = 1;
  c->out[0] = y;
  return M2_OK;
}
static m2_status softmax_bwd_common(m2_opcall *c, bool log_out) {
  m2_tensor *x = c->in[0], *y = c->out[0];
  m2_tensor *dx = m2_empty_like(x);
  if (!dx) return m2_errcode();
  FLOAT_KERNEL(x->dtype, softmax_bwd_kernel, m2_data(c->dout[0]), m2_data(y), m2_data(dx), m2_red_geom(c, false),
               log_out);
  c->din[0] = dx;
  return M2_OK;
}

static m2_status softmax_fwd(m2_opcall *c) { return softmax_fwd_common(c, false); }
static m2_status softmax_bwd(m2_opcall *c) { return softmax_bwd_common(c, false); }
const m2_op m2_op_softmax = {"softmax", softmax_fwd, softmax_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_softmax(m2_tensor *x, int dim) { return dim_op(&m2_op_softmax, x, dim, false); }

static m2_status log_softmax_fwd(m2_opcall *c) { return softmax_fwd_common(c, true); }
static m2_status log_softmax_bwd(m2_opcall *c) { return softmax_bwd_common(c, true); }
const m2_op m2_op_log_softmax = {"log_softmax", log_softmax_fwd, log_softmax_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_log_softmax(m2_tensor *x, int dim) { return dim_op(&m2_op_log_softmax, x, dim, false); }

/* ========= cumsum: x (...) -> y (...) along m2_reduce_attr.dim; dx = reverse cumsum of dy ========= */

/* *out = the running sum of x (in[0]'s shape: x itself, or the gradient) along the call's dim. */
static m2_status cumsum_run(const m2_opcall *c, m2_tensor *x, bool reverse, m2_tensor **out) {
  red_geom g = m2_red_geom_dim(x, M2_ATTR(c, m2_reduce_attr)->dim);
  m2_tensor *y = m2_empty_like(x);
  if (!y) return m2_errcode();
  double *acc;
  m2_status s = scratch(g, &acc);
  if (s != M2_OK) { m2_release(y); return s; }
  FLOAT_KERNEL(x->dtype, cumsum_kernel, m2_data(x), m2_data(y), g, reverse, acc);
  free(acc);
  *out = y;
  return M2_OK;
}
static m2_status cumsum_fwd(m2_opcall *c) {
  M2_TRY(m2_check_float(c->in[0], "cumsum", "x"));
  c->n_out = 1;
  return cumsum_run(c, c->in[0], false, &c->out[0]);
}
static m2_status cumsum_bwd(m2_opcall *c) { return cumsum_run(c, c->dout[0], true, &c->din[0]); }
const m2_op m2_op_cumsum = {"cumsum", cumsum_fwd, cumsum_bwd, 0, M2_IN(0)};
m2_tensor *m2_cumsum(m2_tensor *x, int dim) { return dim_op(&m2_op_cumsum, x, dim, false); }
