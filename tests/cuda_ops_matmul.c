/* cuda_ops_matmul.c — CPU-vs-CUDA parity of matmul (cuBLAS, fp32 accumulation) and linear, forward and
 * backward, in f32 and bf16: 2-D with every transpose combination, equal batch dims, a shared 2-D b
 * (one GEMM, or a batch-summed gradient when a is transposed), empty inner dims, and f32 matmuls with bf16 products
 * (m2_set_matmul_precision). Skips (77) without a GPU. */
#include "cuda_parity.h"

typedef struct mm_ud { bool ta, tb; } mm_ud;
static int f_mm(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  mm_ud *u = ud;
  PAR_ONE(m2_matmul(in[0], in[1], u->ta, u->tb));
}
static int f_linear(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_linear(in[0], in[1], in[2])); }

/* a (batch..., M, K) or transposed, b likewise; nb = number of b dims (2 = shared) */
static void mm_case(const char *what, int nbatch, const int64_t *batch, int64_t M, int64_t K, int64_t N, bool ta, bool tb,
                    bool shared) {
  int64_t sa[M2_MAX_DIMS], sb[M2_MAX_DIMS];
  int na = 0, nb = 0;
  for (int i = 0; i < nbatch; i++) {
    sa[na++] = batch[i];
    if (!shared) sb[nb++] = batch[i];
  }
  sa[na++] = ta ? K : M;
  sa[na++] = ta ? M : K;
  sb[nb++] = tb ? N : K;
  sb[nb++] = tb ? K : N;
  m2_tensor *a = par_randn(na, sa), *b = par_randn(nb, sb);
  mm_ud u = {ta, tb};
  char name[96];
  snprintf(name, sizeof name, "matmul/%s ta=%d tb=%d", what, ta, tb);
  par_case pc = {name, f_mm, &u, 2, {a, b}, {true, true}};
  par_run(&pc);
  m2_release(a);
  m2_release(b);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_matmul");
  int64_t b1[1] = {3}, b2[2] = {2, 3};
  for (int t = 0; t < 4; t++) {
    bool ta = t & 1, tb = t & 2;
    mm_case("2-D 37x53x29", 0, NULL, 37, 53, 29, ta, tb, false);
    mm_case("batched (2,3)", 2, b2, 17, 64, 24, ta, tb, false);
    mm_case("shared b (3)", 1, b1, 19, 40, 33, ta, tb, true);
  }
  mm_case("bigger 2-D", 0, NULL, 256, 384, 320, false, true, false);
  mm_case("empty inner", 1, b1, 5, 0, 7, false, false, false);
  /* linear with and without bias on (B, T, in) */
  int64_t sx[3] = {4, 9, 48}, sw[2] = {40, 48}, sbias[1] = {40};
  m2_tensor *x = par_randn(3, sx), *w = par_randn(2, sw), *bias = par_randn(1, sbias);
  par_case pl = {"linear/bias", f_linear, NULL, 3, {x, w, bias}, {true, true, true}};
  par_run(&pl);
  par_case pn = {"linear/no bias", f_linear, NULL, 3, {x, w, NULL}, {true, true, false}};
  par_run(&pn);
  /* bf16 products of f32 matmuls (m2_set_matmul_precision): both sides round the same operands, so f32 stays at
     1e-5; a CUDA path that ignored the setting would be ~1e-3 off the rounding CPU */
  m2_set_matmul_precision(M2_MM_BF16);
  for (int t = 0; t < 4; t++) mm_case("bf16 products 96x160x72", 0, NULL, 96, 160, 72, t & 1, t & 2, false);
  mm_case("bf16 products, batched", 2, b2, 17, 64, 24, true, false, false);
  mm_case("bf16 products, shared b", 1, b1, 19, 40, 33, false, true, true);
  mm_case("bf16 products, shared b, ta", 1, b1, 19, 40, 33, true, false, true);
  par_case pb16 = {"linear/bias, bf16 products", f_linear, NULL, 3, {x, w, bias}, {true, true, true}};
  par_run(&pb16);
  m2_set_matmul_precision(M2_MM_F32);
  /* shape errors come from the CUDA path too */
  m2_tensor *gx = m2_clone_raw(x, M2_F32, par_gpu), *gw = m2_clone_raw(w, M2_F32, par_gpu);
  CHECK_FAILS(m2_matmul(gx, gw, false, false) == NULL, M2_ERR_SHAPE, "inner dims differ");
  m2_release(x); m2_release(w); m2_release(bias); m2_release(gx); m2_release(gw);
  return par_finish("cuda_ops_matmul");
}
