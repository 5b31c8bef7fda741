/* cuda_parity.h — CPU-vs-CUDA parity harness for the tests/cuda_*.c tests (the per-op tests cuda_ops_*.c and the
 * runner of the shared case table, cuda_op_cases.c), and the one start-up of every CUDA test (parity_init).
 *
 * A case is a function building an op's outputs from its inputs plus the CPU inputs (fresh random
 * F32 values; integer tensors as they are). For each dtype under test (F32, BF16) the float inputs
 * are rounded to that dtype first, so that the CPU reference (F32, double accumulation) and the CUDA
 * op see the same values; the forward outputs are compared, then a random output gradient is
 * back-propagated on both devices and every input gradient compared. Errors are max|cuda - cpu| /
 * max|cpu| per tensor (NaN never passes); the bounds are 1e-5 (f32) and 1e-2 (bf16) unless a case
 * says otherwise. The worst error per dtype is printed at the end. */
#ifndef M2_CUDA_PARITY_H
#define M2_CUDA_PARITY_H
#include "check.h"
#include "cuda_init.h"

#define PAR_MAX_OUT 4
typedef int (*par_fn)(m2_tensor *const *in, void *ud, m2_tensor **outs); /* number of outputs, -1 on error */

typedef struct par_case {
  const char *name;
  par_fn fn;
  void *ud;
  int n_in;
  m2_tensor *in[8];  /* CPU inputs (borrowed); NULL entries pass NULL */
  bool grad[8];      /* differentiate with respect to these */
  double tol[2];     /* forward bound for f32, bf16 (0: default) */
  double btol[2];    /* backward bound for f32, bf16 (0: default) */
  bool f32_only;     /* skip bf16 */
} par_case;

static m2_device par_gpu = {M2_CUDA, 0};
static double par_worst_fwd[2], par_worst_bwd[2];
static int par_cases;
static uint64_t par_seed = 1000;

/* x rounded to dt and back to F32 on the host (new ref) */
static inline m2_tensor *par_round(m2_tensor *x, m2_dtype dt) {
  if (dt == M2_F32) return m2_clone_raw(x, M2_F32, M2_DEV_CPU);
  m2_tensor *r = m2_clone_raw(x, dt, M2_DEV_CPU);
  m2_tensor *back = r ? m2_clone_raw(r, M2_F32, M2_DEV_CPU) : NULL;
  m2_release(r);
  return back;
}

