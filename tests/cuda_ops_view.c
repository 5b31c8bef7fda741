/* cuda_ops_view.c — CPU-vs-CUDA parity of the copying view ops (contiguous of permuted and expanded views,
 * reshape of a strided view, narrow and its backward, to_dtype) forward and backward in f32 and bf16, and
 * of the device hooks m2_cuda_copy (strided destination, 0-stride source, dtype conversion, other shape)
 * and m2_cuda_fill (strided). Skips (77) without a GPU. */
#include "cuda_parity.h"
#ifdef M2_HAVE_CUDA
#include "../cuda/cuda_ops.h"
#endif

static int f_perm(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  int perm[3] = {2, 0, 1};
  m2_tensor *p = m2_permute(in[0], perm);
  outs[0] = p ? m2_contiguous(p) : NULL;
  m2_release(p);
  return outs[0] ? 1 : -1;
}
static int f_expand(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  int64_t s[3] = {3, -1, 4};
  m2_tensor *e = m2_expand(in[0], 3, s);
  outs[0] = e ? m2_contiguous(e) : NULL;
  m2_release(e);
  return outs[0] ? 1 : -1;
}
static int f_reshape(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  int64_t s[2] = {-1, 6};
  m2_tensor *t = m2_transpose(in[0], 0, 2);
  outs[0] = t ? m2_reshape(t, 2, s) : NULL;
  m2_release(t);
  return outs[0] ? 1 : -1;
}
static int f_narrow(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_narrow(in[0], 1, 2, 5)); }
static int f_narrow_exp(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  m2_tensor *n = m2_narrow(in[0], 2, 1, 3);
  outs[0] = n ? m2_exp(n) : NULL; /* exp makes its strided input contiguous first */
  m2_release(n);
  return outs[0] ? 1 : -1;
}
static int f_to(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_to_dtype(in[0], *(m2_dtype *)ud)); }

