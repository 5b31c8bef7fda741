/* op_cases.c — the case table of tests/op_cases.h: at least one case per registered op, grouped like the op files
 * (core/ops_view.c, ops_elementwise.c, ops_swiglu.c, ops_reduce.c, ops_matmul.c, ops_nn.c, ops_lmloss.c,
 * ops_index.c, ops_conv1d.c, ops_m2rnn.c, ops_gdn.c, ops_ssd.c, ops_attention.c, ops_moe.c, ops_moe_ep.c,
 * recompute.c). Shapes are small: every float
 * input element costs two forwards in the float64 gradient check. */
#include "op_cases.h"
#include <math.h>
#include <string.h>

/* ---------------- input makers ---------------- */

/* (ndim, shape) of a literal shape: S(2, 3, 4) */
#define S(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* scale * N(0, 1), F64 */
static m2_tensor *rn(m2_rng *r, int nd, const int64_t *shape, double scale) {
  m2_tensor *t = m2_empty(M2_F64, M2_DEV_CPU, nd, shape);
  if (t) m2_rng_normal_(r, t, 0, scale);
  return t;
}
/* uniform in [lo, hi), F64 */
static m2_tensor *un(m2_rng *r, int nd, const int64_t *shape, double lo, double hi) {
  m2_tensor *t = m2_empty(M2_F64, M2_DEV_CPU, nd, shape);
  if (t) m2_rng_uniform_(r, t, lo, hi);
  return t;
}
/* integers uniform in [lo, hi) of dtype dt (I32, I64 or a float dtype); those below `keep` become -100 (ignored
 * targets) */
static m2_tensor *ints(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, int64_t lo, int64_t hi, int64_t keep) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, nd, shape);
  if (!t) return NULL;
  int64_t n = m2_numel(t);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = lo + m2_rng_randint(r, hi - lo);
    m2_store(m2_data(t), dt, i, (double)(v < keep ? -100 : v));
  }
  return t;
}
/* every last-dim vector of an F64 tensor scaled to unit length (GDN's q and k come L2-normalised) */
static m2_tensor *unit_rows(m2_tensor *t) {
  if (!t) return NULL;
  int64_t d = t->shape[t->ndim - 1], rows = d ? m2_numel(t) / d : 0;
  double *x = m2_data(t);
  for (int64_t r = 0; r < rows; r++) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += x[r * d + i] * x[r * d + i];
    for (int64_t i = 0; i < d; i++) x[r * d + i] /= sqrt(s + 1e-12);
  }
  return t;
}

static void add(oc_inputs *in, m2_tensor *t, bool grad) {
  in->t[in->n] = t;
  in->grad[in->n] = grad && t && m2_dtype_is_float(t->dtype);
  in->n++;
}

/* one output from an expression giving a tensor */
#define ONE(expr)                \
  do {                           \
    outs[0] = (expr);            \
    return outs[0] ? 1 : -1;     \
  } while (0)

/* outs[0] = f(tmp), releasing tmp (a view or step before the op under test) */
#define THEN(tmp, expr)                     \
  do {                                      \
    m2_tensor *tmp_ = (tmp);                \
    outs[0] = tmp_ ? (expr) : NULL;         \
    m2_release(tmp_);                       \
    return outs[0] ? 1 : -1;                \
  } while (0)

/* ---------------- views and conversions (core/ops_view.c) ---------------- */

static void mk_x234(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(2, 3, 4), 1), true); }
static void mk_x314(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(3, 1, 4), 1), true); }

static int run_contiguous(m2_tensor *const *in, m2_tensor **outs) {
  THEN(m2_permute(in[0], (int[]){2, 0, 1}), m2_contiguous(tmp_));
}
static int run_reshape(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_reshape(in[0], S(4, -1))); }
static int run_reshape_strided(m2_tensor *const *in, m2_tensor **outs) {
  THEN(m2_transpose(in[0], 0, 2), m2_reshape(tmp_, S(-1, 6)));
}
static int run_narrow(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_narrow(in[0], 1, 1, 2)); }
static int run_permute(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_permute(in[0], (int[]){2, 0, 1})); }
static int run_expand(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_expand(in[0], S(2, 3, 5, 4))); }
/* there and back through another float dtype (F64 -> F32, F32 -> BF16, BF16 -> F32): the op runs twice */
static int run_to_dtype(m2_tensor *const *in, m2_tensor **outs) {
  m2_dtype dt = in[0]->dtype, mid = dt == M2_F64 ? M2_F32 : dt == M2_F32 ? M2_BF16 : M2_F32;
  THEN(m2_to_dtype(in[0], mid), m2_to_dtype(tmp_, dt));
}
/* to the CPU and back to the input's device: on a CUDA input both directions run */
static int run_to_device(m2_tensor *const *in, m2_tensor **outs) {
  THEN(m2_to_device(in[0], M2_DEV_CPU), m2_to_device(tmp_, in[0]->device));
}

