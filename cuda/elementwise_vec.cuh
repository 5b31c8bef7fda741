/* elementwise_vec.cuh — the unary maps forward and backward (ops_elementwise.cu) on 16-byte words: each thread
 * loads U words of every operand (U x 4 f32 or U x 8 bf16 values) before it computes and stores any. The values are
 * those of k_un_fwd / k_un_bwd (the same un_fwd / un_bwd per element: the same bits). Unless M2_VEC_MEMBOUND=0.
 * Included by ops_elementwise.cu after un_fwd, un_bwd and un_uses_y.
 *
 *   k_un_fwd_vec: y (n) = f(x (n))               x, y 16-byte aligned; the n % E last elements one a thread
 *   k_un_bwd_vec: dx (n) = f'(g (n), x or y (n))  g, x or y, dx 16-byte aligned */
#ifndef M2_CUDA_ELEMENTWISE_VEC_CUH
#define M2_CUDA_ELEMENTWISE_VEC_CUH
#include "membound_vec.cuh"

#define UN_VEC_U 2       /* 16-byte words a thread and operand in flight */
#define UN_VEC_BLOCK 256

template <class T, int K>
__global__ void __launch_bounds__(UN_VEC_BLOCK) k_un_fwd_vec(const T *x, T *y, int64_t nvec, int64_t n, float s0,
                                                             float s1) {
  const int E = vec16<T>::E;
  const uint4 *xv = reinterpret_cast<const uint4 *>(x);
  uint4 *yv = reinterpret_cast<uint4 *>(y);
  const int64_t step = (int64_t)gridDim.x * blockDim.x * UN_VEC_U;
  for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x * UN_VEC_U + threadIdx.x; i0 < nvec; i0 += step) {
    uint4 u[UN_VEC_U];
#pragma unroll
    for (int k = 0; k < UN_VEC_U; k++) { /* every load first */
      int64_t i = i0 + (int64_t)k * blockDim.x;
      u[k] = i < nvec ? xv[i] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < UN_VEC_U; k++) {
      int64_t i = i0 + (int64_t)k * blockDim.x;
      if (i >= nvec) break;
      float f[E];
      vunpack(u[k], f);
#pragma unroll
      for (int e = 0; e < E; e++) f[e] = un_fwd<K>(f[e], s0, s1); /* vpack rounds as from_f<T> */
      yv[i] = vpack(f);
    }
  }
  int64_t t = nvec * E + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* the tail: fewer than E elements */
  if (t < n) y[t] = from_f<T>(un_fwd<K>(to_f(x[t]), s0, s1));
}

template <class T, int K>
__global__ void __launch_bounds__(UN_VEC_BLOCK) k_un_bwd_vec(const T *g, const T *x, const T *y, T *dx, int64_t nvec,
                                                             int64_t n, float s0, float s1) {
  const int E = vec16<T>::E;
  const uint4 *gv = reinterpret_cast<const uint4 *>(g);
  const uint4 *av = reinterpret_cast<const uint4 *>(un_uses_y<K>::v ? y : x); /* the operand f' reads */
  uint4 *dv = reinterpret_cast<uint4 *>(dx);
  const int64_t step = (int64_t)gridDim.x * blockDim.x * UN_VEC_U;
  for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x * UN_VEC_U + threadIdx.x; i0 < nvec; i0 += step) {
    uint4 ug[UN_VEC_U], ua[UN_VEC_U];
#pragma unroll
    for (int k = 0; k < UN_VEC_U; k++) {
      int64_t i = i0 + (int64_t)k * blockDim.x;
      ug[k] = i < nvec ? gv[i] : make_uint4(0, 0, 0, 0);
      ua[k] = i < nvec ? av[i] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < UN_VEC_U; k++) {
      int64_t i = i0 + (int64_t)k * blockDim.x;
      if (i >= nvec) break;
      float fg[E], fa[E];
      vunpack(ug[k], fg);
      vunpack(ua[k], fa);
#pragma unroll
      for (int e = 0; e < E; e++) {
        float yv = un_uses_y<K>::v ? fa[e] : 0.0f, xv = un_uses_y<K>::v ? 0.0f : fa[e];
        fg[e] = un_bwd<K>(fg[e], xv, yv, s0, s1);
      }
      dv[i] = vpack(fg);
    }
  }
  int64_t t = nvec * E + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) {
    float yv = un_uses_y<K>::v ? to_f(y[t]) : 0.0f, xv = un_uses_y<K>::v ? 0.0f : to_f(x[t]);
    dx[t] = from_f<T>(un_bwd<K>(to_f(g[t]), xv, yv, s0, s1));
  }
}

/* Launch the vectorized forward when the switch is on and the operands are 16-byte aligned; false: not taken (the
 * caller launches k_un_fwd). */
template <class T, int K>
static bool un_fwd_vec(const T *x, T *y, int64_t n, float s0, float s1, cudaStream_t st) {
  if (!cu_vec_membound() || !cu_aligned16(x) || !cu_aligned16(y)) return false;
  const int64_t nvec = n / vec16<T>::E;
  k_un_fwd_vec<T, K><<<cu_grid((nvec + UN_VEC_U - 1) / UN_VEC_U, UN_VEC_BLOCK), UN_VEC_BLOCK, 0, st>>>(x, y, nvec, n,
                                                                                                      s0, s1);
  cu_vec_membound_count();
  return true;
}
template <class T, int K>
static bool un_bwd_vec(const T *g, const T *x, const T *y, T *dx, int64_t n, float s0, float s1, cudaStream_t st) {
  const T *a = un_uses_y<K>::v ? y : x;
  if (!cu_vec_membound() || !cu_aligned16(g) || !cu_aligned16(a) || !cu_aligned16(dx)) return false;
  const int64_t nvec = n / vec16<T>::E;
  k_un_bwd_vec<T, K><<<cu_grid((nvec + UN_VEC_U - 1) / UN_VEC_U, UN_VEC_BLOCK), UN_VEC_BLOCK, 0, st>>>(
      g, x, y, dx, nvec, n, s0, s1);
  cu_vec_membound_count();
  return true;
}

#endif
