/* gdn_chunk_bwd.cu — the chunked Gated DeltaNet backward (forward and notation: cuda/gdn_chunk.cu). Taken with the
 * switch at 1 (the default; m2_cuda_gdn_chunk_tc(1)) for the shapes and precisions the forward takes; it reads the
 * fp32 states before every chunk that either forward kept, (B, H, NS, V, K), seg 64.
 *
 * Per chunk, last first, with S its start state, dS' the gradient of the state after it, dO its output rows:
 *   dV' = P^T dO + K~ dS'                 dS = e^gam_L dS' + Q~^T dO - W^T dV'   (carried to the chunk before)
 *   dQ~ = dO S^T   dK~ = V' dS'^T   dW = -dV' S^T   dU = dV'   dP = dO V'^T (j <= r)
 *   X = T^T dU, Y = T^T dW, dT = dU (diag(beta) V)^T + dW (diag(beta e^gam) K)^T, dA = -T^T dT T^T (j < r)
 *   M = scale dP o G (G_rj = e^(gam_r - gam_j), j <= r),  N = dA o beta_r G,  N~ = N + N^T
 *   dq = scale e^gam dQ~ + M K
 *   dk = e^(gam_L - gam) dK~ + M^T Q + diag(beta e^gam) Y + N~ K
 *   dv = diag(beta) X
 *   dbeta_r = <X_r, v_r> + e^gam_r <Y_r, k_r> + sum_j dA_rj G_rj k_r.k_j
 *   dgam_r  = <dQ~_r, Q~_r> - <dK~_r, K~_r> + beta_r e^gam_r <Y_r, k_r> + (row r - column r) of (dP o P + dA o A)
 *   dgam_L += e^gam_L <S, dS'> + sum_j <dK~_j, K~_j>;   dg = the reverse cumsum of dgam within the chunk
 *   dh0 = dS of chunk 0
 * (checked against finite differences in float64 before these kernels were written.)
 *
 * Kernels, after prep runs again (it also writes T, K K^T and Q K^T in fp32 here):
 *   bscan  grid (V / 64, B H), 8 warps: the chunks last first with dS (K x 64 columns) in mma accumulators;
 *          per chunk V' = U - W S, dV' (bf16 into scratch), dS' (bf16 into scratch (BH, NC, K, V)), the block's
 *          part of <S, dS'>, then dS. dh0 at the end.
 *   bgrad  grid (K / 64, NC, B H), 8 warps: dQ~, dK~, dW of 64 key columns (and dP) over the V tiles (fp32 out).
 *   bwy    grid (NC, B H), 8 warps: dT, dA = -T^T dT T^T, M, N~, then dq, dk, dv, dbeta, dg of the chunk's rows,
 *          the products on tensor cores (bf16 operands), the elementwise chains and row sums in fp32 (every row's
 *          gradient is the chunk's own: no sums across blocks, no atomics).
 * Staging (these kernels run 8 warps an SM, 16 in bgrad: a load of one element a thread and iteration would keep a
 * few hundred bytes a warp in flight, far under the bandwidth at ~1 us of latency): bf16 scratch by cp.async; the
 * fp32 states ck and the other fp32 / input tiles by 16-byte loads, every load of a thread issued before the first
 * is used (tile_load.cuh's pattern), in bgrad and bwy the next tile's issued before this tile's products (reg64);
 * prefetches into L2 (hints): bscan the chunk before's inputs while it works on a chunk, bgrad the next tile's
 * bf16 rows, bwy the tile after the next one's; outputs leave as 16-byte rows from shared memory (dS', V', dV')
 * or as pairs of adjacent C-fragment columns. Every value is rounded where it was before (an input or fp32
 * scratch value once to bf16 as an operand), and every sum keeps its order. */
#include <stdlib.h>
#include "gdn_chunk.cuh"
#include "m2cuda.h"

