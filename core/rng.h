/* rng.h — counter-based random numbers (Philox4x32-10).
 * A draw is fully determined by (seed, stream, offset): the same numbers on any
 * device, in any order of calls, and after resuming a run from a checkpoint that
 * stored the offset. Each 128-bit block gives 4 uniform 32-bit numbers. */
#ifndef M2_RNG_H
#define M2_RNG_H
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_rng {
  uint64_t seed;
  uint64_t stream;  /* independent sequences for the same seed (init, data, dropout, ...) */
  uint64_t offset;  /* next 128-bit block to use */
} m2_rng;

m2_rng m2_rng_make(uint64_t seed, uint64_t stream);
/* The raw generator: block `ctr` of (seed, stream) into out[4]. */
void m2_philox(uint64_t seed, uint64_t stream, uint64_t ctr, uint32_t out[4]);
/* Next uniform double in [0, 1), 53 random bits (advances offset by one block per call). */
double m2_rng_uniform(m2_rng *r);
uint64_t m2_rng_u64(m2_rng *r);
/* Integer uniform in [0, n) without modulo bias. */
int64_t m2_rng_randint(m2_rng *r, int64_t n);

/* Fill tensors (any dtype/device; drawn on the host). Advances r->offset by ceil(numel/2) blocks
 * for normal and ceil(numel/4) for uniform. */
m2_status m2_rng_uniform_(m2_rng *r, m2_tensor *t, double lo, double hi);
m2_status m2_rng_normal_(m2_rng *r, m2_tensor *t, double mean, double std);
m2_tensor *m2_randn(m2_rng *r, m2_dtype dt, m2_device dev, int ndim, const int64_t *shape);
m2_tensor *m2_rand(m2_rng *r, m2_dtype dt, m2_device dev, int ndim, const int64_t *shape); /* U[0,1) */

/* The process-wide default generator (stream 0), re-seeded by m2_manual_seed. */
m2_rng *m2_default_rng(void);
void m2_manual_seed(uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
