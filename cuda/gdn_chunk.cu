/* gdn_chunk.cu — the chunked Gated DeltaNet forward on tensor cores (DESIGN 3.2; the CPU file core/ops_gdn.c holds
 * the same maths in double). Off by default: cuda/ops_gdn.cu takes it only when M2_GDN_CHUNK_TC=1 (read once) or a
 * program called m2_cuda_gdn_chunk_tc(1), and only for shapes gdn_tc_applies() accepts.
 *
 * Per (b, h), chunks of C = 64 tokens, local index r, j in [0, 64); the state S (K x V) at the chunk's start:
 *   gam_r = g_0 + ... + g_r                                   (cumulative log-decay within the chunk)
 *   A_rj  = beta_r exp(gam_r - gam_j) k_r.k_j   (j < r)       (strictly lower, 64 x 64)
 *   T     = (I + A)^-1                                        (unit lower: forward substitution, fp32)
 *   W     = T diag(beta exp(gam)) K,  U = T diag(beta) V      (64 x K, 64 x V)
 *   V'    = U - W S                                           (the v' of every token of the chunk)
 *   o     = Q~ S + P V'     Q~_r = scale exp(gam_r) q_r,  P_rj = scale exp(gam_r - gam_j) q_r.k_j  (j <= r)
 *   S    <- exp(gam_63) S + K~^T V'                           K~_j = exp(gam_63 - gam_j) k_j
 * A chunk's padding rows (t >= T) have g = beta = 0 and q = k = v = 0: they change nothing (gam_63 = gam_{L-1}).
 *
 * Two kernels:
 *   prep  grid (NC, B H), 4 warps: the chunk's A and P (two 64 x 64 x K products), T, then W and U (64 x 64 x K
 *         and 64 x 64 x V products); writes W, U, Q~, K~, P as bf16 and exp(gam_63) as fp32 into scratch laid out
 *         per (b, h) with NC * 64 padded rows: W, Q~, K~ (BH, NC*64, K), U (BH, NC*64, V), P (BH, NC, 64, 64).
 *   scan  grid (V / 64, B H), 8 warps: walks the chunks in order with S (K x 64 columns of V) in fp32 mma
 *         accumulators (16-row tiles of S, tile i held by warp i % 8); per chunk stages W, Q~, K~, U, P in shared
 *         memory, writes S to the checkpoints (when kept) and as bf16 to shared memory, then
 *         V' = U - W S and o = Q~ S (warp (w % 4, w / 4): 16 rows x 32 columns), o += P V', S = e S + K~^T V'.
 * Every product takes bf16 operands (mma.sync m16n8k16) and accumulates in fp32; S, T, the decays stay fp32.
 * The checkpoints are what the recurrent forward writes (B, H, NS, V, K) fp32, seg 64: the state before every
 * chunk, so the recurrent CUDA backward runs unchanged on them. */
#include <stdlib.h>
#include <string.h>
#include "ops_common.cuh"
#include "mma.cuh"
#include "gdn_chunk.h"
#include "m2cuda.h"

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

/* ================= prep: per chunk A, P, T, W, U, Q~, K~ ================= */

/* Shared memory of prep (bytes) for key dim K. */
static size_t prep_smem(int K) {
  return (size_t)2 * C * (K + 8) * 2     /* ks, qs: the chunk's k and q (64 x K bf16) */
         + (size_t)3 * C * LDC * 2       /* vs, Tk, Tv (64 x 64 bf16) */
         + (size_t)C * LDA * 4           /* Af (64 x 68 fp32) */
         + (size_t)C * (C + 1) * 4       /* Tm (64 x 65 fp32) */
         + (size_t)5 * C * 4;            /* gam, bet, eg, ed, (spare) */
}

struct prep_out {
  uint16_t *W, *U, *Qt, *Kt, *P; /* bf16 scratch, layouts in the header comment */
  float *eL;                     /* (BH, NC) */
};

