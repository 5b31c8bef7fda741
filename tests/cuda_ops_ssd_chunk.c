/* cuda_ops_ssd_chunk.c — the chunked tensor-core SSD forward and backward (cuda/ssd_chunk.cu, the "ssd_chunked" row
 * under M2_SSD_CHUNK_TC=1, which this test sets before the first call) against the CPU reference (float64, through
 * m2_ssd_chunked) at small sizes: f32 inputs (chunked forward under M2_MM_BF16, then the recurrent CUDA backward
 * reading its chunk states as checkpoints) and bf16 inputs (chunked forward and backward), T not a multiple of the
 * chunk, chunks of 64 and shorter, groups, with and without h0; outputs y, hT and every input gradient, bound 2e-2
 * (bf16 products) of max |ref|, and a backward wanting dBm alone (the others stay NULL). Then the 400M layer shape
 * (H 64, P 19, N 216, chunk 256) against the recurrent CUDA row (m2_ssd) in bf16, forward and gradients; and f32 under
 * M2_MM_F32 keeps the recurrent kernels (exact to 1e-4). Each call is checked to have taken the path it should
 * (m2_cuda_ssd_chunk_tc_calls, _bwd_calls). All of it for both ways of making the chunk states
 * (m2_cuda_ssd_chunk_mode 1: the chain kernel, 2: two launches), and all of it again with the grouped backward on
 * (m2_cuda_ssd_bwd_grouped 1, on by default since it passed on an H100 on 2026-12-07: a group's dB, dC summed inside the backward kernel), the same cases
 * and bounds, each call checked to have taken the grouped kernel where it applies (several heads a group, N <= 256;
 * m2_cuda_ssd_bwd_grouped_calls). Then the grouped backward against the per-head-partials one on the same inputs:
 * the same sums in the same order, so every gradient within one bf16 rounding step (2^-7 of max |ref|).
 * Skips (77) without a GPU. */
#include <stdlib.h>
#include "cuda_mixer_parity.h"
#include "m2cuda.h"

#define TOL 2e-2
#define BF16_STEP (1.0 / 128) /* one bf16 rounding step at the largest value: 2^-7 relative */

static int g_grouped; /* the grouped backward is on (m2_cuda_ssd_bwd_grouped) */

/* the grouped backward applies (with the switch on): several heads a group and N <= 256 */
static bool grouped_applies(int64_t H, int64_t G, int64_t N) { return g_grouped && H / G > 1 && N <= 256; }

typedef struct ssd_in {
  arr a[6];
} ssd_in;

static ssd_in make_in(int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0, uint64_t seed) {
  m2_rng r = m2_rng_make(seed, 2);
  int64_t sx[4] = {B, T, H, P}, sd[3] = {B, T, H}, sa[1] = {H}, sb[4] = {B, T, G, N}, sh[4] = {B, H, P, N};
  ssd_in s = {{randn(&r, 4, sx, 1), unif(&r, 3, sd, 0.01, 0.4), unif(&r, 1, sa, -1.5, -0.1), randn(&r, 4, sb, 0.5),
               randn(&r, 4, sb, 0.5), h0 ? randn(&r, 4, sh, 0.5) : none()}};
  return s;
}

static m2_status run(bool chunked, m2_tensor *const *in, int64_t chunk, m2_tensor **y, m2_tensor **hT) {
  m2_ssd_opts o = {(int)chunk};
  return (chunked ? m2_ssd_chunked : m2_ssd)(in[0], in[1], in[2], in[3], in[4], in[5], &o, y, hT);
}

/* Forward of a (cpu or cuda) side under matmul precision fp (M2_MM_*), then the backward of sum y.dy + hT.dhT under
 * bp; out = {y, hT}. */
static bool fwd_bwd(bool chunked, m2_tensor *const *in, int64_t chunk, m2_tensor *const *dout, m2_tensor **out, int fp,
                    int bp) {
  int prev = m2_set_matmul_precision(fp);
  bool ok = run(chunked, in, chunk, &out[0], &out[1]) == M2_OK;
  m2_set_matmul_precision(bp);
  ok = ok && pc_backward(2, out, dout) == M2_OK;
  m2_set_matmul_precision(prev);
  return ok;
}

/* a's values rounded to bf16 (kept as doubles) */
static void round_bf16(arr *a) {
  for (int64_t i = 0; a->x && i < arr_n(a); i++) a->x[i] = m2_bf16_to_f32(m2_f32_to_bf16((float)a->x[i]));
}

