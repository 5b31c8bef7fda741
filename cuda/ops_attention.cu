/* ops_attention.cu — softmax attention (DESIGN 3.4, grouped-query heads, causal or full) and rotary
 * embedding on CUDA. These kernels compute in fp32 (f32 or bf16 storage) and serve every call except f32 calls with
 * bf16 products (m2_attention_attr.bf16, m2_matmul_precision) and head dim 32 / 64 / 128, which run on tensor cores
 * (cuda/attention_tc.cu; with M2_ATTN_V2, the default, also bf16 calls with bf16 products, which the dispatcher then leaves
 * unconverted). The calls' attributes (m2_attention_attr, m2_rope_attr) were checked by the public
 * functions; here only what these kernels take (f32 / bf16, head dims up to 512, sequences below 2^31).
 *
 * attention forward: a block holds 8 query rows of one (b, h), one warp a row (lane l holds the
 * dims d = l + 32 r); keys and values pass through shared memory 32 at a time; each lane scores one
 * key of the tile, and the row keeps the online-softmax statistics (max m, sum l) and the rescaled
 * output accumulator. No T x S matrix exists anywhere. out = {o}, saved[0] = lse (B,H,T) fp32
 * (-inf for a causal row that sees no key, whose output is 0).
 * backward (flash-style, from o, lse and do; P_ts = exp(scale q_t.k_s - lse_t), D_t = do_t.o_t,
 * dS_ts = P_ts (do_t.v_s - D_t)): kernel 1 walks the keys per query row -> dq_t = scale sum_s dS_ts k_s
 * (and writes D_t); kernel 2 walks the queries per key row, over every query head sharing the kv head
 * -> dk_s = scale sum_t dS_ts q_t, dv_s = sum_t P_ts do_t. Fixed summation order (deterministic).
 *
 * rope: one thread a pair (i, i + D/2); the angle (t + offset) theta^(-2i/D) in double, as on the CPU;
 * backward rotates the gradient by the opposite angle. f32 or bf16 storage, fp32 arithmetic. */
#include "ops.h"
#include "ops_common.cuh"
#include "ops_mixers_entry.h"
#include "../core/ops_attention.h"
#include "attention_tc.h"

#define ATT_MAX_D 512 /* 16 dims a lane */
#define ATT_QW 8      /* query rows (warps) a block */
#define ATT_KW 8      /* key rows (warps) a block in the dk/dv kernel */

static m2_tensor *att_as(m2_tensor *t, m2_dtype dt) {
  if (t->dtype == dt && m2_is_contiguous(t)) { m2_retain(t); return t; }
  return m2_clone_raw(t, dt, t->device);
}

/* What these kernels take beyond the public check (core/ops_attention.c): their dtypes and limits. */
static m2_status att_supports(const m2_opcall *c, const m2_attention_attr *d) {
  static const char *names[3] = {"q", "k", "v"};
  const char *op = "attention";
  for (int i = 0; i < 3; i++) M2_TRY(cu_check_float(c->in[i], op, names[i]));
  if (d->D < 1) return m2_fail(M2_ERR_SHAPE, "%s: the head dim D must be at least 1", op);
  if (d->D > ATT_MAX_D)
    return m2_fail(M2_ERR_UNSUPPORTED, "%s: the CUDA kernels take head dim D <= %d (got %lld)", op, ATT_MAX_D,
                   (long long)d->D);
  if (d->T > 0x7fffffffLL || d->S > 0x7fffffffLL)
    return m2_fail(M2_ERR_UNSUPPORTED, "%s: sequences longer than 2^31 - 1", op);
  return M2_OK;
}

/* Keys query t may read: s < att_n(t). */
__device__ __forceinline__ int64_t att_n(int64_t t, int64_t Tq, int64_t S, bool causal) {
  if (!causal) return S;
  int64_t n = t + S - Tq + 1;
  return n < 0 ? 0 : n > S ? S : n;
}

/* The query row of warp w in a (ceil(T/QW), B*H) grid: batch b, head h, kv head kh, row t (on: t < Tq), the keys
 * it reads (n) and the most any row of the block reads (nmax: the key tiles the block stages). */
