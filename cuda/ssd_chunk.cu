/* ssd_chunk.cu — Mamba-2 SSD forward and backward in the chunked (state-space dual) form on tensor cores (DESIGN 3.3;
 * the maths of core/ops_ssd.c's ssd_chunked_bh). Per (b, h), chunks of Lc = seg <= 64 tokens (the CUDA checkpoint interval, so the
 * chunk states are exactly the checkpoints the recurrent backward reads); within a chunk, cs_r = A (dt_0 + .. + dt_r):
 *
 *   1. k_chain  S_0 = h0 (or 0), S_{c+1} = exp(cs_end_c) S_c + sum_j exp(cs_end - cs_j) dt_j x_j B_j^T ; ck[c] = S_c,
 *               hT = S_NC: one block a (b, h, 16 rows of P) walks the chunks in order, the state rows in the mma
 *               accumulators (each chunk's Xw^T B added onto the decayed state), so the states go to HBM once
 *               (M2_SSD_CHUNK_TC=2 instead: k_state, the chunk-local states Xw^T B, one block a chunk, then k_pass,
 *               the recurrence over them, one thread a state element: 3 x the state traffic, no sequential chain)
 *   2. k_scan   y_r = exp(cs_r) (C_r . S_c[p, :]) + sum_{j <= r} exp(cs_r - cs_j) dt_j (C_r . B_j) x_j[p]
 *               = diag(exp(cs)) C S_c^T + (C B^T o mask) X                                (one block a chunk)
 * Backward (the same steps, reversed):
 *   1. k_chain BWD  D_{NC-1} = dhT, D_{c-1} = exp(cs_end_c) D_c + sum_r exp(cs_r) dy_r C_r^T ; dst[c] = D_c (the
 *                   gradient of the state after chunk c), dh0 = D_{-1}; chunks from the last
 *   2. k_bwd        dx, ddt, dB, dC of the chunk and its share of dA from S_c (ck) and D_c (formulas at k_bwd);
 *                   dB, dC summed over a group's heads and dA over batch and chunks afterwards, in a fixed order.
 *                   (M2_SSD_BWD_GROUPED=1, m2_cuda_ssd_bwd_grouped: one block a (b, group, chunk) runs the group's
 *                   heads in head order and sums their dB, dC itself, the same sums in the same order, without the
 *                   per-head fp32 partials; the default: M2_SSD_BWD_GROUPED=0 turns it off)
 *
 * Products: bf16 operands (x, B, C as given or rounded from f32; Xw, the masked scores and the chunk state rounded to
 * bf16 only as operands), fp32 accumulation (mma.sync m16n8k16), fp32 states and decays. Tiles: a chunk is staged as
 * 64 rows (rows >= len zero), P and N padded to multiples of 16 (PP, NP) with zeros in shared memory only: global
 * reads stay inside the tensors. Staging keeps many loads in flight a thread: bf16 B and C tiles by 16-byte cp.async,
 * the fp32 chunk states by 16-byte loads, x and dy (P odd at 400M: unaligned rows) by several single loads issued
 * before use (tile_cp, tile_load2 below, tile::tile_load). Shared rows are padded by 8 elements (row stride = 4
 * words mod 8: the fragment loads of a warp hit distinct banks). Fragments are read from shared memory element by
 * element (two bf16 a register), so one helper serves every operand orientation.
 *
 * Shared memory (bf16 elements; PP = 16 ceil(P / 16), NP = 16 ceil(N / 16), LN = NP + 8, LP = PP + 8):
 *   k_chain  Us 64 x 24, Vs 64 LN                         (+ 512 B of cs, dt; 400M: 33 KiB)
 *   k_scan   Cs 64 LN, Bs 64 LN, Xs 64 LP, Ss PP LN, Ms 64 x 72   (400M: N 216, P 19 -> 87 KiB)
 *   k_bwd    Cs, Bs 64 LN, Xs, dYs 64 LP, Ss, Ds PP LN, Ms, Ws 64 x 72 + fp32 T 64 x 65, U 64 (PP + 1), partials
 *            (400M -> 148 KiB, 7B -> 176 KiB; the H100 allows 227 KiB a block); grouped + fp32 dB sums 64 NP
 *            (400M -> 204 KiB, 7B -> 224 KiB) */
#include "ssd_chunk.h"
#include "mma.cuh"
#include "tile_load.cuh"
#include "m2cuda.h"
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int CL = 64;      /* rows a chunk tile */
constexpr int NW = 8;       /* warps a block (the backward block is alone on its SM: its shared memory) */
constexpr int LM = CL + 8;  /* row stride of the masked scores Ms */

__device__ __forceinline__ uint16_t bfbits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

__device__ __forceinline__ float bf2f(uint16_t u) { return __bfloat162float(__ushort_as_bfloat16(u)); }

/* Items of 8 elements (16-byte loads) a thread keeps in flight when staging a tile: 8 for bf16, 4 for fp32 sources
 * (the same bytes; the fp32 items take two registers an element). */
template <class T> constexpr int stage_unroll() { return sizeof(T) == 2 ? 8 : 4; }

/* Columns c0 .. c1 - 1 of rows 0 .. rows - 1 of a shared bf16 tile (row stride dld) set to 0: the padding of P and N to
 * multiples of 16, which the staging loads (tile::tile_load, tile_load2) do not write. */
__device__ __forceinline__ void zero_cols(uint16_t *dst, int dld, int rows, int c0, int c1) {
  const int wd = c1 - c0;
  if (wd <= 0) return;
  for (int i = threadIdx.x; i < rows * wd; i += blockDim.x) dst[(i / wd) * dld + c0 + i % wd] = 0;
}

/* No-op for tile_load2's pair argument. */
struct no_pair {
  __device__ __forceinline__ void operator()(float, float) const {}
};

/* Two tiles of one shape and one source layout staged together, as tile::tile_load with the identity transform:
 * da[r dld + x] = bf16(a[r sld + x]), db[r dld + x] = bf16(b[r sld + x]) for r < valid, x < cols; 0 for
 * valid <= r < rows. Each thread issues the loads of UN items of both tiles before it stores any (16-byte items of 8
 * elements where cols, sld, dld are multiples of 8 and the four pointers 16-byte aligned; single elements otherwise,
 * e.g. P = 19). pair(va, vb) is called on every staged pair of values in fp32 (0, 0 past valid), item by item: the
 * backward's <D, S> is summed from the fp32 values this way. The caller synchronises before reading da, db. */
template <int UN, class T, class F>
__device__ __forceinline__ void tile_load2(uint16_t *da, uint16_t *db, int dld, const T *a, const T *b, int64_t sld,
                                           int rows, int valid, int cols, F pair) {
  const int nt = blockDim.x, tid = threadIdx.x;
  const bool wide = cols % 8 == 0 && sld % 8 == 0 && dld % 8 == 0 && tile::aligned16(a) && tile::aligned16(b) &&
                    tile::aligned16(da) && tile::aligned16(db);
  if (wide) {
    const int cg = cols / 8, items = rows * cg;
    for (int i0 = tid; i0 < items; i0 += UN * nt) {
      tile::v8 xa[UN], xb[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) { /* every load first */
        int i = i0 + u * nt, r = i / cg;
        if (i < items && r < valid) {
          int64_t o = (int64_t)r * sld + (i % cg) * 8;
          xa[u] = tile::load8(a + o), xb[u] = tile::load8(b + o);
        }
      }
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int i = i0 + u * nt;
        if (i >= items) break;
        int r = i / cg, c0 = (i % cg) * 8;
        float fa[8], fb[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
          fa[e] = r < valid ? xa[u].f[e] : 0.0f, fb[e] = r < valid ? xb[u].f[e] : 0.0f;
          pair(fa[e], fb[e]);
        }
        tile::store8(da + r * dld + c0, fa), tile::store8(db + r * dld + c0, fb);
      }
    }
  } else {
    const int items = rows * cols;
    for (int i0 = tid; i0 < items; i0 += UN * nt) {
      float xa[UN], xb[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int i = i0 + u * nt, r = i / cols;
        bool ok = i < items && r < valid;
        int64_t o = (int64_t)r * sld + i % cols;
        xa[u] = ok ? tile::val(a[o]) : 0.0f, xb[u] = ok ? tile::val(b[o]) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int i = i0 + u * nt;
        if (i >= items) break;
        int r = i / cols, c = i % cols;
        pair(xa[u], xb[u]);
        da[r * dld + c] = bfbits(xa[u]), db[r * dld + c] = bfbits(xb[u]);
      }
    }
  }
}

/* Two adjacent outputs p[0] = a, p[1] = b as one store (p 8-byte aligned for fp32, 4-byte for bf16), rounded as
 * from_f. */
