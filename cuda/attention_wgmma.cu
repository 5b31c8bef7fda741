/* attention_wgmma.cu — the attention forward on Hopper's warpgroup products (wgmma, sm_90a), flash-attention style:
 * the path of m2_att_tc_fwd (cuda/attention_tc.cu) for head dims 64 and 128 on sm_90 devices unless the switch
 * M2_ATTN_WGMMA=0 turns it off (on by default since it passed cuda_ops_attention on an H100, 2026-12-07). Built for sm_90a only (CMakeLists.txt compiles this file alone with
 * -gencode=arch=compute_90a,code=sm_90a where the build targets 90); for other targets the kernel is an empty stub
 * that att_wgmma_fwd_ok never lets run.
 *
 * Semantics those of k_fwd there: bf16 operands, fp32 accumulators and softmax statistics, P rounded to bf16 as the
 * operand of P v; query t reads keys s < n(t) = clamp(t + S - T + 1, 0, S) when causal (all S otherwise); a row with
 * no key gives o = 0, lse = -inf; grouped heads (query head h reads kv head h / (H / Hkv)).
 *
 * One block: NWG consumer warpgroups, each owning 64 query rows (BM = 64 NWG rows a block), all threads staging.
 *   smem (bf16, 128-byte swizzled tiles of wgmma_layout.h, 1024-byte aligned):
 *     Qs  BM x D              the block's queries (K-major A operand of S = q k^T)
 *     Ks  2 x BN x D          key tiles, double-buffered (K-major B operand)
 *     Vs  2 x BN x D          value tiles, double-buffered (MN-major B operand of o += P v, trans-b)
 *   per key tile it (keys s0 = it BN .. s0 + BN - 1), in each warpgroup whose rows see some key of it:
 *     S (64 x BN fp32 regs)  = wgmma m64nBNk16 over D / 16 k-steps, q and k from shared memory
 *     online softmax on the accumulator fragments (log2 domain, ex2), the mask only on tiles that cross some
 *     row's last key; P -> bf16 A fragments in registers
 *     o (64 x D fp32 regs)  += wgmma m64n64k16 over BN / 16 k-steps (D / 64 per step), P from registers
 *   key / value tile it + 1 is staged by cp.async while tile it is multiplied; the latest (heaviest) query blocks
 *   start first. M2_ATTN_WGMMA=2 takes a variant (PIPE) that issues S of tile it with P v of tile it - 1 (three
 *   tile buffers), see k_fwd_wg.
 * Head dim 64: NWG 3 (BM 192), BN 128, 88 KB of shared memory (PIPE 120 KB), 161 registers (PIPE 158); head dim
 * 128: NWG 3, BN 64, 112 KB (PIPE 144 KB), 145 registers (PIPE 142); ptxas, no spills: one block of 12 warps an
 * SM. */
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

