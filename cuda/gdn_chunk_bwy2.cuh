/* gdn_chunk_bwy2.cuh — k_gdn_bwy2: the chunk gradients of the chunked GDN backward (the maths of k_gdn_bwy, header of
 * cuda/gdn_chunk_bwd.cu) in fewer steps, taken under M2_GDN_BWD_V2=1 (m2_cuda_gdn_bwd_v2; off by default, when
 * k_gdn_bwy runs as it was). Included by cuda/gdn_chunk_bwd.cu only, after its helpers (reg64, mul64, quad_sum,
 * bwy_io). Same grid (NC, B H), 8 warps, shared memory and operands as k_gdn_bwy; what differs:
 *  - dv = diag(beta) T^T dU and the <X_r, v_r> terms of dbeta (k_gdn_bwy's step 5: 8 more 64-column tiles of dU and
 *    v, read a second time) are taken in step 1's V tiles, whose dU (S1) and v are already in shared memory: per
 *    chunk 128 KiB less read (dU, v) and 8 fewer staged tiles with their barriers and load round trips, one more
 *    64 x 64 x 64 product in each V tile. dv's operands (T, dU as bf16) and its fp32 sum are k_gdn_bwy's: the same
 *    values; the dbeta row parts add the V terms before the K terms (k_gdn_bwy: after), a different fp32 order.
 *  - step 1's tiles through two sets of registers: a tile's loads go out two tiles ahead of its products (k_gdn_bwy:
 *    one), into L2 three ahead (k_gdn_bwy: two), so that a tile's load round trip overlaps two tiles' work.
 *  - the serial steps in parallel: the running sum of g by a warp scan (k_gdn_bwy: one thread), the row minus column
 *    sums of step 3 by 4 threads a row (16 columns each, then over the quad; k_gdn_bwy: 64 threads, 64 columns),
 *    step 6's row parts by 64 threads and the reverse running sum of dgam by a warp scan (k_gdn_bwy: one thread for
 *    all of step 6). Sums in another order than k_gdn_bwy's (fp32 rounding differences, within the parity bounds). */
#ifndef M2_CUDA_GDN_CHUNK_BWY2_CUH
#define M2_CUDA_GDN_CHUNK_BWY2_CUH

namespace {

static size_t bwy2_smem() { return bwy_smem(); }

/* Inclusive running sum over the warp's lanes (lane l: v_0 + ... + v_l). */
__device__ __forceinline__ float warp_scan(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    float y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  return v;
}
/* Inclusive reverse running sum (lane l: v_l + ... + v_31). */
__device__ __forceinline__ float warp_rscan(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    float y = __shfl_down_sync(0xffffffffu, v, o);
    if (lane + o < 32) v += y;
  }
  return v;
}

