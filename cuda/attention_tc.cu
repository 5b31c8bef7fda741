/* attention_tc.cu — softmax attention on tensor cores (flash-attention-2 style), the path of the attention op when
 * its products are bf16 (m2_attention_attr.bf16, set from m2_matmul_precision() for f32 tensors; DESIGN 3.4).
 *
 * Every product takes bf16 operands and accumulates in fp32 (mma.sync m16n8k16): S = q k^T and o = P v forward;
 * S, dP = do v^T, dq = dS k, dv = P^T do, dk = dS^T q backward. Softmax statistics, the output, lse and D_t = do.o
 * stay fp32; P and dS are rounded to bf16 only as operands of the next product. q, k, v (and do) are first packed
 * into bf16 (B, heads, L, D) scratch, so a tile of rows is one contiguous block that cp.async stages in shared memory
 * (rows padded to D + 8 elements: ldmatrix reads them without bank conflicts). Head dims 32, 64, 128.
 *
 *   forward  grid (ceil(T/64), B*H), 4 warps of 16 query rows; key/value tiles of 64 double-buffered; the online
 *            softmax in registers (log2 domain); the heaviest (latest) query blocks start first.
 *   dq       grid (ceil(T/64), B*H), 4 warps of 16 query rows; key tiles of 64 (D <= 64) or 32.
 *   dk, dv   grid (ceil(S/64), B*Hkv), 4 warps of 16 key rows; query tiles of 32 over every query head of the group;
 *            summation order fixed (deterministic, no atomics).
 * Masks: query t reads keys s < n(t) = clamp(t + S - T + 1, 0, S) when causal, all S otherwise; a row with no key
 * gives o = 0 and lse = -inf, and no gradient.
 * M2_ATTN_V2 (m2_cuda_attn_v2; on by default since 2026-12-07, =0 turns it off) takes the k2_* kernels of attention_tc_v2.cuh instead: operands
 * read in place through strides (no packing; bf16 q, k, v left bf16 by the dispatcher, outputs in their dtype) and
 * a one-pass backward with an fp32 atomicAdd for dq (not deterministic in its last bits). */
#include "ops_common.cuh"
#include "mma.cuh"
#include "attention_common.cuh"
#include "attention_tc.h"
#include "attention_wgmma.h"
#include "ops_mixers_entry.h"

namespace {

constexpr int NW = 4;        /* warps a block */
constexpr int BM = 16 * NW;  /* rows a block: queries (forward, dq) or keys (dk, dv) */
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

__device__ __forceinline__ float ex2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

/* Stage rows r0 .. r0 + R - 1 of a packed (L, D) bf16 matrix g into shared rows of D + 8; rows >= L become 0. */
template <int D, int R>
__device__ __forceinline__ void stage(uint16_t *s, const uint16_t *g, int r0, int L) {
  constexpr int CH = D / 8; /* 16-byte chunks a row */
  for (int i = threadIdx.x; i < R * CH; i += NW * 32) {
    int r = i / CH, c = i % CH;
    bool ok = r0 + r < L;
    mma_cp16(s + r * (D + 8) + c * 8, g + (size_t)(ok ? r0 + r : 0) * D + c * 8, ok);
  }
}

/* Start staging key/value tile it + 1 (of ntile, N rows each) into the other half of the double buffers Ks, Vs,
 * then wait for tile it and for every warp (the caller's previous iteration has finished reading that half). */
template <int D, int N>
__device__ __forceinline__ void next_kv(uint16_t *Ks, uint16_t *Vs, const uint16_t *Kg, const uint16_t *Vg, int it,
                                        int ntile, int S) {
  if (it + 1 < ntile) {
    const int nb = ((it + 1) & 1) * N * (D + 8);
    stage<D, N>(Ks + nb, Kg, (it + 1) * N, S);
    stage<D, N>(Vs + nb, Vg, (it + 1) * N, S);
    mma_cp_commit();
    mma_cp_wait<1>();
  } else {
    mma_cp_wait<0>();
  }
  __syncthreads();
}

/* A fragments of this warp's 16 rows (w16 = 16 w) of a staged tile, all D / 16 k-steps. */
template <int D>
__device__ __forceinline__ void load_a(uint32_t a[D / 16][4], const uint16_t *s, int w16, int lane) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) mma_ldsm4(a[ks], s + (w16 + (lane & 15)) * (D + 8) + ks * 16 + (lane >> 4) * 8);
}

/* acc[N/8][4] = A (16 x D, fragments a) times X^T for a staged tile X of N rows (N x D): acc[j] covers rows
 * 8j .. 8j + 7 of X. */
