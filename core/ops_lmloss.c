/* ops_lmloss.c — linear_cross_entropy(h, W, targets): the mean cross-entropy of the logits h W^T without ever holding
 * all of them. A language model's head at B = 8, T = 4096 and a 100 k vocabulary makes 13 GB of fp32 logits and as
 * much again for their gradient; here the rows go through in chunks (default: 2^29 logits, 2 GB, at a time). When
 * the call is recorded for backward, the forward's pass over the chunks also computes dh and dW (the loss is the last
 * op, so its gradient is known up to the scale g); the backward only scales them.
 *
 *   h (..., d) float, W (V, d) same dtype, targets (...) i32 / i64 (h's leading shape), ignore_index
 *   loss = mean over rows r with t_r != ignore_index of (lse_r - logits[r, t_r]),  logits = h W^T
 *   backward: per chunk, dlogits = g / n_kept (softmax(logits) - onehot(t)) (the cross_entropy op's backward, scaled
 *   by the chunk's share of the kept rows), dh = dlogits W, dW += dlogits^T h.
 * The op is built from the matmul and cross_entropy ops' own kernels, so it runs wherever they do (CPU and CUDA)
 * and is exactly as precise; with bf16 products (m2_matmul_precision at the call, recorded in the attributes) every
 * product is bf16, and on CUDA the dlogits are written in bf16 for them. Op row "linear_cross_entropy":
 * in = {h, W, targets}, attributes m2_linear_cross_entropy_attr (below), out = 0-d loss; saved[0] / saved[1] = dh / dW
 * when the forward computed them. */
#include "ops.h"
#include "autograd.h"
#include "ops_matmul.h"
#include "ops_nn_check.h"
#include <stdlib.h>

extern const m2_op m2_op_cross_entropy, m2_op_matmul;

/* Logits per chunk when the caller leaves the chunk size to the op (chunk_rows 0): 2^29, 2 GB of fp32. */
#define LCE_CHUNK_LOGITS ((int64_t)1 << 29)

/* The op's attributes, resolved by m2_linear_cross_entropy (the only place that builds the call); read by the kernel,
 * which is the same on every device. */
typedef struct m2_linear_cross_entropy_attr {
  int64_t ignore_index; /* rows whose target equals it count neither in the loss nor in the mean */
  int64_t chunk_rows;   /* rows of logits per chunk, >= 1 (0 at the entry: as many as make LCE_CHUNK_LOGITS) */
  bool bf16;            /* bf16 products (f32 h and W, m2_matmul_precision at the call) */
  bool want_dh;         /* the forward also computes the gradient of h (the call is recorded and h needs it) */
  bool want_dw;         /* the same for W */
} m2_linear_cross_entropy_attr;

static m2_status lce_check(m2_tensor *h, m2_tensor *w, m2_tensor *t, m2_float_rule check_float) {
  const char *op = "linear_cross_entropy";
  if (!h || !w || !t) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", op, !h ? "h" : !w ? "W" : "targets");
  M2_TRY(check_float(h, op, "h"));
  M2_TRY(m2_check_same_dtype(h, w, op));
  if (t->dtype != M2_I32 && t->dtype != M2_I64)
    return m2_fail(M2_ERR_DTYPE, "%s: targets must be an integer tensor (i32 or i64), got %s", op,
                   m2_dtype_name(t->dtype));
  char a[96], b[96], e[96];
  bool ok = h->ndim >= 1 && w->ndim == 2 && w->shape[1] == h->shape[h->ndim - 1] && t->ndim == h->ndim - 1;
  for (int i = 0; ok && i < t->ndim; i++) ok = t->shape[i] == h->shape[i];
  if (!ok)
    return m2_fail(M2_ERR_SHAPE, "%s: h %s, W %s and targets %s must be (..., d), (V, d) and (...)", op,
                   m2_shape_str(h, a, sizeof a), m2_shape_str(w, b, sizeof b), m2_shape_str(t, e, sizeof e));
  return M2_OK;
}

/* Rows of a chunk: the caller's chunk_rows when > 0, or as many as make LCE_CHUNK_LOGITS logits of V classes. */
static int64_t resolve_chunk_rows(int64_t chunk_rows, int64_t V) {
  /* a chunk larger than any tensor (2^48 elements, m2_shape_numel) is the whole input: clamping keeps rows + chunk
     from overflowing int64 (chunk_rows = math.maxinteger was undefined behaviour; found by tests/fuzz/fuzz_lua.c) */
  if (chunk_rows > ((int64_t)1 << 48)) return (int64_t)1 << 48;
  if (chunk_rows > 0) return chunk_rows;
  int64_t r = LCE_CHUNK_LOGITS / (V > 0 ? V : 1);
  return r > 0 ? r : 1;
}

