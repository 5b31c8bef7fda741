/* op_cast.c — the dispatcher's bf16 rule (op.h, top): a call with bf16 float inputs that its kernels cannot take as
 * they are (every such call on the CPU, whose kernels compute in f32 / f64; a bf16 / f32 mix on a device whose
 * kernels want one dtype) runs its op on f32 copies of the bf16 inputs, and its float outputs are rounded to the
 * dtype the op's M2_OP_CAST_* flags give (an op with M2_OP_CAST_F32_KERNELS converts its bf16 inputs on every
 * device):
 *   default          bf16 when every float input is bf16, else f32 (torch's type promotion: a residual add of a bf16
 *                    branch to the f32 stream stays f32);
 *   M2_OP_CAST_IN0   in[0]'s dtype (rmsnorm of a bf16 activation with its f32 weight gives bf16);
 *   M2_OP_CAST_STATE1  out[1] f32 (the final state of a recurrence);
 *   M2_OP_CAST_F32   f32 (losses, router probabilities, masks).
 * The conversions are to_dtype ops, recorded on the tape like the op itself: the backward runs the op's f32 kernel
 * on the f32 gradient, and each input's gradient comes back in its own dtype. Above the to_dtype op (core/ops_view.c),
 * which the dispatcher (core/op.c) reaches only through these two functions, as it reaches the registry.
 * m2_cast_keep_bf16 (op.h; off by default): a call that records a node records ONE, "cast_call", which keeps the
 * original bf16 inputs instead of the f32 copies; its backward makes the copies again and runs the op's backward,
 * giving the same gradients bit for bit (below). */
#include "op.h"
#include "autograd.h"
#include "ops.h"
#include "ops_view.h"
#include "profile.h"
#include <stdlib.h>
#include <string.h>

/* The float dtypes among c's inputs. */
typedef struct cast_mix {
  bool bf16, f32, f64;
  int i_bf16, i_f64; /* the first input of each, for messages */
} cast_mix;

static cast_mix mix_of(const m2_opcall *c) {
  cast_mix m = {false, false, false, -1, -1};
  for (int i = 0; i < c->n_in; i++) {
    const m2_tensor *t = c->in[i];
    if (!t) continue;
    if (t->dtype == M2_BF16 && !m.bf16) m.bf16 = true, m.i_bf16 = i;
    if (t->dtype == M2_F32) m.f32 = true;
    if (t->dtype == M2_F64 && !m.f64) m.f64 = true, m.i_f64 = i;
  }
  return m;
}

/* ---- backends' kernels that take an M2_OP_CAST_F32_KERNELS op's all-bf16 call as it is (m2_cast_register_native) */
#define CAST_MAX_NATIVE 8
static struct {
  const m2_op *op;
  m2_devtype t;
  bool (*takes)(const m2_opcall *c);
} g_native[CAST_MAX_NATIVE];
static int g_n_native;

m2_status m2_cast_register_native(m2_devtype t, const m2_op *op, bool (*takes)(const m2_opcall *c)) {
  for (int i = 0; i < g_n_native; i++)
    if (g_native[i].op == op && g_native[i].t == t) {
      g_native[i].takes = takes;
      return M2_OK;
    }
  if (!op || !takes || t == M2_CPU || g_n_native >= CAST_MAX_NATIVE)
    return m2_fail(M2_ERR_VALUE, "m2_cast_register_native: a non-CPU device, an op and a function (at most %d)",
                   CAST_MAX_NATIVE);
  g_native[g_n_native].op = op, g_native[g_n_native].t = t, g_native[g_n_native].takes = takes;
  g_n_native++;
  return M2_OK;
}

static bool native_takes(const m2_opcall *c, m2_devtype t) {
  for (int i = 0; i < g_n_native; i++)
    if (g_native[i].op == c->op && g_native[i].t == t) return g_native[i].takes(c);
  return false;
}

/* the profiler's count of one conversion made for a call of op (profile.h's table by cause) */
static void count_cast(const m2_op *op, bool bwd, const m2_tensor *t) {
  if (t && m2_profile_on()) m2_profile_cast(op->name, bwd, (double)m2_numel(t) * (double)m2_elsize(t));
}

bool m2_cast_needed(const m2_opcall *c, m2_device dev) {
  cast_mix m = mix_of(c);
  if (!m.bf16) return false;
  if (dev.type != M2_CPU && !m.f64 && !m.f32 && (c->op->flags & M2_OP_CAST_F32_KERNELS) && native_takes(c, dev.type))
    return false; /* the backend's kernels take these bf16 inputs as they are */
  if (dev.type == M2_CPU || m.f64 || (c->op->flags & M2_OP_CAST_F32_KERNELS))
    return true; /* f64 with bf16: m2_call_cast refuses it */
  if (!m.f32 || (c->op->flags & M2_OP_MIXED_KERNELS)) return false;
  return !((c->op->flags & M2_OP_MIXED_KERNELS_OPT) && m2_mixed_kernels_on());
}

