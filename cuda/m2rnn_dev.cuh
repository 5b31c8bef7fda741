/* m2rnn_dev.cuh — internals shared by m2rnn_fwd.cu and m2rnn_bwd.cu: geometry, the fast path's
 * plan (heads per block, shared-memory layout), tensor-core fragment helpers, cp.async staging.
 *
 * Fast-path register layout ("orientation T"): a warp owns rows r0 .. r0 + 8 NT of the state H (K, V)
 * of one head and keeps H^T (V, K) as NT accumulator tiles of mma m16n8k16 (16 v-rows x 8 k-columns):
 * lane l (g = l / 4, t = l % 4) holds, in tile j,
 *   h[j][0..1] = H[k = r0 + 8j + 2t + {0,1}][v = g],  h[j][2..3] = the same k, v = g + 8.
 * One step is  H^T <- tanh(W^T H^T + v k^T)  per tile: A = W^T (registers), B = H^T as bf16, which is
 * the packed accumulator after an 8x8 transpose (movmatrix); v k^T enters as an m16n8k8 product of
 * rank 1. The packed accumulator itself is the A operand of every product that reduces over K
 * (y = H^T q, dv = dX^T k, dW = H^T dX), so those need no transpose. */
#ifndef M2_CUDA_M2RNN_DEV_CUH
#define M2_CUDA_M2RNN_DEV_CUH
#include <cuda_runtime.h>
#include <stdint.h>
#include "m2rnn.h"

#ifndef M2R_AB
#define M2R_AB 0 /* an experiment in the kernels selected at compile time: cuda/bench/ab_m2rnn.sh builds several values */
#endif
#define M2R_FWD_CT 64  /* fast forward: steps staged per chunk (double-buffered; 64 has half the block barriers of 32) */
#define M2R_BWD_SC 8   /* fast backward: steps per sub-chunk (states as bf16 in shared memory), Z recomputed */
#define M2R_MAX_WARPS 12 /* fast path, 32-row warps: warps per block (384 threads; the kernels' launch bound) */
#define M2R_MAX_WARPS16 24 /* 16-row warps: warps per block (768 threads, <= 85 registers) */
#define M2R_MAX_WARPS8 24  /* fast forward, 8-row warps: warps per block (768 threads, 2 blocks per SM, <= 42 registers) */

/* The kernels' copy of the attributes (m2_m2rnn_attr) as a POD of ints, filled by m2r_geom only: sizes, head-sharing
 * group sizes (gx = N / Nx: head n reads index n / gx) and the checkpoint spacing. */
typedef struct M2Geom {
  int B, T, N, K, V;
  int Nq, Nk, Nv, Nf, Nw;
  int gq, gk, gv, gf, gw;
  int ck, nck; /* checkpoint interval, number of checkpoints ceil(T / ck) */
  unsigned long long mq, mk, mv, mf; /* m2r_magic(gq), ... (x / gq = m2r_div(x, mq) in the staging loops) */
} M2Geom;

/* x / d for 0 <= x < 2^32 / d (d >= 1) as one multiply: m2r_div(x, m2r_magic(d)). A 32-bit division by a
 * runtime value is ~20 instructions; in the kernels' staging and flush loops it runs every work item. */
static inline unsigned long long m2r_magic(int d) { return ((1ull << 32) + (unsigned long long)d - 1) / (unsigned long long)d; }
#ifdef __CUDACC__
__host__ __device__ __forceinline__ int m2r_div(int x, unsigned long long m) {
  return (int)(((unsigned long long)(unsigned)x * m) >> 32);
}
#endif

/* Shared-memory staging buffer for `ct` steps of inputs: q and k rows for nsq / nsk slots, v and dy
 * (V = 16) and f for each of the block's hpb heads. Offsets in bytes, all multiples of 16. */
typedef struct M2Stage {
  int ct, nsq, nsk, hpb;
  uint32_t off_q, off_k, off_v, off_dy, off_f, bytes;
} M2Stage;

/* The fast path's launch plan. */
typedef struct M2Plan {
  int nt;      /* 8-row tiles per warp: 4 (K % 32 == 0) or 2 */
  int wph;     /* warps per head = K / (8 nt) */
  int hpb;     /* heads per block (divides N) */
  int nblocks; /* B N / hpb */
  int threads; /* 32 wph hpb */
  M2Stage st;  /* one staging buffer */
  size_t smem; /* dynamic shared memory per block */
} M2Plan;

