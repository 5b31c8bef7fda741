/* cuda_backend.h — the CUDA memory backend (stream-ordered pool) and the per-device stream. */
#ifndef M2_CUDA_BACKEND_H
#define M2_CUDA_BACKEND_H
#include "backend.h"
#ifdef __cplusplus
extern "C" {
#endif
#ifdef __CUDACC__
/* The stream all m2lab work on device `index` is ordered on. */
cudaStream_t m2_cuda_stream(int index);
#endif
#ifdef __cplusplus
}
#endif
#endif
