/* gdn_chunk.cuh — what the chunked GDN kernels share (cuda/gdn_chunk.cu forward, cuda/gdn_chunk_bwd.cu backward):
 * warp-level mma fragments from shared bf16 tiles, cp.async staging, and the per-chunk "prep" kernel (A, P, T, W, U,
 * Q~, K~ of every chunk; the maths in gdn_chunk.cu's header), which the backward runs again instead of keeping its
 * outputs. Included by those two files only. */
#ifndef M2_CUDA_GDN_CHUNK_CUH
#define M2_CUDA_GDN_CHUNK_CUH
#include "ops_common.cuh"
#include "mma.cuh"
#include "gdn_chunk.h"
#include "tile_load.cuh"

namespace {

constexpr int C = GDN_TC_C, BV = GDN_TC_BV;
constexpr int LDC = C + 8; /* shared row stride of the 64-wide bf16 tiles (ldmatrix without bank conflicts) */
constexpr int LDA = C + 4; /* shared row stride of A (fp32): rows read as float4 */

__device__ __forceinline__ uint16_t bf(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float fb(uint16_t u) { return __bfloat162float(__ushort_as_bfloat16(u)); }

/* ---------------- warp-level fragments from shared bf16 tiles (row-major, row stride ld elements) ----------------
 * Fragment layouts as in mma.cuh; g = lane / 4, t = lane % 4. */

/* A (16 x 16) = s[r0 .. r0+15][c0 .. c0+15]. */
__device__ __forceinline__ void ld_a(uint32_t a[4], const uint16_t *s, int ld, int r0, int c0, int lane) {
  mma_ldsm4(a, s + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8);
}
/* A (16 x 16) with A[m][k] = s[r0 + k][c0 + m] (the transpose of a stored tile). */
__device__ __forceinline__ void ld_a_t(uint32_t a[4], const uint16_t *s, int ld, int r0, int c0, int lane) {
  int q = lane >> 3;
  mma_ldsm4t(a, s + (r0 + (lane & 7) + (q >> 1) * 8) * ld + c0 + (q & 1) * 8);
}
/* B (16 x 16: k x n) = s[k0 .. k0+15][n0 .. n0+15]: b[0], b[1] the n-tile n0.., b[2], b[3] the n-tile n0+8.. */
__device__ __forceinline__ void ld_b(uint32_t b[4], const uint16_t *s, int ld, int k0, int n0, int lane) {
  mma_ldsm4t(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}
/* B (16 x 16: k x n) with B[k][n] = s[n0 + n][k0 + k] (a stored tile's transpose), b as in ld_b. */
__device__ __forceinline__ void ld_bt(uint32_t b[4], const uint16_t *s, int ld, int n0, int k0, int lane) {
  mma_ldsm4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
/* acc[2] (16 x 16, as two n-tiles) += a b. */
__device__ __forceinline__ void mma2(float acc0[4], float acc1[4], const uint32_t a[4], const uint32_t b[4]) {
  mma_bf16(acc0, a, b[0], b[1]);
  mma_bf16(acc1, a, b[2], b[3]);
}
/* Row and column within a 16 x 8 C tile of element e (0..3) of this lane. */
__device__ __forceinline__ int c_row(int lane, int e) { return (lane >> 2) + (e >> 1) * 8; }
__device__ __forceinline__ int c_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

/* rows x cols bf16 (cols % 8 == 0) from global (row stride sld) into shared (row stride dld), asynchronously. */
__device__ __forceinline__ void stage(uint16_t *dst, int dld, const uint16_t *src, int64_t sld, int rows, int cols) {
  int ch = cols / 8;
  for (int i = threadIdx.x; i < rows * ch; i += blockDim.x) {
    int r = i / ch, c = i % ch;
    mma_cp16(dst + r * dld + c * 8, src + r * sld + c * 8, true);
  }
}

/* A hint: the 128-byte line at p into L2 (data a later chunk or step reads). */
__device__ __forceinline__ void l2_prefetch(const void *p) { asm volatile("prefetch.L2 [%0];" ::"l"(p)); }
/* Two adjacent outputs p[0], p[1] (an mma C fragment's pair) as one store where p is aligned for it. */
__device__ __forceinline__ void st_pair(float *p, float a, float b) {
  if (((uintptr_t)p & 7) == 0) *(float2 *)p = make_float2(a, b);
  else p[0] = a, p[1] = b;
}
__device__ __forceinline__ void st_pair(bf16 *p, float a, float b) {
  if (((uintptr_t)p & 3) == 0) tile::store2((uint16_t *)p, a, b);
  else p[0] = from_f<bf16>(a), p[1] = from_f<bf16>(b);
}

/* ================= prep: per chunk A, P, T, W, U, Q~, K~ ================= */

/* Bytes of prep's region that holds q (64 x K bf16) until A is formed, then A (64 x 68) and T (64 x 64) in fp32. */
__host__ __device__ inline size_t prep_qa_bytes(int K) {
  size_t qb = (size_t)C * (K + 8) * 2, ab = (size_t)C * LDA * 4 + (size_t)C * C * 4;
  return qb > ab ? qb : ab;
}
/* Shared memory of prep (bytes) for key dim K: 96.5 KiB at K = 256 (two blocks an SM). */
static size_t prep_smem(int K) {
  return (size_t)C * (K + 8) * 2         /* ks: the chunk's k (64 x K bf16) */
         + prep_qa_bytes(K)              /* qs, then Af and Tm */
         + (size_t)3 * C * LDC * 2       /* vs, Tk, Tv (64 x 64 bf16) */
         + (size_t)5 * C * 4;            /* gam, bet, eg, ed, (spare) */
}

struct prep_out {
  uint16_t *W, *U, *Qt, *Kt, *P; /* bf16 scratch, layouts in gdn_chunk.cu's header comment */
  float *eL;                     /* (BH, NC) */
  float *T, *KK, *QK;            /* for the backward, else NULL: T, k_r.k_j, q_r.k_j (BH, NC, 64, 64) fp32 */
};

/* prep's outputs inside the two tensors the forward keeps under M2_GDN_BWD_V2 (gdn_tc_keep_numel, gdn_chunk.h):
 * b16 = W | Q~ | K~ | U | P, f32 = T | K K^T | Q K^T | eL. Every part starts 16-byte aligned (R = BH NC 64 rows, K
 * and V multiples of 16; eL, whose length is not, comes last). */
static inline prep_out prep_split(int64_t BH, int NC, int K, int V, uint16_t *b16, float *f32) {
  const int64_t R = BH * NC * (int64_t)C, nK = R * K, nV = R * V, nM = R * C;
  prep_out p;
  p.W = b16, p.Qt = b16 + nK, p.Kt = b16 + 2 * nK, p.U = b16 + 3 * nK, p.P = b16 + 3 * nK + nV;
  p.T = f32, p.KK = f32 + nM, p.QK = f32 + 2 * nM, p.eL = f32 + 3 * nM;
  return p;
}

template <class T>
__global__ void __launch_bounds__(128) k_gdn_prep(const T *q, const T *k, const T *v, const T *g, const T *beta,
                                                  prep_out out, int64_t Tn, int H, int K, int V, float scale, int NC) {
  extern __shared__ __align__(16) unsigned char sm[];
  const int KP = K + 8;
  uint16_t *ks = (uint16_t *)sm, *qs = ks + C * KP;
  float *Af = (float *)qs, *Tm = Af + C * LDA; /* over qs once Q K^T is taken (step 2) */
  uint16_t *vs = (uint16_t *)((unsigned char *)qs + prep_qa_bytes(K)), *Tk = vs + C * LDC, *Tv = Tk + C * LDC;
  float *gam = (float *)(Tv + C * LDC), *bet = gam + C, *eg = bet + C, *ed = eg + C;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int c = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / H, h = bh % H, t0 = (int64_t)c * C;
  const int L = Tn - t0 < C ? (int)(Tn - t0) : C;
  auto tok = [&](int r) { return (b * Tn + t0 + r) * H + h; }; /* (B, T, H) index of local row r < L */

  /* 1. the chunk's g, beta (zero rows past T), gam = their running sum, the decays */
  if (tid < C) {
    gam[tid] = tid < L ? to_f(g[tok(tid)]) : 0.0f;
    bet[tid] = tid < L ? to_f(beta[tok(tid)]) : 0.0f;
  }
  __syncthreads();
  if (tid == 0)
    for (int r = 1; r < C; r++) gam[r] += gam[r - 1];
  __syncthreads();
  if (tid < C) {
    eg[tid] = expf(gam[tid]);
    ed[tid] = expf(gam[C - 1] - gam[tid]);
  }
  if (tid == 0) out.eL[bh * NC + c] = expf(gam[C - 1]);
  __syncthreads();

  /* 2. q, k -> qs, ks (bf16 operands) and Q~, K~ (global bf16, one rounding of the inputs): 8 columns an item,
     UN items of q and of k a thread loaded before any is used (tile_load.cuh: the loads must overlap) */
  const int64_t row0 = (bh * NC + c) * (int64_t)C; /* first padded row of this chunk in the (BH, NC*64, *) scratch */
  {
    constexpr int UN = 4;
    const int cg = K / 8, items = C * cg;
    for (int i0 = tid; i0 < items; i0 += UN * 128) {
      tile::v8 xq[UN], xk[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int i = i0 + u * 128, r = i / cg, x = (i % cg) * 8;
        if (i < items && r < L) xq[u] = tile::load8u(q + tok(r) * K + x), xk[u] = tile::load8u(k + tok(r) * K + x);
      }
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int i = i0 + u * 128, r = i / cg, x = (i % cg) * 8;
        if (i >= items) break;
        float fq[8], fk[8], fqt[8], fkt[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
          fq[e] = r < L ? xq[u].f[e] : 0.0f, fk[e] = r < L ? xk[u].f[e] : 0.0f;
          fqt[e] = scale * eg[r] * fq[e], fkt[e] = ed[r] * fk[e];
        }
        tile::store8(qs + r * KP + x, fq), tile::store8(ks + r * KP + x, fk);
        tile::store8(out.Qt + (row0 + r) * K + x, fqt), tile::store8(out.Kt + (row0 + r) * K + x, fkt);
      }
    }
  }
  __syncthreads();

  /* 3. warp w: rows 16w.. of K K^T and Q K^T (16 x 64 each) -> A (shared fp32) and P (global bf16) */
  {
    float aK[8][4] = {}, aQ[8][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t fk[4], fq[4], fb4[4];
      ld_a(fk, ks, KP, 16 * w, k0, lane);
      ld_a(fq, qs, KP, 16 * w, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; np++) {
        ld_bt(fb4, ks, KP, 16 * np, k0, lane);
        mma2(aK[2 * np], aK[2 * np + 1], fk, fb4);
        mma2(aQ[2 * np], aQ[2 * np + 1], fq, fb4);
      }
    }
    __syncthreads(); /* every warp is done with qs: A goes there */
    const int64_t m0 = (bh * NC + c) * (int64_t)(C * C); /* this chunk's 64 x 64 matrices */
    uint16_t *P = out.P + m0;
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) { /* elements e, e + 1 of a C fragment: adjacent columns j, j + 1 of row r */
        int r = 16 * w + c_row(lane, e), j = 8 * n + c_col(lane, e);
        float d0 = j <= r ? expf(gam[r] - gam[j]) : 0.0f, d1 = j + 1 <= r ? expf(gam[r] - gam[j + 1]) : 0.0f;
        Af[r * LDA + j] = j < r ? bet[r] * d0 * aK[n][e] : 0.0f;
        Af[r * LDA + j + 1] = j + 1 < r ? bet[r] * d1 * aK[n][e + 1] : 0.0f;
        tile::store2(P + r * C + j, scale * d0 * aQ[n][e], scale * d1 * aQ[n][e + 1]);
        if (out.KK) {
          *(float2 *)(out.KK + m0 + r * C + j) = make_float2(aK[n][e], aK[n][e + 1]);
          *(float2 *)(out.QK + m0 + r * C + j) = make_float2(aQ[n][e], aQ[n][e + 1]);
        }
      }
  }
  __syncthreads();

  /* 4. T = (I + A)^-1, thread j < 64 solves column j in registers: T_rj = [r == j] - sum_{m < r} A_rm T_mj (the
     T_mj of m < j are 0 by the same formula); the rows of A are read as float4, the same address in every lane */
  if (tid < C) {
    const int j = tid;
    float tc[C];
#pragma unroll
    for (int r = 0; r < C; r++) tc[r] = 0.0f;
#pragma unroll
    for (int r = 0; r < C; r++) {
      const float4 *ar = (const float4 *)(Af + r * LDA);
      float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
      for (int m4 = 0; m4 < (r + 3) / 4; m4++) { /* A_rm = 0 and tc[m] = 0 for m >= r */
        float4 a = ar[m4];
        s0 += a.x * tc[4 * m4] + a.y * tc[4 * m4 + 1];
        s1 += a.z * tc[4 * m4 + 2] + a.w * tc[4 * m4 + 3];
      }
      tc[r] = (r == j ? 1.0f : 0.0f) - (s0 + s1);
    }
#pragma unroll
    for (int r = 0; r < C; r++) {
      Tm[r * C + j] = tc[r];
      if (out.T) out.T[(bh * NC + c) * (int64_t)(C * C) + r * C + j] = tc[r];
    }
  }
  __syncthreads();

  /* 5. Tv = T diag(beta), Tk = T diag(beta exp(gam)) as bf16 operands */
  for (int i = tid; i < C * C; i += blockDim.x) {
    int r = i / C, j = i % C;
    float tv = Tm[r * C + j] * bet[j];
    Tv[r * LDC + j] = bf(tv);
    Tk[r * LDC + j] = bf(tv * eg[j]);
  }
  __syncthreads();

  /* 6. W = Tk K (64 x K), warp w: rows 16w.., 64 columns at a time */
  uint32_t fTk[4][4], fTv[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    ld_a(fTk[kk], Tk, LDC, 16 * w, 16 * kk, lane);
    ld_a(fTv[kk], Tv, LDC, 16 * w, 16 * kk, lane);
  }
  for (int n0 = 0; n0 < K; n0 += 64) {
    float acc[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
      for (int np = 0; np < 4; np++) {
        if (n0 + 16 * np >= K) continue;
        uint32_t fb4[4];
        ld_b(fb4, ks, KP, 16 * kk, n0 + 16 * np, lane);
        mma2(acc[2 * np], acc[2 * np + 1], fTk[kk], fb4);
      }
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        int r = 16 * w + c_row(lane, e), x = n0 + 8 * n + c_col(lane, e);
        if (x < K) tile::store2(out.W + (row0 + r) * K + x, acc[n][e], acc[n][e + 1]);
      }
  }

  /* 7. U = Tv V (64 x V), 64 columns at a time (V % 64 == 0): V is staged through registers, the next 64 columns'
     loads issued before this tile's products (4 items of 8 columns a thread) */
  constexpr int UV = C * 8 / 128;
  tile::v8 xv[UV];
  auto v_load = [&](int n0) {
#pragma unroll
    for (int u = 0; u < UV; u++) {
      int i = tid + u * 128, r = i / 8, x = (i % 8) * 8;
      if (r < L) xv[u] = tile::load8u(v + tok(r) * V + n0 + x);
    }
  };
  v_load(0);
  for (int n0 = 0; n0 < V; n0 += 64) {
#pragma unroll
    for (int u = 0; u < UV; u++) {
      int i = tid + u * 128, r = i / 8, x = (i % 8) * 8;
      float f[8];
#pragma unroll
      for (int e = 0; e < 8; e++) f[e] = r < L ? xv[u].f[e] : 0.0f;
      tile::store8(vs + r * LDC + x, f);
    }
    __syncthreads();
    if (n0 + 64 < V) v_load(n0 + 64);
    float acc[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
      for (int np = 0; np < 4; np++) {
        uint32_t fb4[4];
        ld_b(fb4, vs, LDC, 16 * kk, 16 * np, lane);
        mma2(acc[2 * np], acc[2 * np + 1], fTv[kk], fb4);
      }
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        int r = 16 * w + c_row(lane, e), x = n0 + 8 * n + c_col(lane, e);
        tile::store2(out.U + (row0 + r) * V + x, acc[n][e], acc[n][e + 1]);
      }
    __syncthreads(); /* vs is restaged next */
  }
}

}  // namespace
#endif
