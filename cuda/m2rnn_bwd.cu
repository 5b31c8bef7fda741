/* m2rnn_bwd.cu — M2RNN backward on the GPU (DESIGN 3.1): the fast tensor-core kernel (V = 16), the
 * general fallback kernel, and m2_m2rnn_bwd_cuda. Going backwards, with G = dL/dH_t carried:
 *   G <- clamp(G, -c, c);  D = q_t dy_t^T + G;  df_t = sum D (H_{t-1} - Z_t);  dX = (1 - f_t) D (1 - Z_t^2)
 *   G <- f_t D + dX W^T;  dW += H_{t-1}^T dX;  dv_t = dX^T k_t;  dk_t = dX v_t;  dq_t = H_t dy_t
 * The states come back from the forward's checkpoints (one every ck steps). Fast path, per checkpoint
 * segment of ck steps, in sub-chunks of SC = 8 steps: one pass forward over the segment saves the fp32
 * state at each sub-chunk start (scratch in global memory, L2-resident); then for each sub-chunk from
 * the last: recompute its SC states into shared memory as bf16 (the very values the forward's products
 * used, so Z_t is replayed exactly), computing dq on the way, and run the SC backward steps, which
 * recompute Z_t from those states with one more product and tanh. With checkpoints every SC steps (the CUDA
 * op's default) a segment is one sub-chunk: no forward pass, and the kernel is the ONE variant with 16-row
 * warps (cuda/bench/results/RESULTS.md, v11). */
#include <cuda_runtime.h>
#include <math.h>
#include <string.h>
#include "cuda_check.h"
#include "m2rnn.h"
#include "m2rnn_dev.cuh"
#include "m2rnn_bwd.cuh"

static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Scratch regions of the backward, byte offsets into args->work. */
typedef struct BwdWork {
  size_t sub, dq32, dk32, dv32, hist, zs, total;
  int use_dq32, use_dk32, use_dv32;
} BwdWork;

static BwdWork bwd_work(const M2Geom *g, int path) {
  BwdWork w;
  memset(&w, 0, sizeof w);
  const size_t KV = (size_t)g->K * g->V, BT = (size_t)g->B * g->T;
  const int fast = path == M2_M2RNN_FAST;
  w.use_dq32 = !fast || g->Nq < g->N; /* fast path: bf16 written directly when a tensor is not shared */
  w.use_dk32 = !fast || g->Nk < g->N;
  w.use_dv32 = !fast || g->Nv < g->N;
  size_t o = 0;
  if (fast) {
    w.sub = o;
    o += al256((size_t)g->B * g->N * (g->ck / M2R_BWD_SC) * KV * 4);
  } else {
    w.hist = o;
    o += al256((size_t)g->B * g->N * (g->ck + 1) * KV * 4);
    w.zs = o;
    o += al256((size_t)g->B * g->N * g->ck * KV * 4);
  }
  w.dq32 = o;
  if (w.use_dq32) o += al256(BT * g->Nq * g->K * 4);
  w.dk32 = o;
  if (w.use_dk32) o += al256(BT * g->Nk * g->K * 4);
  w.dv32 = o;
  if (w.use_dv32) o += al256(BT * g->Nv * g->V * 4);
  w.total = o;
  return w;
}

extern "C" size_t m2_m2rnn_bwd_work_bytes(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t) {
  if (m2r_attr_ok(a) != M2_OK) return 0;
  const int path = m2_m2rnn_cuda_path(a, t);
  if (path < 0) return 0;
  M2Geom g = m2r_geom(a);
  return bwd_work(&g, path).total;
}

/* ======================= fast kernel ======================= */

/* Block = hpb heads of one batch row, warp = 8 NT rows of one head (orientation T, m2rnn_dev.cuh). One
 * __syncthreads per work item: inputs are staged two items ahead into three buffers, so the buffer refilled
 * after an item's barrier is the one the previous item read; the cross-warp partial sums are double-buffered
 * and the previous back item's are flushed by the whole block right after the barrier.
 * KC: K as a compile-time constant (0: runtime), so every shared-memory offset of a step is an immediate.
 * ONE: checkpoints every SC steps (the CUDA op's default), so every item is a back item starting at its segment's
 * checkpoint: the item schedule folds to a countdown over the segments (fewer live registers). */
