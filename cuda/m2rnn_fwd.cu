/* m2rnn_fwd.cu — M2RNN forward on the GPU: the fast tensor-core kernel (V = 16), the general
 * fallback kernel (any K, V), the launch plan shared with the backward, and m2_m2rnn_fwd_cuda.
 * See m2rnn.h for the API and m2rnn_dev.cuh for the register layout. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#include "cuda_check.h"
#include "m2rnn.h"
#include "m2rnn_dev.cuh"

/* ======================= host: sizes, checks, plan ======================= */

M2Geom m2r_geom(const m2_m2rnn_attr *a) {
  M2Geom g;
  memset(&g, 0, sizeof g);
  g.B = (int)a->B, g.T = (int)a->T, g.N = (int)a->N, g.K = (int)a->K, g.V = (int)a->V;
  g.Nq = (int)a->Nq, g.Nk = (int)a->Nk, g.Nv = (int)a->Nv, g.Nf = (int)a->Nf, g.Nw = (int)a->Nw;
  g.gq = g.N / g.Nq, g.gk = g.N / g.Nk, g.gv = g.N / g.Nv, g.gf = g.N / g.Nf, g.gw = g.N / g.Nw; /* counts >= 1 */
  g.mq = m2r_magic(g.gq), g.mk = m2r_magic(g.gk), g.mv = m2r_magic(g.gv), g.mf = m2r_magic(g.gf);
  g.ck = a->ckpt_every;
  g.nck = g.T > 0 ? (g.T + g.ck - 1) / g.ck : 0;
  return g;
}

/* The attributes went through a check (m2_m2rnn_check or m2_m2rnn_attr_resolve), which sets N and ckpt_every. Not a
 * second check of them: a guard against a caller that filled the struct by hand and forgot (m2r_geom divides). */
m2_status m2r_attr_ok(const m2_m2rnn_attr *a) {
  if (a && a->N >= 1 && a->Nq >= 1 && a->Nk >= 1 && a->Nv >= 1 && a->Nf >= 1 && a->Nw >= 1 && a->ckpt_every >= 1)
    return M2_OK;
  return m2_fail(M2_ERR_VALUE, "m2rnn cuda: the attributes were not checked (fill them with m2_m2rnn_attr_resolve)");
}

/* Elements (of every 16) whose tanh runs on the FMA pipe for a tanh_mode; the default is the measured best. */
int m2r_tanh_mode(const m2_m2rnn_cuda_tuning *t) {
  switch (t ? t->tanh_mode : 0) {
    case M2_M2RNN_TANH_MUFU: return 0;
    case M2_M2RNN_TANH_MIX4: return 4;
    case M2_M2RNN_TANH_MIX8: return 8;
    case M2_M2RNN_TANH_MIX6: return 6;
    default: return 0; /* measured: the FMA-pipe polynomial only slows the kernel down (cuda/bench/results/RESULTS.md) */
  }
}

/* The general kernel keeps K V floats of state (and more) in shared memory: K * V <= 8192, unless the fast path's
 * shape (V = 16, K % 16 == 0), whose own limits m2_m2rnn_cuda_path applies. */
static bool general_fits(const m2_m2rnn_attr *a) { return a->K * a->V <= 8192 || (a->V == 16 && a->K % 16 == 0); }

m2_status m2r_no_path(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t, const char *who) {
  const int want = t ? t->path : M2_M2RNN_AUTO;
  if (want < M2_M2RNN_AUTO || want > M2_M2RNN_FAST) return m2_fail(M2_ERR_VALUE, "m2rnn cuda: unknown path %d", want);
  if (a->B < 1) return m2_fail(M2_ERR_SHAPE, "m2rnn cuda: the kernels need B >= 1, got B = %lld", (long long)a->B);
  if (!general_fits(a))
    return m2_fail(M2_ERR_SHAPE, "m2rnn cuda: K * V = %lld * %lld is too large for the general kernel (<= 8192)",
                   (long long)a->K, (long long)a->V);
  return m2_fail(M2_ERR_SHAPE, "m2rnn cuda %s: the fast path was asked for but needs V == 16, K %% 16 == 0, K / 32 <= %d, "
                               "ckpt_every %% %d == 0 and bf16 I/O (K=%lld V=%lld ckpt_every=%d io_f32=%d)",
                 who, M2R_MAX_WARPS, M2R_BWD_SC, (long long)a->K, (long long)a->V, a->ckpt_every, t ? t->io_f32 : 0);
}

