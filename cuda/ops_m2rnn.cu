/* ops_m2rnn.cu — the M2RNN op on CUDA: adapts an m2_opcall (tensors of any float dtype) to the fused
 * kernels of cuda/m2rnn_fwd.cu / m2rnn_bwd.cu (bf16 q, k, v, y; fp32 W, f, state, checkpoints), or to the
 * general kernel (fp32 throughout) for shapes the fused ones do not take.
 * The call's attributes (m2_m2rnn_attr, checked once by m2_m2rnn) go to the kernels as they are: geometry, grad_clip
 * and ckpt_every (M2_M2RNN_CKPT_EVERY = 8 unless set). The forward keeps the fp32 state checkpoints as a saved
 * tensor; the backward recomputes the states in between. Outputs and gradients come back in the inputs' dtype. */
#include <cuda_runtime.h>
#include "cuda_backend.h"
#include "m2rnn.h"
#include "ops_m2rnn_entry.h"
extern "C" {
#include "../core/ops.h"
#include "../core/ops_m2rnn.h"
}

/* How to run: the path the attributes' shapes take, and there fp32 I/O on the general kernel (e.g. K % 16 != 0, small
   models), so that it computes like the CPU reference; the fused kernels take bf16. The choice depends only on the
   attributes, so the forward and the backward agree. */
static m2_m2rnn_cuda_tuning tuning_of(const m2_m2rnn_attr *a) {
  m2_m2rnn_cuda_tuning t = {};
  t.io_f32 = m2_m2rnn_cuda_path(a, &t) == M2_M2RNN_GENERAL;
  return t;
}

/* t converted to dtype dt (a new reference; t itself when it already is). */
static m2_tensor *as(m2_tensor *t, m2_dtype dt) { return t ? m2_to_dtype(t, dt) : NULL; }

#define F32(t) ((float *)m2_data(t))

extern "C" m2_status m2_cuda_m2rnn_fwd(m2_opcall *c) {
  const m2_m2rnn_attr *g = M2_ATTR(c, m2_m2rnn_attr);
  const m2_m2rnn_cuda_tuning o = tuning_of(g);
  const m2_dtype io = o.io_f32 ? M2_F32 : M2_BF16;
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  m2_tensor *q = as(c->in[0], io), *k = as(c->in[1], io), *v = as(c->in[2], io);
  m2_tensor *W = as(c->in[3], M2_F32), *f = as(c->in[4], M2_F32), *h0 = as(c->in[5], M2_F32);
  int64_t yshape[4] = {g->B, g->T, g->N, g->V}, hshape[4] = {g->B, g->N, g->K, g->V};
  int64_t nck = (int64_t)m2_m2rnn_ckpt_floats(g);
  m2_tensor *y = m2_empty(io, dev, 4, yshape), *hT = m2_empty(M2_F32, dev, 4, hshape);
  m2_tensor *ck = m2_empty(M2_F32, dev, 1, &nck);
  m2_status s = (q && k && v && W && f && (h0 || !c->in[5]) && y && hT && ck) ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    m2_m2rnn_fwd_args a = {};
    a.y = m2_data(y); a.hT = F32(hT); a.ckpt = F32(ck);
    a.q = m2_data(q); a.k = m2_data(k); a.v = m2_data(v); a.W = F32(W); a.f = F32(f); a.h0 = h0 ? F32(h0) : NULL;
    s = m2_m2rnn_fwd_cuda(g, &o, &a, m2_cuda_stream(dev.index));
  }
  if (s == M2_OK) {
    c->n_out = 2;
    c->out[0] = as(y, dt);
    c->out[1] = as(hT, M2_F32); /* the state stays fp32 (M2_OP_CAST_STATE1, as the CPU) */
    if (!c->out[0] || !c->out[1]) s = m2_errcode();
    else m2_save(c, ck);
  }
  m2_tensor *tmp[] = {q, k, v, W, f, h0, y, hT, ck};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) m2_release(tmp[i]);
  return s;
}

extern "C" m2_status m2_cuda_m2rnn_bwd(m2_opcall *c) {
  const m2_m2rnn_attr *g = M2_ATTR(c, m2_m2rnn_attr);
  const m2_m2rnn_cuda_tuning o = tuning_of(g);
  const m2_dtype io = o.io_f32 ? M2_F32 : M2_BF16;
  m2_device dev = c->in[0]->device;
  m2_tensor *q = as(c->in[0], io), *k = as(c->in[1], io), *v = as(c->in[2], io);
  m2_tensor *W = as(c->in[3], M2_F32), *f = as(c->in[4], M2_F32);
  m2_tensor *dy = as(c->dout[0], io), *dhT = as(c->dout[1], M2_F32);
  m2_tensor *g_out[6] = {0};
  const m2_dtype gdt[6] = {io, io, io, M2_F32, M2_F32, M2_F32};
  for (int i = 0; i < 6; i++)
    if (c->in[i]) g_out[i] = m2_empty(gdt[i], dev, c->in[i]->ndim, c->in[i]->shape);
  int64_t nwork = (int64_t)m2_m2rnn_bwd_work_bytes(g, &o);
  m2_tensor *work = m2_empty(M2_F32, dev, 1, &nwork); /* bytes, over-allocated 4x; 256-byte aligned by the pool */
  m2_status s = (q && k && v && W && f && dy && dhT && work) ? M2_OK : m2_errcode();
  for (int i = 0; i < 6 && s == M2_OK; i++)
    if (c->in[i] && !g_out[i]) s = m2_errcode();
  if (s == M2_OK) {
    m2_m2rnn_bwd_args a = {};
    a.dq = m2_data(g_out[0]); a.dk = m2_data(g_out[1]); a.dv = m2_data(g_out[2]);
    a.dW = F32(g_out[3]); a.df = F32(g_out[4]); a.dh0 = g_out[5] ? F32(g_out[5]) : NULL;
    a.dy = m2_data(dy); a.dhT = F32(dhT); a.ckpt = F32(c->saved[0]);
    a.q = m2_data(q); a.k = m2_data(k); a.v = m2_data(v); a.W = F32(W); a.f = F32(f);
    a.work = m2_data(work);
    s = m2_m2rnn_bwd_cuda(g, &o, &a, m2_cuda_stream(dev.index));
  }
  for (int i = 0; i < 6 && s == M2_OK; i++) {
    if (!c->in[i] || !c->needs_din[i]) continue;
    c->din[i] = as(g_out[i], c->in[i]->dtype);
    if (!c->din[i]) s = m2_errcode();
  }
  m2_tensor *tmp[] = {q, k, v, W, f, dy, dhT, work};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) m2_release(tmp[i]);
  for (int i = 0; i < 6; i++) m2_release(g_out[i]);
  return s;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_m2rnn(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_m2rnn, m2_cuda_m2rnn_fwd, m2_cuda_m2rnn_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
