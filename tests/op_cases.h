/* op_cases.h — one case table keyed by op name, for every op of the registry (m2_op_list()).
 *
 * A case names its op, says what it covers, makes fresh random inputs from the project's RNG (float inputs in F64 on
 * the CPU, small enough for float64 finite differences; integer inputs as they are) and runs the op through its
 * public C API (m2_add, m2_m2rnn, ...), handing back every output. Three programs read the table:
 *   tests/test_op_cases.c  (cpu)  the float64 finite-difference gradient check of every case (core/gradcheck.h);
 *   tests/cuda_op_cases.c  (cuda) each case on the CPU (f32) and on CUDA with the same inputs: outputs and
 *                                 gradients, per-dtype relative bounds (tests/cuda_parity.h);
 *   tests/test_registry.c  (cpu)  fails when an op of the registry has no case, or a case names no op.
 * Adding an op: one row in oc_cases (tests/op_cases.c) with its make and run functions. */
#ifndef M2_TESTS_OP_CASES_H
#define M2_TESTS_OP_CASES_H
#include "../core/m2.h"

#define OC_MAX_IN 8
#define OC_MAX_OUT 4

enum {
  OC_FWD_ONLY = 1 << 0,     /* the op is not differentiable (M2_OP_NONDIFF): forward only, nothing requires grad */
  OC_PARITY_ONLY = 1 << 1,  /* the backward is on purpose not the forward's derivative (M2RNN's clipped state
                               gradient): CPU-vs-CUDA parity only, no finite differences */
  OC_TWO_DEVICES = 1 << 2,  /* the op moves data between devices: on the CPU alone its public entry does not run it
                               (m2_to_device to the same device returns the tensor), so only the CUDA runner runs it */
  OC_NO_BF16 = 1 << 3,      /* parity in f32 only */
};

/* A case's inputs: t[0..n) (NULL entries are omitted optional inputs), and which of them to differentiate. */
typedef struct oc_inputs {
  int n;
  m2_tensor *t[OC_MAX_IN]; /* CPU tensors: float ones F64, integer ones I32 / I64 */
  bool grad[OC_MAX_IN];
} oc_inputs;

typedef struct op_case {
  const char *op;   /* the registry name (m2_op_find) */
  const char *name; /* what the case covers */
  /* Fresh random inputs from r (never all zeros; values in the op's domain, e.g. log > 0, M2RNN's f in (0, 1)). */
  void (*make)(m2_rng *r, oc_inputs *in);
  /* The op through its public entry on in[0..n) (on any device); writes outs[0..k) (new refs) and returns k, or -1
   * with m2_errmsg() set. */
  int (*run)(m2_tensor *const *in, m2_tensor **outs);
  int flags;                 /* OC_* */
  m2_gradcheck_opts gc;      /* finite-difference settings (zeros: the defaults of core/gradcheck.h) */
  double tol[2], btol[2];    /* parity bounds of the forward and the gradients for f32, bf16 (0: the harness's) */
} op_case;

extern const op_case oc_cases[];
extern const int oc_ncases;

/* The number of cases naming op. */
int oc_count(const char *op);
/* The inputs of case c from the RNG stream (seed, index of c in oc_cases). */
void oc_make(const op_case *c, uint64_t seed, oc_inputs *in);
void oc_release(oc_inputs *in);
/* L = sum_j <y_j, dy_j> (an f32 scalar) over the outputs j with dys[j] != NULL: the scalar whose gradients are
 * dy_j, for tests that backprop several outputs at once; NULL (the error set) on failure. */
m2_tensor *oc_dot_loss(m2_tensor **ys, int n, m2_tensor **dys);

#endif
