/* op_table.c — the registry: one line per op. The op rows themselves (name, CPU fwd/bwd,
 * CUDA fwd/bwd, flags) live beside their kernels as `const m2_op m2_op_<name>`.
 * A weak reference lets the library link while an op is still being written;
 * tests/test_registry.c fails if any listed op is missing. */
#include "op.h"

#define M2_OPS(X)                                                                               \
  X(contiguous) X(reshape) X(narrow) X(permute) X(expand) X(to_dtype) X(to_device)                \
  X(add) X(sub) X(mul) X(div) X(scale) X(add_scalar) X(neg) X(exp) X(log) X(tanh) X(sigmoid)    \
  X(silu) X(softplus) X(relu) X(square) X(sqrt) X(clamp)                                         \
  X(sum) X(mean) X(max) X(sum_all) X(mean_all) X(max_all) X(argmax) X(eq) X(softmax)             \
  X(log_softmax) X(cumsum)                                                                       \
  X(matmul)                                                                                      \
  X(embedding) X(cross_entropy) X(rmsnorm) X(l2norm)                                             \
  X(concat) X(split) X(gather) X(index_select)                                                  \
  X(conv1d_causal) X(m2rnn) X(gdn) X(gdn_chunked) X(ssd) X(ssd_chunked) X(attention) X(rope)

#define DECLARE(n) extern const m2_op m2_op_##n __attribute__((weak));
M2_OPS(DECLARE)
#define ROW(n) &m2_op_##n,
static const m2_op *const g_table[] = {M2_OPS(ROW) NULL};
#define NAME(n) #n,
static const char *const g_names[] = {M2_OPS(NAME) NULL};

static const m2_op *g_present[sizeof g_table / sizeof g_table[0]];

const m2_op *const *m2_op_list(void) {
  /* the list of ops that are linked in, NULL-terminated */
  if (!g_present[0]) {
    int k = 0;
    for (int i = 0; g_names[i]; i++)
      if (g_table[i]) g_present[k++] = g_table[i];
    g_present[k] = NULL;
  }
  return g_present;
}

/* Names listed in the registry whose op row is not linked in (for the registry test). */
int m2_op_missing(const char **names, int cap) {
  int k = 0;
  for (int i = 0; g_names[i]; i++)
    if (!g_table[i] && k < cap) names[k++] = g_names[i];
  return k;
}
