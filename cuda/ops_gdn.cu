/* ops_gdn.cu — Gated DeltaNet (DESIGN 3.2) on CUDA: a correct recurrent forward/backward. The rows "gdn" and
 * "gdn_chunked" both run these recurrent kernels (same results as the CPU reference; the chunk only sets the
 * checkpoint interval, at most 64), except that a call whose shape fits, with bf16 inputs or bf16 products (unless
 * M2_GDN_CHUNK_TC=0; on by default since its parity and speed were measured on an H100, 2026-12-07) takes the
 * chunked tensor-core kernels of cuda/gdn_chunk.cu (forward) and cuda/gdn_chunk_bwd.cu (backward);
 * M2_GDN_CHUNK_TC=fwd takes the chunked forward only. Both forwards keep the same checkpoints, so either backward
 * runs after either forward.
 *
 * The recurrence never mixes the columns of the state S (K x V):
 *   S <- exp(g_t) S ;  v'_j = beta_t (v_tj - S[:,j].k_t) ;  S[:,j] += k_t v'_j ;  o_tj = S[:,j].(scale q_t)
 * so one warp owns one column j (lane l holds rows i = l + 32 r, r < R) and walks the time axis.
 * Forward: y and hT, plus (when a tape node will be recorded) the fp32 states before every seg-th step,
 * saved[0] = (B, H, NS, V, K) (column-major per state, the kernels' own layout), seg = mx_seg(attr.chunk).
 * With M2_GDN_BWD_V2=1 (m2_cuda_gdn_bwd_v2; off by default) a call the chunked backward will take also saves prep's
 * outputs, saved[1] (bf16) and saved[2] (fp32) (gdn_tc_keep_numel, cuda/gdn_chunk.h), and its backward reads them
 * instead of running prep again (the tape counts them as saved bytes; the CPU rows save saved[0] only).
 * The call's attributes (m2_gdn_attr) were checked by the public function; here only what these kernels take
 * (gdn_supports: f32 / bf16, K <= 512).
 * Backward (the CPU file's step formulas), one launch per checkpoint segment, last first: each warp
 * recomputes its column's states of the segment from the checkpoint into scratch, then steps back in
 * time carrying its column of dS. dv and dh0 are per column; dq, dk, dbeta, dg sum over the columns:
 * the warps of a block add theirs in shared memory in a fixed order, and a second kernel adds the
 * blocks' partial sums in a fixed order (deterministic, no atomics). Inputs f32 or bf16, fp32 compute. */
#include "ops.h"
#include "mixer_common.cuh"
#include "ops_mixers_entry.h"
#include "gdn_chunk.h"
#include "m2cuda.h"
extern "C" {
#include "../core/ops_gdn.h"
}

/* ================= forward ================= */

/* One warp per column j of one (b, h); block of 4 warps. ck (B,H,NS,V,K) fp32 or NULL. */
template <class T, int R>
__global__ void k_gdn_fwd(const T *q, const T *k, const T *v, const T *g, const T *beta, const T *h0, T *o, T *hT,
                          float *ck, int64_t B, int64_t Tn, int64_t H, int K, int64_t V, float scale, int seg,
                          int64_t NS) {
  int lane = threadIdx.x & 31;
  int64_t gw = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (gw >= B * H * V) return; /* whole warps leave together; no block barriers below */
  int64_t j = gw % V, bh = gw / V, b = bh / H, h = bh % H;
  float S[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = lane + 32 * r;
    S[r] = (h0 && i < K) ? to_f(h0[(bh * K + i) * V + j]) : 0.0f;
  }
  for (int64_t t = 0; t < Tn; t++) {
    if (ck && t % seg == 0) {
      float *c = ck + ((bh * NS + t / seg) * V + j) * K;
#pragma unroll
      for (int r = 0; r < R; r++)
        if (lane + 32 * r < K) c[lane + 32 * r] = S[r];
    }
    int64_t tok = (b * Tn + t) * H + h;
    float a = expf(to_f(g[tok])), bt = to_f(beta[tok]), kr[R], part = 0;
#pragma unroll
    for (int r = 0; r < R; r++) {
      int i = lane + 32 * r;
      kr[r] = i < K ? to_f(k[tok * K + i]) : 0.0f;
      S[r] *= a;
      part += kr[r] * S[r];
    }
    float vp = bt * (to_f(v[tok * V + j]) - warp_sum(part)), po = 0;
#pragma unroll
    for (int r = 0; r < R; r++) {
      int i = lane + 32 * r;
      S[r] += kr[r] * vp;
      if (i < K) po += to_f(q[tok * K + i]) * scale * S[r];
    }
    po = warp_sum(po);
    if (lane == 0) o[tok * V + j] = from_f<T>(po);
  }
#pragma unroll
  for (int r = 0; r < R; r++)
    if (lane + 32 * r < K) hT[(bh * K + lane + 32 * r) * V + j] = from_f<T>(S[r]);
}

