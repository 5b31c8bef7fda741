/* backend.h — per-device memory primitives (a struct of function pointers per device type).
 * The CPU backend lives in core/backend_cpu.c; the CUDA one registers itself from cuda/. */
#ifndef M2_BACKEND_H
#define M2_BACKEND_H
#include "dtype.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_backend {
  const char *name;
  /* Allocate nbytes on device `index`; `purpose` names the allocation in OOM messages. */
  m2_status (*alloc)(int index, size_t nbytes, const char *purpose, void **out);
  void (*free)(int index, void *p);
  m2_status (*memset0)(int index, void *p, size_t nbytes);
  /* Copy between this device and the host or within this device. */
  m2_status (*copy)(m2_device dst_dev, void *dst, m2_device src_dev, const void *src, size_t nbytes);
  m2_status (*synchronize)(int index);
  int (*device_count)(void);
} m2_backend;

/* The backend for a device type; NULL when it is not compiled in or has no device. */
const m2_backend *m2_backend_get(m2_devtype t);
void m2_backend_register(m2_devtype t, const m2_backend *b);
/* Number of CUDA devices usable now (0 when CUDA is not compiled or no GPU is present). */
int m2_cuda_device_count(void);
/* Copy nbytes between any two devices. */
m2_status m2_memcpy(m2_device dst_dev, void *dst, m2_device src_dev, const void *src, size_t nbytes);

/* Memory accounting (bytes currently held / peak since reset) per device type. */
size_t m2_mem_current(m2_devtype t);
size_t m2_mem_peak(m2_devtype t);
void m2_mem_reset_peak(m2_devtype t);
void m2_mem_account(m2_devtype t, long long delta);

#ifdef __cplusplus
}
#endif
#endif