template <int D, int N>
__device__ __forceinline__ void mul_abt(float acc[N / 8][4], const uint32_t a[D / 16][4], const uint16_t *x, int lane) {
#pragma unroll
  for (int j = 0; j < N / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
    for (int np = 0; np < N / 16; np++) {
      uint32_t b[4];
      mma_ldsm4(b, x + (np * 16 + (lane & 7) + (lane >> 4) * 8) * (D + 8) + ks * 16 + ((lane >> 3) & 1) * 8);
      mma_bf16(acc[2 * np], a[ks], b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a[ks], b[2], b[3]);
    }
}

/* acc[D/8][4] += P (16 x N, bf16 fragments p) times a staged tile X (N x D). */
template <int D, int N>
__device__ __forceinline__ void mul_ab(float acc[D / 8][4], const uint32_t p[N / 16][4], const uint16_t *x, int lane) {
#pragma unroll
  for (int kk = 0; kk < N / 16; kk++)
#pragma unroll
    for (int dp = 0; dp < D / 16; dp++) {
      uint32_t b[4];
      mma_ldsm4t(b, x + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * (D + 8) + dp * 16 + (lane >> 4) * 8);
      mma_bf16(acc[2 * dp], p[kk], b[0], b[1]);
      mma_bf16(acc[2 * dp + 1], p[kk], b[2], b[3]);
    }
}

/* The C fragments c[N/8][4] (16 x N, fp32) as bf16 A fragments (16 x N) of the next product. */
template <int N>
__device__ __forceinline__ void to_a(uint32_t a[N / 16][4], const float c[N / 8][4]) {
#pragma unroll
  for (int j = 0; j < N / 8; j++) {
    a[j >> 1][(j & 1) * 2] = mma_pack(c[j][0], c[j][1]);
    a[j >> 1][(j & 1) * 2 + 1] = mma_pack(c[j][2], c[j][3]);
  }
}

/* Store rows (g, g + 8 of this warp: r[0], r[1]) of acc (16 x D) times f to dst rows (row < L) of stride `ld`. */
template <int D>
__device__ __forceinline__ void store_rows(float *dst, int64_t ld, const float acc[D / 8][4], const int r[2], int L,
                                           const float f[2], int tq) {
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (r[i] >= L) continue;
    float *row = dst + (int64_t)r[i] * ld;
#pragma unroll
    for (int j = 0; j < D / 8; j++)
      *(float2 *)(row + j * 8 + 2 * tq) = make_float2(acc[j][2 * i] * f[i], acc[j][2 * i + 1] * f[i]);
  }
}

/* ---------------- packing ---------------- */

/* y (B, NH, L, D) bf16 <- x (B, L, NH, D). */
template <class T>
__global__ void k_pack(const T *x, uint16_t *y, int64_t B, int64_t L, int64_t NH, int64_t D) {
  int64_t n = B * L * NH * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = i % D, r = i / D, nh = r % NH;
    r /= NH;
    int64_t l = r % L, b = r / L;
    y[((b * NH + nh) * L + l) * D + d] = __bfloat16_as_ushort(__float2bfloat16_rn(to_f(x[i])));
  }
}

/* do (B, T, H, D) -> bf16 (B, H, T, D) and D_t = sum_d bf16(do) o (B, H, T); one warp a row. */
template <class T>
__global__ void k_prep(const T *dout, const T *o, uint16_t *dop, float *Dt, int64_t B, int64_t T_, int64_t H, int D) {
  int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= B * T_ * H) return;
  int64_t h = row % H, bt = row / H, t = bt % T_, b = bt / T_, dst = (b * H + h) * T_ + t;
  float acc = 0;
  for (int d = lane; d < D; d += 32) {
    __nv_bfloat16 g = __float2bfloat16_rn(to_f(dout[row * D + d]));
    dop[dst * D + d] = __bfloat16_as_ushort(g);
    acc += __bfloat162float(g) * to_f(o[row * D + d]);
  }
  acc = warp_sum(acc);
  if (lane == 0) Dt[dst] = acc;
}

/* ---------------- forward ---------------- */

/* O (B, T, H, D) f32, lse (B, H, T) f32 (natural log). */
template <int D>
__global__ void __launch_bounds__(NW * 32) k_fwd(const uint16_t *Q, const uint16_t *K, const uint16_t *V, float *O,
                                                 float *lse, int T, int H, int S, int Hkv, float sl2, bool causal) {
  constexpr int LD = D + 8, BN = 64;
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t *Qs = sm, *Ks = Qs + BM * LD, *Vs = Ks + 2 * BN * LD;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / Hkv);
  const int t0 = (gridDim.x - 1 - blockIdx.x) * BM; /* the latest (heaviest) query blocks first */
  const uint16_t *Kg = K + (size_t)(b * Hkv + kh) * S * D, *Vg = V + (size_t)(b * Hkv + kh) * S * D;
  const int nmax = att_keys(min(t0 + BM, T) - 1, T, S, causal), nmin = att_keys(t0, T, S, causal);
  const int ntile = (nmax + BN - 1) / BN;
  stage<D, BM>(Qs, Q + (size_t)bh * T * D, t0, T);
  if (ntile > 0) stage<D, BN>(Ks, Kg, 0, S), stage<D, BN>(Vs, Vg, 0, S);
  mma_cp_commit();
  const int r[2] = {t0 + 16 * w + g, t0 + 16 * w + g + 8};
  const int nv[2] = {att_keys(r[0], T, S, causal), att_keys(r[1], T, S, causal)};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0}, o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;
  uint32_t qa[D / 16][4];
  for (int it = 0; it < ntile; it++) {
    next_kv<D, BN>(Ks, Vs, Kg, Vg, it, ntile, S);
    if (it == 0) load_a<D>(qa, Qs, 16 * w, lane);
    const uint16_t *Kt = Ks + (it & 1) * BN * LD, *Vt = Vs + (it & 1) * BN * LD;
    float s[BN / 8][4];
    mul_abt<D, BN>(s, qa, Kt, lane);
    const int s0 = it * BN;
    const bool edge = s0 + BN > nmin; /* some key of this tile is hidden from some row */
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float x = s[j][e] * sl2;
        if (edge && s0 + 8 * j + 2 * tq + (e & 1) >= nv[e >> 1]) x = -INFINITY;
        s[j][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float ref[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      mx[i] = quad_max(mx[i]);
      ref[i] = mx[i] == -INFINITY ? 0.f : mx[i]; /* a row that has seen no key yet keeps p = 0 */
      float alpha = ex2(m[i] - ref[i]);
      m[i] = mx[i];
      l[i] *= alpha;
#pragma unroll
      for (int j = 0; j < D / 8; j++) o[j][2 * i] *= alpha, o[j][2 * i + 1] *= alpha;
    }
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        s[j][e] = ex2(s[j][e] - ref[e >> 1]);
        l[e >> 1] += s[j][e];
      }
    uint32_t pa[BN / 16][4];
    to_a<BN>(pa, s);
    mul_ab<D, BN>(o, pa, Vt, lane);
    __syncthreads(); /* the next iteration stages into the buffer just read */
  }
  mma_cp_wait<0>();
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] = quad_sum(l[i]);
    inv[i] = l[i] > 0 ? 1.0f / l[i] : 0.0f;
    if (tq == 0 && r[i] < T) lse[(size_t)bh * T + r[i]] = l[i] > 0 ? (m[i] + log2f(l[i])) * LN2 : -INFINITY;
  }
  store_rows<D>(O + ((size_t)b * T * H + h) * D, (int64_t)H * D, o, r, T, inv, tq);
}

