/* test_optim.c — SGD and AdamW against a hand-written reference over several steps (f32, f64),
 * no_decay, zero_grad, state init / readback / checkpoint resume, grad-norm clipping, LR
 * schedules, error cases, and a small least-squares fit driven by AdamW. */
#include "check.h"

/* ---------------- helpers ---------------- */

static m2_tensor *param(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, nd, shape);
  m2_requires_grad_(t, true);
  return t;
}

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *x = malloc(sizeof(double) * (size_t)(n ? n : 1));
  m2_to_host(t, M2_F64, x);
  return x;
}

/* max |t - ref| / max |ref| (NaN counts as a mismatch) */
static double rel_err(const m2_tensor *t, const double *ref) {
  int64_t n = m2_numel(t);
  double *x = host(t), num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(x[i] - ref[i]);
    if (isnan(d)) d = INFINITY;
    if (d > num) num = d;
    if (fabs(ref[i]) > den) den = fabs(ref[i]);
  }
  free(x);
  return num / (den > 0 ? den : 1);
}

/* Replace t's grad by fresh random numbers; returns a host copy of them. */
static double *set_grad(m2_rng *r, m2_tensor *t) {
  m2_release(t->grad);
  t->grad = m2_randn(r, t->dtype, M2_DEV_CPU, t->ndim, t->shape);
  return host(t->grad);
}

/* ---------------- references (PyTorch's formulas, in double) ---------------- */

static void ref_sgd(double *p, const double *g, double *buf, int64_t n, double lr, double mu, double wd,
                    bool nesterov) {
  for (int64_t i = 0; i < n; i++) {
    double d = g[i] + wd * p[i];
    if (mu > 0) {
      buf[i] = mu * buf[i] + d;
      d = nesterov ? d + mu * buf[i] : buf[i];
    }
    p[i] = p[i] - lr * d;
  }
}

static void ref_adamw(double *p, const double *g, double *m, double *v, int64_t n, double lr, double b1, double b2,
                      double eps, double wd, int64_t t) {
  double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
  for (int64_t i = 0; i < n; i++) {
    p[i] *= 1 - lr * wd;
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    double denom = sqrt(v[i]) / sqrt(bc2) + eps;
    p[i] -= lr / bc1 * m[i] / denom;
  }
}

/* ---------------- optimizer vs reference ---------------- */

typedef struct ocase {
  const char *label;
  bool adamw;
  m2_sgd_opts sgd;
  m2_adamw_opts aw;
} ocase;

/* Three parameters: P0 (4, 5), P1 (7) no_decay, P2 (3) never given a grad. P1 has no grad at
 * step 2 (skipped, while the global step count still advances). 6 steps with changing lr. */