/* Device facts, read once per device. */
typedef struct { int sms, smem_optin; } DevInfo;
static DevInfo dev_info(void) {
  static DevInfo cache[16];
  static int have[16];
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 16) dev = 0;
  if (!have[dev]) {
    DevInfo di = {132, 227 * 1024};
    cudaDeviceGetAttribute(&di.sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&di.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaGetLastError();
    cache[dev] = di;
    have[dev] = 1;
  }
  return cache[dev];
}

static uint32_t align16(size_t x) { return (uint32_t)((x + 15) & ~(size_t)15); }

static M2Stage stage_layout(const M2Geom *g, int ct, int hpb, int with_dy) {
  M2Stage s;
  s.ct = ct;
  s.hpb = hpb;
  s.nsq = (g->gq % hpb == 0) ? 1 : hpb;
  s.nsk = (g->gk % hpb == 0) ? 1 : hpb;
  s.off_q = 0;
  s.off_k = align16(s.off_q + (size_t)s.nsq * ct * g->K * 2);
  s.off_v = align16(s.off_k + (size_t)s.nsk * ct * g->K * 2);
  s.off_dy = align16(s.off_v + (size_t)hpb * ct * 32);
  s.off_f = align16(s.off_dy + (with_dy ? (size_t)hpb * ct * 32 : 0));
  s.bytes = align16(s.off_f + (size_t)hpb * ct * 4);
  return s;
}

/* Floats of one of the backward's two partial-sum buffers: dv [nw][SC][16], dk and dq [hpb][SC][K], df [nw][SC]. */
int m2r_bwd_part_floats(const M2Geom *g, int hpb, int nw) {
  const int f = M2R_BWD_SC * nw * 16 + 2 * M2R_BWD_SC * hpb * g->K + M2R_BWD_SC * nw;
  return (f + 3) & ~3;
}

static size_t plan_smem(const M2Geom *g, int nt, int wph, int hpb, int bwd, M2Stage *st) {
  if (!bwd) {
    *st = stage_layout(g, M2R_FWD_CT, hpb, 0);
    return 2 * (size_t)st->bytes + (size_t)M2R_FWD_CT * hpb * wph * 16 * 4; /* + y partial sums */
  }
  const int SC = M2R_BWD_SC, nw = hpb * wph;
  *st = stage_layout(g, SC, hpb, 1);
  size_t s = 3 * (size_t)st->bytes;                      /* staging, triple-buffered */
  s += (size_t)SC * nw * nt * 2 * 32 * 4;                /* bf16 states of a sub-chunk (H_{t-1} of each step) */
  s += 2 * (size_t)m2r_bwd_part_floats(g, hpb, nw) * 4;  /* partial sums, double-buffered */
  return s;
}

