/* ops_index.h — internal: the typed attributes of the joining and indexing ops (core/ops_index.c), read by the CPU
 * ops and the CUDA entry points (the CUDA backend's ops_index.cu). The public entries (m2_concat, m2_split, m2_gather,
 * m2_index_select) check and resolve them once; the kernels trust them. */
#ifndef M2_OPS_INDEX_H
#define M2_OPS_INDEX_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* concat, gather, index_select: the dim the op joins or indexes along. */
typedef struct m2_index_attr {
  int dim; /* 0 .. ndim-1 (negative dims resolved) */
} m2_index_attr;

/* split: one call's pieces (at most M2_MAX_OUT; m2_split makes as many calls as it needs). Piece i is the slice
 * [start[i], start[i] + len[i]) of dim `dim`, inside x's bounds. */
typedef struct m2_split_attr {
  int dim;                    /* 0 .. ndim-1 (negative dims resolved) */
  int k;                      /* pieces in this call, 1 .. M2_MAX_OUT */
  int64_t start[M2_MAX_OUT];  /* (k) */
  int64_t len[M2_MAX_OUT];    /* (k) >= 0 */
} m2_split_attr;

#ifdef __cplusplus
}
#endif
#endif
