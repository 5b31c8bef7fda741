/* test_tensor.c — tensor construction, views, element access, copies, rng determinism. */
#include "check.h"

int main(void) {
  int64_t sh[2] = {2, 3};
  float data[6] = {1, 2, 3, 4, 5, 6};
  m2_tensor *a = m2_from_data(M2_F32, M2_DEV_CPU, 2, sh, data);
  CHECK_NOTNULL(a);
  CHECK(m2_numel(a) == 6, "numel");
  CHECK(m2_is_contiguous(a), "contiguous");
  double v;
  int64_t idx[2] = {1, 2};
  CHECK_OK(m2_get(a, idx, &v));
  CHECK_CLOSE(v, 6, 0, 0, "a[1][2]");
  idx[1] = 3;
  CHECK_FAILS(m2_get(a, idx, &v) != M2_OK, M2_ERR_INDEX, "out of range");

  /* transpose view shares storage; contiguous copies in the transposed order */
  m2_tensor *t = m2_transpose(a, 0, 1);
  CHECK(t && t->shape[0] == 3 && t->shape[1] == 2 && !m2_is_contiguous(t), "transpose view");
  int64_t i2[2] = {2, 1};
  m2_get(t, i2, &v);
  CHECK_CLOSE(v, 6, 0, 0, "t[2][1]");
  m2_tensor *tc = m2_contiguous(t);
  float out[6];
  m2_to_host(tc, M2_F32, out);
  float want[6] = {1, 4, 2, 5, 3, 6};
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], want[i], 0, 0, "contiguous(transpose)");

  /* narrow */
  m2_tensor *n = m2_narrow(a, 1, 1, 2);
  int64_t i3[2] = {1, 0};
  m2_get(n, i3, &v);
  CHECK_CLOSE(v, 5, 0, 0, "narrow[1][0]");
  CHECK_FAILS(m2_narrow(a, 1, 2, 2) == NULL, M2_ERR_INDEX, "out of bounds");
  CHECK_FAILS(m2_narrow(a, 5, 0, 1) == NULL, M2_ERR_INDEX, "dim 5");

  /* reshape with -1, and a bad reshape */
  int64_t rs[2] = {-1, 2};
  m2_tensor *r = m2_reshape(a, 2, rs);
  CHECK(r && r->shape[0] == 3 && r->shape[1] == 2, "reshape -1");
  int64_t bad[2] = {4, 2};
  CHECK_FAILS(m2_reshape(a, 2, bad) == NULL, M2_ERR_SHAPE, "cannot view");

  /* reshape of a non-contiguous view copies */
  m2_tensor *r2 = m2_reshape(t, 1, (int64_t[]){6});
  m2_to_host(r2, M2_F32, out);
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], want[i], 0, 0, "reshape(transpose)");

  /* bf16 round trip and dtype conversion */
  m2_tensor *b = m2_to_dtype(a, M2_BF16);
  m2_tensor *back = m2_to_dtype(b, M2_F32);
  m2_to_host(back, M2_F32, out);
  for (int i = 0; i < 6; i++) CHECK_CLOSE(out[i], data[i], 0, 0, "bf16 round trip of small ints");
  CHECK(m2_f32_to_bf16(1.0f) == 0x3f80, "bf16(1)");

  /* expand */
  m2_tensor *row = m2_narrow(a, 0, 0, 1);
  m2_tensor *e = m2_expand(row, 3, (int64_t[]){4, 2, 3});
  CHECK(e && e->shape[0] == 4 && e->stride[0] == 0 && e->stride[1] == 0, "expand strides");

  /* rng: same (seed, stream, offset) -> same numbers; different stream -> different */
  m2_rng r1 = m2_rng_make(42, 0), r2r = m2_rng_make(42, 0), r3 = m2_rng_make(42, 1);
  m2_tensor *x1 = m2_randn(&r1, M2_F32, M2_DEV_CPU, 2, sh), *x2 = m2_randn(&r2r, M2_F32, M2_DEV_CPU, 2, sh);
  m2_tensor *x3 = m2_randn(&r3, M2_F32, M2_DEV_CPU, 2, sh);
  CHECK(max_rel_diff(x1, x2) == 0, "rng determinism");
  CHECK(max_rel_diff(x1, x3) > 0, "rng streams differ");
  CHECK(r1.offset == 3, "normal draws use ceil(n/2) blocks, offset %llu", (unsigned long long)r1.offset);
  /* uniform statistics */
  m2_rng ru = m2_rng_make(7, 0);
  double mean = 0;
  for (int i = 0; i < 20000; i++) mean += m2_rng_uniform(&ru);
  CHECK_CLOSE(mean / 20000, 0.5, 0.01, 0, "uniform mean");

  /* shape errors at construction */
  CHECK_FAILS(m2_empty(M2_F32, M2_DEV_CPU, 7, sh) == NULL, M2_ERR_SHAPE, "at most");

  m2_tensor *all[] = {a, t, tc, n, r, r2, b, back, row, e, x1, x2, x3};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  CHECK(m2_live_tensors() == 0, "all tensors freed, %ld live", m2_live_tensors());
  return check_finish("test_tensor");
}
