/* bench_mufu.cu — throughput of the special-function unit on this GPU, the ceiling of the M2RNN kernels
 * (one tanh per state element and step): results per clock per SM for tanh.approx.f32, the packed f16x2 /
 * bf16x2 forms, ex2.approx.f32, and FFMA for scale. Each thread runs 8 independent chains so latency is hidden;
 * the SM clock is read with clock64() inside the kernel. Prints a table. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdint.h>

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } \
  } while (0)

enum { OP_TANH, OP_TANH_H2, OP_TANH_BF2, OP_EX2, OP_FFMA, OP_MIX, OP_MIX_LDS, OP_MIX_MOVM, OP_MIX_FWD, OP_MIX_HMMA, OP_MIX_LDS128 };
constexpr int ITERS = 4096, CH = 8;

template <int OP>
__global__ void kern(float *out, long long *cyc, float seed) {
  __shared__ uint16_t sh[4096];
  for (int i = threadIdx.x; i < 4096; i += blockDim.x) sh[i] = (uint16_t)(i * 7 + 1);
  __syncthreads();
  float x[CH];
  uint32_t hx[CH];
  uint32_t acc = 0, mv = threadIdx.x * 0x10001u;
  float hc[4] = {0.f, 0.f, 0.f, 0.f};
  const uint16_t *shp = sh + ((threadIdx.x & 31) >> 2); /* as the kernels read k, v: 8 addresses, no bank conflict */
#pragma unroll
  for (int c = 0; c < CH; c++) {
    x[c] = seed * (threadIdx.x + c + 1) * 1e-3f;
    hx[c] = __float_as_uint(x[c]) ^ 0x3c003c00u;
  }
  const long long t0 = clock64();
  for (int it = 0; it < ITERS; it++) {
    /* the forward step's other MIO traffic per 8 tanh (one 16-row warp-step): 7 LDS.U16, 4 movmatrix; or 5 HMMA */
    if (OP == OP_MIX_LDS || OP == OP_MIX_FWD) {
      const uint16_t *sp = shp + (it & 7) * 256;
#pragma unroll
      for (int u = 0; u < 7; u++) {
        uint32_t r;
        asm volatile("ld.shared.u16 %0, [%1];" : "=r"(r) : "r"((uint32_t)__cvta_generic_to_shared(sp + u * 32)));
        acc += r;
      }
    }
    if (OP == OP_MIX_LDS128) { /* the same bytes as 2 vector loads */
      const uint16_t *sp = sh + (it & 7) * 256 + (threadIdx.x & 31) * 8;
#pragma unroll
      for (int u = 0; u < 2; u++) {
        uint32_t r0, r1, r2, r3;
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                     : "r"((uint32_t)__cvta_generic_to_shared(sp + u * 2048 % 1792)));
        acc += r0 ^ r1 ^ r2 ^ r3;
      }
    }
    if (OP == OP_MIX_MOVM || OP == OP_MIX_FWD) {
#pragma unroll
      for (int u = 0; u < 4; u++) asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %0;" : "+r"(mv));
    }
    if (OP == OP_MIX_HMMA) {
#pragma unroll
      for (int u = 0; u < 5; u++)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%4,%4,%4}, {%4,%4}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(hc[0]), "+f"(hc[1]), "+f"(hc[2]), "+f"(hc[3])
                     : "r"(mv));
    }
#pragma unroll
    for (int c = 0; c < CH; c++) {
      if (OP == OP_TANH || OP == OP_MIX_LDS || OP == OP_MIX_MOVM || OP == OP_MIX_FWD || OP == OP_MIX_HMMA || OP == OP_MIX_LDS128)
        asm volatile("tanh.approx.f32 %0, %0;" : "+f"(x[c]));
      if (OP == OP_TANH_H2) asm volatile("tanh.approx.f16x2 %0, %0;" : "+r"(hx[c]));
#if __CUDA_ARCH__ >= 900 /* bf16x2 tanh is Hopper's; other targets time the f16x2 form twice */
      if (OP == OP_TANH_BF2) asm volatile("tanh.approx.bf16x2 %0, %0;" : "+r"(hx[c]));
#else
      if (OP == OP_TANH_BF2) asm volatile("tanh.approx.f16x2 %0, %0;" : "+r"(hx[c]));
#endif
      if (OP == OP_EX2) asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(x[c]));
      if (OP == OP_FFMA) asm volatile("fma.rn.f32 %0, %0, %0, %0;" : "+f"(x[c]));
      if (OP == OP_MIX) { /* one tanh and 6 FFMA per element: does the FMA pipe run beside the MUFU? */
        asm volatile("tanh.approx.f32 %0, %0;" : "+f"(x[c]));
        asm volatile("fma.rn.f32 %0, %0, %0, %0;\n\tfma.rn.f32 %0, %0, %0, %0;\n\tfma.rn.f32 %0, %0, %0, %0;\n\t"
                     "fma.rn.f32 %0, %0, %0, %0;\n\tfma.rn.f32 %0, %0, %0, %0;\n\tfma.rn.f32 %0, %0, %0, %0;"
                     : "+f"(x[c]));
      }
    }
  }
  const long long t1 = clock64();
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < CH; c++) s += x[c] + __uint_as_float(hx[c]);
  s += (float)acc + (float)mv + hc[0] + hc[1] + hc[2] + hc[3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}


/* Latency of a dependent shared-memory load chain in warps 0-3 (one per scheduler) while warps 4-15 of the block either
 * idle (BUSY = 0) or run independent tanh (BUSY = 1) or FFMA (BUSY = 2) chains: does a load wait behind other warps'
 * special-function work? (The kernels' per-step input loads and movmatrix sit on the recurrence's chain.) */
