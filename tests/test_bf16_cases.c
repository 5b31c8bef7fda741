/* test_bf16_cases.c — bf16 inputs on the CPU reference, for every case of the shared table (tests/op_cases.c), so
 * for every registered op: the case's inputs are rounded to bf16 values once, then the op runs
 *   ref  on F32 tensors of those values (the f32 op, the reference),
 *   all  on BF16 tensors of them (every float input bf16), and
 *   act  with in[0] BF16 and the other float inputs F32 (an activation with f32 parameters: rmsnorm's weight, the
 *        M2RNN's W and gate, a residual add),
 * forward, then backward under one random output gradient (bf16 values, so both paths see the same). The bf16 paths
 * must give: outputs of the dtype the op's M2_OP_CAST_* rule says (core/op_cast.c), within BF16_TOL of the
 * reference (one rounding of the output: <= 2^-8 of each value, bf16 keeping 8 significant bits; a case that
 * chains ops rounds once per op), and
 * every gradient in its input's own dtype (f32 parameters get f32 gradients) within the same bound; the whole table
 * with f32 products, then again with bf16 products (m2_set_matmul_precision). Then the
 * activation switch (m2_set_activation_dtype: matmul and linear return bf16), and a bf16 / f64 mix refused with
 * the op and the dtypes named. */
#include "check.h"
#include "op_cases.h"
#include <string.h>

/* Errors are max |bf16 path - reference| / max |reference| per tensor. One rounding to bf16 (8 significant bits,
   round to nearest) moves a value by at most 2^-8 = 3.9e-3 of itself: the bound of an op computed in f32 on the
   bf16 values and rounded once. A case that chains k ops each rounding its bf16 output (the whole MoE MLP: five
   ops) errs up to about k 2^-8: BF16_TOL_CHAIN. */
#define BF16_TOL 4e-3
#define BF16_TOL_CHAIN 2e-2

enum { V_ALL, V_ACT };
static const char *const VNAME[] = {"all bf16", "in[0] bf16"};

/* x (any float dtype) rounded to bf16 values, as dtype dt (new ref) */
static m2_tensor *rounded(m2_tensor *x, m2_dtype dt) {
  m2_tensor *h = m2_clone_raw(x, M2_BF16, M2_DEV_CPU);
  m2_tensor *r = h ? m2_clone_raw(h, dt, M2_DEV_CPU) : NULL;
  m2_release(h);
  return r;
}

/* The dtype the cast rule gives float output j of op when the float inputs were all bf16 (V_ALL) or in[0] bf16 and
   the others f32 (V_ACT, with at least one f32 input). */
static m2_dtype want_dtype(const m2_op *op, int j, int v) {
  if (op->flags & M2_OP_CAST_F32) return M2_F32;
  if ((op->flags & M2_OP_CAST_STATE1) && j == 1) return M2_F32;
  if (op->flags & M2_OP_CAST_IN0) return M2_BF16;
  return v == V_ALL ? M2_BF16 : M2_F32;
}

static int g_cases;
static double g_worst_fwd, g_worst_bwd;

