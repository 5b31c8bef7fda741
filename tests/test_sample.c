/* test_sample.c — the sampler (core/sample.h): the filtered distributions on hand-made ones (temperature, top-k,
 * top-p, both, ties, masked tokens, greedy), top-k / top-p on random rows against a full sort, every draw against
 * an inverse CDF recomputed here from Philox, frequencies, determinism by (seed, offset, row), shapes and dtypes,
 * and every error message. */
#include "check.h"

static m2_tensor *row_tensor(m2_dtype dt, int64_t V, const double *x) {
  m2_tensor *t = m2_from_data(M2_F64, M2_DEV_CPU, 1, &V, x);
  if (dt == M2_F64) return t;
  m2_tensor *c = m2_clone_raw(t, dt, M2_DEV_CPU);
  m2_release(t);
  return c;
}

static m2_sample_opts opts(double temperature, int64_t top_k, double top_p) {
  m2_sample_opts o = M2_SAMPLE_DEFAULTS;
  o.temperature = temperature, o.top_k = top_k, o.top_p = top_p;
  return o;
}

/* the filtered distribution of one row equals want (V) within tol */
static void check_probs(const char *what, int64_t V, const double *x, m2_sample_opts o, const double *want,
                        double tol) {
  m2_tensor *t = row_tensor(M2_F64, V, x);
  m2_tensor *p = m2_sample_probs(t, &o);
  CHECK(p != NULL, "%s: sample_probs failed", what);
  if (p) {
    const double *got = m2_data(p);
    for (int64_t i = 0; i < V; i++) CHECK_CLOSE(got[i], want[i], tol, 0, what);
  }
  m2_release(p);
  m2_release(t);
}

