/* ops_mixers.h — sequence-mixer ops: CPU reference kernels here in core, CUDA kernels in the CUDA library. Layouts are
 * batch-major: (B, T, heads, dim). See ../shared/DESIGN.md section 3 for the maths.
 * All return new references, or NULL with m2_errmsg() set. Optional tensors may be NULL.
 * Each public function checks its inputs and options once, before the call, and stores the sizes and options,
 * checked and with the defaults below filled in, as the op's attribute struct on the call (core/ops_<op>.h; conv1d
 * has no options and no struct); the kernels trust what was checked. */
#ifndef M2_OPS_MIXERS_H
#define M2_OPS_MIXERS_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Depthwise causal conv1d: x (B, T, C), w (C, W), bias (C) or NULL -> y (B, T, C);
 * y[b,t,c] = bias[c] + sum_j w[c,j] * x[b, t - (W-1) + j, c] (zero before t = 0). */
m2_tensor *m2_conv1d_causal(m2_tensor *x, m2_tensor *w, m2_tensor *bias);

/* M2RNN recurrence (DESIGN 3.1). q (B,T,Nq,K), k (B,T,Nk,K), v (B,T,Nv,V), W (Nw,V,V),
 * f (B,T,Nf) in (0,1), h0 (B,N,K,V) or NULL; N = max head count, each count divides N.
 * Outputs y (B,T,N,V) and the final state hT (B,N,K,V). grad_clip > 0 clamps the carried
 * state gradient to [-grad_clip, grad_clip] at every step (<= 0: no clipping).
 * ckpt_every (CUDA): steps between the states the forward keeps for the backward, B N ceil(T / ckpt_every) K V
 * fp32 (0: M2_M2RNN_CKPT_EVERY = 8, the fastest; 64 keeps 1/8 of that memory for a ~25% slower backward,
 * the CUDA benchmarks' results (bench/results/RESULTS.md); a multiple of 8 keeps the fused kernels, others run the general one). The CPU keeps its
 * own spacing, one state every 64 steps in f64 (core/ops_m2rnn.c says why); its results do not depend on this. */
typedef struct m2_m2rnn_opts { double grad_clip; int ckpt_every; } m2_m2rnn_opts;
/* The one default of m2_m2rnn_opts.ckpt_every (Lua passes 0 unless a user sets it). 8: the CUDA backward then
 * replays each 8-step sub-chunk once instead of a whole 64-step segment first (400M layer fwd+bwd 7.8 vs 9.1 ms on
 * H200, the CUDA benchmarks' results (bench/results/RESULTS.md)), for 8 x the checkpoint memory of 64: B N ceil(T / 8) K V fp32, 1.4 GB for the 400M
 * layer at B = 8, T = 4096. */
#define M2_M2RNN_CKPT_EVERY 8
m2_status m2_m2rnn(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *W, m2_tensor *f, m2_tensor *h0,
                   const m2_m2rnn_opts *o, m2_tensor **y, m2_tensor **hT);

/* Gated DeltaNet (DESIGN 3.2), q and k already L2-normalised by the caller.
 * q, k (B,T,H,K), v (B,T,H,V), g (B,T,H) log-decay (<= 0), beta (B,T,H), h0 (B,H,K,V) or NULL
 * -> o (B,T,H,V), hT (B,H,K,V). m2_gdn is the recurrent reference, m2_gdn_chunked the chunked
 * UT/WY form (same results). */
typedef struct m2_gdn_opts { double scale; int chunk; } m2_gdn_opts; /* scale 0 -> 1/sqrt(K); chunk 0 -> 64 */
#define M2_GDN_CHUNK 64 /* the default chunk of both rows (for m2_gdn: the steps between the backward's checkpoints) */
m2_status m2_gdn(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *g, m2_tensor *beta, m2_tensor *h0,
                 const m2_gdn_opts *o, m2_tensor **out, m2_tensor **hT);
m2_status m2_gdn_chunked(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *g, m2_tensor *beta, m2_tensor *h0,
                         const m2_gdn_opts *o, m2_tensor **out, m2_tensor **hT);

/* Mamba-2 SSD (DESIGN 3.3): x (B,T,H,P), dt (B,T,H) (> 0, after softplus), A (H) (< 0),
 * Bm, Cm (B,T,G,N) with G dividing H, h0 (B,H,P,N) or NULL -> y (B,T,H,P) (no D skip), hT.
 * h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ; y_t = h_t C_t. */
typedef struct m2_ssd_opts { int chunk; } m2_ssd_opts; /* chunk 0 -> 256 (m2_ssd_chunked), 64 (m2_ssd) */
#define M2_SSD_CHUNK 256 /* the default chunk of m2_ssd_chunked */
#define M2_SSD_CKPT 64   /* the default of m2_ssd, whose chunk is only the steps between the backward's checkpoints */
m2_status m2_ssd(m2_tensor *x, m2_tensor *dt, m2_tensor *A, m2_tensor *Bm, m2_tensor *Cm, m2_tensor *h0,
                 const m2_ssd_opts *o, m2_tensor **y, m2_tensor **hT);
m2_status m2_ssd_chunked(m2_tensor *x, m2_tensor *dt, m2_tensor *A, m2_tensor *Bm, m2_tensor *Cm, m2_tensor *h0,
                         const m2_ssd_opts *o, m2_tensor **y, m2_tensor **hT);

/* Causal softmax attention: q (B,T,H,D), k, v (B,S,Hkv,D) with Hkv dividing H -> o (B,T,H,D).
 * scale 0 -> 1/sqrt(D). Query t attends to keys s <= t + (S - T). */
typedef struct m2_attention_opts { double scale; bool causal; } m2_attention_opts;
m2_tensor *m2_attention(m2_tensor *q, m2_tensor *k, m2_tensor *v, const m2_attention_opts *o);

/* Rotary embedding on the last dim (pairs (i, i + D/2)), x (B,T,H,D), positions start at `offset`. */
m2_tensor *m2_rope(m2_tensor *x, double theta, int64_t offset);

#ifdef __cplusplus
}
#endif
#endif
