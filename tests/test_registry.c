/* test_registry.c — the op registry: every row has its declared name, unique, a CPU forward and
 * (unless non-differentiable) a CPU backward; in a CUDA build, every op has a CUDA forward and
 * backward too; lookups by name work. */
#include "check.h"
#include <string.h>

const char *m2_op_key(int i); /* core/op_table.c */

int main(void) {
  const m2_op *const *ops = m2_op_list();
  int n = 0;
  for (; ops[n]; n++) {
    const m2_op *op = ops[n];
    CHECK(strcmp(op->name, m2_op_key(n)) == 0, "row %d: op named '%s' registered as '%s'", n, op->name, m2_op_key(n));
    CHECK(op->cpu_fwd != NULL, "%s has no CPU forward", op->name);
    CHECK(op->cpu_bwd != NULL || (op->flags & M2_OP_NONDIFF), "%s has no CPU backward", op->name);
#ifdef M2_HAVE_CUDA
    CHECK(op->cuda_fwd != NULL, "%s has no CUDA forward", op->name);
    CHECK(op->cuda_bwd != NULL || (op->flags & M2_OP_NONDIFF), "%s has no CUDA backward", op->name);
#endif
    for (int j = 0; j < n; j++) CHECK(strcmp(ops[j]->name, op->name) != 0, "duplicate op name %s", op->name);
    CHECK(m2_op_find(op->name) == op, "lookup of %s", op->name);
  }
  CHECK(n >= 50, "only %d ops registered", n);
  CHECK(m2_op_find("no_such_op") == NULL, "unknown name");
  printf("%d ops registered\n", n);
  return check_finish("test_registry");
}