/* ================= backward ================= */

/* One checkpoint segment [t0, t0 + L). Block (bh, tile) of W warps, warp w owns column j = tile W + w.
 * dS carried in carry (B,H,V,K) fp32 between launches; first launch reads dhT instead; the launch of
 * segment 0 writes dh0 (when wanted). states: scratch (B,H,V,seg,K). part (ntile,B,H,seg,2K+2): the
 * block's column sums of (dq | dk | dbeta | dg) for each step. dv written directly. */
template <class T, int R>
__global__ void k_gdn_bwd_seg(const T *q, const T *k, const T *v, const T *g, const T *beta, const T *dout,
                              const T *dhT, const float *ck, float *carry, float *states, float *part, T *dv, T *dh0,
                              int64_t B, int64_t Tn, int64_t H, int K, int64_t V, float scale, int seg, int64_t NS,
                              int64_t sg, int ntile, bool first) {
  extern __shared__ float red[]; /* (W, 2K+2) */
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, W = blockDim.x >> 5, row = 2 * K + 2;
  int tile = (int)(blockIdx.x % ntile);
  int64_t bh = blockIdx.x / ntile, b = bh / H, h = bh % H, j = (int64_t)tile * W + w;
  bool on = j < V; /* idle warps still take part in the block barriers */
  int64_t t0 = sg * seg, L = Tn - t0 < seg ? Tn - t0 : seg;
  if (L < 0) L = 0;
  float dS[R], S[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = lane + 32 * r;
    bool in = on && i < K;
    dS[r] = !in ? 0.0f : first ? to_f(dhT[(bh * K + i) * V + j]) : carry[(bh * V + j) * K + i];
    S[r] = (in && L > 0) ? ck[((bh * NS + sg) * V + j) * K + i] : 0.0f;
  }
  float *St = states + (bh * V + (on ? j : 0)) * (int64_t)seg * K;
  /* recompute the segment: St[r] = the state before step t0 + r; S ends as the state after the last step */
  if (on)
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * Tn + t0 + r) * H + h;
      float a = expf(to_f(g[tok])), bt = to_f(beta[tok]), kr[R], part_ = 0;
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int i = lane + 32 * rr;
        if (i < K) St[r * K + i] = S[rr];
        kr[rr] = i < K ? to_f(k[tok * K + i]) : 0.0f;
        S[rr] *= a;
        part_ += kr[rr] * S[rr];
      }
      float vp = bt * (to_f(v[tok * V + j]) - warp_sum(part_));
#pragma unroll
      for (int rr = 0; rr < R; rr++) S[rr] += kr[rr] * vp;
    }
  for (int64_t r = L - 1; r >= 0; r--) {
    float *my = red + w * row;
    if (on) {
      int64_t tok = (b * Tn + t0 + r) * H + h;
      float a = expf(to_f(g[tok])), bt = to_f(beta[tok]), doj = to_f(dout[tok * V + j]);
      float P[R], kr[R], qs[R], pu = 0;
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int i = lane + 32 * rr;
        bool in = i < K;
        P[rr] = in ? St[r * K + i] : 0.0f;
        kr[rr] = in ? to_f(k[tok * K + i]) : 0.0f;
        qs[rr] = in ? to_f(q[tok * K + i]) * scale : 0.0f;
        if (in) my[i] = scale * S[rr] * doj; /* dq partial */
        dS[rr] += qs[rr] * doj;
        pu += kr[rr] * P[rr];
      }
      float vmu = to_f(v[tok * V + j]) - a * warp_sum(pu), vp = bt * vmu, pd = 0;
#pragma unroll
      for (int rr = 0; rr < R; rr++) pd += dS[rr] * kr[rr];
      float dvp = warp_sum(pd), du = -bt * dvp, pg = 0;
      if (lane == 0 && dv) dv[tok * V + j] = from_f<T>(bt * dvp);
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int i = lane + 32 * rr;
        if (i < K) my[K + i] = dS[rr] * vp + a * P[rr] * du; /* dk partial */
        float dA = dS[rr] + kr[rr] * du;
        pg += dA * P[rr];
        dS[rr] = a * dA;
        S[rr] = P[rr];
      }
      pg = warp_sum(pg);
      if (lane == 0) {
        my[2 * K] = dvp * vmu; /* dbeta partial */
        my[2 * K + 1] = a * pg; /* dg partial */
      }
    } else {
      for (int x = lane; x < row; x += 32) my[x] = 0.0f;
    }
    mx_sum_warp_rows(red, part + (((int64_t)tile * B * H + bh) * seg + r) * row, row, W);
  }
  if (!on) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    int i = lane + 32 * r;
    if (i >= K) continue;
    if (sg == 0) {
      if (dh0) dh0[(bh * K + i) * V + j] = from_f<T>(dS[r]);
    } else {
      carry[(bh * V + j) * K + i] = dS[r];
    }
  }
}