static inline void par_run_dtype(const par_case *pc, m2_dtype dt) {
  int di = dt == M2_BF16;
  const char *dn = m2_dtype_name(dt);
  double tol = pc->tol[di] > 0 ? pc->tol[di] : (di ? 1e-2 : 1e-5);
  double btol = pc->btol[di] > 0 ? pc->btol[di] : (di ? 1e-2 : 1e-5);
  m2_tensor *ci[8] = {0}, *gi[8] = {0}, *yc[PAR_MAX_OUT] = {0}, *yg[PAR_MAX_OUT] = {0};
  bool any_grad = false;
  for (int i = 0; i < pc->n_in; i++) {
    m2_tensor *x = pc->in[i];
    if (!x) continue;
    if (m2_dtype_is_float(x->dtype)) {
      m2_tensor *r = par_round(x, dt);
      ci[i] = m2_clone_raw(r, M2_F32, M2_DEV_CPU);
      gi[i] = m2_clone_raw(r, dt, par_gpu);
      m2_release(r);
      if (pc->grad[i] && ci[i] && gi[i]) {
        m2_requires_grad_(ci[i], true);
        m2_requires_grad_(gi[i], true);
        any_grad = true;
      }
    } else {
      m2_retain(x);
      ci[i] = x;
      gi[i] = m2_clone_raw(x, x->dtype, par_gpu);
    }
    CHECK(ci[i] && gi[i], "%s %s: input %d could not be prepared", pc->name, dn, i);
  }
  m2_clear_error();
  int nc = pc->fn(ci, pc->ud, yc);
  CHECK(nc > 0, "%s %s: cpu forward failed", pc->name, dn);
  int ng = pc->fn(gi, pc->ud, yg);
  CHECK(ng == nc, "%s %s: cuda forward failed (%d outputs, cpu %d)", pc->name, dn, ng, nc);
  double wf = 0, wb = 0;
  if (nc > 0 && ng == nc) {
    for (int j = 0; j < nc; j++) {
      CHECK(yg[j]->device.type == M2_CUDA, "%s %s: output %d is not on cuda", pc->name, dn, j);
      CHECK(m2_same_shape(yc[j], yg[j]), "%s %s: output %d shapes differ", pc->name, dn, j);
      if (yc[j]->dtype == M2_F32 && m2_dtype_is_float(pc->in[0] ? pc->in[0]->dtype : M2_F32))
        CHECK(yg[j]->dtype == dt || yg[j]->dtype == M2_F32, "%s %s: output %d is %s", pc->name, dn, j,
              m2_dtype_name(yg[j]->dtype));
      double e = max_rel_diff(yg[j], yc[j]);
      CHECK(e <= tol, "%s %s: forward output %d error %.3g > %.3g", pc->name, dn, j, e, tol);
      if (!(e <= wf)) wf = e;
    }
    /* backward: L = sum_j <y_j, dy_j> with random dy_j */
    bool diff = any_grad;
    for (int j = 0; j < nc; j++) diff &= yc[j]->requires_grad && yg[j]->requires_grad;
    if (diff) {
      m2_tensor *lc = NULL, *lg = NULL;
      m2_status sc = M2_OK, sg = M2_OK;
      if (nc == 1) {
        m2_rng r = m2_rng_make(par_seed++, 7);
        m2_tensor *dy = m2_randn(&r, M2_F32, M2_DEV_CPU, yc[0]->ndim, yc[0]->shape);
        m2_tensor *dyr = par_round(dy, dt);
        m2_tensor *dyc = m2_clone_raw(dyr, yc[0]->dtype, M2_DEV_CPU), *dyg = m2_clone_raw(dyr, yg[0]->dtype, par_gpu);
        sc = m2_backward(yc[0], dyc);
        sg = m2_backward(yg[0], dyg);
        m2_release(dy); m2_release(dyr); m2_release(dyc); m2_release(dyg);
      } else {
        bool okc = true, okg = true; /* every term made (a failed one must not shorten the loss) */
        for (int j = 0; j < nc; j++) {
          m2_rng r = m2_rng_make(par_seed++, 7);
          m2_tensor *dy = m2_randn(&r, M2_F32, M2_DEV_CPU, yc[j]->ndim, yc[j]->shape);
          m2_tensor *dyr = par_round(dy, dt);
          m2_tensor *dyc = m2_clone_raw(dyr, yc[j]->dtype, M2_DEV_CPU), *dyg = m2_clone_raw(dyr, yg[j]->dtype, par_gpu);
          m2_tensor *pcj = m2_mul(yc[j], dyc), *pgj = m2_mul(yg[j], dyg);
          m2_tensor *scj = pcj ? m2_sum_all(pcj) : NULL, *sgj = pgj ? m2_sum_all(pgj) : NULL;
          m2_tensor *nlc = !scj ? NULL : lc ? m2_add(lc, scj) : (m2_retain(scj), scj);
          m2_tensor *nlg = !sgj ? NULL : lg ? m2_add(lg, sgj) : (m2_retain(sgj), sgj);
          okc &= nlc != NULL, okg &= nlg != NULL;
          m2_release(lc); m2_release(lg);
          lc = nlc; lg = nlg;
          m2_release(dy); m2_release(dyr); m2_release(dyc); m2_release(dyg);
          m2_release(pcj); m2_release(pgj); m2_release(scj); m2_release(sgj);
        }
        sc = okc && lc ? m2_backward(lc, NULL) : M2_ERR_VALUE;
        sg = okg && lg ? m2_backward(lg, NULL) : M2_ERR_VALUE;
      }
      CHECK(sc == M2_OK, "%s %s: cpu backward failed", pc->name, dn);
      CHECK(sg == M2_OK, "%s %s: cuda backward failed", pc->name, dn);
      for (int i = 0; sc == M2_OK && sg == M2_OK && i < pc->n_in; i++) {
        if (!pc->grad[i] || !ci[i]) continue;
        CHECK(ci[i]->grad && gi[i]->grad, "%s %s: no gradient for input %d", pc->name, dn, i);
        if (!ci[i]->grad || !gi[i]->grad) continue;
        CHECK(gi[i]->grad->dtype == dt && gi[i]->grad->device.type == M2_CUDA, "%s %s: gradient %d is %s", pc->name,
              dn, i, m2_dtype_name(gi[i]->grad->dtype));
        double e = max_rel_diff(gi[i]->grad, ci[i]->grad);
        CHECK(e <= btol, "%s %s: gradient of input %d error %.3g > %.3g", pc->name, dn, i, e, btol);
        if (!(e <= wb)) wb = e;
      }
      m2_release(lc);
      m2_release(lg);
    }
  }
  printf("  %-28s %-4s fwd %.2e  bwd %.2e\n", pc->name, dn, wf, wb);
  if (!(wf <= par_worst_fwd[di])) par_worst_fwd[di] = wf;
  if (!(wb <= par_worst_bwd[di])) par_worst_bwd[di] = wb;
  for (int j = 0; j < PAR_MAX_OUT; j++) { m2_release(yc[j]); m2_release(yg[j]); }
  for (int i = 0; i < 8; i++) { m2_release(ci[i]); m2_release(gi[i]); }
}

