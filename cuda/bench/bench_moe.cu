/* bench_moe.cu — the paper's 7B MoE layer on one GPU (DESIGN 3.5 and 4): d 1536, 128 experts top-8, expert SwiGLU
 * 256, shared expert SwiGLU 1024, B x T = 8 x 4096 tokens by default; f32 storage with bf16 products (as training
 * runs it: m2.train precision = "bf16"). The layer is what lua/m2/layers/moe.lua composes: router linear, moe_route,
 * moe_permute, the experts' gate / up / down as moe_grouped_matmul (one cuBLAS GEMM per expert) with swiglu, the
 * weighted moe_unpermute, plus the shared expert (three linears and swiglu).
 * Rows: the forward (no graph), forward + backward (a random output gradient into every parameter and x), and the
 * grouped GEMMs alone (the three forward products, and the six of the backward, timed through the ops). Columns:
 * median ms after a warm-up (CUDA events on the device's stream), tokens/s, and the TFLOP/s of the GEMM FLOPs counted
 * in that row (routed experts 2 N k d h per product, shared expert 2 N d H per product, router 2 N d E) with its share
 * of the 687 TFLOP/s bf16 GEMM ceiling measured in shared/GPU.md. Every row twice: the per-expert cuBLAS path (the
 * offsets read to the host, the default) and the grouped tensor-core kernels (M2_MOE_GROUPED=1, cuda/moe_gmm_tc.cu).
 * Usage: bench_moe [tokens [reps]] */
#include "m2cuda.h"
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "m2.h"
#include "cuda_backend.h"

static const double CEILING_TFLOPS = 687.0; /* shared/GPU.md: bf16 GEMM 8192^3 through cuBLAS */
static const int64_t D = 1536, E = 128, K = 8, H = 256, HS = 1024;

static void die(const char *what) {
  fprintf(stderr, "bench_moe: %s failed: %s\n", what, m2_errmsg());
  exit(1);
}

static m2_tensor *dev_randn(uint64_t seed, int nd, int64_t s0, int64_t s1, int64_t s2, double std, bool grad) {
  m2_rng r = m2_rng_make(seed, 1);
  const int64_t shape[3] = {s0, s1, s2};
  m2_tensor *c = m2_randn(&r, M2_F32, M2_DEV_CPU, nd, shape);
  if (c && std != 1.0) {
    m2_tensor *s = m2_scale(c, std);
    m2_release(c);
    c = s;
  }
  m2_tensor *g = c ? m2_clone_raw(c, M2_F32, (m2_device){M2_CUDA, 0}) : NULL;
  m2_release(c);
  if (!g) die("input");
  if (grad) m2_requires_grad_(g, true);
  return g;
}

struct layer {
  int64_t N;
  m2_tensor *x, *router, *gate, *up, *down, *sg, *su, *sd; /* x (N, D); experts (E, H, D) / (E, D, H); shared (HS, D) */
  m2_tensor *dy;                                           /* (N, D) */
  m2_tensor *xp, *off, *s;                                 /* a forward's permuted rows, offsets, swiglu (for GEMM rows) */
};

