/* backend_cpu.c — host memory backend, the backend table, and memory accounting. */
#include "backend.h"
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

static m2_status cpu_alloc(int index, size_t nbytes, const char *purpose, void **out) {
  (void)index;
  static int tuned;
  if (!tuned) {
    /* A training step frees and reallocates the same large buffers every step: keep them in the
       heap instead of returning them to the OS (mmap + page faults cost more than the GEMMs). */
    tuned = 1;
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  void *p = NULL;
  size_t n = nbytes ? (nbytes + 63) / 64 * 64 : 64;
  if (posix_memalign(&p, 64, n) != 0 || !p)
    return m2_fail(M2_ERR_OOM, "out of host memory: %zu bytes for %s", nbytes, purpose ? purpose : "a tensor");
  *out = p;
  return M2_OK;
}
static void cpu_free(int index, void *p) { (void)index; free(p); }
static m2_status cpu_memset0(int index, void *p, size_t n) { (void)index; memset(p, 0, n); return M2_OK; }
static m2_status cpu_copy(m2_device dd, void *dst, m2_device sd, const void *src, size_t n) {
  (void)dd; (void)sd;
  if (n) memmove(dst, src, n);
  return M2_OK;
}
static m2_status cpu_sync(int index) { (void)index; return M2_OK; }
static int cpu_count(void) { return 1; }

static const m2_backend cpu_backend = {"cpu", cpu_alloc, cpu_free, cpu_memset0, cpu_copy, cpu_sync, cpu_count};
static const m2_backend *g_backends[2] = {&cpu_backend, NULL};

#ifdef M2_HAVE_CUDA
void m2_cuda_init(void); /* cuda/backend.cu: registers itself when a GPU is present */
#endif

const m2_backend *m2_backend_get(m2_devtype t) {
  if (t != M2_CPU && t != M2_CUDA) return NULL;
#ifdef M2_HAVE_CUDA
  static int tried;
  if (t == M2_CUDA && !tried) {
    tried = 1;
    m2_cuda_init();
  }
#endif
  return g_backends[t];
}
void m2_backend_register(m2_devtype t, const m2_backend *b) { g_backends[t] = b; }

int m2_cuda_device_count(void) {
  const m2_backend *b = m2_backend_get(M2_CUDA);
  return b ? b->device_count() : 0;
}

m2_status m2_memcpy(m2_device dd, void *dst, m2_device sd, const void *src, size_t n) {
  if (n == 0) return M2_OK;
  m2_devtype t = dd.type == M2_CUDA ? M2_CUDA : sd.type;
  const m2_backend *b = m2_backend_get(t);
  if (!b) return m2_fail(M2_ERR_DEVICE, "no backend for %s", t == M2_CUDA ? "cuda" : "cpu");
  return b->copy(dd, dst, sd, src, n);
}

static size_t g_cur[2], g_peak[2];
size_t m2_mem_current(m2_devtype t) { return g_cur[t]; }
size_t m2_mem_peak(m2_devtype t) { return g_peak[t]; }
void m2_mem_reset_peak(m2_devtype t) { g_peak[t] = g_cur[t]; }
void m2_mem_account(m2_devtype t, long long delta) {
  g_cur[t] = (size_t)((long long)g_cur[t] + delta);
  if (g_cur[t] > g_peak[t]) g_peak[t] = g_cur[t];
}
