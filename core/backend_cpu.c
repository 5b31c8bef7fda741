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

/* The CPU's tensor and optimizer work is done by core itself (tensor.c, optim.c): no hooks here. */
static const m2_backend cpu_backend = {"cpu", cpu_alloc, cpu_free, cpu_memset0, cpu_copy, cpu_sync, cpu_count};
static const m2_backend *g_backends[M2_NUM_DEVTYPES] = {&cpu_backend};
static void (*g_probe[M2_NUM_DEVTYPES])(void);

const m2_backend *m2_backend_get(m2_devtype t) {
  if ((int)t < 0 || (int)t >= M2_NUM_DEVTYPES) return NULL;
  if (g_probe[t]) {
    void (*probe)(void) = g_probe[t];
    g_probe[t] = NULL; /* once */
    probe();
  }
  return g_backends[t];
}
void m2_backend_register(m2_devtype t, const m2_backend *b) {
  if ((int)t > (int)M2_CPU && (int)t < M2_NUM_DEVTYPES) g_backends[t] = b;
}
void m2_backend_register_probe(m2_devtype t, void (*probe)(void)) {
  if ((int)t > (int)M2_CPU && (int)t < M2_NUM_DEVTYPES) g_probe[t] = probe;
}

int m2_device_count(m2_devtype t) {
  const m2_backend *b = m2_backend_get(t);
  return b ? b->device_count() : 0;
}

m2_status m2_memcpy(m2_device dd, void *dst, m2_device sd, const void *src, size_t n) {
  if (n == 0) return M2_OK;
  m2_devtype t = dd.type != M2_CPU ? dd.type : sd.type; /* the non-host side's backend does the copy */
  const m2_backend *b = m2_backend_get(t);
  if (!b) {
    char a[32];
    m2_device_name(dd.type != M2_CPU ? dd : sd, a, sizeof a);
    return m2_fail(M2_ERR_DEVICE, "no backend for %s (built without it, or no such device)", a);
  }
  return b->copy(dd, dst, sd, src, n);
}

static size_t g_cur[M2_NUM_DEVTYPES], g_peak[M2_NUM_DEVTYPES], g_wpeak[M2_NUM_DEVTYPES];
size_t m2_mem_current(m2_devtype t) { return g_cur[t]; }
size_t m2_mem_peak(m2_devtype t) { return g_peak[t]; }
void m2_mem_reset_peak(m2_devtype t) { g_peak[t] = g_cur[t]; }
void m2_mem_account(m2_devtype t, long long delta) {
  g_cur[t] = (size_t)((long long)g_cur[t] + delta);
  if (g_cur[t] > g_peak[t]) g_peak[t] = g_cur[t];
  if (g_cur[t] > g_wpeak[t]) g_wpeak[t] = g_cur[t];
}
void m2_mem_window_start(m2_devtype t) { g_wpeak[t] = g_cur[t]; }
size_t m2_mem_window_peak(m2_devtype t) { return g_wpeak[t]; }