namespace {

constexpr float LOG2E = 1.4426950408889634f;

template <int D> struct wg_cfg;
template <> struct wg_cfg<64> {
  static constexpr int NWG = 3, BN = 128, MINB = 1;
};
template <> struct wg_cfg<128> {
  static constexpr int NWG = 3, BN = 64, MINB = 1;
};
/* Dynamic shared memory of one block: q, two (PIPE: three) key and value tiles each, 1024 bytes to align the base. */
template <int D, bool PIPE> constexpr size_t wg_smem_bytes() {
  return 2 * (size_t)D * (64 * wg_cfg<D>::NWG + (PIPE ? 6 : 4) * wg_cfg<D>::BN) + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr float LN2 = 0.6931471805599453f;


/* volatile: kept in PTX order with the wgmma waits (the softmax's exponentials before the wait for the P v they are
 * meant to overlap); ptxas still schedules that wait earlier (see k_fwd_wg) */
__device__ __forceinline__ float ex2(float x) {
  float r;
  asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Issue S (64 x BN, this warpgroup's rows m0 ..) = q k^T over D / 16 k-steps: q tile at Qs (BM rows), k tile at Kt. */
template <int D, int BN, int BM>
__device__ __forceinline__ void wg_issue_s(float (&sa)[BN / 2], uint32_t Qs, uint32_t Kt, int m0) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    const uint64_t da = wg_desc_k(Qs, BM, m0, ks), db = wg_desc_k(Kt, BN, 0, ks);
    if constexpr (BN == 128) wg_mma_ss_n128(sa, da, db, ks > 0);
    else wg_mma_ss_n64(sa, da, db, ks > 0);
  }
}
/* Issue o (64 x D) += P v: P as bf16 A fragments pa (k-step kk = keys 16 kk ..), the value tile at Vt. */
template <int D, int BN>
__device__ __forceinline__ void wg_issue_pv(float (&o)[D / 2], const uint32_t (&pa)[BN / 16][4], uint32_t Vt) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
    for (int dn = 0; dn < D / 64; dn++) wg_mma_rs_n64(o + 32 * dn, pa[kk], wg_desc_mn(Vt, BN, kk, 64 * dn));
}
/* Online softmax of a tile of scores sa (keys s0 ..; masked where edge, against nv[] keys of this thread's rows):
 * m, l move to the tile, alpha[] is the factor the earlier o must take, sa becomes P (fp32, log2 domain). */
template <int BN>
__device__ __forceinline__ void wg_softmax(float (&sa)[BN / 2], float m[2], float l[2], float alpha[2], bool edge,
                                           int s0, const int nv[2], int tq, float sl2) {
  float mx[2] = {m[0], m[1]};
  /* column 8 j + (e & 1) of this thread is hidden from row i when it is >= lim[i] */
  const int lim[2] = {edge ? nv[0] - s0 - 2 * tq : BN, edge ? nv[1] - s0 - 2 * tq : BN};
#pragma unroll
  for (int j = 0; j < BN / 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      float x = sa[4 * j + e] * sl2;
      if (8 * j + (e & 1) >= lim[e >> 1]) x = -INFINITY;
      sa[4 * j + e] = x;
      mx[e >> 1] = fmaxf(mx[e >> 1], x);
    }
  float ref[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    mx[i] = quad_max(mx[i]);
    ref[i] = mx[i] == -INFINITY ? 0.f : mx[i]; /* a row that has seen no key yet keeps p = 0 */
    alpha[i] = ex2(m[i] - ref[i]);
    m[i] = mx[i];
    l[i] *= alpha[i];
  }
#pragma unroll
  for (int j = 0; j < BN / 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      sa[4 * j + e] = ex2(sa[4 * j + e] - ref[e >> 1]);
      l[e >> 1] += sa[4 * j + e];
    }
}
template <int D> __device__ __forceinline__ void wg_scale(float (&o)[D / 2], const float alpha[2]) {
#pragma unroll
  for (int j = 0; j < D / 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) o[4 * j + e] *= alpha[e >> 1];
}
/* P (fp32 accumulator fragments) -> bf16 A fragments of o += P v. */
template <int BN> __device__ __forceinline__ void wg_pack(uint32_t (&pa)[BN / 16][4], const float (&sa)[BN / 2]) {
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
    pa[j >> 1][(j & 1) * 2] = mma_pack(sa[4 * j], sa[4 * j + 1]);
    pa[j >> 1][(j & 1) * 2 + 1] = mma_pack(sa[4 * j + 2], sa[4 * j + 3]);
  }
}
#endif

/* O (B, T, H, D) f32, lse (B, H, T) f32 (natural log); grid (ceil(T / BM), B H).
 * PIPE false: per key tile, S, softmax, then o += P v, each product waited for at once (two tile buffers).
 * PIPE true (flash-attention-3's overlap inside a warpgroup): S of tile it is issued together with o += P v of
 * tile it - 1, the softmax of tile it is meant to run while the tensor cores do that P v, and o takes its rescale
 * once P v is done. Three tile buffers (tile it + 1 is staged while it and it - 1 are read); one block iteration
 * more, in which each warpgroup issues its last P v. (ptxas 13.0 places the wait for that P v after the mask and
 * the row maxima but before the exponentials: the overlap is partial; to be measured.) */