static void run_case(const ocase *c, m2_dtype dt, uint64_t seed) {
  char what[160];
  double tol = dt == M2_F64 ? 1e-12 : 2e-5;
  m2_rng r = m2_rng_make(seed, 0);
  int64_t s0[2] = {4, 5}, s1[1] = {7}, s2[1] = {3};
  m2_tensor *P[3] = {param(&r, dt, 2, s0), param(&r, dt, 1, s1), param(&r, dt, 1, s2)};
  m2_optim *o = c->adamw ? m2_adamw_new(&c->aw) : m2_sgd_new(&c->sgd);
  CHECK_NOTNULL(o);
  if (!o) return;
  CHECK_OK(m2_optim_add(o, P[0], "w", false));
  CHECK_OK(m2_optim_add(o, P[1], "b", true));
  CHECK_OK(m2_optim_add(o, P[2], "unused", false));
  double b1 = c->aw.beta1, b2 = c->aw.beta2, eps = c->aw.eps ? c->aw.eps : 1e-8;
  if (b1 == 0 && b2 == 0) b1 = 0.9, b2 = 0.999;
  double *p[3], *s_a[3], *s_b[3];
  for (int k = 0; k < 3; k++) {
    int64_t n = m2_numel(P[k]);
    p[k] = host(P[k]);
    s_a[k] = calloc((size_t)n, sizeof(double));
    s_b[k] = calloc((size_t)n, sizeof(double));
  }
  double *p2_0 = host(P[2]);
  for (int step = 0; step < 6; step++) {
    double lr = 0.05 * (1 + 0.3 * step);
    double *g[2];
    for (int k = 0; k < 2; k++) g[k] = set_grad(&r, P[k]);
    if (step == 2) { m2_release(P[1]->grad); P[1]->grad = NULL; }
    CHECK_OK(m2_optim_step(o, lr));
    CHECK(m2_optim_steps(o) == step + 1, "step count");
    for (int k = 0; k < 2; k++) {
      if (k == 1 && step == 2) continue;
      int64_t n = m2_numel(P[k]);
      double wd = k == 1 ? 0 : c->adamw ? c->aw.weight_decay : c->sgd.weight_decay;
      if (c->adamw) ref_adamw(p[k], g[k], s_a[k], s_b[k], n, lr, b1, b2, eps, wd, step + 1);
      else ref_sgd(p[k], g[k], s_a[k], n, lr, c->sgd.momentum, wd, c->sgd.nesterov);
    }
    for (int k = 0; k < 2; k++) {
      snprintf(what, sizeof what, "%s %s param %d step %d", c->label, m2_dtype_name(dt), k, step);
      CHECK(rel_err(P[k], p[k]) <= tol, "%s: rel err %g", what, rel_err(P[k], p[k]));
      for (int j = 0; j < m2_optim_state_count(o); j++) {
        m2_tensor *st = m2_optim_state(o, k, j);
        CHECK(st && st->dtype == dt && m2_same_shape(st, P[k]), "%s: state %d exists", what, j);
        if (st) {
          double e = rel_err(st, j == 0 ? s_a[k] : s_b[k]);
          CHECK(e <= tol, "%s: state %s rel err %g", what, m2_optim_state_name(o, j), e);
        }
      }
    }
    free(g[0]);
    free(g[1]);
  }
  /* the parameter without a grad: untouched, no state created */
  CHECK(rel_err(P[2], p2_0) == 0, "%s: a parameter without grad is not updated", c->label);
  for (int j = 0; j < m2_optim_state_count(o); j++)
    CHECK(m2_optim_state(o, 2, j) == NULL, "%s: no state for a parameter never updated", c->label);
  /* updates are in place and outside autograd */
  for (int k = 0; k < 3; k++)
    CHECK(P[k]->grad_fn == NULL && P[k]->requires_grad, "%s: still a leaf parameter", c->label);
  CHECK(m2_live_nodes() == 0, "%s: the step recorded no autograd nodes", c->label);
  /* zero_grad keeps the buffers, zeroes them, and leaves missing grads missing */
  m2_tensor *g0 = P[0]->grad;
  CHECK_OK(m2_optim_zero_grad(o));
  CHECK(P[0]->grad == g0, "zero_grad keeps the grad buffer");
  double *z = host(P[0]->grad);
  bool allz = true;
  for (int64_t i = 0; i < m2_numel(P[0]); i++) allz &= z[i] == 0;
  CHECK(allz, "%s: zero_grad zeroes", c->label);
  CHECK(P[2]->grad == NULL, "zero_grad creates no grad");
  /* clear_grads drops them (set to none), and a parameter without a grad is then left alone by step */
  m2_optim_clear_grads(o);
  CHECK(P[0]->grad == NULL && P[1]->grad == NULL && P[2]->grad == NULL, "%s: clear_grads drops every grad", c->label);
  double *p0_before = host(P[0]);
  CHECK_OK(m2_optim_step(o, 0.1));
  double *p0_after = host(P[0]);
  bool same = true;
  for (int64_t i = 0; i < m2_numel(P[0]); i++) same &= p0_before[i] == p0_after[i];
  CHECK(same, "%s: step without grads changes nothing", c->label);
  free(p0_before);
  free(p0_after);
  free(z);
  free(p2_0);
  for (int k = 0; k < 3; k++) {
    free(p[k]);
    free(s_a[k]);
    free(s_b[k]);
    m2_release(P[k]);
  }
  m2_optim_free(o);
}

