/* optim.c — SGD (momentum, nesterov, L2 weight decay) and AdamW optimizers, global grad-norm
 * clipping and learning-rate schedules; CPU kernels over raw contiguous f32/f64 buffers.
 *
 * Exact maths (step t counts from 1 inside an update; g = p.grad; "wd" is 0 for no_decay params):
 *
 *   SGD (PyTorch semantics, dampening 0):
 *     g   <- g + wd * p                                (L2 weight decay, added to the gradient)
 *     if momentum > 0:  buf <- momentum * buf + g      (buf starts at 0, so buf_1 = g_1)
 *                       g   <- nesterov ? g + momentum * buf : buf
 *     p   <- p - lr * g
 *
 *   AdamW (Loshchilov & Hutter; same as torch.optim.AdamW):
 *     p   <- p - lr * wd * p                           (decoupled decay, with the old p)
 *     m   <- beta1 * m + (1 - beta1) * g               (state "exp_avg")
 *     v   <- beta2 * v + (1 - beta2) * g^2             (state "exp_avg_sq")
 *     p   <- p - lr * (m / bc1) / (sqrt(v / bc2) + eps),   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
 *   t is the optimizer's global step count (m2_optim_steps() + 1 during the step), shared by all
 *   parameters: a parameter that first gets a gradient late is bias-corrected with the global t
 *   (torch keeps a per-parameter count; they agree whenever every parameter has a grad every step).
 *   Scalars (bias corrections, step sizes) are computed in double; the f32 kernel then works in
 *   float like the CUDA kernel will, the f64 kernel in double.
 *
 *   Global grad norm:  norm = sqrt(sum over params in the given order, elements in memory order,
 *     of g^2), accumulated in one double (deterministic; a CUDA grad contributes its own sum, computed
 *     in double on the device over a fixed decomposition). If norm is finite, max_norm > 0 and
 *     norm > max_norm, every grad is scaled by max_norm / (norm + 1e-6). A NaN/inf norm is
 *     returned as is (status M2_OK) and the grads are left untouched: the caller skips the step.
 *
 *   Schedules (step s >= 0; negative steps count as 0; negative lengths as 0):
 *     warmup   s < W:           lr * (s + 1) / W                          (all kinds)
 *     CONSTANT s >= W:          lr
 *     COSINE   u = s - W < D:   min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * u / D))
 *              u >= D:          min_lr
 *     WSD      u = s - W < S:   lr                                        (stable)
 *              d = u - S < D:   lr + (min_lr - lr) * d / D                (linear decay)
 *              d >= D:          min_lr
 *   So the warmup ends exactly at lr (s = W - 1), the decay starts at lr and reaches min_lr at
 *   its D-th step (COSINE s = W + D, WSD s = W + S + D) and stays there. */
#include "optim.h"
#include "profile.h"
#include "autograd.h"
#include "backend.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STATE 2

typedef struct optim_param {
  m2_tensor *p;                 /* retained */
  char *name;
  bool no_decay;
  bool ranged;                  /* m2_optim_set_range: only elements [lo, hi) are this optimizer's */
  int64_t lo, hi;
  m2_tensor *state[MAX_STATE];  /* lazily created, same dtype/device/shape as p (ranged: (hi - lo)) */
} optim_param;

struct m2_optim {
  m2_optim_kind kind;
  m2_sgd_opts sgd;
  m2_adamw_opts adamw;
  int n, cap;
  optim_param *ps;
  int64_t steps;
};

/* ---------------- CPU kernels (raw contiguous buffers; a CUDA twin takes the same arguments) ---- */

typedef struct sgd_scalars {
  double lr, momentum, wd;
  bool nesterov;
} sgd_scalars;

typedef struct adamw_scalars {
  double lr, beta1, beta2, eps, wd; /* wd already 0 for no_decay params */
  double bc1, bc2;                  /* 1 - beta^t */
} adamw_scalars;

/* p, g, buf: (n); buf may be NULL when momentum == 0. */
static void sgd_update_cpu_f32(float *p, const float *g, float *buf, int64_t n, sgd_scalars s) {
  float lr = (float)s.lr, mu = (float)s.momentum, wd = (float)s.wd;
  for (int64_t i = 0; i < n; i++) {
    float d = g[i] + wd * p[i];
    if (buf) {
      buf[i] = mu * buf[i] + d;
      d = s.nesterov ? d + mu * buf[i] : buf[i];
    }
    p[i] -= lr * d;
  }
}

static void sgd_update_cpu_f64(double *p, const double *g, double *buf, int64_t n, sgd_scalars s) {
  for (int64_t i = 0; i < n; i++) {
    double d = g[i] + s.wd * p[i];
    if (buf) {
      buf[i] = s.momentum * buf[i] + d;
      d = s.nesterov ? d + s.momentum * buf[i] : buf[i];
    }
    p[i] -= s.lr * d;
  }
}

/* p, g, m (exp_avg), v (exp_avg_sq): (n) */
static void adamw_update_cpu_f32(float *p, const float *g, float *m, float *v, int64_t n, adamw_scalars s) {
  float b1 = (float)s.beta1, b2 = (float)s.beta2, eps = (float)s.eps;
  float decay = (float)(s.lr * s.wd), step = (float)(s.lr / s.bc1), rbc2 = (float)(1.0 / sqrt(s.bc2));
  for (int64_t i = 0; i < n; i++) {
    p[i] -= decay * p[i];
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    p[i] -= step * m[i] / (sqrtf(v[i]) * rbc2 + eps);
  }
}

static void adamw_update_cpu_f64(double *p, const double *g, double *m, double *v, int64_t n, adamw_scalars s) {
  double decay = s.lr * s.wd, step = s.lr / s.bc1, rbc2 = 1.0 / sqrt(s.bc2);
  for (int64_t i = 0; i < n; i++) {
    p[i] -= decay * p[i];
    m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g[i];
    v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g[i] * g[i];
    p[i] -= step * m[i] / (sqrt(v[i]) * rbc2 + s.eps);
  }
}

/* ---------------- construction ---------------- */

static m2_optim *optim_alloc(m2_optim_kind kind) {
  m2_optim *o = calloc(1, sizeof *o);
  if (!o) { m2_fail(M2_ERR_OOM, "out of host memory for an optimizer"); return NULL; }
  o->kind = kind;
  return o;
}

m2_optim *m2_sgd_new(const m2_sgd_opts *opts) {
  m2_sgd_opts s = opts ? *opts : (m2_sgd_opts){0};
  if (!(s.momentum >= 0 && s.momentum < 1)) {
    m2_fail(M2_ERR_VALUE, "sgd: momentum must be in [0, 1), got %g", s.momentum);
    return NULL;
  }
  if (!(s.weight_decay >= 0 && isfinite(s.weight_decay))) {
    m2_fail(M2_ERR_VALUE, "sgd: weight_decay must be finite and >= 0, got %g", s.weight_decay);
    return NULL;
  }
  if (s.nesterov && s.momentum == 0) {
    m2_fail(M2_ERR_VALUE, "sgd: nesterov needs momentum > 0");
    return NULL;
  }
  m2_optim *o = optim_alloc(M2_OPTIM_SGD);
  if (o) o->sgd = s;
  return o;
}

m2_optim *m2_adamw_new(const m2_adamw_opts *opts) {
  m2_adamw_opts a = opts ? *opts : (m2_adamw_opts){0};
  if (a.beta1 == 0 && a.beta2 == 0) { a.beta1 = 0.9; a.beta2 = 0.999; }
  if (a.eps == 0) a.eps = 1e-8;
  if (!(a.beta1 >= 0 && a.beta1 < 1) || !(a.beta2 >= 0 && a.beta2 < 1)) {
    m2_fail(M2_ERR_VALUE, "adamw: betas must be in [0, 1), got (%g, %g)", a.beta1, a.beta2);
    return NULL;
  }
  if (!(a.eps > 0 && isfinite(a.eps))) {
    m2_fail(M2_ERR_VALUE, "adamw: eps must be finite and > 0, got %g", a.eps);
    return NULL;
  }
  if (!(a.weight_decay >= 0 && isfinite(a.weight_decay))) {
    m2_fail(M2_ERR_VALUE, "adamw: weight_decay must be finite and >= 0, got %g", a.weight_decay);
    return NULL;
  }
  m2_optim *o = optim_alloc(M2_OPTIM_ADAMW);
  if (o) o->adamw = a;
  return o;
}