__device__ __forceinline__ void store_pair(float *p, float a, float b) { *reinterpret_cast<float2 *>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_pair(bf16 *p, float a, float b) { tile::store2(reinterpret_cast<uint16_t *>(p), a, b); }

/* Columns n, n + 1 (n even) of an output row of width N: o[io + 0, 1] = from_f(a, b) and p[ip + 0, 1] = a, b (NULL:
 * not written), the columns >= N left out; as pairs where pairs (N even, o and p 8-byte aligned). */
template <class T>
__device__ __forceinline__ void put_pair(T *o, float *p, int64_t io, int64_t ip, int n, int N, bool pairs, float a,
                                         float b) {
  if (pairs && n < N) { /* n even, N even: n + 1 < N */
    if (o) store_pair(o + io, a, b);
    if (p) store_pair(p + ip, a, b);
    return;
  }
  if (n < N) {
    if (o) o[io] = from_f<T>(a);
    if (p) p[ip] = a;
  }
  if (n + 1 < N) {
    if (o) o[io + 1] = from_f<T>(b);
    if (p) p[ip + 1] = b;
  }
}

/* A rows x cols bf16 tile copied as it is into shared memory by 16-byte cp.async (rows >= valid zeroed): every copy
 * of the block in flight at once and no registers held. Needs cols, sld, dld multiples of 8 and src, dst 16-byte
 * aligned; false (nothing issued) otherwise. The caller waits (mma_cp_wait<0>) and synchronises before reading. */
__device__ __forceinline__ bool tile_cp(uint16_t *dst, int dld, const bf16 *src, int64_t sld, int rows, int valid,
                                        int cols) {
  if (cols % 8 || sld % 8 || dld % 8 || !tile::aligned16(src) || !tile::aligned16(dst)) return false;
  const int cg = cols / 8;
  for (int i = threadIdx.x; i < rows * cg; i += blockDim.x) {
    int r = i / cg, c = (i % cg) * 8;
    mma_cp16(dst + r * dld + c, r < valid ? src + (int64_t)r * sld + c : src, r < valid);
  }
  mma_cp_commit();
  return true;
}
__device__ __forceinline__ bool tile_cp(uint16_t *, int, const float *, int64_t, int, int, int) { return false; }

/* dst[r dld + x] = bf16(src[r sld + x]) for r < valid, x < cols, 0 for valid <= r < rows: by tile_cp for bf16
 * sources where it applies (the bf16 values copied unchanged: what rounding them through fp32 gives), else by
 * tile::tile_load<UN> (UN loads in flight a thread). The caller runs mma_cp_wait<0>() then __syncthreads() before
 * reading dst. */
template <int UN, class T>
__device__ __forceinline__ void stage_tile(uint16_t *dst, int dld, const T *src, int64_t sld, int rows, int valid,
                                           int cols) {
  if (!tile_cp(dst, dld, src, sld, rows, valid, cols)) tile::tile_load<UN>(dst, dld, src, sld, rows, valid, cols, tile::ident());
}

/* The quad's (lanes 4 g .. 4 g + 3) sums of part[0] (row r0) and part[1] (row r0 + 8) to p[row NT + nt]. */
__device__ __forceinline__ void quad_store(float *p, float part[2], int r0, int NT, int nt, int tq) {
#pragma unroll
  for (int i = 0; i < 2; i++) {
    part[i] += __shfl_xor_sync(0xffffffffu, part[i], 1);
    part[i] += __shfl_xor_sync(0xffffffffu, part[i], 2);
  }
  if (tq == 0) p[r0 * NT + nt] = part[0], p[(r0 + 8) * NT + nt] = part[1];
}

/* The backward block's fp32 shared floats (cs, dt, dcs, ex, Q, 8 warp sums, T, U, the (i) and Q partials), a
 * multiple of 4 (the bf16 tiles that follow start 16-byte aligned). */
__host__ __device__ inline int bwd_floats(int PP, int NP) {
  int f = 5 * CL + 8 + CL * (CL + 1) + CL * (PP + 1) + 2 * CL * (NP / 16);
  return (f + 3) / 4 * 4;
}

/* Elements p[0] (low half) and p[s] (high half) as one register. */
__device__ __forceinline__ uint32_t ld2(const uint16_t *p, int s) {
  if (s == 1) return *(const uint32_t *)p; /* even element offsets throughout: 4-byte aligned */
  return (uint32_t)p[0] | ((uint32_t)p[s] << 16);
}

/* c[j] (16 x 8, j < NJ, columns n0 + 8 j ..) += A (rows m0 .. m0 + 15, kb <= k < ke) B (those k, columns n0 ..), kb
 * and ke multiples of 16. A's element (m, k) at A[m am + k ak], B's (k, n) at B[k bk + n bn]; bf16 in shared memory. Fragment layouts
 * as mma.cuh: lane = 4 g + t; A regs (row g | g + 8, cols 2t, 2t+1 | 2t + 8, 2t + 9); B regs (rows 2t, 2t+1 |
 * 2t + 8, 2t + 9, col g). */
template <int NJ>
__device__ __forceinline__ void tile_mma(float c[NJ][4], const uint16_t *A, int am, int ak, const uint16_t *B, int bk,
                                         int bn, int m0, int n0, int kb, int ke, int lane) {
  const int g = lane >> 2, t = lane & 3;
  for (int k0 = kb; k0 < ke; k0 += 16) {
    const uint16_t *pa = A + (m0 + g) * am + (k0 + 2 * t) * ak;
    uint32_t a[4];
    a[0] = ld2(pa, ak);
    a[1] = ld2(pa + 8 * am, ak);
    a[2] = ld2(pa + 8 * ak, ak);
    a[3] = ld2(pa + 8 * am + 8 * ak, ak);
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      const uint16_t *pb = B + (k0 + 2 * t) * bk + (n0 + 8 * j + g) * bn;
      mma_bf16(c[j], a, ld2(pb, bk), ld2(pb + 8 * bk, bk));
    }
  }
}

/* Warp 0 (lane l holds d0 = dt_l, d1 = dt_{l+32}, 0 beyond the chunk): cs[j] = A (dt_0 + .. + dt_j), dts[j] = dt_j. */
__device__ __forceinline__ void scan64(float *cs, float *dts, float d0, float d1, float Ah) {
  const int lane = threadIdx.x & 31;
  float v0 = d0 * Ah, v1 = d1 * Ah;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    float u0 = __shfl_up_sync(0xffffffffu, v0, o), u1 = __shfl_up_sync(0xffffffffu, v1, o);
    if (lane >= o) v0 += u0, v1 += u1;
  }
  v1 += __shfl_sync(0xffffffffu, v0, 31);
  cs[lane] = v0, cs[lane + 32] = v1, dts[lane] = d0, dts[lane + 32] = d1;
}

/* The chunk's dt_l, dt_{l+32} for lane l (0 at or beyond len). dt points at head h's column. */
template <class T>
__device__ __forceinline__ void load_dt(float &d0, float &d1, const T *dt, int64_t tok0, int64_t H, int len) {
  const int lane = threadIdx.x & 31;
  d0 = lane < len ? to_f(dt[(tok0 + lane) * H]) : 0.0f;
  d1 = lane + 32 < len ? to_f(dt[(tok0 + lane + 32) * H]) : 0.0f;
}

/* Warp 0: cs[j] = A (dt_0 + .. + dt_j) and dts[j] = dt_j for the chunk's j < len (j >= len: dt 0, cs the total). */
template <class T>
__device__ __forceinline__ void chunk_cumsum(float *cs, float *dts, const T *dt, int64_t tok0, int64_t H, int len,
                                             float Ah) {
  if (threadIdx.x >= 32) return;
  float d0, d1;
  load_dt(d0, d1, dt, tok0, H, len);
  scan64(cs, dts, d0, d1, Ah);
}

struct ssd_dims {
  int64_t B, Tn, H, G;
  int P, N, PP, NP, Lc, NC; /* sizes, padded sizes, chunk, chunks */
};

/* 1+2. The chain of chunk states; one block a (b, h, 16 rows of P), walking the chunks in order (forward) or from the
 * last (BWD), the 16 x NP state rows in the mma accumulators (warp w: the 16 x 8 column tiles w, w + NW, ...):
 *   forward  S = init (h0, or 0); for each chunk c: st[c] = S; S = exp(cs_end) S + sum_j exp(cs_end - cs_j) dt_j x_j B_j^T;
 *            fin = S (hT).            u = x, v = B.
 *   BWD      D = init (dhT, or 0); for each chunk c from the last: st[c] = D (the gradient of the state after chunk c);
 *            D = exp(cs_end) D + sum_r exp(cs_r) dy_r C_r^T; fin = D (dh0).      u = dy, v = C.
 * NULL init: zeros; NULL fin: not written. Shared: cs, dt, Us 64 x 16 (weighted u, row stride 24), Vs 64 x NP. */
constexpr int LU = 24;

/* MAXT: column tiles of 8 a warp at most (NP <= 8 NW MAXT): 4 up to N = 256 (4 blocks an SM fit the registers), 8 up
 * to 512. */
