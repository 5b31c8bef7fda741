/* test_autograd.c — the tape: shared inputs, reuse, accumulation, no_grad, detach, misuse errors,
 * gradient checks through broadcasting, and no leaked nodes or tensors. */
#include "check.h"

static m2_tensor *param(m2_rng *r, int nd, const int64_t *shape) {
  m2_tensor *t = m2_randn(r, M2_F64, M2_DEV_CPU, nd, shape);
  m2_requires_grad_(t, true);
  return t;
}

/* f(a, b) = sum((a * b + a) * a) with b broadcast (3) against a (2, 3) */
static m2_tensor *f_shared(m2_tensor *const *in, void *ud) {
  m2_tensor *ab = m2_mul(in[0], in[1]);
  m2_tensor *s = m2_add(ab, in[0]);
  m2_tensor *p = m2_mul(s, in[0]);
  m2_release(ab);
  m2_release(s);
  return p;
}

int main(void) {
  m2_rng r = m2_rng_make(1, 0);
  int64_t s23[2] = {2, 3}, s3[1] = {3};
  m2_tensor *a = param(&r, 2, s23), *b = param(&r, 1, s3);
  m2_tensor *in[2] = {a, b};
  double err;
  CHECK_OK(m2_gradcheck(f_shared, NULL, 2, in, NULL, &err));

  /* analytic check: L = sum(a*a) -> dL/da = 2a, and backward accumulates (+=) */
  m2_release(a->grad); a->grad = NULL;
  for (int rep = 0; rep < 2; rep++) {
    m2_tensor *sq = m2_mul(a, a), *L = m2_sum_all(sq);
    CHECK_OK(m2_backward(L, NULL));
    /* second backward through the same graph is refused */
    CHECK_FAILS(m2_backward(L, NULL) != M2_OK, M2_ERR_AUTOGRAD, "second time");
    m2_release(sq);
    m2_release(L);
  }
  double av, gv;
  int64_t i0[2] = {1, 2};
  m2_get(a, i0, &av);
  m2_get(a->grad, i0, &gv);
  CHECK_CLOSE(gv, 4 * av, 1e-12, 1e-12, "two backwards accumulate 2a + 2a");

  /* non-scalar backward without a gradient */
  m2_tensor *sq = m2_mul(a, a);
  CHECK_FAILS(m2_backward(sq, NULL) != M2_OK, M2_ERR_AUTOGRAD, "non-scalar");
  m2_release(sq);

  /* no_grad: nothing recorded */
  m2_no_grad_push();
  m2_tensor *ng = m2_mul(a, a);
  m2_no_grad_pop();
  CHECK(ng && !ng->requires_grad && !ng->grad_fn, "no_grad records nothing");
  m2_tensor *Lng = m2_sum_all(ng);
  CHECK_FAILS(m2_backward(Lng, NULL) != M2_OK, M2_ERR_AUTOGRAD, "does not require grad");
  m2_release(ng);
  m2_release(Lng);

  /* detach cuts history */
  m2_tensor *y = m2_mul(a, a), *yd = m2_detach(y);
  CHECK(yd && !yd->requires_grad && !yd->grad_fn, "detach");
  CHECK_FAILS(m2_requires_grad_(y, true) != M2_OK, M2_ERR_AUTOGRAD, "leaf");
  m2_release(y);
  m2_release(yd);

  /* integer tensors cannot require grad */
  m2_tensor *it = m2_zeros(M2_I64, M2_DEV_CPU, 1, s3);
  CHECK_FAILS(m2_requires_grad_(it, true) != M2_OK, M2_ERR_DTYPE, "float");
  m2_release(it);

  /* gradient through a view chain (transpose -> contiguous copy by the dispatcher) */
  m2_release(a->grad); a->grad = NULL;
  m2_tensor *at = m2_transpose(a, 0, 1);  /* (3, 2) strided */
  m2_tensor *w = m2_randn(&r, M2_F64, M2_DEV_CPU, 2, (int64_t[]){3, 2});
  m2_tensor *p = m2_mul(at, w), *L = m2_sum_all(p);
  CHECK_OK(m2_backward(L, NULL));
  int64_t i1[2] = {1, 2}, i1t[2] = {2, 1};
  double wv;
  m2_get(w, i1t, &wv);
  m2_get(a->grad, i1, &gv);
  CHECK_CLOSE(gv, wv, 1e-12, 0, "grad through transpose");
  m2_release(at); m2_release(w); m2_release(p); m2_release(L);

  /* a long chain (deep tape) frees everything */
  m2_tensor *x = a;
  m2_retain(x);
  for (int i = 0; i < 3000; i++) {
    m2_tensor *nx = m2_add(x, a);
    m2_release(x);
    x = nx;
  }
  m2_tensor *Lc = m2_sum_all(x);
  m2_release(a->grad); a->grad = NULL;
  CHECK_OK(m2_backward(Lc, NULL));
  m2_get(a->grad, i0, &gv);
  CHECK_CLOSE(gv, 3001, 1e-9, 0, "deep chain gradient");
  m2_release(x);
  m2_release(Lc);

  m2_release(a);
  m2_release(b);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_autograd");
}
