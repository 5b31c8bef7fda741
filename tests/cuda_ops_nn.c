/* cuda_ops_nn.c — CPU-vs-CUDA parity of embedding, cross_entropy (with ignored targets), rmsnorm (with and without
 * weight) and l2norm, forward and backward, in f32 and bf16; out-of-range ids and targets fail with the CPU's
 * message on cuda too (linear_cross_entropy: cuda_ops_lmloss.c). Skips (77) without a GPU. */
#include "cuda_parity.h"

static int f_embed(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_embedding(in[0], in[1])); }
static int f_ce(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_cross_entropy(in[0], in[1], -100)); }
static int f_rms(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_rmsnorm(in[0], in[1], 1e-5)); }
static int f_l2(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_l2norm(in[0], 1e-6)); }

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_nn");
  /* embedding: repeated ids accumulate in the backward */
  int64_t sw[2] = {50, 24}, sid[2] = {6, 11};
  m2_tensor *w = par_randn(2, sw);
  m2_tensor *ids64 = par_ints(M2_I64, 2, sid, 0, 50), *ids32 = par_ints(M2_I32, 2, sid, 0, 50);
  par_case pe = {"embedding/i64", f_embed, NULL, 2, {w, ids64}, {true, false}};
  par_run(&pe);
  par_case pe2 = {"embedding/i32", f_embed, NULL, 2, {w, ids32}, {true, false}};
  par_run(&pe2);
  /* cross_entropy: small C (128 threads) and large C (512 threads) */
  int64_t sx1[3] = {5, 7, 33}, st1[2] = {5, 7}, sx2[2] = {12, 5000}, st2[1] = {12};
  m2_tensor *x1 = par_randn(3, sx1), *t1 = par_targets(M2_I64, 2, st1, 33);
  m2_tensor *x2 = par_randn(2, sx2), *t2 = par_targets(M2_I32, 1, st2, 5000);
  par_case pc1 = {"cross_entropy/C=33", f_ce, NULL, 2, {x1, t1}, {true, false}};
  par_run(&pc1);
  par_case pc2 = {"cross_entropy/C=5000", f_ce, NULL, 2, {x2, t2}, {true, false}};
  par_run(&pc2);
  /* every target ignored: loss 0, gradient 0 */
  m2_tensor *tall = m2_full(M2_I64, M2_DEV_CPU, 2, st1, -100);
  par_case pc3 = {"cross_entropy/all ignored", f_ce, NULL, 2, {x1, tall}, {true, false}};
  par_run(&pc3);
  /* rmsnorm / l2norm: short rows and long rows */
  int64_t sn1[3] = {3, 5, 48}, sw1[1] = {48}, sn2[2] = {7, 1000}, sw2[1] = {1000};
  m2_tensor *n1 = par_randn(3, sn1), *g1 = par_uniform(1, sw1, 0.5, 1.5);
  m2_tensor *n2 = par_randn(2, sn2), *g2 = par_uniform(1, sw2, 0.5, 1.5);
  par_case pr1 = {"rmsnorm/d=48", f_rms, NULL, 2, {n1, g1}, {true, true}};
  par_run(&pr1);
  par_case pr2 = {"rmsnorm/d=1000", f_rms, NULL, 2, {n2, g2}, {true, true}};
  par_run(&pr2);
  par_case pr3 = {"rmsnorm/no weight", f_rms, NULL, 2, {n1, NULL}, {true, false}};
  par_run(&pr3);
  par_case pl1 = {"l2norm/d=48", f_l2, NULL, 1, {n1}, {true}};
  par_run(&pl1);
  par_case pl2 = {"l2norm/d=1000", f_l2, NULL, 1, {n2}, {true}};
  par_run(&pl2);

  /* bad ids / targets fail with a message naming the value and position */
  m2_tensor *gw = m2_clone_raw(w, M2_F32, par_gpu), *gx = m2_clone_raw(x1, M2_F32, par_gpu);
  m2_tensor *bad = m2_clone_raw(ids64, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(bad))[13] = 50;
  m2_tensor *gbad = m2_clone_raw(bad, M2_I64, par_gpu);
  CHECK_FAILS(m2_embedding(gw, gbad) == NULL, M2_ERR_INDEX, "id 50 (at flat position 13)");
  m2_tensor *tb = m2_clone_raw(t1, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(tb))[4] = 33;
  m2_tensor *gtb = m2_clone_raw(tb, M2_I64, par_gpu);
  CHECK_FAILS(m2_cross_entropy(gx, gtb, -100) == NULL, M2_ERR_INDEX, "target 33 (at flat position 4)");
  m2_tensor *all[] = {w, ids64, ids32, x1, t1, x2, t2, tall, n1, g1, n2, g2, gw, gx, bad, gbad, tb, gtb};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  return par_finish("cuda_ops_nn");
}