/* ---------------- elementwise (core/ops_elementwise.c, ops_swiglu.c) ---------------- */

static void mk_bin(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 3, 4), 1), true);
  add(in, rn(r, S(3, 1), 1), true); /* broadcast over the batch and the last dim */
}
static void mk_div(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 3, 4), 1), true);
  add(in, un(r, S(3, 1), 0.5, 2.0), true); /* away from 0 */
}
static void mk_x35(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(3, 5), 1), true); }
static void mk_pos35(m2_rng *r, oc_inputs *in) { add(in, un(r, S(3, 5), 0.2, 3.0), true); }
static void mk_wide35(m2_rng *r, oc_inputs *in) { add(in, un(r, S(3, 5), -6, 6), true); }
static void mk_swiglu(m2_rng *r, oc_inputs *in) {
  add(in, un(r, S(3, 5), -4, 4), true);
  add(in, rn(r, S(3, 5), 1), true);
}

static int run_add(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_add(in[0], in[1])); }
static int run_sub(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_sub(in[0], in[1])); }
static int run_mul(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_mul(in[0], in[1])); }
static int run_div(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_div(in[0], in[1])); }
static int run_scale(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_scale(in[0], -1.75)); }
static int run_add_scalar(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_add_scalar(in[0], 0.625)); }
static int run_neg(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_neg(in[0])); }
static int run_exp(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_exp(in[0])); }
static int run_log(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_log(in[0])); }
static int run_tanh(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_tanh(in[0])); }
static int run_sigmoid(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_sigmoid(in[0])); }
static int run_silu(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_silu(in[0])); }
static int run_swiglu(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_swiglu(in[0], in[1])); }
static int run_softplus(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_softplus(in[0])); }
static int run_relu(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_relu(in[0])); }
static int run_square(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_square(in[0])); }
static int run_sqrt(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_sqrt(in[0])); }
static int run_clamp(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_clamp(in[0], -0.5, 0.75)); }

/* ---------------- reductions, softmax, scans (core/ops_reduce.c) ---------------- */

static void mk_x354(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(3, 5, 4), 1), true); }
/* small integers as floats, so that some elements are equal */
static void mk_eq_floats(m2_rng *r, oc_inputs *in) {
  add(in, ints(r, M2_F64, S(4, 5), 0, 3, 0), false);
  add(in, ints(r, M2_F64, S(5), 0, 3, 0), false);
}
static void mk_eq_ints(m2_rng *r, oc_inputs *in) {
  add(in, ints(r, M2_I64, S(4, 5), 0, 3, 0), false);
  add(in, ints(r, M2_I32, S(5), 0, 3, 0), false);
}

static int run_sum(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_sum(in[0], 1, false)); }
static int run_mean(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_mean(in[0], -1, true)); }
static int run_max(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_max(in[0], 0, false)); }
static int run_sum_all(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_sum_all(in[0])); }
static int run_mean_all(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_mean_all(in[0])); }
static int run_max_all(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_max_all(in[0])); }
static int run_argmax(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_argmax(in[0], 1, false)); }
static int run_eq(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_eq(in[0], in[1])); }
static int run_softmax(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_softmax(in[0], 1)); }
static int run_log_softmax(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_log_softmax(in[0], -1)); }
static int run_cumsum(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_cumsum(in[0], 1)); }

/* ---------------- matrix products (core/ops_matmul.c) ---------------- */

static void mk_mm(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 3, 4), 1), true);
  add(in, rn(r, S(2, 4, 5), 1), true);
}
static void mk_mm_tt(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 4, 3), 1), true); /* a^T */
  add(in, rn(r, S(5, 4), 1), true);    /* b^T, shared by the batch */
}
static int run_matmul(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_matmul(in[0], in[1], false, false)); }
static int run_matmul_tt(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_matmul(in[0], in[1], true, true)); }

/* ---------------- neural-net ops (core/ops_nn.c, ops_lmloss.c) ---------------- */

static void mk_embedding(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(7, 4), 1), true);
  add(in, ints(r, M2_I64, S(2, 5), 0, 7, 0), false); /* 10 ids of 7: some repeat */
}
static void mk_ce(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(3, 4, 6), 1), true);
  add(in, ints(r, M2_I64, S(3, 4), -2, 6, 0), false); /* about one in four ignored (-100) */
}
static void mk_lce(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 5, 3), 1), true);
  add(in, rn(r, S(7, 3), 1), true);
  add(in, ints(r, M2_I64, S(2, 5), -2, 7, 0), false);
}
static void mk_rmsnorm(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(3, 5), 1), true);
  add(in, un(r, S(5), 0.5, 1.5), true);
}

