/* ops_ssd.cu — Mamba-2 SSD (DESIGN 3.3) on CUDA: a correct recurrent forward/backward, not yet the
 * chunked (state-space dual) matmul form. The rows "ssd" and "ssd_chunked" both run these recurrent
 * kernels (same results as the CPU reference; the chunk only sets the checkpoint interval, at most 64).
 *
 * The recurrence never mixes the rows of the state h (P x N) of a head:
 *   h[p,:] <- exp(dt_t A) h[p,:] + dt_t x_tp B_t ;  y_tp = h[p,:].C_t
 * so one warp owns one row p (lane l holds columns n = l + 32 r, r < R) and walks the time axis.
 * Forward: y and hT, plus (when a tape node will be recorded) the fp32 states before every seg-th step,
 * saved[0] = (B, H, NS, P, N), ia[1] = seg.
 * Backward (the CPU file's step formulas), one launch per checkpoint segment, last first: each warp
 * recomputes its row's states of the segment into scratch, then steps back carrying its row of dh.
 * dx and dh0 are per row; dB, dC (summed over the rows and the heads of a group), ddt (over rows) and
 * dA (over rows, time and batch) are added in a fixed order: warps of a block in shared memory, then
 * the blocks' partial sums in a second kernel (deterministic, no atomics). f32 or bf16, fp32 compute. */
#include "ops_common.cuh"
#include "ops_mixers_entry.h"

#define SSD_MAX_N 512 /* 16 columns a lane */

typedef struct ssd_geom { int64_t B, T, H, P, G, N; } ssd_geom;

static m2_tensor *ssd_as(m2_tensor *t, m2_dtype dt) {
  if (t->dtype == dt && m2_is_contiguous(t)) { m2_retain(t); return t; }
  return m2_clone_raw(t, dt, t->device);
}

static m2_status ssd_want(const m2_tensor *t, const char *op, const char *arg, const char *form, int nd,
                          const int64_t *shape) {
  bool ok = t->ndim == nd;
  for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
  if (ok) return M2_OK;
  char a[96], b[96];
  return m2_fail(M2_ERR_SHAPE, "%s: %s has shape %s, expected %s = %s", op, arg, m2_shape_str(t, a, sizeof a), form,
                 m2_shape_str_raw(nd, shape, b, sizeof b));
}

/* in = {x, dt, A, Bm, Cm, h0}: presence, dtypes (f32 / bf16, all the same), shapes. */
static m2_status ssd_check(m2_opcall *c, const char *op, ssd_geom *d) {
  static const char *names[6] = {"x", "dt", "A", "Bm", "Cm", "h0"};
  for (int i = 0; i < 5; i++)
    if (!c->in[i]) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL (only h0 may be omitted)", op, names[i]);
  for (int i = 0; i < 6; i++) {
    if (!c->in[i]) continue;
    M2_TRY(cu_check_float(c->in[i], op, names[i]));
    M2_TRY(m2_check_same_dtype(c->in[0], c->in[i], op));
  }
  m2_tensor *x = c->in[0], *Bm = c->in[3];
  char a[96];
  if (x->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "%s: x has shape %s, expected 4 dims (B, T, H, P)", op, m2_shape_str(x, a, sizeof a));
  if (Bm->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "%s: Bm has shape %s, expected 4 dims (B, T, G, N)", op, m2_shape_str(Bm, a, sizeof a));
  d->B = x->shape[0], d->T = x->shape[1], d->H = x->shape[2], d->P = x->shape[3];
  d->G = Bm->shape[2], d->N = Bm->shape[3];
  int64_t sb[4] = {d->B, d->T, d->G, d->N}, sh[4] = {d->B, d->H, d->P, d->N};
  M2_TRY(ssd_want(c->in[1], op, "dt", "(B, T, H)", 3, x->shape));
  M2_TRY(ssd_want(c->in[2], op, "A", "(H)", 1, &d->H));
  M2_TRY(ssd_want(Bm, op, "Bm", "(B, T, G, N)", 4, sb));
  M2_TRY(ssd_want(c->in[4], op, "Cm", "(B, T, G, N)", 4, Bm->shape));
  if (c->in[5]) M2_TRY(ssd_want(c->in[5], op, "h0", "(B, H, P, N)", 4, sh));
  if (d->G < 1 || d->H % d->G != 0)
    return m2_fail(M2_ERR_SHAPE, "%s: the group count G = %lld of Bm/Cm must divide the head count H = %lld", op,
                   (long long)d->G, (long long)d->H);
  if (d->P < 1 || d->N < 1) return m2_fail(M2_ERR_SHAPE, "%s: P and N must be at least 1", op);
  if (d->N > SSD_MAX_N)
    return m2_fail(M2_ERR_UNSUPPORTED, "%s: the CUDA kernels take N <= %d (got N = %lld)", op, SSD_MAX_N,
                   (long long)d->N);
  if (c->ia[0] < 0) return m2_fail(M2_ERR_VALUE, "%s: chunk must be >= 0 (0 = default), got %lld", op, (long long)c->ia[0]);
  return M2_OK;
}

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
    __syncthreads();
    float *dst = part + (((int64_t)tile * B * H + bh) * seg + r) * row;
    for (int xx = threadIdx.x; xx < row; xx += blockDim.x) {
      float s = 0;
      for (int ww = 0; ww < W; ww++) s += red[ww * row + xx];
      dst[xx] = s;
    }
    __syncthreads();
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