m2_status m2r_plan(const M2Geom *g, const m2_m2rnn_cuda_tuning *o, int bwd, M2Plan *p) {
  if (g->V != 16 || g->K % 16 != 0)
    return m2_fail(M2_ERR_SHAPE, "m2rnn cuda: the fast path needs V == 16 and K %% 16 == 0, got K=%d V=%d", g->K, g->V);
  if (g->ck % M2R_BWD_SC != 0)
    return m2_fail(M2_ERR_VALUE, "m2rnn cuda: the fast path needs ckpt_every %% %d == 0, got %d", M2R_BWD_SC, g->ck);
  memset(p, 0, sizeof *p);
  DevInfo di = dev_info();
  /* forward: 16-row warps by default (twice the warps of 32-row ones to hide latency; measured faster on
     both paper layers, cuda/bench/results/RESULTS.md) */
  const int fwd_rows = (o && o->fwd_rows_per_warp) ? o->fwd_rows_per_warp : 16;
  /* backward: 16-row warps when checkpoints are every SC steps (the op's default; measured 5.65 vs 5.98 ms at 400M),
     else 32-row ones (fewer registers per element of state for the longer item schedule) */
  const int bwd_rows = (o && o->bwd_rows_per_warp) ? o->bwd_rows_per_warp : g->ck == M2R_BWD_SC ? 16 : 32;
  const int want_rows = bwd ? bwd_rows : fwd_rows;
  const int rows = (want_rows == 32 && g->K % 32 == 0) ? 32 : (want_rows == 8 && !bwd) ? 8 : 16;
  p->nt = rows / 8;
  p->wph = g->K / rows;
  const int maxw = p->nt == 1 ? M2R_MAX_WARPS8 : p->nt == 2 ? M2R_MAX_WARPS16 : M2R_MAX_WARPS;
  if (p->wph > maxw)
    return m2_fail(M2_ERR_SHAPE, "m2rnn cuda: the fast path handles K <= %d, got K=%d", maxw * rows, g->K);
  const int want = o ? o->heads_per_block : 0;
  if (want > 0 && (g->N % want != 0 || want * p->wph > maxw))
    return m2_fail(M2_ERR_VALUE, "m2rnn cuda: heads_per_block = %d must divide N = %d and keep <= %d warps (%d each)",
                   want, g->N, maxw, p->wph);
  long best_cost = -1;
  for (int h = 1; h * p->wph <= maxw && h <= g->N; h++) {
    if (g->N % h != 0 || (want > 0 && h != want)) continue;
    M2Stage st;
    size_t smem = plan_smem(g, p->nt, p->wph, h, bwd, &st);
    if (smem > (size_t)di.smem_optin) continue;
    long nb = (long)g->B * g->N / h;
    long cost = (long)h * ((nb + di.sms - 1) / di.sms); /* heads on the busiest SM */
    if (best_cost < 0 || cost <= best_cost) {        /* ties: more heads per block (fewer atomics) */
      best_cost = cost;
      p->hpb = h;
      p->st = st;
      p->smem = smem;
    }
  }
  if (best_cost < 0)
    return m2_fail(M2_ERR_SHAPE, "m2rnn cuda: no heads-per-block fits in shared memory (K=%d, N=%d)", g->K, g->N);
  p->nblocks = g->B * g->N / p->hpb;
  p->threads = 32 * p->wph * p->hpb;
  return M2_OK;
}

extern "C" int m2_m2rnn_cuda_path(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t) {
  const int want = t ? t->path : M2_M2RNN_AUTO;
  if (want < M2_M2RNN_AUTO || want > M2_M2RNN_FAST || a->B < 1 || !general_fits(a)) return -1;
  if (want == M2_M2RNN_GENERAL) return M2_M2RNN_GENERAL;
  if (t && t->io_f32) return want == M2_M2RNN_FAST ? -1 : M2_M2RNN_GENERAL; /* fp32 I/O: general path only */
  const int64_t K = a->K;
  const int fast_shape = a->V == 16 && K % 16 == 0 && K / (K % 32 == 0 ? 32 : 16) <= M2R_MAX_WARPS &&
                         K / 16 <= M2R_MAX_WARPS16 && a->ckpt_every % M2R_BWD_SC == 0;
  if (want == M2_M2RNN_FAST) return fast_shape ? M2_M2RNN_FAST : -1;
  return fast_shape ? M2_M2RNN_FAST : M2_M2RNN_GENERAL;
}

extern "C" size_t m2_m2rnn_ckpt_floats(const m2_m2rnn_attr *a) {
  if (m2r_attr_ok(a) != M2_OK) return 0;
  M2Geom g = m2r_geom(a);
  return (size_t)g.B * g.N * g.nck * g.K * g.V; /* both paths: one (K, V) state per checkpoint */
}

/* ======================= fast kernel ======================= */

