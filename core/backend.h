/* backend.h — the backend table: per device type, a struct of function pointers for memory, tensor fills and
 * copies, optimizer updates and the reductions clipping uses. The CPU backend lives in core/backend_cpu.c; other
 * backends (the CUDA library) register theirs, and their op kernels (op.h, m2_op_register_kernels), at init. */
#ifndef M2_BACKEND_H
#define M2_BACKEND_H
#include "dtype.h"
#include "status.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct m2_tensor;

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
  /* ---- tensor hooks; NULL where the backend has none (core then falls back or reports it) ---- */
  /* dst = src elementwise, both on one device of this type, any strides (dst may be a strided view, src may have
   * 0 strides), any dtypes (converted like m2_store); numel must match (row-major order). */
  m2_status (*copy_tensor)(struct m2_tensor *dst, const struct m2_tensor *src);
  /* Every element of t (any strides, any dtype) = v. */
  m2_status (*fill)(struct m2_tensor *t, double v);
  /* ---- optimizer kernels (core/optim.c's maths); p, g and state contiguous F32 on one device ---- */
  /* SGD: d = g + wd p; buf = mu buf + d (buf may be NULL when mu == 0); d = nesterov ? d + mu buf : buf;
   * p -= lr d. */
  m2_status (*sgd_update)(struct m2_tensor *p, const struct m2_tensor *g, struct m2_tensor *buf, double lr,
                          double momentum, double wd, bool nesterov);
  /* AdamW: p -= lr wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). */
  m2_status (*adamw_update)(struct m2_tensor *p, const struct m2_tensor *g, struct m2_tensor *m, struct m2_tensor *v,
                            double lr, double beta1, double beta2, double eps, double wd, double bc1, double bc2);
  /* out[i] = sum of squares of ts[i] (contiguous F32 or BF16 on this device type; NULL -> 0), accumulated in
   * double in a fixed order (deterministic). */
  m2_status (*sumsq_many)(struct m2_tensor *const *ts, int n, double *out);
  /* t *= s in place (contiguous F32 or BF16). */
  m2_status (*scale_)(struct m2_tensor *t, double s);
  /* ---- generation (core/sample.c; NULL: the host samples) ----
   * One token per row of logits (rows, V), contiguous F32 or BF16 on this device, drawn as core/sample.h says with
   * temperature alone (no top-k, no top-p): temperature 0 takes the first largest logit, else the inverse CDF of
   * softmax(x / temperature) at u[r]. u, ids and bad are host arrays of rows: bad[r] = -1 for a drawn row, else
   * 2 * (the first position of a NaN or +inf logit) + (1 for +inf), or -2 when the row has no finite logit. */
  m2_status (*sample_rows)(const struct m2_tensor *logits, double temperature, const double *u, int64_t *ids,
                           int64_t *bad);
  /* ---- profiler marks (core/profile.c's timeline mode; NULL: the profiler uses the host clock) ----
   * mark: record a timestamp into `slot` (0, 1, ...) on device `index`'s stream, behind the work issued so far; the
   * backend makes each slot once, when first asked for it, and reuses it (a slot recorded again moves).
   * mark_ms: wait until slot b's timestamp is reached, then *ms = time from slot a's to slot b's (both recorded on
   * that device's stream, a before b). */
  m2_status (*mark)(int index, int slot);
  m2_status (*mark_ms)(int index, int a, int b, float *ms);
} m2_backend;

/* The backend for a device type; NULL when none is registered or it found no device. The first call for a type
 * runs the probe registered for it (m2_backend_register_probe), once. */
const m2_backend *m2_backend_get(m2_devtype t);
/* Register the backend of a non-CPU device type (NULL unregisters). */
void m2_backend_register(m2_devtype t, const m2_backend *b);
/* Register a probe for device type t: run once, by the first m2_backend_get(t); it calls m2_backend_register when
 * it finds a device. Lets a backend library be linked and registered at start-up without touching a device
 * until one is asked for. */
void m2_backend_register_probe(m2_devtype t, void (*probe)(void));
/* Number of devices of type t usable now (CPU: 1; 0 when no backend for t is registered or it has no device). */
int m2_device_count(m2_devtype t);
/* Copy nbytes between any two devices. */
m2_status m2_memcpy(m2_device dst_dev, void *dst, m2_device src_dev, const void *src, size_t nbytes);

/* Memory accounting (bytes currently held / peak since reset) per device type. */
size_t m2_mem_current(m2_devtype t);
size_t m2_mem_peak(m2_devtype t);
void m2_mem_reset_peak(m2_devtype t);
void m2_mem_account(m2_devtype t, long long delta);
/* A second watermark, for the profiler (it leaves m2_mem_peak alone): m2_mem_window_start(t) sets it to the bytes held
 * now; m2_mem_window_peak(t) is the most held since. */
void m2_mem_window_start(m2_devtype t);
size_t m2_mem_window_peak(m2_devtype t);

#ifdef __cplusplus
}
#endif
#endif