static void test_against_reference(void) {
  ocase cases[] = {
      {"sgd", false, {0}, {0}},
      {"sgd+wd", false, {.weight_decay = 0.1}, {0}},
      {"sgd+momentum", false, {.momentum = 0.9}, {0}},
      {"sgd+nesterov+wd", false, {.momentum = 0.8, .weight_decay = 0.05, .nesterov = true}, {0}},
      {"adamw defaults", true, {0}, {0}},
      {"adamw b(0.8,0.95) eps 1e-2 wd 0.1", true, {0}, {.beta1 = 0.8, .beta2 = 0.95, .eps = 1e-2, .weight_decay = 0.1}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    run_case(&cases[i], M2_F64, 100 + i);
    run_case(&cases[i], M2_F32, 200 + i);
  }
}

/* ---------------- no_decay ---------------- */

/* Two copies of a parameter with the same grad, one no_decay: after one step they differ by
 * exactly the decay term lr * wd * p0 (both optimizers, both dtypes). */
static void test_no_decay(void) {
  for (int kind = 0; kind < 2; kind++)
    for (int d = 0; d < 2; d++) {
      m2_dtype dt = d ? M2_F32 : M2_F64;
      m2_rng r = m2_rng_make(7 + kind, 0);
      int64_t sh[1] = {16};
      double lr = 0.1, wd = 0.5;
      m2_tensor *a = param(&r, dt, 1, sh), *b = m2_clone_raw(a, dt, M2_DEV_CPU);
      m2_requires_grad_(b, true);
      m2_tensor *g = m2_randn(&r, dt, M2_DEV_CPU, 1, sh);
      a->grad = m2_clone_raw(g, dt, M2_DEV_CPU);
      b->grad = m2_clone_raw(g, dt, M2_DEV_CPU);
      m2_optim *o = kind ? m2_adamw_new(&(m2_adamw_opts){.weight_decay = wd})
                         : m2_sgd_new(&(m2_sgd_opts){.weight_decay = wd});
      double *p0 = host(a);
      CHECK_OK(m2_optim_add(o, a, "decayed", false));
      CHECK_OK(m2_optim_add(o, b, "not decayed", true));
      CHECK_OK(m2_optim_step(o, lr));
      double *pa = host(a), *pb = host(b), worst = 0;
      for (int i = 0; i < 16; i++) worst = fmax(worst, fabs((pa[i] - pb[i]) - (-lr * wd * p0[i])));
      CHECK(worst < (dt == M2_F64 ? 1e-14 : 1e-6), "%s %s: no_decay difference off by %g",
            kind ? "adamw" : "sgd", m2_dtype_name(dt), worst);
      free(p0);
      free(pa);
      free(pb);
      m2_release(a);
      m2_release(b);
      m2_release(g);
      m2_optim_free(o);
    }
}

/* ---------------- state: init, names, readback, checkpoint resume ---------------- */

static void test_state(void) {
  m2_rng r = m2_rng_make(11, 0);
  int64_t sh[2] = {3, 4};
  /* counts and names */
  m2_optim *sg0 = m2_sgd_new(NULL), *sg1 = m2_sgd_new(&(m2_sgd_opts){.momentum = 0.5}), *aw = m2_adamw_new(NULL);
  CHECK(m2_optim_kind_of(sg0) == M2_OPTIM_SGD && m2_optim_kind_of(aw) == M2_OPTIM_ADAMW, "kinds");
  CHECK(m2_optim_state_count(sg0) == 0, "plain sgd has no state");
  CHECK(m2_optim_state_count(sg1) == 1 && !strcmp(m2_optim_state_name(sg1, 0), "momentum"), "sgd momentum state");
  CHECK(m2_optim_state_count(aw) == 2 && !strcmp(m2_optim_state_name(aw, 0), "exp_avg") &&
            !strcmp(m2_optim_state_name(aw, 1), "exp_avg_sq") && m2_optim_state_name(aw, 2) == NULL,
        "adamw state names");
  m2_optim_free(sg0);
  m2_optim_free(sg1);

  /* lazy vs explicit init */
  m2_tensor *w = param(&r, M2_F32, 2, sh);
  CHECK_OK(m2_optim_add(aw, w, NULL, false));
  CHECK(m2_optim_nparams(aw) == 1 && m2_optim_param(aw, 0) == w, "param readback");
  CHECK(m2_optim_state(aw, 0, 0) == NULL && m2_optim_state(aw, 0, 1) == NULL, "no state before the first step");
  CHECK_FAILS(m2_optim_state(aw, 0, 2) == NULL, M2_ERR_INDEX, "out of range");
  CHECK_FAILS(m2_optim_state(aw, 1, 0) == NULL, M2_ERR_INDEX, "out of range");
  CHECK_FAILS(m2_optim_param(aw, 1) == NULL, M2_ERR_INDEX, "out of range");
  CHECK_OK(m2_optim_init_state(aw));
  for (int j = 0; j < 2; j++) {
    m2_tensor *st = m2_optim_state(aw, 0, j);
    CHECK(st && st->dtype == M2_F32 && m2_same_shape(st, w) && m2_is_contiguous(st), "init_state shape/dtype");
    if (st) {
      double *x = host(st), mx = 0;
      for (int i = 0; i < 12; i++) mx = fmax(mx, fabs(x[i]));
      CHECK(mx == 0, "init_state zeroes");
      free(x);
    }
  }
  /* after a step, init_state keeps the existing state */
  free(set_grad(&r, w));
  CHECK_OK(m2_optim_step(aw, 0.01));
  double *m_before = host(m2_optim_state(aw, 0, 0));
  CHECK_OK(m2_optim_init_state(aw));
  CHECK(rel_err(m2_optim_state(aw, 0, 0), m_before) == 0 && m_before[0] != 0, "init_state keeps existing state");
  free(m_before);
  m2_release(w);
  m2_optim_free(aw);

  /* checkpoint resume: A runs 3 steps; B gets copies of A's params and state and its step count,
   * then both run 2 more steps on the same grads and must agree bit for bit. Without the step
   * count (C), the bias correction differs and so do the results. */
  m2_adamw_opts ao = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-10, .weight_decay = 0.1};
  m2_tensor *pa = param(&r, M2_F32, 2, sh);
  m2_optim *A = m2_adamw_new(&ao), *B = m2_adamw_new(&ao), *C = m2_adamw_new(&ao);
  CHECK_OK(m2_optim_add(A, pa, "w", false));
  for (int s = 0; s < 3; s++) {
    free(set_grad(&r, pa));
    CHECK_OK(m2_optim_step(A, 0.01));
  }
  m2_tensor *pb = m2_clone_raw(pa, M2_F32, M2_DEV_CPU), *pc = m2_clone_raw(pa, M2_F32, M2_DEV_CPU);
  m2_requires_grad_(pb, true);
  m2_requires_grad_(pc, true);
  CHECK_OK(m2_optim_add(B, pb, "w", false));
  CHECK_OK(m2_optim_add(C, pc, "w", false));
  CHECK_OK(m2_optim_init_state(B));
  CHECK_OK(m2_optim_init_state(C));
  for (int j = 0; j < 2; j++) {
    CHECK_OK(m2_copy_(m2_optim_state(B, 0, j), m2_optim_state(A, 0, j)));
    CHECK_OK(m2_copy_(m2_optim_state(C, 0, j), m2_optim_state(A, 0, j)));
  }
  m2_optim_set_steps(B, m2_optim_steps(A));
  CHECK(m2_optim_steps(B) == 3, "set_steps");
  for (int s = 0; s < 2; s++) {
    free(set_grad(&r, pa));
    pb->grad = m2_clone_raw(pa->grad, M2_F32, M2_DEV_CPU);
    pc->grad = m2_clone_raw(pa->grad, M2_F32, M2_DEV_CPU);
    CHECK_OK(m2_optim_step(A, 0.01));
    CHECK_OK(m2_optim_step(B, 0.01));
    CHECK_OK(m2_optim_step(C, 0.01));
    m2_release(pb->grad);
    m2_release(pc->grad);
    pb->grad = pc->grad = NULL;
  }
  CHECK(max_rel_diff(pb, pa) == 0, "resumed run agrees bit for bit (diff %g)", max_rel_diff(pb, pa));
  for (int j = 0; j < 2; j++)
    CHECK(max_rel_diff(m2_optim_state(B, 0, j), m2_optim_state(A, 0, j)) == 0, "resumed state %d agrees", j);
  CHECK(max_rel_diff(pc, pa) > 1e-6, "without the step count the bias correction differs (diff %g)",
        max_rel_diff(pc, pa));
  m2_release(pa);
  m2_release(pb);
  m2_release(pc);
  m2_optim_free(A);
  m2_optim_free(B);
  m2_optim_free(C);
}