template <int NT, int NPE, int KC, bool ONE>
__global__ void __launch_bounds__(NT == 2 ? M2R_MAX_WARPS16 * 32 : M2R_MAX_WARPS * 32, 1) m2r_bwd_fast(const FastBwdP p) {
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
  const uint32_t vmask = tq == 0 ? 0xffffu : 0u; /* rank-1 products use column 0 of their A tile only */
  const size_t KS = (size_t)K * 16;

  /* shared memory: 3 staging buffers | bf16 states [nw][SC][NQ][32] uint4 | 2 partial-sum buffers. Every per-step
     region is indexed [warp or head][step]..., so a step's offsets are immediates (the step loops are unrolled).
     SC slots: slot i holds H_{t-1} of step i; the state after the last step is never read back. */
  constexpr int hstep = NQ * 32;
  uint4 *hw = (uint4 *)(sm + 3 * (size_t)st.bytes) + warp * SC * hstep + lane; /* this lane's slot, step 0 */
  float *part0 = (float *)((uint4 *)(sm + 3 * (size_t)st.bytes) + nw * SC * hstep);

  const float *Wn = p.W + (size_t)(n / g.gw) * 256;
  uint32_t wa[4], wb[4];
  m2r_load_wt(Wn, gl, tq, wa); /* W^T: forward product */
  m2r_load_w(Wn, gl, tq, wb);  /* W: G <- ... + dX W^T, computed as W dX^T */

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
  float *sub_n = p.sub + ((size_t)b * g.N + n) * p.msub * KS;

  auto decode = [&](Item it, bool &back, int &sb, int &s0, int &len) {
    const int ns = ONE ? 1 : seg_nsub(g, it.c);
    back = ONE || it.p >= ns - 1;
    sb = ONE ? 0 : back ? 2 * ns - 2 - it.p : it.p;
    s0 = it.c * (ONE ? SC : g.ck) + sb * SC;
    len = min(SC, g.T - s0);
  };
  auto stage = [&](Item it, int bi) { /* advance items need k, v, f only */
    if (it.c < 0) return;
    bool back;
    int sb, s0, len;
    decode(it, back, sb, s0, len);
    const M2StageSrc src = {back ? p.q : nullptr, p.k, p.v, back ? p.dy : nullptr, p.f};
    m2r_stage<SC>(g, st, src, sm + (size_t)bi * st.bytes, b, n0, s0, len);
  };

  Item it = {g.nck - 1, 0};
  auto next = [&](Item x) { return ONE ? Item{x.c - 1, 0} : item_next(g, x); };
  Item it1 = next(it);
  stage(it, 0);
  m2r_cp_commit();
  stage(it1, 1);
  m2r_cp_commit();
  state_load<NT>(ckpt_n + (size_t)it.c * KS, r0, lane, h); /* the first item starts at its segment's checkpoint */
  int s = 0, pb_back = 0, pb_s0 = 0, pb_len = 0;
  while (it.c >= 0) {
    m2r_cp_wait<1>();
    __syncthreads();
    if (ONE) { /* everything follows from it.c: nothing else is carried from item to item */
      it1 = Item{it.c - 1, 0};
      pb_back = s > 0;
      pb_s0 = (it.c + 1) * SC;
      pb_len = min(SC, g.T - pb_s0);
    }
    const Item it2 = next(it1);
    stage(it2, (s + 2) % 3);
    m2r_cp_commit();
    if (pb_back) bwd_flush<KC>(p, part0 + ((s + 1) & 1) * p.pfl, b, n0, pb_s0, pb_len);

    bool back;
    int sb, s0, len;
    decode(it, back, sb, s0, len);
    const int ns = ONE ? 1 : seg_nsub(g, it.c);
    const char *buf = sm + (size_t)(s % 3) * st.bytes;
    float *part = part0 + (s & 1) * p.pfl;
    /* partial sums: dv [nw][SC][16], dk and dq [hpb][SC][K], df [nw][SC] */
    float *dvp = part + warp * SC * 16 + 2 * gl, *dkp = part + SC * nw * 16, *dqp = dkp + SC * hpb * K,
          *dfp = dqp + SC * hpb * K;
    /* this lane's views of the staged inputs (step i at + i * K, + i * 16, ...) */
    const uint16_t *kl = (const uint16_t *)(buf + st.off_k) + sk * SC * K + r0 + gl;
    const uint32_t *k32 = (const uint32_t *)(buf + st.off_k) + (sk * SC * K + r0) / 2 + tq;
    const uint16_t *ql = (const uint16_t *)(buf + st.off_q) + sq * SC * K + r0 + gl;
    const uint16_t *vl = (const uint16_t *)(buf + st.off_v) + hb * SC * 16 + gl;
    const uint32_t *v32 = (const uint32_t *)(buf + st.off_v) + hb * SC * 8 + tq;
    const uint16_t *dyl = (const uint16_t *)(buf + st.off_dy) + hb * SC * 16 + gl;
    const uint32_t *dy32 = (const uint32_t *)(buf + st.off_dy) + hb * SC * 8 + tq;
    const float *fb = (const float *)(buf + st.off_f) + hb * SC;
    float *dkw = dkp + hb * SC * K + r0 + 2 * tq, *dqw = dqp + hb * SC * K + r0 + 2 * tq; /* step i at + i * K */

    uint32_t P[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      P[j][0] = m2r_pack_bf16(h[j][0], h[j][1]);
      P[j][1] = m2r_pack_bf16(h[j][2], h[j][3]);
    }
    if (back) {
#pragma unroll
      for (int q2 = 0; q2 < NQ; q2++) hw[q2 * 32] = make_uint4(P[2 * q2][0], P[2 * q2][1], P[2 * q2 + 1][0], P[2 * q2 + 1][1]);
    }
    /* The next item's start state: the registers already hold it right after the advance item before it; else the
       segment's checkpoint (sub-chunk 0) or the scratch an advance item saved. Called at the end of each branch, so
       that after a back item's replay h is visibly dead (redefined on every path) through the backward steps. */
    auto next_state = [&](bool after_back) {
      if (it1.c >= 0) {
        bool nback;
        int nsb, ns0, nlen;
        decode(it1, nback, nsb, ns0, nlen);
        const bool in_regs = !after_back && it1.c == it.c && it1.p == it.p + 1 && nsb > 0;
        if (!in_regs) state_load<NT>(nsb == 0 ? ckpt_n + (size_t)it1.c * KS : sub_n + (size_t)nsb * KS, r0, lane, h);
      } else {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) h[j][e] = 0.f; /* unused: the loop ends */
      }
    };
    /* The sub-chunk, compiled twice: FULL (len == SC, every item but a short last one) is one straight-line block
       with no per-step guards, so the compiler can schedule across steps. */
    auto run = [&](auto full) {
      constexpr bool FULL = decltype(full)::value;
      const int L = FULL ? SC : len;
      /* ---- forward over the sub-chunk (back items keep the bf16 states and compute dq_t = H_t dy_t) ---- */
#pragma unroll
      for (int i = 0; i < SC; i++) {
        if (!FULL && i >= len) break;
        const uint32_t va0 = (uint32_t)vl[i * 16] & vmask, va1 = (uint32_t)vl[i * 16 + 8] & vmask;
        const float f = fb[i];
        uint32_t bt[NT][2];
        m2r_transpose_state<NT>(P, bt);
        if (back && i > 0) { /* dq_{i-1} = H dy_{i-1}: A = dy (every row), B = H^T */
          const uint32_t ad[4] = {dy32[(i - 1) * 8], dy32[(i - 1) * 8], dy32[(i - 1) * 8 + 4], dy32[(i - 1) * 8 + 4]};
#pragma unroll
          for (int j = 0; j < NT; j++) {
            float c4[4] = {0.f, 0.f, 0.f, 0.f};
            m2r_mma16816(c4, ad, bt[j][0], bt[j][1]);
            *(float2 *)(dqw + (i - 1) * K + 8 * j) = make_float2(c4[0], c4[1]); /* every row is dq */
          }
        }
        m2r_advance<NT, NPE>(h, P, bt, wa, va0, va1, kl + i * K, f);
        if (back && i + 1 < SC) {
#pragma unroll
          for (int q2 = 0; q2 < NQ; q2++)
            hw[(i + 1) * hstep + q2 * 32] = make_uint4(P[2 * q2][0], P[2 * q2][1], P[2 * q2 + 1][0], P[2 * q2 + 1][1]);
        }
      }
      if (!back) {
        if (sb + 1 < ns - 1) state_store<NT>(sub_n + (size_t)(sb + 1) * KS, r0, lane, h); /* the last stays in h */
        next_state(false);
      } else {
        { /* dq of the last step */
          const uint32_t ad[4] = {dy32[(L - 1) * 8], dy32[(L - 1) * 8], dy32[(L - 1) * 8 + 4], dy32[(L - 1) * 8 + 4]};
#pragma unroll
          for (int j = 0; j < NT; j++) {
            float c4[4] = {0.f, 0.f, 0.f, 0.f};
            m2r_mma16816(c4, ad, m2r_movt(P[j][0]), m2r_movt(P[j][1]));
            *(float2 *)(dqw + (L - 1) * K + 8 * j) = make_float2(c4[0], c4[1]);
          }
        }
        /* ---- backward over the sub-chunk ---- */
        const float clip = p.clip;
        /* KEEP (32-row warps, 168 registers): dk and dv of the sub-chunk stay in registers (lane gl keeps step gl's dk,
           lane tq the dv of steps tq and tq + 4) and are stored once after it: shared stores inside the step limit
           ptxas's scheduling (cuda/bench/results/RESULTS.md v21: ckpt-64 fwd+bwd -4%). With 16-row warps (80 registers) it spills: not. */
        constexpr bool KEEP = NT == 4;
        float dkr[KEEP ? NT : 1][2], dvr[2][2];
#pragma unroll
        for (int j = 0; j < (KEEP ? NT : 1); j++) dkr[j][0] = dkr[j][1] = 0.f;
        dvr[0][0] = dvr[0][1] = dvr[1][0] = dvr[1][1] = 0.f;
        float dfl = 0.f; /* lane i keeps df of step i: each step's sum is reduced over the warp at once (off the G
                            chain), so one register holds the sub-chunk's df instead of SC */
#pragma unroll
        for (int ii = 0; ii < SC; ii++) {
          const int i = SC - 1 - ii;
          if (!FULL && i >= len) continue;
          const uint32_t da0 = (uint32_t)dyl[i * 16] & vmask, da1 = (uint32_t)dyl[i * 16 + 8] & vmask;
          const uint32_t va0 = (uint32_t)vl[i * 16] & vmask, va1 = (uint32_t)vl[i * 16 + 8] & vmask;
          const uint32_t av[4] = {v32[i * 8], v32[i * 8], v32[i * 8 + 4], v32[i * 8 + 4]};
          const float f = fb[i], a = 1.f - f;
          uint32_t Pp[NT][2]; /* H_{t-1} in bf16 */
#pragma unroll
          for (int q2 = 0; q2 < NQ; q2++) {
            const uint4 u = hw[i * hstep + q2 * 32];
            Pp[2 * q2][0] = u.x, Pp[2 * q2][1] = u.y, Pp[2 * q2 + 1][0] = u.z, Pp[2 * q2 + 1][1] = u.w;
          }
          uint32_t Q[NT][2];
          float dfs = 0.f;
#pragma unroll
          for (int j = 0; j < NT; j++) {
            float z[4] = {0.f, 0.f, 0.f, 0.f}; /* replay Z_t exactly as the forward computed it */
            m2r_mma1688(z, va0, va1, (uint32_t)kl[i * K + 8 * j]);
            m2r_mma16816(z, wa, m2r_movt(Pp[j][0]), m2r_movt(Pp[j][1]));
            m2r_tanh_tile<NT, NPE>(j, z);
            float d[4];
#pragma unroll
            for (int e = 0; e < 4; e++) d[e] = m2r_clamp_sym(G[j][e], clip);
            m2r_mma1688(d, da0, da1, (uint32_t)ql[i * K + 8 * j]); /* D = dy q^T (transposed) + clamp(G) */
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
            const uint32_t qt0 = m2r_movt(Q[j][0]), qt1 = m2r_movt(Q[j][1]); /* dX^T as a B operand */
            m2r_mma16816(G[j], wb, qt0, qt1);                               /* G = f D + W dX^T (transposed) */
            float c4[4] = {0.f, 0.f, 0.f, 0.f};
            m2r_mma16816(c4, av, qt0, qt1); /* dk = v^T dX^T */
            if (KEEP) {
              dkr[j][0] = gl == i ? c4[0] : dkr[j][0];
              dkr[j][1] = gl == i ? c4[1] : dkr[j][1];
            } else {
              *(float2 *)(dkw + i * K + 8 * j) = make_float2(c4[0], c4[1]); /* every row is dk */
            }
          }
          float cv[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int ib = 0; ib < NQ; ib++) {
            const uint32_t ah[4] = {Pp[2 * ib][0], Pp[2 * ib][1], Pp[2 * ib + 1][0], Pp[2 * ib + 1][1]};
            m2r_mma16816(dWa[0], ah, Q[2 * ib][0], Q[2 * ib + 1][0]); /* dW += H^T dX */
            m2r_mma16816(dWa[1], ah, Q[2 * ib][1], Q[2 * ib + 1][1]);
            const uint32_t ax[4] = {Q[2 * ib][0], Q[2 * ib][1], Q[2 * ib + 1][0], Q[2 * ib + 1][1]};
            m2r_mma16816(cv, ax, k32[i * K / 2 + 8 * ib], k32[i * K / 2 + 8 * ib + 4]); /* dv = dX^T k */
          }
          if (KEEP) {
            dvr[i >> 2][0] = tq == (i & 3) ? cv[0] : dvr[i >> 2][0];
            dvr[i >> 2][1] = tq == (i & 3) ? cv[2] : dvr[i >> 2][1];
          } else {
            *(float2 *)(dvp + i * 16) = make_float2(cv[0], cv[2]); /* (dv[gl], dv[gl + 8]) */
          }
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) dfs += __shfl_xor_sync(0xffffffffu, dfs, o);
          dfl = lane == i ? dfs : dfl;
        }
        if (lane < L) dfp[warp * SC + lane] = dfl;
        if (KEEP) {
          if (gl < L) {
#pragma unroll
            for (int j = 0; j < (KEEP ? NT : 1); j++) *(float2 *)(dkw + gl * K + 8 * j) = make_float2(dkr[j][0], dkr[j][1]);
          }
#pragma unroll
          for (int s2 = 0; s2 < 2; s2++)
            if (tq + 4 * s2 < L) *(float2 *)(dvp + (tq + 4 * s2) * 16) = make_float2(dvr[s2][0], dvr[s2][1]);
        }
        next_state(true);
      }
    };
    if (len == SC) run(M2Const<true>{});
    else run(M2Const<false>{});
    pb_back = back, pb_s0 = s0, pb_len = len;
    it = it1;
    it1 = it2;
    s++;
  }
  __syncthreads();
  if (pb_back) bwd_flush<KC>(p, part0 + ((s + 1) & 1) * p.pfl, b, n0, pb_s0, pb_len);
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

