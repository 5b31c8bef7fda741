/* status.h — error codes and the per-thread error message of the m2lab core.
 *
 * Every fallible core function returns an m2_status (or NULL for constructors)
 * and leaves a human-readable message in m2_errmsg(). Only the Lua binding turns
 * a failure into a Lua error (adding the script's file:line). Nothing in the
 * library calls exit() or abort() on user input. */
#ifndef M2_STATUS_H
#define M2_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum m2_status {
  M2_OK = 0,
  M2_ERR_SHAPE,        /* shapes do not fit together */
  M2_ERR_DTYPE,        /* wrong or unsupported dtype */
  M2_ERR_DEVICE,       /* tensors on different devices, or no kernel for a device */
  M2_ERR_INDEX,        /* index out of range */
  M2_ERR_VALUE,        /* a bad argument value */
  M2_ERR_OOM,          /* allocation failed */
  M2_ERR_IO,           /* file / HDF5 errors */
  M2_ERR_AUTOGRAD,     /* misuse of the autograd tape */
  M2_ERR_UNSUPPORTED,  /* not implemented for these arguments */
  M2_ERR_CUDA,         /* CUDA / cuBLAS / NCCL failure */
  M2_ERR_INTERRUPTED,  /* stopped by a signal */
} m2_status;

/* Set the message (printf-style) and return `code`. Usage:
 *   return m2_fail(M2_ERR_SHAPE, "add: shapes %s and %s do not broadcast", a, b); */
m2_status m2_fail(m2_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "what: " (to add context while unwinding). */
m2_status m2_fail_context(m2_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *m2_errmsg(void);     /* last message of this thread ("" if none) */
m2_status m2_errcode(void);      /* last code of this thread */
void m2_clear_error(void);
const char *m2_status_name(m2_status s);

/* Propagate a failing status: M2_TRY(m2_something(...)); */
#define M2_TRY(expr)                       \
  do {                                     \
    m2_status m2_try_s_ = (expr);          \
    if (m2_try_s_ != M2_OK) return m2_try_s_; \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif
