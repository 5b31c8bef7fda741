/* test_ops_moe.c — the mixture-of-experts ops (core/ops_moe.c): the router against hand-computed values (top-k
 * order, ties to the lower index, normalized weights, counts, load-balance and z-loss), the permutation's stable
 * order and offsets, the grouped matmul against a per-row loop (an empty group, every row in one group), the
 * unpermute, the whole MoE MLP composed of them against a dense per-token loop in double (F32 and F64), and every
 * error (top_k > E, top_k = 0, no experts, an expert index out of range, bad offsets, pos not a permutation). The
 * float64 gradient checks are tests/op_cases.c's rows. */
#include "check.h"

static double *host(const m2_tensor *t) {
  int64_t n = m2_numel(t);
  double *p = calloc((size_t)(n ? n : 1), sizeof(double));
  m2_to_host(t, M2_F64, p);
  return p;
}

static m2_tensor *f64(int nd, const int64_t *shape, const double *v) {
  return m2_from_data(M2_F64, M2_DEV_CPU, nd, shape, v);
}
static m2_tensor *i64(int nd, const int64_t *shape, const int64_t *v) {
  return m2_from_data(M2_I64, M2_DEV_CPU, nd, shape, v);
}

static void test_route_values(void) {
  /* 3 tokens, 4 experts, top-2; token 1 ties experts 1 and 3 (the lower index wins), token 2 ties all four */
  const double l[12] = {0.5, -1.0, 2.0, 1.0, /**/ 0.0, 3.0, -2.0, 3.0, /**/ 1.0, 1.0, 1.0, 1.0};
  m2_tensor *lg = f64(2, (int64_t[]){3, 4}, l), *w = NULL, *ix = NULL, *aux = NULL, *cnt = NULL;
  CHECK_OK(m2_moe_route(lg, 2, &w, &ix, &aux, &cnt));
  if (!w) return;
  double *pw = host(w), *pa = host(aux), *pi = host(ix), *pc = host(cnt);
  const int64_t want_ix[6] = {2, 3, 1, 3, 0, 1};
  for (int s = 0; s < 6; s++) CHECK(pi[s] == want_ix[s], "indices[%d] = %g, want %lld", s, pi[s], (long long)want_ix[s]);
  CHECK(ix->dtype == M2_I64 && cnt->dtype == M2_I64, "indices and counts are i64");
  CHECK_CLOSE(pw[0], 1 / (1 + exp(-1.0)), 1e-12, 0, "token 0 weight of expert 2");
  CHECK_CLOSE(pw[1], 1 / (1 + exp(1.0)), 1e-12, 0, "token 0 weight of expert 3");
  CHECK_CLOSE(pw[2], 0.5, 1e-12, 0, "tied weights");
  CHECK_CLOSE(pw[4], 0.5, 1e-12, 0, "tied weights");
  const double want_c[4] = {1, 2, 1, 2};
  for (int e = 0; e < 4; e++) CHECK(pc[e] == want_c[e], "counts[%d] = %g, want %g", e, pc[e], want_c[e]);
  /* aux by hand: P = mean softmax, f = counts / 6, lb = 4 sum f P; z = mean lse^2 */
  double P[4] = {0}, z = 0;
  for (int n = 0; n < 3; n++) {
    double se = 0;
    for (int e = 0; e < 4; e++) se += exp(l[n * 4 + e]);
    for (int e = 0; e < 4; e++) P[e] += exp(l[n * 4 + e]) / se / 3;
    z += log(se) * log(se) / 3;
  }
  double lb = 0;
  for (int e = 0; e < 4; e++) lb += 4 * (want_c[e] / 6) * P[e];
  CHECK_CLOSE(pa[0], lb, 1e-12, 1e-12, "load-balance loss");
  CHECK_CLOSE(pa[1], z, 1e-12, 1e-12, "z-loss");
  free(pw), free(pa), free(pi), free(pc);
  m2_release(w), m2_release(ix), m2_release(aux), m2_release(cnt);
  /* a perfectly balanced router with uniform probabilities has load balance exactly 1 */
  const double u[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  m2_tensor *lu = f64(2, (int64_t[]){2, 4}, u);
  CHECK_OK(m2_moe_route(lu, 2, NULL, NULL, &aux, NULL));
  if (aux) {
    double *a = host(aux);
    CHECK_CLOSE(a[0], 1.0, 1e-12, 0, "balanced load-balance loss");
    CHECK_CLOSE(a[1], log(4.0) * log(4.0), 1e-12, 0, "uniform z-loss");
    free(a);
  }
  m2_release(aux), m2_release(lu), m2_release(lg);
}

static void test_route_errors(void) {
  m2_tensor *lg = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 3, 4), *w = NULL;
  CHECK_FAILS(m2_moe_route(lg, 5, &w, NULL, NULL, NULL) != M2_OK, M2_ERR_VALUE, "top_k = 5 must be in [1, E = 4]");
  CHECK_FAILS(m2_moe_route(lg, 0, &w, NULL, NULL, NULL) != M2_OK, M2_ERR_VALUE, "top_k = 0");
  m2_tensor *l0 = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 3, 0), *l3 = m2_zeros_v(M2_F32, M2_DEV_CPU, 3, 1, 3, 4);
  CHECK_FAILS(m2_moe_route(l0, 1, &w, NULL, NULL, NULL) != M2_OK, M2_ERR_VALUE, "no experts");
  CHECK_FAILS(m2_moe_route(l3, 1, &w, NULL, NULL, NULL) != M2_OK, M2_ERR_SHAPE, "must be (N, E)");
  m2_tensor *li = m2_zeros_v(M2_I64, M2_DEV_CPU, 2, 3, 4);
  CHECK_FAILS(m2_moe_route(li, 1, &w, NULL, NULL, NULL) != M2_OK, M2_ERR_DTYPE, "logits");
  /* no tokens: empty outputs, zero losses */
  m2_tensor *le = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 0, 4), *aux = NULL, *cnt = NULL;
  CHECK_OK(m2_moe_route(le, 2, &w, NULL, &aux, &cnt));
  if (aux) {
    double *a = host(aux), *c = host(cnt);
    CHECK(a[0] == 0 && a[1] == 0 && c[0] == 0 && w->shape[0] == 0, "an empty batch routes nothing");
    free(a), free(c);
  }
  m2_release(w), m2_release(aux), m2_release(cnt);
  m2_release(lg), m2_release(l0), m2_release(l3), m2_release(li), m2_release(le);
}