namespace {

constexpr int LDM = C + 1; /* row stride of the fp32 64 x 64 matrices in shared memory */
constexpr int NT = 256;    /* threads of a block of each kernel here (their launch bounds and launches) */

/* ---------------- staging with several loads in flight (tile_load.cuh's pattern) ----------------
 * A 64 x 64 tile of a bf16 or fp32 source through registers: its loads are issued by reg64_load and the values used
 * by reg64_put, so what runs in between (the previous tile's products) hides their latency. Items of W columns,
 * item i = thread + 256 u at row i / (64 / W). By default an item is 16 bytes (8 bf16 or 4 fp32 columns), so that
 * each warp-wide load instruction reads whole 128-byte lines (4 rows of bf16, 2 rows of fp32); fp32 with W = 8
 * takes two 16-byte loads an item (as tile::load8; each instruction then reads half of every 32-byte sector it
 * touches, the next one the other half) for fewer address registers. Items outside (rows, cols) are not loaded and
 * become 0 (cols % W == 0). */
template <class S, int W_ = 16 / sizeof(S)> struct reg64 {
  static constexpr int W = W_, CW = 64 / W, NI = C * CW / NT; /* columns an item, items a row, a thread */
  float f[NI][W];
};
__device__ __forceinline__ void ld16(float (&f)[8], const __nv_bfloat16 *p) {
  tile::v8 v = tile::load8u(p);
#pragma unroll
  for (int e = 0; e < 8; e++) f[e] = v.f[e];
}
__device__ __forceinline__ void ld16(float (&f)[4], const float *p) {
  float4 v = tile::aligned16(p) ? __ldg((const float4 *)p) : make_float4(p[0], p[1], p[2], p[3]);
  f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}
__device__ __forceinline__ void ld16(float (&f)[8], const float *p) { /* two 16-byte loads (tile::load8u) */
  tile::v8 v = tile::load8u(p);
#pragma unroll
  for (int e = 0; e < 8; e++) f[e] = v.f[e];
}
template <class S, int W_>
__device__ __forceinline__ void reg64_load(reg64<S, W_> &t, const S *src, int64_t sld, int rows, int cols) {
  constexpr int W = W_, CW = 64 / W;
#pragma unroll
  for (int u = 0; u < reg64<S, W_>::NI; u++) {
    int i = threadIdx.x + u * NT, r = i / CW, x = (i % CW) * W;
    if (r < rows && x < cols) ld16(t.f[u], src + r * sld + x);
  }
}
/* dst[r][x] = bf16(f(r, x, value)) (row stride dld, 16-byte aligned rows), 0 outside (rows, cols) */
template <class S, int W_, class F>
__device__ __forceinline__ void reg64_put(uint16_t *dst, int dld, const reg64<S, W_> &t, int rows, int cols, F f) {
  constexpr int W = W_, CW = 64 / W;
#pragma unroll
  for (int u = 0; u < reg64<S, W_>::NI; u++) {
    int i = threadIdx.x + u * NT, r = i / CW, x = (i % CW) * W;
    bool ok = r < rows && x < cols;
    uint32_t o[W / 2];
#pragma unroll
    for (int e = 0; e < W / 2; e++) {
      float lo = ok ? f(r, x + 2 * e, t.f[u][2 * e]) : 0.0f, hi = ok ? f(r, x + 2 * e + 1, t.f[u][2 * e + 1]) : 0.0f;
      o[e] = (uint32_t)tile::bfbits(lo) | ((uint32_t)tile::bfbits(hi) << 16);
    }
    if constexpr (W == 8) *(uint4 *)(dst + r * dld + x) = make_uint4(o[0], o[1], o[2], o[3]);
    else *(uint2 *)(dst + r * dld + x) = make_uint2(o[0], o[1]);
  }
}
/* the same values in fp32 (dst[r * dld + x], any dld) */
template <class S, int W_>
__device__ __forceinline__ void reg64_putf(float *dst, int dld, const reg64<S, W_> &t, int rows, int cols) {
  constexpr int W = W_, CW = 64 / W;
#pragma unroll
  for (int u = 0; u < reg64<S, W_>::NI; u++) {
    int i = threadIdx.x + u * NT, r = i / CW, x = (i % CW) * W;
    bool ok = r < rows && x < cols;
#pragma unroll
    for (int e = 0; e < W; e++) dst[r * dld + x + e] = ok ? t.f[u][e] : 0.0f;
  }
}
/* the value as loaded, for bf16 sources as stored */
__device__ __forceinline__ const __nv_bfloat16 *as_bf(const uint16_t *p) { return (const __nv_bfloat16 *)p; }


/* The lines of rows [0, rows) x columns [0, cols) of src (row stride sld elements), over the block's threads. */
template <class S> __device__ __forceinline__ void l2_prefetch_tile(const S *src, int64_t sld, int rows, int cols) {
  const int lpr = (cols * (int)sizeof(S) + 127) / 128; /* lines a row */
  for (int i = threadIdx.x; i < rows * lpr; i += NT)
    l2_prefetch((const char *)(src + (i / lpr) * sld) + (i % lpr) * 128);
}
/* Every line of [p, p + bytes) whose index i within the range has i % n == part, over the block's threads. */
__device__ __forceinline__ void l2_prefetch_range(const void *p, int64_t bytes, int part = 0, int n = 1) {
  const char *c = (const char *)p;
  for (int64_t i = (int64_t)threadIdx.x * n + part; i * 128 < bytes; i += (int64_t)NT * n) l2_prefetch(c + i * 128);
}

/* ================= bscan: dS through the chunks, last first ================= */

static size_t bscan_smem(int K) {
  return (size_t)3 * C * (K + 8) * 2   /* Ws, Qs, Ks (64 x K bf16) */
         + (size_t)4 * C * LDC * 2     /* Us, Ps, dOs, dVn (64 x 64 bf16) */
         + (size_t)2 * K * LDC * 2     /* Ss, Ds: S and dS' (K x 64 bf16) */
         + 8 * 4;                      /* the warps' parts of <S, dS'> */
}

struct bscan_io {
  const uint16_t *W, *U, *Qt, *Kt, *P; /* prep's */
  const float *eL;
  uint16_t *Vp, *dVp; /* (BH, NC*64, V) bf16: V', dV' */
  uint16_t *dS;       /* (BH, NC, K, V) bf16: the gradient of the state after each chunk */
  float *sdS;         /* (BH, NC, V / 64): <S, dS'> over each block's columns */
};

template <class T>
__global__ void __launch_bounds__(NT) k_gdn_bscan(bscan_io io, const float *ck, const T *dy, const T *dhT, T *dh0,
                                                  int64_t Tn, int H, int K, int V, int NC) {
  extern __shared__ __align__(16) unsigned char sm[];
  const int KP = K + 8;
  uint16_t *Ws = (uint16_t *)sm, *Qs = Ws + C * KP, *Ks = Qs + C * KP, *Us = Ks + C * KP, *Ps = Us + C * LDC,
           *dOs = Ps + C * LDC, *dVn = dOs + C * LDC, *Ss = dVn + C * LDC, *Ds = Ss + K * LDC;
  float *red = (float *)(Ds + K * LDC);
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, KT = K / 16, NVT = V / BV;
  const int mr = w & 3, nh = w >> 2; /* the V' / dV' tile of this warp: rows 16 mr.., columns 32 nh.. */
  const int v0 = blockIdx.x * BV;
  const int64_t bh = blockIdx.y, b = bh / H, h = bh % H, dld = (int64_t)H * V;
  /* dO as stored (bf16) by cp.async, else (f32, or a misaligned dy) through registers */
  const bool dcp = sizeof(T) == 2 && tile::aligned16(dy), ckw = tile::aligned16(ck);

  float Da[2][8][4]; /* dS: rows 16 (w + 8 i).., 64 columns, as the forward's S */
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int row = 16 * (w + 8 * i) + c_row(lane, e), col = v0 + 8 * n + c_col(lane, e);
        Da[i][n][e] = (dhT && w + 8 * i < KT) ? to_f(dhT[(bh * K + row) * V + col]) : 0.0f;
      }

