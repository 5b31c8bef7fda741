/* cuda_ops_moe.c — CPU-vs-CUDA parity of the mixture-of-experts ops (cuda/ops_moe.cu against core/ops_moe.c) at
 * sizes past the kernels' blocking (several counting chunks, E not a multiple of 32, k up to 8), in f32 and bf16:
 * the router's indices and counts exactly and its weights, losses and logits gradient; the permutation's rows,
 * positions and offsets exactly (an expert with no slot, all slots to one expert); the grouped matmul with empty
 * groups, also with bf16 products; the unpermute; the whole MoE MLP composed of them; the layer run twice gives the
 * same bits (no float atomics); bad indices refused on cuda with the CPU's words. The grouped tensor-core path
 * (M2_MOE_GROUPED=1, cuda/moe_gmm_tc.cu) likewise: against the CPU at shapes that cover several row tiles per group,
 * partial tiles, K not a multiple of 32, rows not 16-byte aligned, empty groups and every row in one group; against
 * the per-expert cuBLAS path on the GPU; the layer with it deterministic. Skips (77) without a GPU. */
#include "cuda_parity.h"

static int64_t g_k, g_E;

static int f_route_w(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  return m2_moe_route(in[0], g_k, &outs[0], NULL, &outs[1], NULL) == M2_OK ? 2 : -1;
}
static int f_route_ix(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  return m2_moe_route(in[0], g_k, NULL, &outs[0], NULL, &outs[1]) == M2_OK ? 2 : -1;
}
static int f_permute_x(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  return m2_moe_permute(in[0], in[1], g_E, &outs[0], NULL, NULL) == M2_OK ? 1 : -1;
}
static int f_permute_pos(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  return m2_moe_permute(in[0], in[1], g_E, NULL, &outs[0], &outs[1]) == M2_OK ? 2 : -1;
}
static int f_gmm(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_moe_grouped_matmul(in[0], in[1], in[2])); }
static int f_gmm_bf16(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  int old = m2_set_matmul_precision(M2_MM_BF16);
  outs[0] = m2_moe_grouped_matmul(in[0], in[1], in[2]);
  m2_set_matmul_precision(old);
  return outs[0] ? 1 : -1;
}
static int f_unpermute(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_moe_unpermute(in[0], in[1], in[2])); }

/* the MoE MLP: x (N, d), router (E, d), gate / up (E, h, d), down (E, d, h) -> y (N, d), aux (2) */
static int f_layer(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  m2_tensor *lg = m2_linear(in[0], in[1], NULL), *w = NULL, *ix = NULL, *aux = NULL, *xp = NULL, *pos = NULL,
            *off = NULL, *a = NULL, *b = NULL, *s = NULL, *yp = NULL;
  int n = -1;
  if (lg && m2_moe_route(lg, g_k, &w, &ix, &aux, NULL) == M2_OK &&
      m2_moe_permute(in[0], ix, g_E, &xp, &pos, &off) == M2_OK && (a = m2_moe_grouped_matmul(xp, in[2], off)) &&
      (b = m2_moe_grouped_matmul(xp, in[3], off)) && (s = m2_swiglu(a, b)) &&
      (yp = m2_moe_grouped_matmul(s, in[4], off)) && (outs[0] = m2_moe_unpermute(yp, w, pos))) {
    outs[1] = aux, aux = NULL;
    n = 2;
  }
  m2_release(lg), m2_release(w), m2_release(ix), m2_release(aux), m2_release(xp), m2_release(pos), m2_release(off);
  m2_release(a), m2_release(b), m2_release(s), m2_release(yp);
  return n;
}

/* offsets (E + 1) i64 of M rows over E groups with random sizes, the groups in `empty` forced empty */
static m2_tensor *offsets(int64_t M, int64_t E, const int64_t *empty, int ne) {
  int64_t *o = calloc((size_t)(E + 1), sizeof *o);
  m2_rng r = m2_rng_make(5, 5);
  for (int64_t i = 0; i < M; i++) {
    int64_t e;
    bool bad;
    do {
      e = m2_rng_randint(&r, E);
      bad = false;
      for (int j = 0; j < ne; j++) bad |= e == empty[j];
    } while (bad);
    o[e + 1]++;
  }
  for (int64_t e = 0; e < E; e++) o[e + 1] += o[e];
  m2_tensor *t = m2_from_data(M2_I64, M2_DEV_CPU, 1, (int64_t[]){E + 1}, o);
  free(o);
  return t;
}

/* (setenv is POSIX; the test sets M2_MOE_GROUPED for the grouped path, read by cuda/moe_gmm_tc.cu at each call) */
int setenv(const char *name, const char *value, int overwrite);
int unsetenv(const char *name);

