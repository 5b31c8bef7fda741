/* test_registry.c — the op registry and the shared case table (tests/op_cases.c).
 * Registry: every row has its declared name, unique, a CPU forward and (unless non-differentiable) a CPU backward;
 * lookups by name work; kernel registration refuses what is not a registered row, and a registered kernel is what
 * dispatch picks (tests/cuda_backend.c checks that the CUDA library registers kernels for every op).
 * Case table: every op of the registry has at least one case, every case names a registered op; a
 * non-differentiable op has forward-only cases and a differentiable one has a case the gradient check runs (or
 * one that needs two devices, run by the CUDA runner). The checker is first shown to catch an op without a case and
 * a case without an op, on a registry and a table made up for that. */
#include "check.h"
#include "op_cases.h"
#include <string.h>

const char *m2_op_key(int i); /* core/op_table.c */

/* Problems between a registry (NULL-terminated) and a case table, each reported when `say`; returns their count. */
static int coverage_problems(const m2_op *const *ops, const op_case *cases, int ncases, bool say) {
  int bad = 0;
  for (int i = 0; ops[i]; i++) {
    const m2_op *op = ops[i];
    int n = 0, fwd_only = 0, checked = 0, two_dev = 0;
    for (int k = 0; k < ncases; k++) {
      if (strcmp(cases[k].op, op->name) != 0) continue;
      n++;
      fwd_only += (cases[k].flags & OC_FWD_ONLY) != 0;
      two_dev += (cases[k].flags & OC_TWO_DEVICES) != 0;
      checked += !(cases[k].flags & (OC_FWD_ONLY | OC_PARITY_ONLY | OC_TWO_DEVICES));
    }
    const char *why = NULL;
    if (n == 0) why = "has no case in tests/op_cases.c";
    else if ((op->flags & M2_OP_NONDIFF) && fwd_only != n) why = "is not differentiable: its cases must be OC_FWD_ONLY";
    else if (!(op->flags & M2_OP_NONDIFF) && fwd_only) why = "is differentiable but has a forward-only case";
    else if (!(op->flags & M2_OP_NONDIFF) && !checked && !two_dev) why = "has no case the gradient check runs";
    if (why) {
      bad++;
      if (say) fprintf(stderr, "op %s %s\n", op->name, why);
    }
  }
  for (int k = 0; k < ncases; k++) {
    bool found = false;
    for (int i = 0; ops[i] && !found; i++) found = strcmp(ops[i]->name, cases[k].op) == 0;
    if (!found) {
      bad++;
      if (say) fprintf(stderr, "case '%s / %s' names no registered op\n", cases[k].op, cases[k].name);
    }
  }
  return bad;
}

static int run_nothing(m2_tensor *const *in, m2_tensor **outs) { return -1; }
static void make_nothing(m2_rng *r, oc_inputs *in) {}

/* the checker on a made-up registry and table: it must find what is missing */
static void check_the_checker(void) {
  const m2_op fake_a = {.name = "fake_a"}, fake_b = {.name = "fake_b", .flags = M2_OP_NONDIFF};
  const m2_op *const ops[] = {&fake_a, &fake_b, NULL};
  const op_case full[] = {{"fake_a", "", make_nothing, run_nothing}, {"fake_b", "", make_nothing, run_nothing,
                                                                      OC_FWD_ONLY}};
  CHECK(coverage_problems(ops, full, 2, false) == 0, "a covered made-up registry passes");
  CHECK(coverage_problems(ops, full, 1, false) == 1, "an op without a case is found");
  const op_case extra[] = {full[0], full[1], {"fake_c", "", make_nothing, run_nothing}};
  CHECK(coverage_problems(ops, extra, 3, false) == 1, "a case naming no op is found");
  const op_case grad_b[] = {full[0], {"fake_b", "", make_nothing, run_nothing}};
  CHECK(coverage_problems(ops, grad_b, 2, false) == 1, "a gradient case of a non-differentiable op is found");
  const op_case parity_a[] = {{"fake_a", "", make_nothing, run_nothing, OC_PARITY_ONLY}, full[1]};
  CHECK(coverage_problems(ops, parity_a, 2, false) == 1, "a differentiable op with no gradient-checked case is found");
}

int main(void) {
  const m2_op *const *ops = m2_op_list();
  int n = 0;
  for (; ops[n]; n++) {
    const m2_op *op = ops[n];
    CHECK(strcmp(op->name, m2_op_key(n)) == 0, "row %d: op named '%s' registered as '%s'", n, op->name, m2_op_key(n));
    CHECK(m2_op_kernel(op, M2_DEV_CPU, false) != NULL, "%s has no CPU forward", op->name);
    CHECK(m2_op_kernel(op, M2_DEV_CPU, true) != NULL || (op->flags & M2_OP_NONDIFF), "%s has no CPU backward",
          op->name);
    for (int j = 0; j < n; j++) CHECK(strcmp(ops[j]->name, op->name) != 0, "duplicate op name %s", op->name);
    CHECK(m2_op_find(op->name) == op, "lookup of %s", op->name);
  }
  CHECK(n >= 50, "only %d ops registered", n);
  CHECK(m2_op_find("no_such_op") == NULL, "unknown name");

  /* registration: refused for the CPU and for an op that is not a row; a registered kernel is the one picked */
  const m2_device dev = {M2_CUDA, 0};
  const m2_op *add = m2_op_find("add");
  m2_kernel_reg ok = {add, add->fwd, NULL};
  CHECK_FAILS(m2_op_register_kernels(M2_CPU, &ok, 1) != M2_OK, M2_ERR_VALUE, "non-CPU");
  m2_op stray = {"stray", add->fwd, add->bwd, 0};
  m2_kernel_reg bad_regs[2] = {ok, {&stray, add->fwd, NULL}};
  CHECK_FAILS(m2_op_register_kernels(M2_CUDA, bad_regs, 2) != M2_OK, M2_ERR_VALUE, "not in the registry");
  CHECK(m2_op_kernel(add, dev, false) == NULL, "a refused registration registered nothing");
  CHECK(m2_op_register_kernels(M2_CUDA, &ok, 1) == M2_OK, "register add: %s", m2_errmsg());
  CHECK(m2_op_kernel(add, dev, false) == add->fwd, "registered forward picked");
  CHECK(m2_op_kernel(add, dev, true) == ((add->flags & M2_OP_ANYDEV_BWD) ? add->bwd : NULL),
        "backward: the row's own only when it runs on any device");
  const m2_op *reshape = m2_op_find("reshape");
  CHECK(m2_op_kernel(reshape, dev, false) == reshape->fwd, "a view op runs its row's kernel on any device");
  CHECK(m2_op_kernel(add, M2_DEV_CPU, true) == add->bwd, "CPU: the row's kernels");
  check_the_checker();
  int bad = coverage_problems(ops, oc_cases, oc_ncases, true);
  CHECK(bad == 0, "%d problem(s) between the registry and the case table (listed above)", bad);
  printf("%d ops registered, %d cases in the table\n", n, oc_ncases);
  return check_finish("test_registry");
}