void m2_optim_free(m2_optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    m2_release(o->ps[i].p);
    free(o->ps[i].name);
    for (int j = 0; j < MAX_STATE; j++) m2_release(o->ps[i].state[j]);
  }
  free(o->ps);
  free(o);
}

m2_optim_kind m2_optim_kind_of(const m2_optim *o) { return o->kind; }

m2_status m2_optim_add(m2_optim *o, m2_tensor *param, const char *name, bool no_decay) {
  if (!o || !param) return m2_fail(M2_ERR_VALUE, "optim_add: NULL %s", o ? "parameter" : "optimizer");
  char label[64];
  if (!name) name = param->name;
  if (!name) {
    snprintf(label, sizeof label, "param %d", o->n);
    name = label;
  }
  if (param->dtype != M2_F32 && param->dtype != M2_F64)
    return m2_fail(M2_ERR_DTYPE, "optim_add: parameter '%s' is %s; optimizers update f32 or f64 parameters "
                                 "(keep master weights in f32)", name, m2_dtype_name(param->dtype));
  if (param->grad_fn)
    return m2_fail(M2_ERR_AUTOGRAD, "optim_add: parameter '%s' is not a leaf (made by '%s'); "
                                    "optimize the leaf tensor itself", name, param->grad_fn->call.op->name);
  if (!param->requires_grad)
    return m2_fail(M2_ERR_AUTOGRAD, "optim_add: parameter '%s' does not require grad "
                                    "(call m2_requires_grad_ first)", name);
  if (!m2_is_contiguous(param))
    return m2_fail(M2_ERR_UNSUPPORTED, "optim_add: parameter '%s' is not contiguous; optimizers update "
                                       "contiguous parameters only", name);
  for (int i = 0; i < o->n; i++)
    if (o->ps[i].p == param)
      return m2_fail(M2_ERR_VALUE, "optim_add: parameter '%s' was already added (as '%s')", name, o->ps[i].name);
  if (o->n == o->cap) {
    int cap = o->cap ? 2 * o->cap : 16;
    optim_param *ps = realloc(o->ps, sizeof *ps * (size_t)cap);
    if (!ps) return m2_fail(M2_ERR_OOM, "optim_add: out of host memory");
    o->ps = ps;
    o->cap = cap;
  }
  optim_param *e = &o->ps[o->n];
  memset(e, 0, sizeof *e);
  e->name = strdup(name);
  if (!e->name) return m2_fail(M2_ERR_OOM, "optim_add: out of host memory");
  m2_retain(param);
  e->p = param;
  e->no_decay = no_decay;
  o->n++;
  return M2_OK;
}

int m2_optim_nparams(const m2_optim *o) { return o->n; }

m2_tensor *m2_optim_param(const m2_optim *o, int i) {
  if (i < 0 || i >= o->n) {
    m2_fail(M2_ERR_INDEX, "optim: parameter index %d out of range [0, %d)", i, o->n);
    return NULL;
  }
  return o->ps[i].p;
}

int64_t m2_optim_steps(const m2_optim *o) { return o->steps; }
void m2_optim_set_steps(m2_optim *o, int64_t steps) { o->steps = steps > 0 ? steps : 0; }

/* ---------------- state ---------------- */

int m2_optim_state_count(const m2_optim *o) {
  if (o->kind == M2_OPTIM_ADAMW) return 2;
  return o->sgd.momentum > 0 ? 1 : 0;
}

const char *m2_optim_state_name(const m2_optim *o, int j) {
  if (j < 0 || j >= m2_optim_state_count(o)) return NULL;
  if (o->kind == M2_OPTIM_ADAMW) return j == 0 ? "exp_avg" : "exp_avg_sq";
  return "momentum";
}

