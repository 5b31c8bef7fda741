/* mixer_check.h — the checks tests/test_ops_gdn.c and tests/test_ops_ssd.c share. Both ops take six inputs (h0 last,
 * may be NULL) and give y and hT, with a recurrent and a chunked row; written once here against an mx_op that
 * says how to call one of them: forward vs the test's naive loop, chunked == recurrent (values and all
 * gradients), gradcheck, F32 vs F64 gradients, timings. The loss L = sum(y * w1) + sum(hT * w2) feeds both
 * outputs. A test supplies the op's calls, its input maker and naive loop (mx_op), and one mx_case per size. */
#ifndef M2_TESTS_MIXER_CHECK_H
#define M2_TESTS_MIXER_CHECK_H
#include "check.h"
#include <string.h>
#include <time.h>

typedef struct mx_op mx_op;
typedef struct mx_case mx_case;

struct mx_op {
  const char *name;        /* "gdn", for the timings */
  const char *in_names[6]; /* "q", ..., "h0" */
  const char *y_name;      /* the first output in messages: "o" / "y" */
  /* The recurrent (chunked = false) or chunked row, opts chunk (and scale, GDN only; 0 = default). */
  m2_status (*run)(bool chunked, int chunk, double scale, m2_tensor *const in[6], m2_tensor **y, m2_tensor **hT);
  /* The test's inputs for case c in dtype dt (h0 NULL unless with_h0; requiring grad when grad). */
  void (*make)(m2_rng *r, m2_dtype dt, const mx_case *c, bool with_h0, bool grad, m2_tensor *t[6]);
  /* The test's naive loop: y and hT of case c in double (scale: GDN only). */
  void (*naive)(const mx_case *c, m2_tensor *const t[6], double scale, double *y, double *hT);
};

/* A case: the op, its dims (the test's own order, e.g. B, T, H, K, V), the outputs' shapes y and hT (4 dims
 * each), and the dims for messages ("B=2 T=11 ..."). */
struct mx_case {
  const mx_op *op;
  int64_t d[6], y[4], h[4];
  char dims[96];
};

static double mx_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: steadier on a shared machine */
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void mx_release_all(m2_tensor **t, int n) {
  for (int i = 0; i < n; i++) { m2_release(t[i]); t[i] = NULL; }
}

/* The F64 inputs t[6] (NULL allowed) converted to dt, and made to require grad when grad. */
static void mx_inputs_as(m2_tensor *t[6], m2_dtype dt, bool grad) {
  for (int i = 0; i < 6; i++) {
    if (!t[i]) continue;
    if (dt != M2_F64) {
      m2_tensor *c = m2_clone_raw(t[i], dt, M2_DEV_CPU);
      m2_release(t[i]);
      t[i] = c;
    }
    if (grad) m2_requires_grad_(t[i], true);
  }
}

/* max |a - ref| over n elements (NaN counts as infinite); *refmax = max |ref|. */
static double mx_max_abs_diff_host(const m2_tensor *a, const double *ref, int64_t n, double *refmax) {
  double *x = malloc(sizeof(double) * (size_t)(n ? n : 1)), m = 0, rm = 0;
  m2_to_host(a, M2_F64, x);
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(x[i] - ref[i]);
    if (isnan(x[i])) e = INFINITY;
    if (e > m) m = e;
    if (fabs(ref[i]) > rm) rm = fabs(ref[i]);
  }
  free(x);
  *refmax = rm;
  return m;
}

/* L = sum(y * w1) + sum(hT * w2), so both outputs feed the gradient */
typedef struct mx_loss {
  const mx_op *op;
  bool chunked;
  int chunk;
  m2_tensor *w1, *w2;
} mx_loss;

static m2_tensor *mx_loss_of(m2_tensor *const *in, void *p) {
  mx_loss *u = p;
  m2_tensor *y = NULL, *hT = NULL;
  if (u->op->run(u->chunked, u->chunk, 0, in, &y, &hT) != M2_OK) return NULL;
  m2_tensor *a = m2_mul(y, u->w1), *b = m2_mul(hT, u->w2), *sa = m2_sum_all(a), *sb = m2_sum_all(b);
  m2_tensor *L = m2_add(sa, sb);
  m2_release(y), m2_release(hT), m2_release(a), m2_release(b), m2_release(sa), m2_release(sb);
  return L;
}

