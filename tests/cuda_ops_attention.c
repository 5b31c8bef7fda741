/* cuda_ops_attention.c — the CUDA attention and RoPE rows (cuda/ops_attention.cu, cuda/attention_tc.cu) against
 * the CPU reference rows (core/ops_attention.c).
 * 1. Through m2_attention / m2_rope with the harness of cuda_mixer_parity.h (reference in float64): every forward
 *    output and input gradient in f32 and bf16, a backward wanting one gradient; attention with GQA, S > T, T > S
 *    (rows without keys), non-causal, head dims up to 320; rope with large position offsets; T never a multiple of
 *    a block size. Then the public API on CUDA tensors against the CPU, and the argument errors.
 * 2. The tensor-core path (f32 tensors with bf16 products, head dims 32 / 64 / 128) against the CPU reference with
 *    the same bf16 operands, forward and every gradient: causal with S = T, S > T and T > S, full, grouped heads,
 *    lengths that are not multiples of the 64-row tiles, several tiles. The GPU also rounds P and dS to bf16 (the
 *    CPU does not), so the bound is 1e-2 of the largest reference value. A counter checks that these cases really
 *    ran on the tensor-core kernels, and that a head dim they do not take (48) and f32 products do not.
 *    With the M2_ATTN_V2 path off, every case runs three times: the Hopper warpgroup forward (cuda/attention_wgmma.cu,
 *    M2_ATTN_WGMMA) off, on (1), and on with its softmax / P v overlap (2); a counter checks that it ran the forwards
 *    of head dims 64 and 128 on an sm_90 device, and nothing else.
 *    Every case runs in f32 and bf16 (bf16 q, k, v on the GPU, their values in f32 on the CPU; the GPU's o and
 *    gradients come in bf16), twice: with the M2_ATTN_V2 path off (the default: packed operands, dq and dk/dv kernels)
 *    and on (operands read in place, bf16 ones unconverted by the dispatcher, the one-pass backward with atomic dq;
 *    the forward with the warpgroup switch off and on: on Hopper it reads the same in-place operands, o in bf16);
 *    a second counter checks that the v2 kernels ran exactly when on, and the dispatcher's cast rule is checked
 *    directly (all-bf16 calls left unconverted only with v2 on). The v2 runs come twice more with the Hopper
 *    warpgroup backward (cuda/attention_wgmma_bwd.cu, M2_ATTN_BWD_WGMMA) on, with either forward; a third counter
 *    checks that it ran both backwards (f32, bf16) of head dims 64 and 128 on an sm_90 device, and nothing else.
 * Skips (77) without a GPU. */
#include "cuda_mixer_parity.h"
#include "ops.h"
#include "ops_attention.h"

/* ---------------- 1. against the float64 reference ---------------- */

/* i0 = causal, f0 = scale */
static m2_status run_attention(const pcase *pc, m2_tensor *const *in, m2_tensor **outs) {
  m2_attention_opts o = {pc->f0, pc->i0 != 0};
  outs[0] = m2_attention(in[0], in[1], in[2], &o);
  return outs[0] ? M2_OK : m2_errcode();
}
/* i0 = position offset, f0 = theta */
static m2_status run_rope(const pcase *pc, m2_tensor *const *in, m2_tensor **outs) {
  outs[0] = m2_rope(in[0], pc->f0, pc->i0);
  return outs[0] ? M2_OK : m2_errcode();
}

static void att_case(int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool causal, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "attention B%lld T%lld S%lld H%lld/%lld D%lld%s", (long long)B, (long long)T,
           (long long)S, (long long)H, (long long)Hkv, (long long)D, causal ? " causal" : " full");
  m2_rng r = m2_rng_make(seed, 3);
  int64_t sq[4] = {B, T, H, D}, sk[4] = {B, S, Hkv, D};
  pcase pc = {name, "attention", 3, 1, {randn(&r, 4, sq, 1), randn(&r, 4, sk, 1), randn(&r, 4, sk, 1)},
              run_attention, causal, 1.0 / sqrt((double)D)};
  run_case(&pc, seed);
}

static void rope_case(int64_t B, int64_t T, int64_t H, int64_t D, double theta, int64_t offset, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "rope B%lld T%lld H%lld D%lld off%lld", (long long)B, (long long)T, (long long)H,
           (long long)D, (long long)offset);
  m2_rng r = m2_rng_make(seed, 4);
  int64_t sx[4] = {B, T, H, D};
  pcase pc = {name, "rope", 1, 1, {randn(&r, 4, sx, 1)}, run_rope, offset, theta};
  run_case(&pc, seed);
}

