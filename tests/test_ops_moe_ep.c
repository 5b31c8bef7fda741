/* test_ops_moe_ep.c — core/ops_moe_ep.c in one process: moe_dispatch / moe_combine with no group and with the "self"
 * group (world 1) leave the rows where moe_permute put them, the MoE MLP composed through them equals the plain one
 * bit for bit (values and every gradient), and every error names its cause. The exchange between ranks (2 and 4 CPU
 * ranks, experts with no tokens, a rank that receives nothing) is tests/dist_ep.sh under mpirun. */
#include "check.h"

static m2_tensor *i64(int nd, const int64_t *shape, const int64_t *v) { return m2_from_data(M2_I64, M2_DEV_CPU, nd, shape, v); }

static bool same_i64(const m2_tensor *t, const int64_t *v, int64_t n) {
  if (!t || m2_numel(t) != n) return false;
  const int64_t *p = m2_data(t);
  for (int64_t i = 0; i < n; i++)
    if (p[i] != v[i]) return false;
  return true;
}

static void test_one_process(m2_dist *g, const char *what) {
  m2_rng r = m2_rng_make(5, 1);
  m2_tensor *xp = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){7, 3});
  const int64_t offv[5] = {0, 2, 2, 5, 7}, cntv[4] = {2, 0, 3, 2};
  m2_tensor *off = i64(1, (int64_t[]){5}, offv), *xl = NULL, *loff = NULL, *cnt = NULL;
  CHECK_OK(m2_moe_dispatch(g, xp, off, 4, &xl, &loff, &cnt));
  CHECK(xl && max_rel_diff(xl, xp) == 0, "%s: dispatch keeps the rows", what);
  CHECK(same_i64(loff, offv, 5), "%s: the local offsets are the offsets", what);
  CHECK(cnt && cnt->ndim == 2 && cnt->shape[0] == 1 && same_i64(cnt, cntv, 4), "%s: counts (1, 4)", what);
  m2_tensor *yp = cnt ? m2_moe_combine(g, xl, cnt) : NULL;
  CHECK(yp && max_rel_diff(yp, xp) == 0, "%s: combine gives the rows back", what);
  m2_release(xp), m2_release(off), m2_release(xl), m2_release(loff), m2_release(cnt), m2_release(yp);
}

/* the MoE MLP, through dispatch / combine or not: the same values and gradients, bit for bit */
static m2_tensor *layer(m2_dist *g, bool ep, m2_tensor *x, m2_tensor *wr, m2_tensor *wg, m2_tensor *wu, m2_tensor *wd) {
  const int64_t E = wr->shape[0];
  m2_tensor *lg = m2_linear(x, wr, NULL), *w = NULL, *ix = NULL, *xp = NULL, *pos = NULL, *off = NULL;
  m2_tensor *xl = NULL, *loff = NULL, *cnt = NULL, *a = NULL, *b = NULL, *s = NULL, *yl = NULL, *yp = NULL, *y = NULL;
  if (lg && m2_moe_route(lg, 2, &w, &ix, NULL, NULL) == M2_OK && m2_moe_permute(x, ix, E, &xp, &pos, &off) == M2_OK) {
    if (ep && m2_moe_dispatch(g, xp, off, E, &xl, &loff, &cnt) != M2_OK) goto out;
    m2_tensor *xi = ep ? xl : xp, *oi = ep ? loff : off;
    if ((a = m2_moe_grouped_matmul(xi, wg, oi)) && (b = m2_moe_grouped_matmul(xi, wu, oi)) && (s = m2_swiglu(a, b)) &&
        (yl = m2_moe_grouped_matmul(s, wd, oi))) {
      if (ep) yp = m2_moe_combine(g, yl, cnt);
      else m2_retain(yl), yp = yl;
      if (yp) y = m2_moe_unpermute(yp, w, pos);
    }
  }
out:
  m2_release(lg), m2_release(w), m2_release(ix), m2_release(xp), m2_release(pos), m2_release(off), m2_release(xl);
  m2_release(loff), m2_release(cnt), m2_release(a), m2_release(b), m2_release(s), m2_release(yl), m2_release(yp);
  return y;
}