static int ssd_cols(int64_t N) { return N <= 32 ? 1 : N <= 64 ? 2 : N <= 128 ? 4 : N <= 256 ? 8 : 16; }

#define SSD_R_DISPATCH(Rn, ...)                                   \
  do {                                                            \
    switch (Rn) {                                                 \
      case 1: { const int R = 1; __VA_ARGS__; } break;            \
      case 2: { const int R = 2; __VA_ARGS__; } break;            \
      case 4: { const int R = 4; __VA_ARGS__; } break;            \
      case 8: { const int R = 8; __VA_ARGS__; } break;            \
      default: { const int R = 16; __VA_ARGS__; } break;          \
    }                                                             \
  } while (0)

#define PT(t) ((t) ? (T *)m2_data(t) : (T *)NULL)
#define PC(t) ((t) ? (const T *)m2_data(t) : (const T *)NULL)

static m2_status ssd_forward(m2_opcall *c) {
  const char *op = c->op->name;
  ssd_geom d;
  M2_TRY(ssd_check(c, op, &d));
  int64_t seg = c->ia[0] > 0 && c->ia[0] < 64 ? c->ia[0] : 64; /* checkpoint interval */
  c->ia[1] = seg;
  int64_t NS = (d.T + seg - 1) / seg;
  bool keep = false; /* a tape node will be recorded: keep the checkpoints */
  for (int i = 0; i < 6; i++) keep |= c->in[i] && c->in[i]->requires_grad;
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t sy[4] = {d.B, d.T, d.H, d.P}, sh[4] = {d.B, d.H, d.P, d.N}, sck[5] = {d.B, d.H, NS, d.P, d.N};
  m2_tensor *y = m2_empty(dt, dev, 4, sy), *hT = m2_empty(dt, dev, 4, sh);
  m2_tensor *ck = keep ? m2_empty(M2_F32, dev, 5, sck) : NULL;
  m2_status s = (y && hT && (ck || !keep)) ? M2_OK : m2_errcode();
  int64_t nw = d.B * d.H * d.P;
  if (s == M2_OK && nw > 0) {
    unsigned grid = (unsigned)((nw + 3) / 4);
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, SSD_R_DISPATCH(ssd_cols(d.N), k_ssd_fwd<T, R><<<grid, 128, 0, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(in[5]), PT(y), PT(hT),
        ck ? (float *)m2_data(ck) : NULL, d.B, d.T, d.H, d.P, d.G, (int)d.N, (int)seg, NS)));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: forward kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  if (s != M2_OK) {
    m2_release(y), m2_release(hT), m2_release(ck);
    return s;
  }
  c->n_out = 2;
  c->out[0] = y;
  c->out[1] = hT;
  if (ck) {
    m2_save(c, ck);
    m2_release(ck);
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_ssd_fwd(m2_opcall *c) { return ssd_forward(c); }
extern "C" m2_status m2_cuda_ssd_chunked_fwd(m2_opcall *c) { return ssd_forward(c); }

extern "C" m2_status m2_cuda_ssd_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  ssd_geom d;
  M2_TRY(ssd_check(c, op, &d));
  int64_t seg = c->ia[1], NS = seg > 0 ? (d.T + seg - 1) / seg : 0;
  if (c->n_saved < 1 || !c->saved[0] || seg < 1 || c->saved[0]->dtype != M2_F32 ||
      m2_numel(c->saved[0]) != d.B * d.H * NS * d.P * d.N)
    return m2_fail(M2_ERR_AUTOGRAD, "%s: backward without the saved CUDA states", op);
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t P = d.P, N = d.N, BH = d.B * d.H, row = 2 * N + 1;
  int W = (int)(49152 / (row * 4)); /* warps (rows) a block: the block's partial rows fit in 48 KiB */
  if (W > 32) W = 32;
  if (W > P) W = (int)P;
  cudaFuncAttributes fattr; /* and as many as the kernel's registers allow in one block */
  cudaError_t fe = cudaSuccess;
  CU_FLOAT_DISPATCH(dt, SSD_R_DISPATCH(ssd_cols(N), fe = cudaFuncGetAttributes(&fattr, k_ssd_bwd_seg<T, R>)));
  if (fe != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: cudaFuncGetAttributes failed: %s", op, cudaGetErrorString(fe));
  if (W > fattr.maxThreadsPerBlock / 32) W = fattr.maxThreadsPerBlock / 32;
  if (W < 1) W = 1;
  int ntile = (int)((P + W - 1) / W);
  int64_t nscr = BH * P * seg * N, npart = (int64_t)ntile * BH * seg * row, ncar = BH * P * N, nda = BH * ntile;
  m2_tensor *dY = ssd_as(c->dout[0], dt), *dH = ssd_as(c->dout[1], dt);
  m2_tensor *scr = cu_scratch_f32(dev, nscr > 0 ? nscr : 1), *part = cu_scratch_f32(dev, npart > 0 ? npart : 1);
  m2_tensor *car = cu_scratch_f32(dev, ncar > 0 ? ncar : 1);
  int64_t nda1 = nda > 0 ? nda : 1;
  m2_tensor *dap = cu_zeros(M2_F32, dev, 1, &nda1);
  m2_tensor *din[6] = {0};
  m2_status s = (dY && dH && scr && part && car && dap) ? M2_OK : m2_errcode();
  for (int i = 0; i < 6 && s == M2_OK; i++)
    if (c->in[i] && c->needs_din[i] && !(din[i] = m2_empty(dt, dev, c->in[i]->ndim, c->in[i]->shape))) s = m2_errcode();
  int64_t NL = NS > 0 ? NS : 1; /* T = 0 still passes dhT to dh0 */
  for (int64_t sg = NL - 1; sg >= 0 && s == M2_OK && BH * P > 0; sg--) {
    int64_t t0 = sg * seg, L = d.T - t0 < seg ? d.T - t0 : seg;
    if (L < 0) L = 0;
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, SSD_R_DISPATCH(ssd_cols(N), k_ssd_bwd_seg<T, R><<<(unsigned)(BH * ntile), W * 32,
                                                                              (size_t)W * row * 4, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(dY), PC(dH), (const float *)m2_data(c->saved[0]),
        (float *)m2_data(car), (float *)m2_data(scr), (float *)m2_data(part), (float *)m2_data(dap), PT(din[0]),
        PT(din[5]), d.B, d.T, d.H, P, d.G, (int)N, (int)seg, NS, sg, ntile, sg == NL - 1)));
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && L > 0 && (din[3] || din[4]) && d.G > 0) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_bc<T><<<cu_grid(d.B * L * d.G * 2 * N, 256), 256, 0, st>>>(
          (const float *)m2_data(part), PT(din[4]), PT(din[3]), d.B, d.T, d.H, d.G, (int)N, (int)seg, t0, L, ntile));
      e = cudaGetLastError();
    }
    if (e == cudaSuccess && L > 0 && din[1]) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_dt<T><<<cu_grid(BH * L, 256), 256, 0, st>>>(
          (const float *)m2_data(part), PT(din[1]), d.B, d.T, d.H, (int)N, (int)seg, t0, L, ntile));
      e = cudaGetLastError();
    }
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: backward kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  if (s == M2_OK && din[2] && d.H > 0) {
    if (BH * P > 0) {
      CU_FLOAT_DISPATCH(dt, k_ssd_bwd_finish_da<T><<<cu_grid(d.H, 256), 256, 0, st>>>(
          (const float *)m2_data(dap), PT(din[2]), d.B, d.H, ntile));
    }
    cudaError_t e = BH * P > 0 ? cudaGetLastError()
                               : cudaMemsetAsync(m2_data(din[2]), 0, (size_t)d.H * m2_elsize(din[2]), st);
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: backward kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  m2_release(dY), m2_release(dH), m2_release(scr), m2_release(part), m2_release(car), m2_release(dap);
  for (int i = 0; i < 6; i++) {
    if (s == M2_OK) c->din[i] = din[i];
    else m2_release(din[i]);
  }
  return s;
}