struct FastFwdP {
  M2Geom g;
  M2Stage st;
  int hpb, wph;
  uint16_t *y;
  float *hT, *ckpt;
  const uint16_t *q, *k, *v;
  const float *W, *f, *h0;
};

/* Offset of chain (b, n)'s checkpoint j: [b][n][j][K * 16] (inside: the fast path's fragment order). */
__device__ __forceinline__ size_t ckpt_base(const M2Geom &g, int b, int n, int j) {
  return (((size_t)b * g.N + n) * g.nck + j) * (size_t)g.K * 16;
}

/* KC: K as a compile-time constant (0: runtime), so a step's shared-memory offsets are immediates. */
template <int NT, int NPE, int KC>
__global__ void __launch_bounds__(NT == 1 ? M2R_MAX_WARPS8 * 32 : NT == 2 ? M2R_MAX_WARPS16 * 32 : M2R_MAX_WARPS * 32,
                                  NT == 1 ? 2 : 1) m2r_fwd_fast(const FastFwdP p) {
  extern __shared__ __align__(16) char sm[];
  const M2Geom &g = p.g;
  const int K = KC ? KC : g.K;
  const M2Stage &st = p.st;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gl = lane >> 2, tq = lane & 3;
  const int hb = warp / p.wph, rg = warp - hb * p.wph;
  const int bpb = g.N / p.hpb;
  const int b = blockIdx.x / bpb, n0 = (blockIdx.x - b * bpb) * p.hpb, n = n0 + hb;
  const int r0 = rg * 8 * NT;
  const int sq = st.nsq == 1 ? 0 : hb, sk = st.nsk == 1 ? 0 : hb;
  const uint32_t vmask = tq == 0 ? 0xffffu : 0u; /* the rank-1 product uses column 0 of its A tile only */

  uint32_t wa[4];
  m2r_load_wt(p.W + (size_t)(n / g.gw) * 256, gl, tq, wa);

  float h[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int kr = r0 + 8 * j + 2 * tq + (e & 1), vc = gl + 8 * (e >> 1);
      h[j][e] = p.h0 ? p.h0[(((size_t)b * g.N + n) * K + kr) * 16 + vc] : 0.f;
    }
  uint32_t P[NT][2];
#pragma unroll
  for (int j = 0; j < NT; j++) {
    P[j][0] = m2r_pack_bf16(h[j][0], h[j][1]);
    P[j][1] = m2r_pack_bf16(h[j][2], h[j][3]);
  }

  float *ypart = (float *)(sm + 2 * (size_t)st.bytes);
  const M2StageSrc src = {p.q, p.k, p.v, nullptr, p.f};
  const int CT = M2R_FWD_CT, nch = (g.T + CT - 1) / CT;
  m2r_stage<M2R_FWD_CT>(g, st, src, sm, b, n0, 0, min(CT, g.T));
  m2r_cp_commit();
  if (nch > 1) m2r_stage<M2R_FWD_CT>(g, st, src, sm + st.bytes, b, n0, CT, min(CT, g.T - CT));
  m2r_cp_commit();

  int next_ck = p.ckpt ? 0 : g.T; /* next step whose incoming state is saved */
  int ck_j = 0;                     /* its checkpoint index, next_ck / ck (counted: a runtime division is ~20 instructions) */
  auto save = [&]() {
    float *cp = p.ckpt + ckpt_base(g, b, n, ck_j++);
#pragma unroll
    for (int j = 0; j < NT; j++) /* fragment order (m2r_frag_index): one 16-byte store per tile, coalesced */
      *(float4 *)(cp + m2r_frag_index(r0 / 8 + j, lane)) = make_float4(h[j][0], h[j][1], h[j][2], h[j][3]);
  };
  for (int c = 0; c < nch; c++) {
    m2r_cp_wait<1>();
    __syncthreads();
    const char *buf = sm + (size_t)(c & 1) * st.bytes;
    const int t0 = c * CT, len = min(CT, g.T - t0);
    /* per-lane pointers into the staged chunk, advanced by one step per iteration */
    const uint16_t *kp = (const uint16_t *)(buf + st.off_k) + sk * CT * K + r0 + gl;
    const uint32_t *qp = (const uint32_t *)(buf + st.off_q) + (sq * CT * K + r0) / 2 + tq;
    const uint16_t *vp = (const uint16_t *)(buf + st.off_v) + hb * CT * 16 + gl;
    const float *fp = (const float *)(buf + st.off_f) + hb * CT;
    /* y partial sums [warp][step][gl][2] = (y[gl], y[gl + 8]), so a step's offset is an immediate (cuda/bench/results/RESULTS.md v17);
       the 4 lanes of a gl hold the same pair and all store it (same value, same address: no branch in the step) */
    float *yp = ypart + (hb * p.wph + rg) * CT * 16 + 2 * gl;
    constexpr int ystep = 16;
    auto step = [&](int i) {
      const uint32_t va0 = (uint32_t)vp[i * 16] & vmask, va1 = (uint32_t)vp[i * 16 + 8] & vmask;
      const float f = fp[i];
      uint32_t bt[NT][2];
      m2r_transpose_state<NT>(P, bt);
      m2r_advance<NT, NPE>(h, P, bt, wa, va0, va1, kp + i * K, f);
      /* y partial over this warp's rows: H^T (v, k) q (k); every column of the product is y */
      float yc[4] = {0.f, 0.f, 0.f, 0.f};
      if (NT == 1) {
        m2r_mma1688(yc, P[0][0], P[0][1], qp[i * K / 2]);
      } else {
#pragma unroll
        for (int ib = 0; ib < NT / 2; ib++) {
          const uint32_t a[4] = {P[2 * ib][0], P[2 * ib][1], P[2 * ib + 1][0], P[2 * ib + 1][1]};
          m2r_mma16816(yc, a, qp[i * K / 2 + 8 * ib], qp[i * K / 2 + 8 * ib + 4]);
        }
      }
      yp[i * ystep] = yc[0]; /* two 4-byte stores: yc[0] and yc[2] are not a register pair (an 8-byte store */
      yp[i * ystep + 1] = yc[2]; /* needs two moves first; cuda/bench/results/RESULTS.md v18) */
    };
    /* groups of 8 steps (ck is a multiple of 8, so a checkpoint can only fall on a group's first step) */
    int i0 = 0;
    for (; i0 + 8 <= len; i0 += 8) {
      if (t0 + i0 == next_ck) {
        save();
        next_ck += g.ck;
      }
#pragma unroll
      for (int i = 0; i < 8; i++) step(i0 + i);
    }
    if (i0 < len && t0 + i0 == next_ck) {
      save();
      next_ck += g.ck;
    }
    for (int i = i0; i < len; i++) step(i);
    __syncthreads();
    /* y for this chunk: sum the warps of each head, 8 values (16 bytes) per task; pairs are (y[v], y[v + 8]) */
    for (int task = threadIdx.x; task < len * p.hpb * 2; task += blockDim.x) {
      const int half = task & 1, r = task >> 1, hh = r / len, i = r - hh * len; /* consecutive lanes: consecutive steps */
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; e++) acc[e] = 0.f;
      for (int w = 0; w < p.wph; w++) {
        const float4 *src4 = (const float4 *)(ypart + ((hh * p.wph + w) * CT + i) * 16);
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const float4 x = src4[u];
          acc[2 * u] += half ? x.y : x.x;
          acc[2 * u + 1] += half ? x.w : x.z;
        }
      }
      uint4 o;
      o.x = m2r_pack_bf16(acc[0], acc[1]);
      o.y = m2r_pack_bf16(acc[2], acc[3]);
      o.z = m2r_pack_bf16(acc[4], acc[5]);
      o.w = m2r_pack_bf16(acc[6], acc[7]);
      *(uint4 *)(p.y + (((size_t)b * g.T + t0 + i) * g.N + n0 + hh) * 16 + half * 8) = o;
    }
    if (c + 2 < nch) m2r_stage<M2R_FWD_CT>(g, st, src, sm + (size_t)(c & 1) * st.bytes, b, n0, (c + 2) * CT, min(CT, g.T - (c + 2) * CT));
    m2r_cp_commit();
  }
  if (p.hT) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int kr = r0 + 8 * j + 2 * tq + (e & 1), vc = gl + 8 * (e >> 1);
        p.hT[(((size_t)b * g.N + n) * K + kr) * 16 + vc] = h[j][e];
      }
  }
}