static int run_embedding(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_embedding(in[0], in[1])); }
static int run_ce(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_cross_entropy(in[0], in[1], -100)); }
/* chunks of 4 rows: 10 rows make 3 chunks, the last short */
static int run_lce(m2_tensor *const *in, m2_tensor **outs) {
  ONE(m2_linear_cross_entropy(in[0], in[1], in[2], -100, 4));
}
static int run_rmsnorm(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_rmsnorm(in[0], in[1], 1e-5)); }
static int run_rmsnorm_nw(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_rmsnorm(in[0], NULL, 1e-5)); }
static int run_l2norm(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_l2norm(in[0], 1e-6)); }

/* ---------------- indexing and joining (core/ops_index.c) ---------------- */

static void mk_concat(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 3, 4), 1), true);
  add(in, rn(r, S(2, 1, 4), 1), true);
  add(in, rn(r, S(2, 2, 4), 1), true);
}
static void mk_split(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(3, 7, 2), 1), true); }
static void mk_gather(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(3, 5, 4), 1), true);
  add(in, ints(r, M2_I64, S(3, 6, 4), 0, 5, 0), false);
}
static void mk_index_select(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(3, 5, 4), 1), true);
  add(in, ints(r, M2_I64, S(7), 0, 5, 0), false); /* repeats accumulate */
}

static int run_concat(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_concat(3, in, 1)); }
static int run_split(m2_tensor *const *in, m2_tensor **outs) {
  return m2_split(in[0], 1, 3, (int64_t[]){2, 4, 1}, outs) == M2_OK ? 3 : -1;
}
static int run_gather(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_gather(in[0], 1, in[1])); }
static int run_index_select(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_index_select(in[0], 1, in[1])); }

/* ---------------- sequence mixers (core/ops_conv1d.c, ops_m2rnn.c, ops_gdn.c, ops_ssd.c, ops_attention.c) ------ */

static void mk_conv1d(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 6, 3), 1), true);
  add(in, rn(r, S(3, 4), 1), true);
  add(in, rn(r, S(3), 1), true);
}
static int run_conv1d(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_conv1d_causal(in[0], in[1], in[2])); }

/* B 2, T 5, K 3, V 2; Nq = Nk = 1, Nv = Nf = Nw = N = 2 (head sharing); h0 given; f in (0.05, 0.95) */
static void mk_m2rnn(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 5, 1, 3), 0.5), true);
  add(in, rn(r, S(2, 5, 1, 3), 0.5), true);
  add(in, rn(r, S(2, 5, 2, 2), 1.0), true);
  add(in, rn(r, S(2, 2, 2), 0.4), true);
  add(in, un(r, S(2, 5, 2), 0.05, 0.95), true);
  add(in, rn(r, S(2, 2, 3, 2), 0.5), true);
}
static int m2rnn_with(m2_tensor *const *in, m2_tensor **outs, double clip) {
  m2_m2rnn_opts o = {.grad_clip = clip};
  return m2_m2rnn(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}
static int run_m2rnn(m2_tensor *const *in, m2_tensor **outs) { return m2rnn_with(in, outs, 0); }
static int run_m2rnn_clip(m2_tensor *const *in, m2_tensor **outs) { return m2rnn_with(in, outs, 0.05); }

/* B 2, T 7, H 2, K 3, V 2; q, k unit rows; log-decay g in (-0.6, -0.01), beta in (0.05, 1.95); h0 given */
static void mk_gdn(m2_rng *r, oc_inputs *in) {
  add(in, unit_rows(rn(r, S(2, 7, 2, 3), 1)), true);
  add(in, unit_rows(rn(r, S(2, 7, 2, 3), 1)), true);
  add(in, rn(r, S(2, 7, 2, 2), 0.7), true);
  add(in, un(r, S(2, 7, 2), -0.6, -0.01), true);
  add(in, un(r, S(2, 7, 2), 0.05, 1.95), true);
  add(in, rn(r, S(2, 2, 3, 2), 0.5), true);
}
/* chunk 3 over T 7: three chunks (checkpoint segments of the recurrent row), the last short */
static int run_gdn(m2_tensor *const *in, m2_tensor **outs) {
  m2_gdn_opts o = {.chunk = 3};
  return m2_gdn(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}
static int run_gdn_chunked(m2_tensor *const *in, m2_tensor **outs) {
  m2_gdn_opts o = {.chunk = 3};
  return m2_gdn_chunked(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}

/* B 2, T 7, H 2, P 2, G 1 (< H), N 3; dt in (0.01, 0.4), A in (-1.5, -0.1); h0 given */
static void mk_ssd(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(2, 7, 2, 2), 1), true);
  add(in, un(r, S(2, 7, 2), 0.01, 0.4), true);
  add(in, un(r, S(2), -1.5, -0.1), true);
  add(in, rn(r, S(2, 7, 1, 3), 0.5), true);
  add(in, rn(r, S(2, 7, 1, 3), 0.5), true);
  add(in, rn(r, S(2, 2, 2, 3), 0.5), true);
}
static int run_ssd(m2_tensor *const *in, m2_tensor **outs) {
  m2_ssd_opts o = {.chunk = 3};
  return m2_ssd(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}
static int run_ssd_chunked(m2_tensor *const *in, m2_tensor **outs) {
  m2_ssd_opts o = {.chunk = 3};
  return m2_ssd_chunked(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}

/* q (1, 4, 2, 3), k and v (1, 5, 1, 3): grouped heads, S > T */
static void mk_attention(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(1, 4, 2, 3), 1), true);
  add(in, rn(r, S(1, 5, 1, 3), 1), true);
  add(in, rn(r, S(1, 5, 1, 3), 1), true);
}
static int run_attention(m2_tensor *const *in, m2_tensor **outs) {
  m2_attention_opts o = {.causal = true};
  ONE(m2_attention(in[0], in[1], in[2], &o));
}
static int run_attention_full(m2_tensor *const *in, m2_tensor **outs) {
  m2_attention_opts o = {.scale = 0.8, .causal = false};
  ONE(m2_attention(in[0], in[1], in[2], &o));
}
static void mk_rope(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(1, 3, 2, 4), 1), true); }
static int run_rope(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_rope(in[0], 10000, 5)); }

