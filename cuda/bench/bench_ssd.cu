/* bench_ssd.cu — times the Mamba-2 SSD op on CUDA at the paper's layer shapes (DESIGN 3.3: 400M H 64, P 19, N 216,
 * B 8; 7B H 32, P 64, N 192, B 4; T 4096, G 1, chunk 256, bf16): the recurrent row (m2_ssd, cuda/ops_ssd.cu) against
 * the chunked tensor-core forward and backward (m2_ssd_chunked under M2_SSD_CHUNK_TC=1, cuda/ssd_chunk.cu), forward
 * alone (no tape: no checkpoints kept) and forward + backward (checkpoints kept), through the public API, median of
 * timed repeats after a warm-up (CUDA events on the device's stream). Prints how far the chunked outputs are from the
 * recurrent ones. Three chunked rows: the chunk states by the chain kernel (M2_SSD_CHUNK_TC=1), by two launches
 * (=2, m2_cuda_ssd_chunk_mode), and the chain kernel with the grouped backward (M2_SSD_BWD_GROUPED=1,
 * m2_cuda_ssd_bwd_grouped: a group's dB, dC summed inside the backward kernel, no per-head fp32 partials), after
 * which a line gives how far its gradients are from the per-head-partials backward's (the same sums in the same
 * order: within one bf16 rounding step).
 *
 * Counted work, per (b, h) and token (L = 64, the chunk the kernels use: the checkpoint interval):
 *   FLOPs, chunked forward: C B^T causal L N + (mask o CB) X causal L P + C S^T 2 N P + chunk state B^T X 2 N P
 *     (multiply-add = 2; the causal halves counted as half)  = 2 (L/2 N + L/2 P + 2 N P)
 *   FLOPs, recurrent forward: state update 2 N P + output 2 N P = 4 N P (the fewest any form needs)
 *   FLOPs, chunked backward: the scores C B^T, dY X^T (causal L N + L P), M^T dY (L P), dY S, X D, B D^T and the
 *     state gradient dY^T C (4 x 2 N P), W B and W^T C (causal 2 x L N): about twice the forward; fwd+bwd ~ 3 x fwd.
 *   TFLOP/s below divide the chunked forward count by the forward time, for every row (same numerator: comparable).
 *   Bytes, forward: x, y (B T H P), dt (B T H), B, C (B T G N) in bf16, hT (B H P N) bf16; the training forward also
 *     writes the fp32 checkpoints (B H T/64 P N), which the backward reads.
 *   Bytes, backward: reads x, dt, B, C, dy, checkpoints; writes dx, ddt, dB, dC (bf16).
 * Floor = max(FLOPs / tensor peak, bytes / HBM peak), dense bf16 989 TFLOP/s, HBM 3.35 TB/s (H100 SXM) or 4.8 TB/s
 * (H200), picked from the device name. Usage: bench_ssd [reps] */
#include "m2cuda.h"
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <vector>
#include "m2.h"
#include "cuda_backend.h"

static void die(const char *what) {
  fprintf(stderr, "bench_ssd: %s failed: %s\n", what, m2_errmsg());
  exit(1);
}

/* a bf16 cuda tensor: lo + (hi - lo) U[0,1) (uniform) or hi N(0,1) (lo = NAN) */
static m2_tensor *dev_bf16(uint64_t seed, int nd, const int64_t *shape, double lo, double hi) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  std::vector<float> v((size_t)n);
  m2_rng r = m2_rng_make(seed, 3);
  for (int64_t i = 0; i < n; i++) {
    if (isnan(lo)) {
      double u1 = m2_rng_uniform(&r), u2 = m2_rng_uniform(&r);
      v[i] = (float)(hi * sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(6.283185307179586 * u2));
    } else {
      v[i] = (float)(lo + (hi - lo) * m2_rng_uniform(&r));
    }
  }
  m2_tensor *c = m2_from_data(M2_F32, M2_DEV_CPU, nd, shape, v.data());
  m2_tensor *g = c ? m2_clone_raw(c, M2_BF16, (m2_device){M2_CUDA, 0}) : NULL;
  m2_release(c);
  if (!g) die("input");
  return g;
}

struct shape { const char *layer; int64_t B, T, H, P, G, N; };

static m2_tensor *g_y, *g_hT; /* the last forward's outputs */

