/* backend.cu — CUDA memory backend: stream-ordered allocation (cudaMallocAsync from the device's
 * default memory pool, kept warm by a high release threshold), copies, synchronisation. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdlib.h>
#include "cuda_backend.h"
#include "cuda_check.h"
#include "cuda_ops.h"
#include "m2cuda.h"

#define M2_MAX_GPUS 16
static cudaStream_t g_stream[M2_MAX_GPUS];
static int g_count = -1;

static int device_count(void) {
  if (g_count < 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0; /* no driver / no GPU: CUDA is simply absent */
    cudaGetLastError();
    g_count = n > M2_MAX_GPUS ? M2_MAX_GPUS : n;
  }
  return g_count;
}

static m2_status ensure_device(int index) {
  if (index < 0 || index >= device_count())
    return m2_fail(M2_ERR_DEVICE, "cuda:%d does not exist (%d CUDA device(s) visible)", index, device_count());
  M2_CUDA_TRY(cudaSetDevice(index));
  if (!g_stream[index]) {
    M2_CUDA_TRY(cudaStreamCreateWithFlags(&g_stream[index], cudaStreamNonBlocking));
    cudaMemPool_t pool;
    M2_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, index));
    unsigned long long keep = ~0ull; /* keep freed blocks in the pool: no OS round trips per step */
    M2_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  return M2_OK;
}

extern "C" cudaStream_t m2_cuda_stream(int index) {
  if (ensure_device(index) != M2_OK) return 0;
  return g_stream[index];
}

static m2_status cu_alloc(int index, size_t nbytes, const char *purpose, void **out) {
  M2_TRY(ensure_device(index));
  cudaError_t e = cudaMallocAsync(out, nbytes ? nbytes : 16, g_stream[index]);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t freeb = 0, total = 0;
    cudaMemGetInfo(&freeb, &total);
    return m2_fail(e == cudaErrorMemoryAllocation ? M2_ERR_OOM : M2_ERR_CUDA,
                   "cuda:%d: could not allocate %zu bytes for %s: %s (%zu of %zu bytes free)", index, nbytes,
                   purpose ? purpose : "a tensor", cudaGetErrorString(e), freeb, total);
  }
  return M2_OK;
}

static void cu_free(int index, void *p) {
  if (p && index >= 0 && index < M2_MAX_GPUS && g_stream[index]) cudaFreeAsync(p, g_stream[index]);
}

static m2_status cu_memset0(int index, void *p, size_t n) {
  M2_TRY(ensure_device(index));
  M2_CUDA_TRY(cudaMemsetAsync(p, 0, n, g_stream[index]));
  return M2_OK;
}

static m2_status cu_copy(m2_device dd, void *dst, m2_device sd, const void *src, size_t n) {
  int index = dd.type == M2_CUDA ? dd.index : sd.index;
  M2_TRY(ensure_device(index));
  cudaStream_t s = g_stream[index];
  if (dd.type == M2_CUDA && sd.type == M2_CUDA && dd.index != sd.index) {
    M2_CUDA_TRY(cudaMemcpyPeerAsync(dst, dd.index, src, sd.index, n, s));
  } else {
    M2_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, s));
  }
  /* Copies touching host memory are synchronous for the caller: device -> host always (the caller reads dst next);
   * host -> device unless M2_ASYNC_H2D: from pageable memory (all of m2lab's host memory) cudaMemcpyAsync returns
   * once the source is staged, so src may be reused or freed at once, and waiting for the copy only makes the host
   * wait for the stream's earlier work (the previous step's optimizer, when a batch goes up). */
  if (dd.type == M2_CPU || (sd.type == M2_CPU && !m2_cuda_async_h2d(-1))) M2_CUDA_TRY(cudaStreamSynchronize(s));
  return M2_OK;
}

