/* ops_view.cu — the strided copy kernel (any strides, any dtype conversion) behind contiguous, to_dtype,
 * narrow's backward and m2_copy_ on a device, and the strided fill behind m2_fill_ on a device. */
#include "ops.h"
#include "ops_common.cuh"
#include "../core/ops_view.h"
#include <string.h>

/* ---- conversion between any two dtypes, as m2_store(m2_load(...)) does on the host ---- */
template <class D, class S> __device__ __forceinline__ D cvt(S v) { return (D)(double)v; }
template <> __device__ __forceinline__ float cvt<float, bf16>(bf16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ double cvt<double, bf16>(bf16 v) { return (double)__bfloat162float(v); }
template <> __device__ __forceinline__ int32_t cvt<int32_t, bf16>(bf16 v) { return (int32_t)__bfloat162float(v); }
template <> __device__ __forceinline__ int64_t cvt<int64_t, bf16>(bf16 v) { return (int64_t)__bfloat162float(v); }
template <> __device__ __forceinline__ bf16 cvt<bf16, bf16>(bf16 v) { return v; }
template <> __device__ __forceinline__ bf16 cvt<bf16, float>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ bf16 cvt<bf16, double>(double v) { return __float2bfloat16_rn((float)v); }
template <> __device__ __forceinline__ bf16 cvt<bf16, int32_t>(int32_t v) { return __float2bfloat16_rn((float)(double)v); }
template <> __device__ __forceinline__ bf16 cvt<bf16, int64_t>(int64_t v) { return __float2bfloat16_rn((float)(double)v); }
template <> __device__ __forceinline__ int64_t cvt<int64_t, int64_t>(int64_t v) { return v; }
template <> __device__ __forceinline__ int64_t cvt<int64_t, int32_t>(int32_t v) { return v; }
template <> __device__ __forceinline__ float cvt<float, float>(float v) { return v; }
template <> __device__ __forceinline__ double cvt<double, double>(double v) { return v; }
template <> __device__ __forceinline__ int32_t cvt<int32_t, int32_t>(int32_t v) { return v; }

/* The iteration space of a copy after dropping size-1 dims and merging dims that both tensors step
 * through as one. Strides in elements. */
typedef struct copy_plan {
  int nd;
  int64_t shape[M2_MAX_DIMS];
  int64_t sd[M2_MAX_DIMS]; /* destination strides */
  int64_t ss[M2_MAX_DIMS]; /* source strides */
} copy_plan;

static void copy_plan_make(int nd, const int64_t *shape, const int64_t *sd, const int64_t *ss, copy_plan *p) {
  p->nd = 0;
  for (int d = 0; d < nd; d++) {
    if (shape[d] == 1) continue;
    int k = p->nd - 1;
    if (k >= 0 && p->sd[k] == sd[d] * shape[d] && p->ss[k] == ss[d] * shape[d]) {
      p->shape[k] *= shape[d];
      p->sd[k] = sd[d];
      p->ss[k] = ss[d];
    } else {
      p->shape[k + 1] = shape[d];
      p->sd[k + 1] = sd[d];
      p->ss[k + 1] = ss[d];
      p->nd++;
    }
  }
  if (p->nd == 0) {
    p->nd = 1;
    p->shape[0] = 1;
    p->sd[0] = p->ss[0] = 1;
  }
}

/* dst[off_d(i)] = cvt(src[off_s(i)]) for the i-th element in row-major order of the plan; I is the
 * index type (32-bit when everything fits: cheaper division). */
template <class D, class S, class I>
__global__ void k_copy(D *dst, const S *src, copy_plan p, I n) {
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I r = i, od = 0, os = 0;
    for (int d = p.nd - 1; d > 0; d--) {
      I sh = (I)p.shape[d], q = r / sh, k = r - q * sh;
      od += k * (I)p.sd[d];
      os += k * (I)p.ss[d];
      r = q;
    }
    od += r * (I)p.sd[0];
    os += r * (I)p.ss[0];
    dst[od] = cvt<D, S>(src[os]);
  }
}

