/* bench_elementwise.cu — how close the memory-bound ops come to the memory bandwidth, at the 400M model's sizes
 * (B = 8, T = 4096: 32768 rows; widths 1024 = d, 1344 = N V, 2816 = the MLP's hidden, 2900 = the M2RNN in_proj).
 * Each row: an op through the public API (forward only, no graph), the bytes it must move (every input read once,
 * every output written once), the median time of timed repeats after a warm-up (CUDA events on the device's
 * stream), the GB/s that makes and its share of the device-to-device copy ceiling measured in shared/GPU.md
 * (4.27 TB/s, read + write). Session 8 found the f32 <-> bf16 copies (one element a thread) far below that ceiling
 * (a 4-wide rewrite took 35 ms off a 588 ms training step); this table is where to look for the next such case.
 * Rows marked [vec] run with the M2_VEC_MEMBOUND kernels on (m2_cuda_vec_membound(1): 16-byte words, several in flight
 * a thread), beside the same op with them off; the bf16 rows are the sizes of the bf16-activation training step.
 * "rmsnorm fwd+bwd" times the forward and the backward of x (no weight gradient): x, y, dy, dx move (5 tensors).
 * Usage: bench_elementwise [reps] */
#include "m2cuda.h"
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "m2.h"
#include "cuda_backend.h"

static const double CEILING_GBS = 4270.0; /* shared/GPU.md: device-to-device copy, read + write */

static void die(const char *what) {
  fprintf(stderr, "bench_elementwise: %s failed: %s\n", what, m2_errmsg());
  exit(1);
}

static m2_tensor *dev_randn(uint64_t seed, int64_t rows, int64_t cols, m2_dtype dt) {
  m2_rng r = m2_rng_make(seed, 1);
  int64_t sh[2] = {rows, cols};
  m2_tensor *c = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sh);
  m2_tensor *g = c ? m2_clone_raw(c, dt, (m2_device){M2_CUDA, 0}) : NULL;
  m2_release(c);
  if (!g) die("input");
  return g;
}

typedef m2_tensor *(*op_fn)(void *ctx);

