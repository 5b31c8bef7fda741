/* moe_gmm_tc.cu — moe_grouped_matmul's three products on tensor cores, the group offsets never leaving the device
 * (the per-expert cuBLAS path of ops_moe.cu reads them to the host: one stream sync per call). Used when
 * the products are bf16 (moe_gmm attr bf16, or bf16 tensors) and M2_MOE_GROUPED=1. Off by default: an H100 measured
 * a 7B-MoE-shaped step at 123.6 ms on them against 258.1 ms on the per-expert path, but the lone layer slower (55.8
 * against 33.7 ms forward + backward; cuda/bench/results/gpu_run-2026-12-07.md), and the switch of the default has
 * not run on a GPU yet.
 *
 * Every product is C (rows, cols) = A (rows, K) B (K, cols), bf16 operands, fp32 accumulation (mma.sync m16n8k16),
 * C stored as f32 or bf16. Blocks of 4 warps own a 64 x 64 tile of C (each warp 32 x 32); K goes in steps of 32,
 * both operands staged in shared memory K-contiguous (rows padded to 40 elements), double-buffered: a K-contiguous
 * operand by cp.async (16 bytes when aligned and whole, else element by element), a transposed one element by
 * element along its contiguous dimension. No atomics: every C element is written once, in a fixed order.
 *
 *   forward  y[g] (rows_e, O)   = x[g] (rows_e, Din) w[e]^T        A K-contiguous, B K-contiguous (w rows)
 *   dx       dx[g] (rows_e, Din) = dy[g] (rows_e, O) w[e] (O, Din)  A K-contiguous, B transposed
 *   dw       dw[e] (O, Din)      = dy[g]^T (O, rows_e) x[g]         A transposed,  B transposed (K = the group)
 * forward and dx ("rows grouped"): a plan kernel (one block, scans) turns the offsets into each group's first tile,
 * tile_start[e] = sum_{e' < e} ceil(rows_e' / 64); the grid has ceil(M / 64) + E row tiles, an upper bound, and a
 * block finds its expert by binary search in tile_start (blocks past the last tile return). dw ("K grouped"): grid
 * (Din tiles, O tiles, E), each block sums over its expert's rows; an empty group writes zeros.
 *
 * Offsets are not checked against the host here (that is the sync this path avoids): the plan clamps them to a
 * monotone partition of [0, M) (off[0] = 0, off[E] = M), so malformed offsets give some result and never an
 * out-of-bounds access. moe_permute's offsets are always valid; the default path reports malformed ones. */
#include <stdlib.h>
#include <string.h>
#include "ops_common.cuh"
#include "mma.cuh"
#include "moe_gmm_tc.h"