static void fwd(bool chunked, m2_tensor *const *in) {
  m2_ssd_opts o = {256};
  m2_release(g_y), m2_release(g_hT);
  g_y = g_hT = NULL;
  if ((chunked ? m2_ssd_chunked : m2_ssd)(in[0], in[1], in[2], in[3], in[4], NULL, &o, &g_y, &g_hT) != M2_OK)
    die("forward");
}

/* Median ms of reps runs of the forward (bwd false) or forward + backward of sum y.dy. */
static double time_it(bool chunked, m2_tensor *const *in, m2_tensor *dy, bool bwd, int reps) {
  cudaStream_t st = m2_cuda_stream(0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  for (int i = 0; i < 5; i++) m2_requires_grad_(in[i], bwd);
  std::vector<double> ms;
  for (int i = 0; i < reps + 1; i++) {
    cudaEventRecord(a, st);
    fwd(chunked, in);
    if (bwd && m2_backward(g_y, dy) != M2_OK) die("m2_backward");
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    for (int j = 0; j < 5; j++) m2_release(in[j]->grad), in[j]->grad = NULL; /* no accumulation across runs */
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i > 0) ms.push_back(t); /* the first run warms up */
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/* The gradients of x, B, C of one forward + backward (the grouped backward on or off), detached. */
static void grads_of(int grouped, m2_tensor *const *in, m2_tensor *dy, m2_tensor **g) {
  int prev = m2_cuda_ssd_bwd_grouped(grouped);
  const int idx[3] = {0, 3, 4};
  for (int i = 0; i < 5; i++) m2_requires_grad_(in[i], true);
  fwd(true, in);
  if (m2_backward(g_y, dy) != M2_OK) die("m2_backward");
  for (int k = 0; k < 3; k++) g[k] = m2_detach(in[idx[k]]->grad);
  for (int i = 0; i < 5; i++) m2_release(in[i]->grad), in[i]->grad = NULL, m2_requires_grad_(in[i], false);
  m2_cuda_ssd_bwd_grouped(prev);
}

/* max |a - b| / max |b| */
static double rel_diff(m2_tensor *a, m2_tensor *b) {
  m2_tensor *dd = m2_sub(a, b), *ad = dd ? m2_square(dd) : NULL, *mx = ad ? m2_max_all(ad) : NULL;
  m2_tensor *ar = m2_square(b), *mr = ar ? m2_max_all(ar) : NULL;
  double a2 = NAN, r2 = NAN, d = NAN;
  if (mx && mr && m2_item(mx, &a2) == M2_OK && m2_item(mr, &r2) == M2_OK) d = sqrt(a2 / r2);
  m2_release(dd), m2_release(ad), m2_release(mx), m2_release(ar), m2_release(mr);
  return d;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  setenv("M2_SSD_CHUNK_TC", "1", 1); /* the chunked row's tensor-core forward (read once) */
  if (m2_cuda_register() != M2_OK || m2_device_count(M2_CUDA) == 0) {
    printf("bench_ssd: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  const double peak_tf = 989e12, peak_bw = strstr(p.name, "H200") ? 4.8e12 : 3.35e12;
  printf("# bench_ssd on %s (%d SMs), bf16, G 1, chunk 256 (kernel chunk 64), %d timed repeats (median); floor at "
         "%.0f TFLOP/s, %.2f TB/s\n", p.name, p.multiProcessorCount, reps, peak_tf * 1e-12, peak_bw * 1e-12);
  printf("| layer | B | T | H | P | N | forward | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd GFLOP | fwd floor ms | "
         "fwd+bwd floor ms | max |y_chunk - y_rec| / max |y_rec| |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::string> notes; /* printed after the table */
  const shape shapes[] = {{"400M", 8, 4096, 64, 19, 1, 216}, {"7B", 4, 4096, 32, 64, 1, 192}};
  for (const shape &s : shapes) {
    int64_t sx[4] = {s.B, s.T, s.H, s.P}, sd[3] = {s.B, s.T, s.H}, sa[1] = {s.H}, sb[4] = {s.B, s.T, s.G, s.N};
    m2_tensor *in[5] = {dev_bf16(1, 4, sx, NAN, 1), dev_bf16(2, 3, sd, 0.01, 0.1), dev_bf16(3, 1, sa, -1.5, -0.1),
                        dev_bf16(4, 4, sb, NAN, 0.5), dev_bf16(5, 4, sb, NAN, 0.5)};
    m2_tensor *dy = dev_bf16(6, 4, sx, NAN, 1);
    const double L = 64, tok = (double)s.B * s.T * s.H, NP = (double)s.N * s.P;
    const double fl = tok * 2 * (L / 2 * s.N + L / 2 * s.P + 2 * NP);
    const double io = 2.0 * ((double)s.B * s.T * (2 * s.H * s.P + s.H + 2 * s.G * s.N) + (double)s.B * s.H * NP);
    const double ck = 4.0 * s.B * s.H * ((s.T + 63) / 64) * NP;
    const double bwd_io = 2.0 * (double)s.B * s.T * (3 * s.H * s.P + 2 * s.H + 4 * s.G * s.N) + ck;
    const double floor_f = std::max(fl / peak_tf, io / peak_bw) * 1e3;
    const double floor_fb = std::max(3 * fl / peak_tf, (io + ck + bwd_io) / peak_bw) * 1e3; /* bwd ~ 2x fwd FLOPs */
    m2_tensor *ref = NULL;
    /* recurrent, chunked (chain kernel), chunked (two-launch states), chunked (chain kernel) with the grouped
       backward */
    for (int row = 0; row < 4; row++) {
      const int chunked = row > 0;
      /* 0 for the recurrent row: the chunked kernels take both rows when on */
      m2_cuda_ssd_chunk_mode(row == 3 ? 1 : row);
      m2_cuda_ssd_bwd_grouped(row == 3);
      long before = m2_cuda_ssd_chunk_tc_calls(), gbefore = m2_cuda_ssd_bwd_grouped_calls();
      double f = time_it(chunked, in, dy, false, reps), fb = time_it(chunked, in, dy, true, reps);
      if (chunked && m2_cuda_ssd_chunk_tc_calls() == before) printf("(the chunked kernels did not apply: recurrent)\n");
      if (!chunked && m2_cuda_ssd_chunk_tc_calls() != before) printf("(the recurrent row ran the chunked kernels)\n");
      if ((row == 3) != (m2_cuda_ssd_bwd_grouped_calls() != gbefore))
        printf("(the grouped backward %s)\n", row == 3 ? "did not apply: per-head partials" : "ran");
      m2_cuda_ssd_bwd_grouped(0);
      for (int i = 0; i < 5; i++) m2_requires_grad_(in[i], false);
      fwd(chunked, in);
      double diff = NAN;
      if (!chunked) ref = m2_detach(g_y);
      else diff = rel_diff(g_y, ref);
      char dstr[32] = "-";
      if (!isnan(diff)) snprintf(dstr, sizeof dstr, "%.2e", diff);
      printf("| %s | %lld | %lld | %lld | %lld | %lld | %s | %.3f | %.3f | %.1f | %.1f | %.3f | %.3f | %s |\n", s.layer,
             (long long)s.B, (long long)s.T, (long long)s.H, (long long)s.P, (long long)s.N,
             row == 0 ? "recurrent" : row == 1 ? "chunked (chain)" : row == 2 ? "chunked (two-launch states)"
                                                                      : "chunked (chain), grouped bwd",
             f, fb, fl / f * 1e-9, fl * 1e-9, floor_f, floor_fb, dstr);
    }
    { /* the grouped backward's gradients against the per-head partials' */
      m2_cuda_ssd_chunk_mode(1);
      m2_tensor *ga[3], *gb[3];
      grads_of(1, in, dy, ga), grads_of(0, in, dy, gb);
      char line[256];
      snprintf(line, sizeof line, "%s: grouped bwd against per-head partials, max |diff| / max |ref|: dx %.2e, dB "
               "%.2e, dC %.2e (within one bf16 step, 7.8e-3, expected)", s.layer, rel_diff(ga[0], gb[0]),
               rel_diff(ga[1], gb[1]), rel_diff(ga[2], gb[2]));
      notes.push_back(line);
      for (int k = 0; k < 3; k++) m2_release(ga[k]), m2_release(gb[k]);
    }
    m2_release(g_y), m2_release(g_hT), m2_release(ref), m2_release(dy);
    g_y = g_hT = NULL;
    for (int i = 0; i < 5; i++) m2_release(in[i]);
  }
  for (const std::string &n : notes) printf("%s\n", n.c_str());
  return 0;
}
