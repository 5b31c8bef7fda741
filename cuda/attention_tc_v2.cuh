/* attention_tc_v2.cuh — the tensor-core attention kernels of the M2_ATTN_V2 path (m2_cuda_attn_v2; on by default),
 * included by cuda/attention_tc.cu inside its anonymous namespace (they use its fragment helpers: stage, load_a,
 * mul_abt, mul_ab, to_a, ex2, att_keys, lse2). The default kernels there are left as they are.
 *
 * What differs from the default path:
 *  - no packing: every bf16 operand is an att_v {pointer, element strides of batch, row, head}; the kernels stage
 *    rows of D contiguous bf16 elements with cp.async wherever they lie. A (B, L, NH, D) tensor has strides
 *    (L NH D, NH D, D). bf16 q, k, v and do are read in place; f32 ones pass once through k2_cvt (16-byte loads and
 *    stores, same (B, L, NH, D) layout, no index arithmetic a element).
 *  - outputs in the op's dtype (OT = float or bf16): o, dk, dv rounded once from the fp32 accumulators.
 *  - backward in ONE pass over key blocks (k2_bwd): a block owns 64 keys of one kv head, keeps dK and dV in
 *    registers, walks the query tiles of every query head of the group, and adds each tile's dQ = scale dS K
 *    (32 x D) into an fp32 (B, T, H, D) buffer with atomicAdd: 5 products a tile (S, dP, dV, dK, dQ) instead of
 *    the 7 of the default dq + dk/dv kernels. The order in which the key blocks' contributions reach a dq element
 *    depends on scheduling, so dq may differ from run to run in the last bits (dk, dv do not: fixed order).
 *  - k2_prep: D_t = sum_d bf16(do) o with 8 elements a thread (16-byte loads), D / 8 lanes a row. */

/* A bf16 operand: element (b, row r, head h, d) at p[b sb + r sr + h sh + d]; d contiguous, 16-byte aligned rows. */
struct att_v {
  const uint16_t *p;
  int64_t sb, sr, sh;
};

/* Stage rows r0 .. r0 + R - 1 of the (L, D) bf16 matrix g (row stride ld elements) into shared rows of D + 8; rows
 * >= L become 0. */
template <int D, int R>
__device__ __forceinline__ void stage_ld(uint16_t *s, const uint16_t *g, int64_t ld, int r0, int L) {
  constexpr int CH = D / 8;
  for (int i = threadIdx.x; i < R * CH; i += NW * 32) {
    int r = i / CH, c = i % CH;
    bool ok = r0 + r < L;
    mma_cp16(s + r * (D + 8) + c * 8, g + (int64_t)(ok ? r0 + r : 0) * ld + c * 8, ok);
  }
}

__device__ __forceinline__ void put2(float *p, float a, float b) { *(float2 *)p = make_float2(a, b); }
__device__ __forceinline__ void put2(bf16 *p, float a, float b) { *(uint32_t *)p = mma_pack(a, b); }

/* Rows (r[0], r[1]) of acc (16 x D) times f to dst rows (row < L) of stride ld, in dtype OT. */
template <int D, class OT>
__device__ __forceinline__ void store_rows_t(OT *dst, int64_t ld, const float acc[D / 8][4], const int r[2], int L,
                                             const float f[2], int tq) {
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (r[i] >= L) continue;
    OT *row = dst + (int64_t)r[i] * ld;
#pragma unroll
    for (int j = 0; j < D / 8; j++) put2(row + j * 8 + 2 * tq, acc[j][2 * i] * f[i], acc[j][2 * i + 1] * f[i]);
  }
}

/* ---------------- conversions ---------------- */

/* y[i] = bf16(x[i]), i < 8 n8 (x, y 16-byte aligned); 8 elements a thread. */
__global__ void k2_cvt(const float *x, uint16_t *y, int64_t n8) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    const float4 a = __ldg((const float4 *)x + 2 * i), b = __ldg((const float4 *)x + 2 * i + 1);
    ((uint4 *)y)[i] = make_uint4(mma_pack(a.x, a.y), mma_pack(a.z, a.w), mma_pack(b.x, b.y), mma_pack(b.z, b.w));
  }
}

/* 8 consecutive elements as floats (16-byte aligned). */
__device__ __forceinline__ void ld8(float f[8], const float *p) {
  const float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)p + 1);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void ld8(float f[8], const bf16 *p) {
  const uint4 u = __ldg((const uint4 *)p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) f[2 * i] = __uint_as_float(w[i] << 16), f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
}

/* do, o (B, T, H, D) of dtype T: D_t (B, H, T) = sum_d bf16(do) o; dob (B, T, H, D) = bf16(do) when T is float
 * (bf16 do is read in place). D / 8 lanes a row, 8 elements a lane. */
template <class T, int D>
__global__ void k2_prep(const T *dout, const T *o, uint16_t *dob, float *Dt, int64_t rows, int T_, int H) {
  constexpr int G = D / 8;
  const int64_t gi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, row = gi / G;
  const int c = (int)(gi % G);
  const bool on = row < rows;
  float acc = 0;
  if (on) {
    float g[8], x[8];
    ld8(g, dout + row * D + c * 8);
    ld8(x, o + row * D + c * 8);
    uint32_t pk[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      pk[i] = mma_pack(g[2 * i], g[2 * i + 1]);
      acc += __uint_as_float(pk[i] << 16) * x[2 * i] + __uint_as_float(pk[i] & 0xffff0000u) * x[2 * i + 1];
    }
    if (dob) ((uint4 *)(dob + row * D))[c] = make_uint4(pk[0], pk[1], pk[2], pk[3]);
  }
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (on && c == 0) {
    const int64_t h = row % H, bt = row / H, t = bt % T_, b = bt / T_;
    Dt[(b * H + h) * T_ + t] = acc;
  }
}

/* ---------------- forward ---------------- */

/* O (B, T, H, D) of OT, lse (B, H, T) f32 (natural log); grid (ceil(T/64), B*H). As k_fwd, on strided operands. */
template <int D, class OT>
__global__ void __launch_bounds__(NW * 32) k2_fwd(att_v Q, att_v K, att_v V, OT *O, float *lse, int T, int H, int S,
                                                  int Hkv, float sl2, bool causal) {
  constexpr int LD = D + 8, BN = 64;
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t *Qs = sm, *Ks = Qs + BM * LD, *Vs = Ks + 2 * BN * LD;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / Hkv);
  const int t0 = (gridDim.x - 1 - blockIdx.x) * BM; /* the latest (heaviest) query blocks first */
  const uint16_t *Kg = K.p + b * K.sb + kh * K.sh, *Vg = V.p + b * V.sb + kh * V.sh;
  const int nmax = att_keys(min(t0 + BM, T) - 1, T, S, causal), nmin = att_keys(t0, T, S, causal);
  const int ntile = (nmax + BN - 1) / BN;
  stage_ld<D, BM>(Qs, Q.p + b * Q.sb + h * Q.sh, Q.sr, t0, T);
  if (ntile > 0) stage_ld<D, BN>(Ks, Kg, K.sr, 0, S), stage_ld<D, BN>(Vs, Vg, V.sr, 0, S);
  mma_cp_commit();
  const int r[2] = {t0 + 16 * w + g, t0 + 16 * w + g + 8};
  const int nv[2] = {att_keys(r[0], T, S, causal), att_keys(r[1], T, S, causal)};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0}, o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;
  uint32_t qa[D / 16][4];
  for (int it = 0; it < ntile; it++) {
    if (it + 1 < ntile) { /* stage tile it + 1 into the other half, then wait for tile it */
      const int nb = ((it + 1) & 1) * BN * LD;
      stage_ld<D, BN>(Ks + nb, Kg, K.sr, (it + 1) * BN, S);
      stage_ld<D, BN>(Vs + nb, Vg, V.sr, (it + 1) * BN, S);
      mma_cp_commit();
      mma_cp_wait<1>();
    } else {
      mma_cp_wait<0>();
    }
    __syncthreads();
    if (it == 0) load_a<D>(qa, Qs, 16 * w, lane);
    const uint16_t *Kt = Ks + (it & 1) * BN * LD, *Vt = Vs + (it & 1) * BN * LD;
    float s[BN / 8][4];
    mul_abt<D, BN>(s, qa, Kt, lane);
    const int s0 = it * BN;
    const bool edge = s0 + BN > nmin;
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
      ref[i] = mx[i] == -INFINITY ? 0.f : mx[i];
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
    __syncthreads();
  }
  mma_cp_wait<0>();
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] = quad_sum(l[i]);
    inv[i] = l[i] > 0 ? 1.0f / l[i] : 0.0f;
    if (tq == 0 && r[i] < T) lse[(size_t)bh * T + r[i]] = l[i] > 0 ? (m[i] + log2f(l[i])) * LN2 : -INFINITY;
  }
  store_rows_t<D, OT>(O + ((size_t)b * T * H + h) * D, (int64_t)H * D, o, r, T, inv, tq);
}

