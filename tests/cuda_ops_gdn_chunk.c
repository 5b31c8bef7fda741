/* cuda_ops_gdn_chunk.c — the chunked tensor-core GDN forward and backward (cuda/gdn_chunk.cu, gdn_chunk_bwd.cu),
 * on by default (checked first, with M2_GDN_CHUNK_TC unset), switched per case by m2_cuda_gdn_chunk_tc:
 *  - small sizes against the CPU reference row gdn_chunked (float64) through m2_gdn_chunked, f32 and bf16 inputs,
 *    T a multiple of 64 and not, with and without h0: o, hT, then every input gradient, with the chunked backward
 *    (switch 1) and with the recurrent backward on the chunked forward's states (switch 2, "fwd"); each call checked
 *    to have taken the path it should (the call counters);
 *  - a shape the tiling does not take (K = 40) falls back to the recurrent kernels (no chunked call) and agrees;
 *  - f32 inputs take the chunked kernels under bf16 products (M2_MM_BF16) only; under f32 products the recurrent;
 *  - a full 400M-like layer (B 2, T 4096, H 2, K 256, V 512, bf16, h0) against the recurrent CUDA forward and
 *    backward (switch 0), outputs and gradients.
 * All of it twice: with the backward's second form off (M2_GDN_BWD_V2 unset: off by default, checked) and on
 * (m2_cuda_gdn_bwd_v2(1): the forward keeps prep's outputs as saved tensors, the backward reads them instead of
 * running prep, and k_gdn_bwy2 gives the chunk gradients), the same cases, inputs and bounds; each chunked call
 * checked to have kept / used the saved outputs and run k_gdn_bwy2 exactly when it should (the counters). Then one
 * case with the switch changed between forward and backward, both ways (saved outputs absent or not read).
 * Bounds: max |cuda - ref| / max |ref| per tensor <= 2e-2 forward, 5e-2 gradients (bf16 operands of every product:
 * the inputs, T, W, U, S, V' are rounded to bf16 as operands). Skips (77) without a GPU. */
#include <stdlib.h>
#include "cuda_mixer_parity.h"

static const double TOL_FWD = 2e-2, TOL_BWD = 5e-2;
static int g_v2_fwd, g_v2_bwd; /* m2_cuda_gdn_bwd_v2 during the chunked forward / backward of a case */

static void l2rows(arr *a) {
  int64_t d = a->shape[a->nd - 1], rows = arr_n(a) / d;
  for (int64_t r = 0; r < rows; r++) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += a->x[r * d + i] * a->x[r * d + i];
    s = 1.0 / sqrt(s + 1e-12);
    for (int64_t i = 0; i < d; i++) a->x[r * d + i] *= s;
  }
}

/* q, k (L2-normalised), v, g, beta, h0 (or none) of one case */
static void gdn_inputs(arr in[6], int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, bool h0, uint64_t seed) {
  m2_rng r = m2_rng_make(seed, 1);
  int64_t sk[4] = {B, T, H, K}, sv[4] = {B, T, H, V}, sg[3] = {B, T, H}, sh[4] = {B, H, K, V};
  in[0] = randn(&r, 4, sk, 1), in[1] = randn(&r, 4, sk, 1), in[2] = randn(&r, 4, sv, 0.7);
  in[3] = unif(&r, 3, sg, -0.6, -0.01), in[4] = unif(&r, 3, sg, 0.05, 1.95);
  in[5] = h0 ? randn(&r, 4, sh, 0.5) : none();
  l2rows(&in[0]);
  l2rows(&in[1]);
}

/* forward (o, hT) of in[0..5] (NULL h0 allowed), inputs requiring gradients */
static m2_status fwd(m2_tensor *const *in, m2_tensor **y) {
  return m2_gdn_chunked(in[0], in[1], in[2], in[3], in[4], in[5], NULL, &y[0], &y[1]);
}

static const char *const NAMES[6] = {"q", "k", "v", "g", "beta", "h0"};

