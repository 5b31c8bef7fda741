/* groups.h — the group word problem (state tracking, DESIGN section 5): group tables and batches.
 * A dataset above core: it uses core's tensor API and RNG; core does not include it.
 * Elements of S_n (and A_n) are permutations of {0..n-1} in lexicographic order, identity = 0;
 * Z_n elements are 0..n-1 with addition mod n. Product (p*q)[i] = q[p[i]].
 * Input x_1..x_T i.i.d. uniform elements; target y_t = x_1 * x_2 * ... * x_t. */
#ifndef M2_DATASETS_GROUPS_H
#define M2_DATASETS_GROUPS_H
#include "tensor.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_group m2_group;

/* "S3", "S4", "S5", "A4", "A5", "Z2".."Z1000" (case-insensitive). NULL + message when unknown. */
m2_group *m2_group_new(const char *name);
void m2_group_free(m2_group *g);
int m2_group_order(const m2_group *g);
const char *m2_group_name(const m2_group *g);
int m2_group_mul(const m2_group *g, int a, int b); /* a * b */

typedef struct m2_group_batch_opts {
  uint64_t seed;
  int64_t index;     /* which batch: the data cursor (batches are independent of each other) */
  int64_t batch;     /* B */
  int64_t length;    /* T */
  bool random_length; /* each sequence gets a length uniform in 1..T; positions past it get target -100 */
} m2_group_batch_opts;

/* x, y: new (B, T) I64 tensors. Deterministic in (seed, index). */
m2_status m2_group_batch(const m2_group *g, const m2_group_batch_opts *o, m2_tensor **x, m2_tensor **y);

#ifdef __cplusplus
}
#endif
#endif
