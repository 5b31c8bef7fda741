/* cuda_ops_m2rnn.c — the fused M2RNN CUDA kernels (cuda/m2rnn.h) against the CPU reference op m2rnn
 * (core/ops_m2rnn.c, float64, through m2_m2rnn) on fresh random inputs: forward y, hT and every gradient (dq, dk,
 * dv, dW, df, dh0), both paths, head sharing, h0, active state-gradient clipping, T not a multiple of the chunk,
 * checkpoint intervals from 8 (no segment replay) to 64.
 * GPU inputs are bf16 (q, k, v, dy) / fp32 (W, f, h0, dhT); the reference gets the same rounded values.
 * Outputs are poisoned (NaN) before each run. Skips (exit 77) without a GPU. */
#include <math.h>
#include <string.h>
#include "cuda_parity.h"

#ifndef M2_HAVE_CUDA
int main(void) {
  printf("cuda_ops_m2rnn: built without CUDA, skipped\n");
  return 77;
}
#else
#include "../cuda/m2rnn.h"

typedef struct tcase {
  const char *name;
  int B, T, N, K, V, Nq, Nk, Nv, Nf, Nw;
  int h0;        /* pass an initial state */
  float clip;    /* state-gradient clipping (<= 0: off) */
  int path, ck, tanh_mode, hpb;
  double tol;    /* on ||gpu - ref|| / ||ref|| */
  int frows;     /* forward rows per warp (opts.fwd_rows_per_warp; 0: default) */
  int brows;     /* backward rows per warp (opts.bwd_rows_per_warp; 0: default) */
  int io32;      /* fp32 q, k, v, y, dy, dq, dk, dv (opts.io_f32; general path) */
} tcase;

static const tcase CASES[] = {
    /* name                      B  T    N  K   V   Nq Nk Nv Nf Nw h0 clip  path              ck  tanh hpb tol */
    {"paper-like fast",          2, 203, 4, 64, 16, 1, 1, 4, 4, 4, 0, 1.f, M2_M2RNN_AUTO, 64, 0, 4, 1e-2},
    {"sharing+h0+clip fast",     2, 150, 6, 32, 16, 2, 3, 6, 3, 2, 1, .05f, M2_M2RNN_FAST, 32, 3, 2, 1e-2},
    {"K=48 unshared fast",       1, 77, 3, 48, 16, 3, 3, 3, 3, 3, 1, 0.f, M2_M2RNN_FAST, 24, 1, 3, 1e-2},
    {"paper-like hpb=1 mix8",  2, 203, 4, 64, 16, 1, 1, 4, 4, 4, 1, 1.f, M2_M2RNN_FAST, 64, 4, 1, 1e-2},
    {"ckpt 8, no clip, 2 slots", 2, 100, 6, 64, 16, 1, 1, 6, 6, 6, 1, 0.f, M2_M2RNN_FAST, 8, 0, 2, 1e-2},
    {"8-row forward warps",      2, 130, 6, 64, 16, 1, 1, 6, 6, 6, 1, 1.f, M2_M2RNN_FAST, 16, 0, 3, 1e-2, 8},
    {"16-row backward warps",    2, 77, 6, 64, 16, 1, 1, 6, 6, 6, 1, 1.f, M2_M2RNN_FAST, 8, 0, 6, 1e-2, 0, 16},
    {"16-row bwd, ckpt 16",      1, 90, 2, 64, 16, 1, 1, 2, 2, 2, 1, .5f, M2_M2RNN_FAST, 16, 0, 2, 1e-2, 0, 16},
    {"32-row bwd, ckpt 8",       2, 77, 6, 64, 16, 1, 1, 6, 6, 6, 1, 1.f, M2_M2RNN_FAST, 8, 0, 6, 1e-2, 0, 32},
    {"8-row fwd, K=48, mix4",    1, 77, 3, 48, 16, 3, 3, 3, 3, 3, 1, 0.f, M2_M2RNN_FAST, 24, 2, 3, 1e-2, 8},
    {"ckpt 8: sharing, K=32",    2, 150, 6, 32, 16, 2, 3, 6, 3, 2, 1, .05f, M2_M2RNN_FAST, 8, 3, 2, 1e-2},
    {"ckpt 8: K=48, mix4",       1, 77, 3, 48, 16, 3, 3, 3, 3, 3, 1, 0.f, M2_M2RNN_FAST, 8, 2, 3, 1e-2},
    {"ckpt 8: T=8, 1 chunk",     1, 8, 2, 64, 16, 1, 1, 2, 2, 2, 1, 1.f, M2_M2RNN_FAST, 8, 0, 2, 1e-2},
    {"ckpt 8: T=13",             1, 13, 2, 64, 16, 1, 1, 2, 2, 2, 1, 1.f, M2_M2RNN_FAST, 8, 0, 2, 1e-2},
    {"T=5 < sub-chunk",          1, 5, 2, 64, 16, 1, 1, 2, 2, 2, 0, 1.f, M2_M2RNN_FAST, 64, 0, 2, 1e-2},
    {"paper-like general",       1, 100, 2, 64, 16, 1, 1, 2, 2, 2, 1, 1.f, M2_M2RNN_GENERAL, 64, 0, 0, 1e-2},
    {"K=24 V=8 general",         2, 50, 4, 24, 8, 2, 1, 4, 2, 1, 1, .5f, M2_M2RNN_AUTO, 16, 0, 0, 1e-2},
    /* fp32 I/O (what the CUDA op uses on the general path): fp32 arithmetic against the float64 reference, so
       1e-4 fails if anything is rounded to bf16 (that costs ~3e-3) */
    {"K=24 V=8 general fp32",    2, 50, 4, 24, 8, 2, 1, 4, 2, 1, 1, .5f, M2_M2RNN_AUTO, 16, 0, 0, 1e-4, 0, 0, 1},
    {"K=2 state-tracking fp32",  2, 40, 4, 2, 16, 1, 1, 4, 4, 4, 0, 1.f, M2_M2RNN_AUTO, 8, 0, 0, 1e-4, 0, 0, 1},
    {"paper-like general fp32",  1, 60, 2, 64, 16, 1, 1, 2, 2, 2, 1, 1.f, M2_M2RNN_GENERAL, 64, 0, 0, 1e-4, 0, 0, 1},
};

