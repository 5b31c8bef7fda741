/* ops_ssd.cu — Mamba-2 SSD (DESIGN 3.3) on CUDA: a correct recurrent forward/backward. The rows "ssd" and
 * "ssd_chunked" both run these recurrent kernels (same results as the CPU reference; the chunk only sets the
 * checkpoint interval, at most 64), except that the forward and backward of both rows run the chunked tensor-core
 * form of cuda/ssd_chunk.cu where it applies (ssd_chunk_applies: bf16 products, tiles that fit; on by default since
 * parity and speed were measured on an H100, 2026-12-07; M2_SSD_CHUNK_TC=0 turns it off, read once); its chunk
 * states are this file's checkpoints, so either backward pairs with either forward.
 *
 * The recurrence never mixes the rows of the state h (P x N) of a head:
 *   h[p,:] <- exp(dt_t A) h[p,:] + dt_t x_tp B_t ;  y_tp = h[p,:].C_t
 * so one warp owns one row p (lane l holds columns n = l + 32 r, r < R) and walks the time axis.
 * Forward: y and hT, plus (when a tape node will be recorded) the fp32 states before every seg-th step,
 * saved[0] = (B, H, NS, P, N), seg = mx_seg(attr.chunk).
 * The call's attributes (m2_ssd_attr) were checked by the public function; here only what these kernels take
 * (ssd_supports: f32 / bf16, N <= 512).
 * Backward (the CPU file's step formulas), one launch per checkpoint segment, last first: each warp
 * recomputes its row's states of the segment into scratch, then steps back carrying its row of dh.
 * dx and dh0 are per row; dB, dC (summed over the rows and the heads of a group), ddt (over rows) and
 * dA (over rows, time and batch) are added in a fixed order: warps of a block in shared memory, then
 * the blocks' partial sums in a second kernel (deterministic, no atomics). f32 or bf16, fp32 compute. */
#include "ops.h"
#include "mixer_common.cuh"
#include "ops_mixers_entry.h"
#include "ssd_chunk.h"

/* ================= forward ================= */

