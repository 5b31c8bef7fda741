/* test_op_cases.c — the float64 finite-difference gradient check (core/gradcheck.h) of every case of the shared
 * table (tests/op_cases.c), so of every registered op: each float input the case differentiates is checked element
 * by element against the op's backward, and gets a gradient of its own shape and dtype. An op with several outputs
 * is checked through all of them at once (flattened and joined). Non-differentiable ops run forward only, and their
 * outputs must not require grad even when the inputs do. Cases that cannot run here are reported by name:
 * a parity-only case (a backward that is on purpose not the derivative) and an op that needs two devices. */
#include "check.h"
#include "op_cases.h"
#include <string.h>

/* all outputs of the case as one tensor: the output itself, or every output flattened and joined */
static m2_tensor *gc_fn(m2_tensor *const *in, void *ud) {
  const op_case *c = ud;
  m2_tensor *outs[OC_MAX_OUT] = {0}, *flat[OC_MAX_OUT] = {0};
  int n = c->run(in, outs);
  if (n == 1) return outs[0];
  m2_tensor *joined = NULL;
  bool ok = n > 1;
  for (int j = 0; ok && j < n; j++) ok = (flat[j] = m2_reshape(outs[j], 1, (int64_t[]){-1})) != NULL;
  if (ok) joined = m2_concat(n, flat, 0);
  for (int j = 0; j < OC_MAX_OUT; j++) m2_release(outs[j]), m2_release(flat[j]);
  return joined;
}

static int g_cases, g_skipped;
static double g_worst;

static void run_case(const op_case *c, uint64_t seed) {
  const m2_op *op = m2_op_find(c->op);
  CHECK(op != NULL, "case '%s / %s' names no registered op", c->op, c->name);
  if (!op) return;
  if (c->flags & (OC_PARITY_ONLY | OC_TWO_DEVICES)) {
    printf("  %-22s %-38s skipped: %s\n", c->op, c->name,
           c->flags & OC_PARITY_ONLY ? "parity only (the backward is not the derivative)" : "needs a second device");
    g_skipped++;
    return;
  }
  g_cases++;
  oc_inputs in;
  oc_make(c, seed, &in);
  for (int i = 0; i < in.n; i++) {
    bool want = in.grad[i] || ((c->flags & OC_FWD_ONLY) && in.t[i] && m2_dtype_is_float(in.t[i]->dtype));
    if (want) m2_requires_grad_(in.t[i], true);
  }
  if (c->flags & OC_FWD_ONLY) {
    CHECK(op->flags & M2_OP_NONDIFF, "%s / %s: a forward-only case of a differentiable op", c->op, c->name);
    m2_tensor *outs[OC_MAX_OUT] = {0};
    int n = c->run(in.t, outs);
    CHECK(n > 0, "%s / %s: forward failed", c->op, c->name);
    for (int j = 0; j < n; j++)
      CHECK(outs[j] && !outs[j]->requires_grad && !outs[j]->grad_fn, "%s / %s: output %d requires grad", c->op,
            c->name, j);
    for (int j = 0; j < OC_MAX_OUT; j++) m2_release(outs[j]);
    printf("  %-22s %-38s forward only\n", c->op, c->name);
  } else {
    CHECK(!(op->flags & M2_OP_NONDIFF), "%s / %s: a gradient check of a non-differentiable op", c->op, c->name);
    double err = 0;
    m2_status s = m2_gradcheck(gc_fn, (void *)c, in.n, in.t, &c->gc, &err);
    CHECK(s == M2_OK && err <= 1, "%s / %s: gradcheck (worst ratio %g)", c->op, c->name, err);
    for (int i = 0; i < in.n; i++) {
      if (!in.grad[i]) continue;
      m2_tensor *x = in.t[i], *g = x->grad;
      CHECK(g && m2_same_shape(g, x) && g->dtype == x->dtype, "%s / %s: input %d has no gradient of its shape",
            c->op, c->name, i);
    }
    printf("  %-22s %-38s worst ratio %.2e\n", c->op, c->name, err);
    if (!(err <= g_worst)) g_worst = err;
  }
  oc_release(&in);
}

int main(void) {
  for (int i = 0; i < oc_ncases; i++) run_case(&oc_cases[i], 2024);
  printf("test_op_cases: %d cases checked (worst ratio %.2e, <= 1 passes), %d skipped\n", g_cases, g_worst,
         g_skipped);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_op_cases");
}
