/* m2rnn_bwd.cuh — pieces of the fast M2RNN backward kernel (m2rnn_bwd.cu): parameters, state load/store, the
 * work-item schedule and the flush of the block's partial sums. */
#ifndef M2_CUDA_M2RNN_BWD_CUH
#define M2_CUDA_M2RNN_BWD_CUH
#include "m2rnn_dev.cuh"

struct FastBwdP {
  M2Geom g;
  M2Stage st;
  int hpb, wph;               /* heads per block, warps per head */
  unsigned long long mhpb;    /* m2r_magic(hpb) */
  int msub, pfl;              /* sub-chunks per segment, floats per partial buffer */
  float clip;
  uint16_t *dq, *dk, *dv;     /* bf16 outputs, written directly when the tensor is not shared */
  float *dq32, *dk32, *dv32;  /* fp32 sums (zeroed) when it is shared, else NULL */
  float *dW, *df, *dh0;       /* dW zeroed; df zeroed when Nf < N */
  const uint16_t *dy;
  const float *dhT, *ckpt;
  const uint16_t *q, *k, *v;
  const float *W, *f;
  float *sub;                 /* fp32 state at each sub-chunk start: [b][n][msub][K * 16] (plain layout) */
  int fadd[4];                /* bwd_flush of a full item: (nth - off % nth) % nth of its four loops (dv, dk, dq, df) */
};

/* One (K, 16) state in the fast path's fragment order (m2r_frag_index): this lane's elements of the warp's
 * rows r0 .. r0 + 8 NT - 1, one 16-byte access per tile. Used for the checkpoints and the sub-chunk scratch. */
template <int NT>
__device__ __forceinline__ void state_load(const float *src, int r0, int lane, float h[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; j++) {
    const float4 x = *(const float4 *)(src + m2r_frag_index(r0 / 8 + j, lane));
    h[j][0] = x.x, h[j][1] = x.y, h[j][2] = x.z, h[j][3] = x.w;
  }
}
template <int NT>
__device__ __forceinline__ void state_store(float *dst, int r0, int lane, const float h[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; j++)
    *(float4 *)(dst + m2r_frag_index(r0 / 8 + j, lane)) = make_float4(h[j][0], h[j][1], h[j][2], h[j][3]);
}

/* Work items of one segment c (ck steps from checkpoint c, ns = ceil(len / SC) sub-chunks): p = 0 .. ns - 2
 * advance through sub-chunk p (forward only, saving the next sub-chunk's start state), p = ns - 1 .. 2 ns - 2
 * run sub-chunk 2 ns - 2 - p backward. Segments run from the last to the first. */
struct Item {
  int c, p;
};
__device__ __forceinline__ int seg_nsub(const M2Geom &g, int c) {
  return (min(g.ck, g.T - c * g.ck) + M2R_BWD_SC - 1) / M2R_BWD_SC;
}
__device__ __forceinline__ Item item_next(const M2Geom &g, Item it) {
  if (it.c < 0) return it;
  if (it.p + 1 < 2 * seg_nsub(g, it.c) - 1) return Item{it.c, it.p + 1};
  return Item{it.c - 1, 0};
}

__device__ __forceinline__ void add4_global(float *dst, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd((float4 *)dst, v); /* one vector reduction (16-byte aligned: K % 4 == 0, V = 16) */
#else
  atomicAdd(dst, v.x), atomicAdd(dst + 1, v.y), atomicAdd(dst + 2, v.z), atomicAdd(dst + 3, v.w);
#endif
}
__device__ __forceinline__ float4 f4add(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }

/* This thread's first task in a loop whose task 0 goes to thread `off` (mod nth): (threadIdx.x - off) mod nth. */
__device__ __forceinline__ int bwd_task_tid(int off, int nth) { return (int)((threadIdx.x + (unsigned)(nth - off % nth)) % nth); }
/* The same from add = (nth - off % nth) % nth, precomputed on the host for full items (FastBwdP::fadd): no division
 * (two runtime divisions are ~40 instructions, and every thread computes four of these per work item). */
__device__ __forceinline__ int bwd_task_tid_add(int add, int nth) {
  const int t = (int)threadIdx.x + add;
  return t >= nth ? t - nth : t;
}

/* Where bwd_flush's four loops (dv, dk, dq, df) start for an item of len steps: the first nstage threads stage the
 * next item's inputs (m2r_stage), then each loop starts after the tasks of the ones before it. Shared by the kernel
 * and the host, which precomputes the offsets of a full item (FastBwdP::fadd). */
struct FlushStart {
  int dv, dk, dq, df;
};
__host__ __device__ __forceinline__ FlushStart bwd_flush_start(const M2Stage &st, int hpb, int K, int len, bool dq32,
                                                             bool dk32) {
  const int nstage = (st.nsq + st.nsk + 3 * hpb) * M2R_BWD_SC;
  const int ndv = len * hpb * 4, ndk = (st.nsk == 1 && dk32 ? len * K / 4 : len * hpb * K / 4);
  const int ndq = (st.nsq == 1 && dq32 ? len * K / 4 : len * hpb * K / 4);
  return FlushStart{nstage, nstage + ndv, nstage + ndv + ndk, nstage + ndv + ndk + ndq};
}

