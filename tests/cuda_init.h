/* cuda_init.h — start-up of every CUDA test: register the CUDA backend library into core (m2_cuda_register)
 * and report how many GPUs it found (0: the test skips with exit 77). */
#ifndef M2_TEST_CUDA_INIT_H
#define M2_TEST_CUDA_INIT_H
#include <stdio.h>
#include "backend.h"
#include "m2cuda.h"

static inline int m2test_cuda_devices(void) {
  if (m2_cuda_register() != M2_OK) {
    fprintf(stderr, "could not register the CUDA backend: %s\n", m2_errmsg());
    return 0;
  }
  return m2_device_count(M2_CUDA);
}
#endif
