/* test_ops_conv1d.c — depthwise causal conv1d: forward vs a plain-loop reference (F64, F32, with and
 * without bias, kernel longer than the sequence), gradient checks of x, w, bias, and errors. */
#include "check.h"

static m2_tensor *randn(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape) {
  return m2_randn(r, dt, M2_DEV_CPU, nd, shape);
}

/* y[b,t,c] = bias[c] + sum_j w[c,j] x[b, t-(W-1)+j, c], straight from the definition. */
static void ref_conv(int64_t B, int64_t T, int64_t C, int64_t W, const double *x, const double *w, const double *bias,
                     double *y) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t c = 0; c < C; c++) {
        double acc = bias ? bias[c] : 0;
        for (int64_t j = 0; j < W; j++) {
          int64_t s = t - (W - 1) + j;
          if (s >= 0) acc += w[c * W + j] * x[(b * T + s) * C + c];
        }
        y[(b * T + t) * C + c] = acc;
      }
}

static double *host(const m2_tensor *t) {
  double *p = malloc(sizeof(double) * (size_t)m2_numel(t));
  m2_to_host(t, M2_F64, p);
  return p;
}

static void check_forward(m2_rng *r, m2_dtype dt, int64_t B, int64_t T, int64_t C, int64_t W, bool with_bias) {
  m2_tensor *x = randn(r, dt, 3, (int64_t[]){B, T, C}), *w = randn(r, dt, 2, (int64_t[]){C, W});
  m2_tensor *bias = with_bias ? randn(r, dt, 1, (int64_t[]){C}) : NULL;
  m2_tensor *y = m2_conv1d_causal(x, w, bias);
  CHECK_NOTNULL(y);
  if (y) {
    CHECK(y->ndim == 3 && y->shape[0] == B && y->shape[1] == T && y->shape[2] == C && y->dtype == dt, "y shape");
    double *xh = host(x), *wh = host(w), *bh = bias ? host(bias) : NULL, *yh = host(y);
    double *want = malloc(sizeof(double) * (size_t)(B * T * C));
    ref_conv(B, T, C, W, xh, wh, bh, want);
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < B * T * C; i++) {
      double d = fabs(yh[i] - want[i]);
      if (!(d <= worst)) worst = d; /* NaN sticks */
      if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    double tol = dt == M2_F64 ? 1e-13 : 1e-6;
    CHECK(worst <= tol * (1 + scale), "forward %s B=%lld T=%lld C=%lld W=%lld bias=%d: max err %g", m2_dtype_name(dt),
          (long long)B, (long long)T, (long long)C, (long long)W, with_bias, worst);
    free(xh); free(wh); free(bh); free(yh); free(want);
  }
  m2_release(x); m2_release(w); m2_release(bias); m2_release(y);
}

static m2_tensor *f_conv(m2_tensor *const *in, void *ud) { return m2_conv1d_causal(in[0], in[1], in[2]); }