/* hand-made: p = {0.05, 0.5, 0.15, 0.2, 0.1}; logits log p */
static void test_hand_made(void) {
  const double p[5] = {0.05, 0.5, 0.15, 0.2, 0.1};
  double x[5];
  for (int i = 0; i < 5; i++) x[i] = log(p[i]) + 0.75; /* a shift changes nothing */
  check_probs("temperature 1", 5, x, opts(1, 0, 1), p, 1e-12);
  const double k2[5] = {0, 0.5 / 0.7, 0, 0.2 / 0.7, 0};
  check_probs("top_k 2", 5, x, opts(1, 2, 1), k2, 1e-12);
  const double k5[5] = {0.05, 0.5, 0.15, 0.2, 0.1};
  check_probs("top_k = V keeps all", 5, x, opts(1, 5, 1), k5, 1e-12);
  check_probs("top_k > V keeps all", 5, x, opts(1, 9, 1), k5, 1e-12);
  const double p80[5] = {0, 0.5 / 0.85, 0.15 / 0.85, 0.2 / 0.85, 0};
  check_probs("top_p 0.8 (0.5 + 0.2 + 0.15)", 5, x, opts(1, 0, 0.8), p80, 1e-12);
  check_probs("top_p 0.6 (0.5 + 0.2)", 5, x, opts(1, 0, 0.6), k2, 1e-12);
  const double one[5] = {0, 1, 0, 0, 0};
  check_probs("top_p 0.4 (0.5 alone)", 5, x, opts(1, 0, 0.4), one, 1e-12);
  check_probs("top_p 0.93", 5, x, opts(1, 0, 0.93), (const double[]){0, 0.5 / 0.95, 0.15 / 0.95, 0.2 / 0.95,
                                                                     0.1 / 0.95}, 1e-12);
  /* top-k 3 then top-p 0.8 of the renormalised three: 0.5/0.85 + 0.2/0.85 = 0.82 >= 0.8 -> two tokens (top-p on the
   * unrenormalised mass would keep three) */
  check_probs("top_k 3 then top_p 0.8", 5, x, opts(1, 3, 0.8), k2, 1e-12);
  /* temperature 2: p^(1/2) renormalised; 0.5: p^2 */
  for (int pass = 0; pass < 2; pass++) {
    double tmp = pass ? 0.5 : 2, w[5], s = 0;
    for (int i = 0; i < 5; i++) s += w[i] = pow(p[i], 1 / tmp);
    for (int i = 0; i < 5; i++) w[i] /= s;
    check_probs(pass ? "temperature 0.5" : "temperature 2", 5, x, opts(tmp, 0, 1), w, 1e-12);
  }
  check_probs("temperature 0 (greedy)", 5, x, opts(0, 0, 0.3), one, 0);
  /* ties on the k-th value: lower ids first */
  const double tie[5] = {1, 3, 3, 3, 0};
  check_probs("top_k 2, a tie of three", 5, tie, opts(1, 2, 1), (const double[]){0, 0.5, 0.5, 0, 0}, 1e-12);
  check_probs("greedy, a tie: the first", 5, tie, opts(0, 0, 1), (const double[]){0, 1, 0, 0, 0}, 0);
  /* top-p at a tie: the lower id first */
  check_probs("top_p 0.3, a tie", 5, tie, opts(1, 0, 0.3), (const double[]){0, 1, 0, 0, 0}, 0);
  /* -inf masks a token */
  const double mask[3] = {0, -INFINITY, 0};
  check_probs("-inf masked", 3, mask, opts(1, 0, 1), (const double[]){0.5, 0, 0.5}, 1e-15);
  check_probs("-inf masked, top_k 3", 3, mask, opts(1, 3, 0.99), (const double[]){0.5, 0, 0.5}, 1e-15);
  /* f32 and bf16 logits give the f32 / bf16 values' distribution */
  m2_tensor *t32 = row_tensor(M2_F32, 5, x), *t16 = row_tensor(M2_BF16, 5, x);
  m2_sample_opts o = opts(1, 0, 1);
  m2_tensor *q32 = m2_sample_probs(t32, &o), *q16 = m2_sample_probs(t16, &o);
  CHECK(q32 && q16, "f32 / bf16 logits");
  if (q32 && q16) {
    for (int i = 0; i < 5; i++) {
      CHECK_CLOSE(((double *)m2_data(q32))[i], p[i], 1e-7, 0, "f32 logits");
      CHECK_CLOSE(((double *)m2_data(q16))[i], p[i], 2e-2 * p[i], 0, "bf16 logits");
    }
  }
  m2_release(q32), m2_release(q16), m2_release(t32), m2_release(t16);
}

/* ---- random rows against a full sort ---- */
typedef struct { double z; int64_t id; } zi;
static int zi_cmp(const void *a, const void *b) {
  const zi *x = a, *y = b;
  if (x->z != y->z) return x->z > y->z ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* the kept set by sorting everything: top-k then top-p of the renormalised rest -> keep (V) */
static void naive_keep(const double *x, int64_t V, double temp, int64_t k, double top_p, unsigned char *keep) {
  zi *s = malloc((size_t)V * sizeof *s);
  for (int64_t i = 0; i < V; i++) s[i] = (zi){x[i] / temp, i};
  qsort(s, (size_t)V, sizeof *s, zi_cmp);
  int64_t n = k > 0 && k < V ? k : V;
  double m = s[0].z, mass = 0, cum = 0;
  for (int64_t j = 0; j < n; j++) mass += exp(s[j].z - m);
  memset(keep, 0, (size_t)V);
  for (int64_t j = 0; j < n; j++) {
    keep[s[j].id] = 1;
    cum += exp(s[j].z - m);
    if (top_p < 1 && cum >= top_p * mass) break;
  }
  free(s);
}

static void test_random_rows(m2_rng *r) {
  const int64_t V = 3001;
  const struct { double temp; int64_t k; double p; } cases[] = {
      {1, 0, 0.9}, {0.7, 0, 0.5}, {1.3, 0, 0.99}, {1, 40, 1}, {1, 1, 1}, {0.8, 200, 0.9}, {1, 3000, 0.3}};
  double *x = malloc((size_t)V * sizeof(double));
  unsigned char *keep = malloc((size_t)V);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    for (int64_t i = 0; i < V; i++) x[i] = 3 * (m2_rng_uniform(r) * 2 - 1) + (i % 7 == 0 ? 2 : 0);
    m2_sample_opts o = opts(cases[c].temp, cases[c].k, cases[c].p);
    naive_keep(x, V, o.temperature, o.top_k, o.top_p, keep);
    m2_tensor *t = row_tensor(M2_F64, V, x);
    m2_tensor *pr = m2_sample_probs(t, &o);
    CHECK(pr != NULL, "case %zu", c);
    if (pr) {
      const double *p = m2_data(pr);
      int64_t bad = 0, kept = 0;
      double s = 0;
      for (int64_t i = 0; i < V; i++) {
        bad += (p[i] > 0) != keep[i];
        kept += keep[i];
        s += p[i];
      }
      CHECK(bad == 0, "case %zu (T %g, k %lld, p %g): %lld tokens kept differently from a full sort (%lld kept)", c,
            o.temperature, (long long)o.top_k, o.top_p, (long long)bad, (long long)kept);
      CHECK_CLOSE(s, 1, 1e-12, 0, "probabilities sum to 1");
    }
    m2_release(pr);
    m2_release(t);
  }
  free(x);
  free(keep);
}

