/* norm_vec.cuh — rmsnorm / l2norm forward and backward (ops_nn.cu) on 16-byte words, the row held in registers.
 * Unless M2_VEC_MEMBOUND=0.
 *
 * One block of NT = 32 W threads a row of d values (W = 1, 2, 4 or 8 warps); the row is cut at the 16-byte boundaries
 * of its address: a head of h < E values (E = 4 f32 / 8 bf16), nb 16-byte words, a tail of t < E values. Thread i
 * holds words i, i + NT, ..., i + (NV - 1) NT (NV <= 8, registers), head value i (i < h), tail value i (i < t): every
 * load of the row is issued before the reduction, and the output is made from the registers (x is read once).
 *   forward:  y = x r w, r = 1 / sqrt(inv sum x^2 + eps), rs[row] = r
 *   backward: gy = dy w, dx = r (gy - x r inv sum_j gy_j x_j r)   (x and dy held; w read twice, from cache)
 * The per-element formulas are k_norm_fwd / k_norm_bwd's. The row sums are not in their order: a thread sums its head
 * value, its words in order (their values in order), its tail value, then block_sum; the last bits of r (and of the
 * backward's dot product) may differ from the old kernels'.
 * Needs x, y (dy, dx) at the same address mod 16 (then h is the same for all of them); w is read as words where
 * w + h is 16-byte aligned, else one value at a time. Rows longer than 8 x 8 x 32 words run the old kernels. */
#ifndef M2_CUDA_NORM_VEC_CUH
#define M2_CUDA_NORM_VEC_CUH
#include "membound_vec.cuh"

/* the cut of one row: head h values, nb words, tail t values */
struct norm_cut {
  int h, t;
  int64_t nb;
};
template <class T> __device__ __forceinline__ norm_cut norm_cut_of(const T *row, int64_t d) {
  const int E = vec16<T>::E;
  norm_cut c;
  int64_t h = (int64_t)(((16 - ((uintptr_t)row & 15)) & 15) / sizeof(T));
  c.h = (int)(h < d ? h : d);
  c.nb = (d - c.h) / E;
  c.t = (int)(d - c.h - c.nb * E);
  return c;
}
/* wf = w[j0 .. j0 + E), j0 = h + v E: one word where aligned, else E loads; 1 without a weight */
template <class T>
__device__ __forceinline__ void norm_w(const T *w, bool wvec, int64_t j0, float (&wf)[16 / sizeof(T)]) {
  const int E = vec16<T>::E;
  if (!w) {
#pragma unroll
    for (int e = 0; e < E; e++) wf[e] = 1.0f;
  } else if (wvec) {
    vunpack(*reinterpret_cast<const uint4 *>(w + j0), wf);
  } else {
#pragma unroll
    for (int e = 0; e < E; e++) wf[e] = to_f(w[j0 + e]);
  }
}

template <class T, int NV>
__global__ void __launch_bounds__(256) k_norm_fwd_vec(const T *x, const T *w, int64_t d, float inv, float eps, T *y,
                                                      float *rs) {
  const int E = vec16<T>::E;
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const T *xr = x + r * d;
  T *yr = y + r * d;
  const norm_cut c = norm_cut_of(xr, d);
  const uint4 *xb = reinterpret_cast<const uint4 *>(xr + c.h);
  uint4 u[NV];
#pragma unroll
  for (int k = 0; k < NV; k++) { /* every load first */
    int64_t v = tid + (int64_t)k * nt;
    u[k] = v < c.nb ? xb[v] : make_uint4(0, 0, 0, 0);
  }
  float hv = tid < c.h ? to_f(xr[tid]) : 0.0f, tv = tid < c.t ? to_f(xr[c.h + c.nb * E + tid]) : 0.0f;
  float ss = hv * hv;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    float f[E];
    vunpack(u[k], f);
#pragma unroll
    for (int e = 0; e < E; e++) ss += f[e] * f[e];
  }
  ss += tv * tv;
  ss = block_sum(ss, sh);
  float rr = 1.0f / sqrtf(ss * inv + eps);
  if (tid == 0) rs[r] = rr;
  if (tid < c.h) {
    float v = hv * rr;
    yr[tid] = from_f<T>(w ? v * to_f(w[tid]) : v);
  }
  const bool wvec = w && cu_aligned16(w + c.h);
  uint4 *yb = reinterpret_cast<uint4 *>(yr + c.h);
#pragma unroll
  for (int k = 0; k < NV; k++) {
    int64_t v = tid + (int64_t)k * nt;
    if (v >= c.nb) break;
    float f[E], wf[E];
    vunpack(u[k], f);
    norm_w(w, wvec, c.h + v * E, wf);
#pragma unroll
    for (int e = 0; e < E; e++) {
      float q = f[e] * rr;
      f[e] = w ? q * wf[e] : q;
    }
    yb[v] = vpack(f);
  }
  if (tid < c.t) {
    int64_t j = c.h + c.nb * E + tid;
    float v = tv * rr;
    yr[j] = from_f<T>(w ? v * to_f(w[j]) : v);
  }
}

