/* tensor.h — refcounted n-d tensors over refcounted storage, with views.
 *
 * Ownership: every function that returns an m2_tensor* returns a NEW reference
 * (release it with m2_release); tensor arguments are borrowed. Constructors and
 * ops return NULL on failure and leave the reason in m2_errmsg().
 * Strides and offsets are in elements, not bytes. */
#ifndef M2_TENSOR_H
#define M2_TENSOR_H
#include <stdbool.h>
#include <stdint.h>
#include "dtype.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define M2_MAX_DIMS 6

typedef struct m2_storage {
  int refcount;
  m2_device device;
  size_t nbytes;
  void *data;
} m2_storage;

struct m2_node;

/* The head of every tape node (autograd.h's m2_node starts with it): how a tensor drops its reference to the node
 * that produced it. It is all the tensor layer knows of the tape, so tensor.c never calls into autograd.c. */
typedef struct m2_node_head {
  void (*release)(struct m2_node *n); /* drop one reference; the last one frees the node */
} m2_node_head;

typedef struct m2_tensor {
  int refcount;
  m2_dtype dtype;
  m2_device device;
  int ndim;
  int64_t shape[M2_MAX_DIMS];
  int64_t stride[M2_MAX_DIMS]; /* elements */
  int64_t offset;              /* elements into storage */
  m2_storage *storage;
  /* autograd */
  bool requires_grad;          /* leaf parameter, or result of an op on one */
  struct m2_tensor *grad;      /* accumulated gradient (leaves only), same shape, contiguous */
  struct m2_node *grad_fn;     /* the node that produced this tensor; NULL for leaves */
  int grad_fn_out;             /* which output of grad_fn this tensor is */
  char *name;                  /* optional, for messages (e.g. parameter path) */
} m2_tensor;

/* ---- construction ---- */
m2_tensor *m2_empty(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape);
m2_tensor *m2_zeros(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape);
m2_tensor *m2_full(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape, double value);
m2_tensor *m2_scalar(m2_dtype dt, m2_device dev, double value); /* 0-d tensor */
/* Copy `data` (host memory of dtype dt, row-major) into a new tensor on dev. */
m2_tensor *m2_from_data(m2_dtype dt, m2_device dev, int ndim, const int64_t *shape, const void *data);
/* The most elements a shape may span (2^48: its byte size, offsets and strides then fit in int64 for any dtype).
 * Counted with every size 0 taken as 1, so contiguous strides of a shape with no elements fit too. */
#define M2_MAX_NUMEL ((int64_t)1 << 48)
/* Check a shape (sizes >= 0, at most M2_MAX_NUMEL elements) and give its element count in *numel (may be NULL).
 * The one checked multiply for element counts: every tensor is made through it (creation and views), so m2_numel,
 * the contiguous strides and the byte sizes of an existing tensor never overflow. what prefixes the message
 * ("reshape"; NULL: none), which names the shape. */
m2_status m2_shape_numel(int ndim, const int64_t *shape, const char *what, int64_t *numel);
m2_tensor *m2_empty_like(const m2_tensor *t);
m2_tensor *m2_zeros_like(const m2_tensor *t);
/* Convenience: shape given as varargs, e.g. m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 3, 4). */
m2_tensor *m2_empty_v(m2_dtype dt, m2_device dev, int ndim, ...);
m2_tensor *m2_zeros_v(m2_dtype dt, m2_device dev, int ndim, ...);

void m2_retain(m2_tensor *t);
void m2_release(m2_tensor *t); /* NULL allowed */
/* Number of live tensors (for leak tests). */
long m2_live_tensors(void);
void m2_set_name(m2_tensor *t, const char *name);

/* ---- properties ---- */
int64_t m2_numel(const m2_tensor *t);
bool m2_is_contiguous(const m2_tensor *t);
size_t m2_elsize(const m2_tensor *t);
/* Pointer to element 0 (storage data + offset). Host pointer for CPU tensors; NULL for a data-less tensor
 * (m2_meta_raw). */
void *m2_data(const m2_tensor *t);
bool m2_same_shape(const m2_tensor *a, const m2_tensor *b);
/* "(2, 3, 4)" into buf; returns buf. */
char *m2_shape_str(const m2_tensor *t, char *buf, size_t n);
char *m2_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n);
/* Normalise a possibly negative dim; fails with M2_ERR_INDEX naming `what`. */
m2_status m2_norm_dim(const m2_tensor *t, int64_t dim, int *out, const char *what);

/* ---- element access (any device; slow, for tests and Lua indexing) ---- */
m2_status m2_item(const m2_tensor *t, double *out);                 /* numel must be 1 */
m2_status m2_get(const m2_tensor *t, const int64_t *idx, double *out);
m2_status m2_set(m2_tensor *t, const int64_t *idx, double value);   /* in place, no autograd */
/* Copy all elements (row-major order of the logical shape) into host buffer as dtype dt. */
m2_status m2_to_host(const m2_tensor *t, m2_dtype dt, void *out);

/* ---- in-place, not recorded by autograd (optimizers, init, data loading) ---- */
m2_status m2_fill_(m2_tensor *t, double value);
m2_status m2_copy_(m2_tensor *dst, const m2_tensor *src); /* shapes must match; converts dtype/device */
m2_status m2_zero_(m2_tensor *t);

/* ---- views (share storage; differentiable, see ops.h for the recorded versions) ---- */
/* Raw view construction without autograd (used by the view ops). */
m2_tensor *m2_view_raw(const m2_tensor *t, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset);
/* A new tensor object sharing t's storage and geometry but with no autograd history. */
m2_tensor *m2_alias(const m2_tensor *t);
/* A tensor with t's dtype, device, shape, strides and offset but NO data (storage NULL; m2_data gives NULL) and no
 * autograd history: what a tape node keeps of an input whose values its op's backward never reads
 * (m2_op.bwd_unread, op.h). Reading its elements is a programming error. */
m2_tensor *m2_meta_raw(const m2_tensor *t);
void m2_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);

/* Copy t into a new contiguous tensor of dtype dt on device dev (no autograd). */
m2_tensor *m2_clone_raw(const m2_tensor *t, m2_dtype dt, m2_device dev);

/* Print a short description and (for small tensors) the values. */
void m2_print(const m2_tensor *t, const char *label);
/* Format into buf like torch: "tensor([[1, 2], [3, 4]], f32)"; truncated for large tensors. */
void m2_format(const m2_tensor *t, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