/* The block's partial sums of one back item (steps s0 .. s0 + len - 1) -> dv, dk, dq, df in global memory.
 * Partial buffer: dv [nw][SC][16] (per warp, as pairs (dv[v], dv[v + 8])), dk and dq [hpb][SC][K] (per head),
 * df [nw][SC]. */
template <int KC>
__device__ __forceinline__ void bwd_flush(const FastBwdP &p, const float *part, int b, int n0, int s0, int len) {
  constexpr int SC = M2R_BWD_SC;
  const M2Geom &g = p.g;
  const int K = KC ? KC : g.K, hpb = p.hpb, wph = p.wph, nw = hpb * wph;
  const int nth = blockDim.x;
  /* the loops start at different threads (the first `off` threads stage the next inputs), so no thread takes more
     than one task when there are fewer tasks than threads: the block barrier waits for the slowest thread */
  const bool full = len == SC; /* every item but a short last one: the offsets mod nth come from the host */
  const FlushStart fs = bwd_flush_start(p.st, hpb, K, len, p.dq32, p.dk32);
  const int tid = full ? bwd_task_tid_add(p.fadd[0], nth) : bwd_task_tid(fs.dv, nth),
            tidk = full ? bwd_task_tid_add(p.fadd[1], nth) : bwd_task_tid(fs.dk, nth),
            tidq = full ? bwd_task_tid_add(p.fadd[2], nth) : bwd_task_tid(fs.dq, nth),
            tidf = full ? bwd_task_tid_add(p.fadd[3], nth) : bwd_task_tid(fs.df, nth);

  const size_t row0 = (size_t)b * g.T + s0;
  const float *dvp = part, *dkp = part + SC * nw * 16, *dqp = dkp + SC * hpb * K, *dfp = dqp + SC * hpb * K;
  /* dv: the head's warps summed, 4 values a task; the partial sums are pairs (dv[v], dv[v + 8]), so a task's
     4 values are dv[2c], dv[2c + 8], dv[2c + 1], dv[2c + 9] */
  for (int task = tid; task < len * hpb * 4; task += nth) {
    const int c4 = task & 3, r = task >> 2, i = m2r_div(r, p.mhpb), hh = r - i * hpb;
    const float4 *s4 = (const float4 *)(dvp + (hh * wph * SC + i) * 16) + c4;
    float4 acc = s4[0];
    for (int w = 1; w < wph; w++) acc = f4add(acc, s4[4 * SC * w]);
    if (p.dv32) {
      float *d32 = p.dv32 + ((row0 + i) * g.Nv + m2r_div(n0 + hh, g.mv)) * 16 + 2 * c4;
      atomicAdd(d32, acc.x), atomicAdd(d32 + 1, acc.z), atomicAdd(d32 + 8, acc.y), atomicAdd(d32 + 9, acc.w);
    } else {
      uint16_t *d16 = p.dv + ((row0 + i) * g.N + n0 + hh) * 16 + 2 * c4;
      *(uint32_t *)d16 = m2r_pack_bf16(acc.x, acc.z);
      *(uint32_t *)(d16 + 8) = m2r_pack_bf16(acc.y, acc.w);
    }
  }
  /* dk, dq: summed over the heads that share an index, 4 values a task */
#pragma unroll
  for (int w2 = 0; w2 < 2; w2++) {
    const int tid2 = w2 ? tidq : tidk;
    const float *src = w2 ? dqp : dkp;
    uint16_t *out = w2 ? p.dq : p.dk;
    float *out32 = w2 ? p.dq32 : p.dk32;
    const int ns2 = w2 ? p.st.nsq : p.st.nsk, Nx = w2 ? g.Nq : g.Nk;
    const int K4 = K / 4;
    if (out32 && ns2 == 1) { /* every head of the block reads the same index */
      for (int task = tid2; task < len * K4; task += nth) {
        const int c4 = task % K4, i = task / K4;
        const float4 *s4 = (const float4 *)(src + i * K) + c4;
        float4 acc = s4[0];
        for (int hh = 1; hh < hpb; hh++) acc = f4add(acc, s4[hh * SC * K4]);
        add4_global(out32 + ((row0 + i) * Nx + m2r_div(n0, w2 ? g.mq : g.mk)) * K + 4 * c4, acc);
      }
    } else {
      for (int task = tid2; task < len * hpb * K4; task += nth) {
        const int c4 = task % K4, r = task / K4, i = m2r_div(r, p.mhpb), hh = r - i * hpb;
        const float4 acc = ((const float4 *)(src + (hh * SC + i) * K))[c4];
        if (out32) add4_global(out32 + ((row0 + i) * Nx + m2r_div(n0 + hh, w2 ? g.mq : g.mk)) * K + 4 * c4, acc);
        else
          *(uint2 *)(out + ((row0 + i) * g.N + n0 + hh) * K + 4 * c4) =
              make_uint2(m2r_pack_bf16(acc.x, acc.y), m2r_pack_bf16(acc.z, acc.w));
      }
    }
  }
  for (int task = tidf; task < len * hpb; task += nth) {
    const int i = m2r_div(task, p.mhpb), hh = task - i * hpb;
    float acc = 0.f;
    for (int w = 0; w < wph; w++) acc += dfp[(hh * wph + w) * SC + i];
    float *dst = p.df + (row0 + i) * g.Nf + m2r_div(n0 + hh, g.mf);
    if (g.Nf == g.N) *dst = acc;
    else atomicAdd(dst, acc);
  }
}


#endif
