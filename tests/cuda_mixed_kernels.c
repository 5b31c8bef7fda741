/* cuda_mixed_kernels.c — the mixed bf16 / f32 CUDA kernels of conv1d_causal, add, sub, mul and swiglu (core's
 * switch m2_mixed_kernels, env M2_MIXED_KERNELS; op flag M2_OP_MIXED_KERNELS_OPT). Every case runs on the GPU twice,
 * on fresh random inputs (never zeros) with odd sizes and broadcasting shapes:
 *   switch off: the dispatcher's cast path (f32 copies of the bf16 inputs, to_dtype nodes);
 *   switch on:  the mixed kernels (the test checks that they ran: m2_cuda_mixed_calls grows, and the profiler counts
 *               no conversion for the op; with the switch off they do not run and conversions are counted);
 * and the outputs and every input gradient must be BIT-IDENTICAL between the two (compared byte for byte, dtypes
 * included: y in the dtype of the op's M2_OP_CAST_* rule, each gradient in its input's dtype), and close to the CPU
 * reference (rel. 1e-5 for f32 tensors, 1e-2 for bf16 ones, as the other parity tests). The backward kernels are
 * also called directly on a mixed call, to check that each input's gradient comes back in that input's own dtype
 * (leaf gradients are converted to the leaf's dtype by the tape, which would hide a wrong one). Skips (77) without
 * a GPU. */
#include "cuda_parity.h"
#include "../cuda/m2cuda.h"
#include <string.h>

#define MX_MAX_IN 3
typedef m2_tensor *(*mx_fn)(m2_tensor *const *in);

static m2_tensor *f_conv(m2_tensor *const *in) { return m2_conv1d_causal(in[0], in[1], in[2]); }
static m2_tensor *f_add(m2_tensor *const *in) { return m2_add(in[0], in[1]); }
static m2_tensor *f_sub(m2_tensor *const *in) { return m2_sub(in[0], in[1]); }
static m2_tensor *f_mul(m2_tensor *const *in) { return m2_mul(in[0], in[1]); }
static m2_tensor *f_swiglu(m2_tensor *const *in) { return m2_swiglu(in[0], in[1]); }

static uint64_t g_seed = 7000;

/* fresh random values in [lo, hi) on the CPU, rounded to dt (new ref) */
static m2_tensor *rnd(m2_dtype dt, int nd, const int64_t *shape, double lo, double hi) {
  m2_rng r = m2_rng_make(g_seed++, 11);
  m2_tensor *t = m2_empty(M2_F32, M2_DEV_CPU, nd, shape);
  if (!t) return NULL;
  m2_rng_uniform_(&r, t, lo, hi);
  m2_tensor *d = m2_clone_raw(t, dt, M2_DEV_CPU);
  m2_release(t);
  return d;
}

/* a and b: one dtype, one shape, the same bytes (host copies) */
static bool same_bits(const m2_tensor *a, const m2_tensor *b) {
  if (!a || !b || a->dtype != b->dtype || !m2_same_shape(a, b)) return false;
  m2_tensor *ca = m2_clone_raw(a, a->dtype, M2_DEV_CPU), *cb = m2_clone_raw(b, b->dtype, M2_DEV_CPU);
  bool same = ca && cb && memcmp(m2_data(ca), m2_data(cb), (size_t)m2_numel(ca) * m2_elsize(ca)) == 0;
  m2_release(ca), m2_release(cb);
  return same;
}

typedef struct mx_result {
  m2_tensor *y, *g[MX_MAX_IN]; /* on the host, in the dtypes the device gave */
  long mixed_calls;            /* mixed kernel calls during the run */
  long casts;                  /* the dispatcher's conversions for the op (profiler) */
} mx_result;

static void mx_clear(mx_result *r) {
  m2_release(r->y);
  for (int i = 0; i < MX_MAX_IN; i++) m2_release(r->g[i]);
  memset(r, 0, sizeof *r);
}

