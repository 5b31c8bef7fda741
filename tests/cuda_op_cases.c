/* cuda_op_cases.c — CPU-vs-CUDA parity of every case of the shared table (tests/op_cases.c), so of every registered
 * op: each case's inputs, made once, run on the CPU (f32, the reference) and on CUDA (f32, then bf16) with the same
 * rounded values; forward outputs, then the gradient of every input the case differentiates under a random output
 * gradient, compared with tests/cuda_parity.h (max |cuda - cpu| / max |cpu| per tensor, NaN never passes; bounds
 * 1e-5 f32 and 1e-2 bf16 unless the case sets its own). Forward-only cases compare outputs only. The table's
 * bf16-activation rows ("bf16 ..." in tests/op_cases.c) round some inputs to bf16 themselves, so their f32 pass
 * checks the CUDA side of a bf16 / f32 mix (core/op_cast.c) against the CPU's. An op with no CUDA
 * kernel is reported as skipped by name. Skips (77) without a GPU. */
#include "cuda_parity.h"
#include "op_cases.h"
#include <string.h>

static int run_case_fn(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  return ((const op_case *)ud)->run(in, outs);
}

/* Whether the op has the CUDA kernels the case needs (say which is missing). */
static bool has_cuda(const m2_op *op, const op_case *c, const char **missing) {
  bool bwd = !(c->flags & OC_FWD_ONLY);
  *missing = !m2_op_kernel(op, par_gpu, false) ? "forward" : bwd && !m2_op_kernel(op, par_gpu, true) ? "backward"
                                                                                                      : NULL;
  return *missing == NULL;
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_op_cases");
  /* the recurrent GDN / SSD kernels, which follow the reference step by step; the chunked tensor-core ones (on by
     default for bf16) have their own tests, cuda_ops_gdn_chunk and cuda_ops_ssd_chunk, with their bounds */
  m2_cuda_gdn_chunk_tc(0), m2_cuda_ssd_chunk_mode(0);
  int skipped = 0;
  for (int k = 0; k < oc_ncases; k++) {
    const op_case *c = &oc_cases[k];
    const m2_op *op = m2_op_find(c->op);
    CHECK(op != NULL, "case '%s / %s' names no registered op", c->op, c->name);
    const char *missing = NULL;
    if (!op) continue;
    if (!has_cuda(op, c, &missing)) {
      printf("  %s / %s: skipped, no CUDA %s kernel\n", c->op, c->name, missing);
      skipped++;
      continue;
    }
    oc_inputs in;
    oc_make(c, 3000, &in);
    char name[96];
    snprintf(name, sizeof name, "%s%s%s", c->op, c->name[0] ? "/" : "", c->name);
    par_case pc = {name, run_case_fn, (void *)c, in.n};
    for (int i = 0; i < in.n; i++) {
      m2_tensor *x = in.t[i];
      if (x && m2_dtype_is_float(x->dtype)) pc.in[i] = m2_clone_raw(x, M2_F32, M2_DEV_CPU);
      else if (x) m2_retain(x), pc.in[i] = x;
      pc.grad[i] = in.grad[i] && !(c->flags & OC_FWD_ONLY);
      CHECK(!x || pc.in[i], "%s: input %d", name, i);
    }
    for (int d = 0; d < 2; d++) pc.tol[d] = c->tol[d], pc.btol[d] = c->btol[d];
    pc.f32_only = (c->flags & OC_NO_BF16) != 0;
    par_run(&pc);
    for (int i = 0; i < in.n; i++) m2_release(pc.in[i]);
    oc_release(&in);
  }
  printf("cuda_op_cases: %d of %d cases run, %d skipped (no CUDA kernel)\n", oc_ncases - skipped, oc_ncases, skipped);
  return par_finish("cuda_op_cases");
}
