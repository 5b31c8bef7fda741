/* ops_common.cuh — shared helpers of the CUDA op kernels: dtype dispatch (f32 / bf16 computed in fp32),
 * streams, launch sizes, scratch tensors, device-side index-error flags and deterministic reductions.
 * Included by cuda/ops_*.cu only. */
#ifndef M2_CUDA_OPS_COMMON_CUH
#define M2_CUDA_OPS_COMMON_CUH
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include "cuda_backend.h"
#include "cuda_check.h"
#include "cuda_ops.h"
#include "ops.h"

typedef __nv_bfloat16 bf16;

/* ---- element conversion: every float kernel loads into fp32 and stores back in its dtype ---- */
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

/* Run BODY with T = float or bf16 according to dt (only F32 / BF16 reach here: see cu_check_float). */
#define CU_FLOAT_DISPATCH(dt, ...)             \
  do {                                         \
    if ((dt) == M2_F32) {                      \
      typedef float T;                         \
      __VA_ARGS__;                             \
    } else {                                   \
      typedef bf16 T;                          \
      __VA_ARGS__;                             \
    }                                          \
  } while (0)

/* Registers a lane needs for a row of n elements spread over a warp (one of 1, 2, 4, 8, 16): the R of the mixer and
 * attention kernels (n <= 512). */
static inline int cu_lane_regs(int64_t n) { return n <= 32 ? 1 : n <= 64 ? 2 : n <= 128 ? 4 : n <= 256 ? 8 : 16; }

/* Run BODY with const int R = Rn (from cu_lane_regs). */
#define CU_R_DISPATCH(Rn, ...)                                    \
  do {                                                            \
    switch (Rn) {                                                 \
      case 1: { const int R = 1; __VA_ARGS__; } break;            \
      case 2: { const int R = 2; __VA_ARGS__; } break;            \
      case 4: { const int R = 4; __VA_ARGS__; } break;            \
      case 8: { const int R = 8; __VA_ARGS__; } break;            \
      default: { const int R = 16; __VA_ARGS__; } break;          \
    }                                                             \
  } while (0)

/* A tensor's data as T * / const T * (NULL stays NULL), inside CU_FLOAT_DISPATCH. */
#define PT(t) ((t) ? (T *)m2_data(t) : (T *)NULL)
#define PC(t) ((t) ? (const T *)m2_data(t) : (const T *)NULL)

/* CUDA float ops compute on F32 and BF16 (with fp32 accumulation); F64 is refused with a clear message. */
static inline m2_status cu_check_float(const m2_tensor *t, const char *op, const char *arg) {
  if (t->dtype == M2_F32 || t->dtype == M2_BF16) return M2_OK;
  if (t->dtype == M2_F64)
    return m2_fail(M2_ERR_DTYPE, "%s: %s is f64, which the CUDA kernels do not compute in; use f32 or bf16 on cuda "
                                 "(f64 is for CPU gradient checks)", op, arg);
  return m2_fail(M2_ERR_DTYPE, "%s: %s must be a float tensor (f32 or bf16 on cuda), got %s", op, arg,
                 m2_dtype_name(t->dtype));
}
static inline m2_status cu_check_int(const m2_tensor *t, const char *op, const char *arg) {
  if (t->dtype == M2_I32 || t->dtype == M2_I64) return M2_OK;
  return m2_fail(M2_ERR_DTYPE, "%s: %s must be an integer tensor (i32 or i64), got %s", op, arg,
                 m2_dtype_name(t->dtype));
}

/* The stream of a device (fails when the device cannot be set up). */
static inline m2_status cu_stream(m2_device d, cudaStream_t *s) {
  if (d.type != M2_CUDA) return m2_fail(M2_ERR_DEVICE, "internal: a CUDA kernel was called on a cpu tensor");
  *s = m2_cuda_stream(d.index);
  if (!*s) return m2_errcode() != M2_OK ? m2_errcode() : m2_fail(M2_ERR_CUDA, "cuda:%d: no stream", d.index);
  return M2_OK;
}

/* Grid size for a grid-stride loop over n items with `block` threads (at least 1 block). */
static inline unsigned cu_grid(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  if (g > 65535LL * 32) g = 65535LL * 32; /* grid-stride loops cover the rest */
  return (unsigned)(g > 0 ? g : 1);
}
/* A 32-bit grid-stride loop over n items is safe when its last increment cannot overflow: n plus the grid's
 * stride stays below 2^31 (the loop index passes n by up to one stride before the test fails). */
static inline bool cu_i32_loop_ok(int64_t n, int block) {
  return n + (int64_t)cu_grid(n, block) * block < 0x7fffffffLL;
}
#define CU_GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                                  i += (int64_t)gridDim.x * blockDim.x)

/* Count one call of a mixed bf16 / f32 kernel (m2_cuda_mixed_calls, m2cuda.h; cuda/ops_elementwise.cu). */
extern "C" void m2_cuda_mixed_count(void);