/* ======================= general kernel ======================= */

/* TI: the type of q, k, v and y (uint16_t = bf16 bits, or float) */
template <typename TI>
struct GenFwdP {
  M2Geom g;
  TI *y;
  float *hT, *ckpt;
  const TI *q, *k, *v;
  const float *W, *f, *h0;
};

/* One block per chain (b, n); state, W and the step's inputs in shared memory; fp32 and tanhf. */
template <typename TI>
__global__ void __launch_bounds__(256) m2r_fwd_general(const GenFwdP<TI> p) {
  extern __shared__ __align__(16) float gsm[];
  const M2Geom &g = p.g;
  const int K = g.K, V = g.V, KV = K * V, tid = threadIdx.x, nth = blockDim.x;
  const int b = blockIdx.x / g.N, n = blockIdx.x % g.N;
  float *Ws = gsm, *H = Ws + V * V, *Z = H + KV, *kk = Z + KV, *qq = kk + K, *vv = qq + K;
  const float *Wg = p.W + (size_t)(n / g.gw) * V * V;
  for (int e = tid; e < V * V; e += nth) Ws[e] = Wg[e];
  for (int e = tid; e < KV; e += nth) H[e] = p.h0 ? p.h0[((size_t)b * g.N + n) * KV + e] : 0.f;
  __syncthreads();
  for (int s = 0; s < g.T; s++) {
    const size_t row = (size_t)b * g.T + s;
    if (p.ckpt && s % g.ck == 0)
      for (int e = tid; e < KV; e += nth) p.ckpt[(((size_t)b * g.N + n) * g.nck + s / g.ck) * KV + e] = H[e];
    for (int i = tid; i < K; i += nth) {
      kk[i] = m2r_ld(p.k + (row * g.Nk + n / g.gk) * K + i);
      qq[i] = m2r_ld(p.q + (row * g.Nq + n / g.gq) * K + i);
    }
    for (int j = tid; j < V; j += nth) vv[j] = m2r_ld(p.v + (row * g.Nv + n / g.gv) * V + j);
    const float f = p.f[row * g.Nf + n / g.gf];
    __syncthreads();
    for (int e = tid; e < KV; e += nth) {
      const int i = e / V, j = e - i * V;
      float acc = kk[i] * vv[j];
      for (int m = 0; m < V; m++) acc = fmaf(H[i * V + m], Ws[m * V + j], acc);
      Z[e] = tanhf(acc);
    }
    __syncthreads();
    for (int e = tid; e < KV; e += nth) H[e] = fmaf(f, H[e] - Z[e], Z[e]);
    __syncthreads();
    for (int j = tid; j < V; j += nth) {
      float acc = 0.f;
      for (int i = 0; i < K; i++) acc = fmaf(qq[i], H[i * V + j], acc);
      m2r_st(p.y + (row * g.N + n) * V + j, acc);
    }
    __syncthreads();
  }
  if (p.hT)
    for (int e = tid; e < KV; e += nth) p.hT[((size_t)b * g.N + n) * KV + e] = H[e];
}

