/* bench_gdn.cu — times the Gated DeltaNet op on CUDA (bf16 inputs) at the paper's GDN layer shapes (400M: B=8
 * T=4096 H=2 K=256 V=512; 7B: H=3, B=4 as the other benchmarks' 7B rows): the recurrent kernels (cuda/ops_gdn.cu)
 * against the chunked tensor-core kernels (cuda/gdn_chunk.cu, gdn_chunk_bwd.cu, switched with m2_cuda_gdn_chunk_tc:
 * forward only with the recurrent backward, and both), forward and forward + backward through the public API
 * (m2_gdn_chunked, m2_backward of o), median of timed repeats after a warm-up (CUDA events on the device's stream).
 * Also prints how far each chunked mode's o and dq are from the recurrent kernels' (max |x - x_rec| / max |x_rec|).
 * The chunked forward + backward also with M2_GDN_BWD_V2 (m2_cuda_gdn_bwd_v2(1): prep's outputs kept from the
 * forward, k_gdn_bwy2), and both chunked modes' fwd+bwd also with the leaves' gradients reset before each repeat
 * ("grads reset"): the timed backward then ends with the op's gradients adopted as the leaves' .grad, as a layer's
 * q, k, v gradients are by the ops that made them; without the reset (the rows before) each repeat also adds them
 * into the gradients of the repeats before (m2_add, then a copy back: ~0.67 GB of bf16 traffic at 400M).
 *
 * FLOPs (the chunked algorithm's products, 2 per multiply-add, per (b, h) and token, chunk C = 64):
 *   prep  K K^T, Q K^T (2 C K), W = T K (C K), U = T V (C V)       -> 2 (3 C K + C V)
 *   scan  W S, Q~ S (2 K V), P V' (C V), K~^T V' (K V)             -> 2 (3 K V + C V)
 *   forward = B T H 2 (3 C K + 3 K V + 2 C V); 400M: 66.6 GFLOP. Forward + backward counted as 3 x forward (the
 *   usual estimate; a chunked backward does about twice the forward's products).
 * Bytes (forward, the least any kernel must move): q, k, v read and o written in bf16, 2 B T H (2 K + 2 V); plus,
 *   when the backward's states are kept (always here: inputs want gradients), B H ceil(T/64) K V fp32 written.
 *   400M: 201 MB + 537 MB of states. The backward must read q, k, v, dO and the states and write dq, dk, dv:
 *   2 B T H (4 K + 3 V) + 4 B H ceil(T/64) K V (400M: 1.27 GB with the forward's).
 * Floor = max(FLOPs / peak bf16 dense, bytes / memory bandwidth), peak 989 TFLOP/s (H100 / H200 SXM) and the
 * bandwidth from the device's memory clock and bus width; printed per row so a result can be read against it.
 * Usage: bench_gdn [reps] */
#include "m2cuda.h"
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "m2.h"
#include "cuda_backend.h"

static const m2_device GPU = {M2_CUDA, 0};

static void die(const char *what) {
  fprintf(stderr, "bench_gdn: %s failed: %s\n", what, m2_errmsg());
  exit(1);
}

/* A bf16 cuda tensor of the host values x (n of them). */
static m2_tensor *dev_bf16(int nd, const int64_t *shape, const float *x) {
  m2_tensor *c = m2_from_data(M2_F32, M2_DEV_CPU, nd, shape, x);
  m2_tensor *g = c ? m2_clone_raw(c, M2_BF16, GPU) : NULL;
  m2_release(c);
  if (!g) die("input");
  return g;
}

