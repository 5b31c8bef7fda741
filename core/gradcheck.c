/* gradcheck.c — central differences in float64 compared with m2_backward(). */
#include "gradcheck.h"
#include "autograd.h"
#include "ops.h"
#include "rng.h"
#include <math.h>
#include <stdlib.h>

/* L = sum(out * w) evaluated in double on the host. */
static m2_status eval_loss(m2_gc_fn f, void *ud, m2_tensor *const *in, const double *w, int64_t nw, double *L) {
  m2_no_grad_push();
  m2_tensor *out = f(in, ud);
  m2_no_grad_pop();
  if (!out) return m2_errcode();
  int64_t n = m2_numel(out);
  if (n != nw) { m2_release(out); return m2_fail(M2_ERR_VALUE, "gradcheck: output size changed between calls"); }
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_status s = v ? m2_to_host(out, M2_F64, v) : m2_fail(M2_ERR_OOM, "gradcheck: out of memory");
  double acc = 0;
  for (int64_t i = 0; s == M2_OK && i < n; i++) acc += v[i] * w[i];
  free(v);
  m2_release(out);
  *L = acc;
  return s;
}

static int64_t unravel(const m2_tensor *t, int64_t i, int64_t *idx) {
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = i % t->shape[d];
    i /= t->shape[d];
  }
  return 0;
}

m2_status m2_gradcheck(m2_gc_fn f, void *ud, int n, m2_tensor *const *inputs, const m2_gradcheck_opts *o,
                       double *max_err) {
  m2_gradcheck_opts opt = {1e-6, 1e-6, 1e-4, 1234, 0};
  if (o) {
    if (o->eps > 0) opt.eps = o->eps;
    if (o->atol > 0) opt.atol = o->atol;
    if (o->rtol > 0) opt.rtol = o->rtol;
    opt.seed = o->seed;
    opt.max_checks = o->max_checks;
  }
  double worst = 0;
  /* analytic */
  for (int k = 0; k < n; k++)
    if (inputs[k] && inputs[k]->grad) { m2_release(inputs[k]->grad); inputs[k]->grad = NULL; }
  m2_tensor *out = f(inputs, ud);
  if (!out) return m2_errcode();
  int64_t nw = m2_numel(out);
  m2_rng r = m2_rng_make(opt.seed, 77);
  m2_tensor *wt = m2_rand(&r, out->dtype, out->device, out->ndim, out->shape);
  double *w = malloc(sizeof(double) * (size_t)(nw ? nw : 1));
  if (!wt || !w) { m2_release(out); m2_release(wt); free(w); return m2_errcode(); }
  m2_to_host(wt, M2_F64, w);
  for (int64_t i = 0; i < nw; i++) w[i] = w[i] * 2 - 1 + (w[i] >= 0.5 ? 0.25 : -0.25); /* |w| in (0.25, 1.25) */
  m2_tensor *wt2 = m2_from_data(M2_F64, M2_DEV_CPU, out->ndim, out->shape, w);
  m2_tensor *wdev = wt2 ? m2_clone_raw(wt2, out->dtype, out->device) : NULL;
  m2_tensor *prod = wdev ? m2_mul(out, wdev) : NULL;
  m2_tensor *L = prod ? m2_sum_all(prod) : NULL;
  m2_status s = L ? m2_backward(L, NULL) : m2_errcode();
  m2_release(L); m2_release(prod); m2_release(wdev); m2_release(wt2); m2_release(wt); m2_release(out);
  for (int k = 0; s == M2_OK && k < n; k++) {
    m2_tensor *x = inputs[k];
    if (!x || !x->requires_grad) continue;
    int64_t nx = m2_numel(x);
    double *ga = calloc((size_t)(nx ? nx : 1), sizeof(double));
    if (x->grad) m2_to_host(x->grad, M2_F64, ga);
    int64_t step = 1;
    if (opt.max_checks > 0 && nx > opt.max_checks) step = (nx + opt.max_checks - 1) / opt.max_checks;
    for (int64_t i = 0; s == M2_OK && i < nx; i += step) {
      int64_t idx[M2_MAX_DIMS];
      unravel(x, i, idx);
      double x0, lp, lm;
      m2_get(x, idx, &x0);
      m2_set(x, idx, x0 + opt.eps);
      s = eval_loss(f, ud, inputs, w, nw, &lp);
      m2_set(x, idx, x0 - opt.eps);
      if (s == M2_OK) s = eval_loss(f, ud, inputs, w, nw, &lm);
      m2_set(x, idx, x0);
      if (s != M2_OK) break;
      double num = (lp - lm) / (2 * opt.eps), ana = ga[i];
      double ratio = fabs(ana - num) / (opt.atol + opt.rtol * fabs(num));
      if (!(ratio <= 1.0)) { /* NaN fails too */
        s = m2_fail(M2_ERR_VALUE, "gradcheck: input %d element %lld: analytic %.10g vs numeric %.10g", k + 1,
                    (long long)i, ana, num);
        worst = isnan(ratio) ? INFINITY : ratio;
      }
      if (ratio > worst) worst = ratio;
    }
    free(ga);
  }
  free(w);
  if (max_err) *max_err = worst;
  return s;
}