/* ---------------- backward ---------------- */

/* lse (natural log) -> the log2-domain subtrahend of P = 2^(s sl2 - L2); a row without keys (-inf) gives P = 0. */
__device__ __forceinline__ float lse2(float L) { return L == -INFINITY ? INFINITY : L * LOG2E; }

/* dq (B, T, H, D) f32 = scale sum_s dS_ts k_s. */
template <int D>
__global__ void __launch_bounds__(NW * 32) k_dq(const uint16_t *Q, const uint16_t *K, const uint16_t *V,
                                                const uint16_t *dO, const float *lse, const float *Dt, float *dq, int T,
                                                int H, int S, int Hkv, float sl2, float scale, bool causal) {
  constexpr int LD = D + 8, BN = D <= 64 ? 64 : 32;
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t *Qs = sm, *Os = Qs + BM * LD, *Ks = Os + BM * LD, *Vs = Ks + 2 * BN * LD;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / Hkv);
  const int t0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const uint16_t *Kg = K + (size_t)(b * Hkv + kh) * S * D, *Vg = V + (size_t)(b * Hkv + kh) * S * D;
  const int ntile = (att_keys(min(t0 + BM, T) - 1, T, S, causal) + BN - 1) / BN;
  stage<D, BM>(Qs, Q + (size_t)bh * T * D, t0, T);
  stage<D, BM>(Os, dO + (size_t)bh * T * D, t0, T);
  if (ntile > 0) stage<D, BN>(Ks, Kg, 0, S), stage<D, BN>(Vs, Vg, 0, S);
  mma_cp_commit();
  const int r[2] = {t0 + 16 * w + g, t0 + 16 * w + g + 8};
  int nv[2];
  float L2[2], Dr[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    nv[i] = r[i] < T ? att_keys(r[i], T, S, causal) : 0;
    L2[i] = r[i] < T ? lse2(lse[(size_t)bh * T + r[i]]) : INFINITY;
    Dr[i] = r[i] < T ? Dt[(size_t)bh * T + r[i]] : 0.f;
  }
  float acc[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
  uint32_t qa[D / 16][4], da[D / 16][4];
  for (int it = 0; it < ntile; it++) {
    next_kv<D, BN>(Ks, Vs, Kg, Vg, it, ntile, S);
    if (it == 0) load_a<D>(qa, Qs, 16 * w, lane), load_a<D>(da, Os, 16 * w, lane);
    const uint16_t *Kt = Ks + (it & 1) * BN * LD, *Vt = Vs + (it & 1) * BN * LD;
    float s[BN / 8][4], dp[BN / 8][4];
    mul_abt<D, BN>(s, qa, Kt, lane);
    mul_abt<D, BN>(dp, da, Vt, lane);
    const int s0 = it * BN;
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int i = e >> 1;
        float p = s0 + 8 * j + 2 * tq + (e & 1) < nv[i] ? ex2(s[j][e] * sl2 - L2[i]) : 0.f;
        s[j][e] = p * (dp[j][e] - Dr[i]);
      }
    uint32_t dsa[BN / 16][4];
    to_a<BN>(dsa, s);
    mul_ab<D, BN>(acc, dsa, Kt, lane);
    __syncthreads();
  }
  mma_cp_wait<0>();
  const float f[2] = {scale, scale};
  store_rows<D>(dq + ((size_t)b * T * H + h) * D, (int64_t)H * D, acc, r, T, f, tq);
}

