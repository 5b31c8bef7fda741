/* cuda_ops_ssd.c — the CUDA Mamba-2 SSD rows (cuda/ops_ssd.cu) against the CPU reference rows (core/ops_ssd.c,
 * float64) through m2_ssd / m2_ssd_chunked, with the harness of cuda_mixer_parity.h: every forward output and input
 * gradient in f32 and bf16, a backward wanting one gradient; groups G < H, with and without h0, P over one block,
 * N up to 130, T never a multiple of a block size. Then the public API on CUDA tensors against the CPU, and the
 * argument errors (f64, groups that do not divide the heads). Skips (77) without a GPU. */
#include "cuda_mixer_parity.h"

/* i0 = chunk (checkpoint interval of the recurrent row) */
static m2_status run_ssd(const pcase *pc, m2_tensor *const *in, m2_tensor **outs) {
  m2_ssd_opts o = {(int)pc->i0};
  bool chunked = strcmp(pc->op, "ssd_chunked") == 0;
  return (chunked ? m2_ssd_chunked : m2_ssd)(in[0], in[1], in[2], in[3], in[4], in[5], &o, &outs[0], &outs[1]);
}

static void ssd_case(const char *op, int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0,
                     int64_t chunk, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "%s B%lld T%lld H%lld P%lld G%lld N%lld%s c%lld", op, (long long)B, (long long)T,
           (long long)H, (long long)P, (long long)G, (long long)N, h0 ? " h0" : "", (long long)chunk);
  m2_rng r = m2_rng_make(seed, 2);
  int64_t sx[4] = {B, T, H, P}, sd[3] = {B, T, H}, sa[1] = {H}, sb[4] = {B, T, G, N}, sh[4] = {B, H, P, N};
  pcase pc = {name, op, 6, 2, {randn(&r, 4, sx, 1), unif(&r, 3, sd, 0.01, 0.4), unif(&r, 1, sa, -1.5, -0.1),
                               randn(&r, 4, sb, 0.5), randn(&r, 4, sb, 0.5), h0 ? randn(&r, 4, sh, 0.5) : none()},
              run_ssd, chunk, 0};
  run_case(&pc, seed);
}

static void api_and_errors(void) {
  int64_t sq[4] = {1, 9, 2, 8}, sg[3] = {1, 9, 2};
  /* the public API dispatches to the CUDA rows and agrees with the CPU */
  m2_tensor *q = dev_f(M2_F32, 4, sq, 1, -0.3, 0.3), *v = dev_f(M2_F32, 4, sq, 3, -1, 1),
            *g = dev_f(M2_F32, 3, sg, 4, -0.5, -0.1), *be = dev_f(M2_F32, 3, sg, 5, 0.1, 1.9);
  m2_tensor *o = NULL, *hT = NULL, *co = NULL, *chT = NULL;
  m2_tensor *cv = m2_clone_raw(v, M2_F32, M2_DEV_CPU), *cb = m2_clone_raw(be, M2_F32, M2_DEV_CPU);
  int64_t sA2[1] = {2}, sB1[4] = {1, 9, 1, 8};
  m2_tensor *A2 = dev_f(M2_F32, 1, sA2, 16, -1.2, -0.2), *Bm = dev_f(M2_F32, 4, sB1, 17, -1, 1),
            *Cm = dev_f(M2_F32, 4, sB1, 18, -1, 1);
  m2_tensor *cA2 = m2_clone_raw(A2, M2_F32, M2_DEV_CPU), *cBm = m2_clone_raw(Bm, M2_F32, M2_DEV_CPU),
            *cCm = m2_clone_raw(Cm, M2_F32, M2_DEV_CPU);
  m2_ssd_opts so = {32};
  CHECK_OK(m2_ssd_chunked(v, be, A2, Bm, Cm, NULL, &so, &o, &hT));
  CHECK_OK(m2_ssd_chunked(cv, cb, cA2, cBm, cCm, NULL, &so, &co, &chT));
  CHECK(o && o->device.type == M2_CUDA && err_of(o, co) <= 1e-4 && err_of(hT, chT) <= 1e-4,
        "m2_ssd_chunked on cuda agrees with the cpu");
  m2_release(o), m2_release(hT), m2_release(co), m2_release(chT);
  m2_release(A2), m2_release(Bm), m2_release(Cm), m2_release(cA2), m2_release(cBm), m2_release(cCm);
  o = hT = NULL;

  /* f64 is refused on cuda */
  m2_tensor *q64 = dev_f(M2_F64, 4, sq, 6, -1, 1);
  m2_tensor *g64 = dev_f(M2_F64, 3, sg, 7, -1, -0.1);
  int64_t sA[1] = {2};
  m2_tensor *A64 = dev_f(M2_F64, 1, sA, 8, -1, -0.1);
  CHECK_FAILS(m2_ssd(q64, g64, A64, q64, q64, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "f64");
  /* groups */
  int64_t sk3[4] = {1, 9, 3, 8};
  m2_tensor *A3 = dev_f(M2_F32, 1, sA, 14, -1, -0.1);
  m2_tensor *Bm3 = dev_f(M2_F32, 4, sk3, 15, -1, 1); /* G = 3 does not divide H = 2 */
  CHECK_FAILS(m2_ssd(q, g, A3, Bm3, Bm3, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "divide");
  m2_tensor *rel[] = {q, v, g, be, cv, cb, q64, g64, A64, A3, Bm3};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_ssd");
  m2_cuda_ssd_chunk_mode(0); /* the recurrent kernels here; the chunked ones (default for bf16): cuda_ops_ssd_chunk */
  uint64_t seed = 540;
  /* G < H, P over one block, N up to 130 */
  ssd_case("ssd", 2, 77, 4, 16, 2, 24, true, 0, seed += 10);
  ssd_case("ssd_chunked", 1, 100, 6, 40, 3, 70, false, 32, seed += 10);
  ssd_case("ssd_chunked", 2, 45, 2, 8, 1, 130, true, 0, seed += 10);
  ssd_case("ssd", 1, 70, 3, 5, 3, 7, false, 9, seed += 10);
  api_and_errors();
  return mixer_finish("cuda_ops_ssd");
}
