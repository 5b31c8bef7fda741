/* cuda_sample.c — the GPU temperature sampler (cuda/sample.cu, the backend's sample_rows hook) against the host
 * sampler of core/sample.c on the same logits: greedy (with ties, which the first largest id wins) and temperatures
 * 0.5 / 1 / 1.7, F32 and BF16 logits, vocabularies from 1 to 100352 (not a multiple of the block), rows with -inf
 * (masked) tokens, a row whose mass sits in one token; the ids must be equal row for row (the two differ only in how
 * the additions of exp(z - max) are grouped, a relative 1e-16). Then the errors: NaN / +inf / all -inf rows name the
 * row and the token as the host does, and top-k / top-p still sample on the host with the same result.
 * Skips (exit 77) without a GPU. */
#include <math.h>
#include <string.h>
#include "cuda_parity.h"
#include "../core/sample.h"

#ifndef M2_HAVE_CUDA
int main(void) {
  printf("cuda_sample: built without CUDA, skipped\n");
  return 77;
}
#else

/* Random logits (rows, V): scale * N(0, 1), with every 7th row holding masked (-inf) tokens and, for greedy, ties. */
static m2_tensor *logits_host(m2_rng *r, int64_t rows, int64_t V, double scale, bool ties) {
  int64_t sh[2] = {rows, V};
  m2_tensor *t = m2_randn(r, M2_F32, M2_DEV_CPU, 2, sh);
  float *x = m2_data(t);
  for (int64_t i = 0; i < rows * V; i++) x[i] = (float)(x[i] * scale);
  for (int64_t b = 0; b < rows; b++) {
    float *row = x + b * V;
    if (b % 7 == 3)
      for (int64_t i = 1; i < V; i += 3) row[i] = -INFINITY; /* from id 1: a row of V = 1 keeps its one token */
    if (ties && V > 4) row[V / 2] = row[V - 1] = row[1] = 50.f; /* three equal maxima: id 1 must win */
    if (b % 11 == 5 && V > 1) row[V - 2] = 200.f;             /* all the mass in one token */
  }
  return t;
}

static int64_t mismatches(const m2_tensor *a, const m2_tensor *b, int64_t *first) {
  m2_tensor *ha = m2_clone_raw(a, M2_I64, M2_DEV_CPU), *hb = m2_clone_raw(b, M2_I64, M2_DEV_CPU);
  const int64_t *x = m2_data(ha), *y = m2_data(hb), n = m2_numel(ha);
  int64_t bad = 0;
  *first = -1;
  for (int64_t i = 0; i < n; i++)
    if (x[i] != y[i]) {
      if (*first < 0) *first = i;
      bad++;
    }
  m2_release(ha);
  m2_release(hb);
  return bad;
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_sample");
  m2_rng r = m2_rng_make(2024, 0);
  const int64_t vocabs[] = {1, 7, 513, 50257, 100352};
  const double temps[] = {0, 0.5, 1.0, 1.7};
  const m2_dtype dts[] = {M2_F32, M2_BF16};
  int64_t rows_total = 0, bad_total = 0;
  for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++)
    for (size_t ti = 0; ti < sizeof temps / sizeof temps[0]; ti++)
      for (size_t di = 0; di < 2; di++) {
        const int64_t V = vocabs[vi], rows = V > 50000 ? 24 : 64;
        m2_tensor *h = logits_host(&r, rows, V, 3.0, temps[ti] == 0);
        m2_tensor *hr = m2_clone_raw(h, dts[di], M2_DEV_CPU);              /* rounded to the dtype */
        m2_tensor *href = m2_clone_raw(hr, M2_F32, M2_DEV_CPU);            /* the host sampler reads these */
        m2_tensor *g = m2_clone_raw(hr, dts[di], (m2_device){M2_CUDA, 0}); /* the same values on the GPU */
        for (uint64_t off = 0; off < 3; off++) {
          m2_sample_opts o = {temps[ti], 0, 1.0, 17 + vi, off};
          m2_tensor *want = m2_sample(href, &o), *got = m2_sample(g, &o);
          CHECK(want && got, "V %lld T %g %s: sample failed: %s", (long long)V, temps[ti], m2_dtype_name(dts[di]),
                m2_errmsg());
          if (want && got) {
            CHECK(got->device.type == M2_CUDA, "ids come back on the logits' device");
            int64_t first, n = mismatches(got, want, &first);
            rows_total += rows, bad_total += n;
            CHECK(n == 0, "V %lld temperature %g %s offset %llu: %lld of %lld rows differ from the host (first: row %lld)",
                  (long long)V, temps[ti], m2_dtype_name(dts[di]), (unsigned long long)off, (long long)n,
                  (long long)rows, (long long)first);
          }
          m2_release(want);
          m2_release(got);
        }
        m2_release(h), m2_release(hr), m2_release(href), m2_release(g);
      }
  printf("cuda_sample: %lld rows drawn on the GPU, %lld differ from the host sampler\n", (long long)rows_total,
         (long long)bad_total);

  /* errors: the host's messages, the lowest bad row */
  {
    int64_t sh[2] = {3, 10};
    m2_tensor *h = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sh);
    float *x = m2_data(h);
    x[1 * 10 + 4] = NAN, x[1 * 10 + 6] = INFINITY, x[2 * 10 + 2] = INFINITY;
    m2_tensor *g = m2_clone_raw(h, M2_F32, (m2_device){M2_CUDA, 0});
    m2_sample_opts o = M2_SAMPLE_DEFAULTS;
    CHECK_FAILS(m2_sample(g, &o) == NULL, M2_ERR_VALUE, "row 1 (0-based), token 4 is NaN");
    o.temperature = 0;
    CHECK_FAILS(m2_sample(g, &o) == NULL, M2_ERR_VALUE, "row 1 (0-based), token 4 is NaN");
    for (int i = 0; i < 10; i++) x[1 * 10 + i] = 0.f, x[2 * 10 + i] = -INFINITY;
    m2_release(g);
    g = m2_clone_raw(h, M2_F32, (m2_device){M2_CUDA, 0});
    CHECK_FAILS(m2_sample(g, &o) == NULL, M2_ERR_VALUE, "row 2 (0-based) has no finite logit (all 10 are -inf)");
    x[2 * 10 + 9] = INFINITY;
    m2_release(g);
    g = m2_clone_raw(h, M2_F32, (m2_device){M2_CUDA, 0});
    CHECK_FAILS(m2_sample(g, &o) == NULL, M2_ERR_VALUE, "row 2 (0-based), token 9 is +inf");
    m2_release(g), m2_release(h);
  }
  /* top-k and top-p: still the host's path, same result for logits on the GPU */
  {
    m2_tensor *h = logits_host(&r, 16, 1000, 2.0, false), *g = m2_clone_raw(h, M2_F32, (m2_device){M2_CUDA, 0});
    m2_sample_opts o = {0.9, 40, 0.8, 5, 9};
    m2_tensor *want = m2_sample(h, &o), *got = m2_sample(g, &o);
    int64_t first = -1;
    CHECK(want && got && mismatches(got, want, &first) == 0, "top-k / top-p on GPU logits: row %lld differs", (long long)first);
    m2_release(want), m2_release(got), m2_release(h), m2_release(g);
  }
  CHECK(m2_live_tensors() == 0, "leaked %ld tensors", m2_live_tensors());
  return check_finish("cuda_sample");
}
#endif
