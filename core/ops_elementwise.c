/* ops_elementwise.c — broadcasting binary ops (add, sub, mul, div) and unary maps (scale, add_scalar,
 * neg, exp, log, tanh, sigmoid, silu, softplus, relu, square, sqrt, clamp): CPU reference kernels.
 *
 * Kernels are plain typed loops: the dtype (F32 computes in float, F64 in double) and the op kind are
 * chosen once per call, outside the loop. Binary ops merge the broadcast shapes into as few dims as
 * possible, so that same-shape inputs become one flat loop and (..., n) with (n) or (..., 1) becomes
 * rows of contiguous loops; only the odometer over the outer dims is generic. */
#include "ops.h"
#include "ops_elementwise.h"
#include <math.h>
#include <string.h>

/* for (i in [0, n)) BODY, in blocks of 8, so that GCC vectorises it at -O2 too (the cheap cost model
 * of -O2 only vectorises loops whose trip count is a known multiple of the vector width; measured
 * 2.5x on an in-cache f32 add). At -O3 it runs as fast as the plain loop. */
#define VLOOP(n, ...)                                                         \
  do {                                                                        \
    int64_t vl_n_ = (n), vl_i_ = 0;                                           \
    for (; vl_i_ + 8 <= vl_n_; vl_i_ += 8)                                    \
      for (int vl_j_ = 0; vl_j_ < 8; vl_j_++) {                               \
        int64_t i = vl_i_ + vl_j_;                                            \
        __VA_ARGS__;                                                          \
      }                                                                       \
    for (int64_t i = vl_i_; i < vl_n_; i++) { __VA_ARGS__; }                  \
  } while (0)

/* tanh for f32 from one double exp: about twice as fast as glibc's tanhf and within 6e-8 relative. */
static inline float tanh_f32(float x) {
  double ax = fabs((double)x);
  if (ax < 1e-4) return x; /* tanh x = x (1 - x^2/3 + ...) = x in f32 here; avoids 1 - e^-2|x| cancelling */
  double e = exp(-2 * ax), t = (1 - e) / (1 + e);
  return (float)(x < 0 ? -t : t);
}

/* libm by argument type (float -> expf, double -> exp). */
#define EXP(v) _Generic((v), float: expf, default: exp)(v)
#define LOG(v) _Generic((v), float: logf, default: log)(v)
#define LOG1P(v) _Generic((v), float: log1pf, default: log1p)(v)
#define TANH(v) _Generic((v), float: tanh_f32, default: tanh)(v)
#define SQRT(v) _Generic((v), float: sqrtf, default: sqrt)(v)

/* ================= broadcasting binary ops ================= */

typedef enum { B_ADD, B_SUB, B_MUL, B_DIV } bin_kind;

/* o[i] = a[i*sa] (op) b[i*sb] for i < n; sa, sb are 0 (broadcast) or 1, never both 0. */
#define BIN_STRIDES(T, EXPR)                                                  \
  do {                                                                        \
    if (sa && sb) VLOOP(n, T x = a[i]; T y = b[i]; o[i] = (EXPR));            \
    else if (sa) { const T y = b[0]; VLOOP(n, T x = a[i]; o[i] = (EXPR)); }   \
    else { const T x = a[0]; VLOOP(n, T y = b[i]; o[i] = (EXPR)); }           \
  } while (0)
#define BIN_ROW(T)                                                            \
  switch (k) {                                                                \
    case B_ADD: BIN_STRIDES(T, x + y); break;                                 \
    case B_SUB: BIN_STRIDES(T, x - y); break;                                 \
    case B_MUL: BIN_STRIDES(T, x * y); break;                                 \
    case B_DIV: BIN_STRIDES(T, x / y); break;                                 \
  }
static void bin_row_f32(bin_kind k, int64_t n, const float *restrict a, int64_t sa, const float *restrict b,
                        int64_t sb, float *restrict o) { BIN_ROW(float) }
static void bin_row_f64(bin_kind k, int64_t n, const double *restrict a, int64_t sa, const double *restrict b,
                        int64_t sb, double *restrict o) { BIN_ROW(double) }

