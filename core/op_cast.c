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
 * which the dispatcher (core/op.c) reaches only through these two functions, as it reaches the registry. */
#include "op.h"
#include "ops.h"

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

bool m2_cast_needed(const m2_opcall *c, m2_device dev) {
  cast_mix m = mix_of(c);
  if (!m.bf16) return false;
  if (dev.type == M2_CPU || m.f64 || (c->op->flags & M2_OP_CAST_F32_KERNELS))
    return true; /* f64 with bf16: m2_call_cast refuses it */
  return m.f32 && !(c->op->flags & M2_OP_MIXED_KERNELS);
}

/* The dtype of float output j (computed in f32) of a call whose inputs mixed as m, in[0] of dtype in0. */
static m2_dtype out_dtype(const m2_op *op, int j, cast_mix m, m2_dtype in0) {
  if (op->flags & M2_OP_CAST_F32) return M2_F32;
  if ((op->flags & M2_OP_CAST_STATE1) && j == 1) return M2_F32;
  if (op->flags & M2_OP_CAST_IN0) return in0 == M2_BF16 ? M2_BF16 : M2_F32;
  return m.f32 ? M2_F32 : M2_BF16;
}

m2_status m2_call_cast(m2_opcall *c, m2_tensor **outs) {
  const m2_op *op = c->op;
  cast_mix m = mix_of(c);
  if (m.f64)
    return m2_fail(M2_ERR_DTYPE, "%s: input %d is bf16 but input %d is f64; convert one with :to()", op->name,
                   m.i_bf16 + 1, m.i_f64 + 1);
  const m2_dtype in0 = c->in[0] ? c->in[0]->dtype : M2_F32;
  m2_opcall c2 = *c; /* the same op and attributes, on f32 copies of the bf16 inputs */
  m2_tensor *conv[M2_MAX_IN] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < c->n_in && s == M2_OK; i++) {
    if (!c->in[i] || c->in[i]->dtype != M2_BF16) continue;
    conv[i] = m2_to_dtype(c->in[i], M2_F32);
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
    outs[j] = m2_to_dtype(o2[j], M2_BF16);
    m2_release(o2[j]);
    o2[j] = NULL;
    if (!outs[j]) s = m2_errcode();
  }
  if (s != M2_OK)
    for (int j = 0; j < c2.n_out; j++) m2_release(outs[j]), outs[j] = NULL;
  return s;
}