m2_tensor *m2_optim_state(m2_optim *o, int i, int j) {
  if (i < 0 || i >= o->n || j < 0 || j >= m2_optim_state_count(o)) {
    m2_fail(M2_ERR_INDEX, "optim: state (%d, %d) out of range: %d parameters, %d state tensors each", i, j, o->n,
            m2_optim_state_count(o));
    return NULL;
  }
  return o->ps[i].state[j];
}

m2_status m2_optim_set_range(m2_optim *o, int i, int64_t lo, int64_t hi) {
  if (!o || i < 0 || i >= o->n) return m2_fail(M2_ERR_INDEX, "optim set_range: parameter index %d out of range", i);
  optim_param *e = &o->ps[i];
  int64_t n = m2_numel(e->p);
  if (lo < 0 || hi < lo || hi > n)
    return m2_fail(M2_ERR_INDEX, "optim set_range: [%lld, %lld) is not a range of the %lld elements of '%s'",
                   (long long)lo, (long long)hi, (long long)n, e->name);
  for (int j = 0; j < MAX_STATE; j++) {
    m2_release(e->state[j]);
    e->state[j] = NULL;
  }
  e->ranged = lo != 0 || hi != n;
  e->lo = lo;
  e->hi = hi;
  return M2_OK;
}

void m2_optim_range(const m2_optim *o, int i, int64_t *lo, int64_t *hi) {
  const optim_param *e = &o->ps[i];
  *lo = e->ranged ? e->lo : 0;
  *hi = e->ranged ? e->hi : m2_numel(e->p);
}

/* Create the missing state tensors of parameter i (zeroed; existing ones are kept). */
static m2_status ensure_state(m2_optim *o, int i) {
  optim_param *e = &o->ps[i];
  if (e->ranged && e->hi == e->lo) return M2_OK; /* nothing of it is ours */
  for (int j = 0; j < m2_optim_state_count(o); j++) {
    if (e->state[j]) continue;
    int64_t len = e->hi - e->lo;
    e->state[j] = e->ranged ? m2_zeros(e->p->dtype, e->p->device, 1, &len) : m2_zeros_like(e->p);
    if (!e->state[j])
      return m2_fail_context(m2_errcode(), "optim: state '%s' of '%s'", m2_optim_state_name(o, j), e->name);
  }
  return M2_OK;
}

m2_status m2_optim_init_state(m2_optim *o) {
  for (int i = 0; i < o->n; i++) M2_TRY(ensure_state(o, i));
  return M2_OK;
}

/* ---------------- step ---------------- */

/* t really lives on an available device of its type (header and memory agree) */
static bool on_device(const m2_tensor *t) {
  return t->device.index < m2_device_count(t->device.type) && m2_device_eq(t->storage->device, t->device);
}

/* The backend that updates t in place (t not on the CPU), or NULL with a message naming what is missing. */
static const m2_backend *device_backend(const m2_tensor *t, const char *what, const char *name) {
  char d[32];
  m2_device_name(t->device, d, sizeof d);
  if (!on_device(t)) {
    m2_fail(M2_ERR_DEVICE, "%s: %s is not in the memory of an available %s device (built without its backend, or no "
                           "such device)", what, name, d);
    return NULL;
  }
  return m2_backend_get(t->device.type);
}