template <int D, bool PIPE, class OT>
__global__ void __launch_bounds__(wg_cfg<D>::NWG * 128, wg_cfg<D>::MINB)
    k_fwd_wg(const uint16_t *__restrict__ Q, const uint16_t *__restrict__ K, const uint16_t *__restrict__ V,
             int64_t q_sb, int64_t q_st, int64_t q_sh, int64_t kv_sb, int64_t kv_st, int64_t kv_sh, OT *O,
             float *lse, int T, int H, int S, int Hkv, float sl2, bool causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int NWG = wg_cfg<D>::NWG, BN = wg_cfg<D>::BN, BM = 64 * NWG, NT = 128 * NWG, NB = PIPE ? 3 : 2;
  constexpr uint32_t TB = 2u * BN * D; /* bytes of one key or value tile */
  extern __shared__ uint8_t wg_sm[];
  const uint32_t Qs = ((uint32_t)__cvta_generic_to_shared(wg_sm) + 1023u) & ~1023u;
  const uint32_t Ks = Qs + 2u * BM * D, Vs = Ks + NB * TB; /* buffer j of each at + j TB */
  const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / Hkv);
  const int t0 = (gridDim.x - 1 - blockIdx.x) * BM; /* the latest (heaviest) query blocks first */
  const uint16_t *Qg = Q + b * q_sb + h * q_sh, *Kg = K + b * kv_sb + kh * kv_sh, *Vg = V + b * kv_sb + kh * kv_sh;
  const int ntile = (att_keys(min(t0 + BM, T) - 1, T, S, causal) + BN - 1) / BN;
  /* this warpgroup's rows tw .. tw + 63: the keys of its first row (fewest) and of its last row (most); it
   * multiplies key tiles 0 .. ntw - 1 */
  const int tw = t0 + 64 * wg;
  const int wmin = tw < T ? att_keys(tw, T, S, causal) : 0, wmax = tw < T ? att_keys(min(tw + 64, T) - 1, T, S, causal) : 0;
  const int ntw = (wmax + BN - 1) / BN;
  wg_stage<BM, D, NT>(Qs, Qg, q_st, t0, T, tid);
  if (ntile > 0) wg_stage<BN, D, NT>(Ks, Kg, kv_st, 0, S, tid), wg_stage<BN, D, NT>(Vs, Vg, kv_st, 0, S, tid);
  cp_commit();
  const int r[2] = {tw + 16 * w + g, tw + 16 * w + g + 8};
  const int nv[2] = {att_keys(r[0], T, S, causal), att_keys(r[1], T, S, causal)};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0}, o[D / 2], alpha[2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) o[i] = 0;
  uint32_t pa[BN / 16][4]; /* P of the last tile, bf16 A fragments */
  for (int it = 0; it < ntile + (PIPE ? 1 : 0); it++) {
    if (it + 1 < ntile) {
      const uint32_t nb = (uint32_t)((it + 1) % NB) * TB;
      wg_stage<BN, D, NT>(Ks + nb, Kg, kv_st, (it + 1) * BN, S, tid);
      wg_stage<BN, D, NT>(Vs + nb, Vg, kv_st, (it + 1) * BN, S, tid);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    wg_fence_smem(); /* this thread's cp.async writes, seen by the products (async proxy) after the barrier */
    __syncthreads();
    const int s0 = it * BN;
    const uint32_t cur = (uint32_t)(it % NB) * TB, prev = (uint32_t)((it + NB - 1) % NB) * TB;
    const bool edge = s0 + BN > wmin; /* some key of this tile is hidden from some row */
    if (!PIPE) {
      if (it < ntw) { /* uniform in the warpgroup */
        float sa[BN / 2];
        wg_fence();
        wg_issue_s<D, BN, BM>(sa, Qs, Ks + cur, 64 * wg);
        wg_commit();
        wg_wait<0>();
        wg_keep(sa);
        wg_softmax<BN>(sa, m, l, alpha, edge, s0, nv, tq, sl2);
        wg_scale<D>(o, alpha);
        wg_pack<BN>(pa, sa);
        wg_fence();
        wg_issue_pv<D, BN>(o, pa, Vs + cur);
        wg_commit();
        wg_wait<0>();
        wg_keep(o);
      }
    } else if (it < ntw) {
      float sa[BN / 2];
      wg_fence();
      wg_issue_s<D, BN, BM>(sa, Qs, Ks + cur, 64 * wg);
      wg_commit();
      if (it > 0) wg_issue_pv<D, BN>(o, pa, Vs + prev);
      wg_commit();  /* an empty group at it = 0 */
      wg_wait<1>(); /* S is done; P v of the last tile may still run */
      wg_keep(sa);
      wg_softmax<BN>(sa, m, l, alpha, edge, s0, nv, tq, sl2);
      wg_wait<0>();
      wg_keep(o);
      wg_scale<D>(o, alpha);
      wg_pack<BN>(pa, sa);
    } else if (it == ntw && ntw > 0) { /* this warpgroup's last P v */
      wg_fence();
      wg_issue_pv<D, BN>(o, pa, Vs + prev);
      wg_commit();
      wg_wait<0>();
      wg_keep(o);
    }
    __syncthreads(); /* the next iteration stages into a buffer read before */
  }
  cp_wait<0>();
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] = quad_sum(l[i]);
    inv[i] = l[i] > 0 ? 1.0f / l[i] : 0.0f;
    if (tq == 0 && r[i] < T) lse[(size_t)bh * T + r[i]] = l[i] > 0 ? (m[i] + log2f(l[i])) * LN2 : -INFINITY;
  }
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (r[i] >= T) continue;
    OT *row = O + (((size_t)b * T + r[i]) * H + h) * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++) wg_store2(row + 8 * j + 2 * tq, o[4 * j + 2 * i] * inv[i], o[4 * j + 2 * i + 1] * inv[i]);
  }
#endif
}

/* ---------------- host side ---------------- */

long g_wg_calls;
int g_wg_mode = -1; /* -1: not read yet; 0 off, 1 on, 2 on with the overlap inside a warpgroup */