/* y and the gradients of x and w of moe_grouped_matmul with bf16 products on cuda, the grouped path on or off */
static void gmm_on_gpu(m2_tensor *x, m2_tensor *w, m2_tensor *off, bool grouped, m2_tensor *out[3]) {
  setenv("M2_MOE_GROUPED", grouped ? "1" : "0", 1);
  m2_tensor *gx = m2_clone_raw(x, M2_F32, par_gpu), *gw = m2_clone_raw(w, M2_F32, par_gpu);
  m2_tensor *go = m2_clone_raw(off, M2_I64, par_gpu);
  m2_requires_grad_(gx, true), m2_requires_grad_(gw, true);
  m2_tensor *in[3] = {gx, gw, go}, *y[1] = {0};
  CHECK(f_gmm_bf16(in, NULL, y) == 1, "grouped %d: forward", grouped);
  m2_tensor *sq = y[0] ? m2_mul(y[0], y[0]) : NULL, *l = sq ? m2_sum_all(sq) : NULL; /* a gradient that depends on y */
  CHECK(l && m2_backward(l, NULL) == M2_OK, "grouped %d: backward", grouped);
  out[0] = y[0], out[1] = gx->grad, out[2] = gw->grad;
  if (out[1]) m2_retain(out[1]);
  if (out[2]) m2_retain(out[2]);
  m2_release(sq), m2_release(l), m2_release(gx), m2_release(gw), m2_release(go);
}

/* the grouped path (M2_MOE_GROUPED=1): parity with the CPU, agreement with the per-expert path, same bits twice */
static void check_grouped(void) {
  setenv("M2_MOE_GROUPED", "1", 1);
  /* 1000 rows over 6 groups (group 4 empty; others ~200 rows: several 64-row tiles and a partial one), 100 -> 72:
     K = 100 is not a multiple of 32 and x's rows (200 bytes in bf16) are not 16-byte aligned */
  m2_tensor *x = par_randn(2, (int64_t[]){1000, 100}), *w = par_randn(3, (int64_t[]){6, 72, 100});
  m2_tensor *off = offsets(1000, 6, (int64_t[]){4}, 1);
  par_case c1 = {"moe_grouped_matmul/grouped, bf16 products", f_gmm_bf16, NULL, 3, {x, w, off}, {true, true, false},
                 .tol = {1e-5, 2e-2}, .btol = {1e-5, 2e-2}, .f32_only = true};
  par_run(&c1);
  par_case c2 = {"moe_grouped_matmul/grouped, bf16 tensors", f_gmm, NULL, 3, {x, w, off}, {true, true, false},
                 .tol = {1e-5, 2e-2}, .btol = {1e-5, 2e-2}};
  par_run(&c2);
  /* aligned rows (64 -> 128: the cp.async path), every row in group 2 of 3 */
  m2_tensor *xa = par_randn(2, (int64_t[]){333, 64}), *wa = par_randn(3, (int64_t[]){3, 128, 64});
  m2_tensor *oa = offsets(333, 3, (int64_t[]){0, 1}, 2);
  par_case c3 = {"moe_grouped_matmul/grouped, one group, aligned", f_gmm_bf16, NULL, 3, {xa, wa, oa},
                 {true, true, false}, .tol = {1e-5, 2e-2}, .btol = {1e-5, 2e-2}, .f32_only = true};
  par_run(&c3);
  /* the two GPU paths agree (the same bf16 operands, fp32 sums in another order), and the grouped one is
     deterministic */
  m2_tensor *a[3] = {0}, *b[3] = {0}, *b2[3] = {0};
  gmm_on_gpu(x, w, off, false, a);
  gmm_on_gpu(x, w, off, true, b);
  gmm_on_gpu(x, w, off, true, b2);
  static const char *const what[3] = {"y", "dx", "dw"};
  for (int i = 0; i < 3; i++) {
    double d = a[i] && b[i] ? max_rel_diff(b[i], a[i]) : INFINITY;
    CHECK(d < 1e-4, "grouped vs per-expert %s: %g", what[i], d);
    CHECK(b[i] && b2[i] && max_rel_diff(b[i], b2[i]) == 0, "grouped %s differs between two runs", what[i]);
    printf("  grouped vs per-expert (bf16 products) %s: %.3g\n", what[i], d);
    m2_release(a[i]), m2_release(b[i]), m2_release(b2[i]);
  }
  m2_release(x), m2_release(w), m2_release(off), m2_release(xa), m2_release(wa), m2_release(oa);
  setenv("M2_MOE_GROUPED", "0", 1);
}