template <class T, bool BWD, int MAXT>
__global__ void __launch_bounds__(NW * 32, MAXT == 4 ? 4 : 2) k_chain(const T *u, const T *dt, const T *A, const T *v, const T *init,
                                                   T *fin, float *st, ssd_dims d) {
  extern __shared__ __align__(16) float smf[];
  float *cs = smf, *dts = smf + CL;
  uint16_t *Us = (uint16_t *)(smf + 2 * CL), *Vs = Us + CL * LU;
  const int LN = d.NP + 8, lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int MT = d.PP / 16, NT8 = d.NP / 8;
  const int64_t mt = blockIdx.x % MT, bh = blockIdx.x / MT, b = bh / d.H, h = bh % d.H, gi = h / (d.H / d.G);
  const int64_t PN = (int64_t)d.P * d.N;
  const float Ah = to_f(A[h]);
  const int pr[2] = {(int)(16 * mt) + g, (int)(16 * mt) + g + 8};
  float acc[MAXT][4];
#pragma unroll
  for (int i = 0; i < MAXT; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      int p = pr[e >> 1], n = 8 * (w + NW * i) + 2 * tq + (e & 1);
      acc[i][e] = (init && w + NW * i < NT8 && p < d.P && n < d.N) ? to_f(init[bh * PN + (int64_t)p * d.N + n]) : 0.0f;
    }
  /* warp 0 loads each chunk's dt one chunk ahead (its latency hides behind the previous chunk) */
  auto chunk_at = [&](int k, int64_t &c, int64_t &t0, int &len) {
    c = BWD ? d.NC - 1 - k : k, t0 = c * d.Lc, len = (int)(d.Tn - t0 < d.Lc ? d.Tn - t0 : d.Lc);
  };
  float nd0 = 0.0f, nd1 = 0.0f;
  /* u (x forward, dy BWD) of a chunk: the 64 x 16 values (row j, column 16 mt + q) as UX single loads a thread (P is
     odd at 400M: rows of u are not 16-byte aligned), all issued before any is used */
  constexpr int UX = CL * 16 / (NW * 32);
  float ux[UX];
  auto u_load = [&](int64_t t0, int len) {
#pragma unroll
    for (int q = 0; q < UX; q++) {
      int i = threadIdx.x + q * NW * 32, j = i >> 4, p = (int)(16 * mt) + (i & 15);
      ux[q] = j < len && p < d.P ? to_f(u[((b * d.Tn + t0 + j) * d.H + h) * d.P + p]) : 0.0f;
    }
  };
  {
    int64_t c, t0;
    int len;
    chunk_at(0, c, t0, len);
    if (w == 0) load_dt(nd0, nd1, dt + h, b * d.Tn + t0, d.H, len);
  }
  zero_cols(Vs, LN, CL, d.N, d.NP); /* the padding columns of Vs, never staged (the first barrier orders it) */
  for (int k = 0; k < d.NC; k++) {
    int64_t c, t0;
    int len;
    chunk_at(k, c, t0, len);
    float *so = st + (bh * d.NC + c) * PN;
#pragma unroll
    for (int i = 0; i < MAXT; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int p = pr[e >> 1], n = 8 * (w + NW * i) + 2 * tq + (e & 1);
        if (w + NW * i < NT8 && p < d.P && n < d.N) so[(int64_t)p * d.N + n] = acc[i][e];
      }
    if (w == 0) {
      scan64(cs, dts, nd0, nd1, Ah);
      if (k + 1 < d.NC) {
        int64_t c1, t1;
        int len1;
        chunk_at(k + 1, c1, t1, len1);
        load_dt(nd0, nd1, dt + h, b * d.Tn + t1, d.H, len1);
      }
    }
    __syncthreads(); /* cs ready; every warp is past the previous chunk's products */
    const float cend = cs[len - 1], dec = expf(cend);
    /* v (B forward, C BWD): 64 x N by cp.async where N % 8 == 0 (400M, 7B: no registers held), issued first; u's
       loads then go out under it. (Loading the next chunk's u before this chunk's products, or storing the state
       rows as float2 pairs, made the MAXT 4 kernel spill under its 64-register bound.) */
    stage_tile<1>(Vs, LN, v + ((b * d.Tn + t0) * d.G + gi) * d.N, d.G * (int64_t)d.N, CL, len, d.N);
    u_load(t0, len);
#pragma unroll
    for (int q = 0; q < UX; q++) {
      int i = threadIdx.x + q * NW * 32, j = i >> 4, p = (int)(16 * mt) + (i & 15);
      float val = 0.0f;
      if (j < len && p < d.P) val = (BWD ? expf(cs[j]) : expf(cend - cs[j]) * dts[j]) * ux[q];
      Us[j * LU + (i & 15)] = bfbits(val);
    }
    mma_cp_wait<0>();
    __syncthreads(); /* staged; cs is not read again before the next chunk's barrier */
    /* S = dec S + Us^T Vs: A(p, j) = Us[j LU + p], B(j, n) = Vs[j LN + n] */
#pragma unroll
    for (int i = 0; i < MAXT; i++) {
      if (w + NW * i >= NT8) continue;
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][e] *= dec;
      tile_mma<1>(&acc[i], Us, 1, LU, Vs, LN, 1, 0, 8 * (w + NW * i), 0, CL, lane);
    }
  }
  if (!fin) return;
#pragma unroll
  for (int i = 0; i < MAXT; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      int p = pr[e >> 1], n = 8 * (w + NW * i) + 2 * tq + (e & 1);
      if (w + NW * i < NT8 && p < d.P && n < d.N) fin[bh * PN + (int64_t)p * d.N + n] = from_f<T>(acc[i][e]);
    }
}

/* 1'. The two-launch alternative to k_chain (M2_SSD_CHUNK_TC=2), kept to compare the two on a GPU: chunk-local
 * states in parallel, then a pass over them. Chunk-local states: block (bh NC + c). st (B,H,NC,P,N) fp32 <- S_loc; dec (B,H,NC) <- exp(cs_end).
 * Forward: x = x, Bm = B, S_loc = sum_j exp(cs_end - cs_j) dt_j x_j B_j^T.
 * BWD (the backward's chunk-local state gradient): x = dy, Bm = C, sum_r exp(cs_r) dy_r C_r^T. */
template <class T, bool BWD>
__global__ void __launch_bounds__(NW * 32, 3) k_state(const T *x, const T *dt, const T *A, const T *Bm, float *st,
                                                   float *dec, ssd_dims d) {
  extern __shared__ __align__(16) float smf[];
  float *cs = smf, *dts = smf + CL;
  uint16_t *Xw = (uint16_t *)(smf + 2 * CL), *Bs = Xw + CL * (d.PP + 8);
  const int LP = d.PP + 8, LN = d.NP + 8, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t c = blockIdx.x % d.NC, bh = blockIdx.x / d.NC, b = bh / d.H, h = bh % d.H, gi = h / (d.H / d.G);
  const int64_t t0 = c * d.Lc;
  const int len = (int)(d.Tn - t0 < d.Lc ? d.Tn - t0 : d.Lc);
  /* Bm (B forward, C BWD) by cp.async (bf16, N % 8 == 0) or wide loads, issued before the cumulative sum's barrier;
     then x (dy BWD) with its weight, UK single loads in flight a thread (P odd at 400M). Bound to 3 blocks an SM
     (80 registers; 5 before these loads, at 48): at 4 (64 registers) it spills */
  constexpr int UK = 4;
  stage_tile<UK>(Bs, LN, Bm + ((b * d.Tn + t0) * d.G + gi) * d.N, d.G * (int64_t)d.N, CL, len, d.N);
  zero_cols(Bs, LN, CL, d.N, d.NP);
  zero_cols(Xw, LP, CL, d.P, d.PP);
  chunk_cumsum(cs, dts, dt + h, b * d.Tn + t0, d.H, len, to_f(A[h]));
  __syncthreads();
  const float cend = cs[len - 1];
  tile::tile_load<UK>(Xw, LP, x + ((b * d.Tn + t0) * d.H + h) * d.P, d.H * (int64_t)d.P, CL, len, d.P,
                                     [&](int j, int, float v) {
                                       return j < len ? (BWD ? expf(cs[j]) : expf(cend - cs[j]) * dts[j]) * v : 0.0f;
                                     });
  mma_cp_wait<0>();
  __syncthreads();
  /* S_loc (PP x NP) = Xw^T (PP x 64) Bs (64 x NP): A(p, j) = Xw[j LP + p], B(j, n) = Bs[j LN + n] */
  const int MT = d.PP / 16, NT = d.NP / 16, g = lane >> 2, tq = lane & 3;
  float *dst = st + (bh * d.NC + c) * (int64_t)d.P * d.N;
  for (int tile = w; tile < MT * NT; tile += NW) {
    const int mt = tile / NT, nt = tile % NT;
    float acc[2][4] = {};
    tile_mma<2>(acc, Xw, 1, LP, Bs, LN, 1, 16 * mt, 16 * nt, 0, CL, lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int p = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq + (e & 1);
        if (p < d.P && n < d.N) dst[(int64_t)p * d.N + n] = acc[j][e];
      }
  }
  if (threadIdx.x == 0) dec[bh * d.NC + c] = expf(cend);
}

/* 1''. State passing, one thread a state element (p, n) of one (b, h), chunks in order (forward: st[c] <- the state
 * before chunk c, from init = h0; fin = hT) or REV (backward: st[c] <- the gradient of the state after chunk c, from
 * init = dhT; fin = dh0). NULL init: zeros; NULL fin: not written. */
template <class T, bool REV>
__global__ void k_pass(float *st, const float *dec, const T *init, T *fin, int64_t BH, int64_t PN, int NC) {
  CU_GRID_STRIDE(i, BH * PN) {
    int64_t bh = i / PN, e = i % PN;
    float s = init ? to_f(init[i]) : 0.0f;
    float *q = st + bh * NC * PN + e;
    const float *dc = dec + bh * NC;
    constexpr int UN = 8; /* chunks whose loads are issued before the first of them is used */
    for (int k0 = 0; k0 < NC; k0 += UN) {
      float loc[UN], dk[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int k = k0 + u, c = REV ? NC - 1 - k : k;
        loc[u] = k < NC ? q[(int64_t)c * PN] : 0.0f, dk[u] = k < NC ? dc[c] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int k = k0 + u, c = REV ? NC - 1 - k : k;
        if (k >= NC) break;
        q[(int64_t)c * PN] = s;
        s = dk[u] * s + loc[u];
      }
    }
    if (fin) fin[i] = from_f<T>(s);
  }
}