static void bin_plan_make(int nd, const int64_t *shape, const int64_t *sa, const int64_t *sb, bin_plan *p) {
  p->nd = 0;
  for (int d = 0; d < nd; d++) {
    if (shape[d] == 1) continue;
    int k = p->nd - 1;
    if (k >= 0 && p->sa[k] == sa[d] * shape[d] && p->sb[k] == sb[d] * shape[d]) {
      p->shape[k] *= shape[d]; /* the previous (outer) dim steps exactly over this one: merge */
      p->sa[k] = sa[d];
      p->sb[k] = sb[d];
    } else {
      p->shape[k + 1] = shape[d];
      p->sa[k + 1] = sa[d];
      p->sb[k + 1] = sb[d];
      p->nd++;
    }
  }
  if (p->nd == 0) { /* a single element */
    p->nd = 1;
    p->shape[0] = 1;
    p->sa[0] = p->sb[0] = 1;
  }
}

m2_status m2_binary_setup(m2_opcall *c, m2_float_rule check_float, bin_plan *p, int64_t *n) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  const char *name = c->op->name;
  M2_TRY(check_float(a, name, "a"));
  M2_TRY(check_float(b, name, "b"));
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
  *n = m2_numel(o);
  bin_plan_make(nd, shape, sa, sb, p);
  return M2_OK;
}

/* out = a (op) b with numpy broadcasting; a, b contiguous of the same float dtype. */
static m2_status binary_fwd(m2_opcall *c, bin_kind k) {
  bin_plan p;
  int64_t n;
  M2_TRY(m2_binary_setup(c, m2_check_float, &p, &n));
  if (n == 0) return M2_OK;
  m2_tensor *a = c->in[0], *b = c->in[1], *o = c->out[0];
  int last = p.nd - 1;
  int64_t cols = p.shape[last], rows = n / cols; /* the last plan dim is contiguous in out */
  int64_t idx[M2_MAX_DIMS] = {0}, oa = 0, ob = 0;
  bool f32 = a->dtype == M2_F32;
  const void *pa = m2_data(a), *pb = m2_data(b);
  void *po = m2_data(o);
  for (int64_t r = 0; r < rows; r++) {
    if (f32)
      bin_row_f32(k, cols, (const float *)pa + oa, p.sa[last], (const float *)pb + ob, p.sb[last],
                  (float *)po + r * cols);
    else
      bin_row_f64(k, cols, (const double *)pa + oa, p.sa[last], (const double *)pb + ob, p.sb[last],
                  (double *)po + r * cols);
    for (int d = last - 1; d >= 0; d--) { /* odometer over the outer dims */
      idx[d]++;
      oa += p.sa[d];
      ob += p.sb[d];
      if (idx[d] < p.shape[d]) break;
      oa -= p.sa[d] * p.shape[d];
      ob -= p.sb[d] * p.shape[d];
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

/* din[i] in in[i]'s dtype: r (taken over) rounded once when the call mixed a bf16 input with an f32 one on a device
 * with mixed kernels (M2_OP_MIXED_KERNELS_OPT: the f32 gradient rounded as the cast path's to_dtype backward rounds
 * it); r itself otherwise (always on the CPU, whose node holds the f32 copies). */
static m2_status set_din(m2_opcall *c, int i, m2_tensor *r) {
  if (!r) return m2_errcode();
  if (r->dtype != c->in[i]->dtype) {
    m2_tensor *t = m2_clone_raw(r, c->in[i]->dtype, r->device);
    m2_release(r);
    if (!t) return m2_errcode();
    r = t;
  }
  c->din[i] = r;
  return M2_OK;
}

/* Reduce g (broadcast shape; this takes over the reference) to in[i]'s shape and hand it over as din[i]. */
static m2_status give_din(m2_opcall *c, int i, m2_tensor *g) {
  if (!g) return m2_errcode();
  m2_tensor *r = m2_sum_to_shape(g, c->in[i]->ndim, c->in[i]->shape);
  m2_release(g);
  return set_din(c, i, r);
}

/* ---- add: a (...), b (...) broadcast -> (...) ---- */
static m2_status add_fwd(m2_opcall *c) { return binary_fwd(c, B_ADD); }
static m2_status add_bwd(m2_opcall *c) {
  for (int i = 0; i < 2; i++)
    if (c->needs_din[i]) { m2_retain(c->dout[0]); M2_TRY(give_din(c, i, c->dout[0])); }
  return M2_OK;
}
const m2_op m2_op_add = {"add", add_fwd, add_bwd, M2_OP_ANYDEV_BWD | M2_OP_MIXED_KERNELS_OPT,
                         M2_IN(0) | M2_IN(1)};
m2_tensor *m2_add(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_add, a, b); }

/* ---- sub: da = g, db = -g (each summed to its input's shape) ---- */
static m2_status sub_fwd(m2_opcall *c) { return binary_fwd(c, B_SUB); }
static m2_status sub_bwd(m2_opcall *c) {
  if (c->needs_din[0]) { m2_retain(c->dout[0]); M2_TRY(give_din(c, 0, c->dout[0])); }
  if (c->needs_din[1]) {
    m2_tensor *g = m2_sum_to_shape(c->dout[0], c->in[1]->ndim, c->in[1]->shape);
    if (!g) return m2_errcode();
    m2_tensor *ng = m2_neg(g); /* negate after reducing: fewer elements */
    m2_release(g);
    M2_TRY(set_din(c, 1, ng));
  }
  return M2_OK;
}
const m2_op m2_op_sub = {"sub", sub_fwd, sub_bwd, M2_OP_ANYDEV_BWD | M2_OP_MIXED_KERNELS_OPT,
                         M2_IN(0) | M2_IN(1)};
m2_tensor *m2_sub(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_sub, a, b); }

/* ---- mul: da = g * b, db = g * a ---- */
static m2_status mul_fwd(m2_opcall *c) { return binary_fwd(c, B_MUL); }
static m2_status mul_bwd(m2_opcall *c) {
  if (c->needs_din[0]) M2_TRY(give_din(c, 0, m2_mul(c->dout[0], c->in[1])));
  if (c->needs_din[1]) M2_TRY(give_din(c, 1, m2_mul(c->dout[0], c->in[0])));
  return M2_OK;
}
const m2_op m2_op_mul = {"mul", mul_fwd, mul_bwd, M2_OP_ANYDEV_BWD | M2_OP_MIXED_KERNELS_OPT};
m2_tensor *m2_mul(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_mul, a, b); }

