/* op.h — the op registry: every op is one m2_op row {name, CPU fwd/bwd, flags}; backends register their
 * kernels for a row at init (m2_op_register_kernels).
 *
 * An op is a forward/backward pair that works on an m2_opcall:
 *   forward  reads in[], attributes, and ALLOCATES out[] (new refs); it may keep
 *            extra tensors for backward in saved[] (new refs, via m2_save()).
 *   backward reads dout[] (gradients of the outputs, never NULL), in[], saved[]
 *            and (if the op has M2_OP_KEEP_OUTPUTS) out[], and for every input i
 *            with needs_din[i] ALLOCATES din[i] with exactly in[i]'s shape.
 * Activation gradients are written (=) by ops; the autograd tape does the
 * accumulation (+=) into parameter gradients. Backward runs with grad mode off,
 * so it may freely call other ops from ops.h.
 *
 * Inputs are made contiguous before forward unless the op has M2_OP_VIEW.
 * All float ops accept F32 and F64 on CPU (F64 is used by gradient checks).
 * bf16 inputs (core/op_cast.c): a call with a bf16 float input, on the CPU (or any device for an op with
 * M2_OP_CAST_F32_KERNELS), or mixed with f32 inputs on a device whose kernels want one dtype (not
 * M2_OP_MIXED_KERNELS), runs the op on f32 copies of its bf16 inputs (exact) and
 * rounds its float outputs to the dtype the op's M2_OP_CAST_* flags give; the conversions are to_dtype ops on the
 * tape, so gradients come back in each input's own dtype (f32 parameters get f32 gradients). The CPU kernels thus
 * never see bf16, and stay the reference: f32 arithmetic on the bf16 values, the output rounded once. bf16 with f64
 * inputs is refused. M2_OP_VIEW ops (views, contiguous, to_dtype, to_device) take every dtype as it is. */
#ifndef M2_OP_H
#define M2_OP_H
#include "tensor.h"
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define M2_MAX_IN 8
#define M2_MAX_OUT 4
#define M2_MAX_SAVED 8
#define M2_MAX_ATTR 128 /* bytes of an op's typed attribute struct (see M2_ATTR) */

#ifdef __cplusplus
#define M2_ALIGNED16 alignas(16)
#define M2_STATIC_ASSERT static_assert
#else
#define M2_ALIGNED16 _Alignas(16)
#define M2_STATIC_ASSERT _Static_assert
#endif

struct m2_op;

typedef struct m2_opcall {
  const struct m2_op *op;
  int n_in;
  m2_tensor *in[M2_MAX_IN];        /* inputs (borrowed during forward) */
  int n_out;
  m2_tensor *out[M2_MAX_OUT];      /* outputs, set by forward */
  int n_saved;
  m2_tensor *saved[M2_MAX_SAVED];  /* kept for backward */
  /* The op's typed attributes (a struct named m2_<op>_attr, declared beside the op), copied in by the public entry
   * after it validated them (m2_call_set_attr) and kept on the tape node: kernels read them with M2_ATTR and trust
   * them. */
  M2_ALIGNED16 unsigned char attr[M2_MAX_ATTR];
  /* backward only */
  m2_tensor *dout[M2_MAX_OUT];     /* dL/d out[i], same shape as out[i] */
  bool needs_din[M2_MAX_IN];
  m2_tensor *din[M2_MAX_IN];       /* dL/d in[i], written by backward */
} m2_opcall;

typedef m2_status (*m2_op_fn)(m2_opcall *c);

enum {
  M2_OP_VIEW = 1 << 0,          /* inputs are passed as they are (may be strided) */
  M2_OP_NONDIFF = 1 << 1,       /* outputs never require grad (argmax, comparisons, ...) */
  M2_OP_KEEP_OUTPUTS = 1 << 2,  /* backward reads out[] (kept as aliases) */
  /* The row's forward / backward is built from other ops (or only makes views), so it runs on any device as it
   * is: a backend need not register a kernel for it (one it registers takes precedence). */
  M2_OP_ANYDEV_FWD = 1 << 3,
  M2_OP_ANYDEV_BWD = 1 << 4,
  /* The dtype of the float outputs when the dispatcher converts bf16 inputs (core/op_cast.c): the default promotes
   * (bf16 when every float input is bf16, else f32, as torch's type promotion). */
  M2_OP_CAST_IN0 = 1 << 5,    /* float outputs in in[0]'s dtype: an activation through a layer (norm, conv, mixer) */
  M2_OP_CAST_STATE1 = 1 << 6, /* out[1] is a recurrent state: f32 whatever the inputs */
  M2_OP_CAST_F32 = 1 << 7,    /* float outputs f32 whatever the inputs (losses, router probabilities, 0/1 masks) */
  /* The non-CPU kernels take bf16 and f32 inputs mixed (each converted as its kernel needs): the dispatcher leaves
   * mixed calls to them on those devices. */
  M2_OP_MIXED_KERNELS = 1 << 8,
  /* Every backend computes a bf16 call best from f32 inputs (attention: its tensor-core kernels take f32 inputs with
   * bf16 products, m2_attention_attr.bf16): bf16 inputs are converted on every device, unless a backend registered
   * kernels that take the all-bf16 call as it is (m2_cast_register_native). */
  M2_OP_CAST_F32_KERNELS = 1 << 9,
  /* The backward runs even when no input needs a gradient (its own effects matter: recompute's nested backward
   * accumulates the gradients of parameters that are not its inputs, core/recompute.h). */
  M2_OP_BWD_ALWAYS = 1 << 10,
  /* The profiler (profile.h) does not time the backward as one row: the ops it runs are timed each in their own row
   * (recompute: the recomputed forward adds forward calls, its backward backward calls). */
  M2_OP_PROFILE_INNER = 1 << 11,
  /* As M2_OP_MIXED_KERNELS, but only while the mixed-kernel switch is on (m2_mixed_kernels below; on by default):
   * the op's non-CPU kernels take a bf16 / f32 mix and give exactly what the cast path gives (each input read in
   * its own dtype, f32 arithmetic in the f32 kernel's order, the outputs rounded once to the dtype of the op's
   * M2_OP_CAST_* rule, each input's gradient in its own dtype). While the switch is off such calls convert. */
  M2_OP_MIXED_KERNELS_OPT = 1 << 12,
};