static const char *const NAMES[6] = {"x", "dt", "A", "Bm", "Cm", "h0"};

/* a (cuda) against b (any device): outputs and the gradients of the inputs present */
static void compare(const char *name, m2_tensor *const *ya, m2_tensor *const *yb, m2_tensor *const *ia,
                    m2_tensor *const *ib, double tol) {
  const char *on[2] = {"y", "hT"};
  for (int j = 0; j < 2; j++) {
    double e = err_of(ya[j], yb[j]);
    CHECK(e <= tol, "%s: %s error %.3g > %.3g", name, on[j], e, tol);
    printf("  %-44s %-3s %.2e\n", name, on[j], e);
  }
  for (int i = 0; i < 6; i++) {
    if (!ia[i]) continue;
    double e = err_of(ia[i]->grad, ib[i]->grad);
    CHECK(e <= tol, "%s: d%s error %.3g > %.3g", name, NAMES[i], e, tol);
    printf("  %-44s d%-2s %.2e\n", name, NAMES[i], e);
  }
}

/* The chunked CUDA row against the CPU reference. bf16: the chunked forward and backward. f32: the values are
 * bf16-representable (under M2_MM_BF16 the kernels round their operands to bf16, as matmul does; the CPU reference
 * then sees the same operands), the chunked forward under M2_MM_BF16, then the recurrent backward (M2_MM_F32)
 * reading its chunk states. */
static void vs_cpu(m2_dtype dt, int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0, int64_t chunk,
                   uint64_t seed) {
  char name[128];
  snprintf(name, sizeof name, "%s B%lld T%lld H%lld P%lld G%lld N%lld%s c%lld", m2_dtype_name(dt), (long long)B,
           (long long)T, (long long)H, (long long)P, (long long)G, (long long)N, h0 ? " h0" : "", (long long)chunk);
  ssd_in s = make_in(B, T, H, P, G, N, h0, seed);
  m2_tensor *cin[6] = {0}, *gin[6] = {0}, *cy[2] = {0}, *gy[2] = {0}, *cdo[2] = {0}, *gdo[2] = {0};
  for (int i = 0; i < 6; i++) {
    if (!s.a[i].x) continue;
    round_bf16(&s.a[i]);
    to_tensors(&s.a[i], dt, &cin[i], &gin[i]);
    m2_requires_grad_(cin[i], true), m2_requires_grad_(gin[i], true);
  }
  int64_t sy[4] = {B, T, H, P}, sh[4] = {B, H, P, N};
  m2_rng r = m2_rng_make(seed, 11);
  arr dy = randn(&r, 4, sy, 1.0), dh = randn(&r, 4, sh, 1.0);
  round_bf16(&dy), round_bf16(&dh);
  to_tensors(&dy, dt, &cdo[0], &gdo[0]), to_tensors(&dh, dt, &cdo[1], &gdo[1]);
  long before = m2_cuda_ssd_chunk_tc_calls(), bbefore = m2_cuda_ssd_chunk_tc_bwd_calls(),
       gbefore = m2_cuda_ssd_bwd_grouped_calls();
  int bp = dt == M2_BF16 ? M2_MM_BF16 : M2_MM_F32;
  bool okc = fwd_bwd(true, cin, chunk, cdo, cy, M2_MM_BF16, bp);
  /* the cuda side: forward, a backward wanting only dBm (the recorded call, before the full backward frees it),
     then the full backward */
  int prev = m2_set_matmul_precision(M2_MM_BF16);
  bool okg = run(true, gin, chunk, &gy[0], &gy[1]) == M2_OK;
  m2_set_matmul_precision(bp);
  pcase pc = {name, "ssd_chunked", 6, 2, {{0}}, NULL, 0, 0};
  m2_tensor *pdin[M2_MAX_IN] = {0};
  bool okp = okg && pc_partial_backward(&pc, gy[0], gdo, 3, pdin) == M2_OK && gpu_sync_ok();
  okg = okg && pc_backward(2, gy, gdo) == M2_OK;
  m2_set_matmul_precision(prev);
  CHECK(okc && okg && gpu_sync_ok(), "%s: forward / backward failed: %s", name, m2_errmsg());
  CHECK(okp, "%s: the backward wanting only dBm failed: %s", name, m2_errmsg());
  for (int i = 0; okp && okc && i < M2_MAX_IN; i++) {
    if (i != 3) {
      CHECK(pdin[i] == NULL, "%s: the backward wanting only dBm made gradient %d", name, i);
      continue;
    }
    double e = err_of(pdin[i], cin[i]->grad);
    CHECK(e <= TOL, "%s: dBm alone error %.3g > %.3g", name, e, TOL);
  }
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(pdin[i]);
  CHECK(m2_cuda_ssd_chunk_tc_calls() == before + 1, "%s: the chunked forward did not run", name);
  CHECK(m2_cuda_ssd_chunk_tc_bwd_calls() == bbefore + 2 * (dt == M2_BF16), "%s: the %s backward did not run", name,
        dt == M2_BF16 ? "chunked" : "recurrent");
  const bool gexp = dt == M2_BF16 && grouped_applies(H, G, N);
  CHECK(m2_cuda_ssd_bwd_grouped_calls() == gbefore + 2 * gexp, "%s: the grouped backward %s", name,
        gexp ? "did not run" : "ran");
  if (okc && okg) compare(name, gy, cy, gin, cin, TOL);
  for (int i = 0; i < 6; i++) m2_release(cin[i]), m2_release(gin[i]), arr_free(&s.a[i]);
  for (int j = 0; j < 2; j++) m2_release(cy[j]), m2_release(gy[j]), m2_release(cdo[j]), m2_release(gdo[j]);
  arr_free(&dy), arr_free(&dh);
}