/* One warp per row p of one (b, h); block of 4 warps. ck (B,H,NS,P,N) fp32 or NULL. */
template <class T, int R>
__global__ void k_ssd_fwd(const T *x, const T *dt, const T *A, const T *Bm, const T *Cm, const T *h0, T *y, T *hT,
                          float *ck, int64_t B, int64_t Tn, int64_t H, int64_t P, int64_t G, int N, int seg,
                          int64_t NS) {
  int lane = threadIdx.x & 31;
  int64_t gw = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (gw >= B * H * P) return; /* whole warps leave together; no block barriers below */
  int64_t p = gw % P, bh = gw / P, b = bh / H, h = bh % H, gi = h / (H / G);
  float Ah = to_f(A[h]), hs[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    int n = lane + 32 * r;
    hs[r] = (h0 && n < N) ? to_f(h0[(bh * P + p) * N + n]) : 0.0f;
  }
  for (int64_t t = 0; t < Tn; t++) {
    if (ck && t % seg == 0) {
      float *c = ck + ((bh * NS + t / seg) * P + p) * N;
#pragma unroll
      for (int r = 0; r < R; r++)
        if (lane + 32 * r < N) c[lane + 32 * r] = hs[r];
    }
    int64_t tok = (b * Tn + t) * H + h, rg = (b * Tn + t) * G + gi;
    float dtv = to_f(dt[tok]), a = expf(dtv * Ah), xp = dtv * to_f(x[tok * P + p]), acc = 0;
#pragma unroll
    for (int r = 0; r < R; r++) {
      int n = lane + 32 * r;
      if (n < N) {
        hs[r] = a * hs[r] + xp * to_f(Bm[rg * N + n]);
        acc += hs[r] * to_f(Cm[rg * N + n]);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[tok * P + p] = from_f<T>(acc);
  }
#pragma unroll
  for (int r = 0; r < R; r++)
    if (lane + 32 * r < N) hT[(bh * P + p) * N + lane + 32 * r] = from_f<T>(hs[r]);
}

/* ================= backward ================= */

/* One checkpoint segment [t0, t0 + L). Block (bh, tile) of W warps, warp w owns row p = tile W + w.
 * dh carried in carry (B,H,P,N) fp32 between launches; the first launch reads dhT; the launch of segment
 * 0 writes dh0 (when wanted). states: scratch (B,H,P,seg,N). part (ntile,B,H,seg,2N+1): the block's row
 * sums of (dC | dB | ddt) for each step. dApart (B,H,ntile): the block's dA, added up over the launches.
 * dx written directly. */
template <class T, int R>
__global__ void k_ssd_bwd_seg(const T *x, const T *dt, const T *A, const T *Bm, const T *Cm, const T *dy,
                              const T *dhT, const float *ck, float *carry, float *states, float *part, float *dApart,
                              T *dx, T *dh0, int64_t B, int64_t Tn, int64_t H, int64_t P, int64_t G, int N, int seg,
                              int64_t NS, int64_t sg, int ntile, bool first) {
  extern __shared__ float red[]; /* (W, 2N+1) */
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, W = blockDim.x >> 5, row = 2 * N + 1;
  int tile = (int)(blockIdx.x % ntile);
  int64_t bh = blockIdx.x / ntile, b = bh / H, h = bh % H, gi = h / (H / G), p = (int64_t)tile * W + w;
  bool on = p < P; /* idle warps still take part in the block barriers */
  int64_t t0 = sg * seg, L = Tn - t0 < seg ? Tn - t0 : seg;
  if (L < 0) L = 0;
  float Ah = to_f(A[h]), dh[R], S[R], dAacc = 0;
#pragma unroll
  for (int r = 0; r < R; r++) {
    int n = lane + 32 * r;
    bool in = on && n < N;
    dh[r] = !in ? 0.0f : first ? to_f(dhT[(bh * P + p) * N + n]) : carry[(bh * P + p) * N + n];
    S[r] = (in && L > 0) ? ck[((bh * NS + sg) * P + p) * N + n] : 0.0f;
  }
  float *St = states + (bh * P + (on ? p : 0)) * (int64_t)seg * N;
  if (on)
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * Tn + t0 + r) * H + h, rg = (b * Tn + t0 + r) * G + gi;
      float dtv = to_f(dt[tok]), a = expf(dtv * Ah), xp = dtv * to_f(x[tok * P + p]);
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int n = lane + 32 * rr;
        if (n < N) {
          St[r * N + n] = S[rr];
          S[rr] = a * S[rr] + xp * to_f(Bm[rg * N + n]);
        }
      }
    }
  for (int64_t r = L - 1; r >= 0; r--) {
    float *my = red + w * row;
    if (on) {
      int64_t tok = (b * Tn + t0 + r) * H + h, rg = (b * Tn + t0 + r) * G + gi;
      float dtv = to_f(dt[tok]), a = expf(dtv * Ah), xp = to_f(x[tok * P + p]), dyp = to_f(dy[tok * P + p]);
      float Pv[R], Bv[R], pb = 0, ph = 0;
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int n = lane + 32 * rr;
        bool in = n < N;
        Pv[rr] = in ? St[r * N + n] : 0.0f;
        Bv[rr] = in ? to_f(Bm[rg * N + n]) : 0.0f;
        float Cn = in ? to_f(Cm[rg * N + n]) : 0.0f;
        if (in) my[n] = dyp * S[rr]; /* dC partial */
        dh[rr] += dyp * Cn;
        pb += dh[rr] * Bv[rr];
        ph += dh[rr] * Pv[rr];
      }
      float db = warp_sum(pb), hsum = warp_sum(ph);
      if (lane == 0 && dx) dx[tok * P + p] = from_f<T>(dtv * db);
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        int n = lane + 32 * rr;
        if (n < N) my[N + n] = dtv * xp * dh[rr]; /* dB partial */
        dh[rr] *= a;
        S[rr] = Pv[rr];
      }
      if (lane == 0) my[2 * N] = xp * db + a * Ah * hsum; /* ddt partial */
      dAacc += a * dtv * hsum;
    } else {
      for (int xx = lane; xx < row; xx += 32) my[xx] = 0.0f;
    }
    mx_sum_warp_rows(red, part + (((int64_t)tile * B * H + bh) * seg + r) * row, row, W);
  }
  /* dA: the warps' sums in a fixed order, added to this block's slot (one launch at a time) */
  if (lane == 0) red[w] = on ? dAacc : 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (int ww = 0; ww < W; ww++) s += red[ww];
    dApart[bh * ntile + tile] += s;
  }
  if (!on) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    int n = lane + 32 * r;
    if (n >= N) continue;
    if (sg == 0) {
      if (dh0) dh0[(bh * P + p) * N + n] = from_f<T>(dh[r]);
    } else {
      carry[(bh * P + p) * N + n] = dh[r];
    }
  }
}