/* ---- div: t = g / b; da = t, db = -t * a / b ---- */
static m2_status div_fwd(m2_opcall *c) { return binary_fwd(c, B_DIV); }
static m2_status div_bwd(m2_opcall *c) {
  m2_tensor *t = m2_div(c->dout[0], c->in[1]);
  if (!t) return m2_errcode();
  m2_status s = M2_OK;
  if (c->needs_din[1]) {
    m2_tensor *ta = m2_mul(t, c->in[0]);
    m2_tensor *tab = ta ? m2_div(ta, c->in[1]) : NULL;
    m2_tensor *r = tab ? m2_sum_to_shape(tab, c->in[1]->ndim, c->in[1]->shape) : NULL;
    c->din[1] = r ? m2_neg(r) : NULL;
    m2_release(ta);
    m2_release(tab);
    m2_release(r);
    if (!c->din[1]) s = m2_errcode();
  }
  if (s == M2_OK && c->needs_din[0]) return give_din(c, 0, t);
  m2_release(t);
  return s;
}
const m2_op m2_op_div = {"div", div_fwd, div_bwd, M2_OP_ANYDEV_BWD};
m2_tensor *m2_div(m2_tensor *a, m2_tensor *b) { return binary(&m2_op_div, a, b); }

/* ================= unary maps: x (...) -> y (...) ================= */

typedef enum {
  U_NEG, U_SCALE, U_ADD_SCALAR, U_EXP, U_LOG, U_TANH, U_SIGMOID, U_SILU, U_SOFTPLUS, U_RELU, U_SQUARE, U_SQRT, U_CLAMP
} un_kind;

