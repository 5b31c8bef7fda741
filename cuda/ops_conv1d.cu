/* ops_conv1d.cu — CUDA depthwise causal conv1d (the short conv in front of the mixers), f32 / bf16 in fp32 (a bf16 x
 * with f32 weights too: conv_param).
 *   x (B, T, C), w (C, W), bias (C) or NULL -> y (B, T, C)
 *   y[b,t,c] = bias[c] + sum_j w[c,j] x[b, t-(W-1)+j, c]
 *   dx[b,s,c] = sum_j w[c,j] dy[b, s+(W-1)-j, c];   dw[c,j] = sum_{b,t} dy[b,t,c] x[b, t-(W-1)+j, c];
 *   dbias[c] = sum_{b,t} dy[b,t,c]  (dw and dbias in one deterministic column reduction).
 * Kernel widths 2, 3, 4 (the layers use 4) take the windowed kernels: a thread owns one channel over a chunk of
 * CONV_CR consecutive rows, keeps the last W - 1 inputs (or the next W gradients) in registers, so each element is
 * loaded once and the row's time index is counted, not divided; dw and dbias come from per-chunk partial sums
 * reduced in a fixed order. Other widths take the per-element kernels below them. */
#include "ops.h"
#include "ops_common.cuh"

template <class T, class TW = T>
__global__ void k_conv_fwd(const T *x, const TW *w, const TW *bias, int64_t Tn, int64_t C, int64_t W, int64_t total,
                           T *y) {
  CU_GRID_STRIDE(i, total) {
    int64_t c = i % C, row = i / C, t = row % Tn; /* row = b*T + t */
    float s = bias ? to_f(bias[c]) : 0.0f;
    for (int64_t j = 0; j < W; j++) {
      int64_t ts = t - (W - 1) + j;
      if (ts >= 0) s += to_f(w[c * W + j]) * to_f(x[(row - t + ts) * C + c]);
    }
    y[i] = from_f<T>(s);
  }
}
template <class T, class TW = T>
__global__ void k_conv_dx(const T *dy, const TW *w, int64_t Tn, int64_t C, int64_t W, int64_t total, T *dx) {
  CU_GRID_STRIDE(i, total) {
    int64_t c = i % C, row = i / C, s = row % Tn;
    float acc = 0;
    for (int64_t j = 0; j < W; j++) {
      int64_t t = s + (W - 1) - j;
      if (t < Tn) acc += to_f(w[c * W + j]) * to_f(dy[(row - s + t) * C + c]);
    }
    dx[i] = from_f<T>(acc);
  }
}
/* a < W: dy[k, c] x[k - (W-1) + a, c] (0 before t = 0); a == W: dy[k, c]. k = b*T + t. */
template <class T> struct load_conv_dw {
  const T *x, *dy;
  int64_t Tn, C, W;
  __device__ float operator()(int64_t a, int64_t k, int64_t c) const {
    float g = to_f(dy[k * C + c]);
    if (a == W) return g;
    int64_t t = k % Tn, ts = t - (W - 1) + a;
    return ts < 0 ? 0.0f : g * to_f(x[(k - (W - 1) + a) * C + c]);
  }
};

/* ---------------- windowed kernels (W = 2, 3, 4) ---------------- */

#define CONV_CR 64  /* rows (b, t) a chunk */
#define CONV_CT 128 /* channels (threads) a block */

/* Grid for the windowed kernels: channels in x, chunks of rows in y (a chunk-stride loop covers the rest). */
static dim3 conv_grid(int64_t rows, int64_t C) {
  int64_t nch = (rows + CONV_CR - 1) / CONV_CR;
  return dim3((unsigned)((C + CONV_CT - 1) / CONV_CT), (unsigned)(nch < 65535 ? nch : 65535));
}