/* The dtype of float output j (computed in f32) of a call whose inputs mixed as m, in[0] of dtype in0. */
static m2_dtype out_dtype(const m2_op *op, int j, cast_mix m, m2_dtype in0) {
  if (op->flags & M2_OP_CAST_F32) return M2_F32;
  if ((op->flags & M2_OP_CAST_STATE1) && j == 1) return M2_F32;
  if (op->flags & M2_OP_CAST_IN0) return in0 == M2_BF16 ? M2_BF16 : M2_F32;
  return m.f32 ? M2_F32 : M2_BF16;
}

/* ---- the switch (op.h) ---- */
static int g_keep = -1; /* -1: not read from the environment yet */

bool m2_cast_keep_bf16_on(void) {
  if (g_keep < 0) {
    const char *e = getenv("M2_CAST_KEEP_BF16");
    g_keep = e && e[0] && strcmp(e, "0") != 0;
  }
  return g_keep != 0;
}

bool m2_cast_keep_bf16(bool on) {
  bool old = m2_cast_keep_bf16_on();
  g_keep = on;
  return old;
}

/* ---- the mixed-kernel switch (op.h) ---- */
static int g_mixed = -1; /* -1: not read from the environment yet */

bool m2_mixed_kernels_on(void) {
  if (g_mixed < 0) {
    const char *e = getenv("M2_MIXED_KERNELS"); /* on unless 0 (parity on an H100, 2026-12-07: cuda_mixed_kernels) */
    g_mixed = !(e && strcmp(e, "0") == 0);
  }
  return g_mixed != 0;
}

bool m2_mixed_kernels(bool on) {
  bool old = m2_mixed_kernels_on();
  g_mixed = on;
  return old;
}

/* ---- the cast_call node: one tape node for a whole cast call, holding its original inputs ----
 * Its forward is never dispatched (m2_call_cast records it). Node input k is the op's input slot[k]: the node lists
 * them in the order in which the other way routes their gradients (the op's node routes those of its contiguous
 * non-bf16 inputs in order, then the contiguous nodes of its strided f32 inputs run, last made first, then the
 * to_dtype nodes of its bf16 inputs, last made first), so that gradients reaching one tensor through several inputs
 * add in the same order, bit for bit. saved[0..n_saved) are the op's saved tensors; an op with M2_OP_KEEP_OUTPUTS
 * gets its f32 outputs (before any rounding, as its own node keeps them) at saved[n_saved + j]. */
typedef struct cast_inner {
  M2_ALIGNED16 unsigned char attr[M2_MAX_ATTR]; /* the op call's attributes */
} cast_inner;

typedef struct m2_cast_call_attr {
  const m2_op *op;
  cast_inner *inner;
  signed char slot[M2_MAX_IN];
  signed char n_saved;           /* the op's saved tensors */
  bool keep;                     /* f32 outputs kept at saved[n_saved + j] */
  bool rounded[M2_MAX_OUT];      /* output j was rounded from f32 to bf16 */
} m2_cast_call_attr;

static m2_status cast_call_fwd(m2_opcall *c) {
  (void)c;
  return m2_fail(M2_ERR_UNSUPPORTED, "cast_call: this node is recorded by the dispatcher (core/op_cast.c), never "
                                     "called");
}

/* a stand-in for a data-less input (m2_op.bwd_unread): its metadata as the f32 copy's (contiguous) */
static m2_tensor *meta_as(const m2_tensor *x, m2_dtype dt) {
  m2_tensor *t = m2_meta_raw(x);
  if (!t) return NULL;
  t->dtype = dt;
  m2_contiguous_strides(t->ndim, t->shape, t->stride);
  t->offset = 0;
  return t;
}

