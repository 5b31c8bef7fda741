/* groups.c — group tables (S_n, A_n, Z_n) and deterministic batches of the word problem. */
#include "groups.h"
#include "rng.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct m2_group {
  char name[16];
  int order;
  int32_t *table; /* (order, order): table[a * order + b] = a * b */
};

#define M2_DATA_STREAM 0x5EED0DA7Aull

/* next permutation in lexicographic order; false after the last */
static bool next_perm(int *p, int n) {
  int i = n - 2;
  while (i >= 0 && p[i] >= p[i + 1]) i--;
  if (i < 0) return false;
  int j = n - 1;
  while (p[j] <= p[i]) j--;
  int t = p[i]; p[i] = p[j]; p[j] = t;
  for (int a = i + 1, b = n - 1; a < b; a++, b--) { t = p[a]; p[a] = p[b]; p[b] = t; }
  return true;
}

static bool is_even(const int *p, int n) {
  int inv = 0;
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) inv += p[i] > p[j];
  return inv % 2 == 0;
}

static int find_perm(const int *all, int count, int n, const int *p) {
  for (int e = 0; e < count; e++)
    if (memcmp(all + e * n, p, sizeof(int) * (size_t)n) == 0) return e;
  return -1;
}

m2_group *m2_group_new(const char *name) {
  char up[16];
  size_t L = strlen(name);
  if (L == 0 || L >= sizeof up) { m2_fail(M2_ERR_VALUE, "unknown group '%s' (expected S3, S5, A5, Z<n>, ...)", name); return NULL; }
  for (size_t i = 0; i <= L; i++) up[i] = (char)toupper((unsigned char)name[i]);
  char kind = up[0];
  char *end;
  long n = strtol(up + 1, &end, 10);
  bool ok = *end == 0 && end != up + 1 &&
            ((kind == 'S' && n >= 2 && n <= 6) || (kind == 'A' && n >= 3 && n <= 6) || (kind == 'Z' && n >= 2 && n <= 1000));
  if (!ok) {
    m2_fail(M2_ERR_VALUE, "unknown group '%s' (expected S2..S6, A3..A6 or Z2..Z1000, e.g. S3, S5, A5, Z7)", name);
    return NULL;
  }
  m2_group *g = calloc(1, sizeof *g);
  if (!g) { m2_fail(M2_ERR_OOM, "out of memory"); return NULL; }
  snprintf(g->name, sizeof g->name, "%s", up);
  if (kind == 'Z') {
    g->order = (int)n;
    g->table = malloc(sizeof(int32_t) * (size_t)(n * n));
    if (!g->table) { free(g); m2_fail(M2_ERR_OOM, "out of memory"); return NULL; }
    for (int a = 0; a < n; a++)
      for (int b = 0; b < n; b++) g->table[a * n + b] = (a + b) % (int)n;
    return g;
  }
  /* enumerate permutations (even ones for A_n) in lexicographic order */
  int nn = (int)n, fact = 1;
  for (int i = 2; i <= nn; i++) fact *= i;
  int *all = malloc(sizeof(int) * (size_t)(fact * nn)), p[8];
  for (int i = 0; i < nn; i++) p[i] = i;
  int count = 0;
  do {
    if (kind == 'S' || is_even(p, nn)) memcpy(all + count++ * nn, p, sizeof(int) * (size_t)nn);
  } while (next_perm(p, nn));
  g->order = count;
  g->table = malloc(sizeof(int32_t) * (size_t)(count * count));
  for (int a = 0; a < count; a++)
    for (int b = 0; b < count; b++) {
      int r[8];
      const int *pa = all + a * nn, *pb = all + b * nn;
      for (int i = 0; i < nn; i++) r[i] = pb[pa[i]]; /* (p*q)[i] = q[p[i]] */
      g->table[a * count + b] = find_perm(all, count, nn, r);
    }
  free(all);
  return g;
}

void m2_group_free(m2_group *g) {
  if (!g) return;
  free(g->table);
  free(g);
}
int m2_group_order(const m2_group *g) { return g->order; }
const char *m2_group_name(const m2_group *g) { return g->name; }
int m2_group_mul(const m2_group *g, int a, int b) { return g->table[a * g->order + b]; }

m2_status m2_group_batch(const m2_group *g, const m2_group_batch_opts *o, m2_tensor **x, m2_tensor **y) {
  if (o->batch <= 0 || o->length <= 0)
    return m2_fail(M2_ERR_VALUE, "group batch: batch (%lld) and length (%lld) must be positive", (long long)o->batch,
                   (long long)o->length);
  int64_t shape[2] = {o->batch, o->length}, n;
  /* the checked product: batch = 2^63 - 1 overflowed it (UBSan; found by tests/fuzz/fuzz_lua.c) */
  M2_TRY(m2_shape_numel(2, shape, "group batch", &n));
  int64_t *xs = malloc(sizeof(int64_t) * (size_t)n), *ys = malloc(sizeof(int64_t) * (size_t)n);
  if (!xs || !ys) { free(xs); free(ys); return m2_fail(M2_ERR_OOM, "out of memory"); }
  for (int64_t b = 0; b < o->batch; b++) {
    /* one generator per sequence, keyed by (seed, batch index, row): batches are reproducible alone */
    m2_rng r = m2_rng_make(o->seed ^ M2_DATA_STREAM, (uint64_t)o->index * 1000003ull + (uint64_t)b);
    int64_t len = o->random_length ? 1 + m2_rng_randint(&r, o->length) : o->length;
    int acc = 0;
    for (int64_t t = 0; t < o->length; t++) {
      int e = (int)m2_rng_randint(&r, g->order);
      acc = t == 0 ? e : m2_group_mul(g, acc, e);
      xs[b * o->length + t] = t < len ? e : 0;
      ys[b * o->length + t] = t < len ? acc : -100;
    }
  }
  *x = m2_from_data(M2_I64, M2_DEV_CPU, 2, shape, xs);
  *y = m2_from_data(M2_I64, M2_DEV_CPU, 2, shape, ys);
  free(xs);
  free(ys);
  if (!*x || !*y) { m2_release(*x); m2_release(*y); return m2_errcode(); }
  return M2_OK;
}
