/* attention_common.cuh — what the tensor-core attention kernels share (cuda/attention_tc.cu and its M2_ATTN_V2
 * kernels, cuda/attention_wgmma.cu): the causal key count of a query row and the reductions over the four lanes
 * that hold one accumulator row (lanes 4g .. 4g + 3 of an mma / wgmma C fragment). */
#ifndef M2_CUDA_ATTENTION_COMMON_CUH
#define M2_CUDA_ATTENTION_COMMON_CUH

/* Keys query t may read: s < att_keys(t) = clamp(t + S - T + 1, 0, S) when causal, all S otherwise. */
__device__ __forceinline__ int att_keys(int t, int T, int S, bool causal) {
  if (!causal) return S;
  int n = t + S - T + 1;
  return n < 0 ? 0 : n > S ? S : n;
}
/* max / sum over the quad of lanes holding one row */
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
#endif
