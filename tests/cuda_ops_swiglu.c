/* cuda_ops_swiglu.c — CPU-vs-CUDA parity of swiglu(a, b) = silu(a) * b (cuda/ops_swiglu.cu against
 * core/ops_swiglu.c), forward and both gradients, in f32 and bf16, with a spread wide so that sigmoid saturates on
 * both sides; f64 and mismatched shapes are refused on cuda. Skips (77) without a GPU. */
#include "cuda_parity.h"

static int f_swiglu(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_swiglu(in[0], in[1])); }

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_swiglu");
  int64_t sw[3] = {3, 41, 96};
  m2_tensor *a = par_uniform(3, sw, -12, 12), *b = par_randn(3, sw);
  par_case pc = {"swiglu", f_swiglu, NULL, 2, {a, b}, {true, true}};
  par_run(&pc);
  /* one input differentiated at a time */
  par_case pa = {"swiglu/a only", f_swiglu, NULL, 2, {a, b}, {true, false}};
  par_run(&pa);
  par_case pb = {"swiglu/b only", f_swiglu, NULL, 2, {a, b}, {false, true}};
  par_run(&pb);
  /* f64 and shapes are refused on cuda with the CPU's messages */
  int64_t s34[2] = {3, 4}, s43[2] = {4, 3};
  m2_tensor *h = m2_full(M2_F64, M2_DEV_CPU, 2, s34, 1.0);
  m2_tensor *g64 = m2_clone_raw(h, M2_F64, par_gpu), *g34 = m2_clone_raw(h, M2_F32, par_gpu);
  m2_tensor *g43 = m2_zeros(M2_F32, par_gpu, 2, s43);
  CHECK_FAILS(m2_swiglu(g64, g64) == NULL, M2_ERR_DTYPE, "f64");
  CHECK_FAILS(m2_swiglu(g34, g43) == NULL, M2_ERR_SHAPE, "must have the same shape");
  m2_release(a), m2_release(b), m2_release(h), m2_release(g64), m2_release(g34), m2_release(g43);
  return par_finish("cuda_ops_swiglu");
}