template <class T>
__global__ void __launch_bounds__(128) k_gdn_prep(const T *q, const T *k, const T *v, const T *g, const T *beta,
                                                  prep_out out, int64_t Tn, int H, int K, int V, float scale, int NC) {
  extern __shared__ __align__(16) unsigned char sm[];
  const int KP = K + 8;
  uint16_t *ks = (uint16_t *)sm, *qs = ks + C * KP, *vs = qs + C * KP, *Tk = vs + C * LDC, *Tv = Tk + C * LDC;
  float *Af = (float *)(Tv + C * LDC), *Tm = Af + C * LDA, *gam = Tm + C * (C + 1), *bet = gam + C,
        *eg = bet + C, *ed = eg + C;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int c = blockIdx.x;
  const int64_t bh = blockIdx.y, b = bh / H, h = bh % H, t0 = (int64_t)c * C;
  const int L = Tn - t0 < C ? (int)(Tn - t0) : C;
  auto tok = [&](int r) { return (b * Tn + t0 + r) * H + h; }; /* (B, T, H) index of local row r < L */

  /* 1. the chunk's g, beta, k, q (zero rows past T) */
  if (tid < C) {
    gam[tid] = tid < L ? to_f(g[tok(tid)]) : 0.0f;
    bet[tid] = tid < L ? to_f(beta[tok(tid)]) : 0.0f;
  }
  for (int i = tid; i < C * K; i += blockDim.x) {
    int r = i / K, x = i % K;
    bool in = r < L;
    ks[r * KP + x] = bf(in ? to_f(k[tok(r) * K + x]) : 0.0f);
    qs[r * KP + x] = bf(in ? to_f(q[tok(r) * K + x]) : 0.0f);
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

  /* 2. warp w: rows 16w.. of K K^T and Q K^T (16 x 64 each) -> A (shared fp32) and P (global bf16) */
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
    uint16_t *P = out.P + (bh * NC + c) * (int64_t)(C * C);
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * w + c_row(lane, e), j = 8 * n + c_col(lane, e);
        float dec = j <= r ? expf(gam[r] - gam[j]) : 0.0f;
        Af[r * LDA + j] = j < r ? bet[r] * dec * aK[n][e] : 0.0f;
        P[r * C + j] = bf(scale * dec * aQ[n][e]);
      }
  }
  __syncthreads();

  /* 3. T = (I + A)^-1, thread j < 64 solves column j in registers: T_rj = [r == j] - sum_{m < r} A_rm T_mj (the
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
    for (int r = 0; r < C; r++) Tm[r * (C + 1) + j] = tc[r];
  }
  __syncthreads();

  /* 4. Tv = T diag(beta), Tk = T diag(beta exp(gam)) as bf16 operands; Q~ and K~ from the inputs (one rounding) */
  for (int i = tid; i < C * C; i += blockDim.x) {
    int r = i / C, j = i % C;
    float tv = Tm[r * (C + 1) + j] * bet[j];
    Tv[r * LDC + j] = bf(tv);
    Tk[r * LDC + j] = bf(tv * eg[j]);
  }
  const int64_t row0 = (bh * NC + c) * (int64_t)C; /* first padded row of this chunk in the (BH, NC*64, *) scratch */
  for (int i = tid; i < C * K; i += blockDim.x) {
    int r = i / K, x = i % K;
    bool in = r < L;
    out.Qt[(row0 + r) * K + x] = bf(in ? scale * eg[r] * to_f(q[tok(r) * K + x]) : 0.0f);
    out.Kt[(row0 + r) * K + x] = bf(in ? ed[r] * to_f(k[tok(r) * K + x]) : 0.0f);
  }
  __syncthreads();

  /* 5. W = Tk K (64 x K) and U = Tv V (64 x V), warp w: rows 16w.., 64 columns at a time */
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
      for (int e = 0; e < 4; e++) {
        int r = 16 * w + c_row(lane, e), x = n0 + 8 * n + c_col(lane, e);
        if (x < K) out.W[(row0 + r) * K + x] = bf(acc[n][e]);
      }
  }
  for (int n0 = 0; n0 < V; n0 += 64) {
    for (int i = tid; i < C * 64; i += blockDim.x) { /* stage V[:, n0 .. n0+63] */
      int r = i / 64, x = i % 64;
      bool in = r < L && n0 + x < V;
      vs[r * LDC + x] = bf(in ? to_f(v[tok(r) * V + n0 + x]) : 0.0f);
    }
    __syncthreads();
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
      for (int e = 0; e < 4; e++) {
        int r = 16 * w + c_row(lane, e), x = n0 + 8 * n + c_col(lane, e);
        if (x < V) out.U[(row0 + r) * V + x] = bf(acc[n][e]);
      }
    __syncthreads(); /* vs is restaged next */
  }
}

/* ================= scan: the chunks in order, S in registers ================= */

