/* bench_m2rnn.cu — times the fused M2RNN kernels (cuda/m2rnn.h) on the paper's layer shapes (400M:
 * B=8 T=4096 N=84 K=64 V=16; 7B: B=4 N=132) and prints a table: median of timed repeats (CUDA events,
 * after warm-up) for each variant, against the Triton reference figures of shared/GPU.md. Also checks,
 * at full size, that the fast path agrees with the general fallback (a race or indexing error there
 * shows as a large difference). Each layer's attributes (m2_m2rnn_attr: its shape, grad_clip 1, the op's default
 * ckpt_every) are written out valid here, so the benchmark links no more of core than status.c
 * (cuda/bench/profile_m2rnn.sh); variants change the tuning or, for the checkpoint spacing, a copy of them.
 * Usage: bench_m2rnn [reps] */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>
#include "m2rnn.h"

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)
#define MT(x)                                                                                  \
  do {                                                                                         \
    if ((x) != M2_OK) {                                                                        \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, m2_errmsg());                \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

/* ---- random fill on the device (hash -> approx. normal from 4 uniforms) ---- */
__device__ float hrand(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  float s = 0.f;
  for (int r = 0; r < 4; r++) {
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull, x ^= x >> 33;
    s += (float)(x >> 40) * (1.f / 16777216.f);
  }
  return (s - 2.f) * 1.7320508f; /* mean 0, variance 1 */
}
__global__ void fill_bf16(uint16_t *p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = scale * hrand(i, seed);
    uint32_t u = __float_as_uint(v);
    p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}
/* mode 0: scale * N(0,1); 1: gate in (0.05, 0.99); 2: identity + scale * N(0,1) for (n, 16, 16) */
__global__ void fill_f32(float *p, size_t n, uint32_t seed, float scale, int mode) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float r = hrand(i, seed);
    if (mode == 1) p[i] = 0.05f + 0.94f / (1.f + expf(-2.f * r));
    else if (mode == 2) p[i] = scale * r + ((i % 256) / 16 == (i % 16) ? 0.8f : 0.f);
    else p[i] = scale * r;
  }
}

template <typename T>
static T *dalloc(size_t n) {
  T *p = nullptr;
  CK(cudaMalloc(&p, n * sizeof(T) + 256));
  return p;
}

struct Layer {
  const char *name;
  m2_m2rnn_attr d; /* shape, grad_clip 1 (the paper's), ckpt_every M2_M2RNN_CKPT_EVERY (the op's default) */
  double triton_fwd, triton_fb; /* ms, shared/GPU.md */
  uint16_t *q, *k, *v, *y, *dy, *dq, *dk, *dv;
  float *W, *f, *hT, *ckpt, *dW, *df, *dh0, *dhT;
  void *work;
  size_t work_bytes;
};