/* ---------------- clip_grad_norm ---------------- */

static void test_clip(void) {
  /* exact: grads (3, 4) f64 and (12) f32 -> norm 13 */
  int64_t s2[1] = {2}, s1[1] = {1}, s3[1] = {3};
  m2_tensor *a = m2_zeros(M2_F64, M2_DEV_CPU, 1, s2), *b = m2_zeros(M2_F32, M2_DEV_CPU, 1, s1),
            *c = m2_zeros(M2_F32, M2_DEV_CPU, 1, s3);
  m2_requires_grad_(a, true);
  m2_requires_grad_(b, true);
  m2_requires_grad_(c, true); /* c never gets a grad: skipped */
  a->grad = m2_from_data(M2_F64, M2_DEV_CPU, 1, s2, (double[]){3, -4});
  b->grad = m2_from_data(M2_F32, M2_DEV_CPU, 1, s1, (float[]){12});
  m2_tensor *ps[3] = {a, c, b};
  double norm = -1;
  CHECK_OK(m2_clip_grad_norm(ps, 3, 0, &norm));
  CHECK(norm == 13, "norm of (3, -4, 12) is 13, got %.17g", norm);
  CHECK_OK(m2_clip_grad_norm(ps, 3, 13, &norm)); /* not above: untouched */
  double *ga = host(a->grad), *gb = host(b->grad);
  CHECK(ga[0] == 3 && ga[1] == -4 && gb[0] == 12, "no clipping at norm == max_norm");
  free(ga);
  free(gb);
  CHECK_OK(m2_clip_grad_norm(ps, 3, 6.5, &norm));
  CHECK(norm == 13, "clip reports the norm before clipping");
  double s = 6.5 / (13 + 1e-6);
  ga = host(a->grad);
  gb = host(b->grad);
  CHECK_CLOSE(ga[0], 3 * s, 0, 1e-15, "clipped a[0]");
  CHECK_CLOSE(ga[1], -4 * s, 0, 1e-15, "clipped a[1]");
  CHECK_CLOSE(gb[0], (float)(12 * s), 0, 1e-7, "clipped b[0] (f32)");
  free(ga);
  free(gb);
  CHECK_OK(m2_clip_grad_norm(ps, 3, 0, &norm));
  CHECK_CLOSE(norm, 6.5 * 13 / (13 + 1e-6), 0, 1e-7, "norm after clipping");
  CHECK_OK(m2_clip_grad_norm(ps, 0, 1, &norm));
  CHECK(norm == 0, "no parameters: norm 0");
  CHECK_OK(m2_clip_grad_norm(ps, 3, 1, NULL)); /* norm pointer optional */

  /* random grads: norm against a test-side sum; deterministic to the bit */
  m2_rng r = m2_rng_make(21, 0);
  int64_t sh[3][2] = {{17, 9}, {1, 33}, {5, 5}};
  m2_tensor *q[3];
  double ss = 0;
  for (int k = 0; k < 3; k++) {
    q[k] = param(&r, k == 1 ? M2_F64 : M2_F32, 2, sh[k]);
    double *g = set_grad(&r, q[k]);
    for (int64_t i = m2_numel(q[k]) - 1; i >= 0; i--) ss += g[i] * g[i]; /* other order on purpose */
    free(g);
  }
  double n1, n2;
  CHECK_OK(m2_clip_grad_norm(q, 3, 0, &n1));
  CHECK_OK(m2_clip_grad_norm(q, 3, 0, &n2));
  CHECK_CLOSE(n1, sqrt(ss), 0, 1e-13, "random grads norm");
  CHECK(memcmp(&n1, &n2, sizeof n1) == 0, "norm is deterministic");
  CHECK_OK(m2_clip_grad_norm(q, 3, 1.0, &n1));
  CHECK_OK(m2_clip_grad_norm(q, 3, 0, &n2));
  CHECK_CLOSE(n2, 1.0, 0, 1e-6, "random grads clipped to norm 1");

  /* NaN / inf: reported, grads untouched */
  double bad[2] = {NAN, INFINITY};
  for (int k = 0; k < 2; k++) {
    int64_t i7[2] = {0, 7};
    m2_set(q[1]->grad, i7, bad[k]);
    double *before[3], *after;
    for (int j = 0; j < 3; j++) before[j] = host(q[j]->grad);
    m2_clear_error();
    CHECK(m2_clip_grad_norm(q, 3, 1.0, &n1) == M2_OK, "non-finite norm is not an error");
    CHECK(k == 0 ? isnan(n1) : isinf(n1), "non-finite norm reported (%g)", n1);
    for (int j = 0; j < 3; j++) {
      after = host(q[j]->grad);
      CHECK(memcmp(after, before[j], sizeof(double) * (size_t)m2_numel(q[j])) == 0, "grads untouched on %s",
            k ? "inf" : "NaN");
      free(after);
      free(before[j]);
    }
  }
  m2_tensor *withnull[2] = {q[0], NULL};
  CHECK_FAILS(m2_clip_grad_norm(withnull, 2, 1, &n1) != M2_OK, M2_ERR_VALUE, "NULL");
  CHECK_FAILS(m2_clip_grad_norm(q, 3, NAN, &n1) != M2_OK, M2_ERR_VALUE, "NaN");
  for (int k = 0; k < 3; k++) m2_release(q[k]);
  m2_release(a);
  m2_release(b);
  m2_release(c);
}