/* ---------------- host side (defined in m2rnn_fwd.cu) ---------------- */
/* The one place the kernels' geometry is filled from the (checked) attributes. */
M2Geom m2r_geom(const m2_m2rnn_attr *a);
/* M2_OK when a went through a check (N and ckpt_every set), else M2_ERR_VALUE: a guard for m2r_geom's divisions. */
m2_status m2r_attr_ok(const m2_m2rnn_attr *a);
/* Fill a plan for the forward (bwd = 0) or backward (bwd = 1) fast kernel; M2_OK or why it cannot run.
 * The forward uses 16-row warps (more warps to hide latency), the backward 32-row warps (fewer registers
 * per element of state). The checkpoints are in the plain (K, V) layout, so the two need not agree. */
m2_status m2r_plan(const M2Geom *g, const m2_m2rnn_cuda_tuning *t, int bwd, M2Plan *p);
int m2r_tanh_mode(const m2_m2rnn_cuda_tuning *t);
/* Why m2_m2rnn_cuda_path(a, t) is -1: a message for the launcher `who` ("forward" / "backward"). */
m2_status m2r_no_path(const m2_m2rnn_attr *a, const m2_m2rnn_cuda_tuning *t, const char *who);
/* Floats of one of the fast backward's two partial-sum buffers (a multiple of 4). */
int m2r_bwd_part_floats(const M2Geom *g, int hpb, int nw);

/* ---------------- device helpers ---------------- */
#ifdef __CUDACC__

/* A compile-time bool as a value, to instantiate a generic lambda twice (e.g. run(M2Const<true>{})). */
template <bool B>
struct M2Const {
  static constexpr bool value = B;
};

__device__ __forceinline__ uint32_t m2r_pack_bf16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ float m2r_bf16_lo(uint32_t x) { return __uint_as_float(x << 16); }
__device__ __forceinline__ float m2r_bf16_hi(uint32_t x) { return __uint_as_float(x & 0xffff0000u); }
__device__ __forceinline__ float m2r_bf16(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }

/* Element load / store for the general kernels' I/O type: bf16 bits (uint16_t) or fp32. */
__device__ __forceinline__ float m2r_ld(const uint16_t *p) { return m2r_bf16(*p); }
__device__ __forceinline__ float m2r_ld(const float *p) { return *p; }
__device__ __forceinline__ void m2r_st(uint16_t *p, float x) { *p = (uint16_t)(m2r_pack_bf16(x, 0.f) & 0xffffu); }
__device__ __forceinline__ void m2r_st(float *p, float x) { *p = x; }

/* The fast path's checkpoint layout of one (K, 16) state, shared by the forward (16-row warps) and the
 * backward (32-row warps): 8-row tile t, lane l holds floats [(t * 32 + l) * 4, + 4) = the accumulator order
 * (H[8t + 2(l%4) + {0,1}][l/4], then the same rows at column l/4 + 8), so a warp saves or loads a tile with one
 * coalesced 16-byte access per lane. */
__device__ __forceinline__ int m2r_frag_index(int tile, int lane) { return (tile * 32 + lane) * 4; }

/* 8x8 b16 transpose across the warp (thread l holds row l/4, columns 2(l%4), +1). */
__device__ __forceinline__ uint32_t m2r_movt(uint32_t x) {
  uint32_t r;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
  return r;
}

/* c += A (16x16 bf16) B (16x8 bf16), fp32 accumulate. */
__device__ __forceinline__ void m2r_mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* c += A (16x8 bf16) B (8x8 bf16). */
__device__ __forceinline__ void m2r_mma1688(float c[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(b0));
}

/* clamp(x, -c, c) for c > 0 (c = INFINITY: x): one min.xorsign.abs on sm_86+ (min(|x|, c) with the sign of x),
 * two FMNMX before. A NaN x gives c there and -c here; both only ever see finite gradients in practice. */