/* The kept (non-ignored) rows of every chunk, counted on the host, and their total. A target out of [0, V) is refused
 * here, where its position in the whole (flattened) target tensor is known (the cross_entropy op sees one chunk). */
static m2_status kept_rows(m2_tensor *t, int64_t ign, int64_t rows, int64_t ch, int64_t V, int64_t **out,
                           int64_t *total) {
  m2_tensor *ht = m2_clone_raw(t, M2_I64, M2_DEV_CPU);
  int64_t nch = (rows + ch - 1) / ch, *k = calloc((size_t)(nch ? nch : 1), sizeof *k);
  if (!ht || !k) {
    m2_release(ht), free(k);
    return m2_errcode() != M2_OK ? m2_errcode() : m2_fail(M2_ERR_OOM, "linear_cross_entropy: out of host memory");
  }
  const int64_t *p = m2_data(ht);
  *total = 0;
  for (int64_t r = 0; r < rows; r++) {
    if (p[r] == ign) continue;
    if (p[r] < 0 || p[r] >= V) {
      long long bad = (long long)p[r];
      m2_release(ht), free(k);
      return m2_fail(M2_ERR_INDEX, "linear_cross_entropy: target %lld (at flat position %lld) is out of range for %lld "
                                   "classes (ignore_index %lld)", bad, (long long)r, (long long)V, (long long)ign);
    }
    k[r / ch]++, (*total)++;
  }
  m2_release(ht);
  *out = k;
  return M2_OK;
}

/* The (rows, d) view of h and the (rows) view of the targets (new refs). */
static m2_status flat(m2_tensor *h, m2_tensor *t, m2_tensor **h2, m2_tensor **t1) {
  int64_t rows = m2_numel(t), d = h->shape[h->ndim - 1], s2[2] = {rows, d};
  *h2 = m2_reshape(h, 2, s2);
  *t1 = *h2 ? m2_reshape(t, 1, &rows) : NULL;
  if (*h2 && *t1) return M2_OK;
  m2_release(*h2);
  return m2_errcode();
}

/* One chunk's cross-entropy through the cross_entropy op itself (on lg's device): its forward gives the chunk's mean
 * loss (*loss, a 0-d tensor on lg's device, when asked: not read on the host, so the chunks are not waited for), and
 * when dl != NULL its backward with gradient gc for that mean gives *dl = dlogits (in bf16 with dl16, CUDA only: what
 * the next bf16 product would round them to anyway). */
static m2_status chunk_ce(m2_tensor *lg, m2_tensor *tc, int64_t ign, double gc, bool dl16, m2_tensor **loss,
                          m2_tensor **dl) {
  const m2_op *op = &m2_op_cross_entropy;
  m2_op_fn fwd = m2_op_kernel(op, lg->device, false), bwd = m2_op_kernel(op, lg->device, true);
  if (!fwd || !bwd) return m2_fail(M2_ERR_DEVICE, "linear_cross_entropy: no cross_entropy kernel for this device");
  const bool grad = dl != NULL;
  m2_tensor *in[2] = {lg, tc};
  m2_opcall ce;
  m2_call_init(&ce, op, 2, in);
  m2_cross_entropy_attr cea = {.ignore_index = ign, .bf16_dlogits = dl16, .targets_checked = true}; /* kept_rows */
  M2_SET_ATTR(&ce, cea);
  m2_tensor *g = NULL, *d = NULL;
  m2_status s = fwd(&ce); /* keeps the rows' lse for the backward */
  if (s == M2_OK && loss) {
    m2_retain(ce.out[0]);
    *loss = ce.out[0];
  }
  if (s == M2_OK && grad && !(g = m2_scalar(lg->dtype, lg->device, gc))) s = m2_errcode();
  if (s == M2_OK && grad) {
    ce.dout[0] = g;
    ce.needs_din[0] = true;
    s = bwd(&ce);
    d = ce.din[0];
    ce.din[0] = NULL;
    ce.dout[0] = NULL;
  }
  m2_release(g);
  m2_call_clear(&ce);
  if (s != M2_OK) {
    m2_release(d);
    if (loss) m2_release(*loss), *loss = NULL;
    return s;
  }
  if (dl) *dl = d;
  return M2_OK;
}