/* a random permutation of M rows as (N, k) i64 */
static m2_tensor *perm(int64_t N, int64_t k) {
  int64_t M = N * k, *p = malloc((size_t)M * sizeof *p);
  m2_rng r = m2_rng_make(6, 6);
  for (int64_t i = 0; i < M; i++) p[i] = i;
  for (int64_t i = M - 1; i > 0; i--) {
    int64_t j = m2_rng_randint(&r, i + 1), t = p[i];
    p[i] = p[j], p[j] = t;
  }
  m2_tensor *t = m2_from_data(M2_I64, M2_DEV_CPU, 2, (int64_t[]){N, k}, p);
  free(p);
  return t;
}

/* the layer on cuda twice: outputs and every gradient identical bit for bit */
static void check_deterministic(m2_tensor *const *cpu_in) {
  m2_tensor *g[2][5] = {{0}}, *y[2][2] = {{0}};
  for (int run = 0; run < 2; run++) {
    for (int i = 0; i < 5; i++) {
      g[run][i] = m2_clone_raw(cpu_in[i], M2_F32, par_gpu);
      m2_requires_grad_(g[run][i], true);
    }
    CHECK(f_layer(g[run], NULL, y[run]) == 2, "layer on cuda, run %d", run);
    m2_tensor *l = y[run][0] ? m2_sum_all(y[run][0]) : NULL;
    CHECK(l && m2_backward(l, NULL) == M2_OK, "layer backward, run %d", run);
    m2_release(l);
  }
  CHECK(max_rel_diff(y[0][0], y[1][0]) == 0, "the layer's output differs between two runs");
  for (int i = 0; i < 5; i++)
    CHECK(g[0][i]->grad && g[1][i]->grad && max_rel_diff(g[0][i]->grad, g[1][i]->grad) == 0,
          "gradient %d differs between two runs", i);
  for (int run = 0; run < 2; run++) {
    for (int i = 0; i < 5; i++) m2_release(g[run][i]);
    m2_release(y[run][0]), m2_release(y[run][1]);
  }
}