static float bf16r(double x) { return m2_bf16_to_f32(m2_f32_to_bf16((float)x)); }

/* A random host array of n values: scale * N(0, 1) rounded to bf16 (bf = 1) or f32. */
static double *rnd(m2_rng *r, int64_t n, double scale, double shift, int bf) {
  int64_t sh[1] = {n};
  m2_tensor *t = m2_randn(r, M2_F64, M2_DEV_CPU, 1, sh);
  double *x = malloc(sizeof(double) * (size_t)n);
  m2_to_host(t, M2_F64, x);
  m2_release(t);
  for (int64_t i = 0; i < n; i++) x[i] = bf ? bf16r(shift + scale * x[i]) : (float)(shift + scale * x[i]);
  return x;
}

static m2_tensor *cpu64(const double *x, int nd, const int64_t *shape) {
  return m2_from_data(M2_F64, M2_DEV_CPU, nd, shape, x);
}
/* A device tensor of dtype dt holding x. */
static m2_tensor *dev(const double *x, m2_dtype dt, int nd, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  void *buf = malloc((size_t)n * 4 + 4);
  for (int64_t i = 0; i < n; i++) {
    if (dt == M2_BF16) ((uint16_t *)buf)[i] = m2_f32_to_bf16((float)x[i]);
    else ((float *)buf)[i] = (float)x[i];
  }
  m2_tensor *t = m2_from_data(dt, (m2_device){M2_CUDA, 0}, nd, shape, buf);
  free(buf);
  return t;
}
static m2_tensor *dev_empty(m2_dtype dt, int nd, const int64_t *shape) {
  m2_tensor *t = m2_empty(dt, (m2_device){M2_CUDA, 0}, nd, shape);
  return t;
}
static void poison(m2_tensor *t) {
  if (t) cudaMemset(m2_data(t), 0xff, (size_t)m2_numel(t) * m2_elsize(t)); /* NaN in bf16 and f32 */
}

/* ||a - b|| / ||b|| and max |a - b| / max |b| of a device/host tensor a against host tensor b; NaN -> inf. */
static void compare(const m2_tensor *a, const m2_tensor *b, double *nrel, double *mrel) {
  int64_t n = m2_numel(b);
  double *x = malloc(sizeof(double) * (size_t)n), *y = malloc(sizeof(double) * (size_t)n);
  m2_to_host(a, M2_F64, x);
  m2_to_host(b, M2_F64, y);
  double num = 0, den = 0, mx = 0, my = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = x[i] - y[i];
    if (isnan(x[i]) || isinf(x[i])) d = INFINITY;
    num += d * d, den += y[i] * y[i];
    if (fabs(d) > mx || isinf(d)) mx = fabs(d);
    if (fabs(y[i]) > my) my = fabs(y[i]);
  }
  *nrel = isinf(num) ? INFINITY : sqrt(num) / (den > 0 ? sqrt(den) : 1);
  *mrel = mx / (my > 0 ? my : 1);
  free(x);
  free(y);
}

/* backward of L = <y, dy> + <hT, dhT> */
static m2_status backward2(m2_tensor *y, m2_tensor *dy, m2_tensor *hT, m2_tensor *dhT) {
  if (!y || !hT) return m2_errcode();
  m2_tensor *p1 = m2_mul(y, dy), *p2 = m2_mul(hT, dhT), *s1 = p1 ? m2_sum_all(p1) : NULL,
            *s2 = p2 ? m2_sum_all(p2) : NULL, *L = s1 && s2 ? m2_add(s1, s2) : NULL;
  m2_status st = L ? m2_backward(L, NULL) : m2_errcode();
  m2_release(p1), m2_release(p2), m2_release(s1), m2_release(s2), m2_release(L);
  return st;
}