static void layer_alloc(Layer &L) {
  const m2_m2rnn_attr &d = L.d;
  const size_t BT = (size_t)d.B * d.T, KV = (size_t)d.K * d.V;
  L.q = dalloc<uint16_t>(BT * d.Nq * d.K), L.k = dalloc<uint16_t>(BT * d.Nk * d.K);
  L.v = dalloc<uint16_t>(BT * d.Nv * d.V), L.y = dalloc<uint16_t>(BT * d.N * d.V), L.dy = dalloc<uint16_t>(BT * d.N * d.V);
  L.dq = dalloc<uint16_t>(BT * d.Nq * d.K), L.dk = dalloc<uint16_t>(BT * d.Nk * d.K), L.dv = dalloc<uint16_t>(BT * d.Nv * d.V);
  L.W = dalloc<float>((size_t)d.Nw * d.V * d.V), L.f = dalloc<float>(BT * d.Nf), L.hT = dalloc<float>((size_t)d.B * d.N * KV);
  L.dW = dalloc<float>((size_t)d.Nw * d.V * d.V), L.df = dalloc<float>(BT * d.Nf), L.dh0 = dalloc<float>((size_t)d.B * d.N * KV);
  L.dhT = dalloc<float>((size_t)d.B * d.N * KV);
  m2_m2rnn_attr d64 = d, d8 = d; /* 8: the smallest interval benched */
  d64.ckpt_every = 64, d8.ckpt_every = 8;
  m2_m2rnn_cuda_tuning og = {M2_M2RNN_GENERAL}, o32 = {M2_M2RNN_FAST};
  size_t ck = std::max(m2_m2rnn_ckpt_floats(&d64), m2_m2rnn_ckpt_floats(&d8));
  L.ckpt = dalloc<float>(ck);
  L.work_bytes = std::max(m2_m2rnn_bwd_work_bytes(&d64, &og), m2_m2rnn_bwd_work_bytes(&d8, &o32));
  L.work = dalloc<char>(L.work_bytes);
  fill_bf16<<<1024, 256>>>(L.q, BT * d.Nq * d.K, 1, 0.5f);
  fill_bf16<<<1024, 256>>>(L.k, BT * d.Nk * d.K, 2, 0.5f);
  fill_bf16<<<1024, 256>>>(L.v, BT * d.Nv * d.V, 3, 0.5f);
  fill_bf16<<<1024, 256>>>(L.dy, BT * d.N * d.V, 4, 1.f);
  fill_f32<<<1024, 256>>>(L.W, (size_t)d.Nw * 256, 5, 0.03f, 2); /* 0.8 I + 0.03 N: contractive */
  fill_f32<<<1024, 256>>>(L.f, BT * d.Nf, 6, 1.f, 1);
  fill_f32<<<1024, 256>>>(L.dhT, (size_t)d.B * d.N * KV, 7, 0.5f, 0);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}

static void layer_free(Layer &L) {
  void *ps[] = {L.q, L.k, L.v, L.y, L.dy, L.dq, L.dk, L.dv, L.W, L.f, L.hT, L.ckpt, L.dW, L.df, L.dh0, L.dhT, L.work};
  for (void *p : ps) cudaFree(p);
}

static m2_m2rnn_fwd_args fargs(Layer &L, bool train) {
  m2_m2rnn_fwd_args a = {L.y, L.hT, train ? L.ckpt : nullptr, L.q, L.k, L.v, L.W, L.f, nullptr};
  return a;
}
static m2_m2rnn_bwd_args bargs(Layer &L) {
  m2_m2rnn_bwd_args a = {L.dq, L.dk, L.dv, L.dW, L.df, L.dh0, L.dy, L.dhT, L.ckpt, L.q, L.k, L.v, L.W, L.f, L.work};
  return a;
}

/* median and min of `reps` timed runs of fn (ms), after 2 warm-up runs */
template <typename F>
static void timeit(F fn, int reps, double *med, double *mn) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 2; i++) fn();
  CK(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    CK(cudaEventRecord(a));
    fn();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  *med = t[t.size() / 2];
  *mn = t[0];
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

static void row(const Layer &L, const char *what, double med, double mn, double ref) {
  const double tok = (double)L.d.B * L.d.T;
  printf("| %-5s | %-34s | %8.3f | %8.3f | %7.2f M | %s", L.name, what, med, mn, tok / med / 1e3, ref > 0 ? "" : "\n");
  if (ref > 0) printf("%5.2fx vs Triton %.2f ms |\n", ref / med, ref);
  fflush(stdout);
}

/* host copies for the fast-vs-general check */
static std::vector<float> host_bf16(const uint16_t *p, size_t n) {
  std::vector<uint16_t> h(n);
  CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> r(n);
  for (size_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t)h[i] << 16;
    memcpy(&r[i], &u, 4);
  }
  return r;
}
static std::vector<float> host_f32(const float *p, size_t n) {
  std::vector<float> r(n);
  CK(cudaMemcpy(r.data(), p, n * 4, cudaMemcpyDeviceToHost));
  return r;
}
static double nrel(const std::vector<float> &a, const std::vector<float> &b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = (double)a[i] - b[i];
    if (!std::isfinite(a[i])) return INFINITY;
    num += d * d, den += (double)b[i] * b[i];
  }
  return sqrt(num) / (den > 0 ? sqrt(den) : 1);
}