/* dk = scale sum_t dS_ts q_t, dv = sum_t P_ts do_t (B, S, Hkv, D) f32, summed over the query heads of kv head kh. */
template <int D>
__global__ void __launch_bounds__(NW * 32) k_dkv(const uint16_t *Q, const uint16_t *K, const uint16_t *V,
                                                 const uint16_t *dO, const float *lse, const float *Dt, float *dk,
                                                 float *dv, int T, int H, int S, int Hkv, float sl2, float scale,
                                                 bool causal) {
  constexpr int LD = D + 8, BQ = 32;
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t *Ks = sm, *Vs = Ks + BM * LD, *Qs = Vs + BM * LD, *Os = Qs + 2 * BQ * LD;
  float *Ls = (float *)(Os + 2 * BQ * LD), *Ds = Ls + 2 * BQ;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int bkh = blockIdx.y, b = bkh / Hkv, kh = bkh % Hkv, rep = H / Hkv, k0 = blockIdx.x * BM;
  const int tstart = causal ? max(0, k0 - (S - T)) : 0; /* the first query that sees key k0 */
  const int nqt = tstart < T ? (T - tstart + BQ - 1) / BQ : 0, total = rep * nqt;
  stage<D, BM>(Ks, K + (size_t)bkh * S * D, k0, S);
  stage<D, BM>(Vs, V + (size_t)bkh * S * D, k0, S);
  auto stage_q = [&](int it, int buf) {
    const int hh = it / nqt, tq0 = tstart + (it % nqt) * BQ;
    const size_t bh = (size_t)b * H + kh * rep + hh;
    stage<D, BQ>(Qs + buf * BQ * LD, Q + bh * T * D, tq0, T);
    stage<D, BQ>(Os + buf * BQ * LD, dO + bh * T * D, tq0, T);
    for (int i = threadIdx.x; i < BQ; i += NW * 32) {
      const int t = tq0 + i;
      Ls[buf * BQ + i] = t < T ? lse2(lse[bh * T + t]) : INFINITY;
      Ds[buf * BQ + i] = t < T ? Dt[bh * T + t] : 0.f;
    }
  };
  if (total > 0) stage_q(0, 0);
  mma_cp_commit();
  const int r[2] = {k0 + 16 * w + g, k0 + 16 * w + g + 8}; /* this lane's key rows */
  float ak[D / 8][4], av[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) ak[j][e] = av[j][e] = 0;
  uint32_t ka[D / 16][4], va[D / 16][4];
  for (int it = 0; it < total; it++) {
    const int buf = it & 1;
    if (it + 1 < total) {
      stage_q(it + 1, buf ^ 1);
      mma_cp_commit();
      mma_cp_wait<1>();
    } else {
      mma_cp_wait<0>();
    }
    __syncthreads();
    if (it == 0) load_a<D>(ka, Ks, 16 * w, lane), load_a<D>(va, Vs, 16 * w, lane);
    const uint16_t *Qt = Qs + buf * BQ * LD, *Ot = Os + buf * BQ * LD;
    const float *Lt = Ls + buf * BQ, *Dq = Ds + buf * BQ;
    const int tq0 = tstart + (it % nqt) * BQ;
    float s[BQ / 8][4], dp[BQ / 8][4];
    mul_abt<D, BQ>(s, ka, Qt, lane); /* S^T: rows keys, columns queries */
    mul_abt<D, BQ>(dp, va, Ot, lane);
#pragma unroll
    for (int j = 0; j < BQ / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = 8 * j + 2 * tq + (e & 1), t = tq0 + c, key = r[e >> 1];
        const bool vis = t < T && key < S && (!causal || key <= t + S - T);
        const float p = vis ? ex2(s[j][e] * sl2 - Lt[c]) : 0.f;
        s[j][e] = p;
        dp[j][e] = p * (dp[j][e] - Dq[c]);
      }
    uint32_t pa[BQ / 16][4], dsa[BQ / 16][4];
    to_a<BQ>(pa, s);
    to_a<BQ>(dsa, dp);
    mul_ab<D, BQ>(av, pa, Ot, lane);
    mul_ab<D, BQ>(ak, dsa, Qt, lane);
    __syncthreads();
  }
  mma_cp_wait<0>();
  const float fk[2] = {scale, scale}, fv[2] = {1.f, 1.f};
  const int64_t ld = (int64_t)Hkv * D;
  if (dk) store_rows<D>(dk + ((size_t)b * S * Hkv + kh) * D, ld, ak, r, S, fk, tq);
  if (dv) store_rows<D>(dv + ((size_t)b * S * Hkv + kh) * D, ld, av, r, S, fv, tq);
}

#include "attention_tc_v2.cuh" /* the M2_ATTN_V2 kernels (k2_*) */

/* ---------------- host side ---------------- */

long g_tc_calls;