static void test_layer(m2_dist *g) {
  const int64_t N = 9, d = 5, E = 4, h = 3;
  m2_tensor *p[5], *grads[2][5] = {{0}};
  m2_tensor *ys[2] = {0};
  for (int ep = 0; ep < 2; ep++) {
    m2_rng r = m2_rng_make(8, 2);
    p[0] = m2_randn(&r, M2_F64, M2_DEV_CPU, 2, (int64_t[]){N, d});
    p[1] = m2_randn(&r, M2_F64, M2_DEV_CPU, 2, (int64_t[]){E, d});
    p[2] = m2_randn(&r, M2_F64, M2_DEV_CPU, 3, (int64_t[]){E, h, d});
    p[3] = m2_randn(&r, M2_F64, M2_DEV_CPU, 3, (int64_t[]){E, h, d});
    p[4] = m2_randn(&r, M2_F64, M2_DEV_CPU, 3, (int64_t[]){E, d, h});
    for (int i = 0; i < 5; i++) m2_requires_grad_(p[i], true);
    ys[ep] = layer(g, ep, p[0], p[1], p[2], p[3], p[4]);
    m2_tensor *y2 = ys[ep] ? m2_mul(ys[ep], ys[ep]) : NULL, *l = y2 ? m2_sum_all(y2) : NULL;
    CHECK(l && m2_backward(l, NULL) == M2_OK, "the layer (ep %d) runs forward and backward", ep);
    for (int i = 0; i < 5; i++) {
      grads[ep][i] = p[i]->grad ? m2_retain(p[i]->grad), p[i]->grad : NULL;
      m2_release(p[i]);
    }
    m2_release(y2), m2_release(l);
  }
  CHECK(ys[0] && ys[1] && max_rel_diff(ys[1], ys[0]) == 0, "through dispatch / combine: the same output");
  for (int i = 0; i < 5; i++)
    CHECK(grads[0][i] && grads[1][i] && max_rel_diff(grads[1][i], grads[0][i]) == 0,
          "through dispatch / combine: the same gradient of input %d", i);
  for (int ep = 0; ep < 2; ep++) {
    m2_release(ys[ep]);
    for (int i = 0; i < 5; i++) m2_release(grads[ep][i]);
  }
}

static void test_errors(void) {
  m2_tensor *xp = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 7, 3), *x1 = m2_zeros_v(M2_F32, M2_DEV_CPU, 1, 7);
  m2_tensor *xi = m2_zeros_v(M2_I64, M2_DEV_CPU, 2, 7, 3);
  m2_tensor *off = i64(1, (int64_t[]){5}, (int64_t[]){0, 2, 2, 5, 7});
  m2_tensor *down = i64(1, (int64_t[]){5}, (int64_t[]){0, 3, 2, 5, 7});
  m2_tensor *shortm = i64(1, (int64_t[]){5}, (int64_t[]){0, 2, 2, 5, 6});
  m2_tensor *xl = NULL;
  CHECK_FAILS(m2_moe_dispatch(NULL, xp, off, 5, &xl, NULL, NULL) != M2_OK, M2_ERR_SHAPE, "experts + 1 = 6");
  CHECK_FAILS(m2_moe_dispatch(NULL, x1, off, 4, &xl, NULL, NULL) != M2_OK, M2_ERR_SHAPE, "must be (rows, d)");
  CHECK_FAILS(m2_moe_dispatch(NULL, xi, off, 4, &xl, NULL, NULL) != M2_OK, M2_ERR_DTYPE, "f32, f64 or bf16");
  CHECK_FAILS(m2_moe_dispatch(NULL, xp, down, 4, &xl, NULL, NULL) != M2_OK, M2_ERR_VALUE, "expert 1: 3 -> 2");
  CHECK_FAILS(m2_moe_dispatch(NULL, xp, shortm, 4, &xl, NULL, NULL) != M2_OK, M2_ERR_VALUE, "to the 7 rows of xp");
  CHECK_FAILS(m2_moe_dispatch(NULL, xp, off, 0, &xl, NULL, NULL) != M2_OK, M2_ERR_VALUE, "experts = 0 must be >= 1");
  /* a group of 3 ranks (only its world size is read before anything is sent): 4 experts do not split */
  m2_dist fake;
  memset(&fake, 0, sizeof fake);
  fake.env.world = 3;
  CHECK_FAILS(m2_moe_dispatch(&fake, xp, off, 4, &xl, NULL, NULL) != M2_OK, M2_ERR_VALUE,
              "experts = 4 is not a multiple of the world size 3");
  m2_tensor *cnt = i64(2, (int64_t[]){1, 4}, (int64_t[]){2, 0, 3, 2}), *c5 = i64(2, (int64_t[]){1, 4}, (int64_t[]){2, 0, 3, 1});
  CHECK_FAILS(m2_moe_combine(&fake, xp, cnt) == NULL, M2_ERR_SHAPE, "must be i64 (world = 3, experts)");
  CHECK_FAILS(m2_moe_combine(NULL, xp, c5) == NULL, M2_ERR_SHAPE, "yl has 7 rows but the counts give this rank's "
                                                                   "experts 6");
  CHECK_FAILS(m2_moe_combine(NULL, xp, off) == NULL, M2_ERR_SHAPE, "counts (5) must be i64");
  m2_release(xp), m2_release(x1), m2_release(xi), m2_release(off), m2_release(down), m2_release(shortm);
  m2_release(cnt), m2_release(c5);
}

int main(void) {
  test_one_process(NULL, "no group");
  m2_dist_env env = {0};
  env.world = 1;
  env.source = "single";
  m2_dist_opts o = {.env = &env};
  m2_dist *g = m2_dist_init(&o);
  CHECK_NOTNULL(g);
  if (g) {
    test_one_process(g, "self group");
    test_layer(g);
    m2_dist_free(g, false);
  }
  test_layer(NULL);
  test_errors();
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_ops_moe_ep");
}