/* ---------------- mixture of experts (core/ops_moe.c) ---------------- */

/* an i64 tensor of the given values */
static m2_tensor *i64s(int nd, const int64_t *shape, const int64_t *v) { return m2_from_data(M2_I64, M2_DEV_CPU, nd, shape, v); }

/* router logits (6, 5): random; with a bias of +3 on expert 2 every token routes there first (all to one expert) */
static void mk_route(m2_rng *r, oc_inputs *in) { add(in, rn(r, S(6, 5), 1), true); }
static void mk_route_one(m2_rng *r, oc_inputs *in) {
  m2_tensor *t = rn(r, S(6, 5), 0.5);
  for (int n = 0; t && n < 6; n++) ((double *)m2_data(t))[n * 5 + 2] += 3;
  add(in, t, true);
}
/* weights and aux (the float outputs; indices and counts are integers) */
static int route_with(m2_tensor *const *in, m2_tensor **outs, int64_t k) {
  return m2_moe_route(in[0], k, &outs[0], NULL, &outs[1], NULL) == M2_OK ? 2 : -1;
}
static int run_route_k2(m2_tensor *const *in, m2_tensor **outs) { return route_with(in, outs, 2); }
static int run_route_k1(m2_tensor *const *in, m2_tensor **outs) { return route_with(in, outs, 1); }
static int run_route_kE(m2_tensor *const *in, m2_tensor **outs) { return route_with(in, outs, 5); }

/* x (5, 3), indices (5, 2) of 4 experts: drawn from {0, 1, 3} (expert 2 gets no slot), or all expert 1 */
static void mk_permute(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(5, 3), 1), true);
  m2_tensor *ix = ints(r, M2_I64, S(5, 2), 0, 3, 0);
  for (int s = 0; ix && s < 10; s++) if (((int64_t *)m2_data(ix))[s] == 2) ((int64_t *)m2_data(ix))[s] = 3;
  add(in, ix, false);
}
static void mk_permute_one(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(5, 3), 1), true);
  add(in, ints(r, M2_I32, S(5, 2), 1, 2, 1), false);
}
static int run_permute_moe(m2_tensor *const *in, m2_tensor **outs) {
  return m2_moe_permute(in[0], in[1], 4, &outs[0], NULL, NULL) == M2_OK ? 1 : -1;
}

/* x (7, 3), w (4, 2, 3): groups of 2, 0, 3, 2 rows (expert 1 empty), or all 7 rows to expert 2 */
static void mk_gmm(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(7, 3), 1), true);
  add(in, rn(r, S(4, 2, 3), 1), true);
  add(in, i64s(S(5), (int64_t[]){0, 2, 2, 5, 7}), false);
}
static void mk_gmm_one(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(7, 3), 1), true);
  add(in, rn(r, S(4, 2, 3), 1), true);
  add(in, i64s(S(5), (int64_t[]){0, 0, 0, 7, 7}), false);
}
static int run_gmm(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_moe_grouped_matmul(in[0], in[1], in[2])); }