/* Compare the CUDA forward and backward under switch `mode` (1: both chunked, 2: chunked forward only) against a
 * reference: the CPU row in float64 (ref_cuda false) or the recurrent CUDA kernels (ref_cuda true). want_tc: whether
 * the chunked kernels must be taken (else the shape must fall back). */
static void compare(const char *name, arr in[6], m2_dtype dt, bool ref_cuda, bool want_tc, int mode, uint64_t seed) {
  const char *dn = m2_dtype_name(dt);
  m2_tensor *cin[6] = {0}, *gin[6] = {0}, *cy[2] = {0}, *gy[2] = {0}, *cdo[2] = {0}, *gdo[2] = {0};
  for (int i = 0; i < 6; i++) {
    if (!in[i].x) continue;
    to_tensors(&in[i], dt, &cin[i], &gin[i]);
    if (ref_cuda) { /* the reference on the GPU too, same dtype */
      m2_release(cin[i]);
      cin[i] = m2_clone_raw(gin[i], dt, GPU);
    }
    m2_requires_grad_(cin[i], true);
    m2_requires_grad_(gin[i], true);
  }
  m2_cuda_gdn_chunk_tc(0);
  CHECK_OK(fwd(cin, cy));
  m2_cuda_gdn_chunk_tc(mode);
  m2_cuda_gdn_bwd_v2(g_v2_fwd);
  long calls = m2_cuda_gdn_chunk_tc_calls(), kcalls = m2_cuda_gdn_keep_calls();
  CHECK_OK(fwd(gin, gy));
  CHECK(gpu_sync_ok(), "%s %s: forward kernels failed", name, dn);
  CHECK((m2_cuda_gdn_chunk_tc_calls() > calls) == want_tc, "%s %s: the chunked path was %s", name, dn,
        want_tc ? "not taken" : "taken");
  /* prep's outputs kept (two more saved tensors) exactly where the chunked backward will take the call */
  const bool keep = g_v2_fwd && want_tc && mode == 1;
  CHECK(m2_cuda_gdn_keep_calls() - kcalls == (long)keep, "%s %s: prep's outputs %s", name, dn,
        keep ? "not kept" : "kept");
  CHECK(gy[0] && gy[0]->grad_fn && gy[0]->grad_fn->call.n_saved == (keep ? 3 : 1), "%s %s: %d saved tensors (%d "
        "expected)", name, dn, gy[0] && gy[0]->grad_fn ? gy[0]->grad_fn->call.n_saved : -1, keep ? 3 : 1);
  double wf = 0, wb = 0;
  for (int j = 0; j < 2; j++) {
    double e = err_of(gy[j], cy[j]);
    CHECK(e <= TOL_FWD, "%s %s: forward %s error %.3g > %.3g", name, dn, j ? "hT" : "o", e, TOL_FWD);
    if (!(e <= wf)) wf = e;
  }
  m2_rng r = m2_rng_make(seed, 11);
  for (int j = 0; j < 2 && cy[j]; j++) {
    arr d = randn(&r, cy[j]->ndim, cy[j]->shape, 1.0);
    to_tensors(&d, dt, &cdo[j], &gdo[j]);
    if (ref_cuda) {
      m2_release(cdo[j]);
      cdo[j] = m2_clone_raw(gdo[j], dt, GPU);
    }
    arr_free(&d);
  }
  if (cy[0] && gy[0]) {
    m2_cuda_gdn_chunk_tc(0);
    CHECK_OK(pc_backward(2, cy, cdo));
    m2_cuda_gdn_chunk_tc(mode);
    m2_cuda_gdn_bwd_v2(g_v2_bwd);
    long bcalls = m2_cuda_gdn_chunk_tc_bwd_calls(), ucalls = m2_cuda_gdn_keep_used_calls(),
         ycalls = m2_cuda_gdn_bwy2_calls();
    /* the backward wanting dbeta only (before the full one, which frees the saved states): the rest stays NULL */
    pcase pc = {name, "gdn_chunked", 6, 2, {{0}}, NULL, 0, 0};
    m2_tensor *pd[M2_MAX_IN] = {0};
    CHECK(pc_partial_backward(&pc, gy[0], gdo, 4, pd) == M2_OK && gpu_sync_ok(), "%s %s: partial backward failed",
          name, dn);
    for (int i = 0; i < M2_MAX_IN; i++)
      if (i != 4) CHECK(pd[i] == NULL, "%s %s: partial backward made gradient %d", name, dn, i);
    double ep = err_of(pd[4], cin[4]->grad);
    CHECK(ep <= TOL_BWD, "%s %s: partial backward dbeta error %.3g > %.3g", name, dn, ep, TOL_BWD);
    for (int i = 0; i < M2_MAX_IN; i++) m2_release(pd[i]);
    CHECK_OK(pc_backward(2, gy, gdo));
    CHECK(gpu_sync_ok(), "%s %s: backward kernels failed", name, dn);
    CHECK((m2_cuda_gdn_chunk_tc_bwd_calls() > bcalls) == (want_tc && mode == 1), "%s %s: the chunked backward was %s",
          name, dn, want_tc && mode == 1 ? "not taken" : "taken");
    /* both backwards (dbeta only, then all) read the kept outputs / ran k_gdn_bwy2 exactly where they should */
    const long nb = m2_cuda_gdn_chunk_tc_bwd_calls() - bcalls;
    CHECK(m2_cuda_gdn_keep_used_calls() - ucalls == (keep && g_v2_bwd ? nb : 0), "%s %s: %ld of %ld backwards read "
          "the kept prep outputs", name, dn, m2_cuda_gdn_keep_used_calls() - ucalls, nb);
    CHECK(m2_cuda_gdn_bwy2_calls() - ycalls == (g_v2_bwd ? nb : 0), "%s %s: %ld of %ld backwards ran k_gdn_bwy2",
          name, dn, m2_cuda_gdn_bwy2_calls() - ycalls, nb);
    m2_cuda_gdn_bwd_v2(0);
    for (int i = 0; i < 6; i++) {
      if (!cin[i]) continue;
      double e = err_of(gin[i]->grad, cin[i]->grad);
      CHECK(e <= TOL_BWD, "%s %s: gradient of %s error %.3g > %.3g", name, dn, NAMES[i], e, TOL_BWD);
      if (!(e <= wb)) wb = e;
    }
  }
  printf("  %-44s %-4s %s v2 %d/%d fwd %.2e  bwd %.2e\n", name, dn, mode == 1 ? "chunked bwd  " : "recurrent bwd",
         g_v2_fwd, g_v2_bwd, wf, wb);
  int di = dt == M2_BF16;
  if (!(wf <= g_worst[di][0])) g_worst[di][0] = wf;
  if (!(wb <= g_worst[di][1])) g_worst[di][1] = wb;
  for (int i = 0; i < 6; i++) m2_release(cin[i]), m2_release(gin[i]);
  for (int j = 0; j < 2; j++) m2_release(cy[j]), m2_release(gy[j]), m2_release(cdo[j]), m2_release(gdo[j]);
}