/* Block (c, bh), 8 warps, as k_gdn_bwy: steps 0-4 and 6 there (step 5 is in step 1 here). */
template <class T>
__global__ void __launch_bounds__(NT) k_gdn_bwy2(bwy_io io, const T *q, const T *k, const T *v, const T *g,
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
  /* step 1's tiles (below): V's, then K's, through two sets of registers (tile t in set t % 2): a tile's loads go
     out two tiles ahead of its product, the first two's under the sums of g */
  const int NV1 = V / 64, N1 = NV1 + (K + 63) / 64; /* tiles: V's, then K's */
  const int64_t qld = (int64_t)H * K, vld = (int64_t)H * V; /* row strides of q, k and of v */
  reg64<__nv_bfloat16> r1u0, r1u1; /* dU of a V tile */
  reg64<float> r1w0, r1w1;          /* dW of a K tile */
  reg64<T> r1b0, r1b1;              /* v or k */
  auto t1_load = [&](reg64<__nv_bfloat16> &ru, reg64<float> &rw, reg64<T> &rx, int t) { /* tile t, if any */
    if (t < NV1) {
      reg64_load(ru, as_bf(io.dVp) + row0 * V + 64 * t, V, C, 64);
      reg64_load(rx, v + tok(0) * V + 64 * t, vld, L, 64);
    } else if (t < N1) {
      int x0 = 64 * (t - NV1), nc = K - x0 < 64 ? K - x0 : 64;
      reg64_load(rw, io.dW + row0 * K + x0, K, C, nc);
      reg64_load(rx, k + tok(0) * K + x0, qld, L, nc);
    }
  };
  auto t1_l2 = [&](int t) { /* tile t towards L2 (three tiles ahead of the products) */
    if (t < NV1) {
      l2_prefetch_tile(io.dVp + row0 * V + 64 * t, V, C, 64);
      l2_prefetch_tile(v + tok(0) * V + 64 * t, vld, L, 64);
    } else if (t < N1) {
      int x0 = 64 * (t - NV1), nc = K - x0 < 64 ? K - x0 : 64;
      l2_prefetch_tile(io.dW + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(k + tok(0) * K + x0, qld, L, nc);
    }
  };
  t1_load(r1u0, r1w0, r1b0, 0);
  t1_load(r1u1, r1w1, r1b1, 1);
  t1_l2(2);
  __syncthreads();
  if (w == 0) { /* gam = the running sum of g: a scan of rows lane and 32 + lane, then the first half's total */
    float a = warp_scan(gam[lane], lane), hi = warp_scan(gam[32 + lane], lane);
    gam[32 + lane] = hi + __shfl_sync(0xffffffffu, a, 31);
    gam[lane] = a;
  }
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
     Tiles through registers (reg64), tile t + 2's loads issued into the set tile t leaves before tile t's products.
     The V tiles also give dv = diag(beta) T^T dU and the <X_r, v_r> terms of dbeta (k_gdn_bwy's step 5: X = T^T dU
     needs T only), from the same S1 and v (as given, fp32 in Vf): dU and v are read once. */
  float acc[4][4];
  zero4(acc);
  float rq[2] = {0.0f, 0.0f}, rb[2] = {0.0f, 0.0f}, rl[2] = {0.0f, 0.0f}; /* this thread's rows' parts (step 6) */
  float *Vf = E1; /* E1 is first written in step 3 */
  auto t1_tile = [&](int t, reg64<__nv_bfloat16> &ru, reg64<float> &rw, reg64<T> &rx) {
    if (t < NV1) { /* a V tile: S1 = dU, S2 = beta V, Vf = v */
      reg64_put(S1, LDC, ru, C, 64, tile::ident());
      reg64_put(S2, LDC, rx, L, 64, [&](int rr, int, float x) { return bet[rr] * x; });
      reg64_putf(Vf, LDM, rx, L, 64);
    } else { /* a K tile: S1 = dW, S2 = beta e^gam K */
      const int nc = K - 64 * (t - NV1) < 64 ? K - 64 * (t - NV1) : 64;
      reg64_put(S1, LDC, rw, C, nc, tile::ident());
      reg64_put(S2, LDC, rx, L, nc, [&](int rr, int, float x) { return bet[rr] * eg[rr] * x; });
    }
    __syncthreads();
    t1_load(ru, rw, rx, t + 2); /* into the set this tile has left */
    t1_l2(t + 3);
    mul64(acc, S1, false, S2, true, mr, nh, lane);
    if (t < NV1) {
      float ax[4][4]; /* X = T^T dU of this tile */
      zero4(ax);
      mul64(ax, Tb, true, S1, false, mr, nh, lane);
#pragma unroll
      for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e0 = 0; e0 < 4; e0 += 2) {
          int rr = 16 * mr + c_row(lane, e0), xl = 32 * nh + 8 * n + c_col(lane, e0), x = 64 * t + xl;
          if (rr >= L) continue;
          rb[e0 >> 1] += ax[n][e0] * Vf[rr * LDM + xl];
          rb[e0 >> 1] += ax[n][e0 + 1] * Vf[rr * LDM + xl + 1];
          if (dv) st_pair(dv + tok(rr) * V + x, bet[rr] * ax[n][e0], bet[rr] * ax[n][e0 + 1]);
        }
    }
    __syncthreads();
  };
  for (int t = 0; t < N1; t += 2) { /* tiles t (set 0) and t + 1 (set 1) */
    t1_tile(t, r1u0, r1w0, r1b0);
    if (t + 1 < N1) t1_tile(t + 1, r1u1, r1w1, r1b1);
  }
  /* step 4's tiles (below) through registers; the first one's loads go out under steps 2 and 3 */
  reg64<T> r4k, r4q;
  reg64<float> r4w, r4dq, r4dk;
  auto t4_load = [&](int x0) {
    const int nc = K - x0 < 64 ? K - x0 : 64;
    reg64_load(r4k, k + tok(0) * K + x0, qld, L, nc);
    reg64_load(r4q, q + tok(0) * K + x0, qld, L, nc);
    reg64_load(r4w, io.dW + row0 * K + x0, K, C, nc);
    reg64_load(r4dq, io.dQt + row0 * K + x0, K, C, nc);
    reg64_load(r4dk, io.dKt + row0 * K + x0, K, C, nc);
  };
  auto t45_l2 = [&](int t) { /* step 4's tile t (x0 = 64 t) towards L2 */
    const int K4 = (K + 63) / 64;
    if (t < K4) {
      int x0 = 64 * t, nc = K - x0 < 64 ? K - x0 : 64;
      l2_prefetch_tile(k + tok(0) * K + x0, qld, L, nc);
      l2_prefetch_tile(q + tok(0) * K + x0, qld, L, nc);
      l2_prefetch_tile(io.dW + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(io.dQt + row0 * K + x0, K, C, nc);
      l2_prefetch_tile(io.dKt + row0 * K + x0, K, C, nc);
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
  { /* row rr's sums by the 4 threads of a quad, 16 columns each, then over the quad */
    const int rr = tid >> 2, j0 = 16 * (tid & 3);
    float s = 0.0f, sb = 0.0f;
#pragma unroll 4
    for (int j = j0; j < j0 + 16; j++) {
      s += E2[rr * LDM + j] - E2[j * LDM + rr] + E1[rr * LDM + j] - E1[j * LDM + rr];
      sb += dT[rr * LDM + j] * G[rr * LDM + j] * KK[rr * LDM + j];
    }
    s = quad_sum(s), sb = quad_sum(sb);
    if ((tid & 3) == 0) dgam[rr] += s, dbet[rr] += sb;
  }
  for (int i = tid; i < C * C; i += blockDim.x) {
    int rr = i / C, j = i % C;
    Nb[rr * LDC + j] = bf(QK[rr * LDM + j] + QK[j * LDM + rr]); /* N~ = N + N^T */
  }
  __syncthreads();

  /* 4. dq = scale e^gam dQ~ + M K, dk = e^(gam_L - gam) dK~ + M^T Q + N~ K + diag(beta e^gam) T^T dW, 64 key columns
        at a time (S1 = K, S2 = Q, S3 = dW as bf16); the row terms of dgam, dbeta, gam_L in this thread's rows. The
        fp32 matrices are free from here: k, q (as given), dQ~, dK~ of the tile go there (Kf, Qf, DQ, DK) for the
        elementwise terms; tiles through registers, the next tile's loads issued before this tile's products. */
  float *Kf = G, *Qf = KK, *DQ = dP, *DK = E1;
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

  /* 6. the row parts: over the quad's lanes, then the two column halves (nh); gam_L terms, reverse running sum */
#pragma unroll
  for (int hr = 0; hr < 2; hr++) {
    float a = quad_sum(rq[hr]), bb = quad_sum(rb[hr]), l = quad_sum(rl[hr]);
    if ((lane & 3) == 0) {
      int rr = 16 * mr + (lane >> 2) + 8 * hr;
      pq[rr * 2 + nh] = a, pb[rr * 2 + nh] = bb, pl[rr * 2 + nh] = l;
    }
  }
  __syncthreads();
  if (tid < C) { /* row tid's parts; the gam_L terms summed over the rows (each warp's, into dgl) */
    dgam[tid] += pq[tid * 2] + pq[tid * 2 + 1];
    dbet[tid] += pb[tid * 2] + pb[tid * 2 + 1];
    float l = warp_sum(pl[tid * 2] + pl[tid * 2 + 1]);
    if (lane == 0) dgl[w] = l;
  }
  __syncthreads();
  if (w == 0) { /* dgam_L += the gam_L terms; dg = the reverse running sum of dgam over rows < L (a warp scan) */
    float s = 0.0f;
    for (int x = lane; x < NVT; x += 32) s += io.sdS[(bh * NC + c) * NVT + x];
    s = warp_sum(s);
    const float gl = dgl[0] + dgl[1] + io.eL[bh * NC + c] * s;
    float lo = lane < L ? dgam[lane] : 0.0f, hi = 32 + lane < L ? dgam[32 + lane] : 0.0f;
    if (lane == (L - 1) % 32) (L - 1 < 32 ? lo : hi) += gl;
    lo = warp_rscan(lo, lane), hi = warp_rscan(hi, lane);
    dgam[lane] = lo + __shfl_sync(0xffffffffu, hi, 0);
    dgam[32 + lane] = hi;
  }
  __syncthreads();
  if (tid < L) {
    if (dg) dg[tok(tid)] = from_f<T>(dgam[tid]);
    if (dbeta) dbeta[tok(tid)] = from_f<T>(dbet[tid]);
  }
}


}  // namespace
#endif
