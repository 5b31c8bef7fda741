/* m2rnn_bwd_pipe.cu — the fast M2RNN backward when the forward saved a checkpoint at every sub-chunk start
 * (ckpt_every == M2R_BWD_SC): each warp runs the backward steps of one sub-chunk interleaved with the replay of
 * the sub-chunk before it, two independent instruction streams that hide each other's latencies (the sequential
 * kernel in m2rnn_bwd.cu spends most of its time stalled on dependencies, RESULTS.md).
 *
 * Iteration u = 0 .. U-1 handles sub-chunk c(u) = U-1-u (from the last). The bf16 states of one sub-chunk live
 * in SC + 1 slots per lane; the backward reading sub-chunk c(u) and the replay writing c(u+1) share them by
 * alternating the slot order: orientation o(u) = u & 1 keeps time m in slot m (o = 0) or SC - m (o = 1). At
 * double-step j the backward reads slot x and the replay writes slot x in that order (worked out in
 * RESULTS.md), so one set of slots suffices. Staging and partial sums are triple-buffered by u % 3: iteration u
 * reads inputs u and u + 1, stages u + 2, writes dk, dv, df of c(u) and dq of c(u+1), and flushes c(u-1). */
#include <cuda_runtime.h>
#include "cuda_check.h"
#include "m2rnn.h"
#include "m2rnn_dev.cuh"
#include "m2rnn_bwd.cuh"

/* This lane's views of one staging buffer. */
struct PipeIn {
  const uint16_t *kl, *ql, *vl, *dyl;
  const uint32_t *k32, *v32, *dy32;
  const float *fb;
};

