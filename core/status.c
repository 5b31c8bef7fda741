/* status.c — per-thread error message storage. */
#include "status.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[2048];
static _Thread_local m2_status g_code;

m2_status m2_fail(m2_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_msg, sizeof g_msg, fmt, ap);
  va_end(ap);
  g_code = code;
  return code;
}

m2_status m2_fail_context(m2_status code, const char *fmt, ...) {
  char prefix[512], old[sizeof g_msg - 600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  snprintf(old, sizeof old, "%.*s", (int)sizeof old - 1, g_msg);
  snprintf(g_msg, sizeof g_msg, "%s: %s", prefix, old);
  g_code = code;
  return code;
}

const char *m2_errmsg(void) { return g_msg; }
m2_status m2_errcode(void) { return g_code; }
void m2_clear_error(void) { g_msg[0] = 0; g_code = M2_OK; }

const char *m2_status_name(m2_status s) {
  switch (s) {
    case M2_OK: return "ok";
    case M2_ERR_SHAPE: return "shape error";
    case M2_ERR_DTYPE: return "dtype error";
    case M2_ERR_DEVICE: return "device error";
    case M2_ERR_INDEX: return "index error";
    case M2_ERR_VALUE: return "value error";
    case M2_ERR_OOM: return "out of memory";
    case M2_ERR_IO: return "I/O error";
    case M2_ERR_AUTOGRAD: return "autograd error";
    case M2_ERR_UNSUPPORTED: return "unsupported";
    case M2_ERR_CUDA: return "CUDA error";
    case M2_ERR_INTERRUPTED: return "interrupted";
  }
  return "unknown error";
}