/* y rows of chunks for channel c: win[k] holds x at t - (W - 1) + k (0 before the sequence starts). */
template <class T, int W, class TW = T>
__global__ void k_conv_fwd_win(const T *x, const TW *w, const TW *bias, int64_t Tn, int64_t C, int64_t rows, T *y) {
  const int64_t c = (int64_t)blockIdx.x * CONV_CT + threadIdx.x;
  if (c >= C) return;
  float wr[W], win[W];
#pragma unroll
  for (int j = 0; j < W; j++) wr[j] = to_f(w[c * W + j]);
  const float bz = bias ? to_f(bias[c]) : 0.0f;
  for (int64_t r0 = (int64_t)blockIdx.y * CONV_CR; r0 < rows; r0 += (int64_t)gridDim.y * CONV_CR) {
    const int64_t r1 = r0 + CONV_CR < rows ? r0 + CONV_CR : rows;
    int64_t t = r0 % Tn;
#pragma unroll
    for (int k = 0; k < W - 1; k++) win[k] = t - (W - 1) + k >= 0 ? to_f(x[(r0 - (W - 1) + k) * C + c]) : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
      win[W - 1] = to_f(x[r * C + c]);
      float s = bz;
#pragma unroll
      for (int j = 0; j < W; j++) s += wr[j] * win[j];
      y[r * C + c] = from_f<T>(s);
      if (++t == Tn) { /* the next row starts a new sequence */
        t = 0;
#pragma unroll
        for (int k = 0; k < W - 1; k++) win[k] = 0.0f;
      } else {
#pragma unroll
        for (int k = 0; k < W - 1; k++) win[k] = win[k + 1];
      }
    }
  }
}

/* dx[s] = sum_j w[j] dy[s + (W - 1) - j]: fut[k] holds dy at s + k (0 past the sequence's end). */
template <class T, int W, class TW = T>
__global__ void k_conv_dx_win(const T *dy, const TW *w, int64_t Tn, int64_t C, int64_t rows, T *dx) {
  const int64_t c = (int64_t)blockIdx.x * CONV_CT + threadIdx.x;
  if (c >= C) return;
  float wr[W], fut[W];
#pragma unroll
  for (int j = 0; j < W; j++) wr[j] = to_f(w[c * W + j]);
  for (int64_t r0 = (int64_t)blockIdx.y * CONV_CR; r0 < rows; r0 += (int64_t)gridDim.y * CONV_CR) {
    const int64_t r1 = r0 + CONV_CR < rows ? r0 + CONV_CR : rows;
    int64_t t = r0 % Tn;
#pragma unroll
    for (int k = 0; k < W - 1; k++) fut[k + 1] = t + k < Tn ? to_f(dy[(r0 + k) * C + c]) : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
#pragma unroll
      for (int k = 0; k < W - 1; k++) fut[k] = fut[k + 1];
      fut[W - 1] = t + W - 1 < Tn ? to_f(dy[(r + W - 1) * C + c]) : 0.0f;
      float a = 0.0f;
#pragma unroll
      for (int j = 0; j < W; j++) a += wr[j] * fut[W - 1 - j];
      dx[r * C + c] = from_f<T>(a);
      if (++t == Tn && r + 1 < r1) { /* a new sequence: its first W - 1 gradients */
        t = 0;
#pragma unroll
        for (int k = 0; k < W - 1; k++) fut[k + 1] = k < Tn ? to_f(dy[(r + 1 + k) * C + c]) : 0.0f;
      }
    }
  }
}

/* part[ch][j][c] (j < W): sum over the chunk's rows of dy x at t - (W - 1) + j; part[ch][W][c]: sum of dy. */
template <class T, int W>
__global__ void k_conv_dw_win(const T *x, const T *dy, int64_t Tn, int64_t C, int64_t rows, float *part) {
  const int64_t c = (int64_t)blockIdx.x * CONV_CT + threadIdx.x;
  if (c >= C) return;
  float win[W];
  for (int64_t r0 = (int64_t)blockIdx.y * CONV_CR; r0 < rows; r0 += (int64_t)gridDim.y * CONV_CR) {
    const int64_t r1 = r0 + CONV_CR < rows ? r0 + CONV_CR : rows;
    int64_t t = r0 % Tn;
    float acc[W + 1];
#pragma unroll
    for (int j = 0; j <= W; j++) acc[j] = 0.0f;
#pragma unroll
    for (int k = 0; k < W - 1; k++) win[k] = t - (W - 1) + k >= 0 ? to_f(x[(r0 - (W - 1) + k) * C + c]) : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
      win[W - 1] = to_f(x[r * C + c]);
      const float g = to_f(dy[r * C + c]);
#pragma unroll
      for (int j = 0; j < W; j++) acc[j] += g * win[j];
      acc[W] += g;
      if (++t == Tn) {
        t = 0;
#pragma unroll
        for (int k = 0; k < W - 1; k++) win[k] = 0.0f;
      } else {
#pragma unroll
        for (int k = 0; k < W - 1; k++) win[k] = win[k + 1];
      }
    }
    float *p = part + (r0 / CONV_CR) * (W + 1) * C + c;
#pragma unroll
    for (int j = 0; j <= W; j++) p[j * C] = acc[j];
  }
}