#define TRY(p) \
  if (!(p)) die(#p)

/* the layer's forward -> y (N, D); keep: hand back xp, offsets and the experts' swiglu in L (new refs) */
static m2_tensor *forward(layer *L, bool keep) {
  m2_tensor *lg, *w = NULL, *ix = NULL, *aux = NULL, *xp = NULL, *pos = NULL, *off = NULL;
  TRY(lg = m2_linear(L->x, L->router, NULL));
  if (m2_moe_route(lg, K, &w, &ix, &aux, NULL) != M2_OK) die("moe_route");
  if (m2_moe_permute(L->x, ix, E, &xp, &pos, &off) != M2_OK) die("moe_permute");
  m2_tensor *a, *b, *s, *yp, *y, *ha, *hb, *hs, *ys, *out;
  TRY(a = m2_moe_grouped_matmul(xp, L->gate, off));
  TRY(b = m2_moe_grouped_matmul(xp, L->up, off));
  TRY(s = m2_swiglu(a, b));
  TRY(yp = m2_moe_grouped_matmul(s, L->down, off));
  TRY(y = m2_moe_unpermute(yp, w, pos));
  TRY(ha = m2_linear(L->x, L->sg, NULL));
  TRY(hb = m2_linear(L->x, L->su, NULL));
  TRY(hs = m2_swiglu(ha, hb));
  TRY(ys = m2_linear(hs, L->sd, NULL));
  TRY(out = m2_add(y, ys));
  if (keep) L->xp = xp, L->off = off, L->s = s, m2_retain(xp), m2_retain(off), m2_retain(s);
  m2_release(lg), m2_release(w), m2_release(ix), m2_release(aux), m2_release(xp), m2_release(pos), m2_release(off);
  m2_release(a), m2_release(b), m2_release(s), m2_release(yp), m2_release(y), m2_release(ha), m2_release(hb);
  m2_release(hs), m2_release(ys);
  return out;
}

typedef void (*step_fn)(layer *L);
static void fwd_only(layer *L) {
  m2_no_grad_push();
  m2_tensor *y = forward(L, false);
  m2_no_grad_pop();
  m2_release(y);
}
static void fwd_bwd(layer *L) {
  m2_tensor *y = forward(L, false);
  if (m2_backward(y, L->dy) != M2_OK) die("backward");
  m2_release(y);
  m2_tensor *ps[] = {L->x, L->router, L->gate, L->up, L->down, L->sg, L->su, L->sd};
  for (m2_tensor *p : ps) m2_release(p->grad), p->grad = NULL;
}
static void gmm_fwd(layer *L) { /* the three forward products of the experts */
  m2_no_grad_push();
  m2_tensor *a = m2_moe_grouped_matmul(L->xp, L->gate, L->off), *b = m2_moe_grouped_matmul(L->xp, L->up, L->off);
  m2_tensor *c = m2_moe_grouped_matmul(L->s, L->down, L->off);
  m2_no_grad_pop();
  if (!a || !b || !c) die("grouped matmul");
  m2_release(a), m2_release(b), m2_release(c);
}
static void gmm_fwd_bwd(layer *L) { /* the same with their six backward products (dx and dw of each) */
  m2_tensor *xp = m2_alias(L->xp), *s = m2_alias(L->s);
  m2_requires_grad_(xp, true), m2_requires_grad_(s, true);
  m2_tensor *a = m2_moe_grouped_matmul(xp, L->gate, L->off), *b = m2_moe_grouped_matmul(xp, L->up, L->off);
  m2_tensor *c = m2_moe_grouped_matmul(s, L->down, L->off);
  if (!a || !b || !c) die("grouped matmul");
  m2_tensor *sa = m2_sum_all(a), *sb = m2_sum_all(b), *sc = m2_sum_all(c), *t = m2_add(sa, sb), *l = m2_add(t, sc);
  if (!l || m2_backward(l, NULL) != M2_OK) die("grouped matmul backward");
  m2_release(a), m2_release(b), m2_release(c), m2_release(sa), m2_release(sb), m2_release(sc), m2_release(t);
  m2_release(l), m2_release(xp), m2_release(s);
  m2_tensor *ps[] = {L->gate, L->up, L->down};
  for (m2_tensor *p : ps) m2_release(p->grad), p->grad = NULL;
}

/* median ms of reps calls after one warm-up */
static double time_step(step_fn f, layer *L, int reps) {
  cudaStream_t st = m2_cuda_stream(0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps + 1; i++) {
    cudaEventRecord(a, st);
    f(L);
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i > 0) ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

static void row(const char *what, double ms, int64_t N, double gflop) {
  double tflops = gflop / ms; /* GFLOP / ms = TFLOP/s */
  printf("| %s | %.2f | %.0f k | %.0f | %.0f%% |\n", what, ms, N / ms, tflops, 100 * tflops / CEILING_TFLOPS);
}

int main(int argc, char **argv) {
  const int64_t N = argc > 1 ? atoll(argv[1]) : 8 * 4096;
  const int reps = argc > 2 ? atoi(argv[2]) : 10;
  if (m2_cuda_register() != M2_OK || m2_device_count(M2_CUDA) == 0) {
    printf("bench_moe: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  m2_set_matmul_precision(M2_MM_BF16);
  layer L = {N};
  const double std = 0.02;
  L.x = dev_randn(1, 2, N, D, 0, 1.0, true);
  L.router = dev_randn(2, 2, E, D, 0, std, true);
  L.gate = dev_randn(3, 3, E, H, D, std, true);
  L.up = dev_randn(4, 3, E, H, D, std, true);
  L.down = dev_randn(5, 3, E, D, H, std, true);
  L.sg = dev_randn(6, 2, HS, D, 0, std, true);
  L.su = dev_randn(7, 2, HS, D, 0, std, true);
  L.sd = dev_randn(8, 2, D, HS, 0, std, true);
  L.dy = dev_randn(9, 2, N, D, 0, 1.0, false);
  m2_no_grad_push();
  m2_release(forward(&L, true)); /* xp, offsets and swiglu rows for the GEMM-only rows */
  m2_no_grad_pop();
  const double routed = 2.0 * N * K * D * H / 1e9, shared = 2.0 * N * D * HS / 1e9, router = 2.0 * N * D * E / 1e9;
  const double fwd_gf = 3 * routed + 3 * shared + router;
  printf("# bench_moe on %s: 7B MoE layer, %lld tokens, d %lld, %lld experts top-%lld, expert hidden %lld, shared %lld;"
         " f32 storage, bf16 products; median of %d\n", p.name, (long long)N, (long long)D, (long long)E, (long long)K,
         (long long)H, (long long)HS, reps);
  printf("| what | ms | tokens/s | GEMM TFLOP/s | of %.0f |\n|---|---|---|---|---|\n", CEILING_TFLOPS);
  m2_mem_reset_peak(M2_CUDA);
  for (int grouped = 0; grouped < 2; grouped++) {
    setenv("M2_MOE_GROUPED", grouped ? "1" : "0", 1);
    const char *path = grouped ? "grouped kernels" : "per-expert cuBLAS";
    char what[128];
    snprintf(what, sizeof what, "layer forward, %s", path);
    row(what, time_step(fwd_only, &L, reps), N, fwd_gf);
    snprintf(what, sizeof what, "layer forward + backward, %s", path);
    row(what, time_step(fwd_bwd, &L, reps), N, 3 * fwd_gf);
    snprintf(what, sizeof what, "expert GEMMs, forward (3 products), %s", path);
    row(what, time_step(gmm_fwd, &L, reps), N, 3 * routed);
    snprintf(what, sizeof what, "expert GEMMs, forward + backward (9), %s", path);
    row(what, time_step(gmm_fwd_bwd, &L, reps), N, 9 * routed);
  }
  unsetenv("M2_MOE_GROUPED");
  printf("\npeak device memory %.1f GiB\n", m2_mem_peak(M2_CUDA) / (double)(1 << 30));
  m2_release(L.xp), m2_release(L.off), m2_release(L.s);
  m2_tensor *ps[] = {L.x, L.router, L.gate, L.up, L.down, L.sg, L.su, L.sd, L.dy};
  for (m2_tensor *t : ps) m2_release(t);
  return 0;
}
