/* cuda_attention_tc.c — the tensor-core attention path (cuda/attention_tc.cu: f32 tensors with bf16 products, head
 * dims 32 / 64 / 128) against the CPU reference with the same bf16 operands (core/ops_attention.c, ia[1]), forward
 * and every gradient, on fresh random inputs: causal with S = T, S > T and T > S (rows without keys), full, grouped
 * heads, lengths that are not multiples of the 64-row tiles, several tiles. The GPU also rounds P and dS to bf16
 * (the CPU does not), so the bound is 1e-2 of the largest reference value. A counter checks that these cases really
 * ran on the tensor-core kernels, and that a head dim they do not take (48) and f32 products do not. Skips (77)
 * without a GPU. */
#include "cuda_parity.h"
#include "../cuda/ops_mixers_entry.h"

typedef struct att_ud { m2_attention_opts o; } att_ud;
static int f_att(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  att_ud *u = ud;
  PAR_ONE(m2_attention(in[0], in[1], in[2], &u->o));
}

/* One case; tc = whether the tensor-core kernels must run it (forward and backward: 2 calls). */
static void att_case(int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool causal, bool tc) {
  int64_t sq[4] = {B, T, H, D}, sk[4] = {B, S, Hkv, D};
  m2_tensor *q = par_randn(4, sq), *k = par_randn(4, sk), *v = par_randn(4, sk);
  att_ud u = {{0, causal}};
  char name[96];
  snprintf(name, sizeof name, "B%lld T%lld S%lld H%lld/%lld D%lld%s", (long long)B, (long long)T, (long long)S,
           (long long)H, (long long)Hkv, (long long)D, causal ? " causal" : " full");
  par_case pc = {name, f_att, &u, 3, {q, k, v}, {true, true, true}, {1e-2, 0}, {1e-2, 0}, true};
  long before = m2_cuda_attention_tc_calls();
  par_run(&pc);
  long ran = m2_cuda_attention_tc_calls() - before;
  CHECK(ran == (tc ? 2 : 0), "%s: %ld call(s) on the tensor-core path, expected %d", name, ran, tc ? 2 : 0);
  m2_release(q), m2_release(k), m2_release(v);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_attention_tc");
  m2_set_matmul_precision(M2_MM_BF16);
  att_case(2, 200, 200, 4, 2, 64, true, true);   /* grouped heads, a partial last tile */
  att_case(1, 130, 300, 2, 1, 64, true, true);   /* S > T: every query sees S - T more keys */
  att_case(1, 150, 70, 2, 2, 64, true, true);    /* T > S: the first 80 rows see no key */
  att_case(2, 97, 131, 2, 1, 32, false, true);   /* full attention, D 32 */
  att_case(1, 77, 77, 2, 2, 128, true, true);    /* D 128 (key tiles of 32 in dq) */
  att_case(1, 600, 600, 2, 1, 64, true, true);   /* ten tiles */
  att_case(1, 1, 1, 1, 1, 64, true, true);       /* one row, one key */
  att_case(1, 40, 40, 2, 1, 48, true, false);    /* D 48: the fp32 kernels */
  m2_set_matmul_precision(M2_MM_F32);
  att_case(1, 64, 64, 2, 2, 64, true, false);    /* f32 products: the fp32 kernels */
  return par_finish("cuda_attention_tc");
}