struct att_qrow { int64_t bh, b, h, kh, t, n, nmax; bool on; };
__device__ __forceinline__ att_qrow att_qrow_at(int w, int64_t Tq, int64_t H, int64_t S, int64_t Hkv, bool causal) {
  att_qrow r;
  r.bh = blockIdx.y, r.b = r.bh / H, r.h = r.bh % H, r.kh = r.h / (H / Hkv);
  r.t = (int64_t)blockIdx.x * ATT_QW + w;
  int64_t tlast = (int64_t)blockIdx.x * ATT_QW + ATT_QW - 1;
  if (tlast >= Tq) tlast = Tq - 1;
  r.on = r.t < Tq;
  r.n = r.on ? att_n(r.t, Tq, S, causal) : 0, r.nmax = att_n(tlast, Tq, S, causal);
  return r;
}

/* Stage rows r0 .. r0 + 31 of head hh of x and y (B, L, NH, D), batch b, in shared memory as floats: xs with
 * row stride D + 1, ys with row stride ys_ld; rows past L read 0. Every thread of the block takes part. */
template <class T>
__device__ __forceinline__ void att_tile(const T *x, const T *y, int64_t b, int64_t L, int64_t NH, int64_t hh,
                                         int64_t r0, int D, float *xs, float *ys, int ys_ld) {
  for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x) {
    int jj = idx / D, dd = idx % D;
    int64_t r = r0 + jj;
    float xv = 0, yv = 0;
    if (r < L) {
      int64_t off = ((b * L + r) * NH + hh) * D + dd;
      xv = to_f(x[off]), yv = to_f(y[off]);
    }
    xs[jj * (D + 1) + dd] = xv;
    ys[jj * ys_ld + dd] = yv;
  }
}

/* acc[r] (dim lane + 32 r) += sum over j < jmax of lane j's p times row j of xs (row stride ld). */
template <int R>
__device__ __forceinline__ void att_accum(float (&acc)[R], float p, const float *xs, int ld, int jmax, int lane, int D) {
  for (int j = 0; j < jmax; j++) {
    float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
    for (int r = 0; r < R; r++) {
      int dd = lane + 32 * r;
      if (dd < D) acc[r] += pj * xs[j * ld + dd];
    }
  }
}

/* row[dd] = acc[r] * f for the dims dd = lane + 32 r < D of this lane. */
template <class T, int R>
__device__ __forceinline__ void att_store(T *row, const float (&acc)[R], float f, int lane, int D) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    int dd = lane + 32 * r;
    if (dd < D) row[dd] = from_f<T>(acc[r] * f);
  }
}

/* ================= forward ================= */

/* grid (ceil(T/QW), B*H), block QW warps. smem: Ks (32, D+1), Vs (32, D), qs (QW, D). */
template <class T, int R>
__global__ void k_att_fwd(const T *q, const T *k, const T *v, T *o, float *lse, int64_t Tq, int64_t H, int64_t S,
                          int64_t Hkv, int D, float scale, bool causal) {
  extern __shared__ float sm[];
  float *Ks = sm, *Vs = Ks + 32 * (D + 1), *qs = Vs + 32 * D;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const auto [bh, b, h, kh, t, n, nmax, on] = att_qrow_at(w, Tq, H, S, Hkv, causal);
  if (on)
    for (int dd = lane; dd < D; dd += 32) qs[w * D + dd] = to_f(q[((b * Tq + t) * H + h) * D + dd]);
  float m = -INFINITY, l = 0, acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0;
  for (int64_t s0 = 0; s0 < nmax; s0 += 32) {
    __syncthreads();
    att_tile(k, v, b, S, Hkv, kh, s0, D, Ks, Vs, D);
    __syncthreads();
    if (!on || s0 >= n) continue; /* warp-uniform */
    int64_t s = s0 + lane;
    float sc = -INFINITY;
    if (s < n) {
      float dot = 0;
      for (int dd = 0; dd < D; dd++) dot += qs[w * D + dd] * Ks[lane * (D + 1) + dd];
      sc = scale * dot;
    }
    float mt = warp_max(sc), mnew = fmaxf(m, mt);
    float alpha = expf(m - mnew), p = s < n ? expf(sc - mnew) : 0.0f;
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] *= alpha;
    att_accum(acc, p, Vs, D, n - s0 < 32 ? (int)(n - s0) : 32, lane, D);
    m = mnew;
  }
  if (!on) return;
  float inv = l > 0 ? 1.0f / l : 0.0f;
  att_store(o + ((b * Tq + t) * H + h) * D, acc, inv, lane, D);
  if (lane == 0) lse[bh * Tq + t] = l > 0 ? m + logf(l) : -INFINITY;
}