/* One pass over the chunks: the loss (a 0-d tensor on h's device: the chunks' means weighted by their kept rows,
 * summed there, so the host never waits for a chunk) and the gradients of the loss into *dh (when want_dh) and *dw
 * (when want_dw). Every chunk: logits = h_c W^T, the cross_entropy op's forward (and backward with gradient
 * kept_c / kept, the chunk's share of the mean), dh_c = dlogits W, dW += dlogits^T h_c. */
static m2_status lce_pass(m2_opcall *c, bool want_dh, bool want_dw, m2_tensor **loss_out, m2_tensor **dh_out,
                          m2_tensor **dw_out) {
  m2_tensor *h = c->in[0], *w = c->in[1], *t = c->in[2];
  const m2_linear_cross_entropy_attr *a = M2_ATTR(c, m2_linear_cross_entropy_attr);
  const int64_t rows = m2_numel(t), d = h->shape[h->ndim - 1], ch = a->chunk_rows, ign = a->ignore_index;
  const bool grad = want_dh || want_dw;
  int64_t *kept = NULL, total = 0;
  M2_TRY(kept_rows(t, ign, rows, ch, w->shape[0], &kept, &total));
  m2_tensor *h2 = NULL, *t1 = NULL, *dh = NULL, *dw = NULL, *loss = NULL;
  m2_status s = flat(h, t, &h2, &t1);
  int64_t s2[2] = {rows, d};
  if (s == M2_OK && want_dh && !(dh = m2_zeros(h->dtype, h->device, 2, s2))) s = m2_errcode();
  const bool dl16 = a->bf16 && h->device.type == M2_CUDA; /* the matmul's bf16 products take dlogits as they are */
  for (int64_t r0 = 0, i = 0; s == M2_OK && r0 < rows; r0 += ch, i++) {
    if (!kept[i]) continue; /* every row of the chunk ignored: no loss, no gradient */
    const int64_t len = rows - r0 < ch ? rows - r0 : ch;
    m2_tensor *hc = m2_narrow(h2, 0, r0, len), *tc = hc ? m2_narrow(t1, 0, r0, len) : NULL;
    s = tc ? M2_OK : m2_errcode();
    /* logits = hc W^T through the matmul op itself (as m2_linear would call it), so that its backward gives
       dh_c and dW_c from one bf16 copy of each operand */
    m2_tensor *in2[2] = {hc, w};
    m2_opcall mm;
    m2_call_init(&mm, &m2_op_matmul, 2, in2);
    m2_matmul_attr mma = {.tb = true, .bf16 = a->bf16}; /* W transposed; bf16 products as the call's */
    M2_SET_ATTR(&mm, mma);
    m2_op_fn mm_fwd = m2_op_kernel(&m2_op_matmul, w->device, false);
    m2_op_fn mm_bwd = m2_op_kernel(&m2_op_matmul, w->device, true);
    if (s == M2_OK && (!mm_fwd || !mm_bwd))
      s = m2_fail(M2_ERR_DEVICE, "linear_cross_entropy: no matmul kernel for this device");
    if (s == M2_OK) s = mm_fwd(&mm);
    m2_tensor *dl = NULL, *v = NULL;
    const double share = (double)kept[i] / (double)total; /* of the mean: the chunk's kept rows over all kept */
    if (s == M2_OK) s = chunk_ce(mm.out[0], tc, ign, share, dl16, &v, grad ? &dl : NULL);
    if (s == M2_OK) { /* loss += share * the chunk's mean, on the device */
      m2_tensor *part = m2_scale(v, share), *sum = part && loss ? m2_add(loss, part) : part;
      if (sum != part) m2_release(part); /* added into sum, or the addition failed */
      if (!sum) s = m2_errcode();
      m2_release(loss);
      loss = sum;
    }
    m2_release(v);
    m2_release(mm.out[0]); /* the chunk's logits */
    mm.out[0] = NULL;
    if (s == M2_OK && grad) {
      mm.dout[0] = dl;
      mm.needs_din[0] = want_dh;
      mm.needs_din[1] = want_dw;
      s = mm_bwd(&mm);
      mm.dout[0] = NULL;
    }
    if (s == M2_OK && dh) { /* dh rows = dlogits W */
      m2_tensor *slot = m2_narrow(dh, 0, r0, len);
      s = slot ? m2_copy_(slot, mm.din[0]) : m2_errcode();
      m2_release(slot);
    }
    if (s == M2_OK && want_dw) { /* dW += dlogits^T h */
      m2_tensor *sum2 = dw ? m2_add(dw, mm.din[1]) : mm.din[1];
      if (!sum2) s = m2_errcode();
      else if (dw) m2_release(dw);
      else m2_retain(sum2);
      dw = sum2;
    }
    m2_call_clear(&mm);
    m2_release(dl), m2_release(hc), m2_release(tc);
  }
  if (s == M2_OK && want_dw && !dw && !(dw = m2_zeros(w->dtype, w->device, 2, w->shape))) s = m2_errcode();
  if (s == M2_OK && !loss && !(loss = m2_scalar(h->dtype, h->device, 0.0))) s = m2_errcode(); /* every row ignored */
  if (s == M2_OK && dh) {
    m2_tensor *v = m2_reshape(dh, h->ndim, h->shape);
    m2_release(dh);
    dh = v;
    if (!dh) s = m2_errcode();
  }
  m2_release(h2), m2_release(t1);
  free(kept);
  if (s != M2_OK) {
    m2_release(dh), m2_release(dw), m2_release(loss);
    return s;
  }
  *loss_out = loss;
  if (dh_out) *dh_out = dh;
  if (dw_out) *dw_out = dw;
  return M2_OK;
}