/* ---------------- schedules ---------------- */

static void test_schedule(void) {
  const double PI = 3.14159265358979323846;
  m2_schedule k = {M2_SCHED_CONSTANT, 0.5, 0.01, 10, 0, 0};
  CHECK_CLOSE(m2_schedule_lr(&k, 0), 0.05, 0, 1e-15, "constant step 0");
  CHECK_CLOSE(m2_schedule_lr(&k, 4), 0.25, 0, 1e-15, "constant step 4");
  CHECK_CLOSE(m2_schedule_lr(&k, 9), 0.5, 0, 1e-15, "constant warmup-1");
  CHECK_CLOSE(m2_schedule_lr(&k, 10), 0.5, 0, 1e-15, "constant warmup");
  CHECK_CLOSE(m2_schedule_lr(&k, 100000), 0.5, 0, 1e-15, "constant late");
  CHECK_CLOSE(m2_schedule_lr(&k, -3), 0.05, 0, 1e-15, "negative step counts as 0");
  k.warmup = 0;
  CHECK_CLOSE(m2_schedule_lr(&k, 0), 0.5, 0, 1e-15, "no warmup");

  m2_schedule c = {M2_SCHED_COSINE, 1.0, 0.1, 10, 0, 100};
  CHECK_CLOSE(m2_schedule_lr(&c, 0), 0.1, 0, 1e-15, "cosine step 0");
  CHECK_CLOSE(m2_schedule_lr(&c, 9), 1.0, 0, 1e-15, "cosine warmup-1");
  CHECK_CLOSE(m2_schedule_lr(&c, 10), 1.0, 0, 1e-15, "cosine warmup");
  CHECK_CLOSE(m2_schedule_lr(&c, 35), 0.1 + 0.45 * (1 + cos(PI / 4)), 0, 1e-14, "cosine quarter");
  CHECK_CLOSE(m2_schedule_lr(&c, 60), 0.55, 0, 1e-14, "cosine mid-decay");
  CHECK_CLOSE(m2_schedule_lr(&c, 109), 0.1 + 0.45 * (1 + cos(PI * 99 / 100)), 0, 1e-14, "cosine last decay step");
  CHECK_CLOSE(m2_schedule_lr(&c, 110), 0.1, 0, 1e-15, "cosine end");
  CHECK_CLOSE(m2_schedule_lr(&c, 5000), 0.1, 0, 1e-15, "cosine after end");
  double prev = INFINITY;
  bool mono = true;
  for (int64_t s = 10; s <= 110; s++) {
    double v = m2_schedule_lr(&c, s);
    mono &= v <= prev;
    prev = v;
  }
  CHECK(mono, "cosine decay is monotone");

  m2_schedule w = {M2_SCHED_WSD, 2.0, 0.2, 10, 20, 40};
  CHECK_CLOSE(m2_schedule_lr(&w, 0), 0.2, 0, 1e-15, "wsd step 0");
  CHECK_CLOSE(m2_schedule_lr(&w, 9), 2.0, 0, 1e-15, "wsd warmup-1");
  CHECK_CLOSE(m2_schedule_lr(&w, 10), 2.0, 0, 1e-15, "wsd warmup");
  CHECK_CLOSE(m2_schedule_lr(&w, 29), 2.0, 0, 1e-15, "wsd end of stable");
  CHECK_CLOSE(m2_schedule_lr(&w, 30), 2.0, 0, 1e-15, "wsd decay start");
  CHECK_CLOSE(m2_schedule_lr(&w, 40), 1.55, 0, 1e-14, "wsd quarter decay");
  CHECK_CLOSE(m2_schedule_lr(&w, 50), 1.1, 0, 1e-14, "wsd mid-decay");
  CHECK_CLOSE(m2_schedule_lr(&w, 69), 2.0 - 1.8 * 39 / 40, 0, 1e-14, "wsd last decay step");
  CHECK_CLOSE(m2_schedule_lr(&w, 70), 0.2, 0, 1e-15, "wsd end");
  CHECK_CLOSE(m2_schedule_lr(&w, 1000), 0.2, 0, 1e-15, "wsd after end");

  m2_clear_error();
  CHECK(isnan(m2_schedule_lr(NULL, 3)) && m2_errcode() == M2_ERR_VALUE, "NULL schedule");
  m2_schedule bad = {(m2_sched_kind)42, 1, 0, 0, 0, 0};
  CHECK(isnan(m2_schedule_lr(&bad, 3)), "unknown kind");
}