static void run_case(const tcase *tc, uint64_t seed) {
  m2_m2rnn_attr d = {tc->B, tc->T, tc->N, tc->K, tc->V, tc->Nq, tc->Nk, tc->Nv, tc->Nf, tc->Nw, tc->clip, tc->ck};
  CHECK_OK(m2_m2rnn_attr_resolve(&d));
  m2_m2rnn_cuda_tuning o = {tc->path, tc->tanh_mode, tc->hpb, tc->frows, tc->brows, tc->io32};
  const m2_dtype io = tc->io32 ? M2_F32 : M2_BF16;
  const int B = tc->B, T = tc->T, N = tc->N, K = tc->K, V = tc->V;
  const int path = m2_m2rnn_cuda_path(&d, &o);
  CHECK(path == (tc->path == M2_M2RNN_GENERAL || V != 16 || K % 16 || tc->io32 ? M2_M2RNN_GENERAL : M2_M2RNN_FAST),
        "%s: path %d", tc->name, path);
  m2_rng r = m2_rng_make(seed, 0);
  int64_t sq[4] = {B, T, tc->Nq, K}, sk[4] = {B, T, tc->Nk, K}, sv[4] = {B, T, tc->Nv, V}, sw[3] = {tc->Nw, V, V},
          sf[3] = {B, T, tc->Nf}, sh[4] = {B, N, K, V}, sy[4] = {B, T, N, V};
  double *q = rnd(&r, (int64_t)B * T * tc->Nq * K, 0.5, 0, 1), *k = rnd(&r, (int64_t)B * T * tc->Nk * K, 0.5, 0, 1),
         *v = rnd(&r, (int64_t)B * T * tc->Nv * V, 0.5, 0, 1), *W = rnd(&r, (int64_t)tc->Nw * V * V, 0.03, 0, 0),
         *f = rnd(&r, (int64_t)B * T * tc->Nf, 1, 0, 0), *h0 = rnd(&r, (int64_t)B * N * K * V, 0.5, 0, 0),
         *dy = rnd(&r, (int64_t)B * T * N * V, 1, 0, 1), *dhT = rnd(&r, (int64_t)B * N * K * V, 0.5, 0, 0);
  for (int w = 0; w < tc->Nw; w++)
    for (int i = 0; i < V; i++) W[(w * V + i) * V + i] = (float)(W[(w * V + i) * V + i] + 0.8);
  /* W = 0.8 I + 0.03 N(0,1) keeps the recurrence contractive. With W = I + 0.25 N(0,1) it is chaotic: rounding
     W alone to bf16 moves the float64 reference's y by 9.5%, so no bf16 kernel could be compared with it. */
  for (int64_t i = 0; i < (int64_t)B * T * tc->Nf; i++) f[i] = (float)(0.05 + 0.94 / (1 + exp(-2 * f[i]))); /* (0.05, 0.99) */

  /* reference: the CPU op in float64 through its public entry; the loss <y, dy> + <hT, dhT> hands its backward
     exactly dy and dhT */
  m2_tensor *cin[6] = {cpu64(q, 4, sq), cpu64(k, 4, sk), cpu64(v, 4, sv), cpu64(W, 3, sw), cpu64(f, 3, sf),
                       tc->h0 ? cpu64(h0, 4, sh) : NULL};
  m2_tensor *cdy = cpu64(dy, 4, sy), *cdhT = cpu64(dhT, 4, sh), *ry = NULL, *rhT = NULL;
  for (int i = 0; i < 6; i++)
    if (cin[i]) m2_requires_grad_(cin[i], true);
  m2_m2rnn_opts ro = {tc->clip, 0};
  CHECK_OK(m2_m2rnn(cin[0], cin[1], cin[2], cin[3], cin[4], cin[5], &ro, &ry, &rhT));
  CHECK_OK(backward2(ry, cdy, rhT, cdhT));

  /* GPU */
  m2_tensor *gq = dev(q, io, 4, sq), *gk = dev(k, io, 4, sk), *gv = dev(v, io, 4, sv),
            *gW = dev(W, M2_F32, 3, sw), *gf = dev(f, M2_F32, 3, sf), *gh0 = tc->h0 ? dev(h0, M2_F32, 4, sh) : NULL,
            *gdy = dev(dy, io, 4, sy), *gdhT = dev(dhT, M2_F32, 4, sh);
  int64_t nck[1] = {(int64_t)m2_m2rnn_ckpt_floats(&d) + 1}, nwk[1] = {(int64_t)(m2_m2rnn_bwd_work_bytes(&d, &o) / 4 + 64)};
  m2_tensor *y = dev_empty(io, 4, sy), *y2 = dev_empty(io, 4, sy), *hT = dev_empty(M2_F32, 4, sh),
            *ck = dev_empty(M2_F32, 1, nck), *work = dev_empty(M2_F32, 1, nwk), *dq = dev_empty(io, 4, sq),
            *dk = dev_empty(io, 4, sk), *dv = dev_empty(io, 4, sv), *dW = dev_empty(M2_F32, 3, sw),
            *df = dev_empty(M2_F32, 3, sf), *dh0 = dev_empty(M2_F32, 4, sh);
  cudaDeviceSynchronize(); /* the backend allocates and copies on its own stream */
  m2_tensor *outs[] = {y, y2, hT, dq, dk, dv, dW, df, dh0};
  for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) poison(outs[i]);
  m2_m2rnn_fwd_args fa = {m2_data(y), m2_data(hT), m2_data(ck), m2_data(gq), m2_data(gk), m2_data(gv),
                          m2_data(gW), m2_data(gf), gh0 ? m2_data(gh0) : NULL};
  CHECK_OK(m2_m2rnn_fwd_cuda(&d, &o, &fa, 0));
  m2_m2rnn_fwd_args fi = fa; /* inference: no checkpoints, same y */
  fi.y = m2_data(y2), fi.hT = NULL, fi.ckpt = NULL;
  CHECK_OK(m2_m2rnn_fwd_cuda(&d, &o, &fi, 0));
  m2_m2rnn_bwd_args ba = {m2_data(dq), m2_data(dk), m2_data(dv), m2_data(dW), m2_data(df), m2_data(dh0),
                          m2_data(gdy), m2_data(gdhT), m2_data(ck), m2_data(gq), m2_data(gk), m2_data(gv),
                          m2_data(gW), m2_data(gf), m2_data(work)};
  CHECK_OK(m2_m2rnn_bwd_cuda(&d, &o, &ba, 0));
  cudaError_t e = cudaDeviceSynchronize();
  CHECK(e == cudaSuccess, "%s: %s", tc->name, cudaGetErrorString(e));

  const char *names[8] = {"y", "hT", "dq", "dk", "dv", "dW", "df", "dh0"};
  m2_tensor *got[8] = {y, hT, dq, dk, dv, dW, df, dh0};
  m2_tensor *want[8] = {ry, rhT, cin[0]->grad, cin[1]->grad, cin[2]->grad, cin[3]->grad, cin[4]->grad, NULL};
  if (tc->h0) want[7] = cin[5]->grad; /* without h0 the reference has no dL/dH_0 */
  printf("%-26s path %-7s", tc->name, path == M2_M2RNN_FAST ? "fast" : "general");
  for (int i = 0; i < 8; i++) {
    if (!want[i]) {
      CHECK(i == 7, "%s: the reference has no %s", tc->name, names[i]);
      continue;
    }
    double nrel, mrel;
    compare(got[i], want[i], &nrel, &mrel);
    printf(" %s %.1e/%.1e", names[i], nrel, mrel);
    CHECK(nrel <= tc->tol && mrel <= 6 * tc->tol, "%s: %s: ||err||/||ref|| = %.3g, max err / max ref = %.3g",
          tc->name, names[i], nrel, mrel);
  }
  printf("\n");
  double nr, mr;
  compare(y2, y, &nr, &mr);
  CHECK(nr == 0, "%s: inference y differs from training y by %.3g", tc->name, nr);

  for (int i = 0; i < 6; i++) m2_release(cin[i]);
  m2_tensor *rel[] = {ry, rhT, cdy, cdhT, gq, gk, gv, gW, gf, gh0, gdy, gdhT, y, y2, hT, ck, work, dq, dk, dv, dW, df, dh0};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
  double *hb[] = {q, k, v, W, f, h0, dy, dhT};
  for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
}