template <class F> cudaError_t smem_opt(F f, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

cudaError_t pack(const m2_tensor *x, uint16_t *y, int64_t B, int64_t L, int64_t NH, int64_t D, cudaStream_t st) {
  int64_t n = B * L * NH * D;
  if (n == 0) return cudaSuccess;
  unsigned grid = (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
  if (x->dtype == M2_F32) k_pack<float><<<grid, 256, 0, st>>>((const float *)m2_data(x), y, B, L, NH, D);
  else k_pack<bf16><<<grid, 256, 0, st>>>((const bf16 *)m2_data(x), y, B, L, NH, D);
  return cudaGetLastError();
}

/* bf16 scratch of n elements (a tensor, so the memory pool owns it). */
m2_tensor *scratch16(m2_device dev, int64_t n) { return m2_empty(M2_BF16, dev, 1, &n); }

template <int D>
cudaError_t launch_fwd(const m2_attention_attr &d, const uint16_t *q, const uint16_t *k, const uint16_t *v, float *o, float *lse,
                       float scale, bool causal, cudaStream_t st) {
  const size_t bytes = sizeof(uint16_t) * (size_t)(BM + 4 * 64) * (D + 8);
  cudaError_t e = smem_opt(k_fwd<D>, bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((d.T + BM - 1) / BM), (unsigned)(d.B * d.H));
  k_fwd<D><<<grid, NW * 32, bytes, st>>>(q, k, v, o, lse, (int)d.T, (int)d.H, (int)d.S, (int)d.Hkv, scale * LOG2E,
                                         causal);
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_bwd(const m2_attention_attr &d, const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *dO,
                       const float *lse, const float *Dt, float *dq, float *dk, float *dv, float scale, bool causal,
                       cudaStream_t st) {
  cudaError_t e = cudaSuccess;
  const int T = (int)d.T, H = (int)d.H, S = (int)d.S, Hkv = (int)d.Hkv;
  if (dq) {
    constexpr int BN = D <= 64 ? 64 : 32;
    const size_t bytes = sizeof(uint16_t) * (size_t)(2 * BM + 4 * BN) * (D + 8);
    e = smem_opt(k_dq<D>, bytes);
    dim3 grid((unsigned)((d.T + BM - 1) / BM), (unsigned)(d.B * d.H));
    if (e == cudaSuccess)
      k_dq<D><<<grid, NW * 32, bytes, st>>>(q, k, v, dO, lse, Dt, dq, T, H, S, Hkv, scale * LOG2E, scale, causal),
          e = cudaGetLastError();
  }
  if (e == cudaSuccess && (dk || dv)) {
    const size_t bytes = sizeof(uint16_t) * (size_t)(2 * BM + 4 * 32) * (D + 8) + sizeof(float) * 4 * 32;
    e = smem_opt(k_dkv<D>, bytes);
    dim3 grid((unsigned)((d.S + BM - 1) / BM), (unsigned)(d.B * d.Hkv));
    if (e == cudaSuccess)
      k_dkv<D><<<grid, NW * 32, bytes, st>>>(q, k, v, dO, lse, Dt, dk, dv, T, H, S, Hkv, scale * LOG2E, scale, causal),
          e = cudaGetLastError();
  }
  return e;
}

#define ATT_TC_DISPATCH(D, call) \
  ((D) == 32 ? call<32> : (D) == 64 ? call<64> : call<128>)

/* ---------------- host side of the M2_ATTN_V2 path ---------------- */

int g_v2 = -1; /* -1: the environment not read yet */
long g_v2_calls;

bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The (B, L, NH, D) view of a contiguous bf16 tensor's data p. */
att_v view_of(const void *p, int64_t L, int64_t NH, int64_t D) {
  return att_v{(const uint16_t *)p, L * NH * D, NH * D, D};
}

/* x (a (B, L, NH, D) f32 or bf16 input) as a bf16 operand: bf16 read in place when 16-byte aligned; f32 through
 * k2_cvt into scratch *tmp (same layout); anything unaligned copied by m2_clone_raw (round to nearest, as k2_cvt). */
cudaError_t operand(const m2_tensor *x, int64_t L, int64_t NH, int64_t D, m2_tensor **tmp, att_v *v,
                    cudaStream_t st) {
  const void *p = m2_data(x);
  if (x->dtype == M2_BF16 && al16(p)) {
    *v = view_of(p, L, NH, D);
    return cudaSuccess;
  }
  if (x->dtype == M2_F32 && al16(p)) {
    const int64_t n = m2_numel(x);
    if (!(*tmp = scratch16(x->device, n))) return cudaErrorMemoryAllocation;
    const int64_t n8 = n / 8; /* D is a multiple of 8 */
    if (n8 > 0)
      k2_cvt<<<(unsigned)((n8 + 255) / 256 < 8192 ? (n8 + 255) / 256 : 8192), 256, 0, st>>>(
          (const float *)p, (uint16_t *)m2_data(*tmp), n8);
    *v = view_of(m2_data(*tmp), L, NH, D);
    return cudaGetLastError();
  }
  if (!(*tmp = m2_clone_raw(x, M2_BF16, x->device))) return cudaErrorMemoryAllocation;
  *v = view_of(m2_data(*tmp), L, NH, D);
  return cudaSuccess;
}

template <int D, class OT>
cudaError_t launch_fwd2(const m2_attention_attr &d, att_v q, att_v k, att_v v, OT *o, float *lse, float scale,
                        bool causal, cudaStream_t st) {
  const size_t bytes = sizeof(uint16_t) * (size_t)(BM + 4 * 64) * (D + 8);
  cudaError_t e = smem_opt(k2_fwd<D, OT>, bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((d.T + BM - 1) / BM), (unsigned)(d.B * d.H));
  k2_fwd<D, OT><<<grid, NW * 32, bytes, st>>>(q, k, v, o, lse, (int)d.T, (int)d.H, (int)d.S, (int)d.Hkv,
                                             scale * LOG2E, causal);
  return cudaGetLastError();
}
template <int D>
cudaError_t launch_fwd2_any(const m2_attention_attr &d, att_v q, att_v k, att_v v, m2_tensor *o, float *lse,
                            float scale, bool causal, cudaStream_t st) {
  if (o->dtype == M2_BF16) return launch_fwd2<D, bf16>(d, q, k, v, (bf16 *)m2_data(o), lse, scale, causal, st);
  return launch_fwd2<D, float>(d, q, k, v, (float *)m2_data(o), lse, scale, causal, st);
}

template <int D, class OT>
cudaError_t launch_bwd2(const m2_attention_attr &d, att_v q, att_v k, att_v v, att_v dO, const float *lse,
                        const float *Dt, float *dqa, OT *dk, OT *dv, float scale, bool causal, cudaStream_t st) {
  if (d.S == 0) return cudaSuccess;
  const size_t bytes = sizeof(uint16_t) * ((size_t)(2 * BM + 4 * 32) * (D + 8) + (size_t)BM * 40) +
                       sizeof(float) * 4 * 32;
  cudaError_t e = smem_opt(k2_bwd<D, OT>, bytes);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((d.S + BM - 1) / BM), (unsigned)(d.B * d.Hkv));
  k2_bwd<D, OT><<<grid, NW * 32, bytes, st>>>(q, k, v, dO, lse, Dt, dqa, dk, dv, (int)d.T, (int)d.H, (int)d.S,
                                             (int)d.Hkv, scale * LOG2E, scale, causal);
  return cudaGetLastError();
}
template <int D>
cudaError_t launch_bwd2_any(const m2_attention_attr &d, att_v q, att_v k, att_v v, att_v dO, const float *lse,
                            const float *Dt, float *dqa, m2_tensor *dk, m2_tensor *dv, m2_dtype dt, float scale,
                            bool causal, cudaStream_t st) {
  if (dt == M2_BF16)
    return launch_bwd2<D, bf16>(d, q, k, v, dO, lse, Dt, dqa, dk ? (bf16 *)m2_data(dk) : NULL,
                                dv ? (bf16 *)m2_data(dv) : NULL, scale, causal, st);
  return launch_bwd2<D, float>(d, q, k, v, dO, lse, Dt, dqa, dk ? (float *)m2_data(dk) : NULL,
                               dv ? (float *)m2_data(dv) : NULL, scale, causal, st);
}

template <int D>
cudaError_t launch_prep2(const m2_tensor *dO, const m2_tensor *o, uint16_t *dob, float *Dt, int64_t rows, int T,
                         int H, cudaStream_t st) {
  const int64_t threads = rows * (D / 8);
  const unsigned grid = (unsigned)((threads + 255) / 256);
  if (dO->dtype == M2_BF16)
    k2_prep<bf16, D><<<grid, 256, 0, st>>>((const bf16 *)m2_data(dO), (const bf16 *)m2_data(o), NULL, Dt, rows, T, H);
  else
    k2_prep<float, D><<<grid, 256, 0, st>>>((const float *)m2_data(dO), (const float *)m2_data(o), dob, Dt, rows, T,
                                            H);
  return cudaGetLastError();
}

/* The v2 path takes the call: switch on and q, k, v of one dtype (f32, or bf16 when the dispatcher left them). */
bool v2_takes(const m2_opcall *c) {
  return m2_cuda_attn_v2(-1) == 1 && c->in[1]->dtype == c->in[0]->dtype && c->in[2]->dtype == c->in[0]->dtype;
}

m2_status att_v2_fwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, m2_tensor *o, m2_tensor *lse) {
  m2_tensor *tmp[3] = {0};
  att_v qv, kv, vv;
  cudaError_t e = operand(c->in[0], d->T, d->H, d->D, &tmp[0], &qv, st);
  if (e == cudaSuccess) e = operand(c->in[1], d->S, d->Hkv, d->D, &tmp[1], &kv, st);
  if (e == cudaSuccess) e = operand(c->in[2], d->S, d->Hkv, d->D, &tmp[2], &vv, st);
  /* ---- q, k, v: bf16 pointers + element strides (batch, row, head) ---- */
  if (e == cudaSuccess && att_wgmma_fwd_ok(d)) /* Hopper: the wgmma forward reads the same strided operands */
    e = att_wgmma_fwd(d, qv.p, kv.p, vv.p, qv.sb, qv.sr, qv.sh, kv.sb, kv.sr, kv.sh, m2_data(o), o->dtype == M2_BF16,
                      (float *)m2_data(lse), (float)d->scale, d->causal, st);
  else if (e == cudaSuccess)
    e = ATT_TC_DISPATCH(d->D, launch_fwd2_any)(*d, qv, kv, vv, o, (float *)m2_data(lse), (float)d->scale,
                                                d->causal, st);
  m2_release(tmp[0]), m2_release(tmp[1]), m2_release(tmp[2]);
  if (e != cudaSuccess)
    return m2_fail(M2_ERR_CUDA, "attention: tensor-core forward (v2) failed: %s", cudaGetErrorString(e));
  g_tc_calls++, g_v2_calls++;
  return M2_OK;
}

m2_status att_v2_bwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, const m2_tensor *dO,
                     const m2_tensor *o, const float *lse, float *Dt, m2_tensor *const din[3]) {
  const m2_dtype dt = c->in[0]->dtype;
  const m2_device dev = c->in[0]->device;
  m2_tensor *tmp[7] = {0}; /* q, k, v, do operands; the f32 dq buffer; aligned copies of do, o */
  att_v qv, kv, vv, gv;
  cudaError_t e = operand(c->in[0], d->T, d->H, d->D, &tmp[0], &qv, st);
  if (e == cudaSuccess) e = operand(c->in[1], d->S, d->Hkv, d->D, &tmp[1], &kv, st);
  if (e == cudaSuccess) e = operand(c->in[2], d->S, d->Hkv, d->D, &tmp[2], &vv, st);
  const int64_t rows = d->B * d->T * d->H, n = rows * d->D;
  /* do and o in q's dtype (ops_attention.cu), 16-byte aligned for k2_prep's loads (else copied) */
  if (e == cudaSuccess && (!al16(m2_data(dO)) || dO->dtype != dt) && !(dO = tmp[5] = m2_clone_raw(dO, dt, dev)))
    e = cudaErrorMemoryAllocation;
  if (e == cudaSuccess && (!al16(m2_data(o)) || o->dtype != dt) && !(o = tmp[6] = m2_clone_raw(o, dt, dev)))
    e = cudaErrorMemoryAllocation;
  if (e == cudaSuccess && dt == M2_F32 && !(tmp[3] = scratch16(dev, n))) e = cudaErrorMemoryAllocation;
  if (e == cudaSuccess) {
    e = ATT_TC_DISPATCH(d->D, launch_prep2)(dO, o, tmp[3] ? (uint16_t *)m2_data(tmp[3]) : NULL, Dt, rows,
                                            (int)d->T, (int)d->H, st);
    gv = view_of(tmp[3] ? m2_data(tmp[3]) : m2_data(dO), d->T, d->H, d->D);
  }
  /* dq: atomics into din[0] itself when it is f32 (zeroed by the caller), else into an f32 buffer rounded after */
  float *dqa = NULL;
  if (e == cudaSuccess && din[0]) {
    if (dt == M2_F32) dqa = (float *)m2_data(din[0]);
    else if (!(tmp[4] = m2_empty(M2_F32, dev, 1, &n))) e = cudaErrorMemoryAllocation;
    else {
      dqa = (float *)m2_data(tmp[4]);
      e = cudaMemsetAsync(dqa, 0, sizeof(float) * (size_t)n, st);
    }
  }
  if (e == cudaSuccess && att_wgmma_bwd_ok(d)) /* Hopper, M2_ATTN_BWD_WGMMA=1: the warpgroup backward, same operands */
    e = att_wgmma_bwd(d, {qv.p, qv.sb, qv.sr, qv.sh}, {kv.p, kv.sb, kv.sr, kv.sh}, {vv.p, vv.sb, vv.sr, vv.sh},
                      {gv.p, gv.sb, gv.sr, gv.sh}, lse, Dt, dqa, din[1] ? m2_data(din[1]) : NULL,
                      din[2] ? m2_data(din[2]) : NULL, dt == M2_BF16, (float)d->scale, d->causal, st);
  else if (e == cudaSuccess)
    e = ATT_TC_DISPATCH(d->D, launch_bwd2_any)(*d, qv, kv, vv, gv, lse, Dt, dqa, din[1], din[2], dt,
                                                (float)d->scale, d->causal, st);
  if (e == cudaSuccess && tmp[4] && n / 8 > 0) {
    const int64_t n8 = n / 8;
    k2_cvt<<<(unsigned)((n8 + 255) / 256 < 8192 ? (n8 + 255) / 256 : 8192), 256, 0, st>>>(
        dqa, (uint16_t *)m2_data(din[0]), n8);
    e = cudaGetLastError();
  }
  for (int i = 0; i < 7; i++) m2_release(tmp[i]);
  if (e != cudaSuccess)
    return m2_fail(M2_ERR_CUDA, "attention: tensor-core backward (v2) failed: %s", cudaGetErrorString(e));
  g_tc_calls++, g_v2_calls++;
  return M2_OK;
}

} /* namespace */

