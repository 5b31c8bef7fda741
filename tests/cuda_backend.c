/* cuda_backend.c — the CUDA library's registration (every op of the registry has a CUDA forward and, unless
 * non-differentiable, a backward; the backend table's hooks are set), then the memory backend: allocation,
 * host<->device round trips, strided reads, device errors. The registration part needs no GPU; the rest skips
 * (exit 77) when none is present. */
#include "check.h"
#include "cuda_init.h"

int main(void) {
  int ngpu = m2test_cuda_devices(); /* registers the library */
  const m2_device cu = {M2_CUDA, 0};
  int nops = 0;
  for (const m2_op *const *p = m2_op_list(); *p; p++, nops++) {
    CHECK(m2_op_kernel(*p, cu, false) != NULL, "%s has no CUDA forward", (*p)->name);
    CHECK(m2_op_kernel(*p, cu, true) != NULL || ((*p)->flags & M2_OP_NONDIFF), "%s has no CUDA backward",
          (*p)->name);
  }
  printf("cuda_backend: %d ops, each with CUDA kernels\n", nops);
  if (ngpu == 0) {
    if (g_failures > 0) return check_finish("cuda_backend");
    printf("cuda_backend: no CUDA device, skipped\n");
    return 77;
  }
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
  /* host -> device copies with and without waiting (M2_ASYNC_H2D, m2_cuda_async_h2d): with the stream busy with
   * products queued before it, a 64 MB copy whose host source is overwritten with NaN and freed right after the call
   * still lands whole on the device */
  const int async_was = m2_cuda_async_h2d(-1);
  int64_t sbig[2] = {2048, 2048}, slot[1] = {16 << 20};
  m2_tensor *hb = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, sbig), *db = m2_to_device(hb, gpu);
  CHECK_NOTNULL(db);
  for (int on = 0; on < 2; on++) {
    m2_cuda_async_h2d(on);
    m2_tensor *busy[3] = {0};
    for (int i = 0; i < 3 && db; i++) busy[i] = m2_matmul(db, db, false, true); /* queued, not waited for */
    m2_tensor *src = m2_randn(&r, M2_F32, M2_DEV_CPU, 1, slot), *ref = src ? m2_clone_raw(src, M2_F32, M2_DEV_CPU) : NULL;
    m2_tensor *dev = src ? m2_to_device(src, gpu) : NULL;
    if (src) memset(m2_data(src), 0xff, sizeof(float) * (size_t)m2_numel(src)); /* NaN everywhere, then freed */
    m2_release(src);
    m2_tensor *got = dev ? m2_to_device(dev, M2_DEV_CPU) : NULL;
    CHECK(got && ref && max_rel_diff(got, ref) == 0, "host -> device copy (async %d) with its source overwritten and freed",
          on);
    for (int i = 0; i < 3; i++) m2_release(busy[i]);
    m2_release(ref), m2_release(dev), m2_release(got);
  }
  m2_cuda_async_h2d(async_was);
  m2_release(hb), m2_release(db);
  /* a device that does not exist */
  m2_device bad = {M2_CUDA, 999};
  CHECK_FAILS(m2_to_device(h, bad) == NULL, M2_ERR_DEVICE, "does not exist");
  m2_tensor *all[] = {h, d, back, dt, ht, a, b};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  return check_finish("cuda_backend");
}
