/* ops_gdn.cu — Gated DeltaNet (DESIGN 3.2) on CUDA: a correct recurrent forward/backward, not yet the
 * chunked tensor-core form. The rows "gdn" and "gdn_chunked" both run these recurrent kernels (same
 * results as the CPU reference; the chunk only sets the checkpoint interval, at most 64).
 *
 * The recurrence never mixes the columns of the state S (K x V):
 *   S <- exp(g_t) S ;  v'_j = beta_t (v_tj - S[:,j].k_t) ;  S[:,j] += k_t v'_j ;  o_tj = S[:,j].(scale q_t)
 * so one warp owns one column j (lane l holds rows i = l + 32 r, r < R) and walks the time axis.
 * Forward: y and hT, plus (when a tape node will be recorded) the fp32 states before every seg-th step,
 * saved[0] = (B, H, NS, V, K) (column-major per state, the kernels' own layout), ia[1] = seg.
 * Backward (the CPU file's step formulas), one launch per checkpoint segment, last first: each warp
 * recomputes its column's states of the segment from the checkpoint into scratch, then steps back in
 * time carrying its column of dS. dv and dh0 are per column; dq, dk, dbeta, dg sum over the columns:
 * the warps of a block add theirs in shared memory in a fixed order, and a second kernel adds the
 * blocks' partial sums in a fixed order (deterministic, no atomics). Inputs f32 or bf16, fp32 compute. */
#include "ops_common.cuh"
#include "ops_mixers_entry.h"

#define GDN_MAX_K 512 /* 16 rows a lane */

typedef struct gdn_geom { int64_t B, T, H, K, V; } gdn_geom;

/* t as a contiguous tensor of dtype dt on its device (new ref; t itself when it already is). */
static m2_tensor *gdn_as(m2_tensor *t, m2_dtype dt) {
  if (t->dtype == dt && m2_is_contiguous(t)) { m2_retain(t); return t; }
  return m2_clone_raw(t, dt, t->device);
}

static m2_status gdn_want(const m2_tensor *t, const char *op, const char *arg, const char *form, int nd,
                          const int64_t *shape) {
  bool ok = t->ndim == nd;
  for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
  if (ok) return M2_OK;
  char a[96], b[96];
  return m2_fail(M2_ERR_SHAPE, "%s: %s has shape %s, expected %s = %s", op, arg, m2_shape_str(t, a, sizeof a), form,
                 m2_shape_str_raw(nd, shape, b, sizeof b));
}