template <class D, class I>
__global__ void k_fill(D *dst, copy_plan p, I n, D v) {
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
    I r = i, od = 0;
    for (int d = p.nd - 1; d > 0; d--) {
      I sh = (I)p.shape[d], q = r / sh;
      od += (r - q * sh) * (I)p.sd[d];
      r = q;
    }
    od += r * (I)p.sd[0];
    dst[od] = v;
  }
}

/* Largest element offset reached by the plan (for choosing the index type). */
static int64_t plan_span(const copy_plan *p, const int64_t *st) {
  int64_t s = 0;
  for (int d = 0; d < p->nd; d++) s += (p->shape[d] - 1) * (st[d] < 0 ? -st[d] : st[d]);
  return s;
}

template <class D, class S>
static void launch_copy(void *dst, const void *src, const copy_plan *p, int64_t n, cudaStream_t st) {
  bool small = cu_i32_loop_ok(n, 256) && plan_span(p, p->sd) < 0x7fffffffLL && plan_span(p, p->ss) < 0x7fffffffLL;
  if (small) k_copy<D, S, int32_t><<<cu_grid(n, 256), 256, 0, st>>>((D *)dst, (const S *)src, *p, (int32_t)n);
  else k_copy<D, S, int64_t><<<cu_grid(n, 256), 256, 0, st>>>((D *)dst, (const S *)src, *p, n);
}

template <class D>
static void launch_copy_from(m2_dtype sdt, void *dst, const void *src, const copy_plan *p, int64_t n, cudaStream_t st) {
  switch (sdt) {
    case M2_F32: launch_copy<D, float>(dst, src, p, n, st); break;
    case M2_F64: launch_copy<D, double>(dst, src, p, n, st); break;
    case M2_BF16: launch_copy<D, bf16>(dst, src, p, n, st); break;
    case M2_I32: launch_copy<D, int32_t>(dst, src, p, n, st); break;
    case M2_I64: launch_copy<D, int64_t>(dst, src, p, n, st); break;
    default: break;
  }
}

/* f32 <-> bf16 between contiguous tensors, 4 elements per thread and step (16-byte f32 and 8-byte bf16 accesses):
   the bf16 copies every bf16 product makes of its fp32 operands (cvt's rounding, so the same bits as k_copy) */
__global__ void k_f32_to_bf16(bf16 *dst, const float *src, int64_t n4) {
  CU_GRID_STRIDE(i, n4) {
    float4 v = reinterpret_cast<const float4 *>(src)[i];
    __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 w;
    w.x = *reinterpret_cast<uint32_t *>(&a);
    w.y = *reinterpret_cast<uint32_t *>(&b);
    reinterpret_cast<uint2 *>(dst)[i] = w;
  }
}
__global__ void k_bf16_to_f32(float *dst, const bf16 *src, int64_t n4) {
  CU_GRID_STRIDE(i, n4) {
    uint2 w = reinterpret_cast<const uint2 *>(src)[i];
    __nv_bfloat162 a = *reinterpret_cast<__nv_bfloat162 *>(&w.x), b = *reinterpret_cast<__nv_bfloat162 *>(&w.y);
    float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
    reinterpret_cast<float4 *>(dst)[i] = make_float4(fa.x, fa.y, fb.x, fb.y);
  }
}

/* The vectorised f32 <-> bf16 conversion when it applies (both contiguous, 16-byte aligned, n a multiple of 4). */
static bool convert_vec(m2_tensor *dst, const m2_tensor *src, int64_t n, cudaStream_t st) {
  bool down = dst->dtype == M2_BF16 && src->dtype == M2_F32, up = dst->dtype == M2_F32 && src->dtype == M2_BF16;
  void *pd = m2_data(dst);
  const void *ps = m2_data(src);
  if ((!down && !up) || n % 4 || !m2_is_contiguous(dst) || !m2_is_contiguous(src) || (uintptr_t)pd % 16 ||
      (uintptr_t)ps % 16)
    return false;
  const int64_t n4 = n / 4;
  if (down) k_f32_to_bf16<<<cu_grid(n4, 256), 256, 0, st>>>((bf16 *)pd, (const float *)ps, n4);
  else k_bf16_to_f32<<<cu_grid(n4, 256), 256, 0, st>>>((float *)pd, (const bf16 *)ps, n4);
  return true;
}