static void test_permute(void) {
  /* 4 tokens, top-2 of 3 experts; expert 1 gets no slot */
  const double x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int64_t ix[8] = {2, 0, 0, 2, 2, 0, 0, 2};
  m2_tensor *tx = f64(2, (int64_t[]){4, 2}, x), *ti = i64(2, (int64_t[]){4, 2}, ix), *xp = NULL, *pos = NULL,
            *off = NULL;
  CHECK_OK(m2_moe_permute(tx, ti, 3, &xp, &pos, &off));
  if (!xp) return;
  double *pp = host(pos), *po = host(off), *px = host(xp);
  /* expert 0 takes slots 1, 2, 5, 6 (tokens 0, 1, 2, 3) in slot order, expert 2 slots 0, 3, 4, 7 */
  const double want_pos[8] = {4, 0, 1, 5, 6, 2, 3, 7}, want_off[4] = {0, 4, 4, 8};
  for (int s = 0; s < 8; s++) CHECK(pp[s] == want_pos[s], "pos[%d] = %g, want %g", s, pp[s], want_pos[s]);
  for (int e = 0; e < 4; e++) CHECK(po[e] == want_off[e], "offsets[%d] = %g, want %g", e, po[e], want_off[e]);
  for (int s = 0; s < 8; s++)
    for (int i = 0; i < 2; i++)
      CHECK(px[(int)want_pos[s] * 2 + i] == x[(s / 2) * 2 + i], "xp row %g holds token %d", want_pos[s], s / 2);
  free(pp), free(po), free(px);
  m2_release(xp), m2_release(pos), m2_release(off);
  const int64_t bad[8] = {0, 1, 2, 3, 0, 1, 2, 0};
  m2_tensor *tb = i64(2, (int64_t[]){4, 2}, bad);
  CHECK_FAILS(m2_moe_permute(tx, tb, 3, &xp, NULL, NULL) != M2_OK, M2_ERR_INDEX, "indices[1, 1] = 3 is not an expert");
  CHECK_FAILS(m2_moe_permute(tx, tb, 0, &xp, NULL, NULL) != M2_OK, M2_ERR_VALUE, "experts = 0");
  m2_tensor *ts = i64(2, (int64_t[]){2, 4}, ix);
  CHECK_FAILS(m2_moe_permute(tx, ts, 3, &xp, NULL, NULL) != M2_OK, M2_ERR_SHAPE, "(N, d) and (N, k)");
  m2_release(tx), m2_release(ti), m2_release(tb), m2_release(ts);
}