static void small_case(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, bool h0, bool want_tc, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "B%lld T%lld H%lld K%lld V%lld%s%s", (long long)B, (long long)T, (long long)H,
           (long long)K, (long long)V, h0 ? " h0" : "", want_tc ? "" : " (recurrent)");
  arr in[6];
  gdn_inputs(in, B, T, H, K, V, h0, seed);
  for (int mode = 1; mode <= 2; mode++) {
    int prev = m2_set_matmul_precision(M2_MM_BF16); /* f32 inputs take the chunked kernels only under bf16 products */
    compare(name, in, M2_F32, false, want_tc, mode, seed);
    m2_set_matmul_precision(prev);
    compare(name, in, M2_BF16, false, want_tc, mode, seed + 1);
  }
  for (int i = 0; i < 6; i++) arr_free(&in[i]);
}

/* f32 inputs under f32 products (M2_MM_F32, the default) keep the recurrent fp32 kernels at a shape the chunked
 * ones take, with the switch on: the chunked kernels round their operands to bf16, a precision loss f32 does not ask
 * for. Also: the switch is on by default (no M2_GDN_CHUNK_TC in the test's environment). */
static void f32_products_stay_recurrent(uint64_t seed) {
  arr in[6];
  gdn_inputs(in, 1, 128, 1, 64, 128, false, seed);
  int prev = m2_set_matmul_precision(M2_MM_F32);
  for (int mode = 1; mode <= 2; mode++) compare("B1 T128 K64 V128, f32 products (recurrent)", in, M2_F32, false,
                                                false, mode, seed);
  m2_set_matmul_precision(prev);
  for (int i = 0; i < 6; i++) arr_free(&in[i]);
}