/* The chunked row against the recurrent CUDA row (m2_ssd, same checkpoint interval) on the same dt inputs. */
/* chunked_row false: the row "ssd" (m2_ssd) is the one tested against the recurrent kernels (mode 0). */
static void vs_recurrent_row(bool chunked_row, m2_dtype dt, int64_t B, int64_t T, int64_t H, int64_t P, int64_t G,
                             int64_t N, bool h0, int64_t chunk, bool expect_chunked, double tol, uint64_t seed) {
  char name[128];
  snprintf(name, sizeof name, "vs rec %s%s B%lld T%lld H%lld P%lld N%lld%s c%lld", chunked_row ? "" : "row ssd ", m2_dtype_name(dt), (long long)B,
           (long long)T, (long long)H, (long long)P, (long long)N, h0 ? " h0" : "", (long long)chunk);
  ssd_in s = make_in(B, T, H, P, G, N, h0, seed);
  m2_tensor *ain[6] = {0}, *bin[6] = {0}, *ay[2] = {0}, *by[2] = {0}, *ado[2] = {0}, *bdo[2] = {0}, *ref = NULL;
  for (int i = 0; i < 6; i++) {
    if (!s.a[i].x) continue;
    to_tensors(&s.a[i], dt, &ref, &ain[i]), m2_release(ref);
    to_tensors(&s.a[i], dt, &ref, &bin[i]), m2_release(ref);
    m2_requires_grad_(ain[i], true), m2_requires_grad_(bin[i], true);
  }
  int64_t sy[4] = {B, T, H, P}, sh[4] = {B, H, P, N};
  m2_rng r = m2_rng_make(seed, 11);
  arr dy = randn(&r, 4, sy, 1.0), dh = randn(&r, 4, sh, 1.0);
  to_tensors(&dy, dt, &ref, &ado[0]), m2_release(ref), to_tensors(&dy, dt, &ref, &bdo[0]), m2_release(ref);
  to_tensors(&dh, dt, &ref, &ado[1]), m2_release(ref), to_tensors(&dh, dt, &ref, &bdo[1]), m2_release(ref);
  long before = m2_cuda_ssd_chunk_tc_calls(), bbefore = m2_cuda_ssd_chunk_tc_bwd_calls(),
       gbefore = m2_cuda_ssd_bwd_grouped_calls();
  int64_t seg = chunk < 64 ? chunk : 64; /* m2_ssd with the chunked row's checkpoint interval */
  int pr = m2_matmul_precision();
  bool oka = fwd_bwd(chunked_row, ain, chunked_row ? chunk : seg, ado, ay, pr, pr);
  long after = m2_cuda_ssd_chunk_tc_calls(), bafter = m2_cuda_ssd_chunk_tc_bwd_calls();
  int mode = m2_cuda_ssd_chunk_mode(0); /* the reference: the recurrent kernels */
  bool okb = fwd_bwd(false, bin, seg, bdo, by, pr, pr);
  m2_cuda_ssd_chunk_mode(mode);
  CHECK(m2_cuda_ssd_chunk_tc_calls() == after && m2_cuda_ssd_chunk_tc_bwd_calls() == bafter,
        "%s: the reference took the chunked kernels", name);
  CHECK(oka && okb && gpu_sync_ok(), "%s: forward / backward failed: %s", name, m2_errmsg());
  CHECK(m2_cuda_ssd_chunk_tc_calls() == before + expect_chunked &&
            m2_cuda_ssd_chunk_tc_bwd_calls() == bbefore + expect_chunked,
        "%s: the chunked kernels %s", name, expect_chunked ? "did not run" : "ran");
  const bool gexp = expect_chunked && grouped_applies(H, G, N);
  CHECK(m2_cuda_ssd_bwd_grouped_calls() == gbefore + gexp, "%s: the grouped backward %s", name,
        gexp ? "did not run" : "ran");
  if (oka && okb) compare(name, ay, by, ain, bin, tol);
  for (int i = 0; i < 6; i++) m2_release(ain[i]), m2_release(bin[i]), arr_free(&s.a[i]);
  for (int j = 0; j < 2; j++) m2_release(ay[j]), m2_release(by[j]), m2_release(ado[j]), m2_release(bdo[j]);
  arr_free(&dy), arr_free(&dh);
}

