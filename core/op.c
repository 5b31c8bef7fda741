/* op.c — op dispatch (device choice, contiguity, recording on the tape), the contiguous op that the dispatcher
 * runs on strided inputs, and helpers for ops. Below every op: it calls none of them (the registry that lists them
 * all is op_table.c). */
#include "op.h"
#include "autograd.h"
#include "profile.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void m2_call_init(m2_opcall *c, const m2_op *op, int n_in, m2_tensor *const *in) {
  memset(c, 0, sizeof *c);
  c->op = op;
  c->n_in = n_in;
  for (int i = 0; i < n_in; i++) c->in[i] = in[i];
}

void m2_save(m2_opcall *c, m2_tensor *t) {
  if (c->n_saved >= M2_MAX_SAVED) return; /* programming error: caught by the op's tests */
  c->saved[c->n_saved++] = t ? m2_alias(t) : NULL;
}

void m2_call_clear(m2_opcall *c) {
  for (int i = 0; i < M2_MAX_OUT; i++) { m2_release(c->out[i]); c->out[i] = NULL; }
  for (int i = 0; i < M2_MAX_SAVED; i++) { m2_release(c->saved[i]); c->saved[i] = NULL; }
  for (int i = 0; i < M2_MAX_IN; i++) { m2_release(c->din[i]); c->din[i] = NULL; }
  c->n_saved = 0;
}

/* ---- kernels registered by backends: g_kern[device type][row index] ---- */
#define M2_MAX_OPS 128
static struct { m2_op_fn fwd, bwd; } g_kern[M2_NUM_DEVTYPES][M2_MAX_OPS];

static int op_index(const m2_op *op) {
  const m2_op *const *list = m2_op_list();
  for (int i = 0; list[i] && i < M2_MAX_OPS; i++)
    if (list[i] == op) return i;
  return -1;
}

m2_status m2_op_register_kernels(m2_devtype t, const m2_kernel_reg *regs, int n) {
  if ((int)t <= (int)M2_CPU || (int)t >= M2_NUM_DEVTYPES)
    return m2_fail(M2_ERR_VALUE, "op registry: kernels can be registered for a non-CPU device type only (got %d)", t);
  for (int i = 0; i < n; i++) {
    if (!regs[i].op || op_index(regs[i].op) < 0)
      return m2_fail(M2_ERR_VALUE, "op registry: kernel entry %d names %s", i,
                     regs[i].op ? "an op that is not in the registry (M2_OPS, core/ops.h)" : "no op");
  }
  for (int i = 0; i < n; i++) {
    int k = op_index(regs[i].op);
    g_kern[t][k].fwd = regs[i].fwd;
    g_kern[t][k].bwd = regs[i].bwd;
  }
  return M2_OK;
}

m2_op_fn m2_op_kernel(const m2_op *op, m2_device dev, bool bwd) {
  if (dev.type == M2_CPU) return bwd ? op->bwd : op->fwd;
  if ((int)dev.type < 0 || (int)dev.type >= M2_NUM_DEVTYPES) return NULL;
  int i = op_index(op);
  m2_op_fn k = i < 0 ? NULL : bwd ? g_kern[dev.type][i].bwd : g_kern[dev.type][i].fwd;
  if (!k && (op->flags & (bwd ? M2_OP_ANYDEV_BWD : M2_OP_ANYDEV_FWD))) k = bwd ? op->bwd : op->fwd;
  return k;
}

/* ---- contiguous: in (any) -> out (contiguous copy); the gradient passes through ----
 * The dispatcher's own op (it copies strided inputs with it, recorded so that gradients flow through the copy), so
 * it lives here rather than with the views. Both kernels are device-independent (m2_clone_raw copies on the
 * tensor's device). */
static m2_status contiguous_fwd(m2_opcall *c) {
  c->n_out = 1;
  c->out[0] = m2_clone_raw(c->in[0], c->in[0]->dtype, c->in[0]->device);
  return c->out[0] ? M2_OK : m2_errcode();
}
static m2_status pass_bwd(m2_opcall *c) {
  m2_retain(c->dout[0]);
  c->din[0] = c->dout[0];
  return M2_OK;
}
const m2_op m2_op_contiguous = {"contiguous", contiguous_fwd, pass_bwd,
                                M2_OP_VIEW | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD, M2_IN(0)};

m2_tensor *m2_contiguous(m2_tensor *x) {
  if (m2_is_contiguous(x)) { m2_retain(x); return x; }
  m2_opcall c;
  m2_call_init(&c, &m2_op_contiguous, 1, &x);
  return m2_call1(&c);
}

