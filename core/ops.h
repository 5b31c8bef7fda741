/* ops.h — the public C API of every op (each is one row of the registry, see op.h).
 * All return a new reference, or NULL with m2_errmsg() set. Shapes in comments:
 * "(..., M, K)" means any number of leading batch dims. dims may be negative. */
#ifndef M2_OPS_H
#define M2_OPS_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the registry: every op's name, once (core/op_table.c lists the rows in this order). A row
 * `const m2_op m2_op_<name>` lives beside its CPU kernels in core/ops_<file>.c; backends name rows from
 * here when they register their kernels (m2_op_register_kernels, op.h). ---- */
#define M2_OPS(X)                                                                                          \
  X(contiguous) X(reshape) X(narrow) X(permute) X(expand) X(to_dtype) X(to_device)                         \
  X(add) X(sub) X(mul) X(div) X(scale) X(add_scalar) X(neg) X(exp) X(log) X(tanh) X(sigmoid)              \
  X(silu) X(swiglu) X(softplus) X(relu) X(square) X(sqrt) X(clamp)                                         \
  X(sum) X(mean) X(max) X(sum_all) X(mean_all) X(max_all) X(argmax) X(eq) X(softmax)                       \
  X(log_softmax) X(cumsum)                                                                                 \
  X(matmul)                                                                                                \
  X(embedding) X(cross_entropy) X(linear_cross_entropy) X(rmsnorm) X(l2norm)                               \
  X(concat) X(split) X(gather) X(index_select)                                                             \
  X(conv1d_causal) X(m2rnn) X(gdn) X(gdn_chunked) X(ssd) X(ssd_chunked) X(attention) X(rope)                                                                                     \
  X(moe_route) X(moe_permute) X(moe_grouped_matmul) X(moe_unpermute) X(moe_dispatch) X(moe_combine)      \
  X(recompute)

#define M2_OP_DECLARE_ROW(n) extern const m2_op m2_op_##n;
M2_OPS(M2_OP_DECLARE_ROW)
#undef M2_OP_DECLARE_ROW


/* ---- views and copies (core/ops_view.c; m2_contiguous is in op.h) ---- */
m2_tensor *m2_reshape(m2_tensor *x, int ndim, const int64_t *shape); /* one -1 allowed; copies if needed */
m2_tensor *m2_narrow(m2_tensor *x, int dim, int64_t start, int64_t len); /* view */
m2_tensor *m2_transpose(m2_tensor *x, int d0, int d1);   /* view */
m2_tensor *m2_permute(m2_tensor *x, const int *perm);    /* view; perm has x->ndim entries */
m2_tensor *m2_expand(m2_tensor *x, int ndim, const int64_t *shape); /* broadcast view; -1 keeps a dim */
m2_tensor *m2_to_dtype(m2_tensor *x, m2_dtype dt);       /* differentiable between float dtypes */
m2_tensor *m2_to_device(m2_tensor *x, m2_device dev);    /* differentiable */

/* ---- elementwise (core/ops_elementwise.c); binary ops broadcast (numpy rules) ---- */
m2_tensor *m2_add(m2_tensor *a, m2_tensor *b);
m2_tensor *m2_sub(m2_tensor *a, m2_tensor *b);
m2_tensor *m2_mul(m2_tensor *a, m2_tensor *b);
m2_tensor *m2_div(m2_tensor *a, m2_tensor *b);
m2_tensor *m2_scale(m2_tensor *x, double s);             /* x * s */
m2_tensor *m2_add_scalar(m2_tensor *x, double s);        /* x + s */
m2_tensor *m2_neg(m2_tensor *x);
m2_tensor *m2_exp(m2_tensor *x);
m2_tensor *m2_log(m2_tensor *x);
m2_tensor *m2_tanh(m2_tensor *x);
m2_tensor *m2_sigmoid(m2_tensor *x);
m2_tensor *m2_silu(m2_tensor *x);                        /* x * sigmoid(x) */
m2_tensor *m2_swiglu(m2_tensor *a, m2_tensor *b);        /* silu(a) * b, one op (same shapes, core/ops_swiglu.c) */
m2_tensor *m2_softplus(m2_tensor *x);                    /* log(1 + exp(x)), stable */
m2_tensor *m2_relu(m2_tensor *x);
m2_tensor *m2_square(m2_tensor *x);
m2_tensor *m2_sqrt(m2_tensor *x);
m2_tensor *m2_clamp(m2_tensor *x, double lo, double hi); /* grad passes where lo <= x <= hi */