/* yp (8, 3), weights (4, 2), pos a random permutation of the 8 rows */
static void mk_unpermute(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(8, 3), 1), true);
  add(in, un(r, S(4, 2), 0.1, 1), true);
  int64_t p[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int i = 7; i > 0; i--) {
    int j = (int)m2_rng_randint(r, i + 1);
    int64_t t = p[i];
    p[i] = p[j], p[j] = t;
  }
  add(in, i64s(S(4, 2), p), false);
}
static int run_unpermute(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_moe_unpermute(in[0], in[1], in[2])); }

/* the whole MoE MLP as lua/m2/layers/moe.lua composes it: x (6, 4), router (5, 4), gate / up (5, 3, 4), down
 * (5, 4, 3), top-2: route, permute, gate and up, swiglu, down, unpermute; plus the aux losses */
static void mk_moe_layer(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(6, 4), 1), true);
  add(in, rn(r, S(5, 4), 1), true);
  add(in, rn(r, S(5, 3, 4), 0.5), true);
  add(in, rn(r, S(5, 3, 4), 0.5), true);
  add(in, rn(r, S(5, 4, 3), 0.5), true);
}
static int run_moe_layer(m2_tensor *const *in, m2_tensor **outs) {
  m2_tensor *lg = m2_linear(in[0], in[1], NULL), *w = NULL, *ix = NULL, *aux = NULL, *xp = NULL, *pos = NULL,
            *off = NULL, *a = NULL, *b = NULL, *s = NULL, *yp = NULL;
  int n = -1;
  if (lg && m2_moe_route(lg, 2, &w, &ix, &aux, NULL) == M2_OK && m2_moe_permute(in[0], ix, 5, &xp, &pos, &off) == M2_OK &&
      (a = m2_moe_grouped_matmul(xp, in[2], off)) && (b = m2_moe_grouped_matmul(xp, in[3], off)) &&
      (s = m2_swiglu(a, b)) && (yp = m2_moe_grouped_matmul(s, in[4], off)) &&
      (outs[0] = m2_moe_unpermute(yp, w, pos))) {
    outs[1] = aux, aux = NULL;
    n = 2;
  }
  m2_release(lg), m2_release(w), m2_release(ix), m2_release(aux), m2_release(xp), m2_release(pos), m2_release(off);
  m2_release(a), m2_release(b), m2_release(s), m2_release(yp);
  return n;
}

/* expert parallelism in one process (core/ops_moe_ep.c; between ranks: tests/dist_ep.sh): xp (7, 3) in groups of
 * 2, 0, 3, 2 rows of 4 experts; counts (1, 4) of the same groups */
static void mk_dispatch(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(7, 3), 1), true);
  add(in, i64s(S(5), (int64_t[]){0, 2, 2, 5, 7}), false);
}
static int run_dispatch(m2_tensor *const *in, m2_tensor **outs) {
  return m2_moe_dispatch(NULL, in[0], in[1], 4, &outs[0], NULL, NULL) == M2_OK ? 1 : -1;
}
static void mk_combine(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(7, 3), 1), true);
  add(in, i64s(S(1, 4), (int64_t[]){2, 0, 3, 2}), false);
}
static int run_combine(m2_tensor *const *in, m2_tensor **outs) { ONE(m2_moe_combine(NULL, in[0], in[1])); }

/* ---------------- activation checkpointing (core/recompute.c) ---------------- */

/* x (3, 4), b (4) the checkpoint's inputs; w (4) a parameter the function reads without it being an input: its
 * gradient comes from the nested backward of the recompute */
static void mk_recompute(m2_rng *r, oc_inputs *in) {
  add(in, rn(r, S(3, 4), 1), true);
  add(in, rn(r, S(4), 0.5), true);
  add(in, rn(r, S(4), 1), true);
}
/* y1 = tanh(x w + b), y2 = y1 x: two outputs, the second reusing the first */
static m2_status rc_fn(void *ctx, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs) {
  (void)n_in;
  m2_tensor *xw = m2_mul(in[0], (m2_tensor *)ctx);
  m2_tensor *z = xw ? m2_add(xw, in[1]) : NULL;
  outs[0] = z ? m2_tanh(z) : NULL;
  outs[1] = outs[0] ? m2_mul(outs[0], in[0]) : NULL;
  m2_release(xw);
  m2_release(z);
  *n_out = 2;
  return outs[1] ? M2_OK : m2_errcode();
}
static int run_recompute(m2_tensor *const *in, m2_tensor **outs) {
  int n = 0;
  return m2_checkpoint(rc_fn, in[2], NULL, 2, in, &n, outs) == M2_OK ? n : -1;
}