/* Can parameter i be updated on this machine with its current grad? (nothing is modified) */
static m2_status check_param(const m2_optim *o, int i) {
  const optim_param *e = &o->ps[i];
  const m2_tensor *p = e->p, *g = p->grad;
  if (p->device.type != M2_CPU) {
    char what[160];
    snprintf(what, sizeof what, "parameter '%s' or its grad", e->name);
    const m2_backend *b = device_backend(p, "optim step", what);
    if (!b || (g && !device_backend(g, "optim step", what))) return m2_errcode();
    if (o->kind == M2_OPTIM_SGD ? !b->sgd_update : !b->adamw_update) {
      char d[32];
      m2_device_name(p->device, d, sizeof d);
      return m2_fail(M2_ERR_UNSUPPORTED, "optim step: the %s backend has no %s kernel (parameter '%s')", d,
                     o->kind == M2_OPTIM_SGD ? "SGD" : "AdamW", e->name);
    }
    if (p->dtype != M2_F32)
      return m2_fail(M2_ERR_DTYPE, "optim step: parameter '%s' is %s on a device; the device optimizer updates f32 "
                                   "(master) parameters", e->name, m2_dtype_name(p->dtype));
  }
  if (!m2_is_contiguous(p))
    return m2_fail(M2_ERR_UNSUPPORTED, "optim step: parameter '%s' is not contiguous", e->name);
  if (g->dtype != p->dtype)
    return m2_fail(M2_ERR_DTYPE, "optim step: grad of '%s' is %s but the parameter is %s", e->name,
                   m2_dtype_name(g->dtype), m2_dtype_name(p->dtype));
  if (!m2_device_eq(g->device, p->device))
    return m2_fail(M2_ERR_DEVICE, "optim step: grad of '%s' is on another device than the parameter", e->name);
  if (!m2_same_shape(g, p)) {
    char a[96], b[96];
    return m2_fail(M2_ERR_SHAPE, "optim step: grad of '%s' has shape %s, the parameter %s", e->name,
                   m2_shape_str(g, a, sizeof a), m2_shape_str(p, b, sizeof b));
  }
  if (!m2_is_contiguous(g))
    return m2_fail(M2_ERR_UNSUPPORTED, "optim step: grad of '%s' is not contiguous", e->name);
  return M2_OK;
}

static m2_status update_range(m2_optim *o, optim_param *e, m2_tensor *p, m2_tensor *g, int64_t t, double lr);

/* A ranged parameter updates 1-D views of elements [lo, hi) of p and its grad */
static m2_status update_param(m2_optim *o, optim_param *e, int64_t t, double lr) {
  if (!e->ranged) return update_range(o, e, e->p, e->p->grad, t, lr);
  if (e->hi == e->lo) return M2_OK;
  int64_t len = e->hi - e->lo, one = 1;
  m2_tensor *p = m2_view_raw(e->p, 1, &len, &one, e->p->offset + e->lo);
  m2_tensor *g = p ? m2_view_raw(e->p->grad, 1, &len, &one, e->p->grad->offset + e->lo) : NULL;
  m2_status s = p && g ? update_range(o, e, p, g, t, lr) : m2_errcode();
  m2_release(g);
  m2_release(p);
  return s;
}

static m2_status update_range(m2_optim *o, optim_param *e, m2_tensor *p, m2_tensor *grad, int64_t t, double lr) {
  int64_t n = m2_numel(p);
  bool f32 = p->dtype == M2_F32;
  const m2_backend *dev = p->device.type != M2_CPU ? m2_backend_get(p->device.type) : NULL; /* checked in check_param */
  if (o->kind == M2_OPTIM_SGD) {
    sgd_scalars s = {lr, o->sgd.momentum, e->no_decay ? 0.0 : o->sgd.weight_decay, o->sgd.nesterov};
    if (dev) return dev->sgd_update(p, grad, e->state[0], s.lr, s.momentum, s.wd, s.nesterov);
    void *pd = m2_data(p), *gd = m2_data(grad);
    void *buf = e->state[0] ? m2_data(e->state[0]) : NULL;
    if (f32) sgd_update_cpu_f32(pd, gd, buf, n, s);
    else sgd_update_cpu_f64(pd, gd, buf, n, s);
    return M2_OK;
  }
  const m2_adamw_opts *a = &o->adamw;
  adamw_scalars s = {lr, a->beta1, a->beta2, a->eps, e->no_decay ? 0.0 : a->weight_decay,
                     1.0 - pow(a->beta1, (double)t), 1.0 - pow(a->beta2, (double)t)};
  if (dev)
    return dev->adamw_update(p, grad, e->state[0], e->state[1], s.lr, s.beta1, s.beta2, s.eps, s.wd, s.bc1, s.bc2);
  void *pd = m2_data(p), *gd = m2_data(grad);
  void *m = m2_data(e->state[0]), *v = m2_data(e->state[1]);
  if (f32) adamw_update_cpu_f32(pd, gd, m, v, n, s);
  else adamw_update_cpu_f64(pd, gd, m, v, n, s);
  return M2_OK;
}