static inline void par_run(const par_case *pc) {
  par_cases++;
  par_run_dtype(pc, M2_F32);
  if (!pc->f32_only) par_run_dtype(pc, M2_BF16);
}

/* Random CPU inputs. */
static inline m2_tensor *par_randn(int nd, const int64_t *shape) {
  m2_rng r = m2_rng_make(par_seed++, 3);
  return m2_randn(&r, M2_F32, M2_DEV_CPU, nd, shape);
}
/* uniform in [lo, hi) */
static inline m2_tensor *par_uniform(int nd, const int64_t *shape, double lo, double hi) {
  m2_rng r = m2_rng_make(par_seed++, 5);
  m2_tensor *t = m2_empty(M2_F32, M2_DEV_CPU, nd, shape);
  if (t) m2_rng_uniform_(&r, t, lo, hi);
  return t;
}
/* integers uniform in [lo, hi) of dtype dt */
static inline m2_tensor *par_ints(m2_dtype dt, int nd, const int64_t *shape, int64_t lo, int64_t hi) {
  m2_rng r = m2_rng_make(par_seed++, 9);
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, nd, shape);
  if (!t) return NULL;
  int64_t n = m2_numel(t);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = lo + m2_rng_randint(&r, hi - lo);
    if (dt == M2_I64) ((int64_t *)m2_data(t))[i] = v;
    else ((int32_t *)m2_data(t))[i] = (int32_t)v;
  }
  return t;
}

/* Class targets in [0, C) with about one in five set to -100 (ignored) */
static inline m2_tensor *par_targets(m2_dtype dt, int nd, const int64_t *shape, int64_t C) {
  m2_tensor *t = par_ints(dt, nd, shape, -C / 4 - 1, C);
  int64_t n = m2_numel(t);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = dt == M2_I64 ? ((int64_t *)m2_data(t))[i] : ((int32_t *)m2_data(t))[i];
    if (v < 0) v = -100;
    if (dt == M2_I64) ((int64_t *)m2_data(t))[i] = v;
    else ((int32_t *)m2_data(t))[i] = (int32_t)v;
  }
  return t;
}


/* One output from an op returning a tensor. */
#define PAR_ONE(expr)   \
  do {                  \
    outs[0] = (expr);   \
    return outs[0] ? 1 : -1; \
  } while (0)

static inline int par_finish(const char *name) {
  printf("%s: %d cases; worst error f32 fwd %.2e bwd %.2e, bf16 fwd %.2e bwd %.2e\n", name, par_cases,
         par_worst_fwd[0], par_worst_bwd[0], par_worst_fwd[1], par_worst_bwd[1]);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish(name);
}

/* The start of every CUDA test, the one place that sets the CUDA backend up for the tests: 0 when a CUDA device
 * is there, else 77 (CTest's "skipped") after saying so under the test's name. */
static inline int parity_init(const char *name) {
  if (m2test_cuda_devices() == 0) {
    printf("%s: no CUDA device, skipped\n", name);
    return 77;
  }
  return 0;
}

/* In main: return 77 from the test unless parity_init finds a device. */
#define PAR_SKIP_WITHOUT_GPU(name)          \
  do {                                      \
    int par_rc_ = parity_init(name);        \
    if (par_rc_) return par_rc_;            \
  } while (0)

#endif