/* A NaN in one element of k, v or W (batch row 0, step 3) must reach y (the fused kernels' FMA-pipe tanh polynomial
 * must not saturate it to +-1: a finite, wrong output) and, for k and v, stay in its batch row. Every element of the
 * step's k and v and every tanh split, so that no lane position or polynomial share can hide it. */
static void check_nan_fast(void) {
  const int B = 2, T = 12, N = 2, K = 64, V = 16, t0 = 3;
  m2_m2rnn_attr d = {B, T, N, K, V, N, N, N, N, N, 1.f, 8};
  CHECK_OK(m2_m2rnn_attr_resolve(&d));
  m2_rng r = m2_rng_make(77, 0);
  int64_t sq[4] = {B, T, N, K}, sv[4] = {B, T, N, V}, sw[3] = {N, V, V}, sf[3] = {B, T, N}, sy[4] = {B, T, N, V};
  double *q = rnd(&r, (int64_t)B * T * N * K, 0.5, 0, 1), *k = rnd(&r, (int64_t)B * T * N * K, 0.5, 0, 1),
         *v = rnd(&r, (int64_t)B * T * N * V, 0.5, 0, 1), *W = rnd(&r, (int64_t)N * V * V, 0.03, 0, 0),
         *f = rnd(&r, (int64_t)B * T * N, 1, 0, 0);
  for (int64_t i = 0; i < (int64_t)B * T * N; i++) f[i] = 0.05 + 0.9 / (1 + exp(-2 * f[i]));
  const int modes[4] = {M2_M2RNN_TANH_DEFAULT, M2_M2RNN_TANH_MIX4, M2_M2RNN_TANH_MIX6, M2_M2RNN_TANH_MIX8};
  int hidden = 0, leaked = 0, runs = 0;
  for (int m = 0; m < 4; m++)
    for (int which = 0; which < 3; which++) {
      const int n = which == 0 ? K : V;
      for (int j = 0; j < n; j++) {
        double *x = which == 0 ? k : which == 1 ? v : W;
        /* k, v: batch 0, step t0, head 1, element j; W: head 1, row 0, column j */
        int64_t at = which == 0 ? ((int64_t)t0 * N + 1) * K + j : which == 1 ? ((int64_t)t0 * N + 1) * V + j : V * V + j;
        double keep = x[at];
        x[at] = NAN;
        m2_m2rnn_cuda_tuning o = {M2_M2RNN_FAST, modes[m], 2};
        m2_tensor *gq = dev(q, M2_BF16, 4, sq), *gk = dev(k, M2_BF16, 4, sq), *gv = dev(v, M2_BF16, 4, sv),
                  *gW = dev(W, M2_F32, 3, sw), *gf = dev(f, M2_F32, 3, sf), *y = dev_empty(M2_BF16, 4, sy);
        x[at] = keep;
        cudaDeviceSynchronize();
        m2_m2rnn_fwd_args fa = {m2_data(y), NULL, NULL, m2_data(gq), m2_data(gk), m2_data(gv), m2_data(gW),
                                m2_data(gf), NULL};
        CHECK_OK(m2_m2rnn_fwd_cuda(&d, &o, &fa, 0));
        cudaDeviceSynchronize();
        double *h = malloc(sizeof(double) * (size_t)B * T * N * V);
        m2_to_host(y, M2_F64, h);
        const int64_t half = (int64_t)T * N * V;
        int64_t nan0 = 0, nan1 = 0;
        for (int64_t i = (int64_t)t0 * N * V; i < half; i++) nan0 += isnan(h[i]), nan1 += isnan(h[half + i]);
        hidden += nan0 == 0;
        leaked += which < 2 && nan1 > 0;
        runs++;
        free(h);
        m2_tensor *rel[] = {gq, gk, gv, gW, gf, y};
        for (int i = 0; i < 6; i++) m2_release(rel[i]);
      }
    }
  printf("NaN propagation (fast path, %d runs): hidden in %d, leaked into the other batch row in %d\n", runs, hidden,
         leaked);
  CHECK(hidden == 0, "a NaN in k, v or W came out finite in %d of %d runs", hidden, runs);
  CHECK(leaked == 0, "a NaN in batch row 0 reached row 1 in %d of %d runs", leaked, runs);
  free(q), free(k), free(v), free(W), free(f);
}