static void mx_make_weights(m2_rng *r, const mx_case *c, m2_dtype dt, mx_loss *u) {
  u->w1 = m2_randn(r, dt, M2_DEV_CPU, 4, c->y);
  u->w2 = m2_randn(r, dt, M2_DEV_CPU, 4, c->h);
}

/* Gradients of L for the inputs (new refs in g[6]; NULL where an input is absent). */
static void mx_grads_of(mx_loss *u, m2_tensor *t[6], m2_tensor *g[6]) {
  for (int i = 0; i < 6; i++)
    if (t[i]) { m2_release(t[i]->grad); t[i]->grad = NULL; }
  m2_tensor *L = mx_loss_of(t, u);
  CHECK_NOTNULL(L);
  if (L) CHECK_OK(m2_backward(L, NULL));
  m2_release(L);
  for (int i = 0; i < 6; i++) {
    g[i] = t[i] ? t[i]->grad : NULL;
    if (t[i]) t[i]->grad = NULL;
  }
}

/* Both rows (chunked with chunk 4, opts scale) against the naive loop, inputs in dt: |diff| <= tol (1 + max |ref|). */
static void mx_forward_vs_naive(m2_rng *r, mx_case cs, m2_dtype dt, bool h0, double scale, double tol) {
  const mx_case *c = &cs;
  m2_tensor *t[6];
  c->op->make(r, dt, c, h0, false, t);
  int64_t ny = c->y[0] * c->y[1] * c->y[2] * c->y[3], nh = c->h[0] * c->h[1] * c->h[2] * c->h[3];
  double *ry = malloc(sizeof(double) * (size_t)(ny ? ny : 1)), *rh = malloc(sizeof(double) * (size_t)(nh ? nh : 1));
  c->op->naive(c, t, scale, ry, rh);
  for (int chunked = 0; chunked < 2; chunked++) {
    m2_tensor *y = NULL, *hT = NULL;
    CHECK_OK(c->op->run(chunked, chunked ? 4 : 0, scale, t, &y, &hT));
    if (y && hT) {
      double m1, m2v;
      double e1 = mx_max_abs_diff_host(y, ry, ny, &m1), e2 = mx_max_abs_diff_host(hT, rh, nh, &m2v);
      CHECK(y->dtype == dt && hT->dtype == dt, "output dtype");
      CHECK(e1 <= tol * (1 + m1), "%s %s %s: %s differs from the naive loop by %g", chunked ? "chunked" : "recurrent",
            m2_dtype_name(dt), c->dims, c->op->y_name, e1);
      CHECK(e2 <= tol * (1 + m2v), "%s %s %s: hT differs from the naive loop by %g", chunked ? "chunked" : "recurrent",
            m2_dtype_name(dt), c->dims, e2);
    }
    m2_release(y), m2_release(hT);
  }
  free(ry), free(rh);
  mx_release_all(t, 6);
}

/* chunked (with chunk) == recurrent (default checkpoints) in F64, forward and all gradients. */
static void mx_chunked_equals_recurrent(m2_rng *r, mx_case cs, int chunk, bool h0) {
  const mx_case *c = &cs;
  m2_tensor *t[6];
  c->op->make(r, M2_F64, c, h0, true, t);
  mx_loss ur = {c->op, false, 0, 0}, uc = {c->op, true, chunk, 0};
  mx_make_weights(r, c, M2_F64, &ur);
  uc.w1 = ur.w1, uc.w2 = ur.w2;
  m2_tensor *y1 = NULL, *h1 = NULL, *y2 = NULL, *h2 = NULL;
  CHECK_OK(c->op->run(false, 0, 0, t, &y1, &h1));
  CHECK_OK(c->op->run(true, chunk, 0, t, &y2, &h2));
  if (y1 && y2) {
    double ey = max_rel_diff(y2, y1), eh = max_rel_diff(h2, h1);
    CHECK(ey < 1e-10 && eh < 1e-10, "chunked vs recurrent %s chunk=%d: %s %g hT %g", c->dims, chunk, c->op->y_name, ey,
          eh);
  }
  m2_release(y1), m2_release(h1), m2_release(y2), m2_release(h2);
  m2_tensor *g1[6], *g2[6];
  mx_grads_of(&ur, t, g1);
  mx_grads_of(&uc, t, g2);
  for (int i = 0; i < 6; i++) {
    if (!t[i]) continue;
    CHECK(g1[i] && g2[i], "gradient of %s missing", c->op->in_names[i]);
    if (g1[i] && g2[i]) {
      double e = max_rel_diff(g2[i], g1[i]);
      CHECK(e < 1e-10, "chunked vs recurrent %s chunk=%d: d%s differs by %g", c->dims, chunk, c->op->in_names[i], e);
    }
  }
  mx_release_all(g1, 6), mx_release_all(g2, 6);
  m2_release(ur.w1), m2_release(ur.w2);
  mx_release_all(t, 6);
}