/* 2. Outputs of one chunk from its start state st[c] (k_chain). Block (bh NC + c). */
template <class T>
__global__ void __launch_bounds__(NW * 32, 2) k_scan(const T *x, const T *dt, const T *A, const T *Bm, const T *Cm,
                                                  const float *st, T *y, ssd_dims d) {
  extern __shared__ __align__(16) float smf[];
  const int LP = d.PP + 8, LN = d.NP + 8, lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  float *cs = smf, *dts = smf + CL;
  uint16_t *Cs = (uint16_t *)(smf + 2 * CL), *Bs = Cs + CL * LN, *Xs = Bs + CL * LN, *Ss = Xs + CL * LP,
           *Ms = Ss + d.PP * LN;
  const int64_t c = blockIdx.x % d.NC, bh = blockIdx.x / d.NC, b = bh / d.H, h = bh % d.H, gi = h / (d.H / d.G);
  const int64_t t0 = c * d.Lc;
  const int len = (int)(d.Tn - t0 < d.Lc ? d.Tn - t0 : d.Lc);
  /* staging, every load of a thread in flight before it stores (tile_load.cuh): C and B by cp.async (bf16, N % 8 ==
     0; else wide loads), the fp32 chunk state by 16-byte loads (N % 8 == 0), x by single loads (P odd at 400M) */
  const int64_t bn = ((b * d.Tn + t0) * d.G + gi) * d.N, sN = d.G * (int64_t)d.N;
  stage_tile<stage_unroll<T>()>(Cs, LN, Cm + bn, sN, CL, len, d.N);
  stage_tile<stage_unroll<T>()>(Bs, LN, Bm + bn, sN, CL, len, d.N);
  chunk_cumsum(cs, dts, dt + h, b * d.Tn + t0, d.H, len, to_f(A[h]));
  tile::tile_load<4>(Ss, LN, st + (bh * d.NC + c) * (int64_t)d.P * d.N, d.N, d.PP, d.P, d.N, tile::ident());
  tile::tile_load<stage_unroll<T>()>(Xs, LP, x + ((b * d.Tn + t0) * d.H + h) * d.P, d.H * (int64_t)d.P, CL, len, d.P,
                                     tile::ident());
  zero_cols(Cs, LN, CL, d.N, d.NP);
  zero_cols(Bs, LN, CL, d.N, d.NP);
  zero_cols(Ss, LN, d.PP, d.N, d.NP);
  zero_cols(Xs, LP, CL, d.P, d.PP);
  mma_cp_wait<0>();
  __syncthreads();
  /* Ms (64 x 64) = (C B^T) o mask: A(r, n) = Cs[r LN + n], B(n, j) = Bs[j LN + n]; tiles above the diagonal are 0 */
  for (int tile = w; tile < 16; tile += NW) {
    const int mt = tile >> 2, nt = tile & 3;
    float acc[2][4] = {};
    if (nt <= mt) tile_mma<2>(acc, Cs, LN, 1, Bs, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * mt + g + 8 * (e >> 1), k = 16 * nt + 8 * j + 2 * tq + (e & 1);
        float v = (k <= r && k < len) ? expf(cs[r] - cs[k]) * dts[k] * acc[j][e] : 0.0f;
        Ms[r * LM + k] = bfbits(v);
      }
  }
  __syncthreads();
  /* y (64 x PP) = diag(exp(cs)) C S^T + Ms X: A(r, n) = Cs[r LN + n], B(n, p) = Ss[p LN + n];
     A(r, j) = Ms[r LM + j], B(j, p) = Xs[j LP + p] (j < 16 (mt + 1): Ms is 0 beyond the diagonal) */
  const int NT = d.PP / 16;
  const int64_t ld = d.H * (int64_t)d.P;
  T *yb = y + ((b * d.Tn + t0) * d.H + h) * d.P;
  for (int tile = w; tile < 4 * NT; tile += NW) {
    const int mt = tile / NT, nt = tile % NT;
    float off[2][4] = {}, dg[2][4] = {};
    tile_mma<2>(off, Cs, LN, 1, Ss, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
    tile_mma<2>(dg, Ms, LM, 1, Xs, LP, 1, 16 * mt, 16 * nt, 0, 16 * (mt + 1), lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * mt + g + 8 * (e >> 1), p = 16 * nt + 8 * j + 2 * tq + (e & 1);
        if (r < len && p < d.P) yb[r * ld + p] = from_f<T>(expf(cs[r]) * off[j][e] + dg[j][e]);
      }
  }
}

/* 3. Backward of one chunk, block (bh NC + c), from its start state S = ck[c] and D = dst[c], the gradient of the
 * state after it (k_chain BWD); cs, dt, e_rj = exp(cs_r - cs_j) (j <= r < len), cs_L = cs[len - 1]:
 *   CB_rj = C_r.B_j, DX_rj = dy_r.x_j, M_rj = e_rj CB_rj, W_rj = e_rj dt_j DX_rj          (64 x 64, masked)
 *   U_j = sum_r M_rj dy_r + exp(cs_L - cs_j) D B_j        dx_j = dt_j U_j, explicit ddt_j = x_j.U_j
 *   dC_r = exp(cs_r) S^T dy_r + sum_j W_rj B_j           dB_j = sum_r W_rj C_r + exp(cs_L - cs_j) dt_j D^T x_j
 *   d/dcs_k: (i) C_k.(exp(cs_k) S^T dy_k)  (ii) sum_j W_kj CB_kj - sum_r W_rk CB_rk  (iv) - Q_k,
 *            Q_j = exp(cs_L - cs_j) dt_j x_j^T D B_j ; at k = len - 1 also exp(cs_L) <D, S> + sum_j Q_j
 *   da_i = sum_{k >= i} dcs_k (cs_k = A (dt_0 + .. + dt_k)): ddt_i += A da_i, dA += sum_i dt_i da_i.
 * dx, ddt are written; dB, dC to dBo, dCo (G = H) or per head to dBp, dCp (B,T,H,N) fp32 (summed over the group's
 * heads by k_group_sum); dA per chunk to dAp (B,H,NC). NULL outputs are not written. Every sum has a fixed order
 * (quads by shuffles, then per-(row, tile) partials in shared memory added up by one thread): deterministic. */
template <class T>
__global__ void __launch_bounds__(NW * 32) k_bwd(const T *x, const T *dt, const T *A, const T *Bm, const T *Cm,
                                                 const T *dy, const float *ck, const float *dst, T *dx, T *ddt,
                                                 T *dBo, T *dCo, float *dBp, float *dCp, float *dAp, ssd_dims d) {
  extern __shared__ __align__(16) float smf[];
  const int LP = d.PP + 8, LN = d.NP + 8, NT = d.NP / 16, NTP = d.PP / 16, UP = d.PP + 1;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  float *cs = smf, *dts = cs + CL, *dcs = dts + CL, *exs = dcs + CL, *qs = exs + CL, *red = qs + CL,
        *Tm = red + 8, *Us = Tm + CL * (CL + 1), *pI = Us + CL * UP, *pQ = pI + CL * NT;
  uint16_t *Cs = (uint16_t *)(smf + bwd_floats(d.PP, d.NP)), *Bs = Cs + CL * LN, *Xs = Bs + CL * LN,
           *DYs = Xs + CL * LP, *Ss = DYs + CL * LP, *Ds = Ss + d.PP * LN, *Ms = Ds + d.PP * LN, *Ws = Ms + CL * LM;
  const int64_t c = blockIdx.x % d.NC, bh = blockIdx.x / d.NC, b = bh / d.H, h = bh % d.H, hpg = d.H / d.G,
                gi = h / hpg;
  const int64_t t0 = c * d.Lc;
  const int len = (int)(d.Tn - t0 < d.Lc ? d.Tn - t0 : d.Lc);
  const float Ah = to_f(A[h]);
  /* dB, dC go out as pairs of adjacent columns (one 8-byte fp32 or 4-byte bf16 store) where N is even and the
     outputs 8-byte aligned */
  const bool pairs = (d.N & 1) == 0 && ((uintptr_t)dBo & 7) == 0 && ((uintptr_t)dCo & 7) == 0 &&
                     ((uintptr_t)dBp & 7) == 0 && ((uintptr_t)dCp & 7) == 0;
  /* staging, every load of a thread in flight before it stores (tile_load.cuh): C and B by cp.async (bf16, N % 8 ==
     0; else wide loads), the fp32 S and D by 16-byte loads (N % 8 == 0) with <D, S> summed from them in fp32, x and
     dy by single loads (P odd at 400M) */
  const int64_t bn = ((b * d.Tn + t0) * d.G + gi) * d.N, sN = d.G * (int64_t)d.N;
  stage_tile<stage_unroll<T>()>(Cs, LN, Cm + bn, sN, CL, len, d.N);
  stage_tile<stage_unroll<T>()>(Bs, LN, Bm + bn, sN, CL, len, d.N);
  chunk_cumsum(cs, dts, dt + h, b * d.Tn + t0, d.H, len, Ah);
  const int64_t so = (bh * d.NC + c) * (int64_t)d.P * d.N;
  float sd = 0.0f; /* <D, S> */
  tile_load2<4>(Ss, Ds, LN, ck + so, dst + so, d.N, d.PP, d.P, d.N, [&](float sv, float dv) { sd += sv * dv; });
  const int64_t bx = ((b * d.Tn + t0) * d.H + h) * d.P;
  tile_load2<stage_unroll<T>()>(Xs, DYs, LP, x + bx, dy + bx, d.H * (int64_t)d.P, CL, len, d.P, no_pair());
  zero_cols(Cs, LN, CL, d.N, d.NP);
  zero_cols(Bs, LN, CL, d.N, d.NP);
  zero_cols(Ss, LN, d.PP, d.N, d.NP);
  zero_cols(Ds, LN, d.PP, d.N, d.NP);
  zero_cols(Xs, LP, CL, d.P, d.PP);
  zero_cols(DYs, LP, CL, d.P, d.PP);
  mma_cp_wait<0>();
  sd = warp_sum(sd);
  if (lane == 0) red[w] = sd;
  __syncthreads();
  /* the masked scores M, W (bf16) and T = W o CB (fp32) */
  for (int tile = w; tile < 16; tile += NW) {
    const int mt = tile >> 2, nt = tile & 3;
    float cb[2][4] = {}, dxs[2][4] = {};
    if (nt <= mt) {
      tile_mma<2>(cb, Cs, LN, 1, Bs, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
      tile_mma<2>(dxs, DYs, LP, 1, Xs, 1, LP, 16 * mt, 16 * nt, 0, d.PP, lane);
    }
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int r = 16 * mt + g + 8 * (e >> 1), k = 16 * nt + 8 * j + 2 * tq + (e & 1);
        bool ok = k <= r && r < len;
        float ee = ok ? expf(cs[r] - cs[k]) : 0.0f, wv = ee * dts[k] * dxs[j][e];
        Ms[r * LM + k] = bfbits(ee * cb[j][e]);
        Ws[r * LM + k] = bfbits(wv);
        Tm[r * (CL + 1) + k] = wv * cb[j][e];
      }
  }
  __syncthreads();
  if (threadIdx.x < CL) { /* (ii): row sums less column sums of T */
    const int k = threadIdx.x;
    float rs = 0.0f, cl = 0.0f;
    for (int j = 0; j < CL; j++) rs += Tm[k * (CL + 1) + j], cl += Tm[j * (CL + 1) + k];
    dcs[k] = rs - cl;
  }
  const float cend = cs[len - 1];
  /* dx: U = M^T dY (rows r >= j) + diag(exp(cs_L - cs)) B D^T */
  for (int tile = w; tile < 4 * NTP; tile += NW) {
    const int mt = tile / NTP, nt = tile % NTP;
    float u[2][4] = {}, v[2][4] = {};
    tile_mma<2>(u, Ms, 1, LM, DYs, LP, 1, 16 * mt, 16 * nt, 16 * mt, CL, lane);
    tile_mma<2>(v, Bs, LN, 1, Ds, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int jr = 16 * mt + g + 8 * (e >> 1), p = 16 * nt + 8 * j + 2 * tq + (e & 1);
        float U = u[j][e] + expf(cend - cs[jr]) * v[j][e];
        Us[jr * UP + p] = U;
        if (dx && jr < len && p < d.P) dx[((b * d.Tn + t0 + jr) * d.H + h) * d.P + p] = from_f<T>(dts[jr] * U);
      }
  }
  /* dC = diag(exp(cs)) dY S + W B; (i) into pI */
  for (int tile = w; tile < 4 * NT; tile += NW) {
    const int mt = tile / NT, nt = tile % NT;
    float off[2][4] = {}, dg[2][4] = {}, part[2] = {0.0f, 0.0f};
    tile_mma<2>(off, DYs, LP, 1, Ss, LN, 1, 16 * mt, 16 * nt, 0, d.PP, lane);
    tile_mma<2>(dg, Ws, LM, 1, Bs, LN, 1, 16 * mt, 16 * nt, 0, 16 * (mt + 1), lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns n, n + 1 of row r */
        int r = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq;
        float o0 = expf(cs[r]) * off[j][e], o1 = expf(cs[r]) * off[j][e + 1];
        part[e >> 1] += o0 * bf2f(Cs[r * LN + n]);
        part[e >> 1] += o1 * bf2f(Cs[r * LN + n + 1]);
        if (r < len)
          put_pair(dCo, dCp, ((b * d.Tn + t0 + r) * d.G + gi) * d.N + n, ((b * d.Tn + t0 + r) * d.H + h) * d.N + n, n,
                   d.N, pairs, o0 + dg[j][e], o1 + dg[j][e + 1]);
      }
    quad_store(pI, part, 16 * mt + g, NT, nt, tq);
  }
  /* dB = W^T C (rows r >= j) + diag(exp(cs_L - cs) dt) X D; Q into pQ */
  for (int tile = w; tile < 4 * NT; tile += NW) {
    const int mt = tile / NT, nt = tile % NT;
    float wc[2][4] = {}, xd[2][4] = {}, part[2] = {0.0f, 0.0f};
    tile_mma<2>(wc, Ws, 1, LM, Cs, LN, 1, 16 * mt, 16 * nt, 16 * mt, CL, lane);
    tile_mma<2>(xd, Xs, LP, 1, Ds, LN, 1, 16 * mt, 16 * nt, 0, d.PP, lane);
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns n, n + 1 of row jr */
        int jr = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq;
        float q0 = expf(cend - cs[jr]) * dts[jr] * xd[j][e], q1 = expf(cend - cs[jr]) * dts[jr] * xd[j][e + 1];
        part[e >> 1] += q0 * bf2f(Bs[jr * LN + n]);
        part[e >> 1] += q1 * bf2f(Bs[jr * LN + n + 1]);
        if (jr < len)
          put_pair(dBo, dBp, ((b * d.Tn + t0 + jr) * d.G + gi) * d.N + n, ((b * d.Tn + t0 + jr) * d.H + h) * d.N + n,
                   n, d.N, pairs, wc[j][e] + q0, wc[j][e + 1] + q1);
      }
    quad_store(pQ, part, 16 * mt + g, NT, nt, tq);
  }
  __syncthreads();
  if (threadIdx.x < CL) {
    const int k = threadIdx.x;
    float ex = 0.0f, I = 0.0f, Q = 0.0f;
    for (int p = 0; p < d.PP; p++) ex += bf2f(Xs[k * LP + p]) * Us[k * UP + p];
    for (int nt = 0; nt < NT; nt++) I += pI[k * NT + nt], Q += pQ[k * NT + nt];
    dcs[k] += I - Q;
    exs[k] = ex, qs[k] = Q;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float qsum = 0.0f, dsum = 0.0f, acc = 0.0f, dA = 0.0f;
    for (int k = 0; k < len; k++) qsum += qs[k];
    for (int ww = 0; ww < NW; ww++) dsum += red[ww];
    dcs[len - 1] += expf(cend) * dsum + qsum;
    for (int i = len - 1; i >= 0; i--) {
      acc += dcs[i]; /* da_i */
      dA += dts[i] * acc;
      exs[i] += Ah * acc;
    }
    if (dAp) dAp[bh * d.NC + c] = dA;
  }
  __syncthreads();
  if (ddt && (int)threadIdx.x < len) ddt[(b * d.Tn + t0 + threadIdx.x) * d.H + h] = from_f<T>(exs[threadIdx.x]);
}