/* Median ms of reps calls (after one warm-up); every call's result is released. */
static double time_op(op_fn f, void *ctx, int reps) {
  cudaStream_t st = m2_cuda_stream(0);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps + 1; i++) {
    cudaEventRecord(a, st);
    m2_tensor *o = f(ctx);
    if (!o) die("op");
    cudaEventRecord(b, st);
    cudaEventSynchronize(b);
    m2_release(o);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (i > 0) ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct ctx { m2_tensor *x, *y, *w; m2_dtype dt; int64_t sizes[3]; };
static m2_tensor *f_to(void *c) { ctx *k = (ctx *)c; return m2_to_dtype(k->x, k->dt); }
static m2_tensor *f_add(void *c) { ctx *k = (ctx *)c; return m2_add(k->x, k->y); }
static m2_tensor *f_mul(void *c) { ctx *k = (ctx *)c; return m2_mul(k->x, k->y); }
static m2_tensor *f_silu(void *c) { return m2_silu(((ctx *)c)->x); }
static m2_tensor *f_exp(void *c) { return m2_exp(((ctx *)c)->x); }
static m2_tensor *f_swiglu(void *c) { ctx *k = (ctx *)c; return m2_swiglu(k->x, k->y); }
static m2_tensor *f_rms(void *c) { ctx *k = (ctx *)c; return m2_rmsnorm(k->x, k->w, 1e-5); }
static m2_tensor *f_split(void *c) { /* the three parts as contiguous tensors (what the M2RNN layer's split makes) */
  ctx *k = (ctx *)c;
  m2_tensor *outs[3] = {NULL, NULL, NULL};
  if (m2_split(k->x, 1, 3, k->sizes, outs) != M2_OK) return NULL;
  m2_tensor *c0 = m2_contiguous(outs[0]), *c1 = m2_contiguous(outs[1]), *c2 = m2_contiguous(outs[2]);
  for (int i = 0; i < 3; i++) m2_release(outs[i]);
  m2_release(c1), m2_release(c2);
  return c0;
}

/* the forward and backward of rmsnorm (x->grad taken back each call: no accumulation) */
static m2_tensor *f_rms_fb(void *c) {
  ctx *k = (ctx *)c;
  m2_no_grad_pop();
  m2_tensor *y = m2_rmsnorm(k->x, k->w, 1e-5);
  m2_status s = y ? m2_backward(y, k->y) : M2_ERR_VALUE;
  m2_release(y);
  m2_tensor *g = k->x->grad;
  k->x->grad = NULL;
  m2_no_grad_push();
  return s == M2_OK ? g : NULL;
}

static void row(const char *op, const char *shape, double bytes, double ms) {
  double gbs = bytes / (ms * 1e-3) / 1e9;
  printf("| %-28s | %-22s | %8.1f | %7.3f | %7.0f | %5.0f%% |\n", op, shape, bytes / 1e6, ms, gbs, 100 * gbs / CEILING_GBS);
}
/* the row with the M2_VEC_MEMBOUND kernels off, then on ([vec]) */
static void row2(const char *op, const char *shape, double bytes, op_fn f, void *c, int reps) {
  char name[64];
  m2_cuda_vec_membound(0);
  row(op, shape, bytes, time_op(f, c, reps));
  snprintf(name, sizeof name, "%s [vec]", op);
  m2_cuda_vec_membound(1);
  row(name, shape, bytes, time_op(f, c, reps));
  m2_cuda_vec_membound(0);
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 10;
  if (m2_cuda_register() != M2_OK || m2_device_count(M2_CUDA) == 0) {
    printf("bench_elementwise: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  printf("# bench_elementwise on %s: forward calls, median of %d; %% of the %.2f TB/s copy ceiling (GPU.md)\n", p.name,
         reps, CEILING_GBS / 1000);
  printf("| op | shape | MB moved | ms | GB/s | ceiling |\n|---|---|---|---|---|---|\n");
  m2_no_grad_push();
  const int64_t R = 32768;
  const int64_t widths[3] = {1024, 1344, 2816};
  for (int wi = 0; wi < 3; wi++) {
    const int64_t C = widths[wi];
    char shape[64];
    snprintf(shape, sizeof shape, "(%lld, %lld) f32", (long long)R, (long long)C);
    const double n = (double)R * C, f4 = 4 * n, b2 = 2 * n;
    ctx k = {dev_randn(1, R, C, M2_F32), dev_randn(2, R, C, M2_F32), NULL, M2_BF16, {0, 0, 0}};
    row("to_dtype f32 -> bf16", shape, f4 + b2, time_op(f_to, &k, reps));
    ctx kb = {m2_to_dtype(k.x, M2_BF16), NULL, NULL, M2_F32, {0, 0, 0}};
    row("to_dtype bf16 -> f32", shape, b2 + f4, time_op(f_to, &kb, reps));
    row("add (same shape)", shape, 3 * f4, time_op(f_add, &k, reps));
    row("mul (same shape)", shape, 3 * f4, time_op(f_mul, &k, reps));
    row2("silu", shape, 2 * f4, f_silu, &k, reps);
    row2("exp", shape, 2 * f4, f_exp, &k, reps);
    row("swiglu", shape, 3 * f4, time_op(f_swiglu, &k, reps));
    int64_t sw[1] = {C};
    m2_tensor *wc = m2_full(M2_F32, M2_DEV_CPU, 1, sw, 1.0);
    k.w = wc ? m2_clone_raw(wc, M2_F32, (m2_device){M2_CUDA, 0}) : NULL;
    if (!k.w) die("weight");
    row2("rmsnorm (weight)", shape, 2 * f4, f_rms, &k, reps);
    /* bf16 (the bf16-activation step): the unary maps and rmsnorm forward, rmsnorm forward + backward */
    char sb[64];
    snprintf(sb, sizeof sb, "(%lld, %lld) bf16", (long long)R, (long long)C);
    m2_tensor *wb = m2_to_dtype(k.w, M2_BF16);
    ctx k2 = {m2_to_dtype(k.x, M2_BF16), m2_to_dtype(k.y, M2_BF16), wb, M2_BF16, {0, 0, 0}};
    if (!k2.x || !k2.y || !wb) die("bf16 inputs");
    row2("silu", sb, 2 * b2, f_silu, &k2, reps);
    row2("exp", sb, 2 * b2, f_exp, &k2, reps);
    row2("rmsnorm (weight)", sb, 2 * b2, f_rms, &k2, reps);
    if (m2_requires_grad_(k2.x, true) != M2_OK) die("requires_grad");
    row2("rmsnorm fwd+bwd (weight)", sb, 5 * b2, f_rms_fb, &k2, reps);
    m2_release(k2.x), m2_release(k2.y), m2_release(wb);
    m2_release(wc), m2_release(k.w), m2_release(k.x), m2_release(k.y), m2_release(kb.x);
  }
  ctx ks = {dev_randn(3, R, 2900, M2_F32), NULL, NULL, M2_F32, {1472, 84, 1344}};
  row2("split 2900 -> 1472/84/1344", "(32768, 2900) f32", 2 * 4.0 * R * 2900, f_split, &ks, reps);
  ctx ksb = {m2_to_dtype(ks.x, M2_BF16), NULL, NULL, M2_BF16, {1472, 84, 1344}};
  if (!ksb.x) die("bf16 split input");
  row2("split 2900 -> 1472/84/1344", "(32768, 2900) bf16", 2 * 2.0 * R * 2900, f_split, &ksb, reps);
  m2_release(ks.x), m2_release(ksb.x);
  m2_no_grad_pop();
  return 0;
}
