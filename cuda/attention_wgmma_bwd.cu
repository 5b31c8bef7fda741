/* attention_wgmma_bwd.cu — the attention backward on Hopper's warpgroup products (wgmma, sm_90a): the kernel that
 * att_v2_bwd (cuda/attention_tc.cu) takes instead of k2_bwd (cuda/attention_tc_v2.cuh) when the switch
 * M2_ATTN_BWD_WGMMA=1 is on (read once, OFF by default; m2_cuda_attention_bwd_wgmma), for head dims 64 and 128.
 * Built for sm_90a only, compiled with cuda/attention_wgmma.cu (CMakeLists.txt target m2attnwg); for other targets
 * the kernel is an empty stub that att_wgmma_bwd_ok never lets run.
 *
 * Semantics those of k2_bwd: bf16 operands, fp32 accumulators; query t sees keys s < clamp(t + S - T + 1, 0, S)
 * when causal (all S otherwise); P = exp2(S sl2 - lse log2e) (a row without keys: lse = -inf, P = 0); dS = P (dP - Dt);
 * P and dS rounded to bf16 as the operands of dV += P^T dO and dK += dS^T Q, bf16(scale dS) the operand of dQ;
 * dk = scale dK, dv = dV in the call's dtype (f32, or bf16 rounded to nearest); dq added into the fp32 buffer dqa
 * with atomics (its summation order depends on scheduling); grouped heads: the block of kv head kh walks the query
 * heads kh rep .. kh rep + rep - 1.
 *
 * One block: one warpgroup (128 threads), 64 keys k0 .. k0 + 63 of one kv head (warp w: key rows 16 w ..);
 * grid (ceil(S / 64), B Hkv), the heaviest key blocks (first keys, seen by most queries when causal) first.
 *   smem (bf16, 128-byte swizzled tiles of wgmma_layout.h, 1024-byte aligned; layouts tested on the CPU by
 *   tests/test_wgmma_bwd_layout.c):
 *     Ks, Vs     64 x D         the block's keys and values
 *     Qs, Os     2 x 64 x D     query and do tiles, double-buffered (cp.async: tile it + 1 staged during tile it)
 *     dSs        64 x 64        scale dS^T (keys x queries) of the current tile, bf16
 *     Ls, Ds     2 x 64 fp32    lse log2e and Dt of the tile's queries
 *   per query tile (64 queries tq0 .. of head h):
 *     S^T  (64 keys x 64 queries, 32 fp32 regs) = K Q^T      wgmma ss, K-major both, D / 16 k-steps
 *     dP^T (64 x 64)                            = V dO^T     wgmma ss, issued with S^T, waited for after P
 *     P^T, dS^T in registers (masked); scale dS^T -> dSs (bf16)
 *     dV (64 x D regs) += P^T dO, dK (64 x D regs) += dS^T Q  wgmma rs: A = P^T / dS^T bf16 fragments, B MN-major
 *     dQ (64 queries x 64 columns, D / 64 times) = dS K      wgmma ss, A = dS read transposed from dSs (trans-a),
 *                                                            B = K MN-major (trans-b); red.add.v2.f32 into dqa
 * Head dim 64: 58 KB of shared memory; head dim 128: 107 KB (ptxas figures: cuda/bench/results/RESULTS-attention.md).
 * A simple kernel first: no producer warps, no overlap of the softmax part with the products. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "wgmma.cuh"
#include "wgmma_stage.cuh"
#include "mma.cuh"
#include "attention_common.cuh"
#include "attention_wgmma.h"
#include "m2cuda.h"

namespace {

constexpr float LOG2E = 1.4426950408889634f;
constexpr int BK = 64, BQ = 64, NT = 128; /* keys a block, queries a tile, threads a block */