namespace {

constexpr int NW = 4;             /* warps a block: 2 x 2 */
constexpr int BM = 64, BN = 64;   /* C tile */
constexpr int BK = 32;            /* K step */
constexpr int LD = BK + 8;        /* shared row stride (elements): ldmatrix rows 80 bytes apart, no bank conflicts */
constexpr int TILE = (BM + BN) * LD; /* one stage: A (BM rows) then B (BN rows), K-contiguous */

/* Stage rows r0 .. r0 + R - 1, k0 .. k0 + BK - 1 of an operand X (x(r, k) = X[r sr + k sk]) into shared s (R x LD,
 * K-contiguous); rows >= r1 and ks >= k1 become 0. KC: sk == 1 (K-contiguous), else sr == 1 (rows contiguous). */
template <int R, bool KC>
__device__ __forceinline__ void stage(uint16_t *s, const uint16_t *X, int64_t sr, int64_t sk, int64_t r0, int64_t r1,
                                      int64_t k0, int64_t k1) {
  if (KC) {
    constexpr int CH = BK / 8; /* 16-byte chunks a row */
    for (int i = threadIdx.x; i < R * CH; i += NW * 32) {
      const int r = i / CH, c = i % CH;
      const int64_t gr = r0 + r, gk = k0 + c * 8;
      uint16_t *d = s + r * LD + c * 8;
      const uint16_t *p = X + gr * sr + gk;
      if (gr < r1 && gk + 8 <= k1 && ((uintptr_t)p & 15) == 0) {
        mma_cp16(d, p, true);
      } else {
#pragma unroll
        for (int q = 0; q < 8; q++) d[q] = gr < r1 && gk + q < k1 ? p[q] : (uint16_t)0;
      }
    }
  } else {
    for (int i = threadIdx.x; i < R * BK; i += NW * 32) {
      const int r = i % R, k = i / R; /* consecutive threads: consecutive rows, contiguous in X */
      const int64_t gr = r0 + r, gk = k0 + k;
      s[r * LD + k] = gr < r1 && gk < k1 ? X[gr + gk * sk] : (uint16_t)0;
    }
  }
}

/* acc (warp's 32 x 32 of C) += A_s (BM x BK) B_s^T (B_s: BN x BK), the fragments as attention_tc.cu's load_a and
 * mul_abt load them. */
__device__ __forceinline__ void tile_mma(float acc[2][4][4], const uint16_t *As, const uint16_t *Bs, int wm, int wn,
                                         int lane) {
#pragma unroll
  for (int ks = 0; ks < BK / 16; ks++) {
    uint32_t a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
      mma_ldsm4(a[mi], As + (wm * 32 + mi * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < 2; np++) {
      uint32_t b[4];
      mma_ldsm4(b, Bs + (wn * 32 + np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mi = 0; mi < 2; mi++) {
        mma_bf16(acc[mi][2 * np], a[mi], b[0], b[1]);
        mma_bf16(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
      }
    }
  }
}

/* The block's C tile: rows m0 .. (< m1) of A / C, cols n0 .. (< N), K from k0 to k1, A(i, k) = A[i asi + k ask],
 * B(k, j) = B[k bsk + j bsj], C(i, j) = C[i ldc + j]. */
template <class T, bool AKC, bool BKC>
__device__ __forceinline__ void tile_gemm(const uint16_t *A, int64_t asi, int64_t ask, const uint16_t *B, int64_t bsk,
                                          int64_t bsj, T *C, int64_t ldc, int64_t m0, int64_t m1, int64_t n0,
                                          int64_t N, int64_t k0, int64_t k1, uint16_t *sm) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wm = w >> 1, wn = w & 1, g = lane >> 2, tq = lane & 3;
  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int nj = 0; nj < 4; nj++) acc[mi][nj][0] = acc[mi][nj][1] = acc[mi][nj][2] = acc[mi][nj][3] = 0;
  const int64_t nk = k1 > k0 ? (k1 - k0 + BK - 1) / BK : 0;
  /* B(k, j) as an operand staged by rows j: x(j, k) = B[j bsj + k bsk] */
  if (nk > 0) {
    stage<BM, AKC>(sm, A, asi, ask, m0, m1, k0, k1);
    stage<BN, BKC>(sm + BM * LD, B, bsj, bsk, n0, N, k0, k1);
  }
  mma_cp_commit();
  for (int64_t it = 0; it < nk; it++) {
    uint16_t *cur = sm + (it & 1) * TILE;
    if (it + 1 < nk) {
      uint16_t *nxt = sm + ((it + 1) & 1) * TILE;
      const int64_t kn = k0 + (it + 1) * BK;
      stage<BM, AKC>(nxt, A, asi, ask, m0, m1, kn, k1);
      stage<BN, BKC>(nxt + BM * LD, B, bsj, bsk, n0, N, kn, k1);
      mma_cp_commit();
      mma_cp_wait<1>();
    } else {
      mma_cp_wait<0>();
    }
    __syncthreads(); /* this stage's plain stores and cp.async data are visible to every warp */
    tile_mma(acc, cur, cur + BM * LD, wm, wn, lane);
    __syncthreads(); /* every warp is done with `cur` before the next iteration stages into it */
  }
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int64_t i = m0 + wm * 32 + mi * 16 + g + h * 8;
      if (i >= m1) continue;
#pragma unroll
      for (int nj = 0; nj < 4; nj++) {
        const int64_t j = n0 + wn * 32 + nj * 8 + 2 * tq;
        if (j < N) C[i * ldc + j] = from_f<T>(acc[mi][nj][2 * h]);
        if (j + 1 < N) C[i * ldc + j + 1] = from_f<T>(acc[mi][nj][2 * h + 1]);
      }
    }
}

constexpr int PLAN_T = 256; /* threads of the plan kernel: groups a round */

/* Inclusive scan (max or sum) of v over the block, in a[] (PLAN_T entries); every thread gets its prefix. */
template <bool MAX>
__device__ __forceinline__ int64_t block_scan(int64_t v, int64_t *a) {
  const int i = threadIdx.x;
  a[i] = v;
  __syncthreads();
  for (int o = 1; o < PLAN_T; o <<= 1) {
    int64_t u = a[i];
    if (i >= o) u = MAX ? (a[i - o] > u ? a[i - o] : u) : u + a[i - o];
    __syncthreads();
    a[i] = u;
    __syncthreads();
  }
  return a[i];
}

/* One block: so = the offsets clamped to a monotone partition of [0, M) (so[0] = 0, so[E] = M: group e's end is
 * the running max of the clamped off[e + 1]), ts[e] = first row tile of group e (ts[E] = all of them). */
__global__ void __launch_bounds__(PLAN_T) k_plan(const int64_t *off, int64_t E, int64_t M, int64_t *so, int64_t *ts) {
  __shared__ int64_t a[PLAN_T];
  int64_t start = 0, tiles = 0; /* carried between rounds: the previous group's end, tiles before this round */
  for (int64_t base = 0; base < E; base += PLAN_T) {
    const int64_t e = base + threadIdx.x;
    int64_t end = 0;
    if (e < E) {
      end = e + 1 == E ? M : off[e + 1];
      end = end < 0 ? 0 : end > M ? M : end;
    }
    end = block_scan<true>(end, a);
    end = end > start ? end : start;
    const int64_t prev = threadIdx.x > 0 ? a[threadIdx.x - 1] : start; /* (a holds the scan until the next one) */
    const int64_t first = prev > start ? prev : start;
    __syncthreads();
    const int64_t n = e < E ? (end - first + BM - 1) / BM : 0;
    const int64_t incl = block_scan<false>(n, a);
    if (e < E) {
      so[e] = first;
      ts[e] = tiles + incl - n;
    }
    __shared__ int64_t carry[2]; /* the last thread's: the round's last end, the tiles through it */
    if (threadIdx.x == PLAN_T - 1) carry[0] = end, carry[1] = tiles + incl;
    __syncthreads();
    start = carry[0], tiles = carry[1];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    so[E] = M;
    ts[E] = tiles;
  }
}

/* Rows grouped (forward, dx): block (x, y) is row tile x of all groups, column tile y. C = A[rows] B_e: A rows are
 * absolute (A(i, k) = A[i K + k]), B_e = B + e bstride, C rows absolute (ldc = N). */
template <class T, bool BKC>
__global__ void __launch_bounds__(NW * 32) k_rows(const uint16_t *A, const uint16_t *B, int64_t bstride, int64_t bsk,
                                                  int64_t bsj, T *C, const int64_t *so, const int64_t *ts, int64_t E,
                                                  int64_t N, int64_t K) {
  extern __shared__ __align__(16) uint16_t sm[];
  const int64_t t = blockIdx.x;
  if (t >= ts[E]) return; /* (uniform over the block) */
  int64_t lo = 0, hi = E;   /* the last e with ts[e] <= t: then t < ts[e + 1] */
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (ts[mid] <= t) lo = mid;
    else hi = mid;
  }
  const int64_t e = lo, m0 = so[e] + (t - ts[e]) * BM;
  tile_gemm<T, true, BKC>(A, K, 1, B + e * bstride, bsk, bsj, C, N, m0, so[e + 1], (int64_t)blockIdx.y * BN, N, 0, K,
                          sm);
}