static m2_status cast_call_bwd(m2_opcall *c) {
  const m2_cast_call_attr *a = M2_ATTR(c, m2_cast_call_attr);
  const m2_op *op = a->op;
  if (!op || !a->inner) return m2_fail(M2_ERR_AUTOGRAD, "cast_call: the node was already released");
  m2_device dev = c->dout[0]->device;
  m2_op_fn bwd = m2_op_kernel(op, dev, true);
  if (!bwd) return m2_fail(M2_ERR_AUTOGRAD, "%s: no backward for this device", op->name);
  m2_opcall ic;
  memset(&ic, 0, sizeof ic);
  ic.op = op;
  ic.n_in = c->n_in;
  memcpy(ic.attr, a->inner->attr, M2_MAX_ATTR);
  m2_tensor *tmp[M2_MAX_IN + M2_MAX_OUT] = {0};
  m2_status s = M2_OK;
  /* the profiler times the conversions as to_dtype's backward, as it times the to_dtype nodes of the other way */
  const bool prof = m2_profile_on();
  double t0 = prof ? m2_profile_begin(dev) : 0;
  for (int k = 0; k < c->n_in && s == M2_OK; k++) {
    const int i = a->slot[k];
    m2_tensor *x = c->in[k];
    ic.needs_din[i] = c->needs_din[k];
    ic.in[i] = x;
    if (!x || (x->dtype != M2_BF16 && m2_is_contiguous(x))) continue;
    /* the f32 copy again (exact), or the contiguous copy of a strided input, as the op's own node held them */
    const m2_dtype dt = x->dtype == M2_BF16 ? M2_F32 : x->dtype;
    tmp[i] = x->storage ? m2_clone_raw(x, dt, x->device) : meta_as(x, dt);
    if (x->dtype == M2_BF16 && x->storage) count_cast(op, true, tmp[i]);
    if (!tmp[i]) s = m2_errcode();
    else tmp[i]->requires_grad = x->requires_grad;
    ic.in[i] = tmp[i];
  }
  /* the op's saved tensors are handed to its call and back after its backward (one may take one over: the fused
     loss hands its kept gradient out as din) */
  ic.n_saved = a->n_saved;
  for (int j = 0; j < a->n_saved; j++) { ic.saved[j] = c->saved[j]; c->saved[j] = NULL; }
  ic.n_out = c->n_out;
  for (int j = 0; j < c->n_out && s == M2_OK; j++) {
    if (a->keep) ic.out[j] = c->saved[a->n_saved + j];
    ic.dout[j] = c->dout[j];
    if (!a->rounded[j]) continue;
    /* the rounding's to_dtype backward: the bf16 gradient in f32 (exact) */
    tmp[M2_MAX_IN + j] = m2_clone_raw(c->dout[j], M2_F32, c->dout[j]->device);
    count_cast(op, true, tmp[M2_MAX_IN + j]);
    if (!tmp[M2_MAX_IN + j]) s = m2_errcode();
    ic.dout[j] = tmp[M2_MAX_IN + j];
  }
  if (prof) m2_profile_end("to_dtype", true, dev, t0);
  if (s == M2_OK) {
    t0 = prof ? m2_profile_begin(dev) : 0;
    s = bwd(&ic);
    if (prof) m2_profile_end(op->name, true, dev, t0);
    if (s != M2_OK) s = m2_fail_context(s, "backward of %s", op->name);
  }
  t0 = prof ? m2_profile_begin(dev) : 0;
  for (int k = 0; k < c->n_in && s == M2_OK; k++) {
    if (!c->needs_din[k]) continue;
    const int i = a->slot[k];
    m2_tensor *g = ic.din[i];
    if (!g) {
      s = m2_fail(M2_ERR_AUTOGRAD, "backward of %s did not produce the gradient of input %d", op->name, i + 1);
      break;
    }
    if (c->in[k]->dtype == M2_BF16 && g->dtype != M2_BF16) {
      /* the input's to_dtype backward: the f32 gradient rounded to bf16 */
      c->din[k] = m2_clone_raw(g, M2_BF16, c->in[k]->device);
      count_cast(op, true, c->din[k]);
      if (!c->din[k]) s = m2_errcode();
    } else {
      m2_retain(g);
      c->din[k] = g;
    }
  }
  if (prof) m2_profile_end("to_dtype", true, dev, t0);
  for (int j = 0; j < a->n_saved; j++) c->saved[j] = ic.saved[j];
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(ic.din[i]);
  for (int i = 0; i < M2_MAX_IN + M2_MAX_OUT; i++) m2_release(tmp[i]);
  if (s != M2_OK)
    for (int k = 0; k < M2_MAX_IN; k++) { m2_release(c->din[k]); c->din[k] = NULL; }
  return s;
}

static void cast_call_drop(m2_opcall *c) {
  m2_cast_call_attr *a = (m2_cast_call_attr *)(void *)c->attr;
  free(a->inner);
  a->inner = NULL;
  a->op = NULL;
}

/* the op's bwd_unread, on the node's order of inputs */
static unsigned cast_call_unread(const m2_opcall *c) {
  const m2_cast_call_attr *a = M2_ATTR(c, m2_cast_call_attr);
  unsigned m = 0;
  for (int k = 0; k < c->n_in; k++)
    if (a->op && (a->op->bwd_unread & M2_IN(a->slot[k]))) m |= M2_IN(k);
  return m;
}