extern "C" int m2_cuda_attn_v2(int set) {
  if (set >= 0) g_v2 = set ? 1 : 0;
  else if (g_v2 < 0) {
    const char *e = getenv("M2_ATTN_V2"); /* on unless 0 (parity on an H100, 2026-12-07: cuda_ops_attention) */
    g_v2 = !(e && strcmp(e, "0") == 0);
  }
  return g_v2;
}

extern "C" long m2_cuda_attention_v2_calls(void) { return g_v2_calls; }

/* Whether the tensor-core kernels take this all-bf16 call as it is (the dispatcher then leaves it unconverted:
 * m2_cast_register_native): the v2 path, bf16 products, a head dim they take. */
extern "C" bool m2_att_tc_takes_bf16(const m2_opcall *c) {
  const m2_attention_attr *d = M2_ATTR(c, m2_attention_attr);
  return d->bf16 && v2_takes(c) && c->in[0]->dtype == M2_BF16 && (d->D == 32 || d->D == 64 || d->D == 128);
}

bool m2_att_tc_applies(const m2_opcall *c, const m2_attention_attr *d) {
  if (d->bf16 && c->in[0]->dtype == M2_BF16) return m2_att_tc_takes_bf16(c); /* only the v2 path takes bf16 */
  return d->bf16 && c->in[0]->dtype == M2_F32 && (d->D == 32 || d->D == 64 || d->D == 128);
}