m2_status m2_call_run(m2_opcall *c, m2_tensor **outs) {
  const m2_op *op = c->op;
  /* one device for all inputs */
  m2_device dev = M2_DEV_CPU;
  int first = -1;
  for (int i = 0; i < c->n_in; i++) {
    if (!c->in[i]) continue;
    if (first < 0) { first = i; dev = c->in[i]->device; continue; }
    if (!m2_device_eq(dev, c->in[i]->device)) {
      char a[32], b[32];
      m2_device_name(dev, a, sizeof a);
      m2_device_name(c->in[i]->device, b, sizeof b);
      return m2_fail(M2_ERR_DEVICE, "%s: input %d is on %s but input %d is on %s", op->name, first + 1, a, i + 1, b);
    }
  }
  if (!(op->flags & M2_OP_VIEW) && m2_cast_needed(c, dev)) return m2_call_cast(c, outs);
  m2_op_fn fwd = m2_op_kernel(op, dev, false);
  if (!fwd) {
    char a[32];
    m2_device_name(dev, a, sizeof a);
    return m2_fail(M2_ERR_DEVICE, "%s: no %s kernel for this op yet", op->name, a);
  }
  /* make inputs contiguous (recorded, so gradients flow through the copy) */
  m2_tensor *held[M2_MAX_IN] = {0};
  if (!(op->flags & M2_OP_VIEW)) {
    for (int i = 0; i < c->n_in; i++) {
      if (!c->in[i] || m2_is_contiguous(c->in[i])) continue;
      held[i] = m2_contiguous(c->in[i]);
      if (!held[i]) {
        for (int j = 0; j < i; j++) m2_release(held[j]);
        return m2_errcode();
      }
      c->in[i] = held[i];
    }
  }
  bool want_grad = false;
  if (m2_grad_enabled() && !(op->flags & M2_OP_NONDIFF))
    for (int i = 0; i < c->n_in; i++)
      if (c->in[i] && c->in[i]->requires_grad) want_grad = true;

  m2_no_grad_push();
  const bool prof = m2_profile_on();
  const double t0 = prof ? m2_profile_begin(dev) : 0;
  m2_status s = fwd(c);
  if (prof) m2_profile_end(op->name, false, dev, t0);
  m2_no_grad_pop();
  if (s == M2_OK) {
    for (int i = 0; i < c->n_out; i++)
      if (!c->out[i]) { s = m2_fail(M2_ERR_UNSUPPORTED, "%s: forward left output %d unset", op->name, i); break; }
  }
  if (s != M2_OK) {
    if (m2_errmsg()[0] == 0) m2_fail(s, "%s failed", op->name);
    m2_call_clear(c);
  } else {
    if (want_grad) s = m2_record(c, outs);
    if (s == M2_OK && !want_grad) {
      for (int i = 0; i < c->n_out; i++) { outs[i] = c->out[i]; c->out[i] = NULL; }
      for (int i = 0; i < c->n_saved; i++) { m2_release(c->saved[i]); c->saved[i] = NULL; }
    }
  }
  for (int i = 0; i < c->n_in; i++) m2_release(held[i]);
  return s;
}

m2_tensor *m2_call1(m2_opcall *c) {
  m2_tensor *outs[M2_MAX_OUT] = {0};
  if (m2_call_run(c, outs) != M2_OK) return NULL;
  for (int i = 1; i < M2_MAX_OUT; i++) m2_release(outs[i]);
  return outs[0];
}

/* ---------------- helpers for implementations ---------------- */

m2_status m2_check_float(const m2_tensor *t, const char *op, const char *arg) {
  if (t->dtype == M2_F32 || t->dtype == M2_F64 || t->dtype == M2_BF16) return M2_OK;
  return m2_fail(M2_ERR_DTYPE, "%s: %s must be a float tensor (f32, f64 or bf16), got %s", op, arg,
                 m2_dtype_name(t->dtype));
}

m2_status m2_check_same_dtype(const m2_tensor *a, const m2_tensor *b, const char *op) {
  if (m2_dtypes_mix(a->dtype, b->dtype)) return M2_OK;
  return m2_fail(M2_ERR_DTYPE, "%s: dtypes differ (%s and %s); convert one with :to()", op, m2_dtype_name(a->dtype),
                 m2_dtype_name(b->dtype));
}

m2_status m2_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout, int64_t *sout,
                              const char *op) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t a = ia >= 0 ? sa[ia] : 1, b = ib >= 0 ? sb[ib] : 1;
    if (a != b && a != 1 && b != 1) {
      char x[96], y[96];
      return m2_fail(M2_ERR_SHAPE, "%s: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)", op,
                     m2_shape_str_raw(na, sa, x, sizeof x), m2_shape_str_raw(nb, sb, y, sizeof y), i, (long long)a,
                     (long long)b);
    }
    sout[i] = a == 1 ? b : a;
  }
  *nout = n;
  return M2_OK;
}

void m2_broadcast_strides(int n, const int64_t *s, int nout, const int64_t *sout, int64_t *stride) {
  int64_t st[M2_MAX_DIMS];
  m2_contiguous_strides(n, s, st);
  for (int i = 0; i < nout; i++) {
    int j = n - nout + i;
    stride[i] = (j >= 0 && s[j] == sout[i]) ? st[j] : 0;
  }
}
