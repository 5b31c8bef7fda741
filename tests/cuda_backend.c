/* cuda_backend.c — CUDA memory backend: allocation, host<->device round trips, strided reads,
 * device errors. Skips (exit 77) when no GPU is present. */
#include "cuda_parity.h"

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_backend");
  m2_device gpu = {M2_CUDA, 0};
  m2_rng r = m2_rng_make(3, 0);
  int64_t sh[2] = {37, 129};
  m2_tensor *h = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sh);
  m2_tensor *d = m2_to_device(h, gpu);
  CHECK_NOTNULL(d);
  m2_tensor *back = m2_to_device(d, M2_DEV_CPU);
  CHECK(max_rel_diff(back, h) == 0, "round trip");
  /* strided read of a device tensor (transpose view) */
  m2_tensor *dt = m2_transpose(d, 0, 1), *ht = m2_transpose(h, 0, 1);
  m2_tensor *a = m2_clone_raw(dt, M2_F32, M2_DEV_CPU), *b = m2_clone_raw(ht, M2_F32, M2_DEV_CPU);
  CHECK(max_rel_diff(a, b) == 0, "strided device read");
  /* a device that does not exist */
  m2_device bad = {M2_CUDA, 999};
  CHECK_FAILS(m2_to_device(h, bad) == NULL, M2_ERR_DEVICE, "does not exist");
  m2_tensor *all[] = {h, d, back, dt, ht, a, b};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  return check_finish("cuda_backend");
}