#ifdef M2_HAVE_CUDA
/* the hooks against m2_copy_ / m2_fill_ on the host */
static void hook_tests(void) {
  int64_t s56[2] = {5, 6}, s65[2] = {6, 5}, s30[1] = {30}, s15[2] = {1, 5}, s35[2] = {3, 5};
  m2_tensor *src = par_randn(2, s56);
  m2_tensor *hs = m2_clone_raw(src, M2_BF16, M2_DEV_CPU), *gs = m2_clone_raw(src, M2_BF16, par_gpu);
  /* strided destination (a transposed view of a (6, 5) f32 tensor) from a bf16 source */
  m2_tensor *hd = m2_zeros(M2_F32, M2_DEV_CPU, 2, s65), *gd = m2_zeros(M2_F32, par_gpu, 2, s65);
  m2_tensor *hv = m2_transpose(hd, 0, 1), *gv = m2_transpose(gd, 0, 1);
  CHECK_OK(m2_copy_(hv, hs));
  CHECK_OK(m2_cuda_copy(gv, gs));
  CHECK(max_rel_diff(gd, hd) == 0, "strided destination copy differs");
  /* 0-stride source into i64 (truncation like m2_store) */
  m2_tensor *row = par_randn(2, s15), *row10 = m2_scale(row, 10.0);
  m2_tensor *grow = m2_clone_raw(row10, M2_F32, par_gpu);
  m2_tensor *he = m2_expand(row10, 2, s35), *ge = m2_expand(grow, 2, s35);
  m2_tensor *hi = m2_empty(M2_I64, M2_DEV_CPU, 2, s35), *gi = m2_empty(M2_I64, par_gpu, 2, s35);
  CHECK_OK(m2_copy_(hi, he));
  CHECK_OK(m2_cuda_copy(gi, ge));
  CHECK(max_rel_diff(gi, hi) == 0, "broadcast source to i64 differs");
  /* same numel, other shape: a transposed (6, 5) view into a flat (30) */
  m2_tensor *hf = m2_empty(M2_F32, M2_DEV_CPU, 1, s30), *gf = m2_empty(M2_F32, par_gpu, 1, s30);
  m2_tensor *hsv = m2_transpose(hs, 0, 1), *gsv = m2_transpose(gs, 0, 1);
  CHECK_OK(m2_copy_(hf, hsv));
  CHECK_OK(m2_cuda_copy(gf, gsv));
  CHECK(max_rel_diff(gf, hf) == 0, "reshaping copy differs");
  /* strided fill of bf16 */
  CHECK_OK(m2_fill_(hv, 1.3));
  CHECK_OK(m2_cuda_fill(gv, 1.3));
  CHECK(max_rel_diff(gd, hd) == 0, "strided fill differs");
  m2_tensor *hb = m2_zeros(M2_BF16, M2_DEV_CPU, 2, s56), *gb = m2_zeros(M2_BF16, par_gpu, 2, s56);
  m2_tensor *hn = m2_narrow(hb, 1, 1, 3), *gn = m2_narrow(gb, 1, 1, 3);
  CHECK_OK(m2_fill_(hn, -2.7));
  CHECK_OK(m2_cuda_fill(gn, -2.7));
  CHECK(max_rel_diff(gb, hb) == 0, "strided bf16 fill differs");
  CHECK_FAILS(m2_cuda_copy(gd, hs) != M2_OK, M2_ERR_DEVICE, "same CUDA device");
  /* f32 <-> bf16 of contiguous tensors (the vectorised kernels: n a multiple of 4, 16-byte aligned) and of views
     that are not (the general kernel): the same bits as the host's rounding, both ways */
  int64_t sbig[1] = {40000};
  m2_tensor *big = par_randn(1, sbig), *bigs = m2_scale(big, 3e4), *gbig = m2_clone_raw(bigs, M2_F32, par_gpu);
  const int64_t starts[3] = {0, 1, 0}, lens[3] = {40000, 39996, 1001};
  for (int i = 0; i < 3; i++) {
    m2_tensor *hv32 = m2_narrow(bigs, 0, starts[i], lens[i]), *gv32 = m2_narrow(gbig, 0, starts[i], lens[i]);
    m2_tensor *h16 = m2_clone_raw(hv32, M2_BF16, M2_DEV_CPU), *g16 = m2_clone_raw(gv32, M2_BF16, par_gpu);
    m2_tensor *h32 = m2_clone_raw(h16, M2_F32, M2_DEV_CPU), *g32 = m2_clone_raw(g16, M2_F32, par_gpu);
    CHECK(max_rel_diff(g16, h16) == 0 && max_rel_diff(g32, h32) == 0, "f32 <-> bf16 of %lld from %lld differs",
          (long long)lens[i], (long long)starts[i]);
    m2_release(hv32), m2_release(gv32), m2_release(h16), m2_release(g16), m2_release(h32), m2_release(g32);
  }
  m2_release(big), m2_release(bigs), m2_release(gbig);
  m2_tensor *all[] = {src, hs, gs, hd, gd, hv, gv, row, row10, grow, he, ge, hi, gi, hf, gf, hsv, gsv, hb, gb, hn, gn};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
}
#endif

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_view");
  int64_t s[3] = {4, 9, 6}, se[3] = {1, 5, 1};
  m2_tensor *x = par_randn(3, s), *xe = par_randn(3, se);
  par_case p1 = {"contiguous/permuted", f_perm, NULL, 1, {x}, {true}};
  par_run(&p1);
  par_case p2 = {"contiguous/expanded", f_expand, NULL, 1, {xe}, {true}};
  par_run(&p2);
  par_case p3 = {"reshape/transposed", f_reshape, NULL, 1, {x}, {true}};
  par_run(&p3);
  par_case p4 = {"narrow", f_narrow, NULL, 1, {x}, {true}};
  par_run(&p4);
  par_case p5 = {"narrow + exp", f_narrow_exp, NULL, 1, {x}, {true}};
  par_run(&p5);
  m2_dtype t64 = M2_F64, t16 = M2_BF16, t32 = M2_F32;
  par_case p6 = {"to_dtype/f64", f_to, &t64, 1, {x}, {true}};
  par_run(&p6);
  par_case p7 = {"to_dtype/bf16", f_to, &t16, 1, {x}, {true}};
  par_run(&p7);
  par_case p8 = {"to_dtype/f32", f_to, &t32, 1, {x}, {true}};
  par_run(&p8);
#ifdef M2_HAVE_CUDA
  hook_tests();
#endif
  m2_release(x);
  m2_release(xe);
  return par_finish("cuda_ops_view");
}
