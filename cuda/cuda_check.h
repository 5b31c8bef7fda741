/* cuda_check.h — one macro per library to check every CUDA / cuBLAS call and report the call text. */
#ifndef M2_CUDA_CHECK_H
#define M2_CUDA_CHECK_H
#include <cuda_runtime.h>
#include "status.h"

#define M2_CUDA_TRY(call)                                                                          \
  do {                                                                                             \
    cudaError_t m2_e_ = (call);                                                                    \
    if (m2_e_ != cudaSuccess)                                                                      \
      return m2_fail(M2_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cudaGetErrorString(m2_e_), __FILE__, \
                     __LINE__);                                                                    \
  } while (0)

/* After a kernel launch: catches bad launch configurations immediately. */
#define M2_CUDA_LAUNCH_CHECK(what) M2_CUDA_TRY(cudaGetLastError())

#endif