__device__ __forceinline__ float m2r_clamp_sym(float x, float c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 860
  float r;
  asm("min.xorsign.abs.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(c));
  return r;
#else
  return fminf(fmaxf(x, -c), c);
#endif
}

__device__ __forceinline__ float m2r_tanh_f32(float x) {
  float r;
  asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
/* tanh on the FMA pipe (no MUFU): u P(u^2) with u = clamp(x / 3.9, -1, 1), P of degree 8 fitted minimax;
 * max abs error 8.2e-4 over all x (mostly the saturation 1 - tanh(3.9)), 12 instructions. The clamp (the .SAT of
 * the first FMA) turns NaN into 0, so a NaN argument is passed through by a select at the end (2 instructions more):
 * a NaN in k, v, W or the state must come out as NaN, never as a finite, wrong +-1 (tests/cuda_ops_m2rnn.c).
 * M2R_TANH_HIDES_NAN=1 builds the old form (for A/B timing only). */
__device__ __forceinline__ float m2r_tanh_poly(float x) {
  const float t = __saturatef(fmaf(x, 0.5f / 3.9f, 0.5f));
  const float u = fmaf(t, 2.f, -1.f), s = u * u;
  float p = 9.942228485e+01f;
  p = fmaf(p, s, -4.657172460e+02f);
  p = fmaf(p, s, 9.250213315e+02f);
  p = fmaf(p, s, -1.019394938e+03f);
  p = fmaf(p, s, 6.876291511e+02f);
  p = fmaf(p, s, -2.982048826e+02f);
  p = fmaf(p, s, 8.683975308e+01f);
  p = fmaf(p, s, -1.848011686e+01f);
  p = fmaf(p, s, 3.884535510e+00f);
#if M2R_TANH_HIDES_NAN
  return u * p;
#else
  return x != x ? x : u * p;
#endif
}
/* tanh of accumulator tile j (4 values): of a thread's 4 NT values, the first NPE16 * NT / 4 go through the
 * FMA-pipe polynomial, the rest through MUFU.TANH (16 per clock per SM on Hopper, measured by bench_mufu). The split
 * is fixed by position, so a replay (backward) computes bit-identical values. */
template <int NT, int NPE16>
__device__ __forceinline__ void m2r_tanh_tile(int j, float c[4]) {
#pragma unroll
  for (int e = 0; e < 4; e++) c[e] = (4 * j + e < NPE16 * NT / 4) ? m2r_tanh_poly(c[e]) : m2r_tanh_f32(c[e]);
}
/* The transposed packed state: B operands of the step's product (one movmatrix per 8x8 block). */
template <int NT>
__device__ __forceinline__ void m2r_transpose_state(const uint32_t P[NT][2], uint32_t bt[NT][2]) {
#pragma unroll
  for (int j = 0; j < NT; j++) {
    bt[j][0] = m2r_movt(P[j][0]);
    bt[j][1] = m2r_movt(P[j][1]);
  }
}
/* One recurrence step of a warp's NT tiles (orientation T): H^T <- f H^T + (1 - f) tanh(W^T H^T + v k^T), with bt the
 * transposed packed state, (va0, va1) the rank-1 A operand holding v, kp this lane's k of the step (tile j at kp[8 j]).
 * h and its bf16 packing P are updated in place. The forward and the backward's replay both call this, so the replay
 * reproduces the forward's states bit for bit. */
template <int NT, int NPE>
__device__ __forceinline__ void m2r_advance(float h[NT][4], uint32_t P[NT][2], const uint32_t bt[NT][2],
                                            const uint32_t wa[4], uint32_t va0, uint32_t va1, const uint16_t *kp,
                                            float f) {
#pragma unroll
  for (int j = 0; j < NT; j++) {
    float z[4] = {0.f, 0.f, 0.f, 0.f};
    m2r_mma1688(z, va0, va1, (uint32_t)kp[8 * j]); /* v k^T */
    m2r_mma16816(z, wa, bt[j][0], bt[j][1]);       /* + W^T H^T */
    m2r_tanh_tile<NT, NPE>(j, z);
#pragma unroll
    for (int e = 0; e < 4; e++) h[j][e] = fmaf(f, h[j][e] - z[e], z[e]);
    P[j][0] = m2r_pack_bf16(h[j][0], h[j][1]);
    P[j][1] = m2r_pack_bf16(h[j][2], h[j][3]);
  }
}
__device__ __forceinline__ uint32_t m2r_pack_f16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ float m2r_f16_lo(uint32_t x) {
  float r;
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l; }" : "=f"(r) : "r"(x));
  return r;
}
__device__ __forceinline__ float m2r_f16_hi(uint32_t x) {
  float r;
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h; }" : "=f"(r) : "r"(x));
  return r;
}