/* out[i] = sum over nch chunks of part[ch][i] (i < n = (W + 1) C), chunk order fixed. */
__global__ void k_conv_dw_sum(const float *part, int64_t nch, int64_t n, float *out) {
  CU_GRID_STRIDE(i, n) {
    float s = 0.0f;
    for (int64_t ch = 0; ch < nch; ch++) s += part[ch * n + i];
    out[i] = s;
  }
}

#define CONV_W_DISPATCH(W, ...)                              \
  do {                                                       \
    switch (W) {                                             \
      case 2: { constexpr int KW = 2; __VA_ARGS__; } break;  \
      case 3: { constexpr int KW = 3; __VA_ARGS__; } break;  \
      default: { constexpr int KW = 4; __VA_ARGS__; } break; \
    }                                                        \
  } while (0)
static bool conv_windowed(int64_t W) { return W >= 2 && W <= 4; }

/* A call whose x, w and bias do not share one dtype (a bf16 x with an f32 weight, the model's call; the dispatcher
 * lets such calls through only while the mixed-kernel switch is on, M2_OP_MIXED_KERNELS_OPT) reads w and bias in
 * f32: an f32 one itself, a bf16 one's exact f32 copy (C W or C elements). The kernels then read x (and dy) in x's
 * dtype and the weights in f32, compute in f32 in the order of the f32 kernels and round y and dx once to x's dtype
 * (in[0]'s: M2_OP_CAST_IN0), dw and dbias once to their own: the cast path's values. */
static m2_tensor *conv_param(m2_tensor *p) {
  if (!p) return NULL;
  if (p->dtype == M2_F32) { m2_retain(p); return p; }
  return cu_as(p, M2_F32);
}
static bool conv_mixed(const m2_tensor *x, const m2_tensor *w, const m2_tensor *bias) {
  return w->dtype != x->dtype || (bias && bias->dtype != x->dtype);
}

/* y = conv(x, w, bias) with x bf16, w and bias f32 (windowed widths or not) */
static void conv_fwd_bf16_f32(const m2_tensor *x, const m2_tensor *w, const m2_tensor *bias, int64_t Tn, int64_t C,
                              int64_t W, int64_t total, m2_tensor *y, cudaStream_t st) {
  const bf16 *px = (const bf16 *)m2_data(x);
  const float *pw = (const float *)m2_data(w), *pb = bias ? (const float *)m2_data(bias) : (const float *)NULL;
  if (conv_windowed(W))
    CONV_W_DISPATCH(W, k_conv_fwd_win<bf16, KW, float><<<conv_grid(total / C, C), CONV_CT, 0, st>>>(
                           px, pw, pb, Tn, C, total / C, (bf16 *)m2_data(y)));
  else
    k_conv_fwd<bf16, float><<<cu_grid(total, 256), 256, 0, st>>>(px, pw, pb, Tn, C, W, total, (bf16 *)m2_data(y));
}
/* dx from dy (bf16) and w (f32) */
static void conv_dx_bf16_f32(const m2_tensor *dy, const m2_tensor *w, int64_t Tn, int64_t C, int64_t W,
                             int64_t total, m2_tensor *dx, cudaStream_t st) {
  const bf16 *pdy = (const bf16 *)m2_data(dy);
  const float *pw = (const float *)m2_data(w);
  if (conv_windowed(W))
    CONV_W_DISPATCH(W, k_conv_dx_win<bf16, KW, float><<<conv_grid(total / C, C), CONV_CT, 0, st>>>(
                           pdy, pw, Tn, C, total / C, (bf16 *)m2_data(dx)));
  else
    k_conv_dx<bf16, float><<<cu_grid(total, 256), 256, 0, st>>>(pdy, pw, Tn, C, W, total, (bf16 *)m2_data(dx));
}

