/* ops_reduce.h — internal: the typed attributes and the geometry of the reductions along a dim, shared by the CPU
 * ops (core/ops_reduce.c) and the CUDA entry points (the CUDA backend's ops_reduce.cu). */
#ifndef M2_OPS_REDUCE_H
#define M2_OPS_REDUCE_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* sum, mean, max, argmax, softmax, log_softmax, cumsum: the dim they work along, checked by the public entry.
 * The *_all ops (sum_all, mean_all, max_all) reduce everything and have no attributes. */
typedef struct m2_reduce_attr {
  int dim;      /* 0 .. ndim-1 (negative dims resolved; 0 for a 0-d x) */
  bool keepdim; /* sum, mean, max, argmax: keep the reduced dim as size 1 */
} m2_reduce_attr;

typedef struct red_geom {
  int64_t outer, n, inner; /* x viewed as (outer, n, inner); the op works along n */
} red_geom;

/* x around dim d (a 0-d x is (1, 1, 1)). */
red_geom m2_red_geom_dim(const m2_tensor *x, int d);
/* The geometry of the call c on x = in[0]: around its m2_reduce_attr dim, or flattened, (1, numel, 1), when all
 * (the *_all ops). */
red_geom m2_red_geom(const m2_opcall *c, bool all);
/* As m2_red_geom, for an op that picks one element along the dim (max, argmax), refusing an empty dim:
 * "<op>: cannot take the <what> over an empty dim of a tensor of shape ...". */
m2_status m2_red_pick_geom(const m2_opcall *c, bool all, const char *what, red_geom *g);
/* The call's reduced output, a new tensor of dtype dt on in[0]'s device: in[0]'s shape without the attribute's dim
 * (kept as 1 with keepdim), or 0-d when all. */
m2_tensor *m2_red_output(const m2_opcall *c, bool all, m2_dtype dt);

#ifdef __cplusplus
}
#endif
#endif
