/* cuda_ops_lmloss.c — CPU-vs-CUDA parity of linear_cross_entropy (core/ops_lmloss.c: the matmul and cross_entropy
 * kernels of each device, chunk by chunk), forward and both gradients, in f32 and bf16, also with bf16 products of
 * f32 tensors; an out-of-range target fails with the CPU's message on cuda too. Skips (77) without a GPU. */
#include "cuda_parity.h"

/* the head fused with the loss, in chunks of 9 rows (35 rows: 4 chunks, the last short) */
static int f_lce(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  (void)ud;
  PAR_ONE(m2_linear_cross_entropy(in[0], in[1], in[2], -100, 9));
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_lmloss");
  /* h (5, 7, 24), W (33, 24), targets (5, 7) in [0, 33) with some ignored */
  int64_t sh[3] = {5, 7, 24}, shw[2] = {33, 24}, st[2] = {5, 7};
  m2_tensor *lh = par_randn(3, sh), *lw = par_randn(2, shw), *t1 = par_targets(M2_I64, 2, st, 33);
  par_case pl = {"linear_cross_entropy/chunk 9", f_lce, NULL, 3, {lh, lw, t1}, {true, true, false}};
  par_run(&pl);
  /* with bf16 products (what m2.train's precision = "bf16" sets): the CUDA cross_entropy backward then writes the
     chunk's dlogits in bf16 for the products (the CPU rounds the same values when it multiplies) */
  m2_set_matmul_precision(M2_MM_BF16);
  par_case plb = {"linear_cross_entropy/chunk 9, bf16 products", f_lce, NULL, 3, {lh, lw, t1}, {true, true, false},
                  {2e-3, 0}, {1e-2, 0}, true};
  par_run(&plb);
  m2_set_matmul_precision(M2_MM_F32);
  /* a target out of range */
  m2_tensor *gh = m2_clone_raw(lh, M2_F32, par_gpu), *gw = m2_clone_raw(lw, M2_F32, par_gpu);
  m2_tensor *tb = m2_clone_raw(t1, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(tb))[4] = 33;
  m2_tensor *gtb = m2_clone_raw(tb, M2_I64, par_gpu);
  CHECK_FAILS(m2_linear_cross_entropy(gh, gw, gtb, -100, 9) == NULL, M2_ERR_INDEX, "target 33");
  m2_release(lh), m2_release(lw), m2_release(t1), m2_release(gh), m2_release(gw), m2_release(tb), m2_release(gtb);
  return par_finish("cuda_ops_lmloss");
}