/* 3b. The same backward for the grouped switch (M2_SSD_BWD_GROUPED=1, not yet run on a GPU): k_bwd below kept
 * verbatim as the default until this one has passed the parity tests; then k_bwd becomes k_bwd_grp<T, 0>.
 * Backward of one chunk, from its start state S = ck[c] and D = dst[c], the gradient of the state after it
 * (k_chain BWD); cs, dt, e_rj = exp(cs_r - cs_j) (j <= r < len), cs_L = cs[len - 1]:
 *   CB_rj = C_r.B_j, DX_rj = dy_r.x_j, M_rj = e_rj CB_rj, W_rj = e_rj dt_j DX_rj          (64 x 64, masked)
 *   U_j = sum_r M_rj dy_r + exp(cs_L - cs_j) D B_j        dx_j = dt_j U_j, explicit ddt_j = x_j.U_j
 *   dC_r = exp(cs_r) S^T dy_r + sum_j W_rj B_j           dB_j = sum_r W_rj C_r + exp(cs_L - cs_j) dt_j D^T x_j
 *   d/dcs_k: (i) C_k.(exp(cs_k) S^T dy_k)  (ii) sum_j W_kj CB_kj - sum_r W_rk CB_rk  (iv) - Q_k,
 *            Q_j = exp(cs_L - cs_j) dt_j x_j^T D B_j ; at k = len - 1 also exp(cs_L) <D, S> + sum_j Q_j
 *   da_i = sum_{k >= i} dcs_k (cs_k = A (dt_0 + .. + dt_k)): ddt_i += A da_i, dA += sum_i dt_i da_i.
 * dx, ddt are written; dA per chunk to dAp (B,H,NC). NULL outputs are not written. Every sum has a fixed order
 * (quads by shuffles, then per-(row, tile) partials in shared memory added up by one thread): deterministic.
 * MAXI 0 (per head): block (bh NC + c); dB, dC to dBo, dCo (G = H) or per head to dBp, dCp (B,T,H,N) fp32 (summed
 * over the group's heads by k_group_sum).
 * MAXI > 0 (grouped, M2_SSD_BWD_GROUPED): block ((b G + gi) NC + c) runs the group's heads one after another in
 * head order over one staging of C and B; each warp keeps its dC tiles (tile w + NW i, i < MAXI: 4 NT <= NW MAXI)
 * in fp32 registers and its dB tiles in fp32 shared memory after Ws (64 NP floats, each thread's own elements: no
 * barrier; both in registers spilled), adds each head's value (the very value the per-head path writes to dCp, dBp)
 * in head order from 0, and writes the sums to dBo, dCo once: the sums k_group_sum forms, in the same order,
 * without the (B,T,H,N) fp32 partials. */