/* ---------------- bf16 activations (core/op_cast.c, m2_set_activation_dtype) ----------------
 * A model under activations=bf16 hands its ops bf16 activations with f32 parameters: run the case with its first k
 * float inputs rounded to bf16 tensors and the others as they come. The f32 parity pass (tests/cuda_op_cases.c) thus
 * checks the CUDA side of the mix (the dispatcher's conversion, or the M2RNN kernel's own) against the CPU's; the
 * bf16 pass is the plain case's; on F64 inputs (the gradient check) the case runs as it is. */
static int with_act(int (*run)(m2_tensor *const *, m2_tensor **), int k, m2_tensor *const *in, m2_tensor **outs) {
  if (!in[0] || in[0]->dtype != M2_F32) return run(in, outs);
  m2_tensor *x[OC_MAX_IN], *held[OC_MAX_IN] = {0};
  memcpy(x, in, sizeof x);
  int n = 0;
  for (int i = 0; i < k && n >= 0; i++) {
    if (!in[i] || !m2_dtype_is_float(in[i]->dtype)) continue;
    x[i] = held[i] = m2_to_dtype(in[i], M2_BF16);
    if (!x[i]) n = -1;
  }
  if (n == 0) n = run(x, outs);
  for (int i = 0; i < OC_MAX_IN; i++) m2_release(held[i]);
  return n;
}
#define ACT(run, k)                                                                                   \
  static int run##_act(m2_tensor *const *in, m2_tensor **outs) { return with_act(run, k, in, outs); }
ACT(run_add, 1)
ACT(run_mul, 1)
ACT(run_swiglu, 1)
ACT(run_lce, 1)
ACT(run_rmsnorm, 1)
ACT(run_conv1d, 1)
ACT(run_m2rnn, 3)
ACT(run_gdn, 3)
ACT(run_gdn_chunked, 3)
ACT(run_ssd, 1)
ACT(run_attention, 1)
#undef ACT
/* matmul under m2_set_activation_dtype(M2_BF16): f32 operands rounded to bf16, a bf16 product */
static int run_matmul_act(m2_tensor *const *in, m2_tensor **outs) {
  m2_dtype old = m2_set_activation_dtype(M2_BF16);
  outs[0] = m2_matmul(in[0], in[1], false, false);
  m2_set_activation_dtype(old);
  return outs[0] ? 1 : -1;
}

/* ---------------- the table ---------------- */

/* parity bounds: binary ops' bf16 backwards round every intermediate (cuda_ops_elementwise.c); the mixers compute
   long chains (tests/cuda_mixer_parity.h's bounds) */
#define BIN_BOUNDS .btol = {0, 2e-2}
#define MIX_BOUNDS .tol = {1e-4, 2e-2}, .btol = {1e-4, 2e-2}
/* a gradient through f32 rounding: a step that dwarfs it */
#define THROUGH_F32 .gc = {.eps = 1e-2, .atol = 1e-5, .rtol = 1e-4}
/* bf16 activations: outputs (and the gradients of bf16 inputs) are bf16 on both devices, a different f32 summation
   order may flip a rounding (one bf16 ulp, 2^-7 of a value) */
#define ACT_BOUNDS .tol = {1e-2, 1e-2}, .btol = {1e-2, 2e-2}
#define ACT_MIX_BOUNDS .tol = {2e-2, 2e-2}, .btol = {2e-2, 2e-2}