/* ================= backward ================= */

/* dq and D_t. grid (ceil(T/QW), B*H), block QW warps. smem: Ks, Vs (32, D+1), qs, dos (QW, D). */
template <class T, int R>
__global__ void k_att_bwd_dq(const T *q, const T *k, const T *v, const T *o, const T *dout, const float *lse,
                             float *Dbuf, T *dq, int64_t Tq, int64_t H, int64_t S, int64_t Hkv, int D, float scale,
                             bool causal) {
  extern __shared__ float sm[];
  float *Ks = sm, *Vs = Ks + 32 * (D + 1), *qs = Vs + 32 * (D + 1), *dos = qs + ATT_QW * D;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const auto [bh, b, h, kh, t, n, nmax, on] = att_qrow_at(w, Tq, H, S, Hkv, causal);
  float Dt = 0, L = 0;
  if (on) {
    int64_t row = ((b * Tq + t) * H + h) * D;
    float pd = 0;
    for (int dd = lane; dd < D; dd += 32) {
      float dov = to_f(dout[row + dd]);
      qs[w * D + dd] = to_f(q[row + dd]);
      dos[w * D + dd] = dov;
      pd += dov * to_f(o[row + dd]);
    }
    Dt = warp_sum(pd);
    L = lse[bh * Tq + t];
    if (lane == 0) Dbuf[bh * Tq + t] = Dt;
  }
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0;
  for (int64_t s0 = 0; s0 < nmax; s0 += 32) {
    __syncthreads();
    att_tile(k, v, b, S, Hkv, kh, s0, D, Ks, Vs, D + 1);
    __syncthreads();
    if (!on || s0 >= n) continue; /* warp-uniform */
    int64_t s = s0 + lane;
    float dS = 0;
    if (s < n) {
      float qk = 0, dp = 0;
      for (int dd = 0; dd < D; dd++) {
        qk += qs[w * D + dd] * Ks[lane * (D + 1) + dd];
        dp += dos[w * D + dd] * Vs[lane * (D + 1) + dd];
      }
      dS = expf(scale * qk - L) * (dp - Dt);
    }
    att_accum(acc, dS, Ks, D + 1, n - s0 < 32 ? (int)(n - s0) : 32, lane, D);
  }
  if (!on || !dq) return;
  att_store(dq + ((b * Tq + t) * H + h) * D, acc, scale, lane, D);
}

/* dk, dv. grid (ceil(S/KW), B*Hkv), block KW warps, warp = key row s; loops over the query heads of the
 * group and the query rows that see s. smem: Qs, dOs (32, D+1), ks, vs (KW, D), ls, Ds (32). */