/* in: x, w, bias (may be NULL). out: y (B, T, C). */
extern "C" m2_status m2_cuda_conv1d_causal_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *w = c->in[1], *bias = c->n_in > 2 ? c->in[2] : NULL;
  /* what these kernels take (f32 / bf16); m2_conv1d_causal checked the rest once (shapes; w, bias of x's dtype) */
  M2_TRY(cu_check_float(x, "conv1d_causal", "x"));
  int64_t Tn = x->shape[1], C = x->shape[2], W = w->shape[1], total = m2_numel(x);
  m2_tensor *y = m2_empty(x->dtype, x->device, 3, x->shape);
  if (!y) return m2_errcode();
  c->n_out = 1;
  c->out[0] = y;
  if (total == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(x->device, &st));
  const bool mixed = conv_mixed(x, w, bias);
  if (mixed) { /* the weights in f32 (conv_param); y stays in x's dtype */
    w = conv_param(w);
    bias = conv_param(bias);
    if (!w || (c->n_in > 2 && c->in[2] && !bias)) {
      m2_release(w), m2_release(bias);
      return m2_errcode();
    }
  }
  if (mixed && x->dtype == M2_BF16) conv_fwd_bf16_f32(x, w, bias, Tn, C, W, total, y, st);
  /* (mixed with an f32 x: every operand f32 now, the f32 kernels) */
  else if (conv_windowed(W))
    CU_FLOAT_DISPATCH(x->dtype, CONV_W_DISPATCH(W, k_conv_fwd_win<T, KW><<<conv_grid(total / C, C), CONV_CT, 0, st>>>(
                                                       PC(x), PC(w), PC(bias), Tn, C, total / C, PT(y))));
  else
    CU_FLOAT_DISPATCH(x->dtype, k_conv_fwd<T><<<cu_grid(total, 256), 256, 0, st>>>(
                                    (const T *)m2_data(x), (const T *)m2_data(w), bias ? (const T *)m2_data(bias) : (const T *)NULL,
                                    Tn, C, W, total, (T *)m2_data(y)));
  if (mixed) {
    m2_release(w), m2_release(bias); /* the stream orders any later reuse of a copy's memory after the kernel */
    m2_cuda_mixed_count();
  }
  M2_CUDA_LAUNCH_CHECK("conv1d_causal");
  return M2_OK;
}