/* K grouped (dw): block (x, y, e): dw[e] rows y, cols x = sum over the group's rows r of dy[r]^T x[r].
 * A(i = o, k = r) = dy[r O + o], B(k = r, j) = x[r Din + j]. */
template <class T>
__global__ void __launch_bounds__(NW * 32) k_kgroup(const uint16_t *dy, const uint16_t *x, T *dw, const int64_t *so,
                                                    int64_t O, int64_t Din) {
  extern __shared__ __align__(16) uint16_t sm[];
  const int64_t e = blockIdx.z;
  tile_gemm<T, false, false>(dy, 1, O, x, Din, 1, dw + e * O * Din, Din, (int64_t)blockIdx.y * BM, O,
                             (int64_t)blockIdx.x * BN, Din, so[e], so[e + 1], sm);
}

constexpr size_t SMEM = 2 * TILE * sizeof(uint16_t); /* 20 KiB */

m2_status launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? M2_OK : m2_fail(M2_ERR_CUDA, "%s: launch failed: %s", what, cudaGetErrorString(e));
}

/* so (E + 1) and ts (E + 1) on the device from off. */
m2_status plan(const m2_tensor *off, int64_t E, int64_t M, cudaStream_t st, m2_tensor **so, m2_tensor **ts) {
  const int64_t n = E + 1;
  *so = m2_empty(M2_I64, off->device, 1, &n);
  *ts = *so ? m2_empty(M2_I64, off->device, 1, &n) : NULL;
  if (!*ts) {
    m2_release(*so);
    *so = NULL;
    return m2_errcode();
  }
  k_plan<<<1, PLAN_T, 0, st>>>((const int64_t *)m2_data(off), E, M, (int64_t *)m2_data(*so), (int64_t *)m2_data(*ts));
  return launched("moe_grouped_matmul (grouped plan)");
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

} // namespace