/* Forward. When the call will be recorded for backward (want_dh: the gradient of h, want_dw: of W is wanted), the same
 * pass also computes the gradients of the loss itself (g = 1) and keeps them in saved[0] / saved[1]: the backward
 * then only scales them, and no logits are computed twice (the fused loss costs what the unfused ops cost). */
static m2_status lce_fwd(m2_opcall *c) {
  M2_TRY(lce_check(c->in[0], c->in[1], c->in[2], m2_check_float));
  m2_tensor *loss = NULL, *dh = NULL, *dw = NULL;
  const m2_linear_cross_entropy_attr *a = M2_ATTR(c, m2_linear_cross_entropy_attr);
  M2_TRY(lce_pass(c, a->want_dh, a->want_dw, &loss, &dh, &dw));
  c->n_saved = 2;
  c->saved[0] = dh;
  c->saved[1] = dw;
  c->n_out = 1;
  c->out[0] = loss;
  return M2_OK;
}

/* g * (a gradient kept by the forward), handing the kept one over. */
static m2_status take_scaled(m2_opcall *c, int i, double g, m2_tensor **out) {
  m2_tensor *k = c->saved[i];
  c->saved[i] = NULL;
  if (g == 1.0) {
    *out = k;
    return M2_OK;
  }
  *out = m2_scale(k, g);
  m2_release(k);
  return *out ? M2_OK : m2_errcode();
}

static m2_status lce_bwd(m2_opcall *c) {
  const bool want_dh = c->needs_din[0], want_dw = c->needs_din[1];
  if (!want_dh && !want_dw) return M2_OK;
  double g;
  M2_TRY(m2_item(c->dout[0], &g));
  if ((want_dh && !c->saved[0]) || (want_dw && !c->saved[1]))
    return m2_fail(M2_ERR_AUTOGRAD, "linear_cross_entropy: the forward kept no gradient of %s (a call not made through "
                   "m2_linear_cross_entropy, or the graph's second backward)", want_dh && !c->saved[0] ? "h" : "W");
  if (want_dh) M2_TRY(take_scaled(c, 0, g, &c->din[0]));
  if (want_dw) M2_TRY(take_scaled(c, 1, g, &c->din[1]));
  return M2_OK;
}

const m2_op m2_op_linear_cross_entropy = {"linear_cross_entropy", lce_fwd, lce_bwd,
                                           M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD | M2_OP_CAST_F32};

m2_tensor *m2_linear_cross_entropy(m2_tensor *h, m2_tensor *w, m2_tensor *targets, int64_t ignore_index,
                                   int64_t chunk_rows) {
  if (lce_check(h, w, targets, m2_check_float) != M2_OK) return NULL;
  if (chunk_rows < 0) {
    m2_fail(M2_ERR_VALUE, "linear_cross_entropy: chunk rows must be >= 0 (0: automatic), got %lld",
            (long long)chunk_rows);
    return NULL;
  }
  m2_tensor *in[3] = {h, w, targets};
  m2_opcall c;
  m2_call_init(&c, &m2_op_linear_cross_entropy, 3, in);
  const bool rec = m2_grad_enabled(); /* the gradients the recorded call's backward will want (see lce_fwd) */
  m2_linear_cross_entropy_attr a = {
      .ignore_index = ignore_index,
      .chunk_rows = resolve_chunk_rows(chunk_rows, w->shape[0]),
      .bf16 = m2_matmul_precision() == M2_MM_BF16 && h->dtype == M2_F32,
      .want_dh = rec && h->requires_grad,
      .want_dw = rec && w->requires_grad,
  };
  M2_SET_ATTR(&c, a);
  return m2_call1(&c);
}
