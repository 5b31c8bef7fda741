/* cuda_ops_gdn.c — the CUDA Gated DeltaNet rows (cuda/ops_gdn.cu) against the CPU reference rows (core/ops_gdn.c,
 * float64) through m2_gdn / m2_gdn_chunked, with the harness of cuda_mixer_parity.h: every forward output and input
 * gradient in f32 and bf16, a backward wanting one gradient; gdn and gdn_chunked with h0, beta in (0, 2), K and V
 * not multiples of 32, several checkpoint segments, T never a multiple of a block size. Then the public API on CUDA
 * tensors against the CPU, and the argument errors (f64, shapes, K limit). Skips (77) without a GPU. */
#include "cuda_mixer_parity.h"

/* i0 = chunk (checkpoint interval of the recurrent row), f0 = scale (0: 1/sqrt(K)) */
static m2_status run_gdn(const pcase *pc, m2_tensor *const *in, m2_tensor **outs) {
  m2_gdn_opts o = {pc->f0, (int)pc->i0};
  bool chunked = strcmp(pc->op, "gdn_chunked") == 0;
  return (chunked ? m2_gdn_chunked : m2_gdn)(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]);
}

/* normalise every last-dim vector to unit length (q and k of GDN) */
static void l2rows(arr *a) {
  int64_t d = a->shape[a->nd - 1], rows = arr_n(a) / d;
  for (int64_t r = 0; r < rows; r++) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += a->x[r * d + i] * a->x[r * d + i];
    s = 1.0 / sqrt(s + 1e-12);
    for (int64_t i = 0; i < d; i++) a->x[r * d + i] *= s;
  }
}

static void gdn_case(const char *op, int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, bool h0, int64_t chunk,
                     double scale, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "%s B%lld T%lld H%lld K%lld V%lld%s c%lld", op, (long long)B, (long long)T,
           (long long)H, (long long)K, (long long)V, h0 ? " h0" : "", (long long)chunk);
  m2_rng r = m2_rng_make(seed, 1);
  int64_t sk[4] = {B, T, H, K}, sv[4] = {B, T, H, V}, sg[3] = {B, T, H}, sh[4] = {B, H, K, V};
  pcase pc = {name, op, 6, 2, {randn(&r, 4, sk, 1), randn(&r, 4, sk, 1), randn(&r, 4, sv, 0.7),
                               unif(&r, 3, sg, -0.6, -0.01), unif(&r, 3, sg, 0.05, 1.95),
                               h0 ? randn(&r, 4, sh, 0.5) : none()},
              run_gdn, chunk, scale};
  l2rows(&pc.in[0]);
  l2rows(&pc.in[1]);
  run_case(&pc, seed);
}

static void api_and_errors(void) {
  int64_t sq[4] = {1, 9, 2, 8}, sg[3] = {1, 9, 2};
  /* the public API dispatches to the CUDA rows and agrees with the CPU */
  m2_tensor *q = dev_f(M2_F32, 4, sq, 1, -0.3, 0.3), *k = dev_f(M2_F32, 4, sq, 2, -0.3, 0.3),
            *v = dev_f(M2_F32, 4, sq, 3, -1, 1), *g = dev_f(M2_F32, 3, sg, 4, -0.5, -0.1),
            *be = dev_f(M2_F32, 3, sg, 5, 0.1, 1.9);
  m2_tensor *o = NULL, *hT = NULL, *co = NULL, *chT = NULL;
  m2_tensor *cq = m2_clone_raw(q, M2_F32, M2_DEV_CPU), *ck = m2_clone_raw(k, M2_F32, M2_DEV_CPU),
            *cv = m2_clone_raw(v, M2_F32, M2_DEV_CPU), *cg = m2_clone_raw(g, M2_F32, M2_DEV_CPU),
            *cb = m2_clone_raw(be, M2_F32, M2_DEV_CPU);
  CHECK_OK(m2_gdn_chunked(q, k, v, g, be, NULL, NULL, &o, &hT));
  CHECK_OK(m2_gdn_chunked(cq, ck, cv, cg, cb, NULL, NULL, &co, &chT));
  CHECK(o && o->device.type == M2_CUDA && err_of(o, co) <= 1e-4 && err_of(hT, chT) <= 1e-4,
        "m2_gdn_chunked on cuda agrees with the cpu");
  m2_release(o), m2_release(hT), m2_release(co), m2_release(chT);
  o = hT = NULL;

  /* f64 is refused on cuda */
  m2_tensor *q64 = dev_f(M2_F64, 4, sq, 6, -1, 1);
  m2_tensor *g64 = dev_f(M2_F64, 3, sg, 7, -1, -0.1);
  CHECK(q64 && q64->device.type == M2_CUDA && q64->dtype == M2_F64, "an f64 cuda tensor");
  CHECK_FAILS(m2_gdn(q64, q64, q64, g64, g64, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "f64");
  /* shapes and limits */
  int64_t sbig[4] = {1, 3, 1, 520}, sgb[3] = {1, 3, 1};
  m2_tensor *big = dev_f(M2_F32, 4, sbig, 10, -0.1, 0.1), *gb = dev_f(M2_F32, 3, sgb, 11, -0.5, -0.1);
  CHECK_FAILS(m2_gdn(big, big, big, gb, gb, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_UNSUPPORTED, "K <= 512");
  CHECK_FAILS(m2_gdn(q, k, v, g, q, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "beta");
  m2_tensor *h0bad = dev_f(M2_F32, 4, sq, 12, -1, 1);
  CHECK_FAILS(m2_gdn(q, k, v, g, be, h0bad, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "h0");
  m2_tensor *rel[] = {q, k, v, g, be, cq, ck, cv, cg, cb, q64, g64, big, gb, h0bad};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_gdn");
  m2_cuda_gdn_chunk_tc(0); /* the recurrent kernels here; the chunked ones (default for bf16): cuda_ops_gdn_chunk */
  uint64_t seed = 500;
  /* both rows (same CUDA kernels); checkpoint segments 64 / 16 / 64 / 7 */
  gdn_case("gdn", 2, 77, 3, 32, 24, true, 0, 0, seed += 10);
  gdn_case("gdn_chunked", 1, 130, 2, 64, 40, false, 16, 0, seed += 10);
  gdn_case("gdn_chunked", 2, 33, 2, 48, 16, true, 0, 0.3, seed += 10);
  gdn_case("gdn", 1, 20, 1, 160, 8, true, 7, 0, seed += 10);
  api_and_errors();
  return mixer_finish("cuda_ops_gdn");
}