template <int NT, int NPE, int KC>
__global__ void __launch_bounds__(M2R_MAX_WARPS * 32, 1) m2r_bwd_pipe(const FastBwdP p) {
  extern __shared__ __align__(16) char sm[];
  constexpr int SC = M2R_BWD_SC, NQ = NT / 2;
  const M2Geom &g = p.g;
  const M2Stage &st = p.st;
  const int K = KC ? KC : g.K;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gl = lane >> 2, tq = lane & 3;
  const int hpb = p.hpb, wph = p.wph, nw = hpb * wph;
  const int hb = warp / wph, rg = warp - hb * wph;
  const int bpb = g.N / hpb;
  const int b = blockIdx.x / bpb, n0 = (blockIdx.x - b * bpb) * hpb, n = n0 + hb;
  const int r0 = rg * 8 * NT;
  const int sq = st.nsq == 1 ? 0 : hb, sk = st.nsk == 1 ? 0 : hb;
  const uint32_t vmask = tq == 0 ? 0xffffu : 0u;
  const size_t KS = (size_t)K * 16;
  const int U = g.nck;

  const int hstep = nw * NQ * 32;
  uint4 *hw = (uint4 *)(sm + 3 * (size_t)st.bytes) + warp * NQ * 32 + lane; /* this lane's slot 0 */
  float *part0 = (float *)((uint4 *)(sm + 3 * (size_t)st.bytes) + (SC + 1) * hstep);

  const float *Wn = p.W + (size_t)(n / g.gw) * 256;
  uint32_t wa[4], wb[4];
  m2r_load_wt(Wn, gl, tq, wa);
  m2r_load_w(Wn, gl, tq, wb);
  float G[NT][4], dWa[2][4], h[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int kr = r0 + 8 * j + 2 * tq + (e & 1), vc = gl + 8 * (e >> 1);
      G[j][e] = p.dhT ? p.dhT[(((size_t)b * g.N + n) * K + kr) * 16 + vc] : 0.f;
    }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dWa[i][e] = 0.f;
  const float *ckpt_n = p.ckpt + ((size_t)b * g.N + n) * g.nck * KS;

  auto s0_of = [&](int u) { return (U - 1 - u) * SC; };
  auto len_of = [&](int u) { return min(SC, g.T - (U - 1 - u) * SC); };
  auto stage = [&](int u) {
    if (u >= U) return;
    const M2StageSrc src = {p.q, p.k, p.v, p.dy, p.f};
    m2r_stage(g, st, src, sm + (size_t)(u % 3) * st.bytes, b, n0, s0_of(u), len_of(u));
  };
  auto view = [&](int u) {
    const char *buf = sm + (size_t)(u % 3) * st.bytes;
    PipeIn in;
    in.kl = (const uint16_t *)(buf + st.off_k) + sk * SC * K + r0 + gl;
    in.k32 = (const uint32_t *)(buf + st.off_k) + (sk * SC * K + r0) / 2 + tq;
    in.ql = (const uint16_t *)(buf + st.off_q) + sq * SC * K + r0 + gl;
    in.vl = (const uint16_t *)(buf + st.off_v) + hb * SC * 16 + gl;
    in.v32 = (const uint32_t *)(buf + st.off_v) + hb * SC * 8 + tq;
    in.dyl = (const uint16_t *)(buf + st.off_dy) + hb * SC * 16 + gl;
    in.dy32 = (const uint32_t *)(buf + st.off_dy) + hb * SC * 8 + tq;
    in.fb = (const float *)(buf + st.off_f) + hb * SC;
    return in;
  };
  auto part_of = [&](int u) { return part0 + (u % 3) * p.pfl; };

  uint32_t P[NT][2]; /* the replay's state in bf16 */
  auto pack_state = [&]() {
#pragma unroll
    for (int j = 0; j < NT; j++) {
      P[j][0] = m2r_pack_bf16(h[j][0], h[j][1]);
      P[j][1] = m2r_pack_bf16(h[j][2], h[j][3]);
    }
  };
  auto put_slot = [&](uint4 *slot) {
#pragma unroll
    for (int q2 = 0; q2 < NQ; q2++) slot[q2 * 32] = make_uint4(P[2 * q2][0], P[2 * q2][1], P[2 * q2 + 1][0], P[2 * q2 + 1][1]);
  };
  /* dq of step i = H dy_i with H = the state in P (after step i): A = dy (every row), B = H^T */
  auto dq_step = [&](const PipeIn &in, int i, float *dqw, const uint32_t bt[NT][2]) {
    const uint32_t ad[4] = {in.dy32[i * 8], in.dy32[i * 8], in.dy32[i * 8 + 4], in.dy32[i * 8 + 4]};
#pragma unroll
    for (int j = 0; j < NT; j++) {
      float c4[4] = {0.f, 0.f, 0.f, 0.f};
      m2r_mma16816(c4, ad, bt[j][0], bt[j][1]);
      /* every row of the product is dq: all lanes store the same pair (no branch in the step) */
      *(float2 *)(dqw + i * hpb * K + 8 * j) = make_float2(c4[0], c4[1]);
    }
  };
  /* replay step i (state after i steps in h, P) -> state after i + 1 steps, stored to `slot`; dq of step i - 1 */
  auto rep_step = [&](const PipeIn &in, int i, float *dqw, uint4 *slot) {
    const uint32_t va0 = (uint32_t)in.vl[i * 16] & vmask, va1 = (uint32_t)in.vl[i * 16 + 8] & vmask;
    const float f = in.fb[i];
    uint32_t bt[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      bt[j][0] = m2r_movt(P[j][0]);
      bt[j][1] = m2r_movt(P[j][1]);
    }
    if (i > 0) dq_step(in, i - 1, dqw, bt);
#pragma unroll
    for (int j = 0; j < NT; j++) {
      float z[4] = {0.f, 0.f, 0.f, 0.f};
      m2r_mma1688(z, va0, va1, (uint32_t)in.kl[i * K + 8 * j]);
      m2r_mma16816(z, wa, bt[j][0], bt[j][1]);
      m2r_tanh_tile<NT, NPE>(j, z);
#pragma unroll
      for (int e = 0; e < 4; e++) h[j][e] = fmaf(f, h[j][e] - z[e], z[e]);
    }
    pack_state();
    put_slot(slot);
  };
  auto rep_last_dq = [&](const PipeIn &in, int len, float *dqw) {
    uint32_t bt[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      bt[j][0] = m2r_movt(P[j][0]);
      bt[j][1] = m2r_movt(P[j][1]);
    }
    dq_step(in, len - 1, dqw, bt);
  };
  const float clip = p.clip;
  /* backward step i of a sub-chunk, H_{t-1} from `slot`; dk, dv to the partial sums, df partial returned */
  auto bwd_step = [&](const PipeIn &in, int i, const uint4 *slot, float *dkw, float *dvp) -> float {
    const uint32_t da0 = (uint32_t)in.dyl[i * 16] & vmask, da1 = (uint32_t)in.dyl[i * 16 + 8] & vmask;
    const uint32_t va0 = (uint32_t)in.vl[i * 16] & vmask, va1 = (uint32_t)in.vl[i * 16 + 8] & vmask;
    const uint32_t av[4] = {in.v32[i * 8], in.v32[i * 8], in.v32[i * 8 + 4], in.v32[i * 8 + 4]};
    const float f = in.fb[i], a = 1.f - f;
    uint32_t Pp[NT][2];
#pragma unroll
    for (int q2 = 0; q2 < NQ; q2++) {
      const uint4 x = slot[q2 * 32];
      Pp[2 * q2][0] = x.x, Pp[2 * q2][1] = x.y, Pp[2 * q2 + 1][0] = x.z, Pp[2 * q2 + 1][1] = x.w;
    }
    uint32_t Q[NT][2];
    float dfs = 0.f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
      float z[4] = {0.f, 0.f, 0.f, 0.f};
      m2r_mma1688(z, va0, va1, (uint32_t)in.kl[i * K + 8 * j]);
      m2r_mma16816(z, wa, m2r_movt(Pp[j][0]), m2r_movt(Pp[j][1]));
      m2r_tanh_tile<NT, NPE>(j, z);
      float d[4];
#pragma unroll
      for (int e = 0; e < 4; e++) d[e] = fminf(fmaxf(G[j][e], -clip), clip);
      m2r_mma1688(d, da0, da1, (uint32_t)in.ql[i * K + 8 * j]);
      const float hp[4] = {m2r_bf16_lo(Pp[j][0]), m2r_bf16_hi(Pp[j][0]), m2r_bf16_lo(Pp[j][1]), m2r_bf16_hi(Pp[j][1])};
      float dx[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        dfs = fmaf(d[e], hp[e] - z[e], dfs);
        const float ad = a * d[e];
        dx[e] = fmaf(-ad * z[e], z[e], ad);
        G[j][e] = f * d[e];
      }
      Q[j][0] = m2r_pack_bf16(dx[0], dx[1]);
      Q[j][1] = m2r_pack_bf16(dx[2], dx[3]);
      const uint32_t qt0 = m2r_movt(Q[j][0]), qt1 = m2r_movt(Q[j][1]);
      m2r_mma16816(G[j], wb, qt0, qt1);
      float c4[4] = {0.f, 0.f, 0.f, 0.f};
      m2r_mma16816(c4, av, qt0, qt1);
      *(float2 *)(dkw + i * hpb * K + 8 * j) = make_float2(c4[0], c4[1]); /* every row is dk */
    }
    float cv[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int ib = 0; ib < NQ; ib++) {
      const uint32_t ah[4] = {Pp[2 * ib][0], Pp[2 * ib][1], Pp[2 * ib + 1][0], Pp[2 * ib + 1][1]};
      m2r_mma16816(dWa[0], ah, Q[2 * ib][0], Q[2 * ib + 1][0]);
      m2r_mma16816(dWa[1], ah, Q[2 * ib][1], Q[2 * ib + 1][1]);
      const uint32_t ax[4] = {Q[2 * ib][0], Q[2 * ib][1], Q[2 * ib + 1][0], Q[2 * ib + 1][1]};
      m2r_mma16816(cv, ax, in.k32[i * K / 2 + 8 * ib], in.k32[i * K / 2 + 8 * ib + 4]);
    }
    *(float2 *)(dvp + (i * nw + warp) * 16 + 2 * gl) = make_float2(cv[0], cv[2]); /* (dv[gl], dv[gl + 8]) */
    return dfs;
  };

  /* ---- prologue: stage sub-chunks 0 and 1, replay sub-chunk 0 (orientation 0) ---- */
  stage(0);
  m2r_cp_commit();
  stage(1);
  m2r_cp_commit();
  state_load<NT>(ckpt_n + (size_t)(U - 1) * KS, r0, lane, h);
  m2r_cp_wait<1>();
  __syncthreads();
  {
    const PipeIn in = view(0);
    const int len = len_of(0);
    float *part = part_of(0), *dqw = part + SC * nw * 16 + SC * hpb * K + hb * K + r0 + 2 * tq;
    pack_state();
    put_slot(hw);
#pragma unroll
    for (int i = 0; i < SC; i++)
      if (i < len) rep_step(in, i, dqw, hw + (i + 1) * hstep);
    rep_last_dq(in, len, dqw);
  }
  if (U > 1) state_load<NT>(ckpt_n + (size_t)(U - 2) * KS, r0, lane, h);

  for (int u = 0; u < U; u++) {
    m2r_cp_wait<0>();
    __syncthreads();
    stage(u + 2);
    m2r_cp_commit();
    if (u > 0) bwd_flush<KC>(p, part_of(u - 1), b, n0, s0_of(u - 1), len_of(u - 1));

    const bool rep = u + 1 < U;
    const int o = u & 1, lenb = len_of(u);
    const PipeIn inb = view(u), inr = view(u + 1);
    float *pb = part_of(u), *pr = part_of(u + 1);
    float *dkw = pb + SC * nw * 16 + hb * K + r0 + 2 * tq, *dvp = pb;
    float *dqw = pr + SC * nw * 16 + SC * hpb * K + hb * K + r0 + 2 * tq;
    /* backward of c(u) reads time i at slot (o ? SC - i : i); the replay of c(u+1) writes time m at (o ? m : SC - m) */
    const uint4 *rb = hw + (o ? SC * hstep : 0);
    const int rbs = o ? -hstep : hstep;
    uint4 *wr = hw + (o ? 0 : SC * hstep);
    const int wrs = o ? hstep : -hstep;
    if (rep) {
      pack_state();
      put_slot(wr);
    }
    float dfv[SC];
    if (lenb == SC && rep) { /* the common case: straight-line double steps the compiler can interleave */
#pragma unroll
      for (int jj = 0; jj < SC; jj++) {
        const int i = SC - 1 - jj;
        dfv[i] = bwd_step(inb, i, rb + i * rbs, dkw, dvp);
        rep_step(inr, jj, dqw, wr + (jj + 1) * wrs);
      }
    } else { /* the first (possibly short) and the last sub-chunk */
#pragma unroll
      for (int jj = 0; jj < SC; jj++) {
        const int i = SC - 1 - jj;
        dfv[i] = 0.f;
        if (i < lenb) dfv[i] = bwd_step(inb, i, rb + i * rbs, dkw, dvp);
        if (rep) rep_step(inr, jj, dqw, wr + (jj + 1) * wrs);
      }
    }
    if (rep) rep_last_dq(inr, SC, dqw);
#pragma unroll
    for (int s = 16; s > 0; s >>= 1)
#pragma unroll
      for (int i = 0; i < SC; i++) dfv[i] += __shfl_xor_sync(0xffffffffu, dfv[i], s);
    if (lane < lenb) {
      float v = dfv[0];
#pragma unroll
      for (int i = 1; i < SC; i++) v = lane == i ? dfv[i] : v;
      pb[SC * nw * 16 + 2 * SC * hpb * K + lane * nw + warp] = v;
    }
    if (u + 2 < U) state_load<NT>(ckpt_n + (size_t)(U - 3 - u) * KS, r0, lane, h);
  }
  __syncthreads();
  bwd_flush<KC>(p, part_of(U - 1), b, n0, s0_of(U - 1), len_of(U - 1));
  if (p.dh0) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int kr = r0 + 8 * j + 2 * tq + (e & 1), vc = gl + 8 * (e >> 1);
        p.dh0[(((size_t)b * g.N + n) * K + kr) * 16 + vc] = G[j][e];
      }
  }
  float *dWn = p.dW + (size_t)(n / g.gw) * 256;
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) atomicAdd(dWn + (gl + 8 * (e >> 1)) * 16 + 8 * i + 2 * tq + (e & 1), dWa[i][e]);
}