const op_case oc_cases[] = {
    /* views and conversions */
    {"contiguous", "of a permuted view", mk_x234, run_contiguous},
    {"reshape", "view of a contiguous tensor, -1", mk_x234, run_reshape},
    {"reshape", "copy of a transposed view", mk_x234, run_reshape_strided},
    {"narrow", "dim 1", mk_x234, run_narrow},
    {"permute", "(2, 0, 1)", mk_x234, run_permute},
    {"expand", "(3, 1, 4) to (2, 3, 5, 4)", mk_x314, run_expand},
    {"to_dtype", "there and back", mk_x234, run_to_dtype, 0, THROUGH_F32},
    {"to_device", "to the cpu and back", mk_x234, run_to_device, OC_TWO_DEVICES},
    /* elementwise */
    {"add", "broadcast (2, 3, 4) + (3, 1)", mk_bin, run_add, 0, BIN_BOUNDS},
    {"sub", "broadcast (2, 3, 4) - (3, 1)", mk_bin, run_sub, 0, BIN_BOUNDS},
    {"mul", "broadcast (2, 3, 4) * (3, 1)", mk_bin, run_mul, 0, BIN_BOUNDS},
    {"div", "broadcast, denominator in [0.5, 2)", mk_div, run_div, 0, BIN_BOUNDS},
    {"scale", "by -1.75", mk_x35, run_scale},
    {"add_scalar", "+ 0.625", mk_x35, run_add_scalar},
    {"neg", "", mk_x35, run_neg},
    {"exp", "", mk_x35, run_exp},
    {"log", "of [0.2, 3)", mk_pos35, run_log},
    {"tanh", "", mk_x35, run_tanh},
    {"sigmoid", "", mk_wide35, run_sigmoid},
    {"silu", "", mk_wide35, run_silu},
    {"swiglu", "a in [-4, 4)", mk_swiglu, run_swiglu},
    {"softplus", "", mk_wide35, run_softplus},
    {"relu", "", mk_x35, run_relu},
    {"square", "", mk_x35, run_square},
    {"sqrt", "of [0.2, 3)", mk_pos35, run_sqrt},
    {"clamp", "to [-0.5, 0.75]", mk_x35, run_clamp},
    /* reductions, softmax, scans */
    {"sum", "dim 1", mk_x354, run_sum},
    {"mean", "dim -1, keepdim", mk_x354, run_mean},
    {"max", "dim 0", mk_x354, run_max},
    {"sum_all", "", mk_x354, run_sum_all},
    {"mean_all", "", mk_x354, run_mean_all},
    {"max_all", "", mk_x354, run_max_all},
    {"argmax", "dim 1", mk_x354, run_argmax, OC_FWD_ONLY},
    {"eq", "floats, broadcast", mk_eq_floats, run_eq, OC_FWD_ONLY},
    {"eq", "i64 with i32, broadcast", mk_eq_ints, run_eq, OC_FWD_ONLY | OC_NO_BF16},
    {"softmax", "dim 1", mk_x354, run_softmax},
    {"log_softmax", "dim -1", mk_x354, run_log_softmax},
    {"cumsum", "dim 1", mk_x354, run_cumsum, 0, .tol = {0, 2e-2}, .btol = {0, 2e-2}},
    /* matrix products */
    {"matmul", "batched", mk_mm, run_matmul},
    {"matmul", "a and b transposed, b shared", mk_mm_tt, run_matmul_tt},
    /* neural-net ops */
    {"embedding", "repeated ids", mk_embedding, run_embedding},
    {"cross_entropy", "some targets ignored", mk_ce, run_ce},
    {"linear_cross_entropy", "chunks of 4 rows, some ignored", mk_lce, run_lce},
    {"rmsnorm", "with weight", mk_rmsnorm, run_rmsnorm},
    {"rmsnorm", "without weight", mk_x35, run_rmsnorm_nw},
    {"l2norm", "", mk_x35, run_l2norm},
    /* indexing and joining */
    {"concat", "three inputs, dim 1", mk_concat, run_concat},
    {"split", "three pieces, dim 1", mk_split, run_split},
    {"gather", "dim 1", mk_gather, run_gather},
    {"index_select", "dim 1, repeated indices", mk_index_select, run_index_select},
    /* sequence mixers */
    {"conv1d_causal", "W 4, bias", mk_conv1d, run_conv1d},
    {"m2rnn", "head sharing, h0", mk_m2rnn, run_m2rnn, 0, MIX_BOUNDS},
    {"m2rnn", "state-gradient clipping 0.05", mk_m2rnn, run_m2rnn_clip, OC_PARITY_ONLY, MIX_BOUNDS},
    {"gdn", "h0, checkpoints every 3 steps", mk_gdn, run_gdn, 0, MIX_BOUNDS},
    {"gdn_chunked", "h0, chunks of 3", mk_gdn, run_gdn_chunked, 0, MIX_BOUNDS},
    {"ssd", "G < H, h0, checkpoints every 3 steps", mk_ssd, run_ssd, 0, MIX_BOUNDS},
    {"ssd_chunked", "G < H, h0, chunks of 3", mk_ssd, run_ssd_chunked, 0, MIX_BOUNDS},
    {"attention", "causal, grouped heads, S > T", mk_attention, run_attention, 0, MIX_BOUNDS},
    {"attention", "full, scale 0.8", mk_attention, run_attention_full, 0, MIX_BOUNDS},
    {"rope", "offset 5", mk_rope, run_rope},
    /* mixture of experts */
    {"moe_route", "N 6, E 5, top-2", mk_route, run_route_k2},
    {"moe_route", "top-1, every token to expert 2", mk_route_one, run_route_k1},
    {"moe_route", "top_k = E", mk_route, run_route_kE},
    {"moe_permute", "4 experts, expert 2 gets no token", mk_permute, run_permute_moe},
    {"moe_permute", "i32 indices, all to expert 1", mk_permute_one, run_permute_moe},
    {"moe_grouped_matmul", "groups 2, 0, 3, 2", mk_gmm, run_gmm},
    {"moe_grouped_matmul", "all rows in one group", mk_gmm_one, run_gmm},
    {"moe_unpermute", "top-2, random permutation", mk_unpermute, run_unpermute},
    {"moe_unpermute", "the whole MoE MLP, top-2 of 5, with aux", mk_moe_layer, run_moe_layer, 0, MIX_BOUNDS},
    {"moe_dispatch", "one process, groups 2, 0, 3, 2", mk_dispatch, run_dispatch},
    {"moe_combine", "one process, groups 2, 0, 3, 2", mk_combine, run_combine},
    /* four ops in a chain, each rounding its bf16 output once: the bf16 bounds of a chain (measured on an H100:
       0.0112 for one gradient against the single-op 1e-2); f32 keeps the harness's */
    {"recompute", "checkpoint of tanh(x w + b) and its product with x, w not an input", mk_recompute,
     run_recompute, 0, .tol = {0, 2e-2}, .btol = {0, 2e-2}},
    /* bf16 activations with f32 parameters: the mixes a model under activations=bf16 makes */
    {"add", "bf16 activation + f32 (a residual add)", mk_bin, run_add_act, 0, ACT_BOUNDS},
    {"mul", "bf16 activation * f32", mk_bin, run_mul_act, 0, ACT_BOUNDS},
    {"swiglu", "bf16 gate, f32 input", mk_swiglu, run_swiglu_act, 0, ACT_BOUNDS},
    {"matmul", "bf16 activations: f32 operands, bf16 product", mk_mm, run_matmul_act, 0, ACT_BOUNDS},
    {"linear_cross_entropy", "bf16 h, f32 weight", mk_lce, run_lce_act, 0, ACT_BOUNDS},
    {"rmsnorm", "bf16 x, f32 weight", mk_rmsnorm, run_rmsnorm_act, 0, ACT_BOUNDS},
    {"conv1d_causal", "bf16 x, f32 weight and bias", mk_conv1d, run_conv1d_act, 0, ACT_BOUNDS},
    {"m2rnn", "bf16 q, k, v; f32 W, f, h0", mk_m2rnn, run_m2rnn_act, 0, ACT_MIX_BOUNDS},
    {"gdn", "bf16 q, k, v; f32 g, beta, h0", mk_gdn, run_gdn_act, 0, ACT_MIX_BOUNDS},
    {"gdn_chunked", "bf16 q, k, v; f32 g, beta, h0", mk_gdn, run_gdn_chunked_act, 0, ACT_MIX_BOUNDS},
    {"ssd", "bf16 x; f32 dt, A, B, C, h0", mk_ssd, run_ssd_act, 0, ACT_MIX_BOUNDS},
    {"attention", "bf16 q; f32 k, v", mk_attention, run_attention_act, 0, ACT_MIX_BOUNDS},
};
const int oc_ncases = (int)(sizeof oc_cases / sizeof oc_cases[0]);