template <class T, int MAXI>
__global__ void __launch_bounds__(NW * 32) k_bwd_grp(const T *x, const T *dt, const T *A, const T *Bm, const T *Cm,
                                                 const T *dy, const float *ck, const float *dst, T *dx, T *ddt,
                                                 T *dBo, T *dCo, float *dBp, float *dCp, float *dAp, ssd_dims d) {
  constexpr bool GRP = MAXI > 0;
  constexpr int MI = GRP ? MAXI : 1;
  extern __shared__ __align__(16) float smf[];
  const int LP = d.PP + 8, LN = d.NP + 8, NT = d.NP / 16, NTP = d.PP / 16, UP = d.PP + 1;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  float *cs = smf, *dts = cs + CL, *dcs = dts + CL, *exs = dcs + CL, *qs = exs + CL, *red = qs + CL,
        *Tm = red + 8, *Us = Tm + CL * (CL + 1), *pI = Us + CL * UP, *pQ = pI + CL * NT;
  uint16_t *Cs = (uint16_t *)(smf + bwd_floats(d.PP, d.NP)), *Bs = Cs + CL * LN, *Xs = Bs + CL * LN,
           *DYs = Xs + CL * LP, *Ss = DYs + CL * LP, *Ds = Ss + d.PP * LN, *Ms = Ds + d.PP * LN, *Ws = Ms + CL * LM;
  const int64_t c = blockIdx.x % d.NC, blk = blockIdx.x / d.NC, hpg = d.H / d.G;
  const int64_t b = GRP ? blk / d.G : blk / d.H, gi = GRP ? blk % d.G : (blk % d.H) / hpg;
  const int64_t hfirst = GRP ? gi * hpg : blk % d.H, nh = GRP ? hpg : 1;
  const int64_t t0 = c * d.Lc;
  const int len = (int)(d.Tn - t0 < d.Lc ? d.Tn - t0 : d.Lc);
  /* dB, dC go out as pairs of adjacent columns (one 8-byte fp32 or 4-byte bf16 store) where N is even and the
     outputs 8-byte aligned */
  const bool pairs = (d.N & 1) == 0 && ((uintptr_t)dBo & 7) == 0 && ((uintptr_t)dCo & 7) == 0 &&
                     ((uintptr_t)dBp & 7) == 0 && ((uintptr_t)dCp & 7) == 0;
  /* staging, every load of a thread in flight before it stores (tile_load.cuh): C and B by cp.async (bf16, N % 8 ==
     0; else wide loads; once a block), the fp32 S and D by 16-byte loads (N % 8 == 0) with <D, S> summed from them
     in fp32, x and dy by single loads (P odd at 400M); the grouped kernel keeps fewer loads in flight (its dB, dC
     sums hold 16 MAXI registers) */
  constexpr int USD = GRP ? 2 : 4, UXY = GRP ? 4 : stage_unroll<T>();
  const int64_t bn = ((b * d.Tn + t0) * d.G + gi) * d.N, sN = d.G * (int64_t)d.N;
  stage_tile<stage_unroll<T>()>(Cs, LN, Cm + bn, sN, CL, len, d.N);
  stage_tile<stage_unroll<T>()>(Bs, LN, Bm + bn, sN, CL, len, d.N);
  /* grouped: this warp's dC tiles (registers) and dB tiles (shared: tile t's elements j, 0 .. 3 of a lane at
     accB[((2 t + j) 32 + lane) 4], one 16-byte access a lane) summed over the heads so far */
  float accC[MI][2][4];
  float *accB = (float *)(Ws + CL * LM);
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) accC[i][j][e] = 0.0f;
      if (GRP && w + NW * i < 4 * NT)
        *reinterpret_cast<float4 *>(accB + ((2 * (w + NW * i) + j) * 32 + lane) * 4) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  for (int64_t hk = 0; hk < nh; hk++) {
    const int64_t h = hfirst + hk, bh = b * d.H + h;
    const float Ah = to_f(A[h]);
    if (hk > 0) __syncthreads(); /* the previous head is done with the shared tiles */
    chunk_cumsum(cs, dts, dt + h, b * d.Tn + t0, d.H, len, Ah);
    const int64_t so = (bh * d.NC + c) * (int64_t)d.P * d.N;
    float sd = 0.0f; /* <D, S> */
    tile_load2<USD>(Ss, Ds, LN, ck + so, dst + so, d.N, d.PP, d.P, d.N, [&](float sv, float dv) { sd += sv * dv; });
    const int64_t bx = ((b * d.Tn + t0) * d.H + h) * d.P;
    tile_load2<UXY>(Xs, DYs, LP, x + bx, dy + bx, d.H * (int64_t)d.P, CL, len, d.P, no_pair());
    if (hk == 0) {
      zero_cols(Cs, LN, CL, d.N, d.NP);
      zero_cols(Bs, LN, CL, d.N, d.NP);
    }
    zero_cols(Ss, LN, d.PP, d.N, d.NP);
    zero_cols(Ds, LN, d.PP, d.N, d.NP);
    zero_cols(Xs, LP, CL, d.P, d.PP);
    zero_cols(DYs, LP, CL, d.P, d.PP);
    mma_cp_wait<0>();
    sd = warp_sum(sd);
    if (lane == 0) red[w] = sd;
    __syncthreads();
    /* the masked scores M, W (bf16) and T = W o CB (fp32) */
    for (int tile = w; tile < 16; tile += NW) {
      const int mt = tile >> 2, nt = tile & 3;
      float cb[2][4] = {}, dxs[2][4] = {};
      if (nt <= mt) {
        tile_mma<2>(cb, Cs, LN, 1, Bs, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
        tile_mma<2>(dxs, DYs, LP, 1, Xs, 1, LP, 16 * mt, 16 * nt, 0, d.PP, lane);
      }
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int r = 16 * mt + g + 8 * (e >> 1), k = 16 * nt + 8 * j + 2 * tq + (e & 1);
          bool ok = k <= r && r < len;
          float ee = ok ? expf(cs[r] - cs[k]) : 0.0f, wv = ee * dts[k] * dxs[j][e];
          Ms[r * LM + k] = bfbits(ee * cb[j][e]);
          Ws[r * LM + k] = bfbits(wv);
          Tm[r * (CL + 1) + k] = wv * cb[j][e];
        }
    }
    __syncthreads();
    if (threadIdx.x < CL) { /* (ii): row sums less column sums of T */
      const int k = threadIdx.x;
      float rs = 0.0f, cl = 0.0f;
      for (int j = 0; j < CL; j++) rs += Tm[k * (CL + 1) + j], cl += Tm[j * (CL + 1) + k];
      dcs[k] = rs - cl;
    }
    const float cend = cs[len - 1];
    /* dx: U = M^T dY (rows r >= j) + diag(exp(cs_L - cs)) B D^T */
    for (int tile = w; tile < 4 * NTP; tile += NW) {
      const int mt = tile / NTP, nt = tile % NTP;
      float u[2][4] = {}, v[2][4] = {};
      tile_mma<2>(u, Ms, 1, LM, DYs, LP, 1, 16 * mt, 16 * nt, 16 * mt, CL, lane);
      tile_mma<2>(v, Bs, LN, 1, Ds, 1, LN, 16 * mt, 16 * nt, 0, d.NP, lane);
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int jr = 16 * mt + g + 8 * (e >> 1), p = 16 * nt + 8 * j + 2 * tq + (e & 1);
          float U = u[j][e] + expf(cend - cs[jr]) * v[j][e];
          Us[jr * UP + p] = U;
          if (dx && jr < len && p < d.P) dx[((b * d.Tn + t0 + jr) * d.H + h) * d.P + p] = from_f<T>(dts[jr] * U);
        }
    }
    /* dC = diag(exp(cs)) dY S + W B; (i) into pI. emit(j, e, r, n, v0, v1): the values of columns n, n + 1 of row r
       (the accumulator elements j, e and e + 1) */
    auto dc_tile = [&](int tile, auto &&emit) {
      const int mt = tile / NT, nt = tile % NT;
      float off[2][4] = {}, dg[2][4] = {}, part[2] = {0.0f, 0.0f};
      tile_mma<2>(off, DYs, LP, 1, Ss, LN, 1, 16 * mt, 16 * nt, 0, d.PP, lane);
      tile_mma<2>(dg, Ws, LM, 1, Bs, LN, 1, 16 * mt, 16 * nt, 0, 16 * (mt + 1), lane);
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns n, n + 1 of row r */
          int r = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq;
          float o0 = expf(cs[r]) * off[j][e], o1 = expf(cs[r]) * off[j][e + 1];
          part[e >> 1] += o0 * bf2f(Cs[r * LN + n]);
          part[e >> 1] += o1 * bf2f(Cs[r * LN + n + 1]);
          emit(j, e, r, n, o0 + dg[j][e], o1 + dg[j][e + 1]);
        }
      quad_store(pI, part, 16 * mt + g, NT, nt, tq);
    };
    /* dB = W^T C (rows r >= j) + diag(exp(cs_L - cs) dt) X D; Q into pQ */
    auto db_tile = [&](int tile, auto &&emit) {
      const int mt = tile / NT, nt = tile % NT;
      float wc[2][4] = {}, xd[2][4] = {}, part[2] = {0.0f, 0.0f};
      tile_mma<2>(wc, Ws, 1, LM, Cs, LN, 1, 16 * mt, 16 * nt, 16 * mt, CL, lane);
      tile_mma<2>(xd, Xs, LP, 1, Ds, LN, 1, 16 * mt, 16 * nt, 0, d.PP, lane);
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) { /* elements e, e + 1: columns n, n + 1 of row jr */
          int jr = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq;
          float q0 = expf(cend - cs[jr]) * dts[jr] * xd[j][e], q1 = expf(cend - cs[jr]) * dts[jr] * xd[j][e + 1];
          part[e >> 1] += q0 * bf2f(Bs[jr * LN + n]);
          part[e >> 1] += q1 * bf2f(Bs[jr * LN + n + 1]);
          emit(j, e, jr, n, wc[j][e] + q0, wc[j][e + 1] + q1);
        }
      quad_store(pQ, part, 16 * mt + g, NT, nt, tq);
    };
    if constexpr (GRP) {
#pragma unroll
      for (int i = 0; i < MI; i++)
        if (w + NW * i < 4 * NT)
          dc_tile(w + NW * i, [&](int j, int e, int, int, float v0, float v1) {
            accC[i][j][e] += v0, accC[i][j][e + 1] += v1;
          });
#pragma unroll
      for (int i = 0; i < MI; i++) {
        const int tile = w + NW * i;
        if (tile >= 4 * NT) continue;
        float tv[2][4];
        db_tile(tile, [&](int j, int e, int, int, float v0, float v1) { tv[j][e] = v0, tv[j][e + 1] = v1; });
#pragma unroll
        for (int j = 0; j < 2; j++) {
          float4 *q = reinterpret_cast<float4 *>(accB + ((2 * tile + j) * 32 + lane) * 4), s = *q;
          s.x += tv[j][0], s.y += tv[j][1], s.z += tv[j][2], s.w += tv[j][3];
          *q = s;
        }
      }
    } else {
      for (int tile = w; tile < 4 * NT; tile += NW)
        dc_tile(tile, [&](int, int, int r, int n, float v0, float v1) {
          if (r < len)
            put_pair(dCo, dCp, ((b * d.Tn + t0 + r) * d.G + gi) * d.N + n, ((b * d.Tn + t0 + r) * d.H + h) * d.N + n, n,
                     d.N, pairs, v0, v1);
        });
      for (int tile = w; tile < 4 * NT; tile += NW)
        db_tile(tile, [&](int, int, int r, int n, float v0, float v1) {
          if (r < len)
            put_pair(dBo, dBp, ((b * d.Tn + t0 + r) * d.G + gi) * d.N + n, ((b * d.Tn + t0 + r) * d.H + h) * d.N + n, n,
                     d.N, pairs, v0, v1);
        });
    }
    __syncthreads();
    if (threadIdx.x < CL) {
      const int k = threadIdx.x;
      float ex = 0.0f, I = 0.0f, Q = 0.0f;
      for (int p = 0; p < d.PP; p++) ex += bf2f(Xs[k * LP + p]) * Us[k * UP + p];
      for (int nt = 0; nt < NT; nt++) I += pI[k * NT + nt], Q += pQ[k * NT + nt];
      dcs[k] += I - Q;
      exs[k] = ex, qs[k] = Q;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float qsum = 0.0f, dsum = 0.0f, acc = 0.0f, dA = 0.0f;
      for (int k = 0; k < len; k++) qsum += qs[k];
      for (int ww = 0; ww < NW; ww++) dsum += red[ww];
      dcs[len - 1] += expf(cend) * dsum + qsum;
      for (int i = len - 1; i >= 0; i--) {
        acc += dcs[i]; /* da_i */
        dA += dts[i] * acc;
        exs[i] += Ah * acc;
      }
      if (dAp) dAp[bh * d.NC + c] = dA;
    }
    __syncthreads();
    if (ddt && (int)threadIdx.x < len) ddt[(b * d.Tn + t0 + threadIdx.x) * d.H + h] = from_f<T>(exs[threadIdx.x]);
  } /* heads */
  if constexpr (GRP) { /* the group's sums, rounded once (k_group_sum's from_f<T>) */
#pragma unroll
    for (int i = 0; i < MI; i++) {
      const int tile = w + NW * i;
      if (tile >= 4 * NT) continue;
      const int mt = tile / NT, nt = tile % NT;
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const float4 sb = *reinterpret_cast<const float4 *>(accB + ((2 * tile + j) * 32 + lane) * 4);
        const float vb[4] = {sb.x, sb.y, sb.z, sb.w};
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          int r = 16 * mt + g + 8 * (e >> 1), n = 16 * nt + 8 * j + 2 * tq;
          if (r >= len) continue;
          const int64_t o = ((b * d.Tn + t0 + r) * d.G + gi) * d.N + n;
          put_pair(dCo, (float *)nullptr, o, 0, n, d.N, pairs, accC[i][j][e], accC[i][j][e + 1]);
          put_pair(dBo, (float *)nullptr, o, 0, n, d.N, pairs, vb[e], vb[e + 1]);
        }
      }
    }
  }
}