/* ---------------- backward, one pass ---------------- */

/* grid (ceil(S/64), B*Hkv), 4 warps of 16 key rows. For every query head of kv head kh and every query tile of 32
 * that sees one of the block's keys:
 *   S^T, dP^T (64 keys x 32 queries; a warp its 16 keys) -> P, dS = P (dP - D_t)
 *   dV += P^T do, dK += dS^T q (registers, summed in a fixed order: dk, dv deterministic)
 *   dS scale -> shared (bf16, keys x queries); dQ_tile (32 x D) = dS K split over the warps (16 queries x D/2
 *   each) and added to dqa (B, T, H, D) f32 with atomicAdd (dqa NULL: no dq).
 * dk = scale dK, dv = dV (B, S, Hkv, D) of OT (NULL: not wanted). */
template <int D, class OT>
__global__ void __launch_bounds__(NW * 32) k2_bwd(att_v Q, att_v K, att_v V, att_v dO, const float *lse,
                                                  const float *Dt, float *dqa, OT *dk, OT *dv, int T, int H, int S,
                                                  int Hkv, float sl2, float scale, bool causal) {
  constexpr int LD = D + 8, BQ = 32, LDS = BQ + 8, DH = D / 2;
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t *Ks = sm, *Vs = Ks + BM * LD, *Qs = Vs + BM * LD, *Os = Qs + 2 * BQ * LD, *dSs = Os + 2 * BQ * LD;
  float *Ls = (float *)(dSs + BM * LDS), *Ds = Ls + 2 * BQ;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int bkh = blockIdx.y, b = bkh / Hkv, kh = bkh % Hkv, rep = H / Hkv, k0 = blockIdx.x * BM;
  const int tstart = causal ? max(0, k0 - (S - T)) : 0; /* the first query that sees key k0 */
  const int nqt = tstart < T ? (T - tstart + BQ - 1) / BQ : 0, total = rep * nqt;
  stage_ld<D, BM>(Ks, K.p + b * K.sb + kh * K.sh, K.sr, k0, S);
  stage_ld<D, BM>(Vs, V.p + b * V.sb + kh * V.sh, V.sr, k0, S);
  auto stage_q = [&](int it, int buf) {
    const int hh = it / nqt, tq0 = tstart + (it % nqt) * BQ, h = kh * rep + hh;
    const size_t bh = (size_t)b * H + h;
    stage_ld<D, BQ>(Qs + buf * BQ * LD, Q.p + b * Q.sb + h * Q.sh, Q.sr, tq0, T);
    stage_ld<D, BQ>(Os + buf * BQ * LD, dO.p + b * dO.sb + h * dO.sh, dO.sr, tq0, T);
    for (int i = threadIdx.x; i < BQ; i += NW * 32) {
      const int t = tq0 + i;
      Ls[buf * BQ + i] = t < T ? lse2(lse[bh * T + t]) : INFINITY;
      Ds[buf * BQ + i] = t < T ? Dt[bh * T + t] : 0.f;
    }
  };
  if (total > 0) stage_q(0, 0);
  mma_cp_commit();
  const int r[2] = {k0 + 16 * w + g, k0 + 16 * w + g + 8}; /* this lane's key rows */
  const int qh = 16 * (w & 1), c0 = DH * (w >> 1);           /* this warp's part of the dQ tile */
  float ak[D / 8][4], av[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) ak[j][e] = av[j][e] = 0;
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
    const uint16_t *Qt = Qs + buf * BQ * LD, *Ot = Os + buf * BQ * LD;
    const float *Lt = Ls + buf * BQ, *Dq = Ds + buf * BQ;
    const int hh = it / nqt, tq0 = tstart + (it % nqt) * BQ, h = kh * rep + hh;
    float s[BQ / 8][4], dp[BQ / 8][4];
    {
      uint32_t ka[D / 16][4]; /* reloaded each tile: fewer live registers than k_dkv's */
      load_a<D>(ka, Ks, 16 * w, lane);
      mul_abt<D, BQ>(s, ka, Qt, lane); /* S^T: rows keys, columns queries */
      load_a<D>(ka, Vs, 16 * w, lane);
      mul_abt<D, BQ>(dp, ka, Ot, lane);
    }
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
    if (dqa) /* scale dS^T to shared, this warp's 16 key rows */
#pragma unroll
      for (int j = 0; j < BQ / 8; j++)
#pragma unroll
        for (int i = 0; i < 2; i++)
          *(uint32_t *)(dSs + (16 * w + g + 8 * i) * LDS + 8 * j + 2 * tq) =
              mma_pack(dp[j][2 * i] * scale, dp[j][2 * i + 1] * scale);
    {
      uint32_t pa[BQ / 16][4], dsa[BQ / 16][4];
      to_a<BQ>(pa, s);
      to_a<BQ>(dsa, dp);
      mul_ab<D, BQ>(av, pa, Ot, lane);
      mul_ab<D, BQ>(ak, dsa, Qt, lane);
    }
    if (dqa) {
      __syncthreads(); /* every warp's dS rows in shared */
      uint32_t da[BM / 16][4]; /* A: queries qh .. qh + 15 x the 64 keys (dS, read transposed) */
#pragma unroll
      for (int kk = 0; kk < BM / 16; kk++)
        mma_ldsm4t(da[kk], dSs + (kk * 16 + (lane >> 4) * 8 + (lane & 7)) * LDS + qh + ((lane >> 3) & 1) * 8);
      float acc[DH / 8][4];
#pragma unroll
      for (int j = 0; j < DH / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
#pragma unroll
      for (int kk = 0; kk < BM / 16; kk++)
#pragma unroll
        for (int dp2 = 0; dp2 < DH / 16; dp2++) {
          uint32_t bb[4];
          mma_ldsm4t(bb, Ks + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 + dp2 * 16 + (lane >> 4) * 8);
          mma_bf16(acc[2 * dp2], da[kk], bb[0], bb[1]);
          mma_bf16(acc[2 * dp2 + 1], da[kk], bb[2], bb[3]);
        }
#pragma unroll
      for (int i = 0; i < 2; i++) {
        const int t = tq0 + qh + g + 8 * i;
        if (t >= T) continue;
        float *row = dqa + (((size_t)b * T + t) * H + h) * D + c0 + 2 * tq;
#pragma unroll
        for (int j = 0; j < DH / 8; j++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* float2 atomicAdd: sm_90 and later */
          atomicAdd((float2 *)(row + 8 * j), make_float2(acc[j][2 * i], acc[j][2 * i + 1]));
#else
          atomicAdd(row + 8 * j, acc[j][2 * i]), atomicAdd(row + 8 * j + 1, acc[j][2 * i + 1]);
#endif
        }
      }
    }
    __syncthreads(); /* the next tile stages into the buffers just read and rewrites dSs */
  }
  mma_cp_wait<0>();
  const float fk[2] = {scale, scale}, fv[2] = {1.f, 1.f};
  const int64_t ld = (int64_t)Hkv * D;
  if (dk) store_rows_t<D, OT>(dk + ((size_t)b * S * Hkv + kh) * D, ld, ak, r, S, fk, tq);
  if (dv) store_rows_t<D, OT>(dv + ((size_t)b * S * Hkv + kh) * D, ld, av, r, S, fv, tq);
}