/* dC, dB (B,T,G,N) of one segment: sums over the heads of the group and the tiles. */
template <class T>
__global__ void k_ssd_bwd_finish_bc(const float *part, T *dC, T *dB, int64_t B, int64_t Tn, int64_t H, int64_t G,
                                    int N, int seg, int64_t t0, int64_t L, int ntile) {
  int row = 2 * N + 1;
  int64_t hpg = H / G;
  CU_GRID_STRIDE(idx, B * L * G * 2 * N) {
    int x = (int)(idx % (2 * N));
    int64_t rest = idx / (2 * N), gi = rest % G, rest2 = rest / G, r = rest2 % L, b = rest2 / L;
    float s = 0;
    for (int64_t hh = 0; hh < hpg; hh++) {
      int64_t bh = b * H + gi * hpg + hh;
      for (int tl = 0; tl < ntile; tl++) s += part[(((int64_t)tl * B * H + bh) * seg + r) * row + x];
    }
    int64_t rg = (b * Tn + t0 + r) * G + gi;
    if (x < N) { if (dC) dC[rg * N + x] = from_f<T>(s); }
    else if (dB) dB[rg * N + x - N] = from_f<T>(s);
  }
}

/* ddt (B,T,H) of one segment: sums over the tiles. */
template <class T>
__global__ void k_ssd_bwd_finish_dt(const float *part, T *ddt, int64_t B, int64_t Tn, int64_t H, int N, int seg,
                                    int64_t t0, int64_t L, int ntile) {
  int row = 2 * N + 1;
  CU_GRID_STRIDE(idx, B * H * L) {
    int64_t r = idx % L, bh = idx / L, b = bh / H, h = bh % H;
    float s = 0;
    for (int tl = 0; tl < ntile; tl++) s += part[(((int64_t)tl * B * H + bh) * seg + r) * row + 2 * N];
    ddt[(b * Tn + t0 + r) * H + h] = from_f<T>(s);
  }
}

/* dA (H) = sum over batch and tiles of dApart (B,H,ntile). */
template <class T>
__global__ void k_ssd_bwd_finish_da(const float *dApart, T *dA, int64_t B, int64_t H, int ntile) {
  CU_GRID_STRIDE(h, H) {
    float s = 0;
    for (int64_t b = 0; b < B; b++)
      for (int tl = 0; tl < ntile; tl++) s += dApart[(b * H + h) * ntile + tl];
    dA[h] = from_f<T>(s);
  }
}

/* ================= launchers ================= */

static m2_status ssd_forward(m2_opcall *c) {
  const char *op = c->op->name;
  M2_TRY(ssd_supports(c, &mx_rules_cuda));
  const m2_ssd_attr d = *M2_ATTR(c, m2_ssd_attr);
  int64_t seg = mx_seg(d.chunk); /* checkpoint interval */
  int64_t NS = (d.T + seg - 1) / seg;
  cudaStream_t st;
  M2_TRY(cu_stream(c->in[0]->device, &st));
  int64_t sy[4] = {d.B, d.T, d.H, d.P}, sh[4] = {d.B, d.H, d.P, d.N}, sck[5] = {d.B, d.H, NS, d.P, d.N};
  m2_tensor *y, *hT, *ck;
  m2_status s = mx_fwd_outputs(c, sy, sh, sck, &y, &hT, &ck);
  int64_t nw = d.B * d.H * d.P;
  if (s == M2_OK && ssd_chunk_applies(c, seg, false)) {
    /* the chunked tensor-core form; its chunk states are the checkpoints (scratch when none are kept) */
    m2_tensor *cs = ck ? ck : cu_scratch_f32(c->in[0]->device, d.B * d.H * NS * d.P * d.N);
    s = cs ? ssd_chunk_forward(c, seg, y, hT, cs, st) : m2_errcode();
    if (cs != ck) m2_release(cs);
  } else if (s == M2_OK && nw > 0) {
    unsigned grid = (unsigned)((nw + 3) / 4);
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(c->in[0]->dtype, CU_R_DISPATCH(cu_lane_regs(d.N), k_ssd_fwd<T, R><<<grid, 128, 0, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(in[5]), PT(y), PT(hT),
        ck ? (float *)m2_data(ck) : NULL, d.B, d.T, d.H, d.P, d.G, (int)d.N, (int)seg, NS)));
    s = mx_launched(op, "forward");
  }
  return mixer_fwd_finish(c, s, y, hT, ck);
}

extern "C" m2_status m2_cuda_ssd_fwd(m2_opcall *c) { return ssd_forward(c); }
extern "C" m2_status m2_cuda_ssd_chunked_fwd(m2_opcall *c) { return ssd_forward(c); }

