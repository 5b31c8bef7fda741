/* m2rnn.h — fused CUDA kernels for the M2RNN recurrence (DESIGN 3.1): launchers on raw device pointers.
 *
 * Per chain (b, n), state H (K, V) in fp32, W_n (V, V), gate f_t in (0, 1):
 *   Z_t = tanh(H_{t-1} W_n + k_t v_t^T),  H_t = f_t H_{t-1} + (1 - f_t) Z_t,  y_t = q_t^T H_t.
 * Layouts are contiguous, batch-major, no strides:
 *   q (B,T,Nq,K) bf16   k (B,T,Nk,K) bf16   v (B,T,Nv,V) bf16   W (Nw,V,V) fp32   f (B,T,Nf) fp32
 *   h0, hT, dh0, dhT (B,N,K,V) fp32         y, dy (B,T,N,V) bf16
 * Head sharing: N = max(Nq, Nk, Nv, Nf, Nw), every count divides N, head n reads index n / (N / Nx).
 * bf16 is passed as raw uint16_t bits. Compute: bf16 tensor-core products with fp32 accumulation,
 * fp32 state, fp32 gate and gradients of the state.
 *
 * Sizes and options come as the op's checked attributes, m2_m2rnn_attr (core/ops_m2rnn.h): the CUDA op passes the
 * struct that m2_m2rnn checked and stored on its call; other callers (tests, benchmarks) fill one and check it once
 * with m2_m2rnn_attr_resolve. The launchers trust it: they check only what their kernels take (below).
 *
 * Two paths, chosen by m2_m2rnn_cuda_path():
 *   fast    V == 16, K % 16 == 0, K <= 384 (<= 192 if K % 32 != 0; paper: K = 64): a warp advances 16 or 32 rows
 *           of one head with mma.sync m16n8k16, state and W in registers, inputs staged by cp.async;
 *   general any K, V (K * V <= 8192): one block per chain, state in shared memory, plain fp32 loops; with
 *           tuning.io_f32 its inputs and outputs are fp32 too (the CUDA op uses that, so that the general path,
 *           which small-K models take, computes like the CPU reference instead of rounding q, k, v, y and the
 *           gradients to bf16).
 * Both need B >= 1. The choice depends only on the attributes and the tuning; pass the same ones to the forward and
 * the backward.
 *
 * Training: the forward saves the state every attr.ckpt_every steps into `ckpt`, (B, N, S, K * V) fp32 with
 * S = ceil(T / ckpt_every) (m2_m2rnn_ckpt_floats() floats; each state in (K, V) order on the general path,
 * in the fast kernels' fragment order on the fast one: opaque, for the backward only); the backward recomputes the states
 * in between from those checkpoints. Backward gradients are WRITTEN (=), never accumulated: dq, dk,
 * dv, df and dW are summed over the heads (and for dW the batch rows) that share them.
 * Every launcher is asynchronous on `stream` and returns M2_OK or an m2_status with a message. */
#ifndef M2_CUDA_M2RNN_H
#define M2_CUDA_M2RNN_H
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include "ops_m2rnn.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { M2_M2RNN_AUTO = 0, M2_M2RNN_GENERAL = 1, M2_M2RNN_FAST = 2 };
/* tanh: MUFU.TANH for every element, or 4 / 6 / 8 of every 16 through an FMA-pipe polynomial (abs error 8e-4) */
enum { M2_M2RNN_TANH_DEFAULT = 0, M2_M2RNN_TANH_MUFU = 1, M2_M2RNN_TANH_MIX4 = 2, M2_M2RNN_TANH_MIX6 = 3,
       M2_M2RNN_TANH_MIX8 = 4 };

/* How to run the kernels (not what they compute: that is the attributes). Zero-initialised (or NULL) = the
 * defaults. */
typedef struct m2_m2rnn_cuda_tuning {
  int path;              /* M2_M2RNN_AUTO (fast when it applies), _GENERAL, or _FAST (fails when it does not) */
  int tanh_mode;         /* fast path: M2_M2RNN_TANH_* (default: the fastest measured split) */
  int heads_per_block;   /* fast path: 0 -> chosen from the SM count; else must divide N */
  int fwd_rows_per_warp; /* fast forward: state rows per warp, 8, 16 or 32; 0 -> the measured best */
  int bwd_rows_per_warp; /* fast backward: 16 or 32 (needs K % 32 == 0); 0 -> the measured best */
  int io_f32;            /* q, k, v, y, dy, dq, dk, dv are fp32 arrays instead of bf16: general path only (the fast
                            path's products take bf16), so the whole computation is fp32 */
} m2_m2rnn_cuda_tuning;

/* q, k, v, y, dy, dq, dk, dv: bf16 (uint16_t bits), or float when tuning.io_f32. */
typedef struct m2_m2rnn_fwd_args {
  void *y;                        /* (B,T,N,V) bf16, out */
  float *hT;                      /* (B,N,K,V) out, or NULL */
  float *ckpt;                    /* m2_m2rnn_ckpt_floats() floats, out; NULL = inference (nothing saved) */
  const void *q, *k, *v;          /* (B,T,Nq,K), (B,T,Nk,K), (B,T,Nv,V) bf16 */
  const float *W;                 /* (Nw,V,V) */
  const float *f;                 /* (B,T,Nf) */
  const float *h0;                /* (B,N,K,V) or NULL (zeros) */
} m2_m2rnn_fwd_args;

typedef struct m2_m2rnn_bwd_args {
  void *dq, *dk, *dv;             /* like q, k, v; out */
  float *dW;                      /* (Nw,V,V) out */
  float *df;                      /* (B,T,Nf) out */
  float *dh0;                     /* (B,N,K,V) out = dL/dH_0 (not clipped), or NULL */
  const void *dy;                 /* (B,T,N,V) bf16 */
  const float *dhT;               /* (B,N,K,V) or NULL (zeros) */
  const float *ckpt;              /* what the training forward saved */
  const void *q, *k, *v;
  const float *W, *f;
  void *work;                     /* m2_m2rnn_bwd_work_bytes() bytes of device scratch, 256-byte aligned */
} m2_m2rnn_bwd_args;

/* The path a call with these attributes and tuning takes (M2_M2RNN_GENERAL or M2_M2RNN_FAST), or -1 when no kernel
 * takes it (the launchers then say why). */
int m2_m2rnn_cuda_path(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t);
/* Floats of the checkpoint buffer the training forward fills. */
size_t m2_m2rnn_ckpt_floats(const m2_m2rnn_attr *a);
/* Bytes of scratch the backward needs (0 when no kernel takes the call). */
size_t m2_m2rnn_bwd_work_bytes(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t);

m2_status m2_m2rnn_fwd_cuda(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t, const m2_m2rnn_fwd_args *args,
                            cudaStream_t stream);
m2_status m2_m2rnn_bwd_cuda(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t, const m2_m2rnn_bwd_args *args,
                            cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