static size_t scan_smem(int K) {
  return (size_t)3 * C * (K + 8) * 2   /* Ws, Qs, Ks: W, Q~, K~ of the chunk (64 x K bf16) */
         + (size_t)3 * C * LDC * 2     /* Us, Ps, Vn: U (64 x 64 of this block's columns), P, V' (bf16) */
         + (size_t)K * LDC * 2;        /* Ss: S (K x 64) as bf16 */
}

struct scan_in {
  const uint16_t *W, *U, *Qt, *Kt, *P;
  const float *eL;
};

/* Block (vt, bh): columns v0 = 64 vt .. v0 + 63 of the state of (b, h). Warp w holds the S tiles of rows
 * 16 (w + 8 i), i = 0, 1 (those below K), 64 columns each: Sa[i][n][e]. */
template <class T>
__global__ void __launch_bounds__(256) k_gdn_scan(scan_in in, const T *h0, T *o, T *hT, float *ck, int64_t Tn, int H,
                                                  int K, int V, int NC) {
  extern __shared__ __align__(16) unsigned char sm[];
  const int KP = K + 8;
  uint16_t *Ws = (uint16_t *)sm, *Qs = Ws + C * KP, *Ks = Qs + C * KP, *Us = Ks + C * KP, *Ps = Us + C * LDC,
           *Vn = Ps + C * LDC, *Ss = Vn + C * LDC;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, KT = K / 16;
  const int mr = w & 3, nh = w >> 2; /* the V' / o tile of this warp: rows 16 mr.., columns 32 nh.. */
  const int v0 = blockIdx.x * BV;
  const int64_t bh = blockIdx.y, b = bh / H, h = bh % H;

  float Sa[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int row = 16 * (w + 8 * i) + c_row(lane, e), col = v0 + 8 * n + c_col(lane, e);
        Sa[i][n][e] = (h0 && w + 8 * i < KT) ? to_f(h0[(bh * K + row) * V + col]) : 0.0f;
      }

  for (int c = 0; c < NC; c++) {
    const int64_t row0 = (bh * NC + c) * (int64_t)C, t0 = (int64_t)c * C;
    stage(Ws, KP, in.W + row0 * K, K, C, K);
    stage(Qs, KP, in.Qt + row0 * K, K, C, K);
    stage(Ks, KP, in.Kt + row0 * K, K, C, K);
    stage(Us, LDC, in.U + row0 * V + v0, V, C, BV);
    stage(Ps, LDC, in.P + row0 * C, C, C, C);
    mma_cp_commit();
    /* the state before the chunk: checkpoint (fp32, (V, K) per state) and bf16 operand */
#pragma unroll
    for (int i = 0; i < 2; i++) {
      if (w + 8 * i >= KT) continue;
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int row = 16 * (w + 8 * i) + c_row(lane, e), col = 8 * n + c_col(lane, e);
          if (ck) ck[((bh * NC + c) * V + v0 + col) * K + row] = Sa[i][n][e];
          Ss[row * LDC + col] = bf(Sa[i][n][e]);
        }
    }
    mma_cp_wait<0>();
    __syncthreads();

    /* V' = U - W S and o = Q~ S: this warp's 16 x 32 tile */
    float aV[4][4] = {}, aO[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t fw[4], fq[4], fs[4];
      ld_a(fw, Ws, KP, 16 * mr, k0, lane);
      ld_a(fq, Qs, KP, 16 * mr, k0, lane);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        ld_b(fs, Ss, LDC, k0, 32 * nh + 16 * np, lane);
        mma2(aV[2 * np], aV[2 * np + 1], fw, fs);
        mma2(aO[2 * np], aO[2 * np + 1], fq, fs);
      }
    }
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * mr + c_row(lane, e), col = 32 * nh + 8 * n + c_col(lane, e);
        Vn[r * LDC + col] = bf(fb(Us[r * LDC + col]) - aV[n][e]);
      }
    __syncthreads();

    /* o += P V' (P lower: only k-steps kk <= mr), then store the rows before T */
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      if (kk > mr) continue;
      uint32_t fp[4], fv[4];
      ld_a(fp, Ps, LDC, 16 * mr, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        ld_b(fv, Vn, LDC, 16 * kk, 32 * nh + 16 * np, lane);
        mma2(aO[2 * np], aO[2 * np + 1], fp, fv);
      }
    }
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * mr + c_row(lane, e), col = v0 + 32 * nh + 8 * n + c_col(lane, e);
        if (t0 + r < Tn) o[((b * Tn + t0 + r) * H + h) * V + col] = from_f<T>(aO[n][e]);
      }

    /* S = exp(gam_63) S + K~^T V' */
    const float eL = in.eL[bh * NC + c];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      int mt = w + 8 * i;
      if (mt >= KT) continue;
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) Sa[i][n][e] *= eL;
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        uint32_t fk[4], fv[4];
        ld_a_t(fk, Ks, KP, 16 * kk, 16 * mt, lane);
