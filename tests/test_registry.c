/* test_registry.c — the op registry: every row has its declared name, unique, a CPU forward and
 * (unless non-differentiable) a CPU backward; lookups by name work; kernel registration refuses what is not a
 * registered row, and a registered kernel is what dispatch picks (tests/cuda_backend.c checks that the CUDA
 * library registers a kernel for every op). */
#include "check.h"
#include <string.h>

const char *m2_op_key(int i); /* core/op_table.c */

int main(void) {
  const m2_op *const *ops = m2_op_list();
  int n = 0;
  for (; ops[n]; n++) {
    const m2_op *op = ops[n];
    CHECK(strcmp(op->name, m2_op_key(n)) == 0, "row %d: op named '%s' registered as '%s'", n, op->name, m2_op_key(n));
    CHECK(op->fwd != NULL, "%s has no CPU forward", op->name);
    CHECK(op->bwd != NULL || (op->flags & M2_OP_NONDIFF), "%s has no CPU backward", op->name);
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
  m2_kernel_reg bad[2] = {ok, {&stray, add->fwd, NULL}};
  CHECK_FAILS(m2_op_register_kernels(M2_CUDA, bad, 2) != M2_OK, M2_ERR_VALUE, "not in the registry");
  CHECK(m2_op_kernel(add, dev, false) == NULL, "a refused registration registered nothing");
  CHECK(m2_op_register_kernels(M2_CUDA, &ok, 1) == M2_OK, "register add: %s", m2_errmsg());
  CHECK(m2_op_kernel(add, dev, false) == add->fwd, "registered forward picked");
  CHECK(m2_op_kernel(add, dev, true) == ((add->flags & M2_OP_ANYDEV_BWD) ? add->bwd : NULL),
        "backward: the row's own only when it runs on any device");
  const m2_op *reshape = m2_op_find("reshape");
  CHECK(m2_op_kernel(reshape, dev, false) == reshape->fwd, "a view op runs its row's kernel on any device");
  CHECK(m2_op_kernel(add, M2_DEV_CPU, true) == add->bwd, "CPU: the row's kernels");
  printf("%d ops registered\n", n);
  return check_finish("test_registry");
}