/* y = f(x) over n elements; s0, s1 are the op's scalars (m2_unary_attr: scale / add_scalar: s0; clamp: lo, hi),
 * kept in double so that F32 rounds the exact x * s or x + s once. */
#define UNARY_FWD(T)                                                                    \
  switch (k) {                                                                          \
    case U_NEG: VLOOP(n, y[i] = -x[i]); break;                                          \
    case U_SCALE: VLOOP(n, y[i] = x[i] * s0); break;                                    \
    case U_ADD_SCALAR: VLOOP(n, y[i] = x[i] + s0); break;                               \
    case U_EXP: VLOOP(n, y[i] = EXP(x[i])); break;                                      \
    case U_LOG: VLOOP(n, y[i] = LOG(x[i])); break;                                      \
    case U_TANH: VLOOP(n, y[i] = TANH(x[i])); break;                                    \
    case U_SIGMOID: VLOOP(n, y[i] = 1 / (1 + EXP(-x[i]))); break;                       \
    case U_SILU: VLOOP(n, y[i] = x[i] / (1 + EXP(-x[i]))); break;                       \
    case U_SOFTPLUS: /* log(1 + e^x) = max(x, 0) + log1p(e^-|x|) */                     \
      VLOOP(n, T v = x[i]; y[i] = v > 20 ? v : (v > 0 ? v : 0) + LOG1P(EXP(v > 0 ? -v : v))); \
      break;                                                                            \
    case U_RELU: VLOOP(n, y[i] = x[i] <= 0 ? 0 : x[i]); break; /* relu(NaN) is NaN */   \
    case U_SQUARE: VLOOP(n, y[i] = x[i] * x[i]); break;                                 \
    case U_SQRT: VLOOP(n, y[i] = SQRT(x[i])); break;                                    \
    case U_CLAMP: VLOOP(n, T v = x[i]; y[i] = v < s0 ? s0 : v > s1 ? s1 : v); break;    \
  }
static void unary_fwd_f32(un_kind k, int64_t n, const float *restrict x, float *restrict y, double s0, double s1) {
  UNARY_FWD(float)
}
static void unary_fwd_f64(un_kind k, int64_t n, const double *restrict x, double *restrict y, double s0,
                          double s1) {
  UNARY_FWD(double)
}

/* dx = g * f'(x), from x or (ops with M2_OP_KEEP_OUTPUTS) from y = f(x). */
#define UNARY_BWD(T)                                                                        \
  switch (k) {                                                                              \
    case U_NEG: VLOOP(n, dx[i] = -g[i]); break;                                             \
    case U_SCALE: VLOOP(n, dx[i] = g[i] * s0); break;                                       \
    case U_ADD_SCALAR: VLOOP(n, dx[i] = g[i]); break;                                       \
    case U_EXP: VLOOP(n, dx[i] = g[i] * y[i]); break;                                       \
    case U_LOG: VLOOP(n, dx[i] = g[i] / x[i]); break;                                       \
    case U_TANH: VLOOP(n, dx[i] = g[i] * (1 - y[i] * y[i])); break;                         \
    case U_SIGMOID: VLOOP(n, dx[i] = g[i] * y[i] * (1 - y[i])); break;                      \
    case U_SILU: VLOOP(n, T v = x[i]; T s = 1 / (1 + EXP(-v)); dx[i] = g[i] * s * (1 + v * (1 - s))); break; \
    case U_SOFTPLUS: VLOOP(n, T v = x[i]; dx[i] = v > 20 ? g[i] : g[i] / (1 + EXP(-v))); break; \
    case U_RELU: VLOOP(n, dx[i] = x[i] > 0 ? g[i] : x[i] <= 0 ? 0 : x[i]); break; /* NaN at NaN */ \
    case U_SQUARE: VLOOP(n, dx[i] = 2 * x[i] * g[i]); break;                                \
    case U_SQRT: VLOOP(n, dx[i] = g[i] / (2 * y[i])); break;                                \
    case U_CLAMP: VLOOP(n, T v = x[i]; dx[i] = (v >= s0 && v <= s1) ? g[i] : 0); break;     \
  }