#pragma unroll
        for (int np = 0; np < 4; np++) {
          ld_b(fv, Vn, LDC, 16 * kk, 16 * np, lane);
          mma2(Sa[i][2 * np], Sa[i][2 * np + 1], fk, fv);
        }
      }
    }
    __syncthreads(); /* the next chunk restages every tile */
  }
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (w + 8 * i >= KT) continue;
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int row = 16 * (w + 8 * i) + c_row(lane, e), col = v0 + 8 * n + c_col(lane, e);
        hT[(bh * K + row) * V + col] = from_f<T>(Sa[i][n][e]);
      }
  }
}

int g_switch = -1; /* -1: the environment not read yet */
long g_calls;

}  // namespace

extern "C" int m2_cuda_gdn_chunk_tc(int set) {
  if (set >= 0) g_switch = set != 0;
  else if (g_switch < 0) {
    const char *e = getenv("M2_GDN_CHUNK_TC");
    g_switch = e && strcmp(e, "1") == 0;
  }
  return g_switch;
}

extern "C" long m2_cuda_gdn_chunk_tc_calls(void) { return g_calls; }

bool gdn_tc_applies(const m2_gdn_attr *d, int64_t seg) {
  return m2_cuda_gdn_chunk_tc(-1) == 1 && d->K % 16 == 0 && d->K <= GDN_TC_MAXK && d->V % BV == 0 && seg == C &&
         d->T >= 1 && d->B * d->H >= 1 && d->B * d->H < 65536 && (d->T + C - 1) / C < 65536 * 32;
}

m2_status gdn_tc_forward(const m2_gdn_attr *d, m2_dtype dt, m2_device dev, cudaStream_t st, const void *const in[6],
                         void *o, void *hT, float *ck) {
  const int K = (int)d->K, V = (int)d->V, H = (int)d->H, NC = (int)((d->T + C - 1) / C);
  const int64_t BH = d->B * d->H, rows = BH * NC * C;
  int64_t nW = rows * K, nU = rows * V, nP = BH * NC * C * C, nE = BH * NC;
  m2_tensor *W = m2_empty(M2_BF16, dev, 1, &nW), *U = m2_empty(M2_BF16, dev, 1, &nU),
            *Qt = m2_empty(M2_BF16, dev, 1, &nW), *Kt = m2_empty(M2_BF16, dev, 1, &nW),
            *P = m2_empty(M2_BF16, dev, 1, &nP), *eL = m2_empty(M2_F32, dev, 1, &nE);
  m2_status s = (W && U && Qt && Kt && P && eL) ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    prep_out po = {(uint16_t *)m2_data(W), (uint16_t *)m2_data(U), (uint16_t *)m2_data(Qt), (uint16_t *)m2_data(Kt),
                   (uint16_t *)m2_data(P), (float *)m2_data(eL)};
    scan_in si = {po.W, po.U, po.Qt, po.Kt, po.P, po.eL};
    size_t sp = prep_smem(K), ss = scan_smem(K);
    cudaError_t e = cudaSuccess;
    CU_FLOAT_DISPATCH(dt, {
      const T *const *x = (const T *const *)in;
      e = cudaFuncSetAttribute(k_gdn_prep<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sp);
      if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_gdn_scan<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss);
      if (e == cudaSuccess) {
        k_gdn_prep<T><<<dim3((unsigned)NC, (unsigned)BH), 128, sp, st>>>(x[0], x[1], x[2], x[3], x[4], po, d->T, H,
                                                                          K, V, (float)d->scale, NC);
        k_gdn_scan<T><<<dim3((unsigned)(V / BV), (unsigned)BH), 256, ss, st>>>(si, x[5], (T *)o, (T *)hT, ck, d->T,
                                                                               H, K, V, NC);
        e = cudaGetLastError();
      }
    });
    if (e != cudaSuccess)
      s = m2_fail(M2_ERR_CUDA, "gdn_chunked: chunked tensor-core forward launch failed: %s", cudaGetErrorString(e));
    else g_calls++;
  }
  m2_release(W), m2_release(U), m2_release(Qt), m2_release(Kt), m2_release(P), m2_release(eL);
  return s;
}
