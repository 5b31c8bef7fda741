/* cuda_ops_reduce.c — CPU-vs-CUDA parity of sum, mean, max (along a dim and over all), argmax, eq,
 * softmax, log_softmax and cumsum, forward and backward, in f32 and bf16, over shapes that take every
 * kernel path (short rows, long chunked rows, columns, chunked columns). Skips (77) without a GPU. */
#include "cuda_parity.h"

typedef struct red_ud { int kind, dim; bool keep; } red_ud;
enum { SUM, MEAN, MAX, SUM_ALL, MEAN_ALL, MAX_ALL, ARGMAX, SOFTMAX, LOG_SOFTMAX, CUMSUM, EQ };

static int f_red(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  red_ud *u = ud;
  m2_tensor *x = in[0];
  switch (u->kind) {
    case SUM: PAR_ONE(m2_sum(x, u->dim, u->keep));
    case MEAN: PAR_ONE(m2_mean(x, u->dim, u->keep));
    case MAX: PAR_ONE(m2_max(x, u->dim, u->keep));
    case SUM_ALL: PAR_ONE(m2_sum_all(x));
    case MEAN_ALL: PAR_ONE(m2_mean_all(x));
    case MAX_ALL: PAR_ONE(m2_max_all(x));
    case ARGMAX: PAR_ONE(m2_argmax(x, u->dim, u->keep));
    case SOFTMAX: PAR_ONE(m2_softmax(x, u->dim));
    case LOG_SOFTMAX: PAR_ONE(m2_log_softmax(x, u->dim));
    case CUMSUM: PAR_ONE(m2_cumsum(x, u->dim));
    default: PAR_ONE(m2_eq(in[0], in[1]));
  }
}

static void run1(const char *name, int kind, int dim, bool keep, int nd, const int64_t *shape) {
  red_ud u = {kind, dim, keep};
  m2_tensor *x = par_randn(nd, shape);
  par_case pc = {name, f_red, &u, 1, {x}, {kind != ARGMAX}};
  if (kind == CUMSUM) pc.btol[1] = pc.tol[1] = 2e-2; /* long running sums rounded to bf16 */
  par_run(&pc);
  m2_release(x);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_reduce");
  int64_t a[3] = {5, 300, 7}, rowlong[2] = {3, 10000}, collong[2] = {20000, 40}, mid[2] = {2, 600};
  int64_t flat[1] = {300001}, sm_short[2] = {33, 77}, sm_long[2] = {6, 3000}, cs[2] = {9, 100};
  const int kinds[3] = {SUM, MEAN, MAX};
  const char *kn[3] = {"sum", "mean", "max"};
  char name[64];
  for (int k = 0; k < 3; k++) {
    for (int d = 0; d < 3; d++) {
      snprintf(name, sizeof name, "%s/(5,300,7) dim %d", kn[k], d);
      run1(name, kinds[k], d, d == 1, 3, a);
    }
    snprintf(name, sizeof name, "%s/long rows", kn[k]);
    run1(name, kinds[k], 1, false, 2, rowlong);
    snprintf(name, sizeof name, "%s/long columns", kn[k]);
    run1(name, kinds[k], 0, true, 2, collong);
    snprintf(name, sizeof name, "%s/(2,600) dim -1", kn[k]);
    run1(name, kinds[k], -1, false, 2, mid);
  }
  run1("sum_all/flat", SUM_ALL, 0, false, 1, flat);
  run1("sum_all/(5,300,7)", SUM_ALL, 0, false, 3, a);
  run1("mean_all/flat", MEAN_ALL, 0, false, 1, flat);
  run1("max_all/flat", MAX_ALL, 0, false, 1, flat);
  run1("max_all/(5,300,7)", MAX_ALL, 0, false, 3, a);
  run1("argmax/(5,300,7) dim 1", ARGMAX, 1, false, 3, a);
  run1("argmax/(5,300,7) dim 2", ARGMAX, 2, true, 3, a);
  run1("argmax/long rows", ARGMAX, 1, false, 2, rowlong);
  run1("softmax/short rows", SOFTMAX, -1, false, 2, sm_short);
  run1("softmax/long rows", SOFTMAX, 1, false, 2, sm_long);
  run1("softmax/columns", SOFTMAX, 1, false, 3, a);
  run1("log_softmax/short rows", LOG_SOFTMAX, 1, false, 2, sm_short);
  run1("log_softmax/long rows", LOG_SOFTMAX, -1, false, 2, sm_long);
  run1("log_softmax/columns", LOG_SOFTMAX, 0, false, 3, a);
  run1("cumsum/rows", CUMSUM, 1, false, 2, cs);
  run1("cumsum/columns", CUMSUM, 0, false, 2, cs);
  run1("cumsum/middle", CUMSUM, 1, false, 3, a);

  /* argmax of integer tensors, eq over ints and over floats with broadcasting */
  int64_t e1[2] = {17, 9}, e2[1] = {9};
  m2_tensor *ia = par_ints(M2_I64, 2, e1, 0, 3), *ib = par_ints(M2_I32, 1, e2, 0, 3);
  red_ud ua = {ARGMAX, 1, false}, ue = {EQ, 0, false};
  par_case pa = {"argmax/i64", f_red, &ua, 1, {ia}, {false}, .f32_only = true};
  par_run(&pa);
  par_case pe = {"eq/ints", f_red, &ue, 2, {ia, ib}, {false, false}, .f32_only = true};
  par_run(&pe);
  m2_tensor *fa = m2_clone_raw(ia, M2_F32, M2_DEV_CPU), *fb = m2_clone_raw(ib, M2_F32, M2_DEV_CPU);
  par_case pf = {"eq/floats", f_red, &ue, 2, {fa, fb}, {false, false}};
  par_run(&pf);
  m2_release(ia); m2_release(ib); m2_release(fa); m2_release(fb);

  /* NaN propagates through max like on the CPU, and an empty dim is refused */
  int64_t s4[1] = {4};
  float v[4] = {1, NAN, 3, 2};
  m2_tensor *hn = m2_from_data(M2_F32, M2_DEV_CPU, 1, s4, v), *gn = m2_clone_raw(hn, M2_F32, par_gpu);
  m2_tensor *mn = m2_max_all(gn), *an = m2_argmax(gn, 0, false);
  double mv = 0, av = -1;
  CHECK(mn && m2_item(mn, &mv) == M2_OK && isnan(mv), "max_all with a NaN must be NaN, got %g", mv);
  CHECK(an && m2_item(an, &av) == M2_OK && av == 1, "argmax with a NaN must point at it, got %g", av);
  int64_t e0[2] = {3, 0};
  m2_tensor *ge = m2_zeros(M2_F32, par_gpu, 2, e0);
  CHECK_FAILS(m2_max(ge, 1, false) == NULL, M2_ERR_SHAPE, "empty");
  m2_release(hn); m2_release(gn); m2_release(mn); m2_release(an); m2_release(ge);
  return par_finish("cuda_ops_reduce");
}