int main(void) {
  /* argument checks (no GPU needed) */
  m2_m2rnn_attr bad = {1, 8, 4, 64, 16, 3, 1, 4, 4, 4};
  CHECK_FAILS(m2_m2rnn_attr_resolve(&bad) != M2_OK, M2_ERR_SHAPE, "must divide N = max(Nq, Nk, Nv, Nw, Nf) = 4, but Nq = 3");
  m2_m2rnn_attr bad2 = {1, 8, 5, 64, 16, 1, 1, 4, 4, 4};
  CHECK_FAILS(m2_m2rnn_attr_resolve(&bad2) != M2_OK, M2_ERR_SHAPE, "largest head count");
  m2_m2rnn_attr small = {1, 8, 4, 24, 8, 1, 1, 4, 4, 4};
  CHECK_OK(m2_m2rnn_attr_resolve(&small));
  m2_m2rnn_cuda_tuning fast = {M2_M2RNN_FAST};
  CHECK(m2_m2rnn_cuda_path(&small, &fast) == -1, "fast path refused for V = 8");
  CHECK(m2_m2rnn_cuda_path(&small, NULL) == M2_M2RNN_GENERAL, "auto path for V = 8 is general");
  m2_m2rnn_attr paper = {8, 4096, 84, 64, 16, 1, 1, 84, 84, 84}, ck10;
  CHECK_OK(m2_m2rnn_attr_resolve(&paper));
  CHECK(m2_m2rnn_cuda_path(&paper, NULL) == M2_M2RNN_FAST, "auto path for the paper shape is fast");
  ck10 = paper, ck10.ckpt_every = 10;
  CHECK(m2_m2rnn_cuda_path(&ck10, NULL) == M2_M2RNN_GENERAL, "ckpt_every 10 is not a multiple of 8: general");
  m2_m2rnn_cuda_tuning f32io = {0};
  f32io.io_f32 = 1;
  CHECK(m2_m2rnn_cuda_path(&paper, &f32io) == M2_M2RNN_GENERAL, "fp32 I/O: general path");
  f32io.path = M2_M2RNN_FAST;
  CHECK(m2_m2rnn_cuda_path(&paper, &f32io) == -1, "fp32 I/O refuses the fast path");
  CHECK(m2_m2rnn_ckpt_floats(&paper) == (size_t)8 * 84 * 512 * 64 * 16, "checkpoint size (ckpt 8, the default)");
  if (parity_init("cuda_ops_m2rnn")) {
    printf("cuda_ops_m2rnn: %d argument checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 77;
  }
  m2_m2rnn_fwd_args none = {0};
  CHECK_FAILS(m2_m2rnn_fwd_cuda(&paper, NULL, &none, 0) != M2_OK, M2_ERR_VALUE, "must be given");
  for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) run_case(&CASES[i], 100 + i);
  check_nan_fast();
  CHECK(m2_live_tensors() == 0, "leaked %ld tensors", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked %ld nodes", m2_live_nodes());
  return check_finish("cuda_ops_m2rnn");
}
#endif /* M2_HAVE_CUDA */