static m2_status optim_step(m2_optim *o, double lr) {
  if (!o) return m2_fail(M2_ERR_VALUE, "optim step: NULL optimizer");
  if (!isfinite(lr) || lr < 0) return m2_fail(M2_ERR_VALUE, "optim step: learning rate must be finite and >= 0, got %g", lr);
  /* check everything first so that a failure leaves every parameter and state untouched */
  for (int i = 0; i < o->n; i++)
    if (o->ps[i].p->grad) M2_TRY(check_param(o, i));
  for (int i = 0; i < o->n; i++)
    if (o->ps[i].p->grad) M2_TRY(ensure_state(o, i));
  int64_t t = o->steps + 1;
  for (int i = 0; i < o->n; i++)
    if (o->ps[i].p->grad) M2_TRY(update_param(o, &o->ps[i], t, lr));
  o->steps = t;
  return M2_OK;
}

m2_status m2_optim_step(m2_optim *o, double lr) {
  if (!m2_profile_on() || !o) return optim_step(o, lr);
  const m2_device dev = o->n > 0 ? o->ps[0].p->device : M2_DEV_CPU;
  const double t0 = m2_profile_begin(dev);
  m2_status s = optim_step(o, lr);
  m2_profile_end("(optimizer step)", false, dev, t0);
  return s;
}

m2_status m2_optim_zero_grad(m2_optim *o) {
  for (int i = 0; i < o->n; i++)
    if (o->ps[i].p->grad) M2_TRY(m2_zero_(o->ps[i].p->grad));
  return M2_OK;
}

void m2_optim_clear_grads(m2_optim *o) {
  for (int i = 0; o && i < o->n; i++) {
    m2_release(o->ps[i].p->grad);
    o->ps[i].p->grad = NULL;
  }
}

/* ---------------- global grad-norm clipping ---------------- */