/* A fragment of W^T (A[m][i] = W[i][m]) and of W (A[m][i] = W[m][i]) in bf16, W (16, 16) fp32 row-major. */
__device__ __forceinline__ void m2r_load_wt(const float *W, int g, int t, uint32_t a[4]) {
  a[0] = m2r_pack_bf16(W[(2 * t) * 16 + g], W[(2 * t + 1) * 16 + g]);
  a[1] = m2r_pack_bf16(W[(2 * t) * 16 + g + 8], W[(2 * t + 1) * 16 + g + 8]);
  a[2] = m2r_pack_bf16(W[(2 * t + 8) * 16 + g], W[(2 * t + 9) * 16 + g]);
  a[3] = m2r_pack_bf16(W[(2 * t + 8) * 16 + g + 8], W[(2 * t + 9) * 16 + g + 8]);
}
__device__ __forceinline__ void m2r_load_w(const float *W, int g, int t, uint32_t a[4]) {
  a[0] = m2r_pack_bf16(W[g * 16 + 2 * t], W[g * 16 + 2 * t + 1]);
  a[1] = m2r_pack_bf16(W[(g + 8) * 16 + 2 * t], W[(g + 8) * 16 + 2 * t + 1]);
  a[2] = m2r_pack_bf16(W[g * 16 + 2 * t + 8], W[g * 16 + 2 * t + 9]);
  a[3] = m2r_pack_bf16(W[(g + 8) * 16 + 2 * t + 8], W[(g + 8) * 16 + 2 * t + 9]);
}

__device__ __forceinline__ void m2r_cp16(void *smem, const void *gmem) {
  uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void m2r_cp4(void *smem, const void *gmem) {
  uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void m2r_cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void m2r_cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

/* Sources of one staging pass; NULL members are skipped. */
struct M2StageSrc {
  const uint16_t *q, *k, *v, *dy;
  const float *f;
};

/* Issue cp.async copies of steps t0 .. t0 + len - 1 of batch row b for the block's heads n0 .. n0 + hpb - 1
 * into buf (layout st). q/k slot s holds index (nsx == 1 ? n0 : n0 + s) / gx. All threads take part; one
 * task copies one whole row (a step of one slot or head), so the index arithmetic is per row, not per 16 B.
 * CT: the usual len (st.ct) as a constant, so a full chunk's row index needs no division. */
template <int CT>
__device__ __forceinline__ void m2r_stage(const M2Geom &g, const M2Stage &st, const M2StageSrc &src, char *buf, int b,
                                          int n0, int t0, int len) {
  const int K = g.K, kp = K / 8;
  const size_t row0 = (size_t)b * g.T + t0;
  const int nq = src.q ? st.nsq * len : 0, nk = src.k ? st.nsk * len : 0;
  const int nv = src.v ? st.hpb * len : 0, ndy = src.dy ? st.hpb * len : 0, nf = src.f ? st.hpb * len : 0;
  for (int task = threadIdx.x; task < nq + nk + nv + ndy + nf; task += blockDim.x) {
    int i = task;
    if (i < nq + nk) { /* a q or k row: K bf16 */
      const bool isk = i >= nq;
      if (isk) i -= nq;
      const int sl = len == CT ? i / CT : i / len, t = i - sl * len;
      const int ns = isk ? st.nsk : st.nsq, Nx = isk ? g.Nk : g.Nq;
      const int nx = m2r_div(ns == 1 ? n0 : n0 + sl, isk ? g.mk : g.mq);
      uint16_t *d = (uint16_t *)(buf + (isk ? st.off_k : st.off_q)) + ((size_t)sl * st.ct + t) * K;
      const uint16_t *s = (isk ? src.k : src.q) + ((row0 + t) * Nx + nx) * K;
      for (int c = 0; c < kp; c++) m2r_cp16(d + c * 8, s + c * 8);
      continue;
    }
    i -= nq + nk;
    if (i < nv + ndy) { /* a v or dy row: 16 bf16 */
      const bool isdy = i >= nv;
      if (isdy) i -= nv;
      const int hb = len == CT ? i / CT : i / len, t = i - hb * len;
      const int nx = isdy ? n0 + hb : m2r_div(n0 + hb, g.mv), Nx = isdy ? g.N : g.Nv;
      uint16_t *d = (uint16_t *)(buf + (isdy ? st.off_dy : st.off_v)) + ((size_t)hb * st.ct + t) * 16;
      const uint16_t *s = (isdy ? src.dy : src.v) + ((row0 + t) * Nx + nx) * 16;
      m2r_cp16(d, s);
      m2r_cp16(d + 8, s + 8);
      continue;
    }
    i -= nv + ndy;
    const int hb = len == CT ? i / CT : i / len, t = i - hb * len;
    m2r_cp4((float *)(buf + st.off_f) + hb * st.ct + t, src.f + (row0 + t) * g.Nf + m2r_div(n0 + hb, g.mf));
  }
}

#endif /* __CUDACC__ */
#endif