/* the tape's memory rows name the node by the op it wraps */
static const char *cast_call_name(const m2_opcall *c) {
  const m2_cast_call_attr *a = M2_ATTR(c, m2_cast_call_attr);
  return a->op ? a->op->name : NULL;
}

/* Not a registry row (the dispatcher's own, never called by name); its backward runs the wrapped op's kernel for
 * the device, timed by the profiler under that op's name. */
const m2_op m2_op_cast_call = {"cast_call", cast_call_fwd, cast_call_bwd,
                               M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD | M2_OP_PROFILE_INNER, 0,
                               cast_call_drop, cast_call_unread, cast_call_name};

/* the op's forward kernel on c's inputs as they are (strided ones made contiguous), under no_grad, no node */
static m2_status run_inner(m2_opcall *c, m2_device dev) {
  const m2_op *op = c->op;
  m2_op_fn fwd = m2_op_kernel(op, dev, false);
  if (!fwd) {
    char d[32];
    m2_device_name(dev, d, sizeof d);
    return m2_fail(M2_ERR_DEVICE, "%s: no %s kernel for this op yet", op->name, d);
  }
  m2_tensor *held[M2_MAX_IN] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < c->n_in && s == M2_OK; i++) {
    if (!c->in[i] || m2_is_contiguous(c->in[i])) continue;
    held[i] = m2_contiguous(c->in[i]);
    if (!held[i]) s = m2_errcode();
    else held[i]->requires_grad = c->in[i]->requires_grad; /* as the recorded copy's */
    c->in[i] = held[i];
  }
  if (s == M2_OK) {
    const bool prof = m2_profile_on();
    const double t0 = prof ? m2_profile_begin(dev) : 0;
    s = fwd(c);
    if (prof) m2_profile_end(op->name, false, dev, t0);
  }
  for (int i = 0; s == M2_OK && i < c->n_out; i++)
    if (!c->out[i]) s = m2_fail(M2_ERR_UNSUPPORTED, "%s: forward left output %d unset", op->name, i);
  if (s != M2_OK) {
    if (m2_errmsg()[0] == 0) m2_fail(s, "%s failed", op->name);
    m2_call_clear(c);
  }
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(held[i]);
  return s;
}