bool m2_moe_grouped_enabled(void); /* cuda/moe_gmm_tc.h (C linkage) */

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_moe");
  unsetenv("M2_MOE_GROUPED");
  CHECK(!m2_moe_grouped_enabled(), "the grouped kernels are on by default");
  setenv("M2_MOE_GROUPED", "0", 1); /* the per-expert path until a case asks for the grouped one */
  CHECK(!m2_moe_grouped_enabled(), "M2_MOE_GROUPED=0 does not keep the grouped kernels off");
  /* router: 700 tokens, 40 experts, top-8; and top-1 with every token biased to expert 3 */
  g_k = 8;
  m2_tensor *lg = par_randn(2, (int64_t[]){700, 40});
  par_case r1 = {"moe_route/weights, aux", f_route_w, NULL, 1, {lg}, {true}, .btol = {1e-4, 2e-2}};
  par_run(&r1);
  par_case r2 = {"moe_route/indices, counts", f_route_ix, NULL, 1, {lg}, {false}};
  par_run(&r2);
  m2_tensor *lb = par_randn(2, (int64_t[]){300, 13});
  for (int n = 0; n < 300; n++) ((float *)m2_data(lb))[n * 13 + 3] += 4;
  g_k = 1;
  par_case r3 = {"moe_route/top-1, all to expert 3", f_route_w, NULL, 1, {lb}, {true}, .btol = {1e-4, 2e-2}};
  par_run(&r3);
  par_case r4 = {"moe_route/top-1 indices", f_route_ix, NULL, 1, {lb}, {false}};
  par_run(&r4);
  /* permutation: 700 tokens x top-4 = 2800 slots (11 counting chunks) over 16 experts, expert 5 never chosen */
  g_E = 16;
  m2_tensor *x = par_randn(2, (int64_t[]){700, 24}), *ix = par_ints(M2_I64, 2, (int64_t[]){700, 4}, 0, 16);
  for (int s = 0; s < 2800; s++) if (((int64_t *)m2_data(ix))[s] == 5) ((int64_t *)m2_data(ix))[s] = 6;
  par_case p1 = {"moe_permute/rows", f_permute_x, NULL, 2, {x, ix}, {true, false}};
  par_run(&p1);
  par_case p2 = {"moe_permute/pos, offsets", f_permute_pos, NULL, 2, {x, ix}, {false, false}};
  par_run(&p2);
  m2_tensor *one = par_ints(M2_I32, 2, (int64_t[]){700, 4}, 9, 10);
  par_case p3 = {"moe_permute/all to expert 9 (i32)", f_permute_pos, NULL, 2, {x, one}, {false, false}};
  par_run(&p3);
  /* grouped matmul: 600 rows over 12 experts (2 and 7 empty), 48 -> 40 */
  m2_tensor *gx = par_randn(2, (int64_t[]){600, 48}), *gw = par_randn(3, (int64_t[]){12, 40, 48});
  m2_tensor *off = offsets(600, 12, (int64_t[]){2, 7}, 2);
  par_case g1 = {"moe_grouped_matmul", f_gmm, NULL, 3, {gx, gw, off}, {true, true, false}, .tol = {1e-5, 2e-2},
                 .btol = {1e-5, 2e-2}};
  par_run(&g1);
  par_case g2 = {"moe_grouped_matmul/bf16 products", f_gmm_bf16, NULL, 3, {gx, gw, off}, {true, true, false},
                 .tol = {1e-5, 2e-2}, .btol = {1e-5, 2e-2}, .f32_only = true};
  par_run(&g2);
  /* unpermute: 300 tokens x top-4, d 40 */
  m2_tensor *yp = par_randn(2, (int64_t[]){1200, 40}), *uw = par_uniform(2, (int64_t[]){300, 4}, 0.05, 1);
  m2_tensor *pos = perm(300, 4);
  par_case u1 = {"moe_unpermute", f_unpermute, NULL, 3, {yp, uw, pos}, {true, true, false}};
  par_run(&u1);
  /* the whole MoE MLP: 256 tokens, d 64, 20 experts top-6, hidden 32 */
  g_k = 6, g_E = 20;
  m2_tensor *lx = par_randn(2, (int64_t[]){256, 64}), *lr = par_randn(2, (int64_t[]){20, 64});
  m2_tensor *lgt = par_uniform(3, (int64_t[]){20, 32, 64}, -0.2, 0.2), *lup = par_uniform(3, (int64_t[]){20, 32, 64}, -0.2, 0.2);
  m2_tensor *ldn = par_uniform(3, (int64_t[]){20, 64, 32}, -0.2, 0.2);
  par_case l1 = {"MoE MLP composed", f_layer, NULL, 5, {lx, lr, lgt, lup, ldn}, {true, true, true, true, true},
                 .tol = {1e-4, 3e-2}, .btol = {1e-4, 5e-2}};
  par_run(&l1);
  check_deterministic((m2_tensor *[]){lx, lr, lgt, lup, ldn});
  check_grouped();
  setenv("M2_MOE_GROUPED", "1", 1); /* the layer again, on the grouped path (bf16 tensors take it) */
  par_case l2 = {"MoE MLP composed, grouped", f_layer, NULL, 5, {lx, lr, lgt, lup, ldn}, {true, true, true, true, true},
                 .tol = {1e-4, 3e-2}, .btol = {1e-4, 5e-2}};
  par_run(&l2);
  setenv("M2_MOE_GROUPED", "0", 1);
  /* bad input on cuda: the CPU's words */
  m2_tensor *gxx = m2_clone_raw(x, M2_F32, par_gpu);
  int64_t bad[8] = {0, 1, 2, 3, 4, 99, 6, 7};
  m2_tensor *bix = m2_from_data(M2_I64, par_gpu, 2, (int64_t[]){2, 4}, bad), *x2 = m2_narrow(gxx, 0, 0, 2);
  m2_tensor *o = NULL;
  CHECK_FAILS(m2_moe_permute(x2, bix, 16, &o, NULL, NULL) != M2_OK, M2_ERR_INDEX, "indices[1, 1] = 99 is not an expert");
  m2_tensor *ypg = m2_zeros(M2_F32, par_gpu, 2, (int64_t[]){8, 3}), *wg = m2_zeros(M2_F32, par_gpu, 2, (int64_t[]){2, 4});
  CHECK_FAILS(m2_moe_unpermute(ypg, wg, bix) == NULL, M2_ERR_INDEX, "pos[1, 1] = 99 is out of range");
  m2_tensor *lgg = m2_zeros(M2_F32, par_gpu, 2, (int64_t[]){3, 4});
  CHECK_FAILS(m2_moe_route(lgg, 5, &o, NULL, NULL, NULL) != M2_OK, M2_ERR_VALUE, "top_k = 5 must be in [1, E = 4]");
  m2_release(o);
  m2_release(lg), m2_release(lb), m2_release(x), m2_release(ix), m2_release(one), m2_release(gx), m2_release(gw);
  m2_release(off), m2_release(yp), m2_release(uw), m2_release(pos), m2_release(lx), m2_release(lr), m2_release(lgt);
  m2_release(lup), m2_release(ldn), m2_release(gxx), m2_release(bix), m2_release(x2), m2_release(ypg), m2_release(wg);
  m2_release(lgg);
  return par_finish("cuda_ops_moe");
}
