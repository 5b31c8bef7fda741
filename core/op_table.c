/* op_table.c — the registry: one line per op. The op rows themselves (name, CPU fwd/bwd,
 * CUDA fwd/bwd, flags) live beside their kernels as `const m2_op m2_op_<name>`.
 * tests/test_registry.c checks every row (names unique, kernels present, CUDA coverage). */
#include "op.h"

#define M2_OPS(X)                                                                               \
  X(contiguous) X(reshape) X(narrow) X(permute) X(expand) X(to_dtype) X(to_device)                \
  X(add) X(sub) X(mul) X(div) X(scale) X(add_scalar) X(neg) X(exp) X(log) X(tanh) X(sigmoid)    \
  X(silu) X(swiglu) X(softplus) X(relu) X(square) X(sqrt) X(clamp)                                         \
  X(sum) X(mean) X(max) X(sum_all) X(mean_all) X(max_all) X(argmax) X(eq) X(softmax)             \
  X(log_softmax) X(cumsum)                                                                       \
  X(matmul)                                                                                      \
  X(embedding) X(cross_entropy) X(linear_cross_entropy) X(rmsnorm) X(l2norm)                                             \
  X(concat) X(split) X(gather) X(index_select)                                                  \
  X(conv1d_causal) X(m2rnn) X(gdn) X(gdn_chunked) X(ssd) X(ssd_chunked) X(attention) X(rope)

#define DECLARE(n) extern const m2_op m2_op_##n;
M2_OPS(DECLARE)
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
