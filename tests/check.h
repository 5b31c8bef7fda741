/* check.h — a tiny test harness for the C tests: checks count failures, never abort early,
 * and the test exits non-zero if any check failed (77 = skipped, for CTest). */
#ifndef M2_CHECK_H
#define M2_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "../core/m2.h"

static int g_checks, g_failures;

#define CHECK(cond, ...)                                                 \
  do {                                                                   \
    g_checks++;                                                          \
    if (!(cond)) {                                                       \
      g_failures++;                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                      \
      fprintf(stderr, " [last error: %s]\n", m2_errmsg());               \
    }                                                                    \
  } while (0)

/* |a - b| <= atol + rtol |b|, NaN never passes */
#define CHECK_CLOSE(a, b, atol, rtol, what)                                                  \
  do {                                                                                       \
    double ca_ = (a), cb_ = (b);                                                             \
    CHECK(fabs(ca_ - cb_) <= (atol) + (rtol) * fabs(cb_), "%s: got %.10g, want %.10g", what, ca_, cb_); \
  } while (0)

/* Check an op call succeeded (non-NULL tensor / M2_OK). */
#define CHECK_OK(expr) CHECK((expr) == M2_OK, "%s", #expr)
#define CHECK_NOTNULL(expr) CHECK((expr) != NULL, "%s returned NULL", #expr)

/* Expect failure with a given status code and a message containing `needle`. */
#include <string.h>
#define CHECK_FAILS(expr_is_bad, code, needle)                                                \
  do {                                                                                       \
    m2_clear_error();                                                                        \
    bool bad_ = (expr_is_bad);                                                               \
    CHECK(bad_ && m2_errcode() == (code) && strstr(m2_errmsg(), (needle)) != NULL,           \
          "expected failure %s containing '%s', got code %d msg '%s'", #code, needle,          \
          (int)m2_errcode(), m2_errmsg());                                                    \
  } while (0)

static inline int check_finish(const char *name) {
  printf("%s: %d checks, %d failed\n", name, g_checks, g_failures);
  return g_failures ? 1 : 0;
}

/* Max |a-b| / max(|b|) over two tensors of the same shape (host comparison). */
static inline double max_rel_diff(const m2_tensor *a, const m2_tensor *b) {
  int64_t n = m2_numel(a);
  if (n != m2_numel(b)) return INFINITY;
  double *x = malloc(sizeof(double) * (size_t)(n ? n : 1)), *y = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_to_host(a, M2_F64, x);
  m2_to_host(b, M2_F64, y);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(x[i] - y[i]);
    if (isnan(x[i]) || isnan(y[i])) d = INFINITY;
    if (d > num) num = d;
    if (fabs(y[i]) > den) den = fabs(y[i]);
  }
  free(x);
  free(y);
  return num / (den > 1e-30 ? den : 1.0);
}

#endif