int oc_count(const char *op) {
  int n = 0;
  for (int i = 0; i < oc_ncases; i++) n += strcmp(oc_cases[i].op, op) == 0;
  return n;
}

void oc_make(const op_case *c, uint64_t seed, oc_inputs *in) {
  memset(in, 0, sizeof *in);
  m2_rng r = m2_rng_make(seed, (uint64_t)(c - oc_cases));
  c->make(&r, in);
}

void oc_release(oc_inputs *in) {
  for (int i = 0; i < in->n; i++) {
    m2_release(in->t[i]);
    in->t[i] = NULL;
  }
  in->n = 0;
}

m2_tensor *oc_dot_loss(m2_tensor **ys, int n, m2_tensor **dys) {
  m2_tensor *l = NULL;
  for (int j = 0; j < n; j++) {
    if (!dys[j]) continue;
    m2_tensor *p = m2_mul(ys[j], dys[j]), *s = p ? m2_sum_all(p) : NULL;
    m2_tensor *s32 = s ? m2_to_dtype(s, M2_F32) : NULL;
    m2_tensor *nl = !s32 ? NULL : l ? m2_add(l, s32) : (m2_retain(s32), s32);
    m2_release(p), m2_release(s), m2_release(s32), m2_release(l);
    l = nl;
    if (!l) return NULL;
  }
  return l;
}
