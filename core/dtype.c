/* dtype.c — dtype names and sizes, device names. */
#include "dtype.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t m2_dtype_size(m2_dtype t) {
  static const size_t sz[M2_NDTYPES] = {4, 8, 2, 4, 8};
  return (unsigned)t < M2_NDTYPES ? sz[t] : 0;
}

const char *m2_dtype_name(m2_dtype t) {
  static const char *nm[M2_NDTYPES] = {"f32", "f64", "bf16", "i32", "i64"};
  return (unsigned)t < M2_NDTYPES ? nm[t] : "?";
}

bool m2_dtype_from_name(const char *s, m2_dtype *out) {
  static const struct { const char *n; m2_dtype t; } tab[] = {
      {"f32", M2_F32}, {"float32", M2_F32}, {"float", M2_F32}, {"f64", M2_F64}, {"float64", M2_F64},
      {"double", M2_F64}, {"bf16", M2_BF16}, {"bfloat16", M2_BF16}, {"i32", M2_I32}, {"int32", M2_I32},
      {"i64", M2_I64}, {"int64", M2_I64}, {"long", M2_I64}};
  for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
    if (strcmp(s, tab[i].n) == 0) { *out = tab[i].t; return true; }
  return false;
}

bool m2_device_parse(const char *s, m2_device *out) {
  if (strcmp(s, "cpu") == 0) { *out = M2_DEV_CPU; return true; }
  if (strncmp(s, "cuda", 4) == 0) {
    if (s[4] == 0) { out->type = M2_CUDA; out->index = 0; return true; }
    if (s[4] == ':' && s[5]) {
      char *end;
      long v = strtol(s + 5, &end, 10);
      if (*end == 0 && v >= 0 && v < 1024) { out->type = M2_CUDA; out->index = (int)v; return true; }
    }
  }
  return false;
}

void m2_device_name(m2_device d, char *buf, size_t n) {
  if (d.type == M2_CPU) snprintf(buf, n, "cpu");
  else snprintf(buf, n, "cuda:%d", d.index);
}