int main(void) {
  m2_rng r = m2_rng_make(7, 0);
  check_forward(&r, M2_F64, 2, 9, 5, 4, true);
  check_forward(&r, M2_F64, 1, 1, 3, 4, false); /* T = 1: only the last tap sees data */
  check_forward(&r, M2_F64, 3, 2, 4, 6, true);  /* kernel longer than the sequence */
  check_forward(&r, M2_F64, 2, 7, 3, 1, false); /* W = 1: a per-channel scale */
  check_forward(&r, M2_F32, 2, 33, 17, 4, true);
  check_forward(&r, M2_F32, 2, 5, 8, 4, false);

  /* a hand-computed case: x = 1, 2, 3 (one channel), w = [0.5, 2], bias 1 -> 1+2, 1+0.5+4, 1+1+6 */
  {
    m2_tensor *x = m2_from_data(M2_F64, M2_DEV_CPU, 3, (int64_t[]){1, 3, 1}, (double[]){1, 2, 3});
    m2_tensor *w = m2_from_data(M2_F64, M2_DEV_CPU, 2, (int64_t[]){1, 2}, (double[]){0.5, 2});
    m2_tensor *bias = m2_from_data(M2_F64, M2_DEV_CPU, 1, (int64_t[]){1}, (double[]){1});
    m2_tensor *y = m2_conv1d_causal(x, w, bias);
    double want[3] = {3, 5.5, 8}, got;
    for (int64_t t = 0; t < 3; t++) {
      m2_get(y, (int64_t[]){0, t, 0}, &got);
      CHECK_CLOSE(got, want[t], 1e-15, 0, "hand-computed conv");
    }
    m2_release(x); m2_release(w); m2_release(bias); m2_release(y);
  }

  /* gradient checks in F64: x, w and bias, with and without bias, kernel longer than T */
  int64_t cases[3][4] = {{2, 7, 3, 4}, {1, 3, 2, 5}, {2, 6, 4, 1}};
  for (int ci = 0; ci < 3; ci++) {
    int64_t B = cases[ci][0], T = cases[ci][1], C = cases[ci][2], W = cases[ci][3];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      m2_tensor *in[3] = {randn(&r, M2_F64, 3, (int64_t[]){B, T, C}), randn(&r, M2_F64, 2, (int64_t[]){C, W}),
                          with_bias ? randn(&r, M2_F64, 1, (int64_t[]){C}) : NULL};
      for (int i = 0; i < 3; i++)
        if (in[i]) m2_requires_grad_(in[i], true);
      double err = 0;
      CHECK(m2_gradcheck(f_conv, NULL, 3, in, NULL, &err) == M2_OK, "gradcheck case %d bias=%d (worst %g)", ci,
            with_bias, err);
      /* F32 backward agrees with the F64 one */
      m2_tensor *in32[3];
      for (int i = 0; i < 3; i++) {
        in32[i] = in[i] ? m2_clone_raw(in[i], M2_F32, M2_DEV_CPU) : NULL;
        if (in32[i]) m2_requires_grad_(in32[i], true);
      }
      m2_tensor *y32 = m2_conv1d_causal(in32[0], in32[1], in32[2]), *L = m2_sum_all(y32);
      /* gradcheck's loss uses random weights; compare with L = sum(y) computed in F64 too */
      for (int i = 0; i < 3; i++)
        if (in[i]) { m2_release(in[i]->grad); in[i]->grad = NULL; }
      m2_tensor *y64 = m2_conv1d_causal(in[0], in[1], in[2]), *L64 = m2_sum_all(y64);
      CHECK_OK(m2_backward(L, NULL));
      CHECK_OK(m2_backward(L64, NULL));
      for (int i = 0; i < 3; i++)
        if (in[i]) CHECK(in32[i]->grad && in[i]->grad && max_rel_diff(in32[i]->grad, in[i]->grad) < 1e-5, "f32 grad %d", i);
      m2_release(y32); m2_release(L); m2_release(y64); m2_release(L64);
      for (int i = 0; i < 3; i++) { m2_release(in[i]); m2_release(in32[i]); }
    }
  }

  /* errors */
  {
    m2_tensor *x = randn(&r, M2_F64, 3, (int64_t[]){2, 5, 4}), *w = randn(&r, M2_F64, 2, (int64_t[]){4, 3});
    m2_tensor *x2 = randn(&r, M2_F64, 2, (int64_t[]){5, 4}), *w5 = randn(&r, M2_F64, 2, (int64_t[]){5, 3});
    m2_tensor *b3 = randn(&r, M2_F64, 1, (int64_t[]){3}), *x32 = randn(&r, M2_F32, 3, (int64_t[]){2, 5, 4});
    m2_tensor *w0 = m2_zeros(M2_F64, M2_DEV_CPU, 2, (int64_t[]){4, 0});
    m2_tensor *xi = m2_zeros(M2_I64, M2_DEV_CPU, 3, (int64_t[]){2, 5, 4});
    CHECK_FAILS(m2_conv1d_causal(x2, w, NULL) == NULL, M2_ERR_SHAPE, "x must be (B, T, C), got (5, 4)");
    CHECK_FAILS(m2_conv1d_causal(x, w5, NULL) == NULL, M2_ERR_SHAPE, "w must be (C, W) with C = 4");
    CHECK_FAILS(m2_conv1d_causal(x, w0, NULL) == NULL, M2_ERR_SHAPE, "got (4, 0)");
    CHECK_FAILS(m2_conv1d_causal(x, w, b3) == NULL, M2_ERR_SHAPE, "bias must be (C) with C = 4");
    CHECK_FAILS(m2_conv1d_causal(x32, w, NULL) == NULL, M2_ERR_DTYPE, "dtypes differ");
    CHECK_FAILS(m2_conv1d_causal(xi, w, NULL) == NULL, M2_ERR_DTYPE, "x must be a float tensor");
    CHECK_FAILS(m2_conv1d_causal(x, NULL, NULL) == NULL, M2_ERR_VALUE, "required");
    m2_release(x); m2_release(w); m2_release(x2); m2_release(w5); m2_release(b3); m2_release(x32);
    m2_release(w0); m2_release(xi);
  }

  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_ops_conv1d");
}