/* The grouped backward (on) against the per-head partials one (off), bf16, the chunked row on the same inputs and
 * output gradients: the same per-head values summed in the same order, so each gradient (and y, hT: the same
 * forward) within one bf16 rounding step. */
static void grouped_vs_partials(int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0,
                                int64_t chunk, uint64_t seed) {
  char name[128];
  snprintf(name, sizeof name, "grouped vs partials B%lld T%lld H%lld P%lld G%lld N%lld%s c%lld", (long long)B,
           (long long)T, (long long)H, (long long)P, (long long)G, (long long)N, h0 ? " h0" : "", (long long)chunk);
  ssd_in s = make_in(B, T, H, P, G, N, h0, seed);
  m2_tensor *ain[6] = {0}, *bin[6] = {0}, *ay[2] = {0}, *by[2] = {0}, *ado[2] = {0}, *bdo[2] = {0}, *ref = NULL;
  for (int i = 0; i < 6; i++) {
    if (!s.a[i].x) continue;
    to_tensors(&s.a[i], M2_BF16, &ref, &ain[i]), m2_release(ref);
    to_tensors(&s.a[i], M2_BF16, &ref, &bin[i]), m2_release(ref);
    m2_requires_grad_(ain[i], true), m2_requires_grad_(bin[i], true);
  }
  int64_t sy[4] = {B, T, H, P}, sh[4] = {B, H, P, N};
  m2_rng r = m2_rng_make(seed, 11);
  arr dy = randn(&r, 4, sy, 1.0), dh = randn(&r, 4, sh, 1.0);
  to_tensors(&dy, M2_BF16, &ref, &ado[0]), m2_release(ref), to_tensors(&dy, M2_BF16, &ref, &bdo[0]), m2_release(ref);
  to_tensors(&dh, M2_BF16, &ref, &ado[1]), m2_release(ref), to_tensors(&dh, M2_BF16, &ref, &bdo[1]), m2_release(ref);
  int pr = m2_matmul_precision(), prev = m2_cuda_ssd_bwd_grouped(1);
  long gbefore = m2_cuda_ssd_bwd_grouped_calls();
  bool oka = fwd_bwd(true, ain, chunk, ado, ay, pr, pr);
  long gmid = m2_cuda_ssd_bwd_grouped_calls();
  m2_cuda_ssd_bwd_grouped(0);
  bool okb = fwd_bwd(true, bin, chunk, bdo, by, pr, pr);
  m2_cuda_ssd_bwd_grouped(prev);
  CHECK(oka && okb && gpu_sync_ok(), "%s: forward / backward failed: %s", name, m2_errmsg());
  CHECK(gmid == gbefore + 1 && m2_cuda_ssd_bwd_grouped_calls() == gmid, "%s: the grouped backward ran %ld, %ld times "
        "(1, 0 expected)", name, gmid - gbefore, m2_cuda_ssd_bwd_grouped_calls() - gmid);
  if (oka && okb) compare(name, ay, by, ain, bin, BF16_STEP);
  for (int i = 0; i < 6; i++) m2_release(ain[i]), m2_release(bin[i]), arr_free(&s.a[i]);
  for (int j = 0; j < 2; j++) m2_release(ay[j]), m2_release(by[j]), m2_release(ado[j]), m2_release(bdo[j]);
  arr_free(&dy), arr_free(&dh);
}