/* fn on copies of host[] on dev (their dtypes), backward of the output gradient gy (host f32, taken to y's dtype) */
static void mx_run(const char *op, mx_fn fn, int n, m2_tensor *const *host, const bool *grad, m2_tensor *gy,
                   m2_device dev, mx_result *r) {
  memset(r, 0, sizeof *r);
  m2_tensor *in[MX_MAX_IN] = {0};
  for (int i = 0; i < n; i++) {
    if (!host[i]) continue;
    in[i] = m2_clone_raw(host[i], host[i]->dtype, dev);
    if (in[i] && grad[i]) m2_requires_grad_(in[i], true);
  }
  const long calls0 = m2_cuda_mixed_calls();
  m2_profile_reset();
  m2_profile_enable(true);
  m2_tensor *y = fn(in);
  CHECK(y != NULL, "%s forward failed", op);
  if (y) {
    m2_tensor *g = m2_clone_raw(gy, y->dtype, dev);
    CHECK(g && m2_backward(y, g) == M2_OK, "%s backward failed", op);
    m2_release(g);
    r->y = m2_clone_raw(y, y->dtype, M2_DEV_CPU);
  }
  m2_profile_enable(false);
  r->mixed_calls = m2_cuda_mixed_calls() - calls0;
  m2_profile_cast_row rows[64];
  int nr = m2_profile_cast_rows(rows, 64);
  for (int k = 0; k < nr && k < 64; k++)
    if (strcmp(rows[k].op, op) == 0) r->casts += rows[k].fwd_calls + rows[k].bwd_calls;
  m2_profile_reset();
  for (int i = 0; i < n; i++) {
    if (in[i] && grad[i] && in[i]->grad) r->g[i] = m2_clone_raw(in[i]->grad, in[i]->grad->dtype, M2_DEV_CPU);
    if (in[i] && grad[i]) CHECK(r->g[i] != NULL, "%s: no gradient for input %d", op, i + 1);
    m2_release(in[i]);
  }
  m2_release(y);
}

static const char *dn(m2_dtype dt) { return m2_dtype_name(dt); }
static double tol_of(m2_dtype dt) { return dt == M2_BF16 ? 1e-2 : 1e-5; }

static int g_cases;

/* One case: host inputs (their dtypes: the mix), which need gradients, the op's name (profiler rows). */
static void mx_case(const char *name, const char *op, mx_fn fn, int n, m2_tensor *const *host, const bool *grad) {
  g_cases++;
  /* the output's shape and dtype from a CPU call without gradients */
  m2_no_grad_push();
  m2_tensor *probe = fn(host);
  m2_no_grad_pop();
  CHECK(probe != NULL, "%s: cpu forward failed", name);
  if (!probe) return;
  m2_tensor *gy = rnd(M2_F32, probe->ndim, probe->shape, -1, 1);
  m2_release(probe);
  mx_result off, on, cpu;
  m2_cuda_mixed_kernels(0);
  mx_run(op, fn, n, host, grad, gy, par_gpu, &off);
  m2_cuda_mixed_kernels(1);
  mx_run(op, fn, n, host, grad, gy, par_gpu, &on);
  m2_cuda_mixed_kernels(0);
  mx_run(op, fn, n, host, grad, gy, M2_DEV_CPU, &cpu);
  /* which path ran */
  CHECK(off.mixed_calls == 0, "%s: switch off, yet %ld mixed kernel calls", name, off.mixed_calls);
  CHECK(off.casts > 0, "%s: switch off, yet no conversion counted for %s", name, op);
  CHECK(on.mixed_calls >= 1, "%s: switch on, yet no mixed kernel ran", name);
  CHECK(on.casts == 0, "%s: switch on, yet %ld conversions for %s", name, on.casts, op);
  /* switch on == switch off, bit for bit; both close to the CPU */
  CHECK(same_bits(on.y, off.y), "%s: output differs between the mixed kernel (%s) and the cast path (%s)", name,
        on.y ? dn(on.y->dtype) : "-", off.y ? dn(off.y->dtype) : "-");
  if (on.y && cpu.y) {
    CHECK(on.y->dtype == cpu.y->dtype, "%s: output dtype %s, cpu %s", name, dn(on.y->dtype), dn(cpu.y->dtype));
    double e = max_rel_diff(on.y, cpu.y);
    CHECK(e <= tol_of(on.y->dtype), "%s: output vs cpu: rel. error %.3e", name, e);
  }
  for (int i = 0; i < n; i++) {
    if (!host[i] || !grad[i]) continue;
    CHECK(same_bits(on.g[i], off.g[i]), "%s: gradient of input %d differs between the mixed kernel and the cast path",
          name, i + 1);
    if (on.g[i]) CHECK(on.g[i]->dtype == host[i]->dtype, "%s: gradient %d is %s, input %s", name, i + 1,
                       dn(on.g[i]->dtype), dn(host[i]->dtype));
    if (on.g[i] && cpu.g[i]) {
      double e = max_rel_diff(on.g[i], cpu.g[i]);
      CHECK(e <= tol_of(host[i]->dtype), "%s: gradient %d vs cpu: rel. error %.3e", name, i + 1, e);
    }
  }
  mx_clear(&off), mx_clear(&on), mx_clear(&cpu);
  m2_release(gy);
}