/* Sum the tiles' partials of one segment into dq, dk, dbeta, dg (each may be NULL). */
template <class T>
__global__ void k_gdn_bwd_finish(const float *part, T *dq, T *dk, T *dbeta, T *dg, int64_t B, int64_t Tn, int64_t H,
                                 int K, int seg, int64_t t0, int64_t L, int ntile) {
  int row = 2 * K + 2;
  CU_GRID_STRIDE(idx, B * H * L * row) {
    int x = (int)(idx % row);
    int64_t rest = idx / row, r = rest % L, bh = rest / L, b = bh / H, h = bh % H;
    float s = 0;
    for (int tl = 0; tl < ntile; tl++) s += part[(((int64_t)tl * B * H + bh) * seg + r) * row + x];
    int64_t tok = (b * Tn + t0 + r) * H + h;
    if (x < K) { if (dq) dq[tok * K + x] = from_f<T>(s); }
    else if (x < 2 * K) { if (dk) dk[tok * K + x - K] = from_f<T>(s); }
    else if (x == 2 * K) { if (dbeta) dbeta[tok] = from_f<T>(s); }
    else if (dg) dg[tok] = from_f<T>(s);
  }
}

/* ================= launchers ================= */

static m2_status gdn_forward(m2_opcall *c) {
  const char *op = c->op->name;
  M2_TRY(gdn_supports(c, &mx_rules_cuda));
  const m2_gdn_attr d = *M2_ATTR(c, m2_gdn_attr);
  float scale = (float)d.scale;
  int64_t seg = mx_seg(d.chunk); /* checkpoint interval */
  int64_t NS = (d.T + seg - 1) / seg;
  cudaStream_t st;
  M2_TRY(cu_stream(c->in[0]->device, &st));
  int64_t so[4] = {d.B, d.T, d.H, d.V}, sh[4] = {d.B, d.H, d.K, d.V}, sck[5] = {d.B, d.H, NS, d.V, d.K};
  m2_tensor *o, *hT, *ck;
  m2_status s = mx_fwd_outputs(c, so, sh, sck, &o, &hT, &ck);
  int64_t nw = d.B * d.H * d.V;
  m2_tensor *k16 = NULL, *k32 = NULL; /* prep's outputs kept for the backward (M2_GDN_BWD_V2), saved[1], saved[2] */
  if (s == M2_OK && nw > 0 && gdn_tc_applies(&d, seg, c->in[0]->dtype)) {
    const void *in[6];
    for (int i = 0; i < 6; i++) in[i] = c->in[i] ? m2_data(c->in[i]) : NULL;
    if (ck && gdn_tc_keep_applies(&d, seg, c->in[0]->dtype)) {
      int64_t n16, n32;
      gdn_tc_keep_numel(&d, &n16, &n32);
      k16 = m2_empty(M2_BF16, c->in[0]->device, 1, &n16), k32 = m2_empty(M2_F32, c->in[0]->device, 1, &n32);
      if (!k16 || !k32) s = m2_errcode();
    }
    if (s == M2_OK)
      s = gdn_tc_forward(&d, c->in[0]->dtype, c->in[0]->device, st, in, m2_data(o), m2_data(hT),
                         ck ? (float *)m2_data(ck) : NULL, k16 ? m2_data(k16) : NULL,
                         k32 ? (float *)m2_data(k32) : NULL);
  } else if (s == M2_OK && nw > 0) {
    unsigned grid = (unsigned)((nw + 3) / 4);
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(c->in[0]->dtype, CU_R_DISPATCH(cu_lane_regs(d.K), k_gdn_fwd<T, R><<<grid, 128, 0, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(in[5]), PT(o), PT(hT),
        ck ? (float *)m2_data(ck) : NULL, d.B, d.T, d.H, (int)d.K, d.V, scale, (int)seg, NS)));
    s = mx_launched(op, "forward");
  }
  s = mixer_fwd_finish(c, s, o, hT, ck); /* saved[0] = ck */
  if (s == M2_OK && k16 && k32) m2_save(c, k16), m2_save(c, k32);
  m2_release(k16), m2_release(k32);
  return s;
}

extern "C" m2_status m2_cuda_gdn_fwd(m2_opcall *c) { return gdn_forward(c); }
extern "C" m2_status m2_cuda_gdn_chunked_fwd(m2_opcall *c) { return gdn_forward(c); }