/* Finite differences of L for every input (F64); the chunk also sets the recurrent row's checkpoint interval. */
static void mx_gradcheck(m2_rng *r, mx_case cs, bool chunked, int chunk, bool h0) {
  const mx_case *c = &cs;
  m2_tensor *t[6];
  c->op->make(r, M2_F64, c, h0, true, t);
  mx_loss u = {c->op, chunked, chunk, 0};
  mx_make_weights(r, c, M2_F64, &u);
  double err = 0;
  CHECK_OK(m2_gradcheck(mx_loss_of, &u, 6, t, NULL, &err));
  CHECK(err <= 1, "gradcheck %s %s: worst ratio %g", chunked ? "chunked" : "recurrent", c->dims, err);
  m2_release(u.w1), m2_release(u.w2);
  mx_release_all(t, 6);
}

/* F32 gradients (chunked row, chunk 8, with h0) agree with F64. */
static void mx_f32(m2_rng *r, mx_case cs) {
  const mx_case *c = &cs;
  m2_tensor *t[6], *t32[6];
  c->op->make(r, M2_F64, c, true, true, t);
  for (int i = 0; i < 6; i++) {
    t32[i] = m2_clone_raw(t[i], M2_F32, M2_DEV_CPU);
    m2_requires_grad_(t32[i], true);
  }
  mx_loss u = {c->op, true, 8, 0}, u32 = {c->op, true, 8, 0};
  mx_make_weights(r, c, M2_F64, &u);
  u32.w1 = m2_clone_raw(u.w1, M2_F32, M2_DEV_CPU), u32.w2 = m2_clone_raw(u.w2, M2_F32, M2_DEV_CPU);
  m2_tensor *g64[6], *g32[6];
  mx_grads_of(&u, t, g64);
  mx_grads_of(&u32, t32, g32);
  for (int i = 0; i < 6; i++) {
    CHECK(g32[i] && g32[i]->dtype == M2_F32, "F32 gradient %d has dtype f32", i);
    if (g32[i] && g64[i]) {
      double e = max_rel_diff(g32[i], g64[i]);
      CHECK(e < 1e-4, "F32 gradient %d differs from F64 by %g", i, e);
    }
  }
  mx_release_all(g64, 6), mx_release_all(g32, 6);
  m2_release(u.w1), m2_release(u.w2), m2_release(u32.w1), m2_release(u32.w2);
  mx_release_all(t, 6), mx_release_all(t32, 6);
}

/* Forward and backward CPU time of both rows in F32 (opts chunk `chunk`), averaged over reps. */
static void mx_bench(m2_rng *r, mx_case cs, int chunk, int reps) {
  const mx_case *c = &cs;
  m2_tensor *t[6];
  c->op->make(r, M2_F32, c, true, true, t);
  mx_loss u = {c->op, false, chunk, 0};
  mx_make_weights(r, c, M2_F32, &u);
  for (int chunked = 0; chunked < 2; chunked++) {
    u.chunked = chunked;
    double tf = 0, tb = 0;
    for (int k = 0; k < reps; k++) {
      for (int i = 0; i < 6; i++) { m2_release(t[i]->grad); t[i]->grad = NULL; }
      double t0 = mx_now();
      m2_tensor *L = mx_loss_of(t, &u);
      double t1 = mx_now();
      CHECK_OK(m2_backward(L, NULL));
      double t2 = mx_now();
      m2_release(L);
      tf += t1 - t0, tb += t2 - t1;
    }
    printf("%s%s f32 %s: forward %.1f ms, backward %.1f ms\n", c->op->name, chunked ? "_chunked" : "", c->dims,
           1e3 * tf / reps, 1e3 * tb / reps);
  }
  m2_release(u.w1), m2_release(u.w2);
  mx_release_all(t, 6);
}

#endif
