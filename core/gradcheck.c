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

/* The analytic gradients again, with every input that requires grad behind an exact identity op (x + 0), so that the
 * ops under test see inputs that are not leaves: their nodes then keep only the metadata of the inputs whose values
 * their backward never reads (m2_op.bwd_unread, op.h), and a backward that reads one anyway fails here. g[k] gets
 * input k's gradient (host f64, NULL for an input without grad); the inputs' .grad are left as they were. */
static m2_status analytic_nonleaf(m2_gc_fn f, void *ud, int n, m2_tensor *const *inputs, const double *w, int64_t nw,
                                  double **g) {
  m2_tensor **wrapped = calloc((size_t)n, sizeof *wrapped), **kept = calloc((size_t)n, sizeof *kept);
  bool *first = calloc((size_t)n, sizeof *first); /* the first index of each distinct input that requires grad */
  m2_status s = wrapped && kept && first ? M2_OK : m2_fail(M2_ERR_OOM, "gradcheck: out of memory");
  for (int k = 0; s == M2_OK && k < n; k++) {
    m2_tensor *x = inputs[k];
    if (!x || !x->requires_grad) continue;
    first[k] = true;
    for (int j = 0; j < k; j++) first[k] &= inputs[j] != x;
    if (first[k]) kept[k] = x->grad, x->grad = NULL;
  }
  for (int k = 0; s == M2_OK && k < n; k++) {
    m2_tensor *x = inputs[k];
    if (!x || !x->requires_grad) continue;
    wrapped[k] = m2_add_scalar(x, 0.0);
    if (!wrapped[k]) s = m2_errcode();
  }
  m2_tensor *in2[M2_MAX_IN * 4];
  m2_tensor **in = n <= (int)(sizeof in2 / sizeof in2[0]) ? in2 : malloc(sizeof(m2_tensor *) * (size_t)n);
  if (!in && s == M2_OK) s = m2_fail(M2_ERR_OOM, "gradcheck: out of memory");
  m2_tensor *out = NULL, *wt = NULL, *wdev = NULL, *prod = NULL, *L = NULL;
  if (s == M2_OK) {
    for (int k = 0; k < n; k++) in[k] = wrapped[k] ? wrapped[k] : inputs[k];
    out = f(in, ud);
    if (!out) s = m2_errcode();
    else if (m2_numel(out) != nw) s = m2_fail(M2_ERR_VALUE, "gradcheck: output size changed between calls");
  }
  if (s == M2_OK) {
    wt = m2_from_data(M2_F64, M2_DEV_CPU, out->ndim, out->shape, w);
    wdev = wt ? m2_clone_raw(wt, out->dtype, out->device) : NULL;
    prod = wdev ? m2_mul(out, wdev) : NULL;
    L = prod ? m2_sum_all(prod) : NULL;
    s = L ? m2_backward(L, NULL) : m2_errcode();
  }
  m2_release(L), m2_release(prod), m2_release(wdev), m2_release(wt), m2_release(out);
  for (int k = 0; s == M2_OK && k < n; k++) {
    m2_tensor *x = inputs[k];
    if (!x || !x->requires_grad) continue;
    g[k] = calloc((size_t)(m2_numel(x) ? m2_numel(x) : 1), sizeof(double));
    if (!g[k]) s = m2_fail(M2_ERR_OOM, "gradcheck: out of memory");
    else if (x->grad) s = m2_to_host(x->grad, M2_F64, g[k]);
  }
  for (int k = 0; first && k < n; k++) {
    if (!first[k]) continue;
    m2_release(inputs[k]->grad);
    inputs[k]->grad = kept[k];
  }
  for (int k = 0; wrapped && k < n; k++) m2_release(wrapped[k]);
  if (in != in2) free(in);
  free(wrapped), free(kept), free(first);
  return s;
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
  double **gb = calloc((size_t)(n ? n : 1), sizeof *gb); /* the gradients through non-leaf inputs */
  if (s == M2_OK) s = gb ? analytic_nonleaf(f, ud, n, inputs, w, nw, gb) : m2_fail(M2_ERR_OOM, "gradcheck: out of memory");
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
      double num = (lp - lm) / (2 * opt.eps), ana = ga[i], ana2 = gb[k][i];
      double ratio = fabs(ana - num) / (opt.atol + opt.rtol * fabs(num));
      double ratio2 = fabs(ana2 - num) / (opt.atol + opt.rtol * fabs(num));
      if (!(ratio <= 1.0)) { /* NaN fails too */
        s = m2_fail(M2_ERR_VALUE, "gradcheck: input %d element %lld: analytic %.10g vs numeric %.10g", k + 1,
                    (long long)i, ana, num);
        worst = isnan(ratio) ? INFINITY : ratio;
      } else if (!(ratio2 <= 1.0)) {
        s = m2_fail(M2_ERR_VALUE, "gradcheck: input %d element %lld: analytic through a non-leaf input %.10g vs "
                    "numeric %.10g (directly from the leaf: %.10g)", k + 1, (long long)i, ana2, num, ana);
        worst = isnan(ratio2) ? INFINITY : ratio2;
      }
      if (ratio > worst) worst = ratio;
      if (ratio2 > worst) worst = ratio2;
    }
    free(ga);
  }
  for (int k = 0; gb && k < n; k++) free(gb[k]);
  free(gb);
  free(w);
  if (max_err) *max_err = worst;
  return s;
}
