/* op_table.h — the list of registered ops (one name each) and their row declarations. A row
 * `const m2_op m2_op_<name>` lives beside its CPU kernels in core/ops_<file>.c; backends name rows
 * from here when they register their kernels (m2_op_register_kernels). */
#ifndef M2_OP_TABLE_H
#define M2_OP_TABLE_H
#include "op.h"

#ifdef __cplusplus
extern "C" {
#endif

#define M2_OPS(X)                                                                                          \
  X(contiguous) X(reshape) X(narrow) X(permute) X(expand) X(to_dtype) X(to_device)                         \
  X(add) X(sub) X(mul) X(div) X(scale) X(add_scalar) X(neg) X(exp) X(log) X(tanh) X(sigmoid)              \
  X(silu) X(swiglu) X(softplus) X(relu) X(square) X(sqrt) X(clamp)                                         \
  X(sum) X(mean) X(max) X(sum_all) X(mean_all) X(max_all) X(argmax) X(eq) X(softmax)                       \
  X(log_softmax) X(cumsum)                                                                                 \
  X(matmul)                                                                                                \
  X(embedding) X(cross_entropy) X(linear_cross_entropy) X(rmsnorm) X(l2norm)                               \
  X(concat) X(split) X(gather) X(index_select)                                                             \
  X(conv1d_causal) X(m2rnn) X(gdn) X(gdn_chunked) X(ssd) X(ssd_chunked) X(attention) X(rope)

#define M2_OP_DECLARE_ROW(n) extern const m2_op m2_op_##n;
M2_OPS(M2_OP_DECLARE_ROW)
#undef M2_OP_DECLARE_ROW

#ifdef __cplusplus
}
#endif
#endif