int wg_mode() {
  if (g_wg_mode < 0) {
    const char *e = getenv("M2_ATTN_WGMMA");
    g_wg_mode = e && !strcmp(e, "0") ? 0 : e && !strcmp(e, "2") ? 2 : 1; /* on unless 0 (parity on an H100, 2026-12-07) */
  }
  return g_wg_mode;
}

/* Whether the current device can run the kernel: sm_90 and this build's kernel made for it (sm_90a machine code). */
bool wg_device_ok() {
  static signed char ok[64]; /* per device: 0 unknown, 1 yes, -1 no */
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (!ok[dev]) {
    int major = 0, minor = 0;
    cudaFuncAttributes fa;
    bool yes = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
               cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
               minor == 0 && cudaFuncGetAttributes(&fa, k_fwd_wg<64, false, float>) == cudaSuccess && fa.binaryVersion == 90;
    ok[dev] = yes ? 1 : -1;
  }
  return ok[dev] > 0;
}

template <int D, bool PIPE, class OT>
cudaError_t launch_wg(const m2_attention_attr &d, const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t q_sb,
                      int64_t q_st, int64_t q_sh, int64_t kv_sb, int64_t kv_st, int64_t kv_sh, OT *o, float *lse,
                      float scale, bool causal, cudaStream_t st) {
  constexpr int BM = 64 * wg_cfg<D>::NWG;
  const size_t bytes = wg_smem_bytes<D, PIPE>();
  cudaError_t e = cudaFuncSetAttribute(k_fwd_wg<D, PIPE, OT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((d.T + BM - 1) / BM), (unsigned)(d.B * d.H));
  k_fwd_wg<D, PIPE, OT><<<grid, wg_cfg<D>::NWG * 128, bytes, st>>>(q, k, v, q_sb, q_st, q_sh, kv_sb, kv_st, kv_sh, o, lse,
                                                                (int)d.T, (int)d.H, (int)d.S, (int)d.Hkv,
                                                                scale * LOG2E, causal);
  return cudaGetLastError();
}

} /* namespace */

extern "C" int m2_cuda_attention_wgmma(int set) {
  const int prev = wg_mode();
  if (set >= 0) g_wg_mode = set == 2 ? 2 : set ? 1 : 0;
  return prev;
}
extern "C" long m2_cuda_attention_wgmma_calls(void) { return g_wg_calls; }
extern "C" int m2_cuda_attention_wgmma_device(void) {
#ifdef M2_WGMMA_BUILT
  return wg_device_ok() ? 1 : 0;
#else
  return 0;
#endif
}

bool att_wgmma_fwd_ok(const m2_attention_attr *d) {
#ifndef M2_WGMMA_BUILT
  (void)d;
  return false;
#else
  return wg_mode() > 0 && (d->D == 64 || d->D == 128) && d->B * d->H <= 65535 && wg_device_ok();
#endif
}

template <class OT>
static cudaError_t wg_fwd_t(const m2_attention_attr *d, const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t q_sb,
                     int64_t q_st, int64_t q_sh, int64_t kv_sb, int64_t kv_st, int64_t kv_sh, OT *o, float *lse,
                     float scale, bool causal, cudaStream_t st) {
  const bool pipe = wg_mode() == 2;
  return d->D == 64 ? (pipe ? launch_wg<64, true, OT> : launch_wg<64, false, OT>)(*d, q, k, v, q_sb, q_st, q_sh, kv_sb,
                                                                                    kv_st, kv_sh, o, lse, scale,
                                                                                    causal, st)
                    : (pipe ? launch_wg<128, true, OT> : launch_wg<128, false, OT>)(*d, q, k, v, q_sb, q_st, q_sh,
                                                                                      kv_sb, kv_st, kv_sh, o, lse,
                                                                                      scale, causal, st);
}

cudaError_t att_wgmma_fwd(const m2_attention_attr *d, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          int64_t q_sb, int64_t q_st, int64_t q_sh, int64_t kv_sb, int64_t kv_st, int64_t kv_sh,
                          void *o, bool o_bf16, float *lse, float scale, bool causal, cudaStream_t st) {
  if (d->B * d->T * d->H == 0) return cudaSuccess;
  cudaError_t e = o_bf16 ? wg_fwd_t(d, q, k, v, q_sb, q_st, q_sh, kv_sb, kv_st, kv_sh, (uint16_t *)o, lse, scale,
                                    causal, st)
                         : wg_fwd_t(d, q, k, v, q_sb, q_st, q_sh, kv_sb, kv_st, kv_sh, (float *)o, lse, scale, causal,
                                    st);
  if (e == cudaSuccess) g_wg_calls++;
  return e;
}
