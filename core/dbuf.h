/* dbuf.h — internal: float tensors viewed as double buffers, for CPU reference kernels that
 * compute in double (GDN, SSD, attention). F64 inputs are used in place; F32 ones are converted. */
#ifndef M2_DBUF_H
#define M2_DBUF_H
#include "tensor.h"

/* A tensor's elements as doubles: the data itself for F64, a converted copy for F32. */
typedef struct dbuf {
  m2_tensor *t;
  double *p;
  bool own;
  m2_tensor *held; /* an F64 contiguous copy of a strided input (gradients may arrive strided) */
} dbuf;

/* Input view of t (NULL allowed: p stays NULL). */
m2_status dbuf_in(dbuf *d, m2_tensor *t);
/* A new zeroed CPU tensor of dtype dt and a double buffer to compute it in (dbuf_store copies it over). */
m2_status dbuf_out(dbuf *d, m2_dtype dt, int nd, const int64_t *shape);
void dbuf_store(dbuf *d);
void dbuf_free(dbuf *d);

#endif