static void run_variant(const op_case *c, const m2_op *op, const oc_inputs *in, int v, bool chain) {
  const double tol = chain ? BF16_TOL_CHAIN : BF16_TOL;
  /* the table's bf16-activation rows round inputs themselves (or switch matmul to bf16 outputs): no rule to check */
  const bool own_casts = strstr(c->name, "bf16") != NULL;
  const bool fwd_only = (c->flags & OC_FWD_ONLY) != 0;
  m2_tensor *ri[OC_MAX_IN] = {0}, *ti[OC_MAX_IN] = {0};
  for (int i = 0; i < in->n; i++) {
    m2_tensor *x = in->t[i];
    if (!x) continue;
    if (!m2_dtype_is_float(x->dtype)) {
      m2_retain(x), m2_retain(x);
      ri[i] = ti[i] = x;
      continue;
    }
    ri[i] = rounded(x, M2_F32);
    ti[i] = rounded(x, v == V_ALL || i == 0 ? M2_BF16 : M2_F32);
    if (in->grad[i] && !fwd_only && ri[i] && ti[i]) {
      m2_requires_grad_(ri[i], true);
      m2_requires_grad_(ti[i], true);
    }
  }
  m2_tensor *yr[OC_MAX_OUT] = {0}, *yt[OC_MAX_OUT] = {0}, *dy[OC_MAX_OUT] = {0};
  m2_clear_error();
  int nr = c->run(ri, yr);
  CHECK(nr > 0, "%s / %s: f32 reference failed: %s", c->op, c->name, m2_errmsg());
  int nt = c->run(ti, yt);
  CHECK(nt == nr, "%s / %s, %s: failed (%d outputs, reference %d): %s", c->op, c->name, VNAME[v], nt, nr,
        m2_errmsg());
  double wf = 0, wb = 0;
  bool diff = !fwd_only;
  for (int j = 0; nt == nr && j < nr; j++) {
    CHECK(m2_same_shape(yr[j], yt[j]), "%s / %s, %s: output %d shape", c->op, c->name, VNAME[v], j);
    if (!m2_dtype_is_float(yr[j]->dtype)) {
      CHECK(yt[j]->dtype == yr[j]->dtype && max_rel_diff(yt[j], yr[j]) == 0, "%s / %s, %s: integer output %d differs",
            c->op, c->name, VNAME[v], j);
      continue;
    }
    /* the rule of the op under test holds for its own outputs (not for a case whose last op is another) */
    if (!chain && !own_casts)
      CHECK(yt[j]->dtype == want_dtype(op, j, v), "%s / %s, %s: output %d is %s, the cast rule says %s", c->op,
            c->name, VNAME[v], j, m2_dtype_name(yt[j]->dtype), m2_dtype_name(want_dtype(op, j, v)));
    double e = max_rel_diff(yt[j], yr[j]);
    CHECK(e <= tol, "%s / %s, %s: output %d error %.3g > %.3g", c->op, c->name, VNAME[v], j, e, tol);
    if (!(e <= wf)) wf = e;
    if (yr[j]->requires_grad && yt[j]->requires_grad) {
      m2_rng r = m2_rng_make(77, (uint64_t)j);
      m2_tensor *d = m2_randn(&r, M2_F32, M2_DEV_CPU, yr[j]->ndim, yr[j]->shape);
      dy[j] = rounded(d, M2_F32);
      m2_release(d);
    } else if (yr[j]->requires_grad || yt[j]->requires_grad) {
      CHECK(false, "%s / %s, %s: output %d requires grad on one path only", c->op, c->name, VNAME[v], j);
      diff = false;
    }
  }
  bool any = false;
  for (int j = 0; j < nr; j++) any |= dy[j] != NULL;
  if (diff && any && nt == nr) {
    m2_tensor *lr = oc_dot_loss(yr, nr, dy), *lt = oc_dot_loss(yt, nt, dy);
    CHECK(lr && lt, "%s / %s, %s: loss", c->op, c->name, VNAME[v]);
    CHECK(lr && m2_backward(lr, NULL) == M2_OK, "%s / %s: reference backward: %s", c->op, c->name, m2_errmsg());
    CHECK(lt && m2_backward(lt, NULL) == M2_OK, "%s / %s, %s: backward: %s", c->op, c->name, VNAME[v], m2_errmsg());
    for (int i = 0; i < in->n; i++) {
      if (!ri[i] || !ri[i]->requires_grad) continue;
      m2_tensor *gr = ri[i]->grad, *gt = ti[i]->grad;
      CHECK(gr && gt, "%s / %s, %s: no gradient for input %d", c->op, c->name, VNAME[v], i);
      if (!gr || !gt) continue;
      CHECK(gt->dtype == ti[i]->dtype && m2_same_shape(gt, ti[i]), "%s / %s, %s: gradient %d is %s, its input %s",
            c->op, c->name, VNAME[v], i, m2_dtype_name(gt->dtype), m2_dtype_name(ti[i]->dtype));
      double e = max_rel_diff(gt, gr);
      CHECK(e <= tol, "%s / %s, %s: gradient of input %d error %.3g > %.3g", c->op, c->name, VNAME[v], i, e, tol);
      if (!(e <= wb)) wb = e;
    }
    m2_release(lr), m2_release(lt);
  }
  printf("  %-20s %-40s %-10s fwd %.2e  bwd %.2e\n", c->op, c->name, VNAME[v], wf, wb);
  if (!(wf <= g_worst_fwd)) g_worst_fwd = wf;
  if (!(wb <= g_worst_bwd)) g_worst_bwd = wb;
  for (int j = 0; j < OC_MAX_OUT; j++) m2_release(yr[j]), m2_release(yt[j]), m2_release(dy[j]);
  for (int i = 0; i < OC_MAX_IN; i++) m2_release(ri[i]), m2_release(ti[i]);
}