#include "copy_rows_vec.cuh" /* the M2_VEC_MEMBOUND copies of a column range of contiguous rows */

/* Copy between two same-shape views on one device. */
static m2_status copy_same_shape(m2_tensor *dst, const m2_tensor *src) {
  int64_t n = m2_numel(dst);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(dst->device, &st));
  if (dst->dtype == src->dtype && m2_is_contiguous(dst) && m2_is_contiguous(src)) {
    M2_CUDA_TRY(cudaMemcpyAsync(m2_data(dst), m2_data(src), (size_t)n * m2_elsize(dst), cudaMemcpyDeviceToDevice, st));
    return M2_OK;
  }
  if (convert_vec(dst, src, n, st)) {
    M2_CUDA_LAUNCH_CHECK("copy (f32 <-> bf16)");
    return M2_OK;
  }
  copy_plan p;
  copy_plan_make(dst->ndim, dst->shape, dst->stride, src->stride, &p);
  /* same dtype: copy raw words of the element size (no conversion instances needed) */
  m2_dtype ddt = dst->dtype, sdt = src->dtype;
  if (ddt == sdt && p.nd == 2 && p.sd[1] == 1 && p.ss[1] == 1 &&
      copy_rows_vec(m2_data(dst), m2_data(src), m2_elsize(dst), p.shape[0], p.shape[1], p.sd[0], p.ss[0], st)) {
    M2_CUDA_LAUNCH_CHECK("copy (rows)");
    return M2_OK;
  }
  if (ddt == sdt) {
    size_t es = m2_elsize(dst);
    ddt = sdt = es == 2 ? M2_BF16 : es == 4 ? M2_I32 : M2_I64;
  }
  void *pd = m2_data(dst);
  const void *ps = m2_data(src);
  switch (ddt) {
    case M2_F32: launch_copy_from<float>(sdt, pd, ps, &p, n, st); break;
    case M2_F64: launch_copy_from<double>(sdt, pd, ps, &p, n, st); break;
    case M2_BF16: launch_copy_from<bf16>(sdt, pd, ps, &p, n, st); break;
    case M2_I32: launch_copy_from<int32_t>(sdt, pd, ps, &p, n, st); break;
    case M2_I64: launch_copy_from<int64_t>(sdt, pd, ps, &p, n, st); break;
    default: return m2_fail(M2_ERR_DTYPE, "copy: unknown dtype %d", (int)ddt);
  }
  M2_CUDA_LAUNCH_CHECK("copy");
  return M2_OK;
}

extern "C" m2_status m2_cuda_copy(m2_tensor *dst, const m2_tensor *src) {
  if (dst->device.type != M2_CUDA || !m2_device_eq(dst->device, src->device))
    return m2_fail(M2_ERR_DEVICE, "m2_cuda_copy: both tensors must be on the same CUDA device");
  int64_t n = m2_numel(dst);
  if (n != m2_numel(src)) {
    char a[96], b[96];
    return m2_fail(M2_ERR_SHAPE, "copy: destination %s and source %s differ", m2_shape_str(dst, a, sizeof a),
                   m2_shape_str(src, b, sizeof b));
  }
  if (m2_same_shape(dst, src)) return copy_same_shape(dst, src);
  /* same number of elements, other shape: read either side with the other's shape when it is contiguous */
  int64_t st[M2_MAX_DIMS];
  m2_status s;
  if (m2_is_contiguous(src)) {
    m2_contiguous_strides(dst->ndim, dst->shape, st);
    m2_tensor *v = m2_view_raw(src, dst->ndim, dst->shape, st, src->offset);
    if (!v) return m2_errcode();
    s = copy_same_shape(dst, v);
    m2_release(v);
    return s;
  }
  m2_tensor *tmp = m2_empty(src->dtype, src->device, src->ndim, src->shape); /* contiguous copy of src first */
  if (!tmp) return m2_errcode();
  s = copy_same_shape(tmp, src);
  if (s == M2_OK) s = m2_cuda_copy(dst, tmp);
  m2_release(tmp);
  return s;
}