int main(int argc, char **argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 15;
  /* M2_BENCH_QUICK=1: only the 400M layer's default rows and a few variants (for profilers and quick runs);
     M2_BENCH_QUICK=2: the 400M layer's default rows and ckpt 64 only (cuda/bench/ab_m2rnn.sh);
     M2_BENCH_QUICK=3: per-SM scaling with the warps per block (480 heads in blocks of 4, 5, 6 heads);
     M2_BENCH_B: the 400M layer's batch size (default 8) */
  const char *qe = getenv("M2_BENCH_QUICK");
  const int quick_level = qe ? atoi(qe) : 0;
  const bool quick = quick_level > 0;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int clk = 0;
  cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
  printf("# bench_m2rnn on %s (%d SMs, %.0f MHz max clock)\n", prop.name, prop.multiProcessorCount, clk / 1e3);
  if (quick_level == 3) { /* per-SM scaling: the same 480 heads (B=8, N=60) in blocks of 4, 5 or 6 heads (16, 20, 24
                             warps; 120, 96, 80 blocks: one wave each), to see how an SM's throughput grows with warps */
    Layer L = {"scan", {8, 4096, 60, 64, 16, 1, 1, 60, 60, 60, 1.0, M2_M2RNN_CKPT_EVERY}, 0, 0};
    layer_alloc(L);
    const m2_m2rnn_attr *d = &L.d;
    m2_m2rnn_fwd_args fi = fargs(L, false), ft = fargs(L, true);
    m2_m2rnn_bwd_args ba = bargs(L);
    printf("\n| heads/block | warps/SM | blocks | fwd ms | fwd (train) ms | bwd ms | head-steps/SM/us fwd | bwd |\n|---|---|---|---|---|---|---|---|\n");
    for (int hp = 4; hp <= 6; hp++) {
      m2_m2rnn_cuda_tuning o = {M2_M2RNN_FAST, M2_M2RNN_TANH_DEFAULT, hp};
      double f0, ft0, b0, mn;
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o, &fi, 0)); }, reps, &f0, &mn);
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o, &ft, 0)); }, reps, &ft0, &mn);
      timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &o, &ba, 0)); }, reps, &b0, &mn);
      const double hs = (double)hp * d->T / 1e3; /* head-steps per SM, in thousands */
      printf("| %d | %d | %d | %.3f | %.3f | %.3f | %.2f | %.2f |\n", hp, 4 * hp, (int)(d->B * d->N / hp), f0, ft0, b0, hs / f0, hs / b0);
    }
    layer_free(L);
    return 0;
  }
  Layer layers[2] = {
      {"400M", {8, 4096, 84, 64, 16, 1, 1, 84, 84, 84, 1.0, M2_M2RNN_CKPT_EVERY}, 4.11, 18.6},
      {"7B", {4, 4096, 132, 64, 16, 1, 1, 132, 132, 132, 1.0, M2_M2RNN_CKPT_EVERY}, 3.93, 15.9},
  };
  if (const char *be = getenv("M2_BENCH_B")) { /* M2_BENCH_B=4: the 400M layer at another batch size (as trained) */
    layers[0].d.B = atoi(be) > 0 ? atoi(be) : layers[0].d.B;
    printf("(400M layer at B = %d: M2_BENCH_B)\n", (int)layers[0].d.B);
  }
  printf("\n| layer | variant                            | ms (med) | ms (min) | tokens/s | vs reference |\n");
  printf("|---|---|---|---|---|---|\n");
  for (Layer &L : layers) {
    layer_alloc(L);
    const m2_m2rnn_attr *d = &L.d;
    cudaStream_t s = 0;
    double med, mn, fwd_train = 0, bwd = 0;
    /* the defaults of the CUDA op (cuda/ops_m2rnn.cu), in the layer's attributes: state-gradient clipping 1 (the
       paper's), a checkpoint every 8 steps (the fastest; 8 x the memory of ckpt 64, which the rows below also time) */
    m2_m2rnn_cuda_tuning o = {M2_M2RNN_FAST, M2_M2RNN_TANH_DEFAULT, 0};
    auto with_ckpt = [&](int ck) { /* the layer's attributes with another checkpoint spacing */
      m2_m2rnn_attr a = *d;
      a.ckpt_every = ck;
      return a;
    };
    m2_m2rnn_fwd_args fi = fargs(L, false), ft = fargs(L, true);
    m2_m2rnn_bwd_args ba = bargs(L);
    { /* the floor: tanh unit (16 per clock per SM, bench_mufu), bytes at 4.27 TB/s, tensor-core FLOPs as issued */
      const double el = (double)d->B * d->N * d->T * d->K * d->V, clk_hz = clk * 1e3;
      const int heads = (int)(d->B * d->N), per_sm = (heads + prop.multiProcessorCount - 1) / prop.multiProcessorCount;
      const double busy = (double)heads / per_sm; /* SMs a whole-head split keeps busy */
      const double bytes = 2.0 * d->B * d->T * ((d->Nq + d->Nk) * d->K + 2.0 * d->N * d->V) + 4.0 * d->B * d->T * d->Nf;
      const double ck_bytes = 4.0 * d->B * d->N * ((d->T + 7) / 8) * d->K * d->V;
      const double mufu = el / (16.0 * busy * clk_hz) * 1e3, flops = el * 64.0 / 1024 * 1024; /* 64 kFLOP per head-step */
      printf("| %-5s | floor: %.3g G tanh -> %.3f ms fwd on %.0f busy SMs (%.1f ns/step); %.0f MB in/out (+%.0f MB ckpt 8) "
             "-> %.3f ms; %.0f GFLOP tensor | | | | |\n",
             L.name, el / 1e9, mufu, busy, mufu * 1e6 / d->T, bytes / 1e6, ck_bytes / 1e6, (bytes + ck_bytes) / 4.27e12 * 1e3,
             flops / 1e9);
    }
    timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o, &fi, s)); }, reps, &med, &mn);
    row(L, "fast fwd (inference), default", med, mn, L.triton_fwd);
    timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o, &ft, s)); }, reps, &med, &mn);
    row(L, "fast fwd (training, ckpt 8)", med, mn, L.triton_fwd);
    fwd_train = med;
    MT(m2_m2rnn_fwd_cuda(d, &o, &ft, s));
    timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &o, &ba, s)); }, reps, &med, &mn);
    row(L, "fast bwd (ckpt 8)", med, mn, 0);
    bwd = med;
    timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o, &ft, s)); MT(m2_m2rnn_bwd_cuda(d, &o, &ba, s)); }, reps, &med, &mn);
    row(L, "fast fwd+bwd (ckpt 8), default", med, mn, L.triton_fb);
    printf("| %-5s | (sum of the two above: %.3f ms) | | | | |\n", L.name, fwd_train + bwd);
    {
      const m2_m2rnn_attr d64 = with_ckpt(64);
      timeit([&] { MT(m2_m2rnn_fwd_cuda(&d64, &o, &ft, s)); MT(m2_m2rnn_bwd_cuda(&d64, &o, &ba, s)); }, reps, &med, &mn);
      row(L, "fast fwd+bwd (ckpt 64, 1/8 the memory)", med, mn, L.triton_fb);
    }
    if (quick_level >= 2) {
      layer_free(L);
      break;
    }
    if (quick) { /* + fwd+bwd at the checkpoint intervals listed in M2_BENCH_CKS (e.g. "8,16,32") */
      const char *cks = getenv("M2_BENCH_CKS");
      for (const char *c = cks; c && *c;) {
        const m2_m2rnn_attr dc = with_ckpt(atoi(c));
        char what[64];
        snprintf(what, sizeof what, "fast fwd (training), ckpt %d", dc.ckpt_every);
        timeit([&] { MT(m2_m2rnn_fwd_cuda(&dc, &o, &ft, s)); }, reps, &med, &mn);
        row(L, what, med, mn, L.triton_fwd);
        snprintf(what, sizeof what, "fast fwd+bwd, ckpt %d", dc.ckpt_every);
        timeit([&] { MT(m2_m2rnn_fwd_cuda(&dc, &o, &ft, s)); MT(m2_m2rnn_bwd_cuda(&dc, &o, &ba, s)); }, reps, &med, &mn);
        row(L, what, med, mn, L.triton_fb);
        c = strchr(c, ',');
        if (c) c++;
      }
      for (int hp = 1; hp <= 3; hp++) { /* smaller blocks: several per SM, each with its own barriers */
        m2_m2rnn_cuda_tuning oh = o;
        oh.heads_per_block = hp;
        char what[64];
        snprintf(what, sizeof what, "fast fwd (inference), %d head(s)/block", hp);
        timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &oh, &fi, s)); }, reps, &med, &mn);
        row(L, what, med, mn, L.triton_fwd);
        if (hp < 3) continue;
        MT(m2_m2rnn_fwd_cuda(d, &oh, &ft, s));
        snprintf(what, sizeof what, "fast bwd (ckpt 8), %d heads/block", hp);
        timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &oh, &ba, s)); }, reps, &med, &mn);
        row(L, what, med, mn, 0);
      }
      { /* 8-row warps in the forward (2 blocks of 24 warps per SM) */
        m2_m2rnn_cuda_tuning o8 = o;
        o8.fwd_rows_per_warp = 8;
        timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o8, &fi, s)); }, reps, &med, &mn);
        row(L, "fast fwd (inference), 8-row warps", med, mn, L.triton_fwd);
        timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o8, &ft, s)); }, reps, &med, &mn);
        row(L, "fast fwd (training, ckpt 8), 8-row warps", med, mn, L.triton_fwd);
      }
      { /* 32-row warps in the backward (12 warps per block; the default at ckpt 8 is 16-row warps) */
        m2_m2rnn_cuda_tuning o32b = o;
        o32b.bwd_rows_per_warp = 32;
        MT(m2_m2rnn_fwd_cuda(d, &o32b, &ft, s));
        timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &o32b, &ba, s)); }, reps, &med, &mn);
        row(L, "fast bwd (ckpt 8), 32-row warps", med, mn, 0);
      }
      layer_free(L);
      break;
    }

    {
      m2_m2rnn_cuda_tuning o32 = o;
      o32.fwd_rows_per_warp = 32;
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &o32, &fi, s)); }, reps, &med, &mn);
      row(L, "fast fwd, 32-row warps", med, mn, L.triton_fwd);
    }
    const int modes[2] = {M2_M2RNN_TANH_MIX4, M2_M2RNN_TANH_MIX8};
    const char *mname[2] = {"4/16 poly", "8/16 poly"};
    for (int mi = 0; mi < 2; mi++) {
      m2_m2rnn_cuda_tuning om = o;
      om.tanh_mode = modes[mi];
      char what[64];
      snprintf(what, sizeof what, "fast fwd, tanh %s", mname[mi]);
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &om, &fi, s)); }, reps, &med, &mn);
      row(L, what, med, mn, L.triton_fwd);
      snprintf(what, sizeof what, "fast bwd, tanh %s", mname[mi]);
      MT(m2_m2rnn_fwd_cuda(d, &om, &ft, s));
      timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &om, &ba, s)); }, reps, &med, &mn);
      row(L, what, med, mn, 0);
    }
    const int cks[3] = {16, 32, 64};
    for (int ci = 0; ci < 3; ci++) {
      const m2_m2rnn_attr dc = with_ckpt(cks[ci]);
      char what[64];
      snprintf(what, sizeof what, "fast fwd+bwd, ckpt %d", cks[ci]);
      timeit([&] { MT(m2_m2rnn_fwd_cuda(&dc, &o, &ft, s)); MT(m2_m2rnn_bwd_cuda(&dc, &o, &ba, s)); }, reps, &med, &mn);
      row(L, what, med, mn, L.triton_fb);
    }
    const int hpbs[2] = {1, 2};
    for (int hp : hpbs) {
      if (d->N % hp) continue;
      m2_m2rnn_cuda_tuning oh = o;
      oh.heads_per_block = hp;
      char what[64];
      snprintf(what, sizeof what, "fast fwd+bwd, %d head(s)/block", hp);
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &oh, &ft, s)); MT(m2_m2rnn_bwd_cuda(d, &oh, &ba, s)); }, reps, &med, &mn);
      row(L, what, med, mn, L.triton_fb);
    }

    if (&L == &layers[0]) { /* fast vs general at full size, and the general path's time */
      const size_t BT = (size_t)d->B * d->T;
      MT(m2_m2rnn_fwd_cuda(d, &o, &ft, s));
      MT(m2_m2rnn_bwd_cuda(d, &o, &ba, s));
      CK(cudaDeviceSynchronize());
      std::vector<float> fy = host_bf16(L.y, BT * d->N * 16), fdq = host_bf16(L.dq, BT * d->Nq * 64),
                         fdk = host_bf16(L.dk, BT * d->Nk * 64), fdv = host_bf16(L.dv, BT * d->Nv * 16),
                         fdW = host_f32(L.dW, (size_t)d->Nw * 256), fdf = host_f32(L.df, BT * d->Nf),
                         fh = host_f32(L.hT, (size_t)d->B * d->N * 1024), fdh = host_f32(L.dh0, (size_t)d->B * d->N * 1024);
      m2_m2rnn_cuda_tuning og = o;
      og.path = M2_M2RNN_GENERAL;
      timeit([&] { MT(m2_m2rnn_fwd_cuda(d, &og, &ft, s)); }, 1, &med, &mn);
      row(L, "general fwd (training)", med, mn, L.triton_fwd);
      timeit([&] { MT(m2_m2rnn_bwd_cuda(d, &og, &ba, s)); }, 1, &med, &mn);
      row(L, "general bwd", med, mn, 0);
      CK(cudaDeviceSynchronize());
      printf("\nfast vs general at full size (||fast - general|| / ||general||): y %.2e hT %.2e dq %.2e dk %.2e dv %.2e "
             "dW %.2e df %.2e dh0 %.2e\n\n",
             nrel(fy, host_bf16(L.y, BT * d->N * 16)), nrel(fh, host_f32(L.hT, (size_t)d->B * d->N * 1024)),
             nrel(fdq, host_bf16(L.dq, BT * d->Nq * 64)), nrel(fdk, host_bf16(L.dk, BT * d->Nk * 64)),
             nrel(fdv, host_bf16(L.dv, BT * d->Nv * 16)), nrel(fdW, host_f32(L.dW, (size_t)d->Nw * 256)),
             nrel(fdf, host_f32(L.df, BT * d->Nf)), nrel(fdh, host_f32(L.dh0, (size_t)d->B * d->N * 1024)));
      printf("| layer | variant                            | ms (med) | ms (min) | tokens/s | vs reference |\n");
      printf("|---|---|---|---|---|---|\n");
    }
    layer_free(L);
  }
  return 0;
}