/* ---------------- errors ---------------- */

static void test_errors(void) {
  CHECK_FAILS(m2_sgd_new(&(m2_sgd_opts){.nesterov = true}) == NULL, M2_ERR_VALUE, "nesterov");
  CHECK_FAILS(m2_sgd_new(&(m2_sgd_opts){.momentum = 1.5}) == NULL, M2_ERR_VALUE, "momentum");
  CHECK_FAILS(m2_sgd_new(&(m2_sgd_opts){.weight_decay = -1}) == NULL, M2_ERR_VALUE, "weight_decay");
  CHECK_FAILS(m2_adamw_new(&(m2_adamw_opts){.beta1 = 1.0, .beta2 = 0.9}) == NULL, M2_ERR_VALUE, "betas");
  CHECK_FAILS(m2_adamw_new(&(m2_adamw_opts){.eps = -1}) == NULL, M2_ERR_VALUE, "eps");

  m2_rng r = m2_rng_make(31, 0);
  int64_t sh[2] = {3, 4};
  m2_optim *o = m2_adamw_new(NULL);
  m2_tensor *w = param(&r, M2_F32, 2, sh), *v = param(&r, M2_F32, 2, sh);
  m2_tensor *it = m2_zeros(M2_I64, M2_DEV_CPU, 2, sh);
  CHECK_FAILS(m2_optim_add(o, it, "ids", false) != M2_OK, M2_ERR_DTYPE, "f32 or f64");
  m2_tensor *sq = m2_mul(w, w);
  CHECK_FAILS(m2_optim_add(o, sq, "sq", false) != M2_OK, M2_ERR_AUTOGRAD, "not a leaf");
  m2_release(sq);
  m2_tensor *plain = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sh);
  CHECK_FAILS(m2_optim_add(o, plain, "plain", false) != M2_OK, M2_ERR_AUTOGRAD, "does not require grad");
  m2_tensor *tr = m2_view_raw(plain, 2, (int64_t[]){4, 3}, (int64_t[]){1, 4}, 0); /* transposed leaf */
  m2_requires_grad_(tr, true);
  CHECK_FAILS(m2_optim_add(o, tr, "tr", false) != M2_OK, M2_ERR_UNSUPPORTED, "not contiguous");
  CHECK_OK(m2_optim_add(o, w, "w", false));
  CHECK_FAILS(m2_optim_add(o, w, "w again", false) != M2_OK, M2_ERR_VALUE, "already added");
  CHECK_OK(m2_optim_add(o, v, "v", false));
  CHECK(m2_optim_nparams(o) == 2, "failed adds add nothing");

  /* a bad grad on the second parameter: the step fails and touches nothing */
  free(set_grad(&r, w));
  v->grad = m2_randn(&r, M2_F64, M2_DEV_CPU, 2, sh);
  double *w0 = host(w);
  CHECK_FAILS(m2_optim_step(o, 0.1) != M2_OK, M2_ERR_DTYPE, "grad of 'v' is f64");
  CHECK(rel_err(w, w0) == 0 && m2_optim_steps(o) == 0 && m2_optim_state(o, 0, 0) == NULL,
        "a failed step changes nothing");
  m2_release(v->grad);
  v->grad = m2_randn(&r, M2_F32, M2_DEV_CPU, 1, (int64_t[]){12});
  CHECK_FAILS(m2_optim_step(o, 0.1) != M2_OK, M2_ERR_SHAPE, "shape (12)");
  m2_release(v->grad);
  v->grad = NULL;
  CHECK_FAILS(m2_optim_step(o, NAN) != M2_OK, M2_ERR_VALUE, "learning rate");
  CHECK_FAILS(m2_optim_step(o, -1) != M2_OK, M2_ERR_VALUE, "learning rate");
  CHECK(rel_err(w, w0) == 0, "still untouched");
  CHECK_OK(m2_optim_step(o, 0.1));
  CHECK(rel_err(w, w0) > 0, "a good step updates");
  free(w0);
  m2_optim_free(o);

  /* A CUDA parameter: no kernel yet. Without a GPU we fake one: an alias of CPU memory whose
   * tensor header says cuda (storage, which frees the memory, still says cpu). The step must
   * refuse before touching the data. */
  m2_optim *oc = m2_sgd_new(&(m2_sgd_opts){.momentum = 0.9});
  m2_tensor *fake = m2_alias(w);
  fake->device = (m2_device){M2_CUDA, 0};
  m2_requires_grad_(fake, true);
  fake->grad = m2_alias(w);
  fake->grad->device = fake->device;
  CHECK_OK(m2_optim_add(oc, fake, "gpu_w", false));
  CHECK_FAILS(m2_optim_step(oc, 0.1) != M2_OK, M2_ERR_DEVICE, "not in the memory of an available cuda:0 device");
  CHECK_FAILS(m2_clip_grad_norm(&fake, 1, 1.0, NULL) != M2_OK, M2_ERR_DEVICE, "not in the memory of an available cuda:0 device");
  CHECK(m2_optim_state(oc, 0, 0) == NULL, "no state made for the refused parameter");
  m2_optim_free(oc);
  m2_release(fake);

  m2_release(w);
  m2_release(v);
  m2_release(it);
  m2_release(plain);
  m2_release(tr);
}