static void unary_bwd_f32(un_kind k, int64_t n, const float *restrict g, const float *restrict x,
                          const float *restrict y, float *restrict dx, double s0, double s1) {
  UNARY_BWD(float)
}
static void unary_bwd_f64(un_kind k, int64_t n, const double *restrict g, const double *restrict x,
                          const double *restrict y, double *restrict dx, double s0, double s1) {
  UNARY_BWD(double)
}

/* The op's scalars: m2_unary_attr (core/ops_elementwise.h). */
static m2_status unary_fwd(m2_opcall *c, un_kind k) {
  m2_tensor *x = c->in[0];
  const m2_unary_attr *a = M2_ATTR(c, m2_unary_attr);
  M2_TRY(m2_check_float(x, c->op->name, "x"));
  m2_tensor *y = m2_empty_like(x);
  if (!y) return m2_errcode();
  c->n_out = 1;
  c->out[0] = y;
  int64_t n = m2_numel(x);
  if (x->dtype == M2_F32)
    unary_fwd_f32(k, n, m2_data(x), m2_data(y), a->s0, a->s1);
  else
    unary_fwd_f64(k, n, m2_data(x), m2_data(y), a->s0, a->s1);
  return M2_OK;
}

static m2_status unary_bwd(m2_opcall *c, un_kind k) {
  m2_tensor *x = c->in[0], *g = c->dout[0], *y = c->out[0]; /* y is set only with M2_OP_KEEP_OUTPUTS */
  const m2_unary_attr *a = M2_ATTR(c, m2_unary_attr);
  m2_tensor *dx = m2_empty_like(x);
  if (!dx) return m2_errcode();
  int64_t n = m2_numel(x);
  const void *py = y ? m2_data(y) : NULL;
  if (x->dtype == M2_F32)
    unary_bwd_f32(k, n, m2_data(g), m2_data(x), py, m2_data(dx), a->s0, a->s1);
  else
    unary_bwd_f64(k, n, m2_data(g), m2_data(x), py, m2_data(dx), a->s0, a->s1);
  c->din[0] = dx;
  return M2_OK;
}

static m2_tensor *unary(const m2_op *op, m2_tensor *x, double s0, double s1) {
  m2_opcall c;
  m2_call_init(&c, op, 1, &x);
  m2_unary_attr a = {.s0 = s0, .s1 = s1};
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}

static m2_status neg_fwd(m2_opcall *c) { return unary_fwd(c, U_NEG); }
static m2_status neg_bwd(m2_opcall *c) { return unary_bwd(c, U_NEG); }
const m2_op m2_op_neg = {"neg", neg_fwd, neg_bwd, 0};
m2_tensor *m2_neg(m2_tensor *x) { return unary(&m2_op_neg, x, 0, 0); }

static m2_status scale_fwd(m2_opcall *c) { return unary_fwd(c, U_SCALE); }
static m2_status scale_bwd(m2_opcall *c) { return unary_bwd(c, U_SCALE); }
const m2_op m2_op_scale = {"scale", scale_fwd, scale_bwd, 0};
m2_tensor *m2_scale(m2_tensor *x, double s) { return unary(&m2_op_scale, x, s, 0); }

static m2_status add_scalar_fwd(m2_opcall *c) { return unary_fwd(c, U_ADD_SCALAR); }
static m2_status add_scalar_bwd(m2_opcall *c) {
  m2_retain(c->dout[0]); /* dx = g: hand over the same tensor */
  c->din[0] = c->dout[0];
  return M2_OK;
}
const m2_op m2_op_add_scalar = {"add_scalar", add_scalar_fwd, add_scalar_bwd, 0, M2_IN(0)};
m2_tensor *m2_add_scalar(m2_tensor *x, double s) { return unary(&m2_op_add_scalar, x, s, 0); }

