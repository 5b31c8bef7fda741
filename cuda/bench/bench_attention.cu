/* bench_attention.cu — times the attention op on CUDA (causal, head dim 64) at the paper's attention-layer shapes:
 * the fp32 kernels (cuda/ops_attention.cu, f32 products) against the tensor-core kernels (cuda/attention_tc.cu,
 * bf16 products, m2_set_matmul_precision), forward and forward + backward through the public API (m2_attention,
 * m2_backward), median of timed repeats after a warm-up (CUDA events on the device's stream). TFLOP/s counts the
 * causal products as flash-attention papers do: forward 2 matmuls of B H D T^2 / 2 multiply-adds each, backward 5
 * (this backward runs 7: S and dP are recomputed by both the dq and the dk/dv kernels). Also prints how far the two
 * paths' outputs are apart. Two rows per shape have the forward on the Hopper warpgroup kernel (cuda/attention_wgmma.cu,
 * the default on sm_90; 1 then 2: its softmax / P v overlap), the others run with it off (the mma.sync forward).
 * The tensor-core rows come with the M2_ATTN_V2 path off (the default) and on
 * (m2_cuda_attn_v2: operands read in place, one-pass backward with atomic dq: 5 products), for f32 q, k, v and for
 * bf16 ones (a model with bf16 activations: off, the dispatcher converts them to f32 and o and the gradients back;
 * on, the kernels read and write bf16); the last three rows take v2 with the warpgroup forward on its in-place
 * operands (no packing), the very last one also with the warpgroup backward (cuda/attention_wgmma_bwd.cu,
 * M2_ATTN_BWD_WGMMA, off by default). Usage: bench_attention [reps] */
#include "m2cuda.h"
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "m2.h"
#include "cuda_backend.h"

static void die(const char *what) {
  fprintf(stderr, "bench_attention: %s failed: %s\n", what, m2_errmsg());
  exit(1);
}

static m2_tensor *dev_randn(uint64_t seed, const int64_t *shape) {
  m2_rng r = m2_rng_make(seed, 1);
  m2_tensor *c = m2_randn(&r, M2_F32, M2_DEV_CPU, 4, shape);
  m2_tensor *g = c ? m2_clone_raw(c, M2_F32, (m2_device){M2_CUDA, 0}) : NULL;
  m2_release(c);
  if (!g) die("input");
  return g;
}

struct shape { const char *layer; int64_t B, T, H, D; };