/* Dynamic shared memory of one block: k, v, two q and two do tiles, dS^T, lse / Dt rows, 1024 bytes to align. */
template <int D> constexpr size_t bw_smem_bytes() {
  return 2 * (size_t)D * (2 * BK + 4 * BQ) + 2 * (size_t)BK * BQ + 4 * 4 * (size_t)BQ + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ float bw_ex2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
/* natural-log lse -> log2 domain; a row without keys (-inf) gives +inf, so that its P is 0 */
__device__ __forceinline__ float bw_lse2(float L) { return L == -INFINITY ? INFINITY : L * LOG2E; }
__device__ __forceinline__ void bw_st32(uint32_t a, uint32_t v) { asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(v) : "memory"); }
/* fp32 accumulator fragments (64 x 64, 32 a thread) -> bf16 A fragments of a product whose k runs over the columns */
__device__ __forceinline__ void bw_pack(uint32_t (&a)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int j = 0; j < 8; j++) {
    a[j >> 1][(j & 1) * 2] = mma_pack(s[4 * j], s[4 * j + 1]);
    a[j >> 1][(j & 1) * 2 + 1] = mma_pack(s[4 * j + 2], s[4 * j + 3]);
  }
}
#endif

/* dqa (B, T, H, D) f32 += dq; dk, dv (B, S, Hkv, D) of OT (NULL: not wanted); grid (ceil(S / 64), B Hkv), 128
 * threads. */
template <int D, class OT>
__global__ void __launch_bounds__(NT, 1)
    k_bwd_wg(wg_opnd Q, wg_opnd K, wg_opnd V, wg_opnd dO, const float *__restrict__ lse, const float *__restrict__ Dt,
             float *dqa, OT *dk, OT *dv, int T, int H, int S, int Hkv, float sl2, float scale, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr uint32_t TB = 2u * 64 * D; /* bytes of one 64-row tile */
  extern __shared__ uint8_t bw_sm[];
  const uint32_t raw = (uint32_t)__cvta_generic_to_shared(bw_sm), Ks = (raw + 1023u) & ~1023u;
  const uint32_t Vs = Ks + TB, Qs = Vs + TB, Os = Qs + 2 * TB, dSs = Os + 2 * TB; /* buffer j of Qs, Os at + j TB */
  float *Ls = (float *)(bw_sm + (Ks - raw) + 6 * TB + 2 * BK * BQ), *Ds = Ls + 2 * BQ;
  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int bkh = blockIdx.y, b = bkh / Hkv, kh = bkh % Hkv, rep = H / Hkv, k0 = blockIdx.x * BK;
  const int tstart = causal ? max(0, k0 - (S - T)) : 0; /* the first query that sees key k0 */
  const int nqt = tstart < T ? (T - tstart + BQ - 1) / BQ : 0, total = rep * nqt;
  wg_stage<BK, D, NT>(Ks, K.p + b * K.sb + kh * K.sh, K.sr, k0, S, tid);
  wg_stage<BK, D, NT>(Vs, V.p + b * V.sb + kh * V.sh, V.sr, k0, S, tid);
  auto stage_q = [&](int it, int buf) {
    const int hh = it / nqt, tq0 = tstart + (it % nqt) * BQ, h = kh * rep + hh;
    const size_t bh = (size_t)b * H + h;
    wg_stage<BQ, D, NT>(Qs + buf * TB, Q.p + b * Q.sb + h * Q.sh, Q.sr, tq0, T, tid);
    wg_stage<BQ, D, NT>(Os + buf * TB, dO.p + b * dO.sb + h * dO.sh, dO.sr, tq0, T, tid);
    if (tid < BQ) {
      const int t = tq0 + tid;
      Ls[buf * BQ + tid] = t < T ? bw_lse2(lse[bh * T + t]) : INFINITY;
      Ds[buf * BQ + tid] = t < T ? Dt[bh * T + t] : 0.f;
    }
  };
  if (total > 0) stage_q(0, 0);
  cp_commit();
  const int r[2] = {k0 + 16 * w + g, k0 + 16 * w + g + 8}; /* this thread's key rows of S^T, dK, dV */
  float ak[D / 2], av[D / 2];                               /* dK, dV: 64 x D, D / 64 blocks of 64 columns */
#pragma unroll
  for (int i = 0; i < D / 2; i++) ak[i] = av[i] = 0;
  for (int it = 0; it < total; it++) {
    const int buf = it & 1;
    if (it + 1 < total) {
      stage_q(it + 1, buf ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    wg_fence_smem(); /* this thread's cp.async writes, seen by the products (async proxy) after the barrier */
    __syncthreads();
    const uint32_t Qt = Qs + buf * TB, Ot = Os + buf * TB;
    const float *Lt = Ls + buf * BQ, *Dq = Ds + buf * BQ;
    const int hh = it / nqt, tq0 = tstart + (it % nqt) * BQ, h = kh * rep + hh;
    float s[32], dp[32]; /* S^T, dP^T: rows keys, columns queries */
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) wg_mma_ss_n64(s, wg_desc_k(Ks, BK, 0, ks), wg_desc_k(Qt, BQ, 0, ks), ks > 0);
    wg_commit();
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) wg_mma_ss_n64(dp, wg_desc_k(Vs, BK, 0, ks), wg_desc_k(Ot, BQ, 0, ks), ks > 0);
    wg_commit();
    wg_wait<1>(); /* S^T done, dP^T may still run */
    wg_keep(s);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = 8 * j + 2 * tq + (e & 1), t = tq0 + c, key = r[e >> 1];
        const bool vis = t < T && key < S && (!causal || key <= t + S - T);
        s[4 * j + e] = vis ? bw_ex2(s[4 * j + e] * sl2 - Lt[c]) : 0.f;
      }
    wg_wait<0>();
    wg_keep(dp);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) dp[4 * j + e] = s[4 * j + e] * (dp[4 * j + e] - Dq[8 * j + 2 * tq + (e & 1)]);
    if (dqa) /* bf16(scale dS^T) -> dSs, element pairs (wg_acc_row / wg_acc_col of wgmma_layout.h) */
