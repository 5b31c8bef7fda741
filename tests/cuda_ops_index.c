/* cuda_ops_index.c — CPU-vs-CUDA parity of concat, split (more pieces than one call takes), gather and
 * index_select (repeated indices accumulate in the backward), forward and backward, in f32 and bf16;
 * integer tensors are joined and indexed too; bad indices fail as on the CPU. Skips (77) without a GPU. */
#include "cuda_parity.h"

typedef struct ix_ud { int dim; } ix_ud;
static int f_concat(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  PAR_ONE(m2_concat(3, in, ((ix_ud *)ud)->dim));
}
static int f_split(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  /* 6 pieces -> 2 op calls; the harness takes 4 outputs: glue the 6 into 3 pairs by concat */
  int64_t sizes[6] = {1, 3, 2, 4, 1, 2};
  m2_tensor *p[6] = {0};
  if (m2_split(in[0], ((ix_ud *)ud)->dim, 6, sizes, p) != M2_OK) return -1;
  int k = 0;
  for (int i = 0; i < 3; i++) {
    m2_tensor *pair[2] = {p[2 * i], p[2 * i + 1]};
    outs[k] = m2_concat(2, pair, ((ix_ud *)ud)->dim);
    if (outs[k]) k++;
  }
  for (int i = 0; i < 6; i++) m2_release(p[i]);
  return k == 3 ? 3 : -1;
}
static int f_split_raw(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  int64_t sizes[3] = {5, 0, 8};
  return m2_split(in[0], ((ix_ud *)ud)->dim, 3, sizes, outs) == M2_OK ? 3 : -1;
}
static int f_gather(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_gather(in[0], ((ix_ud *)ud)->dim, in[1])); }
static int f_isel(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  PAR_ONE(m2_index_select(in[0], ((ix_ud *)ud)->dim, in[1]));
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_index");
  ix_ud d0 = {0}, d1 = {1}, dl = {-1};
  int64_t c1[3] = {4, 3, 6}, c2[3] = {4, 5, 6}, c3[3] = {4, 1, 6};
  m2_tensor *a = par_randn(3, c1), *b = par_randn(3, c2), *cc = par_randn(3, c3);
  par_case pc = {"concat/dim 1", f_concat, &d1, 3, {a, b, cc}, {true, true, true}};
  par_run(&pc);
  int64_t e1[3] = {4, 3, 2}, e2[3] = {4, 3, 5};
  m2_tensor *ea = par_randn(3, e1), *eb = par_randn(3, e2), *ec = par_randn(3, e1);
  par_case pc2 = {"concat/last dim", f_concat, &dl, 3, {ea, eb, ec}, {true, false, true}};
  par_run(&pc2);
  int64_t sx[3] = {3, 13, 10};
  m2_tensor *x = par_randn(3, sx);
  par_case ps = {"split/6 pieces dim 1", f_split, &d1, 1, {x}, {true}};
  par_run(&ps);
  par_case ps2 = {"split/3 pieces, one empty", f_split_raw, &d1, 1, {x}, {true}};
  par_run(&ps2);
  /* gather along dim 1 and dim 0 (index smaller than x outside dim) */
  int64_t si[3] = {3, 20, 7}, si0[3] = {9, 13, 10};
  m2_tensor *gi1 = par_ints(M2_I64, 3, si, 0, 13), *gi0 = par_ints(M2_I32, 3, si0, 0, 3);
  par_case pg = {"gather/dim 1", f_gather, &d1, 2, {x, gi1}, {true, false}};
  par_run(&pg);
  par_case pg0 = {"gather/dim 0", f_gather, &d0, 2, {x, gi0}, {true, false}};
  par_run(&pg0);
  /* index_select with repeats */
  int64_t l1[1] = {17}, l2[1] = {5};
  m2_tensor *is1 = par_ints(M2_I64, 1, l1, 0, 13), *is2 = par_ints(M2_I32, 1, l2, 0, 10);
  par_case pi = {"index_select/dim 1", f_isel, &d1, 2, {x, is1}, {true, false}};
  par_run(&pi);
  par_case pi2 = {"index_select/last dim", f_isel, &dl, 2, {x, is2}, {true, false}};
  par_run(&pi2);
  /* integer tensors: concat and index_select copy raw elements */
  m2_tensor *ix = par_ints(M2_I64, 3, sx, -1000, 1000);
  par_case pii = {"index_select/i64 data", f_isel, &d1, 2, {ix, is1}, {false, false}, .f32_only = true};
  par_run(&pii);
  m2_tensor *i32a = par_ints(M2_I32, 3, c1, 0, 9), *i32b = par_ints(M2_I32, 3, c2, 0, 9), *i32c = par_ints(M2_I32, 3, c3, 0, 9);
  par_case pci = {"concat/i32 data", f_concat, &d1, 3, {i32a, i32b, i32c}, {false}, .f32_only = true};
  par_run(&pci);
  /* bad indices */
  m2_tensor *gx = m2_clone_raw(x, M2_F32, par_gpu);
  m2_tensor *bi = m2_clone_raw(is1, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(bi))[6] = 13;
  m2_tensor *gbi = m2_clone_raw(bi, M2_I64, par_gpu);
  CHECK_FAILS(m2_index_select(gx, 1, gbi) == NULL, M2_ERR_INDEX, "index 13 (at position 6)");
  m2_tensor *bg = m2_clone_raw(gi1, M2_I64, M2_DEV_CPU);
  ((int64_t *)m2_data(bg))[11] = -1;
  m2_tensor *gbg = m2_clone_raw(bg, M2_I64, par_gpu);
  CHECK_FAILS(m2_gather(gx, 1, gbg) == NULL, M2_ERR_INDEX, "index -1 (at flat position 11)");
  m2_tensor *all[] = {a, b, cc, ea, eb, ec, x, gi1, gi0, is1, is2, ix, i32a, i32b, i32c, gx, bi, gbi, bg, gbg};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  return par_finish("cuda_ops_index");
}