/* rows of d values: N(0,1) (L2-normalised when norm), else uniform in [lo, hi) */
static std::vector<float> host_vals(m2_rng *r, int64_t n, int64_t d, bool norm, double lo, double hi, bool gauss) {
  std::vector<float> x((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    double u1 = m2_rng_uniform(r), u2 = m2_rng_uniform(r);
    x[(size_t)i] = gauss ? (float)(sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(6.283185307179586 * u2))
                         : (float)(lo + (hi - lo) * u1);
  }
  if (norm)
    for (int64_t a = 0; a < n / d; a++) {
      double s = 0;
      for (int64_t i = 0; i < d; i++) s += (double)x[(size_t)(a * d + i)] * x[(size_t)(a * d + i)];
      s = 1.0 / sqrt(s + 1e-12);
      for (int64_t i = 0; i < d; i++) x[(size_t)(a * d + i)] *= (float)s;
    }
  return x;
}

struct shape { const char *layer; int64_t B, T, H, K, V; };
struct inputs { m2_tensor *q, *k, *v, *g, *beta, *dO; };

/* Median ms of reps runs of the forward (bwd false) or forward + backward; reset: the leaves' gradients released
 * before each run (outside the timed span), so the backward's gradients are adopted, not added. */
static double time_it(const inputs &in, bool bwd, int reps, bool reset = false) {
  cudaStream_t st = m2_cuda_stream(0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps + 1; i++) {
    if (reset) {
      m2_tensor *leaves[5] = {in.q, in.k, in.v, in.g, in.beta};
      for (m2_tensor *t : leaves) m2_release(t->grad), t->grad = NULL;
    }
    cudaEventRecord(a, st);
    m2_tensor *o = NULL, *hT = NULL;
    if (m2_gdn_chunked(in.q, in.k, in.v, in.g, in.beta, NULL, NULL, &o, &hT) != M2_OK) die("m2_gdn_chunked");
    if (bwd && m2_backward(o, in.dO) != M2_OK) die("m2_backward");
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    m2_release(o), m2_release(hT);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i > 0) ms.push_back(t); /* the first run warms up */
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/* max |a - b| / max |b| of two tensors of one shape */
static double rel_diff(m2_tensor *a, m2_tensor *b) {
  m2_tensor *d = m2_sub(a, b), *ad = d ? m2_square(d) : NULL, *mx = ad ? m2_max_all(ad) : NULL;
  m2_tensor *br = m2_square(b), *mb = br ? m2_max_all(br) : NULL;
  double x = NAN, y = NAN;
  if (mx && mb && m2_item(mx, &x) == M2_OK && m2_item(mb, &y) == M2_OK) x = sqrt(x / y);
  else x = NAN;
  m2_release(d), m2_release(ad), m2_release(mx), m2_release(br), m2_release(mb);
  return x;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (m2_cuda_register() != M2_OK || m2_device_count(M2_CUDA) == 0) {
    printf("bench_gdn: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  int mclk = 0, bus = 0; /* kHz, bits */
  cudaDeviceGetAttribute(&mclk, cudaDevAttrMemoryClockRate, 0);
  cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, 0);
  const double bw = 2.0 * mclk * 1e3 * bus / 8, peak = 989e12; /* bytes/s (DDR), FLOP/s bf16 dense */
  printf("# bench_gdn on %s (%d SMs, %.2f TB/s from clock x bus, peak bf16 taken as %.0f TFLOP/s), bf16 inputs, "
         "%d timed repeats (median)\n", p.name, p.multiProcessorCount, bw * 1e-12, peak * 1e-12, reps);
  printf("| layer | B | T | H | K | V | forward | pass | ms | TFLOP/s | floor ms | GFLOP | MB moved (min) | "
         "max |x - x_rec| / max |x_rec| (the recurrent kernels' x) |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const shape shapes[] = {{"400M", 8, 4096, 2, 256, 512}, {"7B", 4, 4096, 3, 256, 512}};
  for (const shape &s : shapes) {
    m2_rng r = m2_rng_make(7, 1);
    int64_t sk[4] = {s.B, s.T, s.H, s.K}, sv[4] = {s.B, s.T, s.H, s.V}, sg[3] = {s.B, s.T, s.H};
    int64_t nk = s.B * s.T * s.H * s.K, nv = s.B * s.T * s.H * s.V, ng = s.B * s.T * s.H;
    inputs in;
    in.q = dev_bf16(4, sk, host_vals(&r, nk, s.K, true, 0, 0, true).data());
    in.k = dev_bf16(4, sk, host_vals(&r, nk, s.K, true, 0, 0, true).data());
    in.v = dev_bf16(4, sv, host_vals(&r, nv, s.V, false, 0, 0, true).data());
    in.g = dev_bf16(3, sg, host_vals(&r, ng, 1, false, -0.3, -0.01, false).data());
    in.beta = dev_bf16(3, sg, host_vals(&r, ng, 1, false, 0.05, 0.95, false).data());
    in.dO = dev_bf16(4, sv, host_vals(&r, nv, s.V, false, 0, 0, true).data());
    m2_tensor *leaves[5] = {in.q, in.k, in.v, in.g, in.beta};
    for (m2_tensor *t : leaves) m2_requires_grad_(t, true);
    const double C = 64, NS = ceil((double)s.T / 64);
    const double flop = (double)s.B * s.T * s.H * 2 * (3 * C * s.K + 3.0 * s.K * s.V + 2 * C * s.V);
    const double bytes = 2.0 * s.B * s.T * s.H * (2 * s.K + 2 * s.V) + 4.0 * s.B * s.H * NS * s.K * s.V;
    const double bwd_bytes = 2.0 * s.B * s.T * s.H * (4 * s.K + 3 * s.V) + 4.0 * s.B * s.H * NS * s.K * s.V;
    m2_tensor *o_rec = NULL, *dq_rec = NULL;
    /* recurrent; chunked forward + recurrent backward; both chunked; both chunked with M2_GDN_BWD_V2 */
    const int modes[4] = {0, 2, 1, 1}, v2s[4] = {0, 0, 0, 1};
    for (int mi = 0; mi < 4; mi++) {
      const int mode = modes[mi], v2 = v2s[mi];
      m2_cuda_gdn_chunk_tc(mode);
      m2_cuda_gdn_bwd_v2(v2);
      double f = mode == 1 && !v2 ? NAN : time_it(in, false, reps), fb = time_it(in, true, reps);
      double fbr = mode == 1 ? time_it(in, true, reps, true) : NAN; /* leaf gradients reset before each run */
      /* how far this mode's output and dq are from the recurrent ones */
      m2_tensor *o = NULL, *hT = NULL;
      if (m2_gdn_chunked(in.q, in.k, in.v, in.g, in.beta, NULL, NULL, &o, &hT) != M2_OK) die("m2_gdn_chunked");
      m2_release(in.q->grad);
      in.q->grad = NULL;
      if (m2_backward(o, in.dO) != M2_OK || !in.q->grad) die("m2_backward");
      char dstr[64] = "-";
      /* a copy, not a detach: a detached grad shares storage with q->grad, which the next mode's timed backward
       * passes accumulate into (the first GPU run printed dq 8.9e-01 = 8/9 for nine accumulated passes) */
      if (!mode) o_rec = m2_detach(o), dq_rec = m2_clone_raw(in.q->grad, in.q->grad->dtype, in.q->grad->device);
      else snprintf(dstr, sizeof dstr, "o %.2e, dq %.2e", rel_diff(o, o_rec), rel_diff(in.q->grad, dq_rec));
      m2_release(o), m2_release(hT);
      const char *fw = v2 ? "chunked, M2_GDN_BWD_V2=1" : mode ? "chunked (tensor cores)" : "recurrent";
      const char *bwn = mode == 1 ? "fwd+bwd (chunked bwd)" : "fwd+bwd (recurrent bwd)";
      for (int pass = 0; pass < 3; pass++) {
        double ms = pass == 2 ? fbr : pass ? fb : f, fl = pass ? 3 * flop : flop, by = pass ? bytes + bwd_bytes : bytes;
        if (isnan(ms)) continue; /* mode 1's forward is mode 2's; grads reset: the chunked backward's rows only */
        double floor_ms = 1e3 * std::max(fl / peak, by / bw);
        printf("| %s | %lld | %lld | %lld | %lld | %lld | %s | %s%s | %.3f | %.1f | %.3f | %.1f | %.0f | %s |\n",
               s.layer, (long long)s.B, (long long)s.T, (long long)s.H, (long long)s.K, (long long)s.V, fw,
               pass ? bwn : "fwd", pass == 2 ? ", grads reset" : "", ms, fl / ms * 1e-9, floor_ms, fl * 1e-9,
               by * 1e-6, dstr);
      }
    }
    m2_cuda_gdn_bwd_v2(0);
    m2_cuda_gdn_chunk_tc(0);
    m2_release(o_rec), m2_release(dq_rec);
    m2_release(in.q), m2_release(in.k), m2_release(in.v), m2_release(in.g), m2_release(in.beta), m2_release(in.dO);
  }
  return 0;
}
