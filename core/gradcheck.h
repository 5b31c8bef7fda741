/* gradcheck.h — finite-difference gradient checks in float64 against the analytic backward.
 *
 * f maps the inputs to any tensor `out`; the check uses L = sum(out * w) with a fixed random
 * w, so every output element matters. Inputs should be F64 leaves; those with
 * requires_grad are checked element by element with central differences. */
#ifndef M2_GRADCHECK_H
#define M2_GRADCHECK_H
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef m2_tensor *(*m2_gc_fn)(m2_tensor *const *inputs, void *ud);

typedef struct m2_gradcheck_opts {
  double eps;      /* step, default 1e-6 */
  double atol;     /* default 1e-6 */
  double rtol;     /* default 1e-4 */
  uint64_t seed;   /* for w */
  int max_checks;  /* per input, 0 = all elements (else a deterministic subset) */
} m2_gradcheck_opts;

/* Returns M2_OK when every checked element agrees; otherwise M2_ERR_VALUE with a message naming
 * the input, the element, the analytic and the numeric value. *max_err gets the worst
 * |analytic - numeric| / (atol + rtol |numeric|) ratio (<= 1 passes). */
m2_status m2_gradcheck(m2_gc_fn f, void *ud, int n, m2_tensor *const *inputs, const m2_gradcheck_opts *opts,
                       double *max_err);

#ifdef __cplusplus
}
#endif
#endif
