/* gdn_chunk.cu — the chunked Gated DeltaNet forward on tensor cores (DESIGN 3.2; the CPU file core/ops_gdn.c holds
 * the same maths in double). On by default (M2_GDN_CHUNK_TC=0 turns it off, =fwd keeps the recurrent backward; read
 * once; or m2_cuda_gdn_chunk_tc(0, 1 or 2)): cuda/ops_gdn.cu takes it for the shapes gdn_tc_shape_ok() accepts with
 * bf16 inputs or bf16 products (gdn_tc_precision_ok). Its
 * backward is cuda/gdn_chunk_bwd.cu (switch 1) or the recurrent one (switch 2).
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
 *   prep  (gdn_chunk.cuh, shared with the backward) grid (NC, B H), 4 warps, two blocks an SM at K = 256 (q's
 *         shared memory holds A and T once Q K^T is taken): the chunk's A and P (two 64 x 64 x K products), T,
 *         then W and U (64 x 64 x K and 64 x 64 x V products); writes W, U, Q~, K~, P as bf16 and exp(gam_63) as
 *         fp32 into scratch laid out per (b, h) with NC * 64 padded rows: W, Q~, K~ (BH, NC*64, K),
 *         U (BH, NC*64, V), P (BH, NC, 64, 64).
 *   scan  grid (V / 64, B H), 8 warps: walks the chunks in order with S (K x 64 columns of V) in fp32 mma
 *         accumulators (16-row tiles of S, tile i held by warp i % 8); per chunk stages W, Q~, K~, U, P in shared
 *         memory, writes S to the checkpoints (when kept) and as bf16 to shared memory, then
 *         V' = U - W S and o = Q~ S (warp (w % 4, w / 4): 16 rows x 32 columns), o += P V', S = e S + K~^T V';
 *         while it works on a chunk it prefetches the next chunk's W, Q~, K~, P, U into L2.
 * Every product takes bf16 operands (mma.sync m16n8k16) and accumulates in fp32; S, T, the decays stay fp32.
 * The checkpoints are what the recurrent forward writes (B, H, NS, V, K) fp32, seg 64: the state before every
 * chunk, so the recurrent CUDA backward runs unchanged on them. */
#include <stdlib.h>
#include <string.h>
#include "gdn_chunk.cuh"
#include "m2cuda.h"

