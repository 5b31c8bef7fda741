/* op_table.c — the registry: the rows named in ops.h (M2_OPS), in that order, and their keys.
 * tests/test_registry.c checks every row (names unique, kernels present, a test case each). */
#include "ops.h"

#define ROW(n) &m2_op_##n,
static const m2_op *const g_table[] = {M2_OPS(ROW) NULL};
#define NAME(n) #n,
static const char *const g_names[] = {M2_OPS(NAME) NULL};

/* All registered ops, NULL-terminated. */
const m2_op *const *m2_op_list(void) { return g_table; }

/* The registry key of row i (the op_table name; the row's own .name must equal it). */
const char *m2_op_key(int i) { return g_names[i]; }

/* The op of that name, or NULL (beside the table: op.c, below the ops, does not see it). */
const m2_op *m2_op_find(const char *name) {
  for (const m2_op *const *p = m2_op_list(); *p; p++)
    if (strcmp((*p)->name, name) == 0) return *p;
  return NULL;
}