/* in = {q, k, v, g, beta, h0}: presence, dtypes (f32 / bf16, all the same), shapes. */
static m2_status gdn_check(m2_opcall *c, const char *op, gdn_geom *d) {
  static const char *names[6] = {"q", "k", "v", "g", "beta", "h0"};
  for (int i = 0; i < 5; i++)
    if (!c->in[i]) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL (only h0 may be omitted)", op, names[i]);
  for (int i = 0; i < 6; i++) {
    if (!c->in[i]) continue;
    M2_TRY(cu_check_float(c->in[i], op, names[i]));
    M2_TRY(m2_check_same_dtype(c->in[0], c->in[i], op));
  }
  m2_tensor *q = c->in[0];
  char a[96];
  if (q->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "%s: q has shape %s, expected 4 dims (B, T, H, K)", op, m2_shape_str(q, a, sizeof a));
  d->B = q->shape[0], d->T = q->shape[1], d->H = q->shape[2], d->K = q->shape[3];
  d->V = c->in[2]->ndim == 4 ? c->in[2]->shape[3] : 0;
  int64_t sv[4] = {d->B, d->T, d->H, d->V}, sh[4] = {d->B, d->H, d->K, d->V};
  M2_TRY(gdn_want(c->in[1], op, "k", "(B, T, H, K)", 4, q->shape));
  M2_TRY(gdn_want(c->in[2], op, "v", "(B, T, H, V)", 4, sv));
  M2_TRY(gdn_want(c->in[3], op, "g", "(B, T, H)", 3, q->shape));
  M2_TRY(gdn_want(c->in[4], op, "beta", "(B, T, H)", 3, q->shape));
  if (c->in[5]) M2_TRY(gdn_want(c->in[5], op, "h0", "(B, H, K, V)", 4, sh));
  if (d->K < 1 || d->V < 1) return m2_fail(M2_ERR_SHAPE, "%s: K and V must be at least 1", op);
  if (d->K > GDN_MAX_K)
    return m2_fail(M2_ERR_UNSUPPORTED, "%s: the CUDA kernels take K <= %d (got K = %lld)", op, GDN_MAX_K,
                   (long long)d->K);
  if (c->ia[0] < 0) return m2_fail(M2_ERR_VALUE, "%s: chunk must be >= 0 (0 = default 64), got %lld", op, (long long)c->ia[0]);
  return M2_OK;
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
    __syncthreads();
    float *dst = part + (((int64_t)tile * B * H + bh) * seg + r) * row;
    for (int x = threadIdx.x; x < row; x += blockDim.x) {
      float s = 0;
      for (int ww = 0; ww < W; ww++) s += red[ww * row + x];
      dst[x] = s;
    }
    __syncthreads();
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

static int gdn_rows(int64_t K) { return K <= 32 ? 1 : K <= 64 ? 2 : K <= 128 ? 4 : K <= 256 ? 8 : 16; }

#define GDN_R_DISPATCH(Rn, ...)                                   \
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

static m2_status gdn_forward(m2_opcall *c) {
  const char *op = c->op->name;
  gdn_geom d;
  M2_TRY(gdn_check(c, op, &d));
  float scale = (float)(c->fa[0] != 0 ? c->fa[0] : 1.0 / sqrt((double)d.K));
  int64_t seg = c->ia[0] > 0 && c->ia[0] < 64 ? c->ia[0] : 64; /* checkpoint interval */
  c->ia[1] = seg;
  int64_t NS = (d.T + seg - 1) / seg;
  bool keep = false; /* a tape node will be recorded: keep the checkpoints */
  for (int i = 0; i < 6; i++) keep |= c->in[i] && c->in[i]->requires_grad;
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t so[4] = {d.B, d.T, d.H, d.V}, sh[4] = {d.B, d.H, d.K, d.V}, sck[5] = {d.B, d.H, NS, d.V, d.K};
  m2_tensor *o = m2_empty(dt, dev, 4, so), *hT = m2_empty(dt, dev, 4, sh);
  m2_tensor *ck = keep ? m2_empty(M2_F32, dev, 5, sck) : NULL;
  m2_status s = (o && hT && (ck || !keep)) ? M2_OK : m2_errcode();
  int64_t nw = d.B * d.H * d.V;
  if (s == M2_OK && nw > 0) {
    unsigned grid = (unsigned)((nw + 3) / 4);
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, GDN_R_DISPATCH(gdn_rows(d.K), k_gdn_fwd<T, R><<<grid, 128, 0, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(in[5]), PT(o), PT(hT),
        ck ? (float *)m2_data(ck) : NULL, d.B, d.T, d.H, (int)d.K, d.V, scale, (int)seg, NS)));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: forward kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  if (s != M2_OK) {
    m2_release(o), m2_release(hT), m2_release(ck);
    return s;
  }
  c->n_out = 2;
  c->out[0] = o;
  c->out[1] = hT;
  if (ck) {
    m2_save(c, ck);
    m2_release(ck);
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_gdn_fwd(m2_opcall *c) { return gdn_forward(c); }
extern "C" m2_status m2_cuda_gdn_chunked_fwd(m2_opcall *c) { return gdn_forward(c); }

extern "C" m2_status m2_cuda_gdn_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  gdn_geom d;
  M2_TRY(gdn_check(c, op, &d));
  int64_t seg = c->ia[1], NS = seg > 0 ? (d.T + seg - 1) / seg : 0;
  if (c->n_saved < 1 || !c->saved[0] || seg < 1 || c->saved[0]->dtype != M2_F32 ||
      m2_numel(c->saved[0]) != d.B * d.H * NS * d.V * d.K)
    return m2_fail(M2_ERR_AUTOGRAD, "%s: backward without the saved CUDA states", op);
  float scale = (float)(c->fa[0] != 0 ? c->fa[0] : 1.0 / sqrt((double)d.K));
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t K = d.K, V = d.V, BH = d.B * d.H, row = 2 * K + 2;
  int W = (int)(49152 / (row * 4)); /* warps (columns) a block: the block's partial rows fit in 48 KiB */
  if (W > 32) W = 32;
  if (W > V) W = (int)V;
  cudaFuncAttributes fattr; /* and as many as the kernel's registers allow in one block */
  cudaError_t fe = cudaSuccess;
  CU_FLOAT_DISPATCH(dt, GDN_R_DISPATCH(gdn_rows(K), fe = cudaFuncGetAttributes(&fattr, k_gdn_bwd_seg<T, R>)));
  if (fe != cudaSuccess) return m2_fail(M2_ERR_CUDA, "%s: cudaFuncGetAttributes failed: %s", op, cudaGetErrorString(fe));
  if (W > fattr.maxThreadsPerBlock / 32) W = fattr.maxThreadsPerBlock / 32;
  if (W < 1) W = 1;
  int ntile = (int)((V + W - 1) / W);
  int64_t nscr = BH * V * seg * K, npart = (int64_t)ntile * BH * seg * row, ncar = BH * V * K;
  m2_tensor *dO = gdn_as(c->dout[0], dt), *dH = gdn_as(c->dout[1], dt);
  m2_tensor *scr = cu_scratch_f32(dev, nscr > 0 ? nscr : 1), *part = cu_scratch_f32(dev, npart > 0 ? npart : 1);
  m2_tensor *car = cu_scratch_f32(dev, ncar > 0 ? ncar : 1);
  m2_tensor *din[6] = {0};
  m2_status s = (dO && dH && scr && part && car) ? M2_OK : m2_errcode();
  for (int i = 0; i < 6 && s == M2_OK; i++)
    if (c->in[i] && c->needs_din[i] && !(din[i] = m2_empty(dt, dev, c->in[i]->ndim, c->in[i]->shape))) s = m2_errcode();
  int64_t NL = NS > 0 ? NS : 1; /* T = 0 still passes dhT to dh0 */
  for (int64_t sg = NL - 1; sg >= 0 && s == M2_OK && BH * V > 0; sg--) {
    int64_t t0 = sg * seg, L = d.T - t0 < seg ? d.T - t0 : seg;
    if (L < 0) L = 0;
    m2_tensor **in = c->in;
    CU_FLOAT_DISPATCH(dt, GDN_R_DISPATCH(gdn_rows(K), k_gdn_bwd_seg<T, R><<<(unsigned)(BH * ntile), W * 32,
                                                                              (size_t)W * row * 4, st>>>(
        PC(in[0]), PC(in[1]), PC(in[2]), PC(in[3]), PC(in[4]), PC(dO), PC(dH), (const float *)m2_data(c->saved[0]),
        (float *)m2_data(car), (float *)m2_data(scr), (float *)m2_data(part), PT(din[2]), PT(din[5]), d.B, d.T, d.H,
        (int)K, V, scale, (int)seg, NS, sg, ntile, sg == NL - 1)));
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && L > 0 && (din[0] || din[1] || din[3] || din[4])) {
      CU_FLOAT_DISPATCH(dt, k_gdn_bwd_finish<T><<<cu_grid(BH * L * row, 256), 256, 0, st>>>(
          (const float *)m2_data(part), PT(din[0]), PT(din[1]), PT(din[4]), PT(din[3]), d.B, d.T, d.H, (int)K,
          (int)seg, t0, L, ntile));
      e = cudaGetLastError();
    }
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "%s: backward kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  m2_release(dO), m2_release(dH), m2_release(scr), m2_release(part), m2_release(car);
  for (int i = 0; i < 6; i++) {
    if (s == M2_OK) c->din[i] = din[i];
    else m2_release(din[i]);
  }
  return s;
}