namespace {

/* ================= scan: the chunks in order, S in registers ================= */

/* Every line of [p, p + bytes) whose index i within the range has i % n == part, over the block's threads. */
__device__ __forceinline__ void l2_prefetch_range(const void *p, int64_t bytes, int part, int n) {
  const char *c = (const char *)p;
  for (int64_t i = (int64_t)threadIdx.x * n + part; i * 128 < bytes; i += (int64_t)blockDim.x * n)
    l2_prefetch(c + i * 128);
}

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
    stage(Us, LDC, in.U + row0 * V + v0, V, C, BV);
    stage(Ps, LDC, in.P + row0 * C, C, C, C);
    mma_cp_commit();
    stage(Ks, KP, in.Kt + row0 * K, K, C, K); /* a second group: K~ is needed last, it loads under V' and o */
    mma_cp_commit();
    /* the next chunk's W, Q~, K~, P (shared by the V / 64 blocks of (b, h), each prefetching every (V / 64)-th line)
       and U columns towards L2 while this one computes */
    if (c + 1 < NC) {
      const int64_t nr0 = row0 + C;
      const int NVT = V / BV;
      l2_prefetch_range(in.W + nr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(in.Qt + nr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(in.Kt + nr0 * K, (int64_t)C * K * 2, blockIdx.x, NVT);
      l2_prefetch_range(in.P + nr0 * C, (int64_t)C * C * 2, blockIdx.x, NVT);
      if (tid < C) l2_prefetch(in.U + (nr0 + tid) * V + v0);
    }
    /* the state before the chunk: checkpoint (fp32, (V, K) per state) and bf16 operand */
#pragma unroll
    for (int i = 0; i < 2; i++) {
      if (w + 8 * i >= KT) continue;
#pragma unroll
      for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns col, col + 1 of row row */
          int row = 16 * (w + 8 * i) + c_row(lane, e), col = 8 * n + c_col(lane, e);
          if (ck) {
            float *p = ck + ((bh * NC + c) * V + v0 + col) * K + row;
            p[0] = Sa[i][n][e], p[K] = Sa[i][n][e + 1];
          }
          tile::store2(Ss + row * LDC + col, Sa[i][n][e], Sa[i][n][e + 1]);
        }
    }
    mma_cp_wait<1>(); /* W, Q~, U, P */
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
      for (int e = 0; e < 4; e += 2) {
        int r = 16 * mr + c_row(lane, e), col = 32 * nh + 8 * n + c_col(lane, e);
        const uint16_t *u = Us + r * LDC + col;
        tile::store2(Vn + r * LDC + col, fb(u[0]) - aV[n][e], fb(u[1]) - aV[n][e + 1]);
      }
    mma_cp_wait<0>(); /* K~ too (the barrier makes every thread's copies visible) */
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
      for (int e = 0; e < 4; e += 2) {
        int r = 16 * mr + c_row(lane, e), col = v0 + 32 * nh + 8 * n + c_col(lane, e);
        if (t0 + r < Tn) st_pair(o + ((b * Tn + t0 + r) * H + h) * V + col, aO[n][e], aO[n][e + 1]);
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
int g_v2 = -1; /* M2_GDN_BWD_V2: -1 not read yet */
long g_keep_calls;

}  // namespace

extern "C" int m2_cuda_gdn_chunk_tc(int set) {
  if (set >= 0) g_switch = set <= 2 ? set : 1;
  else if (g_switch < 0) { /* on unless M2_GDN_CHUNK_TC=0 (since its parity and speed were measured on an H100) */
    const char *e = getenv("M2_GDN_CHUNK_TC");
    g_switch = !e || !*e ? 1 : strcmp(e, "0") == 0 || strcmp(e, "off") == 0 ? 0 : strcmp(e, "fwd") == 0 ? 2 : 1;
  }
  return g_switch;
}

extern "C" long m2_cuda_gdn_chunk_tc_calls(void) { return g_calls; }

extern "C" int m2_cuda_gdn_bwd_v2(int set) {
  if (set == 0 || set == 1) g_v2 = set;
  else if (g_v2 < 0) { /* off unless M2_GDN_BWD_V2=1 */
    const char *e = getenv("M2_GDN_BWD_V2");
    g_v2 = e && strcmp(e, "1") == 0 ? 1 : 0;
  }
  return g_v2;
}

extern "C" long m2_cuda_gdn_keep_calls(void) { return g_keep_calls; }

bool gdn_tc_keep_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt) {
  return m2_cuda_gdn_bwd_v2(-1) == 1 && gdn_tc_bwd_applies(d, seg, dt);
}

void gdn_tc_keep_numel(const m2_gdn_attr *d, int64_t *n16, int64_t *n32) {
  const int64_t BH = d->B * d->H, NC = (d->T + C - 1) / C, R = BH * NC * C;
  *n16 = 3 * R * d->K + R * d->V + R * C;
  *n32 = 3 * R * C + BH * NC;
}

bool gdn_tc_precision_ok(m2_dtype dt) {
  return dt == M2_BF16 || (dt == M2_F32 && m2_matmul_precision() == M2_MM_BF16);
}

bool gdn_tc_applies(const m2_gdn_attr *d, int64_t seg, m2_dtype dt) {
  return m2_cuda_gdn_chunk_tc(-1) >= 1 && gdn_tc_precision_ok(dt) && gdn_tc_shape_ok(d, seg);
}

bool gdn_tc_shape_ok(const m2_gdn_attr *d, int64_t seg) {
  return d->K % 16 == 0 && d->K <= GDN_TC_MAXK && d->V % BV == 0 && seg == C &&
         d->T >= 1 && d->B * d->H >= 1 && d->B * d->H < 65536 && (d->T + C - 1) / C < 65536;
}

m2_status gdn_tc_forward(const m2_gdn_attr *d, m2_dtype dt, m2_device dev, cudaStream_t st, const void *const in[6],
                         void *o, void *hT, float *ck, void *keep16, float *keep32) {
  const int K = (int)d->K, V = (int)d->V, H = (int)d->H, NC = (int)((d->T + C - 1) / C);
  const int64_t BH = d->B * d->H, rows = BH * NC * C;
  int64_t nW = rows * K, nU = rows * V, nP = BH * NC * C * C, nE = BH * NC;
  const bool kept = keep16 && keep32; /* prep writes into the kept tensors (T, K K^T, Q K^T too): no scratch */
  m2_tensor *W = NULL, *U = NULL, *Qt = NULL, *Kt = NULL, *P = NULL, *eL = NULL;
  if (!kept)
    W = m2_empty(M2_BF16, dev, 1, &nW), U = m2_empty(M2_BF16, dev, 1, &nU), Qt = m2_empty(M2_BF16, dev, 1, &nW),
    Kt = m2_empty(M2_BF16, dev, 1, &nW), P = m2_empty(M2_BF16, dev, 1, &nP), eL = m2_empty(M2_F32, dev, 1, &nE);
  m2_status s = (kept || (W && U && Qt && Kt && P && eL)) ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    prep_out po = kept ? prep_split(BH, NC, K, V, (uint16_t *)keep16, keep32)
                       : prep_out{(uint16_t *)m2_data(W), (uint16_t *)m2_data(U), (uint16_t *)m2_data(Qt),
                                  (uint16_t *)m2_data(Kt), (uint16_t *)m2_data(P), (float *)m2_data(eL), NULL, NULL,
                                  NULL};
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
    else g_calls++, g_keep_calls += kept;
  }
  m2_release(W), m2_release(U), m2_release(Qt), m2_release(Kt), m2_release(P), m2_release(eL);
  return s;
}