#pragma unroll
      for (int i = 0; i < 32; i += 2)
        bw_st32(dSs + wg_elem_off(wg_acc_row(tid, i), wg_acc_col(tid, i), BK),
                mma_pack(dp[i] * scale, dp[i + 1] * scale));
    uint32_t pa[4][4], dsa[4][4];
    bw_pack(pa, s);
    bw_pack(dsa, dp);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; kk++)
#pragma unroll
      for (int dn = 0; dn < D / 64; dn++) {
        wg_mma_rs_n64(av + 32 * dn, pa[kk], wg_desc_mn(Ot, BQ, kk, 64 * dn));
        wg_mma_rs_n64(ak + 32 * dn, dsa[kk], wg_desc_mn(Qt, BQ, kk, 64 * dn));
      }
    wg_commit();
    if (dqa) {
      wg_fence_smem(); /* the dS^T stores, seen by the product below after the barrier */
      __syncthreads();
#pragma unroll
      for (int dn = 0; dn < D / 64; dn++) {
        float acc[32]; /* dQ rows = queries tq0 + 16 w + g (+ 8), columns 64 dn + .. */
#pragma unroll
        for (int i = 0; i < 32; i++) acc[i] = 0;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
          wg_mma_ss_tt_n64(acc, wg_desc_mn(dSs, BK, kk, 0), wg_desc_mn(Ks, BK, kk, 64 * dn), kk > 0);
        wg_commit();
        wg_wait<0>();
        wg_keep(acc);
#pragma unroll
        for (int i = 0; i < 2; i++) {
          const int t = tq0 + 16 * w + g + 8 * i;
          if (t >= T) continue;
          float *row = dqa + (((size_t)b * T + t) * H + h) * D + 64 * dn + 2 * tq;
#pragma unroll
          for (int j = 0; j < 8; j++) atomicAdd((float2 *)(row + 8 * j), make_float2(acc[4 * j + 2 * i], acc[4 * j + 2 * i + 1]));
        }
      }
    }
    wg_wait<0>(); /* dK, dV done: pa, dsa and the tiles may be rewritten */
    wg_keep(ak);
    wg_keep(av);
    __syncthreads(); /* the next tile stages into the buffers just read and rewrites dSs */
  }
  cp_wait<0>();
  const int64_t ld = (int64_t)Hkv * D;
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (r[i] >= S) continue;
    OT *rk = dk ? dk + ((size_t)b * S + r[i]) * ld + (size_t)kh * D : NULL;
    OT *rv = dv ? dv + ((size_t)b * S + r[i]) * ld + (size_t)kh * D : NULL;