template <class T, int R>
__global__ void k_att_bwd_dkv(const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *Dbuf,
                              T *dk, T *dv, int64_t Tq, int64_t H, int64_t S, int64_t Hkv, int D, float scale,
                              bool causal) {
  extern __shared__ float sm[];
  float *Qs = sm, *dOs = Qs + 32 * (D + 1), *ks = dOs + 32 * (D + 1), *vs = ks + ATT_KW * D, *ls = vs + ATT_KW * D,
        *Ds = ls + 32;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int64_t bkh = blockIdx.y, b = bkh / Hkv, kh = bkh % Hkv, rep = H / Hkv;
  int64_t s = (int64_t)blockIdx.x * ATT_KW + w, sfirst = (int64_t)blockIdx.x * ATT_KW;
  bool on = s < S;
  if (on)
    for (int dd = lane; dd < D; dd += 32) {
      int64_t off = ((b * S + s) * Hkv + kh) * D + dd;
      ks[w * D + dd] = to_f(k[off]);
      vs[w * D + dd] = to_f(v[off]);
    }
  /* query t sees key s iff s < att_n(t), i.e. t >= s - (S - T) when causal */
  int64_t tstart = causal ? sfirst - (S - Tq) : 0;
  if (tstart < 0) tstart = 0;
  float ak[R], av[R];
#pragma unroll
  for (int r = 0; r < R; r++) ak[r] = av[r] = 0;
  for (int64_t hh = 0; hh < rep; hh++) {
    int64_t h = kh * rep + hh, bh = b * H + h;
    for (int64_t t0 = tstart; t0 < Tq; t0 += 32) {
      __syncthreads();
      att_tile(q, dout, b, Tq, H, h, t0, D, Qs, dOs, D + 1);
      if (threadIdx.x < 32) {
        int64_t t = t0 + threadIdx.x;
        ls[threadIdx.x] = t < Tq ? lse[bh * Tq + t] : 0.0f;
        Ds[threadIdx.x] = t < Tq ? Dbuf[bh * Tq + t] : 0.0f;
      }
      __syncthreads();
      if (!on) continue; /* warp-uniform */
      int64_t t = t0 + lane;
      bool vis = t < Tq && s < att_n(t, Tq, S, causal);
      float P = 0, dS = 0;
      if (vis) {
        float qk = 0, dp = 0;
        for (int dd = 0; dd < D; dd++) {
          qk += Qs[lane * (D + 1) + dd] * ks[w * D + dd];
          dp += dOs[lane * (D + 1) + dd] * vs[w * D + dd];
        }
        P = expf(scale * qk - ls[lane]);
        dS = P * (dp - Ds[lane]);
      }
      if (!__any_sync(0xffffffffu, vis)) continue;
      for (int j = 0; j < 32; j++) {
        float pj = __shfl_sync(0xffffffffu, P, j), dj = __shfl_sync(0xffffffffu, dS, j);
#pragma unroll
        for (int r = 0; r < R; r++) {
          int dd = lane + 32 * r;
          if (dd < D) {
            av[r] += pj * dOs[j * (D + 1) + dd];
            ak[r] += dj * Qs[j * (D + 1) + dd];
          }
        }
      }
    }
  }
  if (!on) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    int dd = lane + 32 * r;
    if (dd >= D) continue;
    int64_t off = ((b * S + s) * Hkv + kh) * D + dd;
    if (dk) dk[off] = from_f<T>(scale * ak[r]);
    if (dv) dv[off] = from_f<T>(av[r]);
  }
}

/* ================= launchers ================= */