  for (int c = NC - 1; c >= 0; c--) {
    const int64_t row0 = (bh * NC + c) * (int64_t)C, t0 = (int64_t)c * C;
    const int L = Tn - t0 < C ? (int)(Tn - t0) : C;
    const T *dyc = dy + ((b * Tn + t0) * H + h) * V + v0; /* the chunk's dO rows (stride H V), this block's columns */
    const float *ckc = ck + ((bh * NC + c) * (int64_t)V + v0) * K; /* S before the chunk, (V, K): 64 rows of K */
    stage(Ws, KP, io.W + row0 * K, K, C, K);
    stage(Ks, KP, io.Kt + row0 * K, K, C, K);
    stage(Us, LDC, io.U + row0 * V + v0, V, C, BV);
    stage(Ps, LDC, io.P + row0 * C, C, C, C);
    if (dcp)
      for (int i = tid; i < C * (BV / 8); i += NT) { /* dO: the chunk's rows (zero past T), this block's columns */
        int r = i >> 3, x = (i & 7) * 8;
        mma_cp16(dOs + r * LDC + x, dyc + (r < L ? r : 0) * dld + x, r < L);
      }
    mma_cp_commit();
    stage(Qs, KP, io.Qt + row0 * K, K, C, K); /* a second group: Q~ is needed last, it loads under V' and dV' */
    mma_cp_commit();

    /* Ss[row][x] = bf16(S[row][v0 + x]) from ck's (V, K) rows: an item is 4 rows (16 bytes) of columns x = 2p and
       2p + 1, items (p, rows 8 g + 4 half..) with lane = 2 (p % 16) + half: a warp's loads take whole 32-byte
       sectors and its paired stores (columns 2p, 2p + 1) fall in 32 distinct banks. Every load issued first. */
    if (ckw) {
      constexpr int UC = 8; /* 8 K items (32 column pairs x K / 4 row quads) <= UC NT: one pass */
      static_assert(8 * GDN_TC_MAXK <= UC * NT, "bscan: the ck items of a chunk take more than one pass");
      const int p = (tid >> 1) & 31, kr = (tid >> 6) * 8 + (tid & 1) * 4; /* item u: rows kr + 32 u.. */
      const float *pa = ckc + (int64_t)(2 * p) * K + kr;
      uint16_t *d = Ss + kr * LDC + 2 * p;
      float4 xa[UC], xb[UC];
#pragma unroll
      for (int u = 0; u < UC; u++)
        if (kr + 32 * u < K)
          xa[u] = __ldg((const float4 *)(pa + 32 * u)), xb[u] = __ldg((const float4 *)(pa + K + 32 * u));
#pragma unroll
      for (int u = 0; u < UC; u++)
        if (kr + 32 * u < K) {
          uint16_t *du = d + 32 * u * LDC;
          tile::store2(du, xa[u].x, xb[u].x);
          tile::store2(du + LDC, xa[u].y, xb[u].y);
          tile::store2(du + 2 * LDC, xa[u].z, xb[u].z);
          tile::store2(du + 3 * LDC, xa[u].w, xb[u].w);
        }
    } else
      for (int i = tid; i < BV * K; i += NT) { /* a misaligned ck (not one of the op's own tensors): one by one */
        int x = i / K, row = i % K;
        Ss[row * LDC + x] = bf(ckc[(int64_t)x * K + row]);
      }
    if (!dcp) tile::tile_load<2>(dOs, LDC, dyc, dld, C, L, BV, tile::ident());
    /* dS' as the bf16 operand */
#pragma unroll
    for (int i = 0; i < 2; i++) {
      if (w + 8 * i >= KT) continue;
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          int row = 16 * (w + 8 * i) + c_row(lane, e), col = 8 * n + c_col(lane, e);
          tile::store2(Ds + row * LDC + col, Da[i][n][e], Da[i][n][e + 1]);
        }
    }
    /* the chunk before's inputs towards L2 while this one computes: its states (this block's 64 KiB of ck), U
       columns, dO rows; W, K~, Q~, P shared by the NVT blocks of (b, h), each prefetching every NVT-th line */
    if (c > 0) {
      const int64_t pr0 = row0 - C;
      l2_prefetch_range(ckc - (int64_t)V * K, (int64_t)BV * K * 4);
      l2_prefetch_range(io.W + pr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(io.Kt + pr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(io.Qt + pr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(io.P + pr0 * C, (int64_t)C * C * 2, blockIdx.x, NVT);
      if (tid < C) l2_prefetch(io.U + (pr0 + tid) * V + v0);
      else if (tid < 2 * C) {
        const char *p = (const char *)(dyc - C * dld + (tid - C) * dld); /* a full chunk: no rows past T */
        l2_prefetch(p);
        if (sizeof(T) == 4) l2_prefetch(p + 128);
      }
    }
    mma_cp_wait<1>(); /* W, K~, U, P, dO */
    __syncthreads();

    /* dS' of this chunk out: Ds rows as 16-byte stores */
    uint16_t *dSg = io.dS + (bh * NC + c) * (int64_t)K * V + v0;
    for (int i = tid; i < K * 8; i += NT) {
      int row = i >> 3, x = (i & 7) * 8;
      *(uint4 *)(dSg + (int64_t)row * V + x) = *(const uint4 *)(Ds + row * LDC + x);
    }

    /* this block's part of <S, dS'> (S as its bf16 operand) */
    float sd = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; i++) {
      if (w + 8 * i >= KT) continue;
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
          sd += Da[i][n][e] * fb(Ss[(16 * (w + 8 * i) + c_row(lane, e)) * LDC + 8 * n + c_col(lane, e)]);
    }
    sd = warp_sum(sd);
    if (lane == 0) red[w] = sd;

    /* V' = U - W S and dV' = K~ dS' + P^T dO: this warp's 16 x 32 tile */
    float aV[4][4] = {}, aD[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t fw[4], fk[4], fs[4], fd[4];
      ld_a(fw, Ws, KP, 16 * mr, k0, lane);
      ld_a(fk, Ks, KP, 16 * mr, k0, lane);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        ld_b(fs, Ss, LDC, k0, 32 * nh + 16 * np, lane);
        mma2(aV[2 * np], aV[2 * np + 1], fw, fs);
        ld_b(fd, Ds, LDC, k0, 32 * nh + 16 * np, lane);
        mma2(aD[2 * np], aD[2 * np + 1], fk, fd);
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) { /* P^T is upper: only k-steps kk >= mr */
      if (kk < mr) continue;
      uint32_t fp[4], fo[4];
      ld_a_t(fp, Ps, LDC, 16 * kk, 16 * mr, lane);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        ld_b(fo, dOs, LDC, 16 * kk, 32 * nh + 16 * np, lane);
        mma2(aD[2 * np], aD[2 * np + 1], fp, fo);
      }
    }
    /* V' over U in place (each element read and written by its own thread), dV' into dVn; both go out below */
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        int r = 16 * mr + c_row(lane, e), col = 32 * nh + 8 * n + c_col(lane, e);
        uint16_t *u = Us + r * LDC + col;
        tile::store2(u, fb(u[0]) - aV[n][e], fb(u[1]) - aV[n][e + 1]);
        tile::store2(dVn + r * LDC + col, aD[n][e], aD[n][e + 1]);
      }
    mma_cp_wait<0>(); /* Q~ too (the barrier makes every thread's copies visible) */
    __syncthreads();
    if (tid == 0) {
      float s = 0.0f;
      for (int x = 0; x < 8; x++) s += red[x];
      io.sdS[(bh * NC + c) * NVT + blockIdx.x] = s;
    }
    for (int i = tid; i < 2 * C * 8; i += NT) { /* V' (Us) and dV' (dVn) rows as 16-byte stores */
      int s = i >> 9, r = (i >> 3) & (C - 1), x = (i & 7) * 8;
      *(uint4 *)((s ? io.dVp : io.Vp) + (row0 + r) * V + v0 + x) = *(const uint4 *)((s ? dVn : Us) + r * LDC + x);
    }

    /* dS = e^gam_L dS' + Q~^T dO - W^T dV' */
    const float eL = io.eL[bh * NC + c];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      int mt = w + 8 * i;
      if (mt >= KT) continue;
      float aq[8][4] = {}, aw[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        uint32_t fq[4], fw[4], fo[4], fd[4];
        ld_a_t(fq, Qs, KP, 16 * kk, 16 * mt, lane);
        ld_a_t(fw, Ws, KP, 16 * kk, 16 * mt, lane);
#pragma unroll
        for (int np = 0; np < 4; np++) {
          ld_b(fo, dOs, LDC, 16 * kk, 16 * np, lane);
          mma2(aq[2 * np], aq[2 * np + 1], fq, fo);
          ld_b(fd, dVn, LDC, 16 * kk, 16 * np, lane);
          mma2(aw[2 * np], aw[2 * np + 1], fw, fd);
        }
      }
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) Da[i][n][e] = eL * Da[i][n][e] + aq[n][e] - aw[n][e];
    }
    __syncthreads(); /* the chunk before restages every tile */
  }
  if (!dh0) return;
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (w + 8 * i >= KT) continue;
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int row = 16 * (w + 8 * i) + c_row(lane, e), col = v0 + 8 * n + c_col(lane, e);
        dh0[(bh * K + row) * V + col] = from_f<T>(Da[i][n][e]);
      }
  }
}