template <int BUSY, int MOVM>
__global__ void probe(float *out, long long *cyc, float seed) {
  __shared__ uint32_t nxt[1024];
  for (int i = threadIdx.x; i < 1024; i += blockDim.x) nxt[i] = (i * 37 + 11) & 1023;
  __syncthreads();
  const int warp = threadIdx.x >> 5;
  if (warp < 4) {
    uint32_t idx = threadIdx.x & 31;
    const long long t0 = clock64();
    if (MOVM)
      for (int it = 0; it < 2048; it++) asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %0;" : "+r"(idx));
    else
      for (int it = 0; it < 2048; it++) idx = nxt[idx];
    const long long t1 = clock64();
    out[blockIdx.x * blockDim.x + threadIdx.x] = (float)idx;
    if ((threadIdx.x & 31) == 0) cyc[blockIdx.x * 4 + warp] = t1 - t0;
  } else if (BUSY) {
    float x[CH];
#pragma unroll
    for (int c = 0; c < CH; c++) x[c] = seed * (threadIdx.x + c + 1) * 1e-3f;
    for (int it = 0; it < 3 * 2048; it++)
#pragma unroll
      for (int c = 0; c < CH; c++) {
        if (BUSY == 1) asm volatile("tanh.approx.f32 %0, %0;" : "+f"(x[c]));
        if (BUSY == 2) asm volatile("fma.rn.f32 %0, %0, %0, %0;" : "+f"(x[c]));
      }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < CH; c++) s += x[c];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  }
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount, threads = 1024, blocks = sms * 2;
  float *out;
  long long *cyc;
  CK(cudaMalloc(&out, sizeof(float) * blocks * threads));
  CK(cudaMalloc(&cyc, sizeof(long long) * blocks * 4)); /* the probes use 4 per SM */
  printf("# bench_mufu on %s (%d SMs): results per clock per SM, %d threads x %d blocks, %d chains x %d iterations\n\n",
         prop.name, sms, threads, blocks, CH, ITERS);
  printf("| instruction | results per element | results / clock / SM (thread 0's clock) | ms | ms / tanh-only ms |\n|---|---|---|---|---|\n");
  float ms_tanh = 0.f;
  struct { const char *name; void (*k)(float *, long long *, float); int per; } ops[] = {
      {"tanh.approx.f32", kern<OP_TANH>, 1},     {"tanh.approx.f16x2", kern<OP_TANH_H2>, 2},
      {"tanh.approx.bf16x2", kern<OP_TANH_BF2>, 2}, {"ex2.approx.ftz.f32", kern<OP_EX2>, 1},
      {"fma.rn.f32", kern<OP_FFMA>, 1},          {"tanh + 6 FFMA (tanh rate)", kern<OP_MIX>, 1},
      {"8 tanh + 7 LDS.U16 (tanh rate)", kern<OP_MIX_LDS>, 1}, {"8 tanh + 4 movmatrix (tanh rate)", kern<OP_MIX_MOVM>, 1},
      {"8 tanh + 7 LDS + 4 movmatrix: the forward's MIO mix (tanh rate)", kern<OP_MIX_FWD>, 1},
      {"8 tanh + 5 HMMA m16n8k16 (tanh rate)", kern<OP_MIX_HMMA>, 1},
      {"8 tanh + 2 LDS.128 (tanh rate)", kern<OP_MIX_LDS128>, 1}};
  for (auto &o : ops) {
    o.k<<<blocks, threads>>>(out, cyc, 0.5f); /* warm-up */
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    cudaEventRecord(e0);
    o.k<<<blocks, threads>>>(out, cyc, 0.5f);
    cudaEventRecord(e1);
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    long long hc[1024];
    CK(cudaMemcpy(hc, cyc, sizeof(long long) * blocks, cudaMemcpyDeviceToHost));
    double mc = 0;
    for (int b = 0; b < blocks; b++) mc = hc[b] > mc ? hc[b] : mc;
    /* two blocks share an SM: results per SM = 2 blocks x threads x CH x ITERS x per, over the longest block */
    const double res = 2.0 * threads * CH * (double)ITERS * o.per;
    if (ms_tanh == 0.f) ms_tanh = ms;
    printf("| %s | %d | %.2f | %.3f | %.2f |\n", o.name, o.per, res / mc, ms, ms / ms_tanh);
  }
  printf("\n| dependent chain in warps 0-3 | warps 4-15 run | cycles per link |\n|---|---|---|\n");
  struct { const char *name; void (*k)(float *, long long *, float); } probes[] = {
      {"LDS | nothing", probe<0, 0>}, {"LDS | tanh.approx.f32 (8 chains each)", probe<1, 0>},
      {"LDS | fma.rn.f32 (8 chains each)", probe<2, 0>}, {"movmatrix | nothing", probe<0, 1>},
      {"movmatrix | tanh.approx.f32 (8 chains each)", probe<1, 1>}};
  for (auto &pr : probes) {
    pr.k<<<sms, 512>>>(out, cyc, 0.5f);
    pr.k<<<sms, 512>>>(out, cyc, 0.5f);
    CK(cudaDeviceSynchronize());
    long long hc[1024];
    CK(cudaMemcpy(hc, cyc, sizeof(long long) * sms * 4, cudaMemcpyDeviceToHost));
    double sum = 0;
    for (int i = 0; i < sms * 4; i++) sum += hc[i];
    printf("| %s | %.1f |\n", pr.name, sum / (sms * 4) / 2048.0);
  }
  return 0;
}
