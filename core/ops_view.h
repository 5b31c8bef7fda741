/* ops_view.h — internal: the typed attributes of the view and conversion ops (core/ops_view.c), read by the CPU ops
 * and the CUDA entry points (the CUDA backend's ops_view.cu). The public entries (m2_reshape, m2_narrow, ...) check and resolve
 * them once; the kernels trust them. */
#ifndef M2_OPS_VIEW_H
#define M2_OPS_VIEW_H
#include "op.h"
#ifdef __cplusplus
extern "C" {
#endif

/* reshape and expand: the output's shape, every size resolved (no -1). reshape: as many elements as x;
 * expand: x's shape (right-aligned) with size-1 dims widened, ndim >= x's. */
typedef struct m2_shape_attr {
  int ndim;                     /* 0 .. M2_MAX_DIMS */
  int64_t shape[M2_MAX_DIMS];   /* (ndim) */
} m2_shape_attr;

/* narrow: the elements [start, start + len) of dim `dim`, inside x's bounds. */
typedef struct m2_narrow_attr {
  int dim;        /* 0 .. ndim-1 (negative dims resolved) */
  int64_t start;  /* >= 0 */
  int64_t len;    /* >= 0, start + len <= x.shape[dim] */
} m2_narrow_attr;

/* permute (transpose is one): output dim i is x's dim perm[i]. */
typedef struct m2_permute_attr {
  int perm[M2_MAX_DIMS]; /* (x's ndim) a permutation of 0 .. ndim-1 (negative entries resolved) */
} m2_permute_attr;

/* to_dtype: the output's dtype (other than x's). */
typedef struct m2_to_dtype_attr {
  m2_dtype dtype;
  const char *cause; /* the op whose call the dispatcher converted for (core/op_cast.c; a static name, counted by the
                        profiler's conversion table, profile.h); NULL: a conversion asked for by name */
} m2_to_dtype_attr;
/* m2_to_dtype made by the dispatcher for a call of op `cause` (its bf16 rule, core/op_cast.c): the same op, its node
   tagged with the cause, so that the profiler counts the conversion (and its backward) under that op. */
m2_tensor *m2_to_dtype_for(m2_tensor *x, m2_dtype dt, const char *cause);

/* to_device: the output's device (other than x's). */
typedef struct m2_to_device_attr {
  m2_device device;
} m2_to_device_attr;

#ifdef __cplusplus
}
#endif
#endif