/* ---- draws ---- */
/* the draw recomputed: u from Philox (seed, M2_SAMPLE_STREAM + row, offset), the first id whose running sum of p
 * (in id order) exceeds u */
static int64_t expected_draw(const double *p, int64_t V, uint64_t seed, uint64_t row, uint64_t offset) {
  uint32_t r[4];
  m2_philox(seed, M2_SAMPLE_STREAM + row, offset, r);
  double u = (double)(((uint64_t)r[0] << 21) ^ (r[1] >> 11)) / 9007199254740992.0, cum = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < V; i++) {
    if (p[i] <= 0) continue;
    cum += p[i];
    last = i;
    if (cum > u) return i;
  }
  return last;
}

static void test_draws(m2_rng *r) {
  /* B = 4 rows of random logits, many offsets: each id is the inverse CDF of the filtered distribution */
  const int64_t B = 4, V = 37;
  double x[4 * 37];
  for (int64_t i = 0; i < B * V; i++) x[i] = 2 * m2_rng_uniform(r) - 1;
  int64_t shape[2] = {B, V};
  m2_tensor *t = m2_from_data(M2_F64, M2_DEV_CPU, 2, shape, x);
  m2_sample_opts o = opts(0.9, 20, 0.8);
  o.seed = 1234;
  m2_tensor *pr = m2_sample_probs(t, &o);
  int mismatches = 0, differ_rows = 0, differ_seed = 0;
  for (uint64_t off = 0; off < 200 && pr; off++) {
    o.offset = off;
    o.seed = 1234;
    m2_tensor *ids = m2_sample(t, &o), *again = m2_sample(t, &o);
    o.seed = 1235;
    m2_tensor *other = m2_sample(t, &o);
    CHECK(ids && again && other && ids->ndim == 1 && ids->shape[0] == B && ids->dtype == M2_I64, "ids (B) i64");
    if (!ids || !again || !other) break;
    const int64_t *a = m2_data(ids), *b = m2_data(again), *c = m2_data(other);
    for (int64_t row = 0; row < B; row++) {
      int64_t want = expected_draw((const double *)m2_data(pr) + row * V, V, 1234, (uint64_t)row, off);
      mismatches += a[row] != want;
      CHECK(a[row] == b[row], "the same seed and offset draw the same id");
      differ_seed += a[row] != c[row];
    }
    differ_rows += a[0] != a[1];
    m2_release(ids), m2_release(again), m2_release(other);
  }
  CHECK(mismatches == 0, "%d draws differ from the inverse CDF recomputed from Philox", mismatches);
  CHECK(differ_rows > 20, "rows draw from their own streams (%d of 200 differ)", differ_rows);
  CHECK(differ_seed > 100, "another seed gives other draws (%d of 800 differ)", differ_seed);
  m2_release(pr);
  m2_release(t);

  /* frequencies on the hand-made distribution with top_k 3: {0.5, 0.2, 0.15} / 0.85; ids 0 and 4 never */
  const double p[5] = {0.05, 0.5, 0.15, 0.2, 0.1};
  double lx[5];
  for (int i = 0; i < 5; i++) lx[i] = log(p[i]);
  m2_tensor *row = row_tensor(M2_F32, 5, lx);
  o = opts(1, 3, 1);
  o.seed = (uint64_t)m2_rng_randint(r, 1 << 30);
  const int N = 20000;
  int count[5] = {0};
  for (int i = 0; i < N; i++) {
    o.offset = (uint64_t)i;
    m2_tensor *id = m2_sample(row, &o);
    CHECK(id && id->ndim == 0, "1-D logits give a 0-d id");
    if (!id) break;
    int64_t v = *(int64_t *)m2_data(id);
    if (v >= 0 && v < 5) count[v]++;
    m2_release(id);
  }
  CHECK(count[0] == 0 && count[4] == 0, "tokens outside the top 3 never drawn (%d, %d)", count[0], count[4]);
  const double want[5] = {0, 0.5 / 0.85, 0.15 / 0.85, 0.2 / 0.85, 0};
  for (int i = 1; i < 4; i++) {
    double f = (double)count[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
    CHECK(fabs(f - want[i]) < 5 * sd, "frequency of id %d: %.4f, want %.4f (5 sd = %.4f)", i, f, want[i], 5 * sd);
  }
  m2_release(row);
}

/* rows spread over threads (rows * V >= 2^16): the same distributions and draws as row by row, and the lowest
 * failing row is the one reported */
static void test_threads(m2_rng *r) {
  const int64_t B = 9, V = 10007;
  int64_t shape[2] = {B, V};
  m2_tensor *t = m2_randn(r, M2_F32, M2_DEV_CPU, 2, shape);
  m2_sample_opts o = opts(0.9, 0, 0.95);
  o.seed = 77, o.offset = 5;
  m2_tensor *ids = m2_sample(t, &o), *pr = m2_sample_probs(t, &o);
  CHECK(ids && pr, "B = %lld rows of V = %lld", (long long)B, (long long)V);
  int bad_p = 0, bad_id = 0;
  for (int64_t b = 0; ids && pr && b < B; b++) {
    m2_tensor *row = m2_view_raw(t, 1, &V, &t->stride[1], t->offset + b * V); /* one row: a single thread */
    m2_tensor *p1 = m2_sample_probs(row, &o);
    const double *a = (const double *)m2_data(pr) + b * V, *c = p1 ? m2_data(p1) : NULL;
    for (int64_t i = 0; c && i < V; i++) bad_p += a[i] != c[i];
    bad_id += ((int64_t *)m2_data(ids))[b] != expected_draw(a, V, 77, (uint64_t)b, 5);
    m2_release(p1);
    m2_release(row);
  }
  CHECK(bad_p == 0, "%d probabilities differ between the threaded call and row-by-row calls", bad_p);
  CHECK(bad_id == 0, "%d threaded draws differ from the inverse CDF", bad_id);
  int64_t i3[2] = {3, 17}, i6[2] = {6, 2};
  m2_set(t, i6, NAN);
  m2_set(t, i3, NAN);
  CHECK_FAILS(m2_sample(t, &o) == NULL, M2_ERR_VALUE, "logits row 3 (0-based), token 17 is NaN");
  m2_release(ids), m2_release(pr), m2_release(t);
}

static void test_shapes_and_errors(m2_rng *r) {
  int64_t shape[3] = {2, 3, 11};
  m2_tensor *t = m2_randn(r, M2_F32, M2_DEV_CPU, 3, shape);
  m2_sample_opts o = M2_SAMPLE_DEFAULTS;
  m2_tensor *ids = m2_sample(t, &o);
  CHECK(ids && ids->ndim == 2 && ids->shape[0] == 2 && ids->shape[1] == 3, "(2, 3, V) -> ids (2, 3)");
  for (int64_t i = 0; ids && i < 6; i++) {
    int64_t v = ((int64_t *)m2_data(ids))[i];
    CHECK(v >= 0 && v < 11, "id %lld in [0, V)", (long long)v);
  }
  m2_release(ids);
  m2_tensor *p = m2_sample_probs(t, &o);
  CHECK(p && p->ndim == 3 && p->dtype == M2_F64 && p->shape[2] == 11, "probs (2, 3, V) f64");
  m2_release(p);

  o.temperature = -1;
  CHECK_FAILS(m2_sample(t, &o) == NULL, M2_ERR_VALUE, "temperature must be a finite number >= 0");
  o.temperature = NAN;
  CHECK_FAILS(m2_sample(t, &o) == NULL, M2_ERR_VALUE, "temperature must be a finite number >= 0");
  o = opts(1, -1, 1);
  CHECK_FAILS(m2_sample(t, &o) == NULL, M2_ERR_VALUE, "top_k must be >= 0");
  o = opts(1, 0, 0);
  CHECK_FAILS(m2_sample_probs(t, &o) == NULL, M2_ERR_VALUE, "top_p must be in (0, 1]");
  o = opts(1, 0, 1.5);
  CHECK_FAILS(m2_sample(t, &o) == NULL, M2_ERR_VALUE, "top_p must be in (0, 1]");
  CHECK_FAILS(m2_sample(t, NULL) == NULL, M2_ERR_VALUE, "options are NULL");
  CHECK_FAILS(m2_sample(NULL, &o) == NULL, M2_ERR_VALUE, "logits are NULL");
  o = opts(1, 0, 1);
  int64_t bshape[2] = {2, 4};
  double bad[8] = {0, 1, 2, 3, 0, 1, 2, NAN};
  m2_tensor *b = m2_from_data(M2_F64, M2_DEV_CPU, 2, bshape, bad);
  CHECK_FAILS(m2_sample(b, &o) == NULL, M2_ERR_VALUE, "logits row 1 (0-based), token 3 is NaN");
  o.temperature = 0;
  CHECK_FAILS(m2_sample(b, &o) == NULL, M2_ERR_VALUE, "token 3 is NaN");
  m2_release(b);
  bad[7] = INFINITY;
  b = m2_from_data(M2_F64, M2_DEV_CPU, 2, bshape, bad);
  CHECK_FAILS(m2_sample_probs(b, &o) == NULL, M2_ERR_VALUE, "token 3 is +inf");
  m2_release(b);
  for (int i = 0; i < 4; i++) bad[i] = -INFINITY;
  bad[7] = 1;
  b = m2_from_data(M2_F64, M2_DEV_CPU, 2, bshape, bad);
  CHECK_FAILS(m2_sample(b, &o) == NULL, M2_ERR_VALUE, "logits row 0 (0-based) has no finite logit (all 4 are -inf)");
  m2_release(b);
  m2_tensor *ints = m2_zeros(M2_I64, M2_DEV_CPU, 2, bshape);
  CHECK_FAILS(m2_sample(ints, &o) == NULL, M2_ERR_DTYPE, "logits must be floating point, got i64");
  m2_release(ints);
  m2_tensor *s = m2_scalar(M2_F32, M2_DEV_CPU, 1);
  CHECK_FAILS(m2_sample(s, &o) == NULL, M2_ERR_SHAPE, "logits must be (..., V) with V >= 1, got ()");
  m2_release(s);
  int64_t z[2] = {2, 0};
  m2_tensor *e = m2_zeros(M2_F32, M2_DEV_CPU, 2, z);
  CHECK_FAILS(m2_sample(e, &o) == NULL, M2_ERR_SHAPE, "with V >= 1, got (2, 0)");
  m2_release(e);
  m2_release(t);
}

int main(void) {
  m2_rng r = m2_rng_make(16, 0);
  test_hand_made();
  test_random_rows(&r);
  test_draws(&r);
  test_threads(&r);
  test_shapes_and_errors(&r);
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_sample");
}