/* Allow `bytes` of dynamic shared memory for kernel f (needed above 48 KiB). */
template <class F> static cudaError_t att_smem(F f, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* Launch kernel<T, R> (T from dtype dt, R = cu_lane_regs(D)) on (grid, warps x 32) with `bytes` of dynamic shared
 * memory and the arguments that follow (PC / PT may name T); e = the launch's error. */
#define ATT_LAUNCH(e, dt, D, kernel, grid, warps, bytes, st, ...)             \
  CU_FLOAT_DISPATCH(dt, CU_R_DISPATCH(cu_lane_regs(D), {                         \
    e = att_smem(kernel<T, R>, bytes);                                        \
    if (e == cudaSuccess) {                                                   \
      kernel<T, R><<<grid, (warps) * 32, bytes, st>>>(__VA_ARGS__);           \
      e = cudaGetLastError();                                                 \
    }                                                                         \
  }))

extern "C" m2_status m2_cuda_attention_fwd(m2_opcall *c) {
  const m2_attention_attr d = *M2_ATTR(c, m2_attention_attr);
  M2_TRY(att_supports(c, &d));
  float scale = (float)d.scale;
  bool causal = d.causal;
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t sl[3] = {d.B, d.H, d.T};
  m2_tensor *o = m2_empty(dt, dev, 4, c->in[0]->shape), *lse = m2_empty(M2_F32, dev, 3, sl);
  m2_status s = (o && lse) ? M2_OK : m2_errcode();
  int64_t nq = d.B * d.H * d.T;
  if (s == M2_OK && nq > 0 && m2_att_tc_applies(c, &d)) {
    s = m2_att_tc_fwd(c, &d, st, o, lse);
  } else if (s == M2_OK && nq > 0) {
    int D = (int)d.D;
    size_t bytes = sizeof(float) * (size_t)(32 * (2 * D + 1) + ATT_QW * D);
    dim3 grid((unsigned)((d.T + ATT_QW - 1) / ATT_QW), (unsigned)(d.B * d.H));
    m2_tensor **in = c->in;
    cudaError_t e = cudaSuccess;
    ATT_LAUNCH(e, dt, D, k_att_fwd, grid, ATT_QW, bytes, st, PC(in[0]), PC(in[1]), PC(in[2]), PT(o),
               (float *)m2_data(lse), d.T, d.H, d.S, d.Hkv, D, scale, causal);
    if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "attention: forward kernel launch failed: %s", cudaGetErrorString(e));
  }
  if (s != M2_OK) {
    m2_release(o), m2_release(lse);
    return s;
  }
  c->n_out = 1;
  c->out[0] = o;
  m2_save(c, lse);
  m2_release(lse);
  return M2_OK;
}

extern "C" m2_status m2_cuda_attention_bwd(m2_opcall *c) {
  const m2_attention_attr d = *M2_ATTR(c, m2_attention_attr);
  if (c->n_saved < 1 || !c->saved[0] || !c->out[0] || c->saved[0]->dtype != M2_F32)
    return m2_fail(M2_ERR_AUTOGRAD, "attention: backward without the saved output and log-sum-exp");
  float scale = (float)d.scale;
  bool causal = d.causal;
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  int64_t sl[3] = {d.B, d.H, d.T};
  m2_tensor *dO = att_as(c->dout[0], dt), *o = att_as(c->out[0], dt), *Db = m2_empty(M2_F32, dev, 3, sl);
  m2_tensor *din[3] = {0};
  m2_status s = (dO && o && Db) ? M2_OK : m2_errcode();
  for (int i = 0; i < 3 && s == M2_OK; i++)
    if (c->needs_din[i] && !(din[i] = cu_zeros(dt, dev, 4, c->in[i]->shape))) s = m2_errcode();
  int D = (int)d.D;
  m2_tensor **in = c->in;
  const float *L = (const float *)m2_data(c->saved[0]);
  cudaError_t e = cudaSuccess;
  const bool tc = m2_att_tc_applies(c, &d);
  if (s == M2_OK && tc && d.B * d.H * d.T > 0) {
    s = m2_att_tc_bwd(c, &d, st, dO, o, L, (float *)m2_data(Db), din);
  } else if (s == M2_OK && d.B * d.H * d.T > 0 && D > 0) {
    size_t bytes = sizeof(float) * (size_t)(64 * (D + 1) + 2 * ATT_QW * D);
    dim3 grid((unsigned)((d.T + ATT_QW - 1) / ATT_QW), (unsigned)(d.B * d.H));
    ATT_LAUNCH(e, dt, D, k_att_bwd_dq, grid, ATT_QW, bytes, st, PC(in[0]), PC(in[1]), PC(in[2]), PC(o), PC(dO), L,
               (float *)m2_data(Db), PT(din[0]), d.T, d.H, d.S, d.Hkv, D, scale, causal);
  }
  if (s == M2_OK && !tc && e == cudaSuccess && (din[1] || din[2]) && d.B * d.Hkv * d.S > 0 && d.T > 0 && D > 0) {
    size_t bytes = sizeof(float) * (size_t)(64 * (D + 1) + 2 * ATT_KW * D + 64);
    dim3 grid((unsigned)((d.S + ATT_KW - 1) / ATT_KW), (unsigned)(d.B * d.Hkv));
    ATT_LAUNCH(e, dt, D, k_att_bwd_dkv, grid, ATT_KW, bytes, st, PC(in[0]), PC(in[1]), PC(in[2]), PC(dO), L,
               (const float *)m2_data(Db), PT(din[1]), PT(din[2]), d.T, d.H, d.S, d.Hkv, D, scale, causal);
  }
  if (s == M2_OK && e != cudaSuccess)
    s = m2_fail(M2_ERR_CUDA, "attention: backward kernel launch failed: %s", cudaGetErrorString(e));
  m2_release(dO), m2_release(o), m2_release(Db);
  for (int i = 0; i < 3; i++) {
    if (s == M2_OK) c->din[i] = din[i];
    else m2_release(din[i]);
  }
  return s;
}