template <class D>
static void launch_fill(void *dst, const copy_plan *p, int64_t n, D v, cudaStream_t st) {
  if (cu_i32_loop_ok(n, 256) && plan_span(p, p->sd) < 0x7fffffffLL)
    k_fill<D, int32_t><<<cu_grid(n, 256), 256, 0, st>>>((D *)dst, *p, (int32_t)n, v);
  else
    k_fill<D, int64_t><<<cu_grid(n, 256), 256, 0, st>>>((D *)dst, *p, n, v);
}

extern "C" m2_status m2_cuda_fill(m2_tensor *t, double v) {
  int64_t n = m2_numel(t);
  if (n == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(t->device, &st));
  char one[8];
  m2_store(one, t->dtype, 0, v); /* the value in t's dtype, as the host would store it */
  bool zero = true;
  for (size_t i = 0; i < m2_elsize(t); i++) zero &= one[i] == 0;
  if (zero && m2_is_contiguous(t)) {
    M2_CUDA_TRY(cudaMemsetAsync(m2_data(t), 0, (size_t)n * m2_elsize(t), st));
    return M2_OK;
  }
  copy_plan p;
  copy_plan_make(t->ndim, t->shape, t->stride, t->stride, &p);
  switch (m2_elsize(t)) { /* the bit pattern of one element */
    case 2: { uint16_t w; memcpy(&w, one, 2); launch_fill<uint16_t>(m2_data(t), &p, n, w, st); break; }
    case 4: { uint32_t w; memcpy(&w, one, 4); launch_fill<uint32_t>(m2_data(t), &p, n, w, st); break; }
    default: { uint64_t w; memcpy(&w, one, 8); launch_fill<uint64_t>(m2_data(t), &p, n, w, st); break; }
  }
  M2_CUDA_LAUNCH_CHECK("fill");
  return M2_OK;
}

/* ---- ops ---- */

/* contiguous: in (any strides) -> out (contiguous copy); backward is the CPU row's pass-through */
extern "C" m2_status m2_cuda_contiguous_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  m2_tensor *o = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  return m2_cuda_copy(o, x);
}

/* to_dtype: m2_to_dtype_attr (core/ops_view.h); backward converts the gradient back to the input's dtype */
extern "C" m2_status m2_cuda_to_dtype_fwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  m2_tensor *o = m2_empty(M2_ATTR(c, m2_to_dtype_attr)->dtype, x->device, x->ndim, x->shape);
  if (!o) return m2_errcode();
  c->n_out = 1;
  c->out[0] = o;
  return m2_cuda_copy(o, x);
}
extern "C" m2_status m2_cuda_to_dtype_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  m2_tensor *d = m2_empty(x->dtype, x->device, x->ndim, x->shape);
  if (!d) return m2_errcode();
  c->din[0] = d;
  return m2_cuda_copy(d, c->dout[0]);
}

/* narrow backward: zeros of x's shape with dout copied into the slice [start, start + len) of dim `dim`
   (m2_narrow_attr, core/ops_view.h) */
extern "C" m2_status m2_cuda_narrow_bwd(m2_opcall *c) {
  m2_tensor *x = c->in[0];
  m2_tensor *g = cu_zeros(c->dout[0]->dtype, x->device, x->ndim, x->shape);
  if (!g) return m2_errcode();
  const m2_narrow_attr *a = M2_ATTR(c, m2_narrow_attr);
  int64_t shape[M2_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[a->dim] = a->len;
  m2_tensor *slice = m2_view_raw(g, g->ndim, shape, g->stride, a->start * g->stride[a->dim]);
  m2_status s = slice ? m2_cuda_copy(slice, c->dout[0]) : m2_errcode();
  m2_release(slice);
  if (s != M2_OK) { m2_release(g); return s; }
  c->din[0] = g;
  return M2_OK;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_view(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_contiguous, m2_cuda_contiguous_fwd, NULL},
      {&m2_op_narrow, NULL, m2_cuda_narrow_bwd},
      {&m2_op_to_dtype, m2_cuda_to_dtype_fwd, m2_cuda_to_dtype_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