/* ======================= general kernel ======================= */

template <typename TI> /* the type of q, k, v, dy (uint16_t = bf16 bits, or float) */
struct GenBwdP {
  M2Geom g;
  float clip;
  float *dq32, *dk32, *dv32, *dW, *df, *dh0; /* all zeroed first except dh0 */
  const TI *dy;
  const float *dhT, *ckpt;
  const TI *q, *k, *v;
  const float *W, *f;
  float *hist, *zs; /* per chain: ck + 1 states and ck tanh values of one segment */
};

template <typename TI>
__global__ void __launch_bounds__(256) m2r_bwd_general(const GenBwdP<TI> p) {
  extern __shared__ __align__(16) float gsm[];
  const M2Geom &g = p.g;
  const int K = g.K, V = g.V, KV = K * V, tid = threadIdx.x, nth = blockDim.x;
  const int b = blockIdx.x / g.N, n = blockIdx.x % g.N;
  float *Ws = gsm, *G = Ws + V * V, *D = G + KV, *dX = D + KV, *dWs = dX + KV, *kk = dWs + V * V, *qq = kk + K,
        *vv = qq + K, *dyv = vv + V, *red = dyv + V;
  float *Hs = p.hist + (size_t)blockIdx.x * (g.ck + 1) * KV, *Zs = p.zs + (size_t)blockIdx.x * g.ck * KV;
  const float *Wg = p.W + (size_t)(n / g.gw) * V * V;
  for (int e = tid; e < V * V; e += nth) Ws[e] = Wg[e], dWs[e] = 0.f;
  for (int e = tid; e < KV; e += nth) G[e] = p.dhT ? p.dhT[((size_t)b * g.N + n) * KV + e] : 0.f;
  __syncthreads();
  for (int c = g.nck - 1; c >= 0; c--) {
    const int t0 = c * g.ck, L = min(g.ck, g.T - t0);
    for (int e = tid; e < KV; e += nth) Hs[e] = p.ckpt[(((size_t)b * g.N + n) * g.nck + c) * KV + e];
    __syncthreads();
    for (int i = 0; i < L; i++) {
      const size_t row = (size_t)b * g.T + t0 + i;
      for (int r = tid; r < K; r += nth) kk[r] = m2r_ld(p.k + (row * g.Nk + n / g.gk) * K + r);
      for (int j = tid; j < V; j += nth) vv[j] = m2r_ld(p.v + (row * g.Nv + n / g.gv) * V + j);
      const float f = p.f[row * g.Nf + n / g.gf];
      __syncthreads();
      const float *Hp = Hs + (size_t)i * KV;
      for (int e = tid; e < KV; e += nth) {
        const int r = e / V, j = e - r * V;
        float acc = kk[r] * vv[j];
        for (int m = 0; m < V; m++) acc = fmaf(Hp[r * V + m], Ws[m * V + j], acc);
        const float z = tanhf(acc);
        Zs[(size_t)i * KV + e] = z;
        Hs[(size_t)(i + 1) * KV + e] = fmaf(f, Hp[e] - z, z);
      }
      __syncthreads();
    }
    for (int i = L - 1; i >= 0; i--) {
      const size_t row = (size_t)b * g.T + t0 + i;
      for (int r = tid; r < K; r += nth) {
        kk[r] = m2r_ld(p.k + (row * g.Nk + n / g.gk) * K + r);
        qq[r] = m2r_ld(p.q + (row * g.Nq + n / g.gq) * K + r);
      }
      for (int j = tid; j < V; j += nth) {
        vv[j] = m2r_ld(p.v + (row * g.Nv + n / g.gv) * V + j);
        dyv[j] = m2r_ld(p.dy + (row * g.N + n) * V + j);
      }
      const float f = p.f[row * g.Nf + n / g.gf];
      __syncthreads();
      const float *Hp = Hs + (size_t)i * KV, *Hc = Hp + KV, *Z = Zs + (size_t)i * KV;
      float dfs = 0.f;
      for (int e = tid; e < KV; e += nth) {
        const int r = e / V, j = e - r * V;
        const float d = fminf(fmaxf(G[e], -p.clip), p.clip) + qq[r] * dyv[j];
        const float z = Z[e];
        D[e] = d;
        dfs += d * (Hp[e] - z);
        dX[e] = (1.f - f) * d * (1.f - z * z);
      }
      for (int o = 16; o > 0; o >>= 1) dfs += __shfl_xor_sync(0xffffffffu, dfs, o);
      if ((tid & 31) == 0) red[tid >> 5] = dfs;
      __syncthreads();
      if (tid == 0) {
        float s = 0.f;
        for (int w = 0; w < nth / 32; w++) s += red[w];
        atomicAdd(p.df + row * g.Nf + n / g.gf, s);
      }
      for (int e = tid; e < KV; e += nth) {
        const int r = e / V, j = e - r * V;
        float acc = f * D[e];
        for (int m = 0; m < V; m++) acc = fmaf(dX[r * V + m], Ws[j * V + m], acc);
        G[e] = acc;
      }
      for (int e = tid; e < V * V; e += nth) {
        const int a = e / V, bb = e - a * V;
        float acc = 0.f;
        for (int r = 0; r < K; r++) acc = fmaf(Hp[r * V + a], dX[r * V + bb], acc);
        dWs[e] += acc;
      }
      for (int j = tid; j < V; j += nth) {
        float acc = 0.f;
        for (int r = 0; r < K; r++) acc = fmaf(dX[r * V + j], kk[r], acc);
        atomicAdd(p.dv32 + (row * g.Nv + n / g.gv) * V + j, acc);
      }
      for (int r = tid; r < K; r += nth) {
        float ak = 0.f, aq = 0.f;
        for (int j = 0; j < V; j++) {
          ak = fmaf(dX[r * V + j], vv[j], ak);
          aq = fmaf(Hc[r * V + j], dyv[j], aq);
        }
        atomicAdd(p.dk32 + (row * g.Nk + n / g.gk) * K + r, ak);
        atomicAdd(p.dq32 + (row * g.Nq + n / g.gq) * K + r, aq);
      }
      __syncthreads();
    }
  }
  if (p.dh0)
    for (int e = tid; e < KV; e += nth) p.dh0[((size_t)b * g.N + n) * KV + e] = G[e];
  for (int e = tid; e < V * V; e += nth) atomicAdd(p.dW + (size_t)(n / g.gw) * V * V + e, dWs[e]);
}