/* The switch changed between forward and backward: kept outputs the backward does not read (v2 on, then off), and
 * a backward under v2 without kept outputs (off, then on: prep runs again, k_gdn_bwy2 gives the gradients). */
static void switch_between(uint64_t seed) {
  arr in[6];
  gdn_inputs(in, 1, 200, 2, 64, 128, true, seed);
  for (int on_first = 1; on_first >= 0; on_first--) {
    g_v2_fwd = on_first, g_v2_bwd = !on_first;
    compare(on_first ? "B1 T200 H2 K64 V128 h0, v2 fwd only" : "B1 T200 H2 K64 V128 h0, v2 bwd only", in, M2_BF16,
            false, true, 1, seed);
  }
  g_v2_fwd = g_v2_bwd = 0;
  for (int i = 0; i < 6; i++) arr_free(&in[i]);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_gdn_chunk");
  unsetenv("M2_GDN_CHUNK_TC");
  unsetenv("M2_GDN_BWD_V2"); /* read once: off by default */
  CHECK(m2_cuda_gdn_chunk_tc(-1) == 1, "the chunked kernels are not on by default (switch %d)", m2_cuda_gdn_chunk_tc(-1));
  CHECK(m2_cuda_gdn_bwd_v2(-1) == 0, "the backward's second form is not off by default (%d)", m2_cuda_gdn_bwd_v2(-1));
  for (int v2 = 0; v2 <= 1; v2++) { /* the same cases, inputs and bounds with M2_GDN_BWD_V2 off, then on */
    g_v2_fwd = g_v2_bwd = v2;
    printf("M2_GDN_BWD_V2 %s\n", v2 ? "on: prep's outputs kept, k_gdn_bwy2" : "off: prep run again, k_gdn_bwy");
    uint64_t seed = 900;
    small_case(2, 77, 2, 32, 64, true, true, seed += 10);   /* two chunks, the second partial */
    small_case(1, 128, 1, 64, 128, false, true, seed += 10); /* whole chunks, two column blocks */
    small_case(1, 200, 2, 48, 64, true, true, seed += 10);  /* K not a multiple of 32 */
    small_case(2, 5, 1, 16, 64, false, true, seed += 10);   /* one short chunk */
    small_case(1, 130, 1, 256, 64, true, true, seed += 10); /* the paper's K: two S tiles a warp */
    small_case(1, 70, 1, 40, 64, true, false, seed += 10);  /* K = 40: the recurrent kernels */
    f32_products_stay_recurrent(seed += 10);
    { /* the 400M layer's dims at B 2 against the recurrent CUDA kernels */
      arr in[6];
      gdn_inputs(in, 2, 4096, 2, 256, 512, true, seed += 10);
      compare("400M-like B2 T4096 H2 K256 V512 h0 vs recurrent", in, M2_BF16, true, true, 1, seed);
      for (int i = 0; i < 6; i++) arr_free(&in[i]);
    }
    small_case(1, 100, 1, 64, 192, true, true, 2000); /* three column blocks (V / 64 odd), T past one chunk */
  }
  switch_between(2100);
  m2_cuda_gdn_bwd_v2(0);
  return mixer_finish("cuda_ops_gdn_chunk");
}