/* ======================= launcher ======================= */

template <typename Kern>
static m2_status set_smem(Kern kern, size_t smem) {
  if (smem > 48 * 1024) M2_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  return M2_OK;
}

extern "C" m2_status m2_m2rnn_fwd_cuda(const m2_m2rnn_attr *at, const m2_m2rnn_cuda_tuning *o,
                                       const m2_m2rnn_fwd_args *a, cudaStream_t stream) {
  M2_TRY(m2r_attr_ok(at));
  if (!a || !a->y || !a->q || !a->k || !a->v || !a->W || !a->f)
    return m2_fail(M2_ERR_VALUE, "m2rnn cuda forward: y, q, k, v, W and f must be given");
  const int path = m2_m2rnn_cuda_path(at, o);
  if (path < 0) return m2r_no_path(at, o, "forward");
  M2Geom g = m2r_geom(at);
  const size_t KV = (size_t)g.K * g.V;
  if (g.T == 0) { /* nothing to run: hT = h0 */
    if (a->hT) {
      if (a->h0) M2_CUDA_TRY(cudaMemcpyAsync(a->hT, a->h0, (size_t)g.B * g.N * KV * 4, cudaMemcpyDeviceToDevice, stream));
      else M2_CUDA_TRY(cudaMemsetAsync(a->hT, 0, (size_t)g.B * g.N * KV * 4, stream));
    }
    return M2_OK;
  }
  if (path == M2_M2RNN_GENERAL) {
    const size_t smem = ((size_t)g.V * g.V + 2 * KV + 2 * g.K + g.V) * 4;
    if (o && o->io_f32) {
      GenFwdP<float> p = {g, (float *)a->y, a->hT, a->ckpt, (const float *)a->q, (const float *)a->k,
                          (const float *)a->v, a->W, a->f, a->h0};
      M2_TRY(set_smem(m2r_fwd_general<float>, smem));
      m2r_fwd_general<float><<<g.B * g.N, 256, smem, stream>>>(p);
    } else {
      GenFwdP<uint16_t> p = {g, (uint16_t *)a->y, a->hT, a->ckpt, (const uint16_t *)a->q, (const uint16_t *)a->k,
                             (const uint16_t *)a->v, a->W, a->f, a->h0};
      M2_TRY(set_smem(m2r_fwd_general<uint16_t>, smem));
      m2r_fwd_general<uint16_t><<<g.B * g.N, 256, smem, stream>>>(p);
    }
    M2_CUDA_LAUNCH_CHECK("m2r_fwd_general");
    return M2_OK;
  }
  M2Plan pl;
  M2_TRY(m2r_plan(&g, o, 0, &pl));
  FastFwdP p = {g, pl.st, pl.hpb, pl.wph, (uint16_t *)a->y, a->hT, a->ckpt, (const uint16_t *)a->q,
                (const uint16_t *)a->k, (const uint16_t *)a->v, a->W, a->f, a->h0};
  typedef void (*Kern)(const FastFwdP);
  static const Kern k4[4] = {m2r_fwd_fast<4, 0, 0>, m2r_fwd_fast<4, 4, 0>, m2r_fwd_fast<4, 6, 0>, m2r_fwd_fast<4, 8, 0>};
  static const Kern k2[4] = {m2r_fwd_fast<2, 0, 0>, m2r_fwd_fast<2, 4, 0>, m2r_fwd_fast<2, 6, 0>, m2r_fwd_fast<2, 8, 0>};
  const int npe = m2r_tanh_mode(o), ti = npe == 0 ? 0 : npe == 4 ? 1 : npe == 6 ? 2 : 3;
  static const Kern k1[4] = {m2r_fwd_fast<1, 0, 0>, m2r_fwd_fast<1, 4, 0>, m2r_fwd_fast<1, 6, 0>, m2r_fwd_fast<1, 8, 0>};
  Kern kern = pl.nt == 4 ? k4[ti] : pl.nt == 2 ? k2[ti] : k1[ti];
  if (g.K == 64 && npe == 0) /* the paper's K */
    kern = pl.nt == 4 ? m2r_fwd_fast<4, 0, 64> : pl.nt == 2 ? m2r_fwd_fast<2, 0, 64> : m2r_fwd_fast<1, 0, 64>;
  M2_TRY(set_smem(kern, pl.smem));
  kern<<<pl.nblocks, pl.threads, pl.smem, stream>>>(p);
  M2_CUDA_LAUNCH_CHECK("m2r_fwd_fast");
  return M2_OK;
}