__global__ void m2r_to_bf16(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = (uint16_t)(m2r_pack_bf16(src[i], 0.f) & 0xffffu);
}

/* ======================= launcher ======================= */

static m2_status to_bf16(const float *src, uint16_t *dst, size_t n, cudaStream_t s) {
  if (!n) return M2_OK;
  const size_t blocks = (n + 255) / 256;
  m2r_to_bf16<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(src, dst, n);
  M2_CUDA_LAUNCH_CHECK("m2r_to_bf16");
  return M2_OK;
}

extern "C" m2_status m2_m2rnn_bwd_cuda(const m2_m2rnn_attr *at, const m2_m2rnn_cuda_tuning *o,
                                       const m2_m2rnn_bwd_args *a, cudaStream_t stream) {
  M2_TRY(m2r_attr_ok(at));
  if (!a || !a->dq || !a->dk || !a->dv || !a->dW || !a->df || !a->dy || !a->q || !a->k || !a->v || !a->W || !a->f)
    return m2_fail(M2_ERR_VALUE, "m2rnn cuda backward: dq, dk, dv, dW, df, dy, q, k, v, W and f must be given");
  const int path = m2_m2rnn_cuda_path(at, o);
  if (path < 0) return m2r_no_path(at, o, "backward");
  M2Geom g = m2r_geom(at);
  const size_t KV = (size_t)g.K * g.V, BT = (size_t)g.B * g.T;
  const float clip_f = (float)at->grad_clip; /* rounded first: a clip that rounds to 0 is off, as a float one was */
  const float clip = clip_f > 0 ? clip_f : INFINITY;
  M2_CUDA_TRY(cudaMemsetAsync(a->dW, 0, (size_t)g.Nw * g.V * g.V * 4, stream));
  if (g.T == 0) {
    if (a->dh0) {
      if (a->dhT) M2_CUDA_TRY(cudaMemcpyAsync(a->dh0, a->dhT, (size_t)g.B * g.N * KV * 4, cudaMemcpyDeviceToDevice, stream));
      else M2_CUDA_TRY(cudaMemsetAsync(a->dh0, 0, (size_t)g.B * g.N * KV * 4, stream));
    }
    return M2_OK;
  }
  if (!a->ckpt || !a->work)
    return m2_fail(M2_ERR_VALUE, "m2rnn cuda backward: needs the forward's ckpt and a work buffer "
                                 "(m2_m2rnn_bwd_work_bytes = %zu bytes)", m2_m2rnn_bwd_work_bytes(at, o));
  const BwdWork w = bwd_work(&g, path);
  char *work = (char *)a->work;
  const bool f32io = o && o->io_f32; /* general path only (m2_m2rnn_cuda_path): dq, dk, dv are the fp32 sums */
  float *dq32 = f32io ? (float *)a->dq : w.use_dq32 ? (float *)(work + w.dq32) : nullptr;
  float *dk32 = f32io ? (float *)a->dk : w.use_dk32 ? (float *)(work + w.dk32) : nullptr;
  float *dv32 = f32io ? (float *)a->dv : w.use_dv32 ? (float *)(work + w.dv32) : nullptr;
  if (dq32) M2_CUDA_TRY(cudaMemsetAsync(dq32, 0, BT * g.Nq * g.K * 4, stream));
  if (dk32) M2_CUDA_TRY(cudaMemsetAsync(dk32, 0, BT * g.Nk * g.K * 4, stream));
  if (dv32) M2_CUDA_TRY(cudaMemsetAsync(dv32, 0, BT * g.Nv * g.V * 4, stream));
  if (path == M2_M2RNN_GENERAL || g.Nf < g.N) M2_CUDA_TRY(cudaMemsetAsync(a->df, 0, BT * g.Nf * 4, stream));

  if (path == M2_M2RNN_GENERAL) {
    const size_t smem = (2 * (size_t)g.V * g.V + 3 * KV + 2 * g.K + 2 * g.V + 32) * 4;
    float *hist = (float *)(work + w.hist), *zs = (float *)(work + w.zs);
    if (f32io) {
      GenBwdP<float> p = {g, clip, dq32, dk32, dv32, a->dW, a->df, a->dh0, (const float *)a->dy, a->dhT, a->ckpt,
                          (const float *)a->q, (const float *)a->k, (const float *)a->v, a->W, a->f, hist, zs};
      if (smem > 48 * 1024)
        M2_CUDA_TRY(cudaFuncSetAttribute(m2r_bwd_general<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      m2r_bwd_general<float><<<g.B * g.N, 256, smem, stream>>>(p);
    } else {
      GenBwdP<uint16_t> p = {g, clip, dq32, dk32, dv32, a->dW, a->df, a->dh0, (const uint16_t *)a->dy, a->dhT, a->ckpt,
                             (const uint16_t *)a->q, (const uint16_t *)a->k, (const uint16_t *)a->v, a->W, a->f, hist, zs};
      if (smem > 48 * 1024)
        M2_CUDA_TRY(
            cudaFuncSetAttribute(m2r_bwd_general<uint16_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      m2r_bwd_general<uint16_t><<<g.B * g.N, 256, smem, stream>>>(p);
    }
    M2_CUDA_LAUNCH_CHECK("m2r_bwd_general");
  } else {
    M2Plan pl;
    M2_TRY(m2r_plan(&g, o, 1, &pl));
    FastBwdP p = {g, pl.st, pl.hpb, pl.wph, m2r_magic(pl.hpb), g.ck / M2R_BWD_SC, m2r_bwd_part_floats(&g, pl.hpb, pl.hpb * pl.wph), clip,
                  (uint16_t *)a->dq, (uint16_t *)a->dk, (uint16_t *)a->dv, dq32, dk32, dv32, a->dW, a->df, a->dh0,
                  (const uint16_t *)a->dy, a->dhT, a->ckpt, (const uint16_t *)a->q, (const uint16_t *)a->k,
                  (const uint16_t *)a->v, a->W, a->f, (float *)(work + w.sub)};
    { /* where the flush's loops start for a full item, mod the block size (bwd_flush) */
      const FlushStart fs = bwd_flush_start(pl.st, pl.hpb, g.K, M2R_BWD_SC, dq32 != nullptr, dk32 != nullptr);
      const int off[4] = {fs.dv, fs.dk, fs.dq, fs.df}, nth = pl.threads;
      for (int i = 0; i < 4; i++) p.fadd[i] = (nth - off[i] % nth) % nth;
    }
    typedef void (*Kern)(const FastBwdP);
    /* the replay must use the forward's tanh split to reproduce its Z exactly; K = 64 (the paper's) compiled apart */
    static const Kern k4[4] = {m2r_bwd_fast<4, 0, 0, false>, m2r_bwd_fast<4, 4, 0, false>, m2r_bwd_fast<4, 6, 0, false>,
                               m2r_bwd_fast<4, 8, 0, false>};
    static const Kern k2[4] = {m2r_bwd_fast<2, 0, 0, false>, m2r_bwd_fast<2, 4, 0, false>, m2r_bwd_fast<2, 6, 0, false>,
                               m2r_bwd_fast<2, 8, 0, false>};
    const int npe = m2r_tanh_mode(o), ti = npe == 0 ? 0 : npe == 4 ? 1 : npe == 6 ? 2 : 3;
    Kern kern = pl.nt == 4 ? k4[ti] : k2[ti];
    if (g.K == 64 && npe == 0) { /* the paper's K. ONE when checkpoints are every SC steps (the op's default) with
                                    16-row warps; with 32-row warps ONE measured slower (6.33 vs 5.98 ms, spills) */
      const bool one = g.ck == M2R_BWD_SC;
      kern = pl.nt == 4 ? m2r_bwd_fast<4, 0, 64, false>
                        : (one ? m2r_bwd_fast<2, 0, 64, true> : m2r_bwd_fast<2, 0, 64, false>);
    }
    if (pl.smem > 48 * 1024)
      M2_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem));
    kern<<<pl.nblocks, pl.threads, pl.smem, stream>>>(p);
    M2_CUDA_LAUNCH_CHECK("m2r_bwd_fast");
  }
  if (f32io) return M2_OK; /* dq, dk, dv were accumulated in place */
  if (dq32) M2_TRY(to_bf16(dq32, (uint16_t *)a->dq, BT * g.Nq * g.K, stream));
  if (dk32) M2_TRY(to_bf16(dk32, (uint16_t *)a->dk, BT * g.Nk * g.K, stream));
  if (dv32) M2_TRY(to_bf16(dv32, (uint16_t *)a->dv, BT * g.Nv * g.V, stream));
  return M2_OK;
}