static m2_status exp_fwd(m2_opcall *c) { return unary_fwd(c, U_EXP); }
static m2_status exp_bwd(m2_opcall *c) { return unary_bwd(c, U_EXP); }
const m2_op m2_op_exp = {"exp", exp_fwd, exp_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_exp(m2_tensor *x) { return unary(&m2_op_exp, x, 0, 0); }

static m2_status log_fwd(m2_opcall *c) { return unary_fwd(c, U_LOG); }
static m2_status log_bwd(m2_opcall *c) { return unary_bwd(c, U_LOG); }
const m2_op m2_op_log = {"log", log_fwd, log_bwd, 0};
m2_tensor *m2_log(m2_tensor *x) { return unary(&m2_op_log, x, 0, 0); }

static m2_status tanh_fwd(m2_opcall *c) { return unary_fwd(c, U_TANH); }
static m2_status tanh_bwd(m2_opcall *c) { return unary_bwd(c, U_TANH); }
const m2_op m2_op_tanh = {"tanh", tanh_fwd, tanh_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_tanh(m2_tensor *x) { return unary(&m2_op_tanh, x, 0, 0); }

static m2_status sigmoid_fwd(m2_opcall *c) { return unary_fwd(c, U_SIGMOID); }
static m2_status sigmoid_bwd(m2_opcall *c) { return unary_bwd(c, U_SIGMOID); }
const m2_op m2_op_sigmoid = {"sigmoid", sigmoid_fwd, sigmoid_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_sigmoid(m2_tensor *x) { return unary(&m2_op_sigmoid, x, 0, 0); }

static m2_status silu_fwd(m2_opcall *c) { return unary_fwd(c, U_SILU); }
static m2_status silu_bwd(m2_opcall *c) { return unary_bwd(c, U_SILU); }
const m2_op m2_op_silu = {"silu", silu_fwd, silu_bwd, 0};
m2_tensor *m2_silu(m2_tensor *x) { return unary(&m2_op_silu, x, 0, 0); }

static m2_status softplus_fwd(m2_opcall *c) { return unary_fwd(c, U_SOFTPLUS); }
static m2_status softplus_bwd(m2_opcall *c) { return unary_bwd(c, U_SOFTPLUS); }
const m2_op m2_op_softplus = {"softplus", softplus_fwd, softplus_bwd, 0};
m2_tensor *m2_softplus(m2_tensor *x) { return unary(&m2_op_softplus, x, 0, 0); }

static m2_status relu_fwd(m2_opcall *c) { return unary_fwd(c, U_RELU); }
static m2_status relu_bwd(m2_opcall *c) { return unary_bwd(c, U_RELU); }
const m2_op m2_op_relu = {"relu", relu_fwd, relu_bwd, 0};
m2_tensor *m2_relu(m2_tensor *x) { return unary(&m2_op_relu, x, 0, 0); }

static m2_status square_fwd(m2_opcall *c) { return unary_fwd(c, U_SQUARE); }
static m2_status square_bwd(m2_opcall *c) { return unary_bwd(c, U_SQUARE); }
const m2_op m2_op_square = {"square", square_fwd, square_bwd, 0};
m2_tensor *m2_square(m2_tensor *x) { return unary(&m2_op_square, x, 0, 0); }

static m2_status sqrt_fwd(m2_opcall *c) { return unary_fwd(c, U_SQRT); }
static m2_status sqrt_bwd(m2_opcall *c) { return unary_bwd(c, U_SQRT); }
const m2_op m2_op_sqrt = {"sqrt", sqrt_fwd, sqrt_bwd, M2_OP_KEEP_OUTPUTS, M2_IN(0)};
m2_tensor *m2_sqrt(m2_tensor *x) { return unary(&m2_op_sqrt, x, 0, 0); }

/* ---- clamp: m2_unary_attr s0 = lo, s1 = hi; the gradient passes where lo <= x <= hi ---- */
static m2_status clamp_fwd(m2_opcall *c) { return unary_fwd(c, U_CLAMP); }
static m2_status clamp_bwd(m2_opcall *c) { return unary_bwd(c, U_CLAMP); }
const m2_op m2_op_clamp = {"clamp", clamp_fwd, clamp_bwd, 0};
m2_tensor *m2_clamp(m2_tensor *x, double lo, double hi) {
  if (!(lo <= hi)) {
    m2_fail(M2_ERR_VALUE, "clamp: lo (%g) must not exceed hi (%g)", lo, hi);
    return NULL;
  }
  return unary(&m2_op_clamp, x, lo, hi);
}
