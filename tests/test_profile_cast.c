/* test_profile_cast.c — the profiler's table of the dispatcher's bf16 conversions by the op that caused them
 * (core/profile.h, m2_profile_cast_rows): on the CPU every call with a bf16 input converts, so a conv1d_causal of a
 * bf16 x with f32 weight and bias, a mul of a bf16 activation with an f32 gate and a swiglu of two bf16 tensors
 * count, forward and backward, their conversions and bytes under their own names; a conversion asked for by name
 * (m2_to_dtype) counts nowhere; nothing counts while profiling is off; m2_profile_reset forgets the rows; the
 * one-node way (m2_cast_keep_bf16) counts its conversions too. */
#include "check.h"
#include <string.h>

static m2_tensor *randn_dt(uint64_t seed, m2_dtype dt, int nd, const int64_t *shape) {
  m2_rng r = m2_rng_make(seed, 1);
  m2_tensor *x = m2_randn(&r, M2_F32, M2_DEV_CPU, nd, shape);
  m2_tensor *y = x ? m2_clone_raw(x, dt, M2_DEV_CPU) : NULL;
  m2_release(x);
  if (y) m2_requires_grad_(y, true);
  return y;
}

static const m2_profile_cast_row *find(const m2_profile_cast_row *rows, int n, const char *op) {
  for (int i = 0; i < n; i++)
    if (strcmp(rows[i].op, op) == 0) return &rows[i];
  return NULL;
}

/* sum(y) backward, y released (y in f32 by name first: the sum of a bf16 y would convert, under sum_all) */
static void back(m2_tensor *y) {
  m2_tensor *f = y ? m2_to_dtype(y, M2_F32) : NULL;
  m2_tensor *s = f ? m2_sum_all(f) : NULL;
  m2_release(f);
  CHECK(s != NULL, "sum_all");
  if (s) CHECK_OK(m2_backward(s, NULL));
  m2_release(s);
  m2_release(y);
}

static void calls(void) {
  int64_t sx[3] = {2, 5, 3}, sw[2] = {3, 4}, sb[1] = {3}, sa[2] = {4, 3}, sg[1] = {3};
  m2_tensor *x = randn_dt(1, M2_BF16, 3, sx), *w = randn_dt(2, M2_F32, 2, sw), *b = randn_dt(3, M2_F32, 1, sb);
  m2_tensor *a = randn_dt(4, M2_BF16, 2, sa), *g = randn_dt(5, M2_F32, 1, sg), *h = randn_dt(6, M2_BF16, 2, sa);
  m2_tensor *a2 = randn_dt(7, M2_BF16, 2, sa), *a3 = randn_dt(8, M2_BF16, 2, sa);
  /* each bf16 leaf used once: a gradient reaching a bf16 leaf twice adds in bf16, converting (under "add") */
  back(m2_conv1d_causal(x, w, b)); /* bf16 out (in[0]'s dtype) */
  back(m2_mul(a, g));              /* f32 out */
  back(m2_swiglu(a2, h));          /* bf16 out */
  back(m2_to_dtype(a3, M2_F32));   /* by name: not the dispatcher's */
  m2_release(x), m2_release(w), m2_release(b), m2_release(a), m2_release(g), m2_release(h);
  m2_release(a2), m2_release(a3);
}

int main(void) {
  m2_profile_cast_row rows[64];
  /* off: nothing counted */
  m2_profile_reset();
  calls();
  CHECK(m2_profile_cast_rows(rows, 64) == 0, "conversions counted while profiling was off");

  m2_profile_reset();
  m2_profile_enable(true);
  calls();
  m2_profile_enable(false);
  int n = m2_profile_cast_rows(rows, 64);
  for (int i = 0; i < n; i++)
    printf("  to_dtype for %-14s fwd %ld (%.0f B) bwd %ld (%.0f B)\n", rows[i].op, rows[i].fwd_calls, rows[i].fwd_bytes,
           rows[i].bwd_calls, rows[i].bwd_bytes);
  CHECK(n == 3, "3 ops caused conversions, got %d rows", n);
  const m2_profile_cast_row *rc = find(rows, n, "conv1d_causal"), *rm = find(rows, n, "mul"),
                            *rs = find(rows, n, "swiglu");
  CHECK(find(rows, n, "to_dtype") == NULL, "a conversion asked for by name was counted");
  /* conv1d: x (30) to f32 (120 B), y rounded to bf16 (60 B); backward: dy to f32 (120 B), dx to bf16 (60 B) */
  CHECK(rc && rc->fwd_calls == 2 && rc->fwd_bytes == 180 && rc->bwd_calls == 2 && rc->bwd_bytes == 180,
        "conv1d_causal: fwd %ld calls %.0f B, bwd %ld calls %.0f B", rc ? rc->fwd_calls : -1, rc ? rc->fwd_bytes : -1,
        rc ? rc->bwd_calls : -1, rc ? rc->bwd_bytes : -1);
  /* mul: a (12) to f32 (48 B), the output f32 already; backward: da to bf16 (24 B) */
  CHECK(rm && rm->fwd_calls == 1 && rm->fwd_bytes == 48 && rm->bwd_calls == 1 && rm->bwd_bytes == 24,
        "mul: fwd %ld calls %.0f B, bwd %ld calls %.0f B", rm ? rm->fwd_calls : -1, rm ? rm->fwd_bytes : -1,
        rm ? rm->bwd_calls : -1, rm ? rm->bwd_bytes : -1);
  /* swiglu: a, h to f32 (2 x 48 B), y to bf16 (24 B); backward: dy to f32 (48 B), da, dh to bf16 (2 x 24 B) */
  CHECK(rs && rs->fwd_calls == 3 && rs->fwd_bytes == 120 && rs->bwd_calls == 3 && rs->bwd_bytes == 96,
        "swiglu: fwd %ld calls %.0f B, bwd %ld calls %.0f B", rs ? rs->fwd_calls : -1, rs ? rs->fwd_bytes : -1,
        rs ? rs->bwd_calls : -1, rs ? rs->bwd_bytes : -1);
  CHECK(n > 0 && rows[0].fwd_calls + rows[0].bwd_calls >= rows[n - 1].fwd_calls + rows[n - 1].bwd_calls,
        "rows not sorted by calls");

  /* the one-node way: the same forward conversions; its backward makes the copies again */
  bool old = m2_cast_keep_bf16(true);
  m2_profile_reset();
  m2_profile_enable(true);
  calls();
  m2_profile_enable(false);
  m2_cast_keep_bf16(old);
  n = m2_profile_cast_rows(rows, 64);
  rc = find(rows, n, "conv1d_causal");
  CHECK(n == 3 && rc && rc->fwd_calls == 2 && rc->fwd_bytes == 180 && rc->bwd_calls == 3 && rc->bwd_bytes == 300,
        "keep: conv1d_causal: fwd %ld calls %.0f B, bwd %ld calls %.0f B (x copy again, dy, dx)",
        rc ? rc->fwd_calls : -1, rc ? rc->fwd_bytes : -1, rc ? rc->bwd_calls : -1, rc ? rc->bwd_bytes : -1);

  m2_profile_reset();
  CHECK(m2_profile_cast_rows(rows, 64) == 0, "m2_profile_reset kept conversion rows");
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_profile_cast");
}