/* ================= bgrad: dQ~, dK~, dW (64 key columns) and dP of one chunk ================= */

struct bgrad_io {
  const uint16_t *Vp, *dVp, *dS; /* bscan's */
  float *dQt, *dKt, *dW;         /* (BH, NC*64, K) fp32 */
  float *dP;                     /* (BH, NC, 64, 64) fp32, zero above the diagonal */
};

/* Block (kp, c, bh): key columns k0 = 64 kp .. k0 + 63 (those below K). Warp (mr, nh): rows 16 mr.., columns
 * 32 nh.. of each 64 x 64 output. Two blocks an SM (128 registers at most: the k-step loop is kept rolled for that).
 * DCP: dy is bf16 and 16-byte aligned, dO is copied as stored by cp.async; else (f32 dy, or misaligned) element by
 * element. A template argument so that each kernel holds one of the two paths (both in one kernel spill). */
template <class T, bool DCP>
__global__ void __launch_bounds__(NT, 2) k_gdn_bgrad(bgrad_io io, const float *ck, const T *dy, int64_t Tn, int H,
                                                  int K, int V, int NC) {
  extern __shared__ __align__(16) unsigned char sm[];
  uint16_t *dOs = (uint16_t *)sm, *dVs = dOs + C * LDC, *Vs = dVs + C * LDC, *St = Vs + C * LDC, *Ds = St + C * LDC;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, mr = w & 3, nh = w >> 2;
  const int kp = blockIdx.x, c = blockIdx.y, k0 = 64 * kp, KC = K - k0 < 64 ? K - k0 : 64; /* key columns here */
  const int64_t bh = blockIdx.z, b = bh / H, h = bh % H, row0 = (bh * NC + c) * (int64_t)C, t0 = (int64_t)c * C;
  const int L = Tn - t0 < C ? (int)(Tn - t0) : C;
  const int64_t dld = (int64_t)H * V;
  const T *dyc = dy + ((b * Tn + t0) * H + h) * V; /* the chunk's dO rows (stride H V) */
  constexpr bool dcp = DCP && sizeof(T) == 2;
  const float *ckc = ck + (bh * NC + c) * (int64_t)V * K; /* S before the chunk, (V, K) */
  const uint16_t *dSc = io.dS + (bh * NC + c) * (int64_t)K * V;
  float aQ[4][4] = {}, aK[4][4] = {}, aW[4][4] = {}, aP[4][4] = {};
  /* St[x][n] = S[k0 + n][v0 + x] = ck row v0 + x, column k0 + n (zero past K): the fp32 tile (16 KiB) through
     registers, wide loads, the next tile's issued before this tile's products */
  reg64<float, 8> rS; /* items of 8 columns (two 16-byte loads): fewer registers than 4-column items here */
  reg64_load(rS, ckc + k0, K, BV, KC);
  for (int v0 = 0; v0 < V; v0 += BV) {
    stage(dVs, LDC, io.dVp + row0 * V + v0, V, C, BV);
    stage(Vs, LDC, io.Vp + row0 * V + v0, V, C, BV);
    for (int i = tid; i < C * (BV / 8); i += NT) { /* dS' rows k0.. (zero past K), this tile's columns */
      int r = i / (BV / 8), ch = i % (BV / 8);
      bool ok = k0 + r < K;
      mma_cp16(Ds + r * LDC + ch * 8, dSc + (int64_t)(ok ? k0 + r : 0) * V + v0 + ch * 8, ok);
    }
    if (dcp)
      for (int i = tid; i < C * (BV / 8); i += NT) { /* dO: the chunk's rows (zero past T), this tile's columns */
        int r = i >> 3, x = (i & 7) * 8;
        mma_cp16(dOs + r * LDC + x, dyc + (r < L ? r : 0) * dld + v0 + x, r < L);
      }
    mma_cp_commit();
    if (dcp && v0 + BV < V) { /* the next tile's dV', V', dS', dO rows (bf16) towards L2: a 128-byte line a thread */
      const int r = tid & (C - 1), s = tid >> 6;
      const void *p = s == 0 ? (const void *)(io.dVp + (row0 + r) * V + v0 + BV)
                      : s == 1 ? (const void *)(io.Vp + (row0 + r) * V + v0 + BV)
                      : s == 2 ? (const void *)(dSc + (int64_t)(k0 + r < K ? k0 + r : 0) * V + v0 + BV)
                               : (const void *)(dyc + (r < L ? r : 0) * dld + v0 + BV);
      l2_prefetch(p);
    }
    reg64_put(St, LDC, rS, BV, KC, tile::ident());
    if (!dcp)
      for (int i = tid; i < C * BV; i += NT) {
        int r = i / BV, x = i % BV;
        dOs[r * LDC + x] = bf(r < L ? to_f(dyc[r * dld + v0 + x]) : 0.0f);
      }
    mma_cp_wait<0>();
    __syncthreads();
    if (v0 + BV < V) reg64_load(rS, ckc + (int64_t)(v0 + BV) * K + k0, K, BV, KC);
#pragma unroll 1
    for (int kk = 0; kk < 4; kk++) {
      uint32_t fo[4], fd[4], fv[4], fb4[4];
      ld_a(fo, dOs, LDC, 16 * mr, 16 * kk, lane);
      ld_a(fd, dVs, LDC, 16 * mr, 16 * kk, lane);
      ld_a(fv, Vs, LDC, 16 * mr, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        ld_b(fb4, St, LDC, 16 * kk, 32 * nh + 16 * np, lane); /* S^T */
        mma2(aQ[2 * np], aQ[2 * np + 1], fo, fb4);
        mma2(aW[2 * np], aW[2 * np + 1], fd, fb4);
        ld_bt(fb4, Ds, LDC, 32 * nh + 16 * np, 16 * kk, lane); /* dS'^T */
        mma2(aK[2 * np], aK[2 * np + 1], fv, fb4);
        if (kp == 0) {
          ld_bt(fb4, Vs, LDC, 32 * nh + 16 * np, 16 * kk, lane); /* V'^T */
          mma2(aP[2 * np], aP[2 * np + 1], fo, fb4);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int n = 0; n < 4; n++)
#pragma unroll
    for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns col, col + 1 of row r (K even) */
      int r = 16 * mr + c_row(lane, e), col = 32 * nh + 8 * n + c_col(lane, e);
      if (col < KC) {
        int64_t o = (row0 + r) * K + k0 + col;
        st_pair(io.dQt + o, aQ[n][e], aQ[n][e + 1]);
        st_pair(io.dKt + o, aK[n][e], aK[n][e + 1]);
        st_pair(io.dW + o, -aW[n][e], -aW[n][e + 1]);
      }
      if (kp == 0)
        st_pair(io.dP + (bh * NC + c) * (int64_t)(C * C) + r * C + col, col <= r ? aP[n][e] : 0.0f,
                col + 1 <= r ? aP[n][e + 1] : 0.0f);
    }
}

/* ================= bwy: the chunk's own gradients ================= */

static size_t bwy_smem() {
  return (size_t)7 * C * LDM * 4   /* G, QK, KK, dP, dT, E1, E2 (fp32 64 x 64) */
         + (size_t)8 * C * LDC * 2 /* Tb, Mb, Nb, dTb, Xb, S1, S2, S3 (bf16 64 x 64) */
         + (size_t)7 * C * 4       /* gam, bet, eg, ed, dgam, dbet, dgl */
         + (size_t)3 * C * 2 * 4;  /* the two column halves' row parts of dgam, dbeta, the gam_L terms */
}

struct bwy_io {
  const float *T, *KK, *QK, *eL;      /* prep's */
  const float *dQt, *dKt, *dW, *dP;   /* bgrad's */
  const float *sdS;                   /* bscan's (BH, NC, V / 64) */
  const uint16_t *dVp;                /* dU = dV' */
};

/* Sum over the 4 lanes of a quad (lanes 4 g .. 4 g + 3: one row of an mma C tile). */
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* acc (16 x 32 tile of warp (mr, nh)) = 0 */
__device__ __forceinline__ void zero4(float acc[4][4]) {
#pragma unroll
  for (int n = 0; n < 4; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* acc += A B over a 64-deep product, A = a 64 x 64 bf16 tile (transposed when at), B = a 64 x 64 bf16 tile
 * (transposed when bt); the warp's rows 16 mr.., columns 32 nh... */
__device__ __forceinline__ void mul64(float acc[4][4], const uint16_t *A, bool at, const uint16_t *Bm, bool bt,
                                      int mr, int nh, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    uint32_t fa[4], fbm[4];
    if (at) ld_a_t(fa, A, LDC, 16 * kk, 16 * mr, lane);
    else ld_a(fa, A, LDC, 16 * mr, 16 * kk, lane);
#pragma unroll
    for (int np = 0; np < 2; np++) {
      if (bt) ld_bt(fbm, Bm, LDC, 32 * nh + 16 * np, 16 * kk, lane);
      else ld_b(fbm, Bm, LDC, 16 * kk, 32 * nh + 16 * np, lane);
      mma2(acc[2 * np], acc[2 * np + 1], fa, fbm);
    }
  }
}

/* Block (c, bh), 8 warps; in the products warp (mr, nh) owns rows 16 mr.., columns 32 nh.. of each 64 x 64 output
 * (element e of n-tile n: row 16 mr + c_row(e), column 32 nh + 8 n + c_col(e)); the elementwise steps stride the
 * 64 x 64 elements over the threads. Products on tensor cores (bf16 operands: dU, dW, beta V, beta e^gam K, T, dT,
 * dT T^T, M, N~, K, Q), the rest fp32. */
template <class T>
__global__ void __launch_bounds__(NT) k_gdn_bwy(bwy_io io, const T *q, const T *k, const T *v, const T *g,
                                                 const T *beta, T *dq, T *dk, T *dv, T *dg, T *dbeta, int64_t Tn,
                                                 int H, int K, int V, int NC, float scale) {
  extern __shared__ __align__(16) float fsm[];
  float *G = fsm, *QK = G + C * LDM, *KK = QK + C * LDM, *dP = KK + C * LDM, *dT = dP + C * LDM, *E1 = dT + C * LDM,
        *E2 = E1 + C * LDM;
  uint16_t *Tb = (uint16_t *)(E2 + C * LDM), *Mb = Tb + C * LDC, *Nb = Mb + C * LDC, *dTb = Nb + C * LDC,
           *Xb = dTb + C * LDC, *S1 = Xb + C * LDC, *S2 = S1 + C * LDC, *S3 = S2 + C * LDC;
  float *gam = (float *)(S3 + C * LDC), *bet = gam + C, *eg = bet + C, *ed = eg + C, *dgam = ed + C, *dbet = dgam + C,
        *dgl = dbet + C, *pq = dgl + C, *pb = pq + 2 * C, *pl = pb + 2 * C;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, mr = w & 3, nh = w >> 2, c = blockIdx.x, NVT = V / BV;
  const int64_t bh = blockIdx.y, b = bh / H, h = bh % H, t0 = (int64_t)c * C, row0 = (bh * NC + c) * (int64_t)C;
  const int64_t m0 = row0 * C; /* this chunk's 64 x 64 matrices */
  const int L = Tn - t0 < C ? (int)(Tn - t0) : C;
  auto tok = [&](int rr) { return (b * Tn + t0 + rr) * H + h; };

  /* 0. the chunk's scalars and matrices: T (bf16), Q K^T, K K^T, dP (fp32), G. The four 64 x 64 fp32 matrices
        as 16-byte loads, all 16 of a thread issued before any is used (scratch: 16-byte aligned) */
  {
    constexpr int U0 = C * C / 4 / NT; /* float4 of a matrix a thread */
    const float *src[4] = {io.T + m0, io.QK + m0, io.KK + m0, io.dP + m0};
    float4 x[4][U0];
#pragma unroll
    for (int m = 0; m < 4; m++)
#pragma unroll
      for (int u = 0; u < U0; u++) x[m][u] = __ldg((const float4 *)src[m] + tid + u * NT);
    if (tid < C) {
      gam[tid] = tid < L ? to_f(g[tok(tid)]) : 0.0f;
      bet[tid] = tid < L ? to_f(beta[tok(tid)]) : 0.0f;
      dgam[tid] = dbet[tid] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U0; u++) {
      int i = 4 * (tid + u * NT), rr = i / C, j = i % C; /* elements j .. j + 3 of row rr */
      tile::store2(Tb + rr * LDC + j, x[0][u].x, x[0][u].y);
      tile::store2(Tb + rr * LDC + j + 2, x[0][u].z, x[0][u].w);
      float *d[3] = {QK + rr * LDM + j, KK + rr * LDM + j, dP + rr * LDM + j};
#pragma unroll
      for (int m = 0; m < 3; m++)
        d[m][0] = x[m + 1][u].x, d[m][1] = x[m + 1][u].y, d[m][2] = x[m + 1][u].z, d[m][3] = x[m + 1][u].w;
    }
  }
  /* step 1's tiles (below): V's, then K's; the first one's loads go out under the sums of g */
  const int NV1 = V / 64, N1 = NV1 + (K + 63) / 64; /* tiles: V's, then K's */
  const int64_t qld = (int64_t)H * K, vld = (int64_t)H * V; /* row strides of q, k and of v */
  reg64<__nv_bfloat16> r1u; /* dU of a V tile */
  reg64<float> r1w;          /* dW of a K tile */
  reg64<T> r1b;              /* v or k */
  auto t1_load = [&](int t) {
    if (t < NV1) {
      reg64_load(r1u, as_bf(io.dVp) + row0 * V + 64 * t, V, C, 64);
      reg64_load(r1b, v + tok(0) * V + 64 * t, vld, L, 64);
    } else {
      int x0 = 64 * (t - NV1), nc = K - x0 < 64 ? K - x0 : 64;
      reg64_load(r1w, io.dW + row0 * K + x0, K, C, nc);
      reg64_load(r1b, k + tok(0) * K + x0, qld, L, nc);
    }
  };
  auto t1_l2 = [&](int t) { /* tile t towards L2 (two tiles ahead of the products) */
    if (t < NV1) {
      l2_prefetch_tile(io.dVp + row0 * V + 64 * t, V, C, 64);
      l2_prefetch_tile(v + tok(0) * V + 64 * t, vld, L, 64);
    } else if (t < N1) {
      int x0 = 64 * (t - NV1), nc = K - x0 < 64 ? K - x0 : 64;
      l2_prefetch_tile(io.dW + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(k + tok(0) * K + x0, qld, L, nc);
    }
  };
  t1_load(0);
  t1_l2(1);
  __syncthreads();
  if (tid == 0)
    for (int rr = 1; rr < C; rr++) gam[rr] += gam[rr - 1];
  __syncthreads();
  if (tid < C) {
    eg[tid] = expf(gam[tid]);
    ed[tid] = expf(gam[C - 1] - gam[tid]);
  }
  for (int i = tid; i < C * C; i += blockDim.x) {
    int rr = i / C, j = i % C;
    G[rr * LDM + j] = j <= rr ? expf(gam[rr] - gam[j]) : 0.0f;
  }
  __syncthreads();

  /* 1. dT = dU (diag(beta) V)^T + dW (diag(beta e^gam) K)^T, 64 columns of V, then of K, at a time:
        S1 = dU or dW (64 x 64), S2 = beta V or beta e^gam K (64 x 64), dT += S1 S2^T.
     Tiles through registers (reg64), the next tile's loads issued before this tile's product (two loops: dU and dW
     are held in differently laid out registers). */
  float acc[4][4];
  zero4(acc);
  for (int t = 0; t < NV1; t++) { /* V tiles: S1 = dU, S2 = beta V */
    reg64_put(S1, LDC, r1u, C, 64, tile::ident());
    reg64_put(S2, LDC, r1b, L, 64, [&](int rr, int, float x) { return bet[rr] * x; });
    __syncthreads();
    t1_load(t + 1); /* (N1 > NV1: after the last V tile, the first K tile) */
    t1_l2(t + 2);
    mul64(acc, S1, false, S2, true, mr, nh, lane);
    __syncthreads();
  }
  for (int t = NV1; t < N1; t++) { /* K tiles: S1 = dW, S2 = beta e^gam K */
    const int nc = K - 64 * (t - NV1) < 64 ? K - 64 * (t - NV1) : 64;
    reg64_put(S1, LDC, r1w, C, nc, tile::ident());
    reg64_put(S2, LDC, r1b, L, nc, [&](int rr, int, float x) { return bet[rr] * eg[rr] * x; });
    __syncthreads();
    if (t + 1 < N1) t1_load(t + 1);
    t1_l2(t + 2);
    mul64(acc, S1, false, S2, true, mr, nh, lane);
    __syncthreads();
  }
  /* step 4's and 5's tiles (below) through registers; step 4's first one's loads go out under steps 2 and 3 */
  reg64<T> r4k, r4q, r5v;
  reg64<float> r4w, r4dq, r4dk;
  reg64<__nv_bfloat16> r5u;
  auto t4_load = [&](int x0) {
    const int nc = K - x0 < 64 ? K - x0 : 64;
    reg64_load(r4k, k + tok(0) * K + x0, qld, L, nc);
    reg64_load(r4q, q + tok(0) * K + x0, qld, L, nc);
    reg64_load(r4w, io.dW + row0 * K + x0, K, C, nc);
    reg64_load(r4dq, io.dQt + row0 * K + x0, K, C, nc);
    reg64_load(r4dk, io.dKt + row0 * K + x0, K, C, nc);
  };
  auto t5_load = [&](int x0) {
    reg64_load(r5u, as_bf(io.dVp) + row0 * V + x0, V, C, 64);
    reg64_load(r5v, v + tok(0) * V + x0, vld, L, 64);
  };
  auto t45_l2 = [&](int t) { /* step 4's tile t (x0 = 64 t), then step 5's (x0 = 64 (t - K4)) towards L2 */
    const int K4 = (K + 63) / 64;
    if (t < K4) {
      int x0 = 64 * t, nc = K - x0 < 64 ? K - x0 : 64;
      l2_prefetch_tile(k + tok(0) * K + x0, qld, L, nc);
      l2_prefetch_tile(q + tok(0) * K + x0, qld, L, nc);
      l2_prefetch_tile(io.dW + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(io.dQt + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(io.dKt + row0 * K + x0, K, C, nc);
    } else if (t < K4 + V / 64) {
      int x0 = 64 * (t - K4);
      l2_prefetch_tile(io.dVp + row0 * V + x0, V, C, 64);
      l2_prefetch_tile(v + tok(0) * V + x0, vld, L, 64);
    }
  };
  t4_load(0);
  t45_l2(1);
#pragma unroll
  for (int n = 0; n < 4; n++)
#pragma unroll
    for (int e = 0; e < 4; e++)
      dTb[(16 * mr + c_row(lane, e)) * LDC + 32 * nh + 8 * n + c_col(lane, e)] = bf(acc[n][e]);
  __syncthreads();

  /* 2. Xb = dT T^T, then dA = -T^T Xb (strictly lower, fp32) into dT */
  zero4(acc);
  mul64(acc, dTb, false, Tb, true, mr, nh, lane);
#pragma unroll
  for (int n = 0; n < 4; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) Xb[(16 * mr + c_row(lane, e)) * LDC + 32 * nh + 8 * n + c_col(lane, e)] = bf(acc[n][e]);
  __syncthreads();
  zero4(acc);
  mul64(acc, Tb, true, Xb, false, mr, nh, lane);
#pragma unroll
  for (int n = 0; n < 4; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      int rr = 16 * mr + c_row(lane, e), j = 32 * nh + 8 * n + c_col(lane, e);
      dT[rr * LDM + j] = j < rr ? -acc[n][e] : 0.0f;
    }
  __syncthreads();

  /* 3. dP o P and dA o A (E2, E1), their row - column sums into dgam, sum_j dA G k.k into dbeta; M and N~ (bf16) */
  for (int i = tid; i < C * C; i += blockDim.x) {
    int rr = i / C, j = i % C;
    float gg = G[rr * LDM + j];
    float pp = j <= rr ? scale * gg * QK[rr * LDM + j] : 0.0f, aa = j < rr ? bet[rr] * gg * KK[rr * LDM + j] : 0.0f;
    E2[rr * LDM + j] = dP[rr * LDM + j] * pp;
    E1[rr * LDM + j] = dT[rr * LDM + j] * aa;
    Mb[rr * LDC + j] = bf(j <= rr ? scale * dP[rr * LDM + j] * gg : 0.0f);
    QK[rr * LDM + j] = j < rr ? dT[rr * LDM + j] * bet[rr] * gg : 0.0f; /* N, in Q K^T's place (read above only) */
  }
  __syncthreads();
  if (tid < C) {
    const int rr = tid;
    float s = 0.0f, sb = 0.0f;
    for (int j = 0; j < C; j++) {
      s += E2[rr * LDM + j] - E2[j * LDM + rr] + E1[rr * LDM + j] - E1[j * LDM + rr];
      sb += dT[rr * LDM + j] * G[rr * LDM + j] * KK[rr * LDM + j];
    }
    dgam[rr] += s;
    dbet[rr] += sb;
  }
  for (int i = tid; i < C * C; i += blockDim.x) {
    int rr = i / C, j = i % C;
    Nb[rr * LDC + j] = bf(QK[rr * LDM + j] + QK[j * LDM + rr]); /* N~ = N + N^T */
  }
  __syncthreads();

  /* 4. dq = scale e^gam dQ~ + M K, dk = e^(gam_L - gam) dK~ + M^T Q + N~ K + diag(beta e^gam) T^T dW, 64 key columns
        at a time (S1 = K, S2 = Q, S3 = dW as bf16); the row terms of dgam, dbeta, gam_L in this thread's rows. The
        fp32 matrices are free from here: k, q (as given), dQ~, dK~ of the tile go there (Kf, Qf, DQ, DK) for the
        elementwise terms; tiles through registers, the next tile's (then step 5's first) loads issued before this
        tile's products. */
  float *Kf = G, *Qf = KK, *DQ = dP, *DK = E1, *Vf = G; /* Vf: step 5 */
  float rq[2] = {0.0f, 0.0f}, rb[2] = {0.0f, 0.0f}, rl[2] = {0.0f, 0.0f};
  for (int x0 = 0; x0 < K; x0 += 64) {
    const int nc = K - x0 < 64 ? K - x0 : 64;
    reg64_put(S1, LDC, r4k, L, nc, tile::ident());
    reg64_put(S2, LDC, r4q, L, nc, tile::ident());
    reg64_put(S3, LDC, r4w, C, nc, tile::ident());
    reg64_putf(Kf, LDM, r4k, L, nc);
    reg64_putf(Qf, LDM, r4q, L, nc);
    reg64_putf(DQ, LDM, r4dq, C, nc);
    reg64_putf(DK, LDM, r4dk, C, nc);
    __syncthreads();
    if (x0 + 64 < K) t4_load(x0 + 64);
    else t5_load(0);
    t45_l2(x0 / 64 + 2);
    float sq[4][4], sk[4][4], sy[4][4];
    zero4(sq), zero4(sk), zero4(sy);
    mul64(sq, Mb, false, S1, false, mr, nh, lane);
    mul64(sk, Mb, true, S2, false, mr, nh, lane);
    mul64(sk, Nb, false, S1, false, mr, nh, lane);
    mul64(sy, Tb, true, S3, false, mr, nh, lane);
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
      for (int e0 = 0; e0 < 4; e0 += 2) { /* elements e0, e0 + 1: columns x, x + 1 of row rr (K even) */
        int rr = 16 * mr + c_row(lane, e0), xl = 32 * nh + 8 * n + c_col(lane, e0), x = x0 + xl;
        if (x >= K || rr >= L) continue; /* rows past T add nothing */
        float er = eg[rr], edr = ed[rr], br = bet[rr], o1[2], o2[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const int e = e0 + j, m = rr * LDM + xl + j;
          float kr = Kf[m], qr = Qf[m], dqt = DQ[m], dkt = DK[m], y = sy[n][e];
          rq[e >> 1] += dqt * scale * er * qr - dkt * edr * kr + br * er * y * kr;
          rl[e >> 1] += dkt * edr * kr;
          rb[e >> 1] += er * y * kr;
          o1[j] = scale * er * dqt + sq[n][e];
          o2[j] = edr * dkt + sk[n][e] + br * er * y;
        }
        if (dq) st_pair(dq + tok(rr) * K + x, o1[0], o1[1]);
        if (dk) st_pair(dk + tok(rr) * K + x, o2[0], o2[1]);
      }
    __syncthreads();
  }

  /* 5. dv = diag(beta) T^T dU and <X_r, v_r>, 64 value columns at a time (S1 = dU; v as given in Vf) */
  for (int x0 = 0; x0 < V; x0 += 64) {
    reg64_put(S1, LDC, r5u, C, 64, tile::ident());
    reg64_putf(Vf, LDM, r5v, L, 64);
    __syncthreads();
    if (x0 + 64 < V) t5_load(x0 + 64);
    t45_l2((K + 63) / 64 + x0 / 64 + 2);
    zero4(acc);
    mul64(acc, Tb, true, S1, false, mr, nh, lane);
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
      for (int e0 = 0; e0 < 4; e0 += 2) {
        int rr = 16 * mr + c_row(lane, e0), xl = 32 * nh + 8 * n + c_col(lane, e0), x = x0 + xl;
        if (rr >= L) continue;
        rb[e0 >> 1] += acc[n][e0] * Vf[rr * LDM + xl];
        rb[e0 >> 1] += acc[n][e0 + 1] * Vf[rr * LDM + xl + 1];
        if (dv) st_pair(dv + tok(rr) * V + x, bet[rr] * acc[n][e0], bet[rr] * acc[n][e0 + 1]);
      }
    __syncthreads();
  }

  /* 6. the row parts: over the quad's lanes, then the two column halves (nh) in order; gam_L terms, reverse cumsum */
#pragma unroll
  for (int hr = 0; hr < 2; hr++) {
    float a = quad_sum(rq[hr]), bb = quad_sum(rb[hr]), l = quad_sum(rl[hr]);
    if ((lane & 3) == 0) {
      int rr = 16 * mr + (lane >> 2) + 8 * hr;
      pq[rr * 2 + nh] = a, pb[rr * 2 + nh] = bb, pl[rr * 2 + nh] = l;
    }
  }
  __syncthreads();
  if (tid == 0) {
    float gl = 0.0f, s = 0.0f;
    for (int rr = 0; rr < C; rr++) {
      dgam[rr] += pq[rr * 2] + pq[rr * 2 + 1];
      dbet[rr] += pb[rr * 2] + pb[rr * 2 + 1];
      gl += pl[rr * 2] + pl[rr * 2 + 1];
    }
    for (int x = 0; x < NVT; x++) s += io.sdS[(bh * NC + c) * NVT + x];
    dgam[L - 1] += gl + io.eL[bh * NC + c] * s;
    float a = 0.0f;
    for (int rr = L - 1; rr >= 0; rr--) {
      a += dgam[rr];
      dgam[rr] = a;
    }
  }
  __syncthreads();
  if (tid < L) {
    if (dg) dg[tok(tid)] = from_f<T>(dgam[tid]);
    if (dbeta) dbeta[tok(tid)] = from_f<T>(dbet[tid]);
  }
}

long g_bwd_calls, g_keep_used_calls, g_bwy2_calls;

}  // namespace

#include "gdn_chunk_bwy2.cuh" /* k_gdn_bwy2: the chunk gradients under M2_GDN_BWD_V2 */

extern "C" long m2_cuda_gdn_chunk_tc_bwd_calls(void) { return g_bwd_calls; }
extern "C" long m2_cuda_gdn_keep_used_calls(void) { return g_keep_used_calls; }
extern "C" long m2_cuda_gdn_bwy2_calls(void) { return g_bwy2_calls; }

bool gdn_tc_bwd_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt) {
  return m2_cuda_gdn_chunk_tc(-1) == 1 && gdn_tc_precision_ok(dt) && gdn_tc_shape_ok(d, seg);
}

m2_status gdn_tc_backward(const m2_gdn_attr *d, m2_dtype dt, m2_device dev, cudaStream_t st, const void *const in[6],
                          const void *dy, const void *dhT, const float *ck, const void *keep16, const float *keep32,
                          void *const din[6]) {
  const int K = (int)d->K, V = (int)d->V, H = (int)d->H, NC = (int)((d->T + C - 1) / C), NVT = V / BV;
  const int64_t BH = d->B * d->H, rows = BH * NC * C;
  int64_t nK = rows * K, nV = rows * V, nM = BH * NC * C * C, nE = BH * NC, nS = BH * NC * (int64_t)K * V,
          nD = BH * NC * NVT;
  enum { W, U, QT, KT, P, VP, DVP, DS, NB16 };
  enum { EL, TM, KK, QK, DQT, DKT, DW, DP, SDS, NF32 };
  const int64_t n16[NB16] = {nK, nV, nK, nK, nM, nV, nV, nS};
  const int64_t n32[NF32] = {nE, nM, nM, nM, nK, nK, nK, nM, nD};
  m2_tensor *t16[NB16] = {0}, *t32[NF32] = {0};
  m2_status s = M2_OK;
  /* kept: prep's outputs come from the forward (W .. P of the bf16 buffers, EL .. QK of the fp32 ones) */
  const bool kept = keep16 && keep32, v2 = m2_cuda_gdn_bwd_v2(-1) == 1;
  for (int i = 0; i < NB16 && s == M2_OK; i++)
    if (!(kept && i <= P) && !(t16[i] = m2_empty(M2_BF16, dev, 1, &n16[i]))) s = m2_errcode();
  for (int i = 0; i < NF32 && s == M2_OK; i++)
    if (!(kept && i <= QK) && !(t32[i] = m2_empty(M2_F32, dev, 1, &n32[i]))) s = m2_errcode();
  if (s == M2_OK) {
    uint16_t *b16[NB16];
    float *f32[NF32];
    for (int i = 0; i < NB16; i++) b16[i] = t16[i] ? (uint16_t *)m2_data(t16[i]) : NULL;
    for (int i = 0; i < NF32; i++) f32[i] = t32[i] ? (float *)m2_data(t32[i]) : NULL;
    if (kept) {
      prep_out k = prep_split(BH, NC, K, V, (uint16_t *)keep16, (float *)keep32); /* read only below */
      b16[W] = k.W, b16[U] = k.U, b16[QT] = k.Qt, b16[KT] = k.Kt, b16[P] = k.P;
      f32[EL] = k.eL, f32[TM] = k.T, f32[KK] = k.KK, f32[QK] = k.QK;
    }
    prep_out po = {b16[W], b16[U], b16[QT], b16[KT], b16[P], f32[EL], f32[TM], f32[KK], f32[QK]};
    bscan_io bs = {b16[W], b16[U], b16[QT], b16[KT], b16[P], f32[EL], b16[VP], b16[DVP], b16[DS], f32[SDS]};
    bgrad_io bg = {b16[VP], b16[DVP], b16[DS], f32[DQT], f32[DKT], f32[DW], f32[DP]};
    bwy_io bw = {f32[TM], f32[KK], f32[QK], f32[EL], f32[DQT], f32[DKT], f32[DW], f32[DP], f32[SDS], b16[DVP]};
    size_t sp = prep_smem(K), ss = bscan_smem(K), sg = (size_t)5 * C * LDC * 2, sw = bwy_smem();
    cudaError_t e = cudaSuccess;
    CU_FLOAT_DISPATCH(dt, {
      const T *const *x = (const T *const *)in;
      T *const *g = (T *const *)din;
      e = cudaFuncSetAttribute(k_gdn_prep<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sp);
      if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gdn_bscan<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss);
      if (e == cudaSuccess && !v2)
        e = cudaFuncSetAttribute(k_gdn_bwy<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sw);
      if (e == cudaSuccess && v2)
        e = cudaFuncSetAttribute(k_gdn_bwy2<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bwy2_smem());
      if (e == cudaSuccess) {
        if (!kept)
          k_gdn_prep<T><<<dim3((unsigned)NC, (unsigned)BH), 128, sp, st>>>(x[0], x[1], x[2], x[3], x[4], po, d->T, H,
                                                                            K, V, (float)d->scale, NC);
        k_gdn_bscan<T><<<dim3((unsigned)NVT, (unsigned)BH), NT, ss, st>>>(bs, ck, (const T *)dy, (const T *)dhT,
                                                                           g[5], d->T, H, K, V, NC);
        const dim3 gg((unsigned)((K + 63) / 64), (unsigned)NC, (unsigned)BH);
        if (sizeof(T) == 2 && ((uintptr_t)dy & 15) == 0)
          k_gdn_bgrad<T, true><<<gg, NT, sg, st>>>(bg, ck, (const T *)dy, d->T, H, K, V, NC);
        else k_gdn_bgrad<T, false><<<gg, NT, sg, st>>>(bg, ck, (const T *)dy, d->T, H, K, V, NC);
        if (v2)
          k_gdn_bwy2<T><<<dim3((unsigned)NC, (unsigned)BH), NT, bwy2_smem(), st>>>(
              bw, x[0], x[1], x[2], x[3], x[4], g[0], g[1], g[2], g[3], g[4], d->T, H, K, V, NC, (float)d->scale);
        else
          k_gdn_bwy<T><<<dim3((unsigned)NC, (unsigned)BH), NT, sw, st>>>(bw, x[0], x[1], x[2], x[3], x[4], g[0],
                                                                          g[1], g[2], g[3], g[4], d->T, H, K, V, NC,
                                                                          (float)d->scale);
        e = cudaGetLastError();
      }
    });
    if (e != cudaSuccess)
      s = m2_fail(M2_ERR_CUDA, "gdn: chunked tensor-core backward launch failed: %s", cudaGetErrorString(e));
    else g_bwd_calls++, g_keep_used_calls += kept, g_bwy2_calls += v2;
  }
  for (int i = 0; i < NB16; i++) m2_release(t16[i]);
  for (int i = 0; i < NF32; i++) m2_release(t32[i]);
  return s;
}