m2_status m2r_bwd_pipe_launch(const M2Plan &pl, const FastBwdP &p, int npe, cudaStream_t stream) {
  typedef void (*Kern)(const FastBwdP);
  static const Kern k4[4] = {m2r_bwd_pipe<4, 0, 0>, m2r_bwd_pipe<4, 4, 0>, m2r_bwd_pipe<4, 6, 0>, m2r_bwd_pipe<4, 8, 0>};
  static const Kern k2[4] = {m2r_bwd_pipe<2, 0, 0>, m2r_bwd_pipe<2, 4, 0>, m2r_bwd_pipe<2, 6, 0>, m2r_bwd_pipe<2, 8, 0>};
  const int ti = npe == 0 ? 0 : npe == 4 ? 1 : npe == 6 ? 2 : 3;
  Kern kern = pl.nt == 4 ? k4[ti] : k2[ti];
  if (p.g.K == 64 && npe == 0 && pl.nt == 4) kern = m2r_bwd_pipe<4, 0, 64>; /* the paper's K */
  if (pl.smem > 48 * 1024)
    M2_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem));
  kern<<<pl.nblocks, pl.threads, pl.smem, stream>>>(p);
  M2_CUDA_LAUNCH_CHECK("m2r_bwd_pipe");
  return M2_OK;
}