extern "C" m2_status m2_cuda_gdn_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  const m2_gdn_attr d = *M2_ATTR(c, m2_gdn_attr);
  int64_t seg = mx_seg(d.chunk), NS = (d.T + seg - 1) / seg;
  M2_TRY(mx_check_saved(c, op, d.B * d.H * NS * d.V * d.K));
  float scale = (float)d.scale;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(c->in[0]->device, &st));
  int64_t K = d.K, V = d.V, BH = d.B * d.H, row = 2 * K + 2;
  if (gdn_tc_bwd_applies(&d, seg, c->in[0]->dtype)) { /* the chunked tensor-core backward (cuda/gdn_chunk_bwd.cu) */
    mx_bwd_work w;
    m2_status s = mx_bwd_open(c, 1, 1, 1, &w);
    if (s == M2_OK) {
      const void *in[6];
      void *din[6];
      for (int i = 0; i < 6; i++) {
        in[i] = c->in[i] ? m2_data(c->in[i]) : NULL;
        din[i] = w.din[i] ? m2_data(w.din[i]) : NULL;
      }
      /* prep's outputs, when the forward kept them (M2_GDN_BWD_V2): the saved tensors after the states */
      const void *k16 = NULL;
      const float *k32 = NULL;
      if (m2_cuda_gdn_bwd_v2(-1) == 1 && c->n_saved >= 3 && c->saved[1] && c->saved[2]) {
        int64_t n16, n32;
        gdn_tc_keep_numel(&d, &n16, &n32);
        if (c->saved[1]->dtype == M2_BF16 && m2_numel(c->saved[1]) == n16 && c->saved[2]->dtype == M2_F32 &&
            m2_numel(c->saved[2]) == n32)
          k16 = m2_data(c->saved[1]), k32 = (const float *)m2_data(c->saved[2]);
      }
      s = gdn_tc_backward(&d, dt, c->in[0]->device, st, in, m2_data(w.dy), w.dhT ? m2_data(w.dhT) : NULL,
                          (const float *)m2_data(c->saved[0]), k16, k32, din);
    }
    return mx_bwd_close(c, &w, s);
  }
  cudaFuncAttributes fattr; /* a block: as many warps (columns) as the kernel's registers allow */
  cudaError_t fe = cudaSuccess;
  CU_FLOAT_DISPATCH(dt, CU_R_DISPATCH(cu_lane_regs(K), fe = cudaFuncGetAttributes(&fattr, k_gdn_bwd_seg<T, R>)));
  if (fe != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: cudaFuncGetAttributes failed: %s", op, cudaGetErrorString(fe));
  int W = mx_bwd_warps(row, V, fattr.maxThreadsPerBlock);
  int ntile = (int)((V + W - 1) / W);
  mx_bwd_work w;
  m2_status s = mx_bwd_open(c, BH * V * seg * K, (int64_t)ntile * BH * seg * row, BH * V * K, &w);
  m2_tensor **din = w.din;
  int64_t NL = NS > 0 ? NS : 1; /* T = 0 still passes dhT to dh0 */
  for (int64_t sg = NL - 1; sg >= 0 && s == M2_OK && BH * V > 0; sg--) {
    int64_t t0 = sg * seg, L = d.T - t0 < seg ? d.T - t0 : seg;
    if (L < 0) L = 0;
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, CU_R_DISPATCH(cu_lane_regs(K), k_gdn_bwd_seg<T, R><<<(unsigned)(BH * ntile), W * 32,
                                                                             (size_t)W * row * 4, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(w.dy), PC(w.dhT), (const float *)m2_data(c->saved[0]),
        (float *)m2_data(w.carry), (float *)m2_data(w.states), (float *)m2_data(w.part), PT(din[2]), PT(din[5]), d.B,
        d.T, d.H, (int)K, V, scale, (int)seg, NS, sg, ntile, sg == NL - 1)));
    s = mx_launched(op, "backward");
    if (s == M2_OK && L > 0 && (din[0] || din[1] || din[3] || din[4])) {
      CU_FLOAT_DISPATCH(dt, k_gdn_bwd_finish<T><<<cu_grid(BH * L * row, 256), 256, 0, st>>>(
          (const float *)m2_data(w.part), PT(din[0]), PT(din[1]), PT(din[4]), PT(din[3]), d.B, d.T, d.H, (int)K,
          (int)seg, t0, L, ntile));
      s = mx_launched(op, "backward");
    }
  }
  return mx_bwd_close(c, &w, s);
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_gdn(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_gdn, m2_cuda_gdn_fwd, m2_cuda_gdn_bwd},
      {&m2_op_gdn_chunked, m2_cuda_gdn_chunked_fwd, m2_cuda_gdn_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