static void api_and_errors(void) {
  int64_t sq[4] = {1, 9, 2, 8};
  /* the public API dispatches to the CUDA rows and agrees with the CPU */
  m2_tensor *q = dev_f(M2_F32, 4, sq, 1, -0.3, 0.3), *k = dev_f(M2_F32, 4, sq, 2, -0.3, 0.3),
            *v = dev_f(M2_F32, 4, sq, 3, -1, 1);
  m2_tensor *cq = m2_clone_raw(q, M2_F32, M2_DEV_CPU), *ck = m2_clone_raw(k, M2_F32, M2_DEV_CPU),
            *cv = m2_clone_raw(v, M2_F32, M2_DEV_CPU);
  m2_attention_opts ao = {0, true};
  m2_tensor *a = m2_attention(q, k, v, &ao), *ca = m2_attention(cq, ck, cv, &ao);
  CHECK(a && a->device.type == M2_CUDA && err_of(a, ca) <= 1e-4, "m2_attention on cuda agrees with the cpu");
  m2_tensor *rp = m2_rope(q, 10000, 3), *crp = m2_rope(cq, 10000, 3);
  CHECK(rp && rp->device.type == M2_CUDA && err_of(rp, crp) <= 1e-5, "m2_rope on cuda agrees with the cpu");
  m2_release(a), m2_release(ca), m2_release(rp), m2_release(crp);

  /* f64 is refused on cuda */
  m2_tensor *q64 = dev_f(M2_F64, 4, sq, 6, -1, 1);
  CHECK(q64 && q64->device.type == M2_CUDA && q64->dtype == M2_F64, "an f64 cuda tensor");
  CHECK_FAILS(m2_attention(q64, q64, q64, NULL) == NULL, M2_ERR_DTYPE, "f64");
  CHECK_FAILS(m2_rope(q64, 10000, 0) == NULL, M2_ERR_DTYPE, "f64");
  /* shapes */
  int64_t sk3[4] = {1, 9, 3, 8}, sodd[4] = {1, 9, 2, 7};
  m2_tensor *k3 = dev_f(M2_F32, 4, sk3, 9, -1, 1);
  CHECK_FAILS(m2_attention(q, k3, k3, NULL) == NULL, M2_ERR_SHAPE, "must divide");
  m2_tensor *odd = dev_f(M2_F32, 4, sodd, 13, -1, 1);
  CHECK_FAILS(m2_rope(odd, 10000, 0) == NULL, M2_ERR_SHAPE, "even");
  m2_tensor *rel[] = {q, k, v, cq, ck, cv, q64, k3, odd};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

/* ---------------- 2. the tensor-core path ---------------- */
#ifdef M2_HAVE_CUDA
/* m2_cuda_attention_tc_calls (m2cuda.h): attention calls (fwd and bwd) run on the tensor-core kernels so far */

typedef struct att_ud { m2_attention_opts o; } att_ud;
static int f_att(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  att_ud *u = ud;
  PAR_ONE(m2_attention(in[0], in[1], in[2], &u->o));
}

/* Whether the forwards of the tensor-core path run on the Hopper warpgroup kernel (cuda/attention_wgmma.cu):
 * the switch (m2_cuda_attention_wgmma) on, this build and device able to run it, head dim 64 or 128 (v2 off: on
 * the packed operands, f32 o; v2 on: on the operands in place, o in the inputs' dtype). */
static int g_wg_on; /* the switch: 0, 1, 2 */
static bool g_wg_dev;
/* Whether the backwards of the v2 path run on the Hopper warpgroup backward (cuda/attention_wgmma_bwd.cu): its switch
 * (m2_cuda_attention_bwd_wgmma, M2_ATTN_BWD_WGMMA) on, v2 on, the same build / device rule, head dim 64 or 128. */
static int g_bw_on;

/* One case in f32 and bf16; tc = whether the tensor-core kernels must run it (forward and backward, two dtypes: 4
 * calls), on the v2 kernels exactly when the switch is on. */
static void tc_case(int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool causal, bool tc) {
  int64_t sq[4] = {B, T, H, D}, sk[4] = {B, S, Hkv, D};
  m2_tensor *q = par_randn(4, sq), *k = par_randn(4, sk), *v = par_randn(4, sk);
  att_ud u = {{0, causal}};
  char name[96];
  const bool v2 = m2_cuda_attn_v2(-1) == 1;
  const bool wg = tc && g_wg_on && g_wg_dev && (D == 64 || D == 128);
  const bool bw = tc && v2 && g_bw_on && g_wg_dev && (D == 64 || D == 128);
  snprintf(name, sizeof name, "tc%s%s%s B%lld T%lld S%lld H%lld/%lld D%lld%s", v2 ? "2" : "",
           g_wg_on == 2 ? " wgmma2" : g_wg_on ? " wgmma" : "", g_bw_on ? " wgbwd" : "", (long long)B, (long long)T,
           (long long)S,
           (long long)H, (long long)Hkv, (long long)D, causal ? " causal" : " full");
  par_case pc = {name, f_att, &u, 3, {q, k, v}, {true, true, true}, {1e-2, 0}, {1e-2, 0}, false};
  long before = m2_cuda_attention_tc_calls(), before2 = m2_cuda_attention_v2_calls(),
       wbefore = m2_cuda_attention_wgmma_calls(), bbefore = m2_cuda_attention_bwd_wgmma_calls();
  par_run(&pc);
  long ran = m2_cuda_attention_tc_calls() - before, ran2 = m2_cuda_attention_v2_calls() - before2,
       wran = m2_cuda_attention_wgmma_calls() - wbefore, bran = m2_cuda_attention_bwd_wgmma_calls() - bbefore;
  CHECK(bran == (bw ? 2 : 0), "%s: %ld backward(s) on the warpgroup kernel, expected %d", name, bran, bw ? 2 : 0);
  CHECK(wran == (wg ? 2 : 0), "%s: %ld forward(s) on the warpgroup kernel, expected %d", name, wran, wg ? 2 : 0);
  CHECK(ran == (tc ? 4 : 0), "%s: %ld call(s) on the tensor-core path, expected %d", name, ran, tc ? 4 : 0);
  CHECK(ran2 == (tc && v2 ? 4 : 0), "%s: %ld call(s) on the v2 kernels, expected %d", name, ran2, tc && v2 ? 4 : 0);
  m2_release(q), m2_release(k), m2_release(v);
}

/* The dispatcher's rule for an all-bf16 attention call on the GPU: converted to f32 unless the v2 path takes it
 * (switch on, bf16 products, D 32 / 64 / 128); always converted on the CPU. */
static void cast_rule(bool v2) {
  int64_t sq[4] = {1, 16, 2, 64}, s48[4] = {1, 16, 2, 48};
  m2_tensor *q = dev_f(M2_BF16, 4, sq, 71, -1, 1), *k = dev_f(M2_BF16, 4, sq, 72, -1, 1),
            *v = dev_f(M2_BF16, 4, sq, 73, -1, 1), *q48 = dev_f(M2_BF16, 4, s48, 74, -1, 1);
  m2_tensor *in[3] = {q, k, v}, *in48[3] = {q48, q48, q48};
  m2_attention_attr a, a48;
  CHECK(q && k && v && q48 && m2_attention_check(in, &a) == M2_OK && m2_attention_check(in48, &a48) == M2_OK,
        "cast rule: inputs");
  a.scale = a48.scale = 0.125, a.causal = a48.causal = true, a.bf16 = a48.bf16 = true;
  m2_opcall c, c48;
  m2_call_init(&c, &m2_op_attention, 3, in);
  M2_SET_ATTR(&c, a);
  m2_call_init(&c48, &m2_op_attention, 3, in48);
  M2_SET_ATTR(&c48, a48);
  CHECK(m2_cast_needed(&c, GPU) == !v2, "cast rule: bf16 D 64 with bf16 products on the gpu converted: %d (v2 %d)",
        (int)m2_cast_needed(&c, GPU), (int)v2);
  CHECK(m2_cast_needed(&c, M2_DEV_CPU), "cast rule: always converted on the cpu");
  CHECK(m2_cast_needed(&c48, GPU), "cast rule: D 48 converted");
  a.bf16 = false;
  M2_SET_ATTR(&c, a);
  CHECK(m2_cast_needed(&c, GPU), "cast rule: f32 products converted");
  m2_release(q), m2_release(k), m2_release(v), m2_release(q48);
}

static void tensor_core_cases(void) {
  cast_rule(m2_cuda_attn_v2(-1) == 1);
  m2_set_matmul_precision(M2_MM_BF16);
  tc_case(2, 200, 200, 4, 2, 64, true, true);   /* grouped heads, a partial last tile */
  tc_case(1, 130, 300, 2, 1, 64, true, true);   /* S > T: every query sees S - T more keys */
  tc_case(1, 150, 70, 2, 2, 64, true, true);    /* T > S: the first 80 rows see no key */
  tc_case(2, 97, 131, 2, 1, 32, false, true);   /* full attention, D 32 */
  tc_case(1, 77, 77, 2, 2, 128, true, true);    /* D 128 (key tiles of 32 in dq) */
  tc_case(1, 600, 600, 2, 1, 64, true, true);   /* ten tiles */
  tc_case(1, 1, 1, 1, 1, 64, true, true);       /* one row, one key */
  tc_case(2, 70, 45, 4, 1, 128, true, true);    /* T > S at D 128, 4 query heads a kv head */
  tc_case(1, 33, 200, 3, 3, 32, true, true);    /* S > T at D 32, one query tile */
  tc_case(1, 450, 200, 4, 1, 64, true, true);   /* T > S over several query blocks, grouped: 250 keyless rows */
  tc_case(1, 333, 333, 4, 2, 128, true, true);  /* D 128, grouped, T not a multiple of 64 or 192, 6 key tiles */
  tc_case(1, 130, 300, 2, 2, 128, true, true);  /* D 128, S > T */
  tc_case(1, 250, 190, 2, 1, 128, false, true); /* D 128 full, T > S, a partial last key tile */
  tc_case(1, 200, 333, 2, 2, 64, false, true);  /* D 64 full, S > T, a partial last key tile */
  tc_case(1, 1000, 1000, 2, 1, 64, true, true); /* eight key tiles of 128: the double buffer turns over */
  tc_case(1, 40, 40, 2, 1, 48, true, false);    /* D 48: the fp32 kernels */
  m2_set_matmul_precision(M2_MM_F32);
  tc_case(1, 64, 64, 2, 2, 64, true, false);    /* f32 products: the fp32 kernels */
  printf("tensor-core path (v2 %s, warpgroup forward %d, warpgroup backward %d%s): %d cases; worst error f32 fwd "
         "%.2e bwd %.2e, bf16 fwd %.2e bwd %.2e\n", m2_cuda_attn_v2(-1) == 1 ? "on" : "off", g_wg_on, g_bw_on,
         g_wg_dev ? "" : ": not on this device or build", par_cases, par_worst_fwd[0], par_worst_bwd[0], par_worst_fwd[1],
         par_worst_bwd[1]);
}
#endif

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_attention");
  uint64_t seed = 580;
  /* attention: GQA, S > T, T > S (rows without keys), full, large head dims */
  att_case(2, 37, 37, 4, 2, 32, true, seed += 10);
  att_case(1, 50, 70, 3, 1, 64, true, seed += 10);
  att_case(1, 45, 20, 2, 2, 48, true, seed += 10);
  att_case(2, 33, 41, 2, 1, 16, false, seed += 10);
  att_case(1, 40, 40, 2, 1, 136, true, seed += 10);
  att_case(1, 23, 23, 2, 2, 320, true, seed += 10);
  /* rope */
  rope_case(2, 37, 3, 32, 10000, 5, seed += 10);
  rope_case(1, 19, 2, 64, 10000, 4000, seed += 10);
  rope_case(1, 5, 1, 6, 500, 0, seed += 10);
  api_and_errors();
#ifdef M2_HAVE_CUDA
  /* the tensor-core cases with the M2_ATTN_V2 path off, then on (the environment's setting restored after) */
  const int v2 = m2_cuda_attn_v2(-1), wg = m2_cuda_attention_wgmma(-1), bw = m2_cuda_attention_bwd_wgmma(-1);
  g_wg_dev = m2_cuda_attention_wgmma_device() != 0;
  m2_cuda_attention_bwd_wgmma(g_bw_on = 0);
  m2_cuda_attn_v2(0);
  for (g_wg_on = 0; g_wg_on < 3; g_wg_on++) { /* the warpgroup forward off; on; on with its overlap */
    m2_cuda_attention_wgmma(g_wg_on);
    tensor_core_cases();
  }
  m2_cuda_attn_v2(1);
  for (g_bw_on = 0; g_bw_on < 2; g_bw_on++) { /* v2 on: k2_bwd, then the warpgroup backward (M2_ATTN_BWD_WGMMA) */
    m2_cuda_attention_bwd_wgmma(g_bw_on);
    for (g_wg_on = 0; g_wg_on < 2; g_wg_on++) { /* its mma.sync forward; the warpgroup one on its operands */
      m2_cuda_attention_wgmma(g_wg_on);
      tensor_core_cases();
    }
  }
  m2_cuda_attn_v2(v2);
  m2_cuda_attention_wgmma(wg);
  m2_cuda_attention_bwd_wgmma(bw);
#endif
  return mixer_finish("cuda_ops_attention");
}
