/* test_mixed_switch.c — the mixed-kernel switch (m2_mixed_kernels, core/op.h) in the dispatcher's bf16 rule
 * (m2_cast_needed, core/op_cast.c), without a GPU: for a device other than the CPU, a bf16 / f32 call of an op
 * flagged M2_OP_MIXED_KERNELS_OPT (conv1d_causal, add, sub, mul, swiglu) converts while the switch is off and goes
 * to the kernels as it is while it is on (the default); other ops (div) convert either way; all-bf16 calls never
 * convert there; the CPU converts every bf16 call whatever the switch, with the same results. */
#include "check.h"
#include <string.h>

static m2_tensor *t_of(m2_dtype dt, int nd, const int64_t *shape) {
  m2_rng r = m2_rng_make(5, 1);
  m2_tensor *x = m2_randn(&r, M2_F32, M2_DEV_CPU, nd, shape);
  m2_tensor *y = x ? m2_clone_raw(x, dt, M2_DEV_CPU) : NULL;
  m2_release(x);
  return y;
}

static bool needed(const m2_op *op, int n, m2_tensor *const *in, m2_device dev) {
  m2_opcall c;
  m2_call_init(&c, op, n, in);
  return m2_cast_needed(&c, dev);
}

int main(void) {
  const m2_device gpu = {M2_CUDA, 0}; /* m2_cast_needed reads only the device's type: no GPU needed */
  int64_t s2[2] = {4, 3}, s1[1] = {3}, sx[3] = {2, 5, 3}, sw[2] = {3, 4};
  m2_tensor *a16 = t_of(M2_BF16, 2, s2), *a32 = t_of(M2_F32, 2, s2), *g32 = t_of(M2_F32, 1, s1);
  m2_tensor *b16 = t_of(M2_BF16, 2, s2), *x16 = t_of(M2_BF16, 3, sx), *w32 = t_of(M2_F32, 2, sw);
  m2_tensor *bias32 = t_of(M2_F32, 1, s1);
  m2_tensor *mix_bin[2] = {a16, g32}, *mix_rev[2] = {g32, a16}, *all16[2] = {a16, b16}, *mix_sw[2] = {a16, a32};
  m2_tensor *conv[3] = {x16, w32, bias32};
  const m2_op *flagged[] = {&m2_op_add, &m2_op_sub, &m2_op_mul};

  if (!getenv("M2_MIXED_KERNELS"))
    CHECK(m2_mixed_kernels_on(), "the switch is on by default (M2_MIXED_KERNELS unset)");
  m2_mixed_kernels(false);
  for (int on = 0; on < 2; on++) {
    bool old = m2_mixed_kernels(on);
    for (int k = 0; k < 3; k++) {
      CHECK(needed(flagged[k], 2, mix_bin, gpu) == !on, "%s bf16 * f32 on a device, switch %d", flagged[k]->name, on);
      CHECK(needed(flagged[k], 2, mix_rev, gpu) == !on, "%s f32 * bf16 on a device, switch %d", flagged[k]->name, on);
      CHECK(!needed(flagged[k], 2, all16, gpu), "%s all bf16 on a device never converts", flagged[k]->name);
      CHECK(needed(flagged[k], 2, mix_bin, M2_DEV_CPU), "%s on the CPU always converts", flagged[k]->name);
    }
    CHECK(needed(&m2_op_swiglu, 2, mix_sw, gpu) == !on, "swiglu mix, switch %d", on);
    CHECK(needed(&m2_op_conv1d_causal, 3, conv, gpu) == !on, "conv1d_causal mix, switch %d", on);
    CHECK(needed(&m2_op_conv1d_causal, 3, conv, M2_DEV_CPU), "conv1d_causal on the CPU converts");
    CHECK(needed(&m2_op_div, 2, mix_bin, gpu), "div has no mixed kernel: converts, switch %d", on);
    m2_mixed_kernels(old);
  }
  CHECK(m2_mixed_kernels(true) == false && m2_mixed_kernels(false) == true, "setter returns the setting before");

  /* the CPU: the same values whatever the switch (it always converts) */
  m2_tensor *y0 = m2_mul(a16, g32);
  m2_mixed_kernels(true);
  m2_tensor *y1 = m2_mul(a16, g32);
  m2_mixed_kernels(false);
  CHECK(y0 && y1 && y0->dtype == M2_F32 && y1->dtype == M2_F32 && max_rel_diff(y0, y1) == 0,
        "cpu mul: the same f32 result with the switch on");
  m2_release(y0), m2_release(y1);

  m2_release(a16), m2_release(a32), m2_release(g32), m2_release(b16), m2_release(x16), m2_release(w32);
  m2_release(bias32);
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_mixed_switch");
}