/* A contiguous tensor with t's values in dtype dt on t's device (new ref; t itself when it already is). */
static inline m2_tensor *cu_as(m2_tensor *t, m2_dtype dt) {
  if (t->dtype == dt && m2_is_contiguous(t)) { m2_retain(t); return t; }
  m2_tensor *c = m2_empty(dt, t->device, t->ndim, t->shape);
  if (c && m2_cuda_copy(c, t) != M2_OK) { m2_release(c); return NULL; }
  return c;
}

/* A zero-filled tensor on a CUDA device (memset on the device's stream). */
static inline m2_tensor *cu_zeros(m2_dtype dt, m2_device dev, int nd, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, dev, nd, shape);
  if (!t) return NULL;
  cudaStream_t s;
  if (cu_stream(dev, &s) != M2_OK) { m2_release(t); return NULL; }
  cudaError_t e = cudaMemsetAsync(m2_data(t), 0, (size_t)m2_numel(t) * m2_elsize(t), s);
  if (e != cudaSuccess) {
    m2_fail(M2_ERR_CUDA, "cudaMemsetAsync failed: %s", cudaGetErrorString(e));
    m2_release(t);
    return NULL;
  }
  return t;
}

/* Float scratch of n elements on dev (a tensor, so the memory pool owns it). */
static inline m2_tensor *cu_scratch_f32(m2_device dev, int64_t n) { return m2_empty(M2_F32, dev, 1, &n); }

/* ---- index-error flag: kernels record the smallest flat position of a bad index ---- */
/* flag: one unsigned long long on the device, ~0 = no error. */
__device__ __forceinline__ void cu_flag_bad(unsigned long long *flag, int64_t pos) {
  atomicMin(flag, (unsigned long long)pos);
}
static inline m2_tensor *cu_flag_new(m2_device dev) {
  int64_t one = 1;
  m2_tensor *f = m2_empty(M2_I64, dev, 1, &one);
  if (!f) return NULL;
  cudaStream_t s;
  if (cu_stream(dev, &s) != M2_OK || cudaMemsetAsync(m2_data(f), 0xff, 8, s) != cudaSuccess) {
    if (m2_errcode() == M2_OK) m2_fail(M2_ERR_CUDA, "could not initialise an index flag");
    m2_release(f);
    return NULL;
  }
  return f;
}
/* Read the flag back (synchronises the stream). *pos = -1 when no index was bad. */
static inline m2_status cu_flag_read(m2_tensor *f, int64_t *pos) {
  unsigned long long v = 0;
  M2_TRY(m2_memcpy(M2_DEV_CPU, &v, f->device, m2_data(f), 8));
  *pos = v == ~0ull ? -1 : (int64_t)v;
  return M2_OK;
}
/* Element i of an integer tensor on the device (for error messages). */
static inline int64_t cu_int_at(const m2_tensor *t, int64_t i) {
  int64_t v = 0;
  int32_t w = 0;
  if (t->dtype == M2_I64) m2_memcpy(M2_DEV_CPU, &v, t->device, (const int64_t *)m2_data(t) + i, 8);
  else { m2_memcpy(M2_DEV_CPU, &w, t->device, (const int32_t *)m2_data(t) + i, 4); v = w; }
  return v;
}

/* Load index i of an I32 / I64 buffer. */
__device__ __forceinline__ int64_t ld_index(const void *p, bool i64, int64_t i) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

/* ---- deterministic reductions in fp32 (fixed decomposition: the same shape gives the same bits) ----
 * A source of values L: float L(a, k, b) for a tensor viewed as (outer, n, inner), reduced over k.
 * Results: out[a * inner + b] = scale * sum_k L(a, k, b), stored as T (float or bf16). */

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
/* Sum over a block of up to 1024 threads (1-D); every thread gets the result. sh: 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads(); /* sh may be in use by a previous call */
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = 0;
  for (int i = 0; i < nw; i++) r += sh[i]; /* fixed order */
  return r;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* softmax statistics: running (max m, sum s of exp(v - m)) over the values seen; NaN makes s NaN */
__device__ __forceinline__ void sm_push(float &m, float &s, float v) {
  if (v > m) { s = s * expf(m - v) + 1.0f; m = v; }
  else if (!(v == -INFINITY)) s += expf(v - m);
}
__device__ __forceinline__ void sm_merge(float &m, float &s, float m2, float s2) {
  if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; }
  else if (!(m2 == -INFINITY)) s += s2 * expf(m2 - m);
  else if (s2 != s2) s = s2; /* NaN */
}