static void test_gmm(m2_dtype dt) {
  m2_rng r = m2_rng_make(7, 1);
  m2_tensor *x = m2_randn(&r, dt, M2_DEV_CPU, 2, (int64_t[]){9, 5}), *w = m2_randn(&r, dt, M2_DEV_CPU, 3, (int64_t[]){4, 3, 5});
  const int64_t offs[2][5] = {{0, 4, 4, 6, 9}, {0, 0, 9, 9, 9}};
  for (int t = 0; t < 2; t++) {
    m2_tensor *off = i64(1, (int64_t[]){5}, offs[t]), *y = m2_moe_grouped_matmul(x, w, off);
    CHECK(y && y->shape[0] == 9 && y->shape[1] == 3, "grouped matmul shape");
    if (y) {
      double *px = host(x), *pw = host(w), *py = host(y), err = 0;
      for (int e = 0; e < 4; e++)
        for (int64_t m = offs[t][e]; m < offs[t][e + 1]; m++)
          for (int o = 0; o < 3; o++) {
            double s = 0;
            for (int i = 0; i < 5; i++) s += px[m * 5 + i] * pw[(e * 3 + o) * 5 + i];
            err = fmax(err, fabs(s - py[m * 3 + o]));
          }
      CHECK(err < (dt == M2_F64 ? 1e-12 : 1e-5), "grouped matmul vs loop: %g (%s, case %d)", err, m2_dtype_name(dt), t);
      free(px), free(pw), free(py);
    }
    m2_release(y), m2_release(off);
  }
  const int64_t bad1[5] = {0, 4, 3, 6, 9}, bad2[5] = {0, 4, 4, 6, 8};
  m2_tensor *b1 = i64(1, (int64_t[]){5}, bad1), *b2 = i64(1, (int64_t[]){5}, bad2);
  m2_tensor *o4 = m2_zeros_v(M2_I64, M2_DEV_CPU, 1, 4), *of = m2_zeros_v(dt, M2_DEV_CPU, 1, 5);
  CHECK_FAILS(m2_moe_grouped_matmul(x, w, b1) == NULL, M2_ERR_VALUE, "offsets decrease at expert 1");
  CHECK_FAILS(m2_moe_grouped_matmul(x, w, b2) == NULL, M2_ERR_VALUE, "run from 0 to the 9 rows");
  CHECK_FAILS(m2_moe_grouped_matmul(x, w, o4) == NULL, M2_ERR_SHAPE, "(E + 1)");
  CHECK_FAILS(m2_moe_grouped_matmul(x, w, of) == NULL, M2_ERR_DTYPE, "offsets must be i64");
  m2_release(b1), m2_release(b2), m2_release(o4), m2_release(of), m2_release(x), m2_release(w);
}