/* The cast call as one node (m2_cast_keep_bf16): c needs a node (grad on, an input requiring grad). */
static m2_status call_cast_keep(m2_opcall *c, m2_tensor **outs, cast_mix m, m2_dtype in0, bool *fallback) {
  const m2_op *op = c->op;
  m2_device dev = M2_DEV_CPU;
  for (int i = 0; i < c->n_in; i++)
    if (c->in[i]) { dev = c->in[i]->device; break; }
  m2_opcall c2 = *c;
  m2_tensor *conv[M2_MAX_IN] = {0};
  m2_status s = M2_OK;
  m2_no_grad_push();
  for (int i = 0; i < c->n_in && s == M2_OK; i++) {
    if (!c->in[i] || c->in[i]->dtype != M2_BF16) continue;
    conv[i] = m2_to_dtype_for(c->in[i], M2_F32, op->name);
    count_cast(op, false, conv[i]);
    if (!conv[i]) s = m2_errcode();
    else conv[i]->requires_grad = c->in[i]->requires_grad; /* as the recorded copy's: kernels read it (mixers save
                                                              their states only for a call that needs gradients) */
    c2.in[i] = conv[i];
  }
  if (s == M2_OK) s = run_inner(&c2, dev);
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(conv[i]); /* gone unless the op saved them */
  const bool keep = (op->flags & M2_OP_KEEP_OUTPUTS) != 0;
  if (s == M2_OK && c2.n_saved + (keep ? c2.n_out : 0) > M2_MAX_SAVED) {
    m2_call_clear(&c2); /* no room on one node: the other way */
    *fallback = true;
  }
  m2_opcall n;
  m2_call_init(&n, &m2_op_cast_call, 0, NULL);
  m2_cast_call_attr a;
  memset(&a, 0, sizeof a);
  a.op = op;
  a.n_saved = (signed char)c2.n_saved;
  a.keep = keep;
  if (s == M2_OK && !*fallback) {
    a.inner = malloc(sizeof *a.inner);
    if (!a.inner) s = m2_fail(M2_ERR_OOM, "out of host memory for a tape node");
    else memcpy(a.inner->attr, c->attr, M2_MAX_ATTR);
  }
  if (s == M2_OK && !*fallback) {
    /* the node's order of inputs: contiguous non-bf16 ascending, strided non-bf16 descending, bf16 descending */
    int k = 0;
    for (int i = 0; i < c->n_in; i++)
      if (!c->in[i] || (c->in[i]->dtype != M2_BF16 && m2_is_contiguous(c->in[i]))) a.slot[k++] = (signed char)i;
    for (int i = c->n_in - 1; i >= 0; i--)
      if (c->in[i] && c->in[i]->dtype != M2_BF16 && !m2_is_contiguous(c->in[i])) a.slot[k++] = (signed char)i;
    for (int i = c->n_in - 1; i >= 0; i--)
      if (c->in[i] && c->in[i]->dtype == M2_BF16) a.slot[k++] = (signed char)i;
    n.n_in = c->n_in;
    for (k = 0; k < c->n_in; k++) n.in[k] = c->in[(int)a.slot[k]];
    n.n_saved = c2.n_saved;
    for (int j = 0; j < c2.n_saved; j++) { n.saved[j] = c2.saved[j]; c2.saved[j] = NULL; }
    n.n_out = c2.n_out;
    for (int j = 0; j < c2.n_out && s == M2_OK; j++) {
      m2_tensor *o = c2.out[j];
      if (keep) {
        n.saved[n.n_saved] = m2_alias(o);
        if (!n.saved[n.n_saved++]) s = m2_errcode();
      }
      if (s == M2_OK && o->dtype == M2_F32 && out_dtype(op, j, m, in0) == M2_BF16) {
        n.out[j] = m2_to_dtype_for(o, M2_BF16, op->name); /* o has no history: no node */
        count_cast(op, false, n.out[j]);
        if (!n.out[j]) s = m2_errcode();
        a.rounded[j] = true;
      } else {
        m2_retain(o);
        n.out[j] = o;
      }
    }
    M2_SET_ATTR(&n, a);
    const int n_out = n.n_out;
    if (s == M2_OK) s = m2_record(&n, outs); /* on success the node owns a.inner (cast_call_drop) */
    if (s == M2_OK) c->n_out = n_out;
    else {
      m2_call_clear(&n);
      free(a.inner);
    }
  }
  m2_no_grad_pop();
  m2_call_clear(&c2);
  return s;
}
m2_status m2_call_cast(m2_opcall *c, m2_tensor **outs) {
  const m2_op *op = c->op;
  cast_mix m = mix_of(c);
  if (m.f64)
    return m2_fail(M2_ERR_DTYPE, "%s: input %d is bf16 but input %d is f64; convert one with :to()", op->name,
                   m.i_bf16 + 1, m.i_f64 + 1);
  const m2_dtype in0 = c->in[0] ? c->in[0]->dtype : M2_F32;
  if (m2_cast_keep_bf16_on() && m2_grad_enabled() && !(op->flags & M2_OP_NONDIFF)) {
    bool grad = false, fallback = false;
    for (int i = 0; i < c->n_in; i++) grad |= c->in[i] && c->in[i]->requires_grad;
    if (grad) {
      m2_status s = call_cast_keep(c, outs, m, in0, &fallback);
      if (s != M2_OK || !fallback) return s;
    }
  }
  m2_opcall c2 = *c; /* the same op and attributes, on f32 copies of the bf16 inputs */
  m2_tensor *conv[M2_MAX_IN] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < c->n_in && s == M2_OK; i++) {
    if (!c->in[i] || c->in[i]->dtype != M2_BF16) continue;
    conv[i] = m2_to_dtype_for(c->in[i], M2_F32, op->name);
    count_cast(op, false, conv[i]);
    if (!conv[i]) s = m2_errcode();
    c2.in[i] = conv[i];
  }
  m2_tensor *o2[M2_MAX_OUT] = {0};
  if (s == M2_OK) s = m2_call_run(&c2, o2); /* no bf16 input left: the op's own path */
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(conv[i]);
  if (s != M2_OK) return s;
  c->n_out = c2.n_out;
  for (int j = 0; j < c2.n_out; j++) {
    outs[j] = o2[j];
    if (!o2[j] || o2[j]->dtype != M2_F32 || out_dtype(op, j, m, in0) != M2_BF16) continue;
    outs[j] = m2_to_dtype_for(o2[j], M2_BF16, op->name);
    count_cast(op, false, outs[j]);
    m2_release(o2[j]);
    o2[j] = NULL;
    if (!outs[j]) s = m2_errcode();
  }
  if (s != M2_OK)
    for (int j = 0; j < c2.n_out; j++) m2_release(outs[j]), outs[j] = NULL;
  return s;
}
