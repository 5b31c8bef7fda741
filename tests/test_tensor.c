/* test_tensor.c — tensor construction, element access, bf16 conversion of values, rng determinism (the view and
 * conversion ops are tested in test_ops_view.c). */
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

  /* bf16 conversion of one value (the views and conversion ops are in test_ops_view.c) */
  CHECK(m2_f32_to_bf16(1.0f) == 0x3f80, "bf16(1)");
  CHECK(m2_bf16_to_f32(0x3f80) == 1.0f, "f32 of bf16 1");

  /* numbers stored into integer elements: NaN and values out of range have a defined result (they were undefined
   * behaviour: m2.tensor({0/0}, {dtype = "i32"}), found by tests/fuzz/fuzz_lua.c) */
  {
    int32_t i32[6];
    int64_t i64[6];
    const double in[6] = {NAN, 1e300, -1e300, INFINITY, -2.9, 3e9};
    for (int i = 0; i < 6; i++) m2_store(i32, M2_I32, i, in[i]), m2_store(i64, M2_I64, i, in[i]);
    CHECK(i32[0] == 0 && i64[0] == 0, "NaN -> 0, got %d %lld", i32[0], (long long)i64[0]);
    CHECK(i32[1] == INT32_MAX && i64[1] == INT64_MAX && i32[3] == INT32_MAX && i64[3] == INT64_MAX, "saturates up");
    CHECK(i32[2] == INT32_MIN && i64[2] == INT64_MIN, "saturates down");
    CHECK(i32[4] == -2 && i64[4] == -2, "truncates toward zero");
    CHECK(i32[5] == INT32_MAX && i64[5] == 3000000000LL, "3e9: past int32, within int64");
    float f[2] = {NAN, -1e30f};
    CHECK(m2_load_int(f, M2_F32, 0) == 0 && m2_load_int(f, M2_F32, 1) == INT64_MIN, "m2_load_int of floats");
  }

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
  /* element counts that overflow int64 (or pass 2^48) are refused, naming the shape, not wrapped (issue 17) */
  const int64_t G = (int64_t)1 << 32, T40 = (int64_t)1 << 40;
  int64_t sq[2] = {G, G}, sq1[2] = {G + 1, G}, s3[3] = {T40, 2, T40}, s0[2] = {T40, 0}, big0[3] = {T40, T40, 0};
  CHECK_FAILS(m2_zeros(M2_F32, M2_DEV_CPU, 2, sq) == NULL, M2_ERR_SHAPE, "(4294967296, 4294967296) is too large");
  CHECK_FAILS(m2_zeros(M2_F32, M2_DEV_CPU, 2, sq1) == NULL, M2_ERR_SHAPE, "(4294967297, 4294967296) is too large");
  CHECK_FAILS(m2_empty(M2_F64, M2_DEV_CPU, 3, s3) == NULL, M2_ERR_SHAPE, "(1099511627776, 2, 1099511627776)");
  CHECK_FAILS(m2_empty(M2_F32, M2_DEV_CPU, 3, big0) == NULL, M2_ERR_SHAPE, "too large");
  int64_t n = -1;
  CHECK_OK(m2_shape_numel(2, s0, NULL, &n));
  CHECK(n == 0, "numel of (2^40, 0) is 0, got %lld", (long long)n);
  CHECK_FAILS(m2_shape_numel(2, sq, "ctx", &n) != M2_OK, M2_ERR_SHAPE, "ctx: shape (4294967296, 4294967296)");
  m2_tensor *e0 = m2_empty(M2_F32, M2_DEV_CPU, 2, s0);
  CHECK(e0 && m2_numel(e0) == 0 && e0->stride[0] == 1, "a (2^40, 0) tensor has no elements");
  m2_release(e0);

  m2_tensor *all[] = {a, x1, x2, x3};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  CHECK(m2_live_tensors() == 0, "all tensors freed, %ld live", m2_live_tensors());
  return check_finish("test_tensor");
}