/* ---- reductions, softmax, scans (core/ops_reduce.c) ---- */
m2_tensor *m2_sum(m2_tensor *x, int dim, bool keepdim);
m2_tensor *m2_mean(m2_tensor *x, int dim, bool keepdim);
m2_tensor *m2_max(m2_tensor *x, int dim, bool keepdim);  /* values; grad to the (first) argmax */
m2_tensor *m2_sum_all(m2_tensor *x);                     /* 0-d */
m2_tensor *m2_mean_all(m2_tensor *x);                    /* 0-d */
m2_tensor *m2_max_all(m2_tensor *x);                     /* 0-d */
m2_tensor *m2_argmax(m2_tensor *x, int dim, bool keepdim); /* I64, not differentiable */
m2_tensor *m2_eq(m2_tensor *a, m2_tensor *b);            /* F32 0/1, broadcasting, not differentiable */
m2_tensor *m2_softmax(m2_tensor *x, int dim);
m2_tensor *m2_log_softmax(m2_tensor *x, int dim);
m2_tensor *m2_cumsum(m2_tensor *x, int dim);
/* Sum g (the shape of a broadcast result) down to `shape`: undoes broadcasting, for the backward of broadcasting
 * ops (binary elementwise ops, expand). */
m2_tensor *m2_sum_to_shape(m2_tensor *g, int ndim, const int64_t *shape);

/* ---- matrix products (core/ops_matmul.c, CBLAS) ---- */
/* a (..., M, K) (or (..., K, M) if ta), b (..., K, N) (or (..., N, K) if tb) -> (..., M, N).
 * Batch dims of a and b must be equal, or b may be 2-D (shared by every batch). */
m2_tensor *m2_matmul(m2_tensor *a, m2_tensor *b, bool ta, bool tb);
/* x (..., in) @ w (out, in)^T + bias (out) [bias may be NULL] -> (..., out). Composed of ops. */
m2_tensor *m2_linear(m2_tensor *x, m2_tensor *w, m2_tensor *bias);
/* Precision of the products of f32 matmuls (and so of linear) recorded from now on: M2_MM_F32 (the default:
 * fp32 products) or M2_MM_BF16 (the operands rounded to bf16, fp32 accumulation and result: bf16 tensor cores on
 * CUDA, like bf16 autocast; the CPU rounds the same way, so it stays the reference). Backward uses the setting
 * its forward was recorded with. Returns the previous setting. */
enum { M2_MM_F32 = 0, M2_MM_BF16 = 1 };
int m2_set_matmul_precision(int p);
int m2_matmul_precision(void);
/* The dtype of matmul and linear outputs recorded from now on (bf16 activations, like bf16 autocast): M2_F32 (the
 * default: outputs in the operands' dtype, f32 stays f32) or M2_BF16 (f32 / bf16 operands are rounded to bf16, and
 * the product, fp32-accumulated, is returned in bf16; linear rounds its bias too). The rounding copies are to_dtype
 * ops, so an f32 weight gets an f32 gradient. f64 operands are left alone (gradient checks). Returns the previous
 * setting. */
m2_dtype m2_set_activation_dtype(m2_dtype dt);
m2_dtype m2_activation_dtype(void);

/* ---- neural-net ops (core/ops_nn.c) ---- */
m2_tensor *m2_embedding(m2_tensor *weight, m2_tensor *ids); /* weight (V, d), ids int (...) -> (..., d) */
/* logits (..., C), targets int (...) -> 0-d mean loss over targets != ignore_index
 * (0 if none). Fused log-softmax + NLL. */
m2_tensor *m2_cross_entropy(m2_tensor *logits, m2_tensor *targets, int64_t ignore_index);
/* The mean cross-entropy of h W^T (h (..., d), W (V, d)) against targets (...) without holding all the logits: rows in
 * chunks of chunk_rows (0: 2^29 logits a chunk), recomputed in backward (core/ops_lmloss.c). */