extern "C" long m2_cuda_attention_tc_calls(void) { return g_tc_calls; }

m2_status m2_att_tc_fwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, m2_tensor *o, m2_tensor *lse) {
  if (v2_takes(c)) return att_v2_fwd(c, d, st, o, lse); /* M2_ATTN_V2 (the default) */
  const m2_device dev = c->in[0]->device;
  m2_tensor *q = scratch16(dev, d->B * d->T * d->H * d->D), *k = scratch16(dev, d->B * d->S * d->Hkv * d->D),
            *v = scratch16(dev, d->B * d->S * d->Hkv * d->D);
  m2_status s = q && k && v ? M2_OK : m2_errcode();
  cudaError_t e = cudaSuccess;
  if (s == M2_OK) {
    uint16_t *qp = (uint16_t *)m2_data(q), *kp = (uint16_t *)m2_data(k), *vp = (uint16_t *)m2_data(v);
    e = pack(c->in[0], qp, d->B, d->T, d->H, d->D, st);
    if (e == cudaSuccess) e = pack(c->in[1], kp, d->B, d->S, d->Hkv, d->D, st);
    if (e == cudaSuccess) e = pack(c->in[2], vp, d->B, d->S, d->Hkv, d->D, st);
    if (e == cudaSuccess && att_wgmma_fwd_ok(d)) /* packed (B, NH, L, D): strides batch NH L D, row D, head L D */
      e = att_wgmma_fwd(d, qp, kp, vp, d->H * d->T * d->D, d->D, d->T * d->D, d->Hkv * d->S * d->D, d->D,
                        d->S * d->D, m2_data(o), false, (float *)m2_data(lse), (float)d->scale, d->causal, st);
    else if (e == cudaSuccess)
      e = ATT_TC_DISPATCH(d->D, launch_fwd)(*d, qp, kp, vp, (float *)m2_data(o), (float *)m2_data(lse),
                                             (float)d->scale, d->causal, st);
    if (e != cudaSuccess)
      s = m2_fail(M2_ERR_CUDA, "attention: tensor-core forward launch failed: %s", cudaGetErrorString(e));
    else g_tc_calls++;
  }
  m2_release(q), m2_release(k), m2_release(v);
  return s;
}