/* The op's backward kernel on a mixed call made by hand (switch on): din[i] in in[i]'s dtype. */
static void din_dtypes(const m2_op *op, mx_fn fn, int n, m2_tensor *const *host) {
  m2_tensor *in[MX_MAX_IN] = {0};
  for (int i = 0; i < n; i++)
    if (host[i]) in[i] = m2_clone_raw(host[i], host[i]->dtype, par_gpu);
  m2_cuda_mixed_kernels(1);
  m2_tensor *y = fn(in);
  CHECK(y != NULL, "%s: forward failed", op->name);
  m2_opcall c;
  m2_call_init(&c, op, n, in);
  m2_tensor *dout = y ? m2_clone_raw(y, y->dtype, par_gpu) : NULL; /* any values: only dtypes are checked */
  c.dout[0] = dout;
  for (int i = 0; i < n; i++) c.needs_din[i] = in[i] != NULL;
  m2_op_fn bwd = m2_op_kernel(op, par_gpu, true);
  m2_no_grad_push();
  CHECK(bwd && dout && bwd(&c) == M2_OK, "%s: backward kernel failed", op->name);
  m2_no_grad_pop();
  m2_cuda_mixed_kernels(0);
  for (int i = 0; i < n; i++) {
    if (!in[i]) continue;
    CHECK(c.din[i] && c.din[i]->dtype == in[i]->dtype, "%s: din[%d] is %s, in[%d] %s", op->name, i,
          c.din[i] ? dn(c.din[i]->dtype) : "missing", i, dn(in[i]->dtype));
    m2_release(c.din[i]);
    m2_release(in[i]);
  }
  m2_release(dout), m2_release(y);
}

static void conv_cases(void) {
  static const struct { int64_t B, T, C, W; bool bias; m2_dtype xd, wd, bd; } cs[] = {
      {2, 37, 19, 4, true, M2_BF16, M2_F32, M2_F32},   /* the model's: bf16 x, f32 weight and bias */
      {3, 150, 131, 4, false, M2_BF16, M2_F32, M2_F32}, /* sequences crossing chunks of 64 rows, > 128 channels */
      {2, 70, 33, 3, true, M2_BF16, M2_F32, M2_F32},
      {1, 65, 7, 2, true, M2_BF16, M2_F32, M2_F32},
      {2, 29, 11, 5, true, M2_BF16, M2_F32, M2_F32},   /* the per-element kernels (W outside 2..4) */
      {2, 9, 5, 1, false, M2_BF16, M2_F32, M2_F32},
      {2, 41, 13, 4, true, M2_BF16, M2_F32, M2_BF16},  /* a bf16 bias with an f32 weight */
      {2, 41, 13, 4, true, M2_F32, M2_BF16, M2_BF16},  /* f32 x with bf16 weights: f32 out */
      {2, 41, 13, 4, true, M2_BF16, M2_BF16, M2_F32},
  };
  for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
    int64_t sx[3] = {cs[k].B, cs[k].T, cs[k].C}, sw[2] = {cs[k].C, cs[k].W}, sb[1] = {cs[k].C};
    m2_tensor *h[3] = {rnd(cs[k].xd, 3, sx, -2, 2), rnd(cs[k].wd, 2, sw, -1, 1),
                       cs[k].bias ? rnd(cs[k].bd, 1, sb, -1, 1) : NULL};
    char name[128];
    snprintf(name, sizeof name, "conv1d_causal x %s (%lld,%lld,%lld) w %s W %lld bias %s", dn(cs[k].xd),
             (long long)cs[k].B, (long long)cs[k].T, (long long)cs[k].C, dn(cs[k].wd), (long long)cs[k].W,
             cs[k].bias ? dn(cs[k].bd) : "none");
    bool all[3] = {true, true, cs[k].bias}, x_only[3] = {true, false, false}, w_only[3] = {false, true, cs[k].bias};
    mx_case(name, "conv1d_causal", f_conv, 3, h, all);
    if (k == 0) {
      mx_case("conv1d_causal dx only", "conv1d_causal", f_conv, 3, h, x_only);
      mx_case("conv1d_causal dw, dbias only", "conv1d_causal", f_conv, 3, h, w_only);
      din_dtypes(&m2_op_conv1d_causal, f_conv, 3, h);
    }
    for (int i = 0; i < 3; i++) m2_release(h[i]);
  }
}

