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

enum { OP_TANH, OP_TANH_H2, OP_TANH_BF2, OP_EX2, OP_FFMA, OP_MIX };
constexpr int ITERS = 4096, CH = 8;

template <int OP>
__global__ void kern(float *out, long long *cyc, float seed) {
  float x[CH];
  uint32_t hx[CH];
#pragma unroll
  for (int c = 0; c < CH; c++) {
    x[c] = seed * (threadIdx.x + c + 1) * 1e-3f;
    hx[c] = __float_as_uint(x[c]) ^ 0x3c003c00u;
  }
  const long long t0 = clock64();
  for (int it = 0; it < ITERS; it++) {
#pragma unroll
    for (int c = 0; c < CH; c++) {
      if (OP == OP_TANH) asm volatile("tanh.approx.f32 %0, %0;" : "+f"(x[c]));
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
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount, threads = 1024, blocks = sms * 2;
  float *out;
  long long *cyc;
  CK(cudaMalloc(&out, sizeof(float) * blocks * threads));
  CK(cudaMalloc(&cyc, sizeof(long long) * blocks));
  printf("# bench_mufu on %s (%d SMs): results per clock per SM, %d threads x %d blocks, %d chains x %d iterations\n\n",
         prop.name, sms, threads, blocks, CH, ITERS);
  printf("| instruction | results per element | results / clock / SM | ms |\n|---|---|---|---|\n");
  struct { const char *name; void (*k)(float *, long long *, float); int per; } ops[] = {
      {"tanh.approx.f32", kern<OP_TANH>, 1},     {"tanh.approx.f16x2", kern<OP_TANH_H2>, 2},
      {"tanh.approx.bf16x2", kern<OP_TANH_BF2>, 2}, {"ex2.approx.ftz.f32", kern<OP_EX2>, 1},
      {"fma.rn.f32", kern<OP_FFMA>, 1},          {"tanh + 6 FFMA (tanh rate)", kern<OP_MIX>, 1}};
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
    printf("| %s | %d | %.2f | %.3f |\n", o.name, o.per, res / mc, ms);
  }
  return 0;
}