/* inner == 1, short rows: one warp per row (8 rows a block), no chunks. */
template <class L, class T>
__global__ void k_reduce_rows_warp(L load, int64_t outer, int64_t n, float scale, T *out) {
  int64_t a = (int64_t)blockIdx.x * 8 + threadIdx.y;
  if (a >= outer) return;
  float s = 0;
  for (int64_t k = threadIdx.x; k < n; k += 32) s += load(a, k, (int64_t)0);
  s = warp_sum(s);
  if (threadIdx.x == 0) out[a] = from_f<T>(s * scale);
}
/* inner == 1: block (256) per (row a = blockIdx.x, chunk c = blockIdx.y). */
template <class L, class T>
__global__ void k_reduce_rows(L load, int64_t n, int64_t chunk, int nchunk, float scale, T *out, float *partial) {
  __shared__ float sh[32];
  int64_t a = blockIdx.x;
  int c = blockIdx.y;
  int64_t k0 = (int64_t)c * chunk, k1 = k0 + chunk < n ? k0 + chunk : n;
  float s = 0;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) s += load(a, k, (int64_t)0);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    if (nchunk == 1) out[a] = from_f<T>(s * scale);
    else partial[a * nchunk + c] = s;
  }
}
/* inner > 1: block (32, 8) per (row a and 32 columns = blockIdx.x, chunk c = blockIdx.y). */
template <class L, class T>
__global__ void k_reduce_cols(L load, int64_t n, int64_t inner, int64_t colblocks, int64_t chunk, int nchunk,
                              float scale, T *out, float *partial) {
  __shared__ float sh[8][33];
  int64_t a = blockIdx.x / colblocks, b = (blockIdx.x % colblocks) * 32 + threadIdx.x;
  int c = blockIdx.y;
  int64_t k0 = (int64_t)c * chunk, k1 = k0 + chunk < n ? k0 + chunk : n;
  float s = 0;
  if (b < inner)
    for (int64_t k = k0 + threadIdx.y; k < k1; k += 8) s += load(a, k, b);
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && b < inner) {
    float t = 0;
    for (int y = 0; y < 8; y++) t += sh[y][threadIdx.x];
    if (nchunk == 1) out[a * inner + b] = from_f<T>(t * scale);
    else partial[(a * nchunk + c) * inner + b] = t;
  }
}
/* out[a, b] = scale * sum_c partial[a, c, b] */
template <class T>
__global__ void k_reduce_finish(const float *partial, int64_t outer, int nchunk, int64_t inner, float scale, T *out) {
  CU_GRID_STRIDE(i, outer * inner) {
    int64_t a = i / inner, b = i % inner;
    float s = 0;
    for (int c = 0; c < nchunk; c++) s += partial[(a * nchunk + c) * inner + b];
    out[i] = from_f<T>(s * scale);
  }
}

/* out (outer, inner) = scale * sum over k < n of load(a, k, b), deterministic, on dev's stream.
 * load is a device functor float(int64_t a, int64_t k, int64_t b). */
template <class L, class T>
static m2_status cu_reduce(L load, int64_t outer, int64_t n, int64_t inner, float scale, T *out, m2_device dev) {
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  if (outer * inner == 0) return M2_OK;
  if (outer > 0x7fffffffLL / 64)
    return m2_fail(M2_ERR_UNSUPPORTED, "reduction over %lld rows: too many rows for one launch", (long long)outer);
  if (inner == 1 && n <= 256) {
    k_reduce_rows_warp<<<(unsigned)((outer + 7) / 8), dim3(32, 8), 0, st>>>(load, outer, n, scale, out);
    M2_CUDA_LAUNCH_CHECK("reduce_rows_warp");
    return M2_OK;
  }
  int64_t colblocks = (inner + 31) / 32, want, maxc;
  if (outer * colblocks > 0x7fffffffLL)
    return m2_fail(M2_ERR_UNSUPPORTED, "reduction of %lld x %lld values: too many for one launch", (long long)outer,
                   (long long)inner);
  if (inner == 1) {
    want = outer >= 1024 ? 1 : (1024 + outer - 1) / outer;
    maxc = (n + 4095) / 4096; /* at least 4096 values per chunk */
  } else {
    int64_t blocks = outer * colblocks;
    want = blocks >= 512 ? 1 : (512 + blocks - 1) / blocks;
    maxc = (n + 255) / 256;
  }
  int64_t nc = want < maxc ? want : maxc;
  if (nc < 1) nc = 1;
  if (nc > 65535) nc = 65535;
  int nchunk = (int)nc;
  int64_t chunk = (n + nchunk - 1) / nchunk;
  if (chunk < 1) chunk = 1;
  m2_tensor *part = NULL;
  if (nchunk > 1) {
    part = cu_scratch_f32(dev, outer * nchunk * inner);
    if (!part) return m2_errcode();
  }
  float *pp = part ? (float *)m2_data(part) : NULL;
  if (inner == 1)
    k_reduce_rows<<<dim3((unsigned)outer, nchunk), 256, 0, st>>>(load, n, chunk, nchunk, scale, out, pp);
  else
    k_reduce_cols<<<dim3((unsigned)(outer * colblocks), nchunk), dim3(32, 8), 0, st>>>(load, n, inner, colblocks,
                                                                                        chunk, nchunk, scale, out, pp);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && nchunk > 1) {
    k_reduce_finish<<<cu_grid(outer * inner, 256), 256, 0, st>>>(pp, outer, nchunk, inner, scale, out);
    e = cudaGetLastError();
  }
  m2_release(part); /* stream-ordered free: the kernels above run first */
  if (e != cudaSuccess) return m2_fail(M2_ERR_CUDA, "reduction kernel launch failed: %s", cudaGetErrorString(e));
  return M2_OK;
}

#endif