static void vs_recurrent(m2_dtype dt, int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0,
                         int64_t chunk, bool expect_chunked, double tol, uint64_t seed) {
  vs_recurrent_row(true, dt, B, T, H, P, G, N, h0, chunk, expect_chunked, tol, seed);
}

int main(void) {
  unsetenv("M2_SSD_CHUNK_TC"); /* read once: on by default */
  unsetenv("M2_SSD_BWD_GROUPED"); /* read once: on by default */
  PAR_SKIP_WITHOUT_GPU("cuda_ops_ssd_chunk");
  CHECK(m2_cuda_ssd_chunk_mode(-1) == 1, "the chunked kernels are not on by default (mode %d)", m2_cuda_ssd_chunk_mode(-1));
  CHECK(m2_cuda_ssd_bwd_grouped(-1) == 1, "the grouped backward is not on by default (%d)",
        m2_cuda_ssd_bwd_grouped(-1));
  for (g_grouped = 0; g_grouped <= 1; g_grouped++) { /* dB, dC from per-head partials, then the grouped backward */
    m2_cuda_ssd_bwd_grouped(g_grouped);
    uint64_t seed = 910; /* the same cases, inputs and bounds both ways */
    for (int mode = 1; mode <= 2; mode++) { /* the chunk states by the chain kernel, then by two launches */
      m2_cuda_ssd_chunk_mode(mode);
      printf("mode %d (%s), %s backward\n", mode, mode == 1 ? "k_chain" : "k_state + k_pass",
             g_grouped ? "grouped" : "per-head partials");
      for (int k = 0; k < 2; k++) {
        m2_dtype dt = k ? M2_BF16 : M2_F32;
        vs_cpu(dt, 1, 100, 6, 40, 3, 70, false, 32, seed += 10);  /* chunk 32, groups */
        vs_cpu(dt, 2, 45, 2, 8, 1, 130, true, 0, seed += 10);     /* one partial chunk of 64, N over 128 */
        vs_cpu(dt, 1, 70, 3, 5, 3, 7, false, 9, seed += 10);      /* chunk 9: tiles mostly padding */
        vs_cpu(dt, 2, 150, 4, 19, 2, 216, true, 256, seed += 10); /* the 400M head (P 19, N 216), short */
        vs_cpu(dt, 1, 130, 2, 64, 1, 192, false, 0, seed += 10);  /* the 7B head (P 64, N 192) */
        vs_cpu(dt, 1, 70, 2, 20, 1, 300, true, 0, seed += 10);    /* N over 256: the chain's wider register tile */
      }
      /* the 400M layer shape, T not a multiple of the chunk */
      vs_recurrent(M2_BF16, 2, 1000, 64, 19, 1, 216, true, 256, true, TOL, seed += 10);
      /* the row "ssd" (the Mamba-2 layer's default) takes the chunked kernels too */
      vs_recurrent_row(false, M2_BF16, 1, 300, 8, 19, 1, 216, true, 0, true, TOL, seed += 10);
    }
    m2_cuda_ssd_chunk_mode(1);
    /* f32 under fp32 products: the recurrent kernels (no rounding to bf16) */
    vs_recurrent(M2_F32, 1, 77, 4, 16, 2, 24, true, 0, false, 1e-4, seed += 10);
  }
  m2_cuda_ssd_bwd_grouped(0);
  g_grouped = 0;
  /* the grouped backward against the per-head partials on the same inputs */
  grouped_vs_partials(2, 1000, 64, 19, 1, 216, true, 256, 2010); /* the 400M layer shape, T not a multiple of 64 */
  grouped_vs_partials(1, 100, 6, 40, 3, 70, false, 32, 2020);    /* chunk 32, 3 groups of 2 heads, N 70 */
  grouped_vs_partials(1, 130, 4, 64, 2, 192, false, 0, 2030);    /* the 7B head, 2 groups */
  grouped_vs_partials(2, 45, 2, 8, 1, 130, true, 0, 2040);       /* one partial chunk, N over 128 */
  return mixer_finish("cuda_ops_ssd_chunk");
}