/* One op: its name, its CPU reference kernels and its flags. Other backends (the CUDA library) register their kernels for
 * a row at init with m2_op_register_kernels; core never names them.
 *
 * bwd_unread: the inputs whose VALUES no backward of the op reads, on any device (bit i: in[i]; 0, the default: every
 * input is read). The tape node then keeps of such an input only what the backward reads of it (m2_meta_raw: dtype,
 * device, shape, strides; its requires_grad and its producer, to route the gradient) and drops its reference to the
 * data right after recording, so the buffer is freed as soon as nothing else holds it (an add's inputs, the f32 copy
 * of a bf16 input made by the dispatcher for an op that reads only its shape). Parameters (leaves that require grad)
 * stay as they are. A backend's backward kernel for the op must read no more of these inputs than m2_data's NULL
 * (a data-less tensor's data pointer), which it must never dereference. m2_tape_drop_unread(false) turns the dropping
 * off (all inputs kept whole, as before). */
typedef struct m2_op {
  const char *name;
  m2_op_fn fwd, bwd;  /* the CPU reference forward and backward (bwd NULL only for M2_OP_NONDIFF) */
  int flags;
  unsigned bwd_unread; /* inputs whose data the backward never reads (see above) */
  /* NULL for almost every op: releases what the call's attributes hold (recompute's callback context) when a tape
   * node lets go of its call; may be called again on the same call (it clears what it released). */
  void (*drop)(m2_opcall *c);
  /* NULL for almost every op: the call's own bwd_unread mask, used instead of the row's (the dispatcher's cast_call
   * node, core/op_cast.c, whose inputs are those of whichever op it wraps). */
  unsigned (*bwd_unread_of)(const m2_opcall *c);
  /* NULL for almost every op: the name the tape's memory rows (m2_tape_rows) give the call, instead of the row's
   * (cast_call: the op it wraps, whose bytes it holds). Returns a static string. */
  const char *(*name_of)(const m2_opcall *c);
} m2_op;
#define M2_IN(i) (1u << (i))  /* bit of in[i] in m2_op.bwd_unread */
#define M2_IN_ALL 0xFFu       /* every input (M2_MAX_IN of them) */

/* A backend's kernels for one op; fwd or bwd NULL: that direction has no kernel on this backend. */
typedef struct m2_kernel_reg {
  const m2_op *op;
  m2_op_fn fwd, bwd;
} m2_kernel_reg;
/* Register n kernel pairs for device type t (a backend calls this once at init; registering an op again
 * replaces its kernels). Fails, registering nothing, on a NULL or unknown op or on t == M2_CPU (the CPU kernels
 * are the rows themselves). */
m2_status m2_op_register_kernels(m2_devtype t, const m2_kernel_reg *regs, int n);

/* Start a call of op `op` with the given inputs (n borrowed tensors). */
void m2_call_init(m2_opcall *c, const m2_op *op, int n_in, m2_tensor *const *in);
/* Run forward on the inputs' device, record a tape node when grad is needed,
 * and return out[0] as a new reference (other outputs: m2_call_run). NULL on error. */
m2_tensor *m2_call1(m2_opcall *c);
/* Same, but hands all outputs back in outs[0..n_out) (new refs). */
m2_status m2_call_run(m2_opcall *c, m2_tensor **outs);
/* x itself (new ref) if already contiguous, else a contiguous copy through the "contiguous" op (recorded, so the
 * gradient flows through it); the dispatcher's own op, which makes strided inputs contiguous. */
m2_tensor *m2_contiguous(m2_tensor *x);
/* Copy the op's checked attribute struct into the call (n <= M2_MAX_ATTR; checked at compile time by
 * M2_SET_ATTR). */
