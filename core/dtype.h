/* dtype.h — element types and devices, bf16 conversion, generic load/store. */
#ifndef M2_DTYPE_H
#define M2_DTYPE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum m2_dtype { M2_F32 = 0, M2_F64, M2_BF16, M2_I32, M2_I64, M2_NDTYPES } m2_dtype;

typedef enum m2_devtype { M2_CPU = 0, M2_CUDA = 1 } m2_devtype;
#define M2_NUM_DEVTYPES 2 /* device types a backend can be registered for (core/backend.h) */
typedef struct m2_device {
  m2_devtype type;
  int index; /* GPU ordinal; 0 for cpu */
} m2_device;

static const m2_device M2_DEV_CPU = {M2_CPU, 0};

size_t m2_dtype_size(m2_dtype t);
const char *m2_dtype_name(m2_dtype t);
bool m2_dtype_from_name(const char *s, m2_dtype *out); /* "f32","float32","bf16",... */
static inline bool m2_dtype_is_float(m2_dtype t) { return t == M2_F32 || t == M2_F64 || t == M2_BF16; }

/* "cpu", "cuda", "cuda:1" <-> m2_device. Returns false on a malformed name. */
bool m2_device_parse(const char *s, m2_device *out);
void m2_device_name(m2_device d, char *buf, size_t n);
static inline bool m2_device_eq(m2_device a, m2_device b) { return a.type == b.type && a.index == b.index; }

/* bf16 <-> f32, round to nearest even (NaN stays NaN). */
static inline uint16_t m2_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float m2_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* A number as an integer element: truncated toward zero, saturated at the type's range, NaN -> 0 (a plain C cast of
 * NaN or of a value out of range is undefined behaviour; x86 gives INT_MIN). */
static inline int64_t m2_double_to_i64(double v) {
  if (v != v) return 0;
  if (v >= 9223372036854775808.0) return INT64_MAX;
  if (v < -9223372036854775808.0) return INT64_MIN;
  return (int64_t)v;
}
static inline int32_t m2_double_to_i32(double v) {
  if (v != v) return 0;
  if (v >= 2147483648.0) return INT32_MAX;
  if (v < -2147483648.0) return INT32_MIN;
  return (int32_t)v;
}

/* Read / write element i of a buffer of dtype t as a double (CPU only); integer stores convert as above. */
static inline double m2_load(const void *p, m2_dtype t, int64_t i) {
  switch (t) {
    case M2_F32: return ((const float *)p)[i];
    case M2_F64: return ((const double *)p)[i];
    case M2_BF16: return m2_bf16_to_f32(((const uint16_t *)p)[i]);
    case M2_I32: return ((const int32_t *)p)[i];
    case M2_I64: return (double)((const int64_t *)p)[i];
    default: return 0;
  }
}
static inline void m2_store(void *p, m2_dtype t, int64_t i, double v) {
  switch (t) {
    case M2_F32: ((float *)p)[i] = (float)v; break;
    case M2_F64: ((double *)p)[i] = v; break;
    case M2_BF16: ((uint16_t *)p)[i] = m2_f32_to_bf16((float)v); break;
    case M2_I32: ((int32_t *)p)[i] = m2_double_to_i32(v); break;
    case M2_I64: ((int64_t *)p)[i] = m2_double_to_i64(v); break;
    default: break;
  }
}
/* Integer read (exact for i64). */
static inline int64_t m2_load_int(const void *p, m2_dtype t, int64_t i) {
  if (t == M2_I64) return ((const int64_t *)p)[i];
  if (t == M2_I32) return ((const int32_t *)p)[i];
  return m2_double_to_i64(m2_load(p, t, i));
}

#ifdef __cplusplus
}
#endif
#endif
