/* ops_m2rnn_entry.h — the M2RNN op's CUDA entry points (cuda/ops_m2rnn.cu), registered at the end of that file
 * for the op row of core/ops_m2rnn.c. Same protocol as every op (core/op.h). */
#ifndef M2_CUDA_OPS_M2RNN_ENTRY_H
#define M2_CUDA_OPS_M2RNN_ENTRY_H
#include "../core/op.h"
#ifdef __cplusplus
extern "C" {
#endif
m2_status m2_cuda_m2rnn_fwd(m2_opcall *c);
m2_status m2_cuda_m2rnn_bwd(m2_opcall *c);
#ifdef __cplusplus
}
#endif
#endif