/* Median ms of reps runs of fwd (bwd = false) or fwd + bwd. */
static double time_it(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *dO, bool bwd, int reps) {
  cudaStream_t st = m2_cuda_stream(0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps + 1; i++) {
    cudaEventRecord(a, st);
    m2_tensor *o = m2_attention(q, k, v, NULL);
    if (!o) die("m2_attention");
    if (bwd && m2_backward(o, dO) != M2_OK) die("m2_backward");
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    m2_release(o);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i > 0) ms.push_back(t); /* the first run warms up */
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (m2_cuda_register() != M2_OK || m2_device_count(M2_CUDA) == 0) {
    printf("bench_attention: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  printf("# bench_attention on %s (%d SMs), causal, head dim 64, %d timed repeats (median)\n", p.name,
         p.multiProcessorCount, reps);
  printf("| layer | B | T | heads | products | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | max |o - o_ref| / max |o_ref| (ref: the f32 row, else the mma.sync one) |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|\n");
  const shape shapes[] = {{"400M", 2, 4096, 16, 64}, {"400M", 8, 4096, 16, 64}, {"7B", 4, 4096, 24, 64}};
  for (const shape &s : shapes) {
    int64_t sh[4] = {s.B, s.T, s.H, s.D};
    m2_tensor *q = dev_randn(1, sh), *k = dev_randn(2, sh), *v = dev_randn(3, sh), *dO = dev_randn(4, sh);
    m2_requires_grad_(q, true), m2_requires_grad_(k, true), m2_requires_grad_(v, true);
    double mac = (double)s.B * s.H * s.D * s.T * (s.T + 1) / 2; /* multiply-adds of one causal product */
    m2_tensor *qb = m2_clone_raw(q, M2_BF16, q->device), *kb = m2_clone_raw(k, M2_BF16, k->device),
              *vb = m2_clone_raw(v, M2_BF16, v->device), *dOb = m2_clone_raw(dO, M2_BF16, dO->device);
    if (!qb || !kb || !vb || !dOb) die("bf16 inputs");
    m2_requires_grad_(qb, true), m2_requires_grad_(kb, true), m2_requires_grad_(vb, true);
    /* rows: 0 f32 products; 1, 2 bf16 products on f32 inputs, v2 off / on; 3, 4 the same on bf16 inputs (all with
       the warpgroup forward off); 5, 6 rows 1 and 3 with the warpgroup forward (1), 7 row 1 with its overlap (2);
       8, 9 rows 2 and 4 (v2) with the warpgroup forward on v2's in-place operands; 10 row 9 with the warpgroup
       backward too */
    enum { NROW = 11 };
    static const char *rows[NROW] = {"f32", "bf16 (tensor cores)", "bf16, M2_ATTN_V2", "bf16 in, bf16 products",
                                     "bf16 in, M2_ATTN_V2", "bf16 (wgmma fwd)", "bf16 in, wgmma fwd",
                                     "bf16 (wgmma fwd, overlap)", "bf16, M2_ATTN_V2, wgmma fwd",
                                     "bf16 in, M2_ATTN_V2, wgmma fwd", "bf16 in, M2_ATTN_V2, wgmma fwd+bwd"};
    static const int wg_of[NROW] = {0, 0, 0, 0, 0, 1, 1, 2, 1, 1, 1}, b16_of[NROW] = {0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1},
                     v2_of[NROW] = {0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1}, bw_of[NROW] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    m2_tensor *ref = NULL;
    for (int tc = 0; tc < NROW; tc++) {
      if (!tc && s.B > 2) continue; /* the fp32 kernels only at the smallest shape (they take ~50 ms there) */
      if (wg_of[tc] && !m2_cuda_attention_wgmma_device()) continue;
      m2_set_matmul_precision(tc ? M2_MM_BF16 : M2_MM_F32);
      m2_cuda_attn_v2(v2_of[tc]);
      const int was = m2_cuda_attention_wgmma(wg_of[tc]), bwas = m2_cuda_attention_bwd_wgmma(bw_of[tc]);
      const bool b16 = b16_of[tc];
      m2_tensor *Q = b16 ? qb : q, *K = b16 ? kb : k, *V = b16 ? vb : v, *G = b16 ? dOb : dO;
      double f = time_it(Q, K, V, G, false, reps), fb = time_it(Q, K, V, G, true, reps);
      double diff = NAN;
      m2_tensor *o = m2_attention(Q, K, V, NULL);
      m2_cuda_attention_wgmma(was);
      m2_cuda_attention_bwd_wgmma(bwas);
      if (!o) die("m2_attention");
      if (!tc) ref = m2_detach(o);
      else if (tc == 1 && !ref) ref = m2_detach(o); /* no f32 row: the other rows are compared with this one */
      else if (ref) {
        m2_tensor *dd = m2_sub(o, ref), *ad = dd ? m2_square(dd) : NULL, *mx = ad ? m2_max_all(ad) : NULL;
        m2_tensor *ar = m2_square(ref), *mr = ar ? m2_max_all(ar) : NULL;
        double a2 = NAN, r2 = NAN;
        if (mx && mr && m2_item(mx, &a2) == M2_OK && m2_item(mr, &r2) == M2_OK) diff = sqrt(a2 / r2);
        m2_release(dd), m2_release(ad), m2_release(mx), m2_release(ar), m2_release(mr);
      }
      m2_release(o);
      char dstr[32] = "-";
      if (!isnan(diff)) snprintf(dstr, sizeof dstr, "%.2e", diff);
      printf("| %s | %lld | %lld | %lld | %s | %.3f | %.3f | %.1f | %.1f | %s |\n", s.layer, (long long)s.B,
             (long long)s.T, (long long)s.H, rows[tc], f, fb, 4 * mac / f * 1e-9, 14 * mac / fb * 1e-9, dstr);
    }
    m2_set_matmul_precision(M2_MM_F32);
    m2_cuda_attn_v2(0);
    m2_release(ref), m2_release(q), m2_release(k), m2_release(v), m2_release(dO);
    m2_release(qb), m2_release(kb), m2_release(vb), m2_release(dOb);
  }
  return 0;
}
