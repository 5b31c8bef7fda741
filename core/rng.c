/* rng.c — Philox4x32-10 and tensor fills built on it. */
#include "rng.h"
#include <math.h>
#include <stdlib.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

void m2_philox(uint64_t seed, uint64_t stream, uint64_t ctr, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int round = 0; round < 10; round++) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(PHILOX_M0, c0, &hi0, &lo0);
    mulhilo(PHILOX_M1, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

m2_rng m2_rng_make(uint64_t seed, uint64_t stream) { return (m2_rng){seed, stream, 0}; }

static inline double u53(uint32_t a, uint32_t b) {
  return (double)(((uint64_t)a << 21) ^ (b >> 11)) * (1.0 / 9007199254740992.0);
}

uint64_t m2_rng_u64(m2_rng *r) {
  uint32_t o[4];
  m2_philox(r->seed, r->stream, r->offset++, o);
  return ((uint64_t)o[0] << 32) | o[1];
}

double m2_rng_uniform(m2_rng *r) {
  uint32_t o[4];
  m2_philox(r->seed, r->stream, r->offset++, o);
  return u53(o[0], o[1]);
}

int64_t m2_rng_randint(m2_rng *r, int64_t n) {
  if (n <= 1) return 0;
  uint64_t lim = UINT64_MAX - UINT64_MAX % (uint64_t)n;
  for (;;) {
    uint64_t v = m2_rng_u64(r);
    if (v < lim) return (int64_t)(v % (uint64_t)n);
  }
}

static m2_status fill_host(m2_tensor *t, double *vals) {
  m2_tensor *h = m2_from_data(M2_F64, M2_DEV_CPU, t->ndim, t->shape, vals);
  free(vals);
  if (!h) return m2_errcode();
  m2_status s = m2_copy_(t, h);
  m2_release(h);
  return s;
}

m2_status m2_rng_uniform_(m2_rng *r, m2_tensor *t, double lo, double hi) {
  int64_t n = m2_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!v) return m2_fail(M2_ERR_OOM, "rng: out of host memory");
  for (int64_t i = 0; i < n; i += 4) {
    uint32_t o[4];
    m2_philox(r->seed, r->stream, r->offset + (uint64_t)(i / 4), o);
    /* 4 x 32-bit uniforms per block: enough precision for init and data */
    for (int j = 0; j < 4 && i + j < n; j++) v[i + j] = lo + (hi - lo) * ((o[j] + 0.5) * (1.0 / 4294967296.0));
  }
  r->offset += (uint64_t)((n + 3) / 4);
  return fill_host(t, v);
}

m2_status m2_rng_normal_(m2_rng *r, m2_tensor *t, double mean, double std) {
  int64_t n = m2_numel(t);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!v) return m2_fail(M2_ERR_OOM, "rng: out of host memory");
  for (int64_t i = 0; i < n; i += 2) {
    uint32_t o[4];
    m2_philox(r->seed, r->stream, r->offset + (uint64_t)(i / 2), o);
    double u1 = (o[0] + 0.5) * (1.0 / 4294967296.0), u2 = (o[1] + 0.5) * (1.0 / 4294967296.0);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    v[i] = mean + std * rad * cos(th);
    if (i + 1 < n) v[i + 1] = mean + std * rad * sin(th);
  }
  r->offset += (uint64_t)((n + 1) / 2);
  return fill_host(t, v);
}

m2_tensor *m2_randn(m2_rng *r, m2_dtype dt, m2_device dev, int ndim, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, dev, ndim, shape);
  if (t && m2_rng_normal_(r, t, 0.0, 1.0) != M2_OK) { m2_release(t); return NULL; }
  return t;
}

m2_tensor *m2_rand(m2_rng *r, m2_dtype dt, m2_device dev, int ndim, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, dev, ndim, shape);
  if (t && m2_rng_uniform_(r, t, 0.0, 1.0) != M2_OK) { m2_release(t); return NULL; }
  return t;
}

static m2_rng g_default = {0, 0, 0};
m2_rng *m2_default_rng(void) { return &g_default; }
void m2_manual_seed(uint64_t seed) { g_default = m2_rng_make(seed, 0); }