m2_status m2_att_tc_bwd(const m2_opcall *c, const m2_attention_attr *d, cudaStream_t st, const m2_tensor *dO,
                        const m2_tensor *o, const float *lse, float *Dt, m2_tensor *const din[3]) {
  if (v2_takes(c)) return att_v2_bwd(c, d, st, dO, o, lse, Dt, din); /* M2_ATTN_V2 (the default) */
  const m2_device dev = c->in[0]->device;
  m2_tensor *q = scratch16(dev, d->B * d->T * d->H * d->D), *k = scratch16(dev, d->B * d->S * d->Hkv * d->D),
            *v = scratch16(dev, d->B * d->S * d->Hkv * d->D), *g = scratch16(dev, d->B * d->T * d->H * d->D);
  m2_status s = q && k && v && g ? M2_OK : m2_errcode();
  cudaError_t e = cudaSuccess;
  if (s == M2_OK) {
    uint16_t *qp = (uint16_t *)m2_data(q), *kp = (uint16_t *)m2_data(k), *vp = (uint16_t *)m2_data(v),
             *gp = (uint16_t *)m2_data(g);
    e = pack(c->in[0], qp, d->B, d->T, d->H, d->D, st);
    if (e == cudaSuccess) e = pack(c->in[1], kp, d->B, d->S, d->Hkv, d->D, st);
    if (e == cudaSuccess) e = pack(c->in[2], vp, d->B, d->S, d->Hkv, d->D, st);
    const int64_t rows = d->B * d->T * d->H;
    if (e == cudaSuccess && rows > 0) {
      k_prep<float><<<(unsigned)((rows + 7) / 8), 256, 0, st>>>((const float *)m2_data(dO), (const float *)m2_data(o),
                                                                 gp, Dt, d->B, d->T, d->H, (int)d->D);
      e = cudaGetLastError();
    }
    float *dq = din[0] ? (float *)m2_data(din[0]) : NULL, *dk = din[1] ? (float *)m2_data(din[1]) : NULL,
          *dv = din[2] ? (float *)m2_data(din[2]) : NULL;
    if (e == cudaSuccess && rows > 0)
      e = ATT_TC_DISPATCH(d->D, launch_bwd)(*d, qp, kp, vp, gp, lse, Dt, dq, dk, dv, (float)d->scale, d->causal, st);
    if (e != cudaSuccess)
      s = m2_fail(M2_ERR_CUDA, "attention: tensor-core backward launch failed: %s", cudaGetErrorString(e));
    else g_tc_calls++;
  }
  m2_release(q), m2_release(k), m2_release(v), m2_release(g);
  return s;
}