extern "C" m2_status m2_cuda_conv1d_causal_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0], *w = c->in[1], *bias = c->n_in > 2 ? c->in[2] : NULL;
  int64_t B = x->shape[0], Tn = x->shape[1], C = x->shape[2], W = w->shape[1], total = m2_numel(x);
  m2_tensor *dy = cu_as(c->dout[0], x->dtype);
  if (!dy) return m2_errcode();
  cudaStream_t st;
  m2_status s = cu_stream(x->device, &st);
  /* a mix (conv_param): dx reads the weight in f32; dw and dbias come from x and dy alone, as below */
  const bool mixed = conv_mixed(x, w, bias);
  m2_tensor *wk = NULL;
  if (s == M2_OK && mixed && c->needs_din[0] && !(wk = conv_param(w))) s = m2_errcode();
  if (s == M2_OK && c->needs_din[0]) {
    m2_tensor *dx = m2_empty(x->dtype, x->device, 3, x->shape);
    if (!dx) s = m2_errcode();
    else {
      c->din[0] = dx;
      if (total > 0 && mixed && x->dtype == M2_BF16) {
        conv_dx_bf16_f32(dy, wk, Tn, C, W, total, dx, st);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
          s = m2_fail(M2_ERR_CUDA, "conv1d_causal backward: launch failed: %s", cudaGetErrorString(e));
      } else if (total > 0) {
        m2_tensor *wd = mixed ? wk : w; /* mixed with an f32 x: the weight in f32, the f32 kernels */
        if (conv_windowed(W))
          CU_FLOAT_DISPATCH(x->dtype, CONV_W_DISPATCH(W, k_conv_dx_win<T, KW><<<conv_grid(total / C, C), CONV_CT, 0, st>>>(
                                                             PC(dy), PC(wd), Tn, C, total / C, PT(dx))));
        else
          CU_FLOAT_DISPATCH(x->dtype, k_conv_dx<T><<<cu_grid(total, 256), 256, 0, st>>>(
                                          (const T *)m2_data(dy), (const T *)m2_data(wd), Tn, C, W, total, (T *)m2_data(dx)));
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "conv1d_causal backward: launch failed: %s", cudaGetErrorString(e));
      }
    }
  }
  bool need_w = c->needs_din[1], need_b = bias && c->needs_din[2];
  if (s == M2_OK && (need_w || need_b)) {
    int64_t sh[2] = {W + 1, C};
    m2_tensor *acc = m2_empty(M2_F32, x->device, 2, sh); /* rows 0..W-1: dw transposed (W, C); row W: dbias */
    if (!acc) s = m2_errcode();
    else if (B * Tn == 0) s = m2_cuda_fill(acc, 0.0);
    else if (conv_windowed(W)) {
      const int64_t rows = B * Tn, nch = (rows + CONV_CR - 1) / CONV_CR, n = (W + 1) * C;
      int64_t np = nch * n;
      m2_tensor *part = m2_empty(M2_F32, x->device, 1, &np); /* (nch, W + 1, C) partial sums */
      if (!part) s = m2_errcode();
      else {
        CU_FLOAT_DISPATCH(x->dtype, CONV_W_DISPATCH(W, k_conv_dw_win<T, KW><<<conv_grid(rows, C), CONV_CT, 0, st>>>(
                                                           PC(x), PC(dy), Tn, C, rows, (float *)m2_data(part))));
        k_conv_dw_sum<<<cu_grid(n, 256), 256, 0, st>>>((const float *)m2_data(part), nch, n, (float *)m2_data(acc));
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) s = m2_fail(M2_ERR_CUDA, "conv1d_causal backward: launch failed: %s", cudaGetErrorString(e));
        m2_release(part);
      }
    } else
      CU_FLOAT_DISPATCH(x->dtype, {
        load_conv_dw<T> L = {(const T *)m2_data(x), (const T *)m2_data(dy), Tn, C, W};
        s = cu_reduce(L, W + 1, B * Tn, C, 1.0f, (float *)m2_data(acc), x->device);
      });
    if (s == M2_OK && need_w) {
      int64_t shw[2] = {C, W}, stw[2] = {1, C};
      m2_tensor *v = m2_view_raw(acc, 2, shw, stw, 0); /* (C, W) view of the (W, C) rows */
      m2_tensor *dw = m2_empty(w->dtype, w->device, 2, w->shape);
      s = v && dw ? m2_cuda_copy(dw, v) : m2_errcode();
      if (dw) c->din[1] = dw;
      m2_release(v);
    }
    if (s == M2_OK && need_b) {
      int64_t one = 1;
      m2_tensor *v = m2_view_raw(acc, 1, &C, &one, W * C); /* row W */
      m2_tensor *db = m2_empty(bias->dtype, bias->device, 1, bias->shape);
      s = v && db ? m2_cuda_copy(db, v) : m2_errcode();
      if (db) c->din[2] = db;
      m2_release(v);
    }
    m2_release(acc);
  }
  m2_release(dy);
  m2_release(wk);
  if (s == M2_OK && mixed) m2_cuda_mixed_count();
  return s;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_conv1d(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_conv1d_causal, m2_cuda_conv1d_causal_fwd, m2_cuda_conv1d_causal_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