m2_tensor *m2_linear_cross_entropy(m2_tensor *h, m2_tensor *w, m2_tensor *targets, int64_t ignore_index,
                                   int64_t chunk_rows);
m2_tensor *m2_rmsnorm(m2_tensor *x, m2_tensor *weight, double eps); /* x (..., d), weight (d) or NULL */
m2_tensor *m2_l2norm(m2_tensor *x, double eps);           /* over the last dim: x / sqrt(sum x^2 + eps) */

/* ---- indexing and joining (core/ops_index.c) ---- */
m2_tensor *m2_concat(int n, m2_tensor *const *xs, int dim);
/* Split along dim into n pieces of the given sizes (sum = x->shape[dim]); outs get new refs. */
m2_status m2_split(m2_tensor *x, int dim, int n, const int64_t *sizes, m2_tensor **outs);
m2_tensor *m2_gather(m2_tensor *x, int dim, m2_tensor *index);     /* torch.gather semantics */
m2_tensor *m2_index_select(m2_tensor *x, int dim, m2_tensor *index); /* index 1-D int */

/* ---- mixture of experts (core/ops_moe.c; core/ops_moe.h has the maths and the attributes) ---- */
/* logits (N, E) -> weights (N, k) (softmax over the k chosen), indices (N, k) i64 (largest logit first, ties to the
 * lower index), aux (2) = (E sum_e f_e P_e, mean logsumexp^2), counts (E) i64 (slots per expert). Any out pointer may
 * be NULL (that output is dropped). */
m2_status m2_moe_route(m2_tensor *logits, int64_t top_k, m2_tensor **weights, m2_tensor **indices, m2_tensor **aux,
                       m2_tensor **counts);
/* x (N, d), indices (N, k) int in [0, experts) -> xp (N k, d) sorted by expert (stably), pos (N, k) i64 (the row of
 * slot (n, j) in xp), offsets (experts + 1) i64 (expert e's rows [offsets[e], offsets[e + 1])). */
m2_status m2_moe_permute(m2_tensor *x, m2_tensor *indices, int64_t experts, m2_tensor **xp, m2_tensor **pos,
                         m2_tensor **offsets);
/* x (M, in), w (E, out, in), offsets (E + 1) i64 -> (M, out): each group of rows times its expert's w[e]^T; products
 * in bf16 under m2_matmul_precision() == M2_MM_BF16, as matmul. */
m2_tensor *m2_moe_grouped_matmul(m2_tensor *x, m2_tensor *w, m2_tensor *offsets);
/* yp (N k, d), weights (N, k), pos (N, k) int (a permutation of the N k rows) -> (N, d): sum_j weights[n, j] yp[pos]. */
m2_tensor *m2_moe_unpermute(m2_tensor *yp, m2_tensor *weights, m2_tensor *pos);

/* ---- expert parallelism: the token exchange between ranks (core/ops_moe_ep.c; core/ops_moe_ep.h has the layout) ----
 * g: the process group (core/dist.h; NULL = one process); rank r owns experts [r E/R, (r+1) E/R), E % R == 0.
 * moe_dispatch(xp (M, d) sorted by expert, offsets (E + 1) i64) -> xl (Ml, d): the rows of this rank's experts from
 *   every rank, grouped by expert; loff (E/R + 1) i64 their offsets; counts (R, E) i64: every rank's slots per expert.
 * moe_combine(yl (Ml, d), counts (R, E)) -> yp (M, d): the rows back to the ranks they came from, in xp's order.
 * Collectives: every rank calls them, and the tape runs their backwards, in the same order. */
struct m2_dist;
m2_status m2_moe_dispatch(struct m2_dist *g, m2_tensor *xp, m2_tensor *offsets, int64_t experts, m2_tensor **xl,
                          m2_tensor **loff, m2_tensor **counts);
m2_tensor *m2_moe_combine(struct m2_dist *g, m2_tensor *yl, m2_tensor *counts);

#ifdef __cplusplus
}
#endif
#endif