static void test_unpermute_errors(void) {
  m2_tensor *yp = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 4, 3), *w = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 2, 2);
  const int64_t twice[4] = {0, 1, 1, 3}, out[4] = {0, 1, 2, 4};
  m2_tensor *p1 = i64(2, (int64_t[]){2, 2}, twice), *p2 = i64(2, (int64_t[]){2, 2}, out);
  CHECK_FAILS(m2_moe_unpermute(yp, w, p1) == NULL, M2_ERR_INDEX, "pos[1, 0] = 1 is used twice");
  CHECK_FAILS(m2_moe_unpermute(yp, w, p2) == NULL, M2_ERR_INDEX, "pos[1, 1] = 4 is out of range");
  m2_tensor *y5 = m2_zeros_v(M2_F32, M2_DEV_CPU, 2, 5, 3);
  CHECK_FAILS(m2_moe_unpermute(y5, w, p1) == NULL, M2_ERR_SHAPE, "(N k, d)");
  m2_release(yp), m2_release(w), m2_release(p1), m2_release(p2), m2_release(y5);
}

/* the MoE MLP composed of the four ops and swiglu against a dense loop over tokens and their k experts */
static void test_layer(m2_dtype dt) {
  const int64_t N = 11, d = 6, E = 5, k = 2, h = 4;
  m2_rng r = m2_rng_make(3, 9);
  m2_tensor *x = m2_randn(&r, dt, M2_DEV_CPU, 2, (int64_t[]){N, d}), *wr = m2_randn(&r, dt, M2_DEV_CPU, 2, (int64_t[]){E, d});
  m2_tensor *wg = m2_randn(&r, dt, M2_DEV_CPU, 3, (int64_t[]){E, h, d}), *wu = m2_randn(&r, dt, M2_DEV_CPU, 3, (int64_t[]){E, h, d});
  m2_tensor *wd = m2_randn(&r, dt, M2_DEV_CPU, 3, (int64_t[]){E, d, h});
  m2_tensor *lg = m2_linear(x, wr, NULL), *w = NULL, *ix = NULL, *xp = NULL, *pos = NULL, *off = NULL;
  CHECK_OK(m2_moe_route(lg, k, &w, &ix, NULL, NULL));
  CHECK_OK(m2_moe_permute(x, ix, E, &xp, &pos, &off));
  m2_tensor *a = m2_moe_grouped_matmul(xp, wg, off), *b = m2_moe_grouped_matmul(xp, wu, off);
  m2_tensor *s = a && b ? m2_swiglu(a, b) : NULL, *yp = s ? m2_moe_grouped_matmul(s, wd, off) : NULL;
  m2_tensor *y = yp ? m2_moe_unpermute(yp, w, pos) : NULL;
  CHECK(y != NULL, "the composed layer runs");
  if (y) {
    double *px = host(x), *pg = host(wg), *pu = host(wu), *pd = host(wd), *pw = host(w), *pi = host(ix), *py = host(y);
    double err = 0;
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < d; o++) {
        double acc = 0;
        for (int64_t j = 0; j < k; j++) {
          int64_t e = (int64_t)pi[n * k + j];
          double out = 0;
          for (int64_t c = 0; c < h; c++) {
            double g = 0, u = 0;
            for (int64_t i = 0; i < d; i++) {
              g += pg[(e * h + c) * d + i] * px[n * d + i];
              u += pu[(e * h + c) * d + i] * px[n * d + i];
            }
            out += pd[(e * d + o) * h + c] * (g / (1 + exp(-g))) * u;
          }
          acc += pw[n * k + j] * out;
        }
        err = fmax(err, fabs(acc - py[n * d + o]) / (1 + fabs(acc)));
      }
    CHECK(err < (dt == M2_F64 ? 1e-12 : 1e-5), "MoE layer vs dense loop: %g (%s)", err, m2_dtype_name(dt));
    free(px), free(pg), free(pu), free(pd), free(pw), free(pi), free(py);
  }
  m2_release(x), m2_release(wr), m2_release(wg), m2_release(wu), m2_release(wd), m2_release(lg), m2_release(w);
  m2_release(ix), m2_release(xp), m2_release(pos), m2_release(off), m2_release(a), m2_release(b), m2_release(s);
  m2_release(yp), m2_release(y);
}

int main(void) {
  test_route_values();
  test_route_errors();
  test_permute();
  test_gmm(M2_F64);
  test_gmm(M2_F32);
  test_unpermute_errors();
  test_layer(M2_F64);
  test_layer(M2_F32);
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_ops_moe");
}
