/* cuda_ops_elementwise.c — CPU-vs-CUDA parity of the broadcasting binary ops and the unary maps,
 * forward and backward, in f32 and bf16; f64 refusal on cuda. Skips (77) without a GPU. */
#include "cuda_parity.h"
#include "cuda_unary_cases.h"

typedef m2_tensor *(*bin_fn)(m2_tensor *, m2_tensor *);

static int f_bin(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(((bin_fn)ud)(in[0], in[1])); }

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_elementwise");
  /* binary ops over broadcast patterns: same shape (flat), (B,T,d)+(d), (B,1,d)+(1,T,1), 0-d, big flat */
  int64_t s3[3] = {3, 37, 24}, sd[1] = {24}, sb1[3] = {3, 1, 24}, st1[3] = {1, 37, 1}, sbig[1] = {300001};
  struct { const char *name; int na; const int64_t *a; int nb; const int64_t *b; } pats[] = {
      {"same", 3, s3, 3, s3}, {"row", 3, s3, 1, sd}, {"outer", 3, sb1, 3, st1}, {"scalar", 3, s3, 0, NULL},
      {"big", 1, sbig, 1, sbig}};
  bin_fn fns[4] = {m2_add, m2_sub, m2_mul, m2_div};
  const char *bn[4] = {"add", "sub", "mul", "div"};
  for (int k = 0; k < 4; k++)
    for (size_t p = 0; p < sizeof pats / sizeof pats[0]; p++) {
      m2_tensor *a = par_randn(pats[p].na, pats[p].a);
      m2_tensor *b = k == 3 ? par_uniform(pats[p].nb, pats[p].b, 0.5, 2.0) : par_randn(pats[p].nb, pats[p].b);
      char name[64];
      snprintf(name, sizeof name, "%s/%s", bn[k], pats[p].name);
      par_case pc = {name, f_bin, (void *)fns[k], 2, {a, b}, {true, true}};
      pc.btol[1] = 2e-2; /* composite backwards round every intermediate to bf16 */
      /* a 0-d operand's gradient is one fp32 sum of 2664 products with cancellation (CPU: double) */
      if (pats[p].nb == 0) pc.btol[0] = 1e-4;
      par_run(&pc);
      m2_release(a);
      m2_release(b);
    }
  /* unary maps */
  int64_t su[2] = {129, 77};
  for (int k = 0; k < NKINDS; k++) {
    m2_tensor *x = (k == LOG || k == SQRT) ? par_uniform(2, su, 0.2, 3.0) : par_randn(2, su);
    par_case pc = {un_names[k], f_un, &k, 1, {x}, {true}};
    par_run(&pc);
    m2_release(x);
  }
  /* softplus above its linear threshold, relu/clamp at the edges are covered by randn's range */
  /* f64 is refused on cuda with a clear message */
  m2_tensor *h = m2_full(M2_F64, M2_DEV_CPU, 1, sd, 1.0);
  m2_tensor *g = m2_clone_raw(h, M2_F64, par_gpu);
  CHECK_FAILS(m2_exp(g) == NULL, M2_ERR_DTYPE, "f64");
  CHECK_FAILS(m2_add(g, g) == NULL, M2_ERR_DTYPE, "f64");
  /* f64 with f32 is refused (f64 first: CUDA does not compute in it); bf16 with f32 is promoted to f32 (the
   * dispatcher's rule, core/op_cast.c): the product equals the one of the f32 values of both */
  m2_tensor *r = par_randn(1, sd), *f = m2_clone_raw(r, M2_F32, par_gpu),
            *bf = m2_clone_raw(r, M2_BF16, par_gpu), *bf32 = bf ? m2_clone_raw(bf, M2_F32, par_gpu) : NULL;
  CHECK_FAILS(m2_mul(g, f) == NULL, M2_ERR_DTYPE, "f64");
  m2_tensor *mix = m2_mul(f, bf), *ref = bf32 ? m2_mul(f, bf32) : NULL;
  CHECK(mix && ref && mix->dtype == M2_F32, "mul(f32, bf16) on cuda: %s", mix ? m2_dtype_name(mix->dtype) : m2_errmsg());
  if (mix && ref) {
    m2_tensor *hm = m2_clone_raw(mix, M2_F64, M2_DEV_CPU), *hr = m2_clone_raw(ref, M2_F64, M2_DEV_CPU);
    double worst = 0;
    for (int64_t i = 0; hm && hr && i < m2_numel(hm); i++) {
      const double d = fabs(((const double *)m2_data(hm))[i] - ((const double *)m2_data(hr))[i]);
      worst = d > worst ? d : worst;
    }
    CHECK(hm && hr && worst == 0, "mul(f32, bf16) differs from mul(f32, f32(bf16)) by %.3g", worst);
    m2_release(hm), m2_release(hr);
  }
  m2_release(mix), m2_release(ref), m2_release(r), m2_release(bf32);
  m2_release(h); m2_release(g); m2_release(f); m2_release(bf);
  return par_finish("cuda_ops_elementwise");
}