/* out (B,T,G,N) = the sum over the group's heads of part (B,T,H,N), in head order. */
template <class T>
__global__ void k_group_sum(const float *part, T *out, int64_t BT, int64_t H, int64_t G, int N) {
  const int64_t hpg = H / G;
  CU_GRID_STRIDE(i, BT * G * N) {
    int64_t n = i % N, r = i / N, gi = r % G, bt = r / G;
    const float *pp = part + (bt * H + gi * hpg) * N + n;
    float s = 0.0f;
    constexpr int UN = 8; /* heads whose loads are issued before the first is added; the sum stays in head order */
    for (int64_t k0 = 0; k0 < hpg; k0 += UN) {
      float v[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) v[u] = k0 + u < hpg ? pp[(k0 + u) * N] : 0.0f;
#pragma unroll
      for (int u = 0; u < UN; u++)
        if (k0 + u < hpg) s += v[u];
    }
    out[i] = from_f<T>(s);
  }
}

/* dA (H) = the sum over batch and chunks of dAp (B,H,NC), in order. */
template <class T>
__global__ void k_da_sum(const float *dAp, T *dA, int64_t B, int64_t H, int NC) {
  CU_GRID_STRIDE(h, H) {
    float s = 0.0f;
    constexpr int UN = 16; /* values whose loads are issued before the first is added; the sum stays in order */
    const int64_t m = B * NC;
    for (int64_t k0 = 0; k0 < m; k0 += UN) {
      float v[UN];
#pragma unroll
      for (int u = 0; u < UN; u++) {
        int64_t k = k0 + u;
        v[u] = k < m ? dAp[((k / NC) * H + h) * NC + k % NC] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < UN; u++)
        if (k0 + u < m) s += v[u];
    }
    dA[h] = from_f<T>(s);
  }
}

template <class F> cudaError_t smem_opt(F f, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* The chunk states st (B,H,NC,P,N) from init to fin (k_chain's contract): k_chain over every (b, h, 16 rows of P),
 * with the register tile that fits NP, or (two_pass) k_state then k_pass, with dec (B,H,NC) as scratch. */
size_t smem_state(const ssd_dims &d);
template <class T, bool BWD>
cudaError_t run_chain(const T *u, const T *dt, const T *A, const T *v, const T *init, T *fin, float *st,
                      const ssd_dims &d, size_t smem, cudaStream_t s, bool two_pass, float *dec) {
  unsigned blocks = (unsigned)(d.B * d.H * (d.PP / 16));
  cudaError_t e;
  if (two_pass) {
    size_t s1 = smem_state(d);
    if ((e = smem_opt(k_state<T, BWD>, s1)) != cudaSuccess) return e;
    k_state<T, BWD><<<(unsigned)(d.B * d.H * d.NC), NW * 32, s1, s>>>(u, dt, A, v, st, dec, d);
    k_pass<T, BWD><<<cu_grid(d.B * d.H * (int64_t)d.P * d.N, 256), 256, 0, s>>>(st, dec, init, fin, d.B * d.H,
                                                                              (int64_t)d.P * d.N, d.NC);
  } else if (d.NP <= 8 * NW * 4) {
    if ((e = smem_opt(k_chain<T, BWD, 4>, smem)) != cudaSuccess) return e;
    k_chain<T, BWD, 4><<<blocks, NW * 32, smem, s>>>(u, dt, A, v, init, fin, st, d);
  } else {
    if ((e = smem_opt(k_chain<T, BWD, 8>, smem)) != cudaSuccess) return e;
    k_chain<T, BWD, 8><<<blocks, NW * 32, smem, s>>>(u, dt, A, v, init, fin, st, d);
  }
  return cudaGetLastError();
}

size_t smem_state(const ssd_dims &d) { return 2 * CL * 4 + (size_t)CL * (d.PP + 8 + d.NP + 8) * 2; }
size_t smem_chain(const ssd_dims &d) { return 2 * CL * 4 + (size_t)CL * (LU + d.NP + 8) * 2; }
size_t smem_scan(const ssd_dims &d) {
  return 2 * CL * 4 + ((size_t)2 * CL * (d.NP + 8) + (size_t)CL * (d.PP + 8) + (size_t)d.PP * (d.NP + 8) + CL * LM) * 2;
}

size_t smem_bwd(const ssd_dims &d) {
  return (size_t)bwd_floats(d.PP, d.NP) * 4 +
         ((size_t)2 * CL * (d.NP + 8) + (size_t)2 * CL * (d.PP + 8) + (size_t)2 * d.PP * (d.NP + 8) + 2 * CL * LM) * 2;
}

ssd_dims dims_of(const m2_ssd_attr &a, int64_t seg) {
  ssd_dims d;
  d.B = a.B, d.Tn = a.T, d.H = a.H, d.G = a.G, d.P = (int)a.P, d.N = (int)a.N;
  d.PP = (int)((a.P + 15) / 16 * 16), d.NP = (int)((a.N + 15) / 16 * 16), d.Lc = (int)seg;
  d.NC = (int)((a.T + seg - 1) / seg);
  return d;
}

int g_mode = -1; /* 0 off, 1 k_chain, 2 k_state + k_pass; M2_SSD_CHUNK_TC read once, or m2_cuda_ssd_chunk_mode */

int chunk_switch(void) {
  if (g_mode < 0) {
    const char *e = getenv("M2_SSD_CHUNK_TC"); /* on (1) unless 0 / off; 2 the two-launch chunk states */
    g_mode = e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0) ? 0 : e && strcmp(e, "2") == 0 ? 2 : 1;
  }
  return g_mode;
}

int g_grouped = -1; /* the grouped backward (k_bwd MAXI > 0): 0 off, 1 on; M2_SSD_BWD_GROUPED read once */

int grouped_switch(void) {
  if (g_grouped < 0) {
    const char *e = getenv("M2_SSD_BWD_GROUPED"); /* on unless 0 (passed parity on an H100, 2026-12-07) */
    g_grouped = e && strcmp(e, "0") == 0 ? 0 : 1;
  }
  return g_grouped;
}

/* The grouped backward's shared memory: k_bwd's and the dB sums (64 NP fp32). */
size_t smem_bwd_grouped(const ssd_dims &d) { return smem_bwd(d) + (size_t)4 * CL * d.NP; }

/* The grouped backward's register tile for d (MAXI = 8 >= ceil(4 NT / NW): N <= 256), 0 where it does not apply
 * (N > 256, or its shared memory over the device's limit: the per-head path). */
int grouped_tiles(const ssd_dims &d, int dev) {
  int optin = 0;
  if (4 * (d.NP / 16) > NW * 8) return 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
  return smem_bwd_grouped(d) <= (size_t)optin ? 8 : 0;
}

long g_chunk_calls, g_chunk_bwd_calls, g_grouped_bwd_calls;

} // namespace