static int g_async_h2d = -1; /* -1: the environment not read yet */
extern "C" int m2_cuda_async_h2d(int set) {
  if (set >= 0) g_async_h2d = set ? 1 : 0;
  else if (g_async_h2d < 0) { /* off unless M2_ASYNC_H2D=1 (not yet run on a GPU) */
    const char *e = getenv("M2_ASYNC_H2D");
    g_async_h2d = e && strcmp(e, "1") == 0;
  }
  return g_async_h2d;
}

static m2_status cu_sync(int index) {
  M2_TRY(ensure_device(index));
  M2_CUDA_TRY(cudaStreamSynchronize(g_stream[index]));
  return M2_OK;
}

/* Profiler marks (core/profile.c's timeline mode): per device, one timing event per slot, made when a slot is
 * first asked for (the array grows to the next power of two above it) and reused by every later record. */
static cudaEvent_t *g_marks[M2_MAX_GPUS];
static int g_nmarks[M2_MAX_GPUS];

static m2_status cu_mark(int index, int slot) {
  M2_TRY(ensure_device(index));
  if (slot < 0 || slot >= (1 << 24)) return m2_fail(M2_ERR_VALUE, "cuda:%d: mark slot %d out of range", index, slot);
  if (slot >= g_nmarks[index]) {
    int n = g_nmarks[index] > 0 ? g_nmarks[index] : 64;
    while (n <= slot) n *= 2;
    cudaEvent_t *e = (cudaEvent_t *)realloc(g_marks[index], sizeof(cudaEvent_t) * (size_t)n);
    if (!e) return m2_fail(M2_ERR_OOM, "cuda:%d: no host memory for %d profiler marks", index, n);
    g_marks[index] = e;
    for (int i = g_nmarks[index]; i < n; i++) {
      M2_CUDA_TRY(cudaEventCreate(&e[i])); /* default flags: timing on */
      g_nmarks[index] = i + 1;
    }
  }
  M2_CUDA_TRY(cudaEventRecord(g_marks[index][slot], g_stream[index]));
  return M2_OK;
}

static m2_status cu_mark_ms(int index, int a, int b, float *ms) {
  M2_TRY(ensure_device(index));
  if (a < 0 || b < 0 || a >= g_nmarks[index] || b >= g_nmarks[index])
    return m2_fail(M2_ERR_VALUE, "cuda:%d: mark slots %d, %d were never recorded", index, a, b);
  M2_CUDA_TRY(cudaEventSynchronize(g_marks[index][b]));
  M2_CUDA_TRY(cudaEventElapsedTime(ms, g_marks[index][a], g_marks[index][b]));
  return M2_OK;
}

/* The table core calls for CUDA tensors: memory here, strided copies and fills (ops_view.cu), optimizer updates
 * and the clipping reductions (ops_optim.cu), the temperature sampler (sample.cu), the profiler marks (here). */
static const m2_backend cuda_backend = {
    "cuda",           cu_alloc,          cu_free,           cu_memset0,           cu_copy,        cu_sync,
    device_count,     m2_cuda_copy,      m2_cuda_fill,      m2_cuda_sgd_update,   m2_cuda_adamw_update,
    m2_cuda_sumsq_many, m2_cuda_scale_, m2_cuda_sample_rows, cu_mark, cu_mark_ms};

static void probe(void) {
  if (device_count() > 0) m2_backend_register(M2_CUDA, &cuda_backend);
}

#ifdef M2_HAVE_NCCL
extern "C" void m2_cuda_register_nccl(void); /* dist_nccl.cu: the "nccl" collective backend */
#endif

extern "C" m2_status m2_cuda_register(void) {
#define M2_CUDA_REGISTER_FILE(f) M2_TRY(m2_cuda_register_##f());
  M2_CUDA_OP_FILES(M2_CUDA_REGISTER_FILE)
#undef M2_CUDA_REGISTER_FILE
  m2_backend_register_probe(M2_CUDA, probe);
#ifdef M2_HAVE_NCCL
  m2_cuda_register_nccl();
#endif
  return M2_OK;
}