static void binary_cases(void) {
  static const struct { int na; int64_t sa[3]; int nb; int64_t sb[3]; } sh[] = {
      {3, {3, 17, 33}, 3, {3, 17, 33}}, /* same shape: one flat loop */
      {3, {4, 9, 33}, 1, {33}},         /* an activation with a gate (C) */
      {1, {33}, 3, {4, 9, 33}},
      {3, {4, 1, 35}, 3, {4, 9, 1}},    /* both broadcast */
      {2, {5, 1}, 3, {3, 5, 7}},
  };
  const struct { const char *op; mx_fn fn; const m2_op *row; } ops[] = {
      {"add", f_add, &m2_op_add}, {"sub", f_sub, &m2_op_sub}, {"mul", f_mul, &m2_op_mul}};
  for (size_t o = 0; o < 3; o++)
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++)
      for (int bf = 0; bf < 2; bf++) { /* the bf16 operand: a, then b */
        m2_dtype da = bf == 0 ? M2_BF16 : M2_F32, db = bf == 0 ? M2_F32 : M2_BF16;
        m2_tensor *h[2] = {rnd(da, sh[k].na, sh[k].sa, -2, 2), rnd(db, sh[k].nb, sh[k].sb, -2, 2)};
        char name[128];
        snprintf(name, sizeof name, "%s a %s b %s, shapes %d", ops[o].op, dn(da), dn(db), (int)k);
        bool both[2] = {true, true}, a_only[2] = {true, false}, b_only[2] = {false, true};
        mx_case(name, ops[o].op, ops[o].fn, 2, h, both);
        if (k == 1) {
          mx_case(name, ops[o].op, ops[o].fn, 2, h, a_only);
          mx_case(name, ops[o].op, ops[o].fn, 2, h, b_only);
          din_dtypes(ops[o].row, ops[o].fn, 2, h);
        }
        m2_release(h[0]), m2_release(h[1]);
      }
}

static void swiglu_cases(void) {
  static const int64_t shapes[][3] = {{3, 41, 97}, {2, 5, 1031}};
  for (int k = 0; k < 2; k++)
    for (int bf = 0; bf < 2; bf++) {
      m2_dtype da = bf == 0 ? M2_BF16 : M2_F32, db = bf == 0 ? M2_F32 : M2_BF16;
      /* a spread wide, so that sigmoid saturates on both sides */
      m2_tensor *h[2] = {rnd(da, 3, shapes[k], -12, 12), rnd(db, 3, shapes[k], -3, 3)};
      char name[128];
      snprintf(name, sizeof name, "swiglu a %s b %s (%lld,%lld,%lld)", dn(da), dn(db), (long long)shapes[k][0],
               (long long)shapes[k][1], (long long)shapes[k][2]);
      bool both[2] = {true, true}, a_only[2] = {true, false}, b_only[2] = {false, true};
      mx_case(name, "swiglu", f_swiglu, 2, h, both);
      if (k == 0) {
        mx_case(name, "swiglu", f_swiglu, 2, h, a_only);
        mx_case(name, "swiglu", f_swiglu, 2, h, b_only);
        din_dtypes(&m2_op_swiglu, f_swiglu, 2, h);
      }
      m2_release(h[0]), m2_release(h[1]);
    }
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_mixed_kernels");
  m2_cuda_mixed_kernels(0);
  conv_cases();
  binary_cases();
  swiglu_cases();
  /* div has no mixed kernel: its mixed calls convert whatever the switch */
  int64_t s[2] = {3, 5};
  m2_tensor *a = rnd(M2_BF16, 2, s, 1, 2), *b = rnd(M2_F32, 2, s, 1, 2);
  m2_tensor *ga = m2_clone_raw(a, M2_BF16, par_gpu), *gb = m2_clone_raw(b, M2_F32, par_gpu);
  m2_cuda_mixed_kernels(1);
  const long c0 = m2_cuda_mixed_calls();
  m2_tensor *q = m2_div(ga, gb);
  CHECK(q && q->dtype == M2_F32 && m2_cuda_mixed_calls() == c0, "div: converts (f32 out, no mixed kernel)");
  m2_cuda_mixed_kernels(0);
  m2_release(q), m2_release(a), m2_release(b), m2_release(ga), m2_release(gb);
  printf("cuda_mixed_kernels: %d cases (switch on vs off compared bit for bit; vs the CPU within 1e-5 f32, 1e-2 "
         "bf16)\n", g_cases);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("cuda_mixed_kernels");
}
