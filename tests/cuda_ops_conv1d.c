/* cuda_ops_conv1d.c — CPU-vs-CUDA parity of the depthwise causal conv1d (with and without bias, W = 4 and
 * W = 1, T shorter than W), forward and backward, in f32 and bf16. Skips (77) without a GPU. */
#include "cuda_parity.h"

static int f_conv(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_conv1d_causal(in[0], in[1], in[2])); }

static void conv_case(const char *name, int64_t B, int64_t T, int64_t C, int64_t W, bool bias) {
  int64_t sx[3] = {B, T, C}, sw[2] = {C, W}, sb[1] = {C};
  m2_tensor *x = par_randn(3, sx), *w = par_randn(2, sw), *b = bias ? par_randn(1, sb) : NULL;
  par_case pc = {name, f_conv, NULL, 3, {x, w, b}, {true, true, bias}};
  par_run(&pc);
  m2_release(x);
  m2_release(w);
  m2_release(b);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_conv1d");
  conv_case("conv1d/B2 T37 C24 W4 bias", 2, 37, 24, 4, true);
  conv_case("conv1d/no bias", 3, 50, 40, 4, false);
  conv_case("conv1d/W=1", 2, 9, 7, 1, true);
  conv_case("conv1d/T<W", 2, 2, 5, 4, true);
  conv_case("conv1d/long T (chunked dw)", 2, 3000, 64, 4, true);
  /* the windowed kernels (W 2, 3, 4): chunks of 64 rows that cross several sequence ends, C past one block */
  conv_case("conv1d/W=2 C300", 3, 130, 300, 2, true);
  conv_case("conv1d/W=3 T10 (6 sequences a chunk)", 9, 10, 33, 3, true);
  conv_case("conv1d/W=4 T3 < W", 30, 3, 17, 4, false);
  conv_case("conv1d/W=5 (per-element kernels)", 2, 40, 20, 5, true);
  return par_finish("cuda_ops_conv1d");
}