/* cases whose run chains ops, each rounding its bf16 output (the wider bound; the dtype rule of the named op is not
   checked: the last op is another) */
static bool is_chain(const op_case *c) {
  static const char *const names[] = {"the whole MoE MLP, top-2 of 5, with aux", "copy of a transposed view",
                                      "of a permuted view", "there and back",
                                      "checkpoint of tanh(x w + b) and its product with x, w not an input", NULL};
  for (int k = 0; names[k]; k++)
    if (strcmp(c->name, names[k]) == 0) return true;
  return false;
}

static void table_cases(void) {
  for (int k = 0; k < oc_ncases; k++) {
    const op_case *c = &oc_cases[k];
    const m2_op *op = m2_op_find(c->op);
    CHECK(op != NULL, "case %s names no op", c->op);
    if (!op || (c->flags & (OC_TWO_DEVICES | OC_NO_BF16))) continue;
    oc_inputs in;
    oc_make(c, 4242, &in);
    int nfloat = 0;
    for (int i = 0; i < in.n; i++) nfloat += in.t[i] && m2_dtype_is_float(in.t[i]->dtype);
    if (nfloat > 0) run_variant(c, op, &in, V_ALL, is_chain(c)), g_cases++;
    /* the activation variant: in[0] bf16 with f32 others (only where it differs from all bf16) */
    if (nfloat > 1 && in.t[0] && m2_dtype_is_float(in.t[0]->dtype)) run_variant(c, op, &in, V_ACT, is_chain(c)), g_cases++;
    oc_release(&in);
  }
}

/* m2_set_activation_dtype(M2_BF16): matmul and linear return bf16, the product of the bf16-rounded operands (fp32
   accumulation) rounded once; an f32 weight gets an f32 gradient, the activation a bf16 one; f64 is left alone */