template <class T, int NV>
__global__ void __launch_bounds__(256) k_norm_bwd_vec(const T *x, const T *w, const T *dy, const float *rs, int64_t d,
                                                      float inv, T *dx) {
  const int E = vec16<T>::E;
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const T *xr = x + r * d, *gr = dy + r * d;
  T *dr = dx + r * d;
  const norm_cut c = norm_cut_of(xr, d);
  const uint4 *xb = reinterpret_cast<const uint4 *>(xr + c.h), *gb = reinterpret_cast<const uint4 *>(gr + c.h);
  uint4 ux[NV], ug[NV];
#pragma unroll
  for (int k = 0; k < NV; k++) {
    int64_t v = tid + (int64_t)k * nt;
    ux[k] = v < c.nb ? xb[v] : make_uint4(0, 0, 0, 0);
    ug[k] = v < c.nb ? gb[v] : make_uint4(0, 0, 0, 0);
  }
  const int64_t j_t = c.h + c.nb * E + tid; /* this thread's tail element */
  float hx = tid < c.h ? to_f(xr[tid]) : 0.0f, hg = tid < c.h ? to_f(gr[tid]) : 0.0f;
  float tx = tid < c.t ? to_f(xr[j_t]) : 0.0f, tg = tid < c.t ? to_f(gr[j_t]) : 0.0f;
  float rr = rs[r], dot = 0;
  const bool wvec = w && cu_aligned16(w + c.h);
  if (tid < c.h) dot += (w ? hg * to_f(w[tid]) : hg) * hx;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    int64_t v = tid + (int64_t)k * nt;
    if (v >= c.nb) break;
    float fx[E], fg[E], wf[E];
    vunpack(ux[k], fx);
    vunpack(ug[k], fg);
    norm_w(w, wvec, c.h + v * E, wf);
#pragma unroll
    for (int e = 0; e < E; e++) {
      float gy = w ? fg[e] * wf[e] : fg[e];
      dot += gy * fx[e];
    }
  }
  if (tid < c.t) dot += (w ? tg * to_f(w[j_t]) : tg) * tx;
  dot = block_sum(dot, sh) * rr;
  float m = dot * inv;
  if (tid < c.h) {
    float gy = w ? hg * to_f(w[tid]) : hg;
    dr[tid] = from_f<T>(rr * (gy - hx * rr * m));
  }
  uint4 *db = reinterpret_cast<uint4 *>(dr + c.h);
#pragma unroll
  for (int k = 0; k < NV; k++) {
    int64_t v = tid + (int64_t)k * nt;
    if (v >= c.nb) break;
    float fx[E], fg[E], wf[E];
    vunpack(ux[k], fx);
    vunpack(ug[k], fg);
    norm_w(w, wvec, c.h + v * E, wf);
#pragma unroll
    for (int e = 0; e < E; e++) {
      float gy = w ? fg[e] * wf[e] : fg[e];
      fg[e] = rr * (gy - fx[e] * rr * m);
    }
    db[v] = vpack(fg);
  }
  if (tid < c.t) {
    float gy = w ? tg * to_f(w[j_t]) : tg;
    dr[j_t] = from_f<T>(rr * (gy - tx * rr * m));
  }
}

/* The block and NV of a row of d values of T: W warps (1, 2, 4, 8), the fewest that hold the row's words at NV <= 4
 * (NV <= 8 at 8 warps); false when the row is longer (the old kernels run). */
template <class T> static bool norm_vec_shape(int64_t d, int *threads, int *nv) {
  const int64_t words = d / vec16<T>::E; /* a cut row has nb = (d - h) / E <= d / E words */
  for (int wps = 1; wps <= 8; wps *= 2) {
    int64_t per = (words + 32 * wps - 1) / (32 * wps);
    if (per <= 4 || (wps == 8 && per <= 8)) {
      *threads = 32 * wps;
      *nv = per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : 8;
      return true;
    }
  }
  return false;
}

#define NORM_NV_DISPATCH(nv, ...)                       \
  do {                                                  \
    switch (nv) {                                       \
      case 1: { const int NV = 1; __VA_ARGS__; } break; \
      case 2: { const int NV = 2; __VA_ARGS__; } break; \
      case 4: { const int NV = 4; __VA_ARGS__; } break; \
      default: { const int NV = 8; __VA_ARGS__; } break; \
    }                                                   \
  } while (0)

/* Launch the vectorized forward / backward when the switch is on and the row fits; false: not taken. */
template <class T>
static bool norm_fwd_vec(const T *x, const T *w, int64_t rows, int64_t d, float inv, float eps, T *y, float *rs,
                         cudaStream_t st) {
  int nt, nv;
  if (!cu_vec_membound() || ((uintptr_t)x - (uintptr_t)y) % 16 || !norm_vec_shape<T>(d, &nt, &nv)) return false;
  NORM_NV_DISPATCH(nv, k_norm_fwd_vec<T, NV><<<(unsigned)rows, nt, 0, st>>>(x, w, d, inv, eps, y, rs));
  cu_vec_membound_count();
  return true;
}
template <class T>
static bool norm_bwd_vec(const T *x, const T *w, const T *dy, const float *rs, int64_t rows, int64_t d, float inv,
                         T *dx, cudaStream_t st) {
  int nt, nv;
  if (!cu_vec_membound() || ((uintptr_t)x - (uintptr_t)dy) % 16 || ((uintptr_t)x - (uintptr_t)dx) % 16 ||
      !norm_vec_shape<T>(d, &nt, &nv))
    return false;
  NORM_NV_DISPATCH(nv, k_norm_bwd_vec<T, NV><<<(unsigned)rows, nt, 0, st>>>(x, w, dy, rs, d, inv, dx));
  cu_vec_membound_count();
  return true;
}

#endif