#pragma unroll
    for (int dn = 0; dn < D / 64; dn++)
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int c = 64 * dn + 8 * j + 2 * tq, a = 32 * dn + 4 * j + 2 * i;
        if (rk) wg_store2(rk + c, ak[a] * scale, ak[a + 1] * scale);
        if (rv) wg_store2(rv + c, av[a], av[a + 1]);
      }
  }
#endif
}

/* ---------------- host side ---------------- */

long g_bw_calls;
int g_bw_mode = -1; /* -1: not read yet; 0 off, 1 on */

int bw_mode() {
  if (g_bw_mode < 0) {
    const char *e = getenv("M2_ATTN_BWD_WGMMA");
    g_bw_mode = e && !strcmp(e, "1") ? 1 : 0; /* off unless 1: not yet run on a GPU */
  }
  return g_bw_mode;
}

template <int D, class OT>
cudaError_t launch_bw(const m2_attention_attr &d, wg_opnd q, wg_opnd k, wg_opnd v, wg_opnd dO, const float *lse,
                      const float *Dt, float *dqa, OT *dk, OT *dv, float scale, bool causal, cudaStream_t st) {
  const size_t bytes = bw_smem_bytes<D>();
  cudaError_t e = cudaFuncSetAttribute(k_bwd_wg<D, OT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((d.S + BK - 1) / BK), (unsigned)(d.B * d.Hkv));
  k_bwd_wg<D, OT><<<grid, NT, bytes, st>>>(q, k, v, dO, lse, Dt, dqa, dk, dv, (int)d.T, (int)d.H, (int)d.S,
                                           (int)d.Hkv, scale * LOG2E, scale, causal);
  return cudaGetLastError();
}

} /* namespace */

extern "C" int m2_cuda_attention_bwd_wgmma(int set) {
  const int prev = bw_mode();
  if (set >= 0) g_bw_mode = set ? 1 : 0;
  return prev;
}
extern "C" long m2_cuda_attention_bwd_wgmma_calls(void) { return g_bw_calls; }

bool att_wgmma_bwd_ok(const m2_attention_attr *d) {
#ifndef M2_WGMMA_BUILT
  (void)d;
  return false;
#else
  return bw_mode() > 0 && (d->D == 64 || d->D == 128) && d->B * d->Hkv <= 65535 &&
         m2_cuda_attention_wgmma_device() != 0;
#endif
}

cudaError_t att_wgmma_bwd(const m2_attention_attr *d, wg_opnd q, wg_opnd k, wg_opnd v, wg_opnd dO, const float *lse,
                          const float *Dt, float *dqa, void *dk, void *dv, bool out_bf16, float scale, bool causal,
                          cudaStream_t st) {
  if (d->S == 0 || d->B * d->Hkv == 0) return cudaSuccess;
  cudaError_t e;
  if (out_bf16)
    e = (d->D == 64 ? launch_bw<64, uint16_t> : launch_bw<128, uint16_t>)(*d, q, k, v, dO, lse, Dt, dqa,
                                                                         (uint16_t *)dk, (uint16_t *)dv, scale,
                                                                         causal, st);
  else
    e = (d->D == 64 ? launch_bw<64, float> : launch_bw<128, float>)(*d, q, k, v, dO, lse, Dt, dqa, (float *)dk,
                                                                   (float *)dv, scale, causal, st);
  if (e == cudaSuccess) g_bw_calls++;
  return e;
}