extern "C" m2_status m2_cuda_ssd_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  const m2_ssd_attr d = *M2_ATTR(c, m2_ssd_attr);
  int64_t seg = mx_seg(d.chunk), NS = (d.T + seg - 1) / seg;
  M2_TRY(mx_check_saved(c, op, d.B * d.H * NS * d.P * d.N));
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  if (ssd_chunk_applies(c, seg, true)) { /* the chunked tensor-core backward */
    mx_bwd_work w;
    m2_status s = mx_bwd_open(c, 1, 1, 1, &w);
    if (s == M2_OK) s = ssd_chunk_backward(c, seg, w.dy, w.dhT, w.din, st);
    return mx_bwd_close(c, &w, s);
  }
  int64_t P = d.P, N = d.N, BH = d.B * d.H, row = 2 * N + 1;
  cudaFuncAttributes fattr; /* a block: as many warps (rows) as the kernel's registers allow */
  cudaError_t fe = cudaSuccess;
  CU_FLOAT_DISPATCH(dt, CU_R_DISPATCH(cu_lane_regs(N), fe = cudaFuncGetAttributes(&fattr, k_ssd_bwd_seg<T, R>)));
  if (fe != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: cudaFuncGetAttributes failed: %s", op, cudaGetErrorString(fe));
  int W = mx_bwd_warps(row, P, fattr.maxThreadsPerBlock);
  int ntile = (int)((P + W - 1) / W);
  mx_bwd_work w;
  m2_status s = mx_bwd_open(c, BH * P * seg * N, (int64_t)ntile * BH * seg * row, BH * P * N, &w);
  int64_t nda = BH * ntile, nda1 = nda > 0 ? nda : 1; /* dApart (B,H,ntile): the blocks' dA */
  m2_tensor *dap = s == M2_OK ? cu_zeros(M2_F32, dev, 1, &nda1) : NULL;
  if (s == M2_OK && !dap) s = m2_errcode();
  m2_tensor **din = w.din;
  int64_t NL = NS > 0 ? NS : 1; /* T = 0 still passes dhT to dh0 */
  for (int64_t sg = NL - 1; sg >= 0 && s == M2_OK && BH * P > 0; sg--) {
    int64_t t0 = sg * seg, L = d.T - t0 < seg ? d.T - t0 : seg;
    if (L < 0) L = 0;
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, CU_R_DISPATCH(cu_lane_regs(N), k_ssd_bwd_seg<T, R><<<(unsigned)(BH * ntile), W * 32,
                                                                             (size_t)W * row * 4, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(w.dy), PC(w.dhT), (const float *)m2_data(c->saved[0]),
        (float *)m2_data(w.carry), (float *)m2_data(w.states), (float *)m2_data(w.part), (float *)m2_data(dap),
        PT(din[0]), PT(din[5]), d.B, d.T, d.H, P, d.G, (int)N, (int)seg, NS, sg, ntile, sg == NL - 1)));
    s = mx_launched(op, "backward");
    if (s == M2_OK && L > 0 && (din[3] || din[4]) && d.G > 0) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_bc<T><<<cu_grid(d.B * L * d.G * 2 * N, 256), 256, 0, st>>>(
          (const float *)m2_data(w.part), PT(din[4]), PT(din[3]), d.B, d.T, d.H, d.G, (int)N, (int)seg, t0, L, ntile));
      s = mx_launched(op, "backward");
    }
    if (s == M2_OK && L > 0 && din[1]) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_dt<T><<<cu_grid(BH * L, 256), 256, 0, st>>>(
          (const float *)m2_data(w.part), PT(din[1]), d.B, d.T, d.H, (int)N, (int)seg, t0, L, ntile));
      s = mx_launched(op, "backward");
    }
  }
  if (s == M2_OK && din[2] && d.H > 0) {
    if (BH * P > 0) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_da<T><<<cu_grid(d.H, 256), 256, 0, st>>>(
          (const float *)m2_data(dap), PT(din[2]), d.B, d.H, ntile));
      s = mx_launched(op, "backward");
    } else {
      cudaError_t e = cudaMemsetAsync(m2_data(din[2]), 0, (size_t)d.H * m2_elsize(din[2]), st);
      if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: backward kernel launch failed: %s", op, cudaGetErrorString(e));
    }
  }
  m2_release(dap);
  return mx_bwd_close(c, &w, s);
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_ssd(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_ssd, m2_cuda_ssd_fwd, m2_cuda_ssd_bwd},
      {&m2_op_ssd_chunked, m2_cuda_ssd_chunked_fwd, m2_cuda_ssd_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