static m2_status clip_grad_norm(m2_tensor *const *params, int n, double max_norm, double *norm) {
  if (norm) *norm = 0;
  if (n < 0 || (n > 0 && !params)) return m2_fail(M2_ERR_VALUE, "clip_grad_norm: bad parameter list (n = %d)", n);
  if (isnan(max_norm)) return m2_fail(M2_ERR_VALUE, "clip_grad_norm: max_norm is NaN");
  for (int i = 0; i < n; i++) {
    if (!params[i]) return m2_fail(M2_ERR_VALUE, "clip_grad_norm: parameter %d is NULL", i);
    const m2_tensor *g = params[i]->grad;
    if (!g) continue;
    if (g->device.type != M2_CPU) {
      char what[32];
      snprintf(what, sizeof what, "grad %d", i);
      const m2_backend *b = device_backend(g, "clip_grad_norm", what);
      if (!b) return m2_errcode();
      if (!b->sumsq_many || !b->scale_)
        return m2_fail(M2_ERR_UNSUPPORTED, "clip_grad_norm: the %s backend has no norm / scale kernels (grad %d)",
                       b->name, i);
      if (g->dtype != M2_F32 && g->dtype != M2_BF16)
        return m2_fail(M2_ERR_DTYPE, "clip_grad_norm: grad %d is %s on %s; f32 or bf16 expected", i,
                       m2_dtype_name(g->dtype), b->name);
    } else if (g->dtype != M2_F32 && g->dtype != M2_F64)
      return m2_fail(M2_ERR_DTYPE, "clip_grad_norm: grad %d is %s; f32 or f64 expected", i, m2_dtype_name(g->dtype));
    if (!m2_is_contiguous(g)) return m2_fail(M2_ERR_UNSUPPORTED, "clip_grad_norm: grad %d is not contiguous", i);
  }
  /* dev_ss[i]: sum of squares of grad i when it is on a device; one call per device type (its backend orders and
   * synchronises the work), over the grads of that type */
  double ss = 0, *dev_ss = calloc((size_t)(n > 0 ? n : 1), sizeof *dev_ss);
  m2_tensor **dev_g = calloc((size_t)(n > 0 ? n : 1), sizeof *dev_g);
  m2_status ds = dev_g && dev_ss ? M2_OK : m2_fail(M2_ERR_OOM, "clip_grad_norm: out of host memory");
  for (int t = M2_CPU + 1; ds == M2_OK && t < M2_NUM_DEVTYPES; t++) {
    bool any = false;
    for (int i = 0; i < n; i++) {
      const m2_tensor *g = params[i]->grad;
      dev_g[i] = g && (int)g->device.type == t ? params[i]->grad : NULL;
      any = any || dev_g[i];
    }
    double *part = any ? calloc((size_t)n, sizeof *part) : NULL;
    if (any && !part) ds = m2_fail(M2_ERR_OOM, "clip_grad_norm: out of host memory");
    if (any && part) ds = m2_backend_get((m2_devtype)t)->sumsq_many(dev_g, n, part);
    for (int i = 0; part && ds == M2_OK && i < n; i++)
      if (dev_g[i]) dev_ss[i] = part[i];
    free(part);
  }
  free(dev_g);
  if (ds != M2_OK) { free(dev_ss); return ds; }
  for (int i = 0; i < n; i++) {
    const m2_tensor *g = params[i]->grad;
    if (!g) continue;
    if (g->device.type != M2_CPU) { ss += dev_ss[i]; continue; }
    int64_t k = m2_numel(g);
    if (g->dtype == M2_F32) {
      const float *x = m2_data(g);
      for (int64_t j = 0; j < k; j++) ss += (double)x[j] * (double)x[j];
    } else {
      const double *x = m2_data(g);
      for (int64_t j = 0; j < k; j++) ss += x[j] * x[j];
    }
  }
  free(dev_ss);
  double total = sqrt(ss);
  if (norm) *norm = total;
  if (!isfinite(total) || !(max_norm > 0) || total <= max_norm) return M2_OK;
  double scale = max_norm / (total + 1e-6);
  for (int i = 0; i < n; i++) {
    m2_tensor *g = params[i]->grad;
    if (!g) continue;
    if (g->device.type != M2_CPU) {
      M2_TRY(m2_backend_get(g->device.type)->scale_(g, scale));
      continue;
    }
    int64_t k = m2_numel(g);
    if (g->dtype == M2_F32) {
      float *x = m2_data(g), sf = (float)scale;
      for (int64_t j = 0; j < k; j++) x[j] *= sf;
    } else {
      double *x = m2_data(g);
      for (int64_t j = 0; j < k; j++) x[j] *= scale;
    }
  }
  return M2_OK;
}

m2_status m2_clip_grad_norm(m2_tensor *const *params, int n, double max_norm, double *norm) {
  if (!m2_profile_on() || n <= 0 || !params || !params[0]) return clip_grad_norm(params, n, max_norm, norm);
  const m2_device dev = params[0]->device;
  const double t0 = m2_profile_begin(dev);
  m2_status s = clip_grad_norm(params, n, max_norm, norm);
  m2_profile_end("(clip_grad_norm)", false, dev, t0);
  return s;
}

/* ---------------- learning-rate schedules (formulas in the header comment) ---------------- */

double m2_schedule_lr(const m2_schedule *s, int64_t step) {
  if (!s) {
    m2_fail(M2_ERR_VALUE, "schedule_lr: NULL schedule");
    return NAN;
  }
  int64_t W = s->warmup > 0 ? s->warmup : 0, S = s->stable > 0 ? s->stable : 0, D = s->decay > 0 ? s->decay : 0;
  if (step < 0) step = 0;
  if (step < W) return s->lr * (double)(step + 1) / (double)W;
  int64_t u = step - W;
  switch (s->kind) {
    case M2_SCHED_CONSTANT: return s->lr;
    case M2_SCHED_COSINE:
      if (u >= D) return s->min_lr;
      return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1.0 + cos(3.14159265358979323846 * (double)u / (double)D));
    case M2_SCHED_WSD:
      if (u < S) return s->lr;
      if (u - S >= D) return s->min_lr;
      return s->lr + (s->min_lr - s->lr) * (double)(u - S) / (double)D;
  }
  m2_fail(M2_ERR_VALUE, "schedule_lr: unknown schedule kind %d", (int)s->kind);
  return NAN;
}