/* ---------------- integration: least squares with AdamW ---------------- */

/* loss = sum((X w + b - y)^2) / N with X (N, D), w (D), b (1), y = X w* + 0.7.
 * Built from mul / add / sum only. AdamW with a cosine schedule, clip 1.0, no_decay on b. */
static void test_least_squares(void) {
  enum { N = 64, D = 8, STEPS = 400 };
  m2_rng r = m2_rng_make(41, 0);
  int64_t sx[2] = {N, D}, sw[1] = {D}, sb[1] = {1};
  m2_tensor *X = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sx), *wstar = m2_randn(&r, M2_F32, M2_DEV_CPU, 1, sw);
  m2_tensor *Xw = m2_mul(X, wstar), *y0 = m2_sum(Xw, 1, false);
  m2_tensor *off = m2_full(M2_F32, M2_DEV_CPU, 1, sb, -0.7), *negy = m2_full(M2_F32, M2_DEV_CPU, 1, (int64_t[]){N}, 0);
  m2_tensor *minus1 = m2_scalar(M2_F32, M2_DEV_CPU, -1), *invn = m2_scalar(M2_F32, M2_DEV_CPU, 1.0 / N);
  { /* negy = -(X w* + 0.7) */
    m2_tensor *t1 = m2_mul(y0, minus1), *t2 = m2_add(t1, off);
    m2_copy_(negy, t2);
    m2_release(t1);
    m2_release(t2);
  }
  m2_release(Xw);
  m2_release(y0);
  m2_tensor *w = param(&r, M2_F32, 1, sw), *b = param(&r, M2_F32, 1, sb);
  m2_optim *o = m2_adamw_new(&(m2_adamw_opts){.beta1 = 0.9, .beta2 = 0.95, .weight_decay = 1e-4});
  CHECK_OK(m2_optim_add(o, w, "w", false));
  CHECK_OK(m2_optim_add(o, b, "b", true));
  m2_schedule sched = {M2_SCHED_COSINE, 0.1, 1e-3, 20, 0, STEPS - 20};
  m2_tensor *params[2] = {w, b};
  double first = NAN, last = NAN, gnorm;
  for (int s = 0; s < STEPS; s++) {
    m2_tensor *p1 = m2_mul(X, w), *pred = m2_sum(p1, 1, false), *p2 = m2_add(pred, b), *res = m2_add(p2, negy);
    m2_tensor *r2 = m2_mul(res, res), *ssum = m2_sum_all(r2), *loss = m2_mul(ssum, invn);
    CHECK_OK(m2_optim_zero_grad(o));
    CHECK_OK(m2_backward(loss, NULL));
    m2_item(loss, &last);
    if (s == 0) first = last;
    CHECK_OK(m2_clip_grad_norm(params, 2, 1.0, &gnorm));
    CHECK_OK(m2_optim_step(o, m2_schedule_lr(&sched, s)));
    m2_tensor *all[] = {p1, pred, p2, res, r2, ssum, loss};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  }
  printf("least squares: loss %.4g -> %.4g after %d AdamW steps\n", first, last, STEPS);
  CHECK(first > 1 && last < 1e-4, "loss falls from %g below 1e-4 (got %g)", first, last);
  double bv;
  m2_item(b, &bv);
  CHECK(max_rel_diff(w, wstar) < 1e-2, "w recovers w* (rel %g)",
        max_rel_diff(w, wstar));
  CHECK_CLOSE(bv, 0.7, 1e-2, 0, "b recovers the offset");
  m2_optim_free(o);
  m2_tensor *rel[] = {X, wstar, off, negy, minus1, invn, w, b};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

int main(void) {
  test_against_reference();
  test_no_decay();
  test_state();
  test_clip();
  test_schedule();
  test_errors();
  test_least_squares();
  CHECK(m2_live_tensors() == 0, "leaked %ld tensors", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked %ld nodes", m2_live_nodes());
  return check_finish("test_optim");
}