extern "C" bool m2_moe_grouped_enabled(void) { /* only with M2_MOE_GROUPED=1 */
  const char *v = getenv("M2_MOE_GROUPED");
  return v && strcmp(v, "1") == 0;
}

extern "C" bool m2_moe_grouped_fits(int64_t M, int64_t E, int64_t O, int64_t Din) {
  const int64_t rt = cdiv(M, BM) + E; /* row tiles, an upper bound */
  return E >= 1 && E <= 65535 && rt < ((int64_t)1 << 31) && cdiv(O, BN) <= 65535 && cdiv(Din, BN) <= 65535 &&
         cdiv(O, BM) <= 65535 && cdiv(Din, BN) < ((int64_t)1 << 31);
}

extern "C" m2_status m2_moe_gmm_tc_fwd(const m2_tensor *x2, const m2_tensor *w2, const m2_tensor *off, m2_dtype dt,
                                       m2_tensor **y) {
  const int64_t M = x2->shape[0], Din = x2->shape[1], E = w2->shape[0], O = w2->shape[1];
  const m2_device dev = x2->device;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  const int64_t ys[2] = {M, O};
  *y = m2_empty(dt, dev, 2, ys);
  if (!*y) return m2_errcode();
  if (M == 0 || O == 0) return M2_OK;
  m2_tensor *so = NULL, *ts = NULL;
  m2_status s = plan(off, E, M, st, &so, &ts);
  if (s == M2_OK) {
    dim3 grid((unsigned)(cdiv(M, BM) + E), (unsigned)cdiv(O, BN));
    const uint16_t *A = (const uint16_t *)m2_data(x2), *B = (const uint16_t *)m2_data(w2);
    CU_FLOAT_DISPATCH(dt, k_rows<T, true><<<grid, NW * 32, SMEM, st>>>(A, B, O * Din, 1, Din, PT(*y),
                                                                        (const int64_t *)m2_data(so),
                                                                        (const int64_t *)m2_data(ts), E, O, Din));
    s = launched("moe_grouped_matmul forward (grouped)");
  }
  m2_release(so), m2_release(ts);
  if (s != M2_OK) {
    m2_release(*y);
    *y = NULL;
  }
  return s;
}

extern "C" m2_status m2_moe_gmm_tc_bwd(const m2_tensor *x2, const m2_tensor *w2, const m2_tensor *off,
                                       const m2_tensor *dy2, m2_dtype dt, bool want_dx, bool want_dw, m2_tensor **dx,
                                       m2_tensor **dw) {
  const int64_t M = x2->shape[0], Din = x2->shape[1], E = w2->shape[0], O = w2->shape[1];
  const m2_device dev = x2->device;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  *dx = want_dx ? m2_empty(dt, dev, 2, x2->shape) : NULL;
  *dw = want_dw && (*dx || !want_dx) ? m2_empty(dt, dev, 3, w2->shape) : NULL;
  m2_tensor *so = NULL, *ts = NULL;
  m2_status s = (*dx || !want_dx) && (*dw || !want_dw) ? M2_OK : m2_errcode();
  if (s == M2_OK) s = plan(off, E, M, st, &so, &ts);
  const uint16_t *X = (const uint16_t *)m2_data(x2), *W = (const uint16_t *)m2_data(w2);
  const uint16_t *G = (const uint16_t *)m2_data(dy2);
  if (s == M2_OK && *dx && M > 0 && Din > 0) { /* dx = dy[g] w[e]: B(k = o, j = din) = w[e][o Din + din] */
    dim3 grid((unsigned)(cdiv(M, BM) + E), (unsigned)cdiv(Din, BN));
    CU_FLOAT_DISPATCH(dt, k_rows<T, false><<<grid, NW * 32, SMEM, st>>>(G, W, O * Din, Din, 1, PT(*dx),
                                                                         (const int64_t *)m2_data(so),
                                                                         (const int64_t *)m2_data(ts), E, Din, O));
    s = launched("moe_grouped_matmul backward dx (grouped)");
  }
  if (s == M2_OK && *dw && O > 0 && Din > 0) {
    dim3 grid((unsigned)cdiv(Din, BN), (unsigned)cdiv(O, BM), (unsigned)E);
    CU_FLOAT_DISPATCH(dt, k_kgroup<T><<<grid, NW * 32, SMEM, st>>>(G, X, PT(*dw), (const int64_t *)m2_data(so), O,
                                                                    Din));
    s = launched("moe_grouped_matmul backward dw (grouped)");
  }
  m2_release(so), m2_release(ts);
  if (s != M2_OK) {
    m2_release(*dx), m2_release(*dw);
    *dx = *dw = NULL;
  }
  return s;
}