/* ================= rope ================= */

/* y (B,T,H,D) = x rotated by sign * angle; one thread a pair. */
template <class T>
__global__ void k_rope(const T *x, T *y, int64_t Tn, int64_t H, int64_t D, double log_theta, int64_t offset,
                       float sign, int64_t npairs) {
  int64_t D2 = D / 2;
  CU_GRID_STRIDE(idx, npairs) {
    int64_t i = idx % D2, row = idx / D2, t = (row / H) % Tn;
    double a = (double)(t + offset) * exp(-(2.0 * (double)i / (double)D) * log_theta), sd, cd;
    sincos(a, &sd, &cd);
    float cs = (float)cd, sn = sign * (float)sd;
    float x0 = to_f(x[row * D + i]), x1 = to_f(x[row * D + i + D2]);
    y[row * D + i] = from_f<T>(x0 * cs - x1 * sn);
    y[row * D + i + D2] = from_f<T>(x0 * sn + x1 * cs);
  }
}

static m2_status rope_run(m2_opcall *c, m2_tensor *src, m2_tensor **dst, float sign) {
  m2_tensor *x = c->in[0];
  const m2_rope_attr *a = M2_ATTR(c, m2_rope_attr);
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  m2_tensor *xs = att_as(src, x->dtype);
  if (!xs) return m2_errcode();
  m2_tensor *y = m2_empty(x->dtype, x->device, 4, x->shape);
  if (!y) { m2_release(xs); return m2_errcode(); }
  int64_t np = m2_numel(x) / 2;
  cudaError_t e = cudaSuccess;
  if (np > 0) {
    CU_FLOAT_DISPATCH(x->dtype, k_rope<T><<<cu_grid(np, 256), 256, 0, st>>>(
        (const T *)m2_data(xs), (T *)m2_data(y), x->shape[1], x->shape[2], x->shape[3], log(a->theta), a->offset, sign,
        np));
    e = cudaGetLastError();
  }
  m2_release(xs);
  if (e != cudaSuccess) {
    m2_release(y);
    return m2_fail(M2_ERR_CUDA, "rope: kernel launch failed: %s", cudaGetErrorString(e));
  }
  *dst = y;
  return M2_OK;
}

extern "C" m2_status m2_cuda_rope_fwd(m2_opcall *c) {
  M2_TRY(cu_check_float(c->in[0], "rope", "x")); /* the rest was checked by m2_rope */
  M2_TRY(rope_run(c, c->in[0], &c->out[0], 1.0f));
  c->n_out = 1;
  return M2_OK;
}

extern "C" m2_status m2_cuda_rope_bwd(m2_opcall *c) {
  if (!c->needs_din[0]) return M2_OK;
  return rope_run(c, c->dout[0], &c->din[0], -1.0f);
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_attention(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_attention, m2_cuda_attention_fwd, m2_cuda_attention_bwd},
      {&m2_op_rope, m2_cuda_rope_fwd, m2_cuda_rope_bwd},
  };
  M2_TRY(m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0])));
  /* all-bf16 attention calls stay bf16 where the M2_ATTN_V2 tensor-core path takes them (on by default) */
  return m2_cast_register_native(M2_CUDA, &m2_op_attention, m2_att_tc_takes_bf16);
}