extern "C" long m2_cuda_ssd_chunk_tc_calls(void) { return g_chunk_calls; }
extern "C" int m2_cuda_ssd_chunk_mode(int mode) {
  int prev = chunk_switch();
  if (mode >= 0 && mode <= 2) g_mode = mode;
  return prev;
}
extern "C" long m2_cuda_ssd_chunk_tc_bwd_calls(void) { return g_chunk_bwd_calls; }
extern "C" int m2_cuda_ssd_bwd_grouped(int set) {
  int prev = grouped_switch();
  if (set == 0 || set == 1) g_grouped = set;
  return prev;
}
extern "C" long m2_cuda_ssd_bwd_grouped_calls(void) { return g_grouped_bwd_calls; }

bool ssd_chunk_applies(const m2_opcall *c, int64_t seg, bool bwd) {
  if (!chunk_switch() || seg < 1 || seg > CL) return false;
  m2_dtype dt = c->in[0]->dtype;
  if (!(dt == M2_BF16 || (dt == M2_F32 && m2_matmul_precision() == M2_MM_BF16))) return false;
  const m2_ssd_attr a = *M2_ATTR(c, m2_ssd_attr);
  if (a.B < 1 || a.T < 1 || a.H < 1 || a.P < 1 || a.N < 1 || a.P > 4096) return false;
  if (a.N > 8 * NW * 8) return false; /* k_chain's register tile: N <= 512 */
  ssd_dims d = dims_of(a, seg);
  if ((double)a.B * a.H * d.NC >= 2147483647.0) return false;
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->in[0]->device.index) != cudaSuccess)
    return false;
  size_t need = bwd ? smem_bwd(d) : smem_scan(d);
  return need <= (size_t)optin && smem_chain(d) <= (size_t)optin && smem_state(d) <= (size_t)optin;
}

m2_status ssd_chunk_forward(const m2_opcall *c, int64_t seg, m2_tensor *y, m2_tensor *hT, m2_tensor *ck,
                            cudaStream_t st) {
  const char *op = c->op->name;
  const m2_ssd_attr a = *M2_ATTR(c, m2_ssd_attr);
  ssd_dims d = dims_of(a, seg);
  m2_tensor *const *in = c->in;
  float *stp = (float *)m2_data(ck);
  size_t s1 = smem_chain(d), s3 = smem_scan(d);
  const bool two = chunk_switch() == 2;
  m2_tensor *dec = two ? cu_scratch_f32(c->in[0]->device, a.B * a.H * d.NC) : NULL;
  if (two && !dec) return m2_errcode();
  float *decp = dec ? (float *)m2_data(dec) : NULL;
  cudaError_t e = cudaSuccess;
  CU_FLOAT_DISPATCH(in[0]->dtype, {
    e = smem_opt(k_scan<T>, s3);
    if (e == cudaSuccess)
      e = run_chain<T, false>(PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[5]), PT(hT), stp, d, s1, st, two, decp);
    if (e == cudaSuccess) {
      k_scan<T><<<(unsigned)(a.B * a.H * d.NC), NW * 32, s3, st>>>(PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]),
                                                                   PC(in[4]), stp, PT(y), d);
      e = cudaGetLastError();
    }
  });
  m2_release(dec);
  if (e != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: chunked forward kernel launch failed: %s", op, cudaGetErrorString(e));
  g_chunk_calls++;
  return M2_OK;
}

m2_status ssd_chunk_backward(const m2_opcall *c, int64_t seg, const m2_tensor *dy, const m2_tensor *dhT,
                             m2_tensor *const din[6], cudaStream_t st) {
  const char *op = c->op->name;
  const m2_ssd_attr a = *M2_ATTR(c, m2_ssd_attr);
  ssd_dims d = dims_of(a, seg);
  const m2_device dev = c->in[0]->device;
  const int64_t BH = a.B * a.H, PN = a.P * a.N, hpg = a.H / a.G, nbtn = a.B * a.T * a.H * a.N;
  /* several heads a group: their dB, dC summed by the grouped k_bwd where switched on and N <= 256 (maxi), else
     from per-head fp32 partials by k_group_sum */
  const int maxi = hpg > 1 && grouped_switch() ? grouped_tiles(d, dev.index) : 0;
  const bool grouped = hpg > 1 && !maxi;
  const bool two = chunk_switch() == 2;
  m2_tensor *dstt = cu_scratch_f32(dev, BH * d.NC * PN), *dAp = cu_scratch_f32(dev, BH * d.NC),
            *dec = two ? cu_scratch_f32(dev, BH * d.NC) : NULL;
  m2_tensor *dBp = grouped && din[3] ? cu_scratch_f32(dev, nbtn) : NULL, *dCp = grouped && din[4] ? cu_scratch_f32(dev, nbtn) : NULL;
  m2_status s = (dstt && dAp && (dec || !two) && (dBp || !(grouped && din[3])) && (dCp || !(grouped && din[4]))) ? M2_OK : m2_errcode();
  if (s == M2_OK) {
    m2_tensor *const *in = c->in;
    float *dsp = (float *)m2_data(dstt), *dap = (float *)m2_data(dAp);
    const float *ck = (const float *)m2_data(c->saved[0]);
    size_t s1 = smem_chain(d), sb = maxi ? smem_bwd_grouped(d) : smem_bwd(d);
    /* one block a (b, h, chunk), or (grouped) a (b, group, chunk) running the group's heads */
    unsigned blocks = (unsigned)((maxi ? a.B * a.G : BH) * d.NC);
    cudaError_t e = cudaSuccess;
    CU_FLOAT_DISPATCH(in[0]->dtype, {
      auto kb = maxi ? k_bwd_grp<T, 8> : k_bwd<T>;
      e = smem_opt(kb, sb);
      if (e == cudaSuccess)
        e = run_chain<T, true>(PC(dy), PC(in[1]), PC(in[2]), PC(in[4]), PC(dhT), PT(din[5]), dsp, d, s1, st, two,
                               dec ? (float *)m2_data(dec) : NULL);
      if (e == cudaSuccess) {
        kb<<<blocks, NW * 32, sb, st>>>(PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(dy), ck, dsp,
                                        PT(din[0]), PT(din[1]), grouped ? NULL : PT(din[3]),
                                        grouped ? NULL : PT(din[4]), dBp ? (float *)m2_data(dBp) : NULL,
                                        dCp ? (float *)m2_data(dCp) : NULL, din[2] ? dap : NULL, d);
        if (dBp) k_group_sum<T><<<cu_grid(a.B * a.T * a.G * a.N, 256), 256, 0, st>>>((const float *)m2_data(dBp),
                                                                                    PT(din[3]), a.B * a.T, a.H, a.G, d.N);
        if (dCp) k_group_sum<T><<<cu_grid(a.B * a.T * a.G * a.N, 256), 256, 0, st>>>((const float *)m2_data(dCp),
                                                                                    PT(din[4]), a.B * a.T, a.H, a.G, d.N);
        if (din[2]) k_da_sum<T><<<cu_grid(a.H, 256), 256, 0, st>>>(dap, PT(din[2]), a.B, a.H, d.NC);
        e = cudaGetLastError();
      }
    });
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: chunked backward kernel launch failed: %s", op, cudaGetErrorString(e));
    else g_chunk_bwd_calls++, g_grouped_bwd_calls += maxi > 0;
  }
  m2_release(dstt), m2_release(dAp), m2_release(dec), m2_release(dBp), m2_release(dCp);
  return s;
}