static void activation_switch(void) {
  m2_rng r = m2_rng_make(5, 1);
  m2_tensor *x = m2_randn(&r, M2_F32, M2_DEV_CPU, 3, (int64_t[]){2, 3, 16});
  m2_tensor *w = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){8, 16});
  m2_tensor *b = m2_randn(&r, M2_F32, M2_DEV_CPU, 1, (int64_t[]){8});
  m2_tensor *xr = rounded(x, M2_F32), *wr = rounded(w, M2_F32), *br = rounded(b, M2_F32);
  m2_requires_grad_(w, true), m2_requires_grad_(wr, true), m2_requires_grad_(x, true), m2_requires_grad_(xr, true);
  CHECK(m2_activation_dtype() == M2_F32, "bf16 activations are off by default");
  m2_tensor *ref = m2_linear(xr, wr, br); /* f32 product of the rounded operands: the reference */
  CHECK(ref && ref->dtype == M2_F32, "linear stays f32 with the switch off");
  CHECK(m2_set_activation_dtype(M2_BF16) == M2_F32, "the setter returns the previous setting");
  m2_tensor *y = m2_linear(x, w, b), *ym = m2_matmul(x, w, false, true);
  CHECK(y && y->dtype == M2_BF16 && ym && ym->dtype == M2_BF16, "linear and matmul return bf16 with the switch on");
  m2_tensor *x64 = m2_clone_raw(x, M2_F64, M2_DEV_CPU), *w64 = m2_clone_raw(w, M2_F64, M2_DEV_CPU);
  m2_tensor *y64 = m2_matmul(x64, w64, false, true);
  CHECK(y64 && y64->dtype == M2_F64, "f64 operands are left alone");
  m2_set_activation_dtype(M2_F32);
  /* two roundings: the product's, then the bias add's */
  m2_tensor *refm = m2_matmul(xr, wr, false, true);
  double e = y ? max_rel_diff(y, ref) : 1, em = ym && refm ? max_rel_diff(ym, refm) : 1;
  m2_release(refm);
  CHECK(e <= 2 * BF16_TOL, "bf16 linear vs the f32 product of the rounded operands: %.3g", e);
  CHECK(em <= BF16_TOL, "bf16 matmul vs the f32 product of the rounded operands: %.3g", em);
  /* backward under a bf16-valued gradient: the weight's gradient is f32 and close to the reference */
  m2_tensor *g = m2_randn(&r, M2_F32, M2_DEV_CPU, 3, (int64_t[]){2, 3, 8});
  m2_tensor *g16 = m2_clone_raw(g, M2_BF16, M2_DEV_CPU), *gr = m2_clone_raw(g16, M2_F32, M2_DEV_CPU);
  CHECK(y && m2_backward(y, g16) == M2_OK && ref && m2_backward(ref, gr) == M2_OK, "backward");
  CHECK(w->grad && w->grad->dtype == M2_F32 && x->grad && x->grad->dtype == M2_F32,
        "f32 leaves get f32 gradients through the bf16 product");
  if (w->grad && wr->grad) {
    double ew = max_rel_diff(w->grad, wr->grad), ex = max_rel_diff(x->grad, xr->grad);
    CHECK(ew <= BF16_TOL && ex <= BF16_TOL, "gradients vs the reference: w %.3g, x %.3g", ew, ex);
    printf("  activation switch: linear fwd %.2e, bwd w %.2e x %.2e\n", e, ew, ex);
  }
  m2_tensor *all[] = {x, w, b, xr, wr, br, ref, y, ym, x64, w64, y64, g, g16, gr};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}

/* bf16 with f64 is refused, naming the op and both dtypes; an int input of a float op still is */
static void refused_mixes(void) {
  m2_rng r = m2_rng_make(6, 1);
  m2_tensor *a = m2_randn(&r, M2_BF16, M2_DEV_CPU, 1, (int64_t[]){4});
  m2_tensor *d = m2_randn(&r, M2_F64, M2_DEV_CPU, 1, (int64_t[]){4});
  m2_tensor *w = m2_randn(&r, M2_F64, M2_DEV_CPU, 1, (int64_t[]){4});
  CHECK_FAILS(m2_add(a, d) == NULL, M2_ERR_DTYPE, "add: input 1 is bf16 but input 2 is f64");
  CHECK_FAILS(m2_rmsnorm(a, w, 1e-5) == NULL, M2_ERR_DTYPE, "rmsnorm");
  m2_tensor *i = m2_zeros(M2_I32, M2_DEV_CPU, 1, (int64_t[]){4});
  CHECK_FAILS(m2_exp(i) == NULL, M2_ERR_DTYPE, "must be a float tensor");
  m2_release(a), m2_release(d), m2_release(w), m2_release(i);
}

int main(void) {
  table_cases();
  /* again with bf16 products (m2_set_matmul_precision): what activations=bf16 runs under (the reference's f32
     products round their operands, attention its P and dS too, and bf16 inputs take the same path) */
  printf("with bf16 products:\n");
  m2_set_matmul_precision(M2_MM_BF16);
  table_cases();
  m2_set_matmul_precision(M2_MM_F32);
  activation_switch();
  refused_mixes();
  printf("test_bf16_cases: %d case variants (worst error fwd %.2e bwd %.2e)\n", g_cases, g_worst_fwd, g_worst_bwd);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_bf16_cases");
}