static inline void m2_call_set_attr(m2_opcall *c, const void *attr, size_t n) { memcpy(c->attr, attr, n); }
#define M2_SET_ATTR(c, a)                                                                           \
  do {                                                                                              \
    M2_STATIC_ASSERT(sizeof(a) <= M2_MAX_ATTR, "attribute struct larger than M2_MAX_ATTR");           \
    m2_call_set_attr((c), &(a), sizeof(a));                                                         \
  } while (0)
/* The call's attributes as a pointer to the op's struct type T (read-only by convention). */
#define M2_ATTR(c, T) ((const T *)(const void *)(c)->attr)

/* The dispatcher's bf16 rule (core/op_cast.c; see the top of this file): whether call c on dev must convert, and the
 * conversion itself (runs c's op on the converted inputs through m2_call_run; outs as m2_call_run's). */
bool m2_cast_needed(const m2_opcall *c, m2_device dev);
m2_status m2_call_cast(m2_opcall *c, m2_tensor **outs);
/* For an op with M2_OP_CAST_F32_KERNELS: a backend's say over its all-bf16 calls on device type t. takes(c) true
 * (the call's attributes set, its inputs bf16 and on a t device) leaves the call unconverted: the backend's kernel
 * gets the bf16 inputs and makes the outputs and gradients itself (in the dtypes the cast would give). Registering
 * the pair (t, op) again replaces the function. Not registered: the cast as always. */
m2_status m2_cast_register_native(m2_devtype t, const m2_op *op, bool (*takes)(const m2_opcall *c));
/* Whether a cast call that records a tape node records ONE node, "cast_call", that keeps the call's ORIGINAL bf16
 * (and f32) inputs, instead of the to_dtype nodes and the op's node holding the f32 copies (twice the bytes): its
 * backward converts them again (exact), runs the op's backward on the copies and rounds each input's gradient to its
 * own dtype, so outputs and gradients are bit for bit those of the other way. Off by default; the environment
 * variable M2_CAST_KEEP_BF16=1 (read once) turns it on. Returns the setting before. */
bool m2_cast_keep_bf16(bool on);
bool m2_cast_keep_bf16_on(void);
/* The mixed-kernel switch: whether calls of ops flagged M2_OP_MIXED_KERNELS_OPT that mix bf16 and f32 inputs go to
 * their device kernels as they are (on, the default since 2026-12-07) or on f32 copies (off: the bf16 rule above).
 * The environment variable M2_MIXED_KERNELS=0 (read once) turns it off; a backend's kernels read nothing of it. Returns the setting
 * before. */
bool m2_mixed_kernels(bool on);
bool m2_mixed_kernels_on(void);

/* Keep t for backward (stores an alias with no history; counts a new ref). */
void m2_save(m2_opcall *c, m2_tensor *t);
/* Release everything a call holds (outputs, saved, din). */
void m2_call_clear(m2_opcall *c);
/* An op's forward (bwd false) or backward kernel for a device: the row's own on the CPU; elsewhere what the device's
 * backend registered, else the row's own when flagged M2_OP_ANYDEV_*, else NULL. Also for ops built from other
 * ops' kernels (linear_cross_entropy), which call them without dispatch or recording. */
m2_op_fn m2_op_kernel(const m2_op *op, m2_device dev, bool bwd);

/* ---- registry ---- */
/* All registered ops, NULL-terminated, and the lookup by name (both in core/op_table.c). */
const m2_op *const *m2_op_list(void);
const m2_op *m2_op_find(const char *name);

/* ---- helpers for op implementations ---- */
/* Fail unless t is a float tensor: F32 or F64, or BF16 (which the dispatcher converts to F32 on the CPU). */
m2_status m2_check_float(const m2_tensor *t, const char *op, const char *arg);
/* A backend's float dtype rule, for checks shared by the CPU ops and the CUDA entry points: m2_check_float on the
   CPU, cu_check_float on CUDA (F32 / BF16, no F64). */
typedef m2_status (*m2_float_rule)(const m2_tensor *t, const char *op, const char *arg);
/* Fail unless a and b have one dtype, or are bf16 and f32 (a pair the dispatcher converts, see above). */
m2_status m2_check_same_dtype(const m2_tensor *a, const m2_tensor *b, const char *op);
static inline bool m2_dtypes_mix(m2_dtype a, m2_dtype b) {
  return a == b || (a == M2_BF16 && b == M2_F32) || (a == M2_F32 && b == M2_BF16);
}
/* Broadcast two shapes (numpy rules); fails with a message naming `op`. */
m2_status m2_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb,
                              int *nout, int64_t *sout, const char *op);
/* Strides (elements) to read a contiguous tensor of shape (n, s) as if broadcast to
 * shape (nout, sout): 0 on broadcast dimensions. */
void m2_broadcast_strides(int n, const int64_t *s, int nout, const int64_t *sout, int64_t *stride);

#ifdef __cplusplus
}
#endif
#endif
