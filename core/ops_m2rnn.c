/* ops_m2rnn.c — the M2RNN recurrence (DESIGN 3.1): CPU reference forward and backward.
 *
 * Per chain (b, n) with state H (K, V), weight W_n (V, V), gate f_t:
 *   Z_t = tanh(H_{t-1} W_n + k_t v_t^T),  H_t = f_t H_{t-1} + (1 - f_t) Z_t,  y_t = q_t^T H_t.
 * Head n reads head n / (N / N_x) of each of q, k, v, f, W (head sharing); the gradients of a
 * shared head are summed over the heads that read it (dW also over the batch).
 *
 * Memory: the forward keeps only CHECKPOINTS of the state, one every M2RNN_CKPT = 64 steps
 * (the state before steps 0, 64, 128, ...), saved as ck (B, S, N, K, V) in f64, S = ceil(T/64).
 * The backward walks each chain's segments from the last to the first: it recomputes the
 * segment's states H and tanh values Z from its checkpoint into a per-thread buffer
 * ((2 * 64 + 2) K V doubles), then runs that segment's backward steps in reverse. Saved memory
 * is 1/64 of keeping every state (at T = 4096 that would not fit), for one extra forward.
 * The spacing is the CPU's own: attr.ckpt_every (the CUDA kernels', 8 by default) is not used here, because
 * results would then depend on it. dW sums each segment's steps in GEMMs over that segment, so another spacing
 * regroups dW's sum: measured (B=4, T=200, N=4, K=32, V=16, F64) against spacing 64, spacings 8, 16 and 32 give
 * bit-identical y, hT, dq, dk, dv and df but a dW that differs in its last bits (up to 8e-13 relative). A smaller
 * spacing would also keep more f64 states (8x at 8) for no gain: the recomputation costs one forward at any spacing.
 *
 * Everything is computed in double whatever the input dtype (F32 or F64); inputs are
 * converted once. Chains are independent, so the loops run one chain at a time (its state
 * stays in L1); the (K, V) x (V, V) products go to OpenBLAS's small-matrix GEMM, the
 * elementwise loops are vectorised (tanh is a branch-free expm1 form, error < 1e-15), and the
 * batch rows are split over the cores (each thread owns whole batch rows, so gradients of
 * shared heads never collide; dW has one accumulator per thread, summed in thread order, so
 * results do not depend on timing).
 *
 * Timing (M2_BENCH=1 tests/test_m2rnn; 2-core Xeon VM with AVX-512, other jobs running, load 3-10):
 * B=64, T=128, N=8, K=32, V=16 in F32, forward + backward: 0.5-0.65 s of CPU over both threads,
 * 0.37 s wall at load ~3.7 (forward ~0.1 s, backward ~0.27 s), ~1.1 s wall at load ~6.
 * Where it goes: tanh + gate ~30%, the small GEMMs ~25%, the segment dW GEMMs ~12%.
 */
#include "ops.h"
#include "ops_mixers.h"
#include "ops_m2rnn.h"
#include "mixer_common.h"
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define M2RNN_CKPT 64 /* steps between saved states (the CPU's own, not attr.ckpt_every: see the top) */
#define M2_THREADS 8  /* at most this many worker threads over the batch (one per online core) */

/* The elementwise loops (tanh, gate, dX) have a run-time length K*V; GCC's -O2 default
 * (very-cheap cost model) leaves them scalar, and tanh's clamp needs no-trapping-math to be
 * if-converted. These two options make the loops below vectorise; nothing here uses FP traps. */
/* The step kernels are also compiled for AVX-512 and AVX2 and picked at load time (ifunc):
 * the vectorised tanh is 7x faster with AVX-512 than with the SSE2 baseline. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "vect-cost-model=cheap")
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define M2_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define M2_SIMD_CLONES
#endif

/* ---------------- tanh ---------------- */

/* tanh(x) = -e / (2 + e) with e = expm1(-2|x|), sign restored; expm1 by range reduction
 * -2|x| = n ln2 + r, |r| <= ln2/2, and a degree-13 Taylor polynomial for expm1(r).
 * Absolute and relative error below 1e-15 over all doubles; no branches (vectorisable); tanh(NaN) is NaN. */
static inline double m2rnn_tanh(double x) {
  double ax = fabs(x);
  ax = ax > 19.0 ? 19.0 : ax; /* tanh(19) == 1 in double; a NaN passes (a finite +-1 would hide it) */
  double a = -2.0 * ax;
  double kd = a * 1.4426950408889634 + 0x1.8p52; /* round(a / ln2) in the low mantissa bits */
  double n = kd - 0x1.8p52;
  double r = (a - n * 0x1.62e42fefa3800p-1) - n * 0x1.ef35793c76730p-45; /* a - n ln2 (hi + lo) */
  double p = r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720 +
             r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 +
             r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (1.0 / 6227020800.0)))))))))))));
  uint64_t kb, sb;
  memcpy(&kb, &kd, 8);
  sb = (kb + 1023) << 52; /* 2^n, n in [-55, 0] */
  double s;
  memcpy(&s, &sb, 8);
  double e = s * p + (s - 1.0); /* expm1(a) = 2^n (1 + p) - 1 */
  return copysign(-e / (2.0 + e), x);
}

/* ---------------- shapes and options (checked once, by m2_m2rnn) ---------------- */

static const char *const IN_NAMES[6] = {"q", "k", "v", "W", "f", "h0"};
static const char *const IN_LAYOUT[6] = {"(B, T, Nq, K)", "(B, T, Nk, K)", "(B, T, Nv, V)", "(Nw, V, V)",
                                         "(B, T, Nf)", "(B, N, K, V)"};
static const int IN_NDIM[6] = {4, 4, 4, 3, 3, 4};

/* a's head counts: N (0: set here) is the largest and each count divides it. `shapes` ends the message. */
static m2_status heads_check(m2_m2rnn_attr *a, const char *shapes) {
  int64_t hc[5] = {a->Nq, a->Nk, a->Nv, a->Nw, a->Nf}, mx = 0;
  static const char *const hc_name[5] = {"Nq", "Nk", "Nv", "Nw", "Nf"};
  for (int i = 0; i < 5; i++) mx = hc[i] > mx ? hc[i] : mx;
  if (a->N == 0) a->N = mx;
  if (a->N != mx)
    return m2_fail(M2_ERR_SHAPE, "m2rnn: N = %lld must be the largest head count max(Nq, Nk, Nv, Nw, Nf) = %lld",
                   (long long)a->N, (long long)mx);
  for (int i = 0; i < 5; i++)
    if (hc[i] <= 0 || a->N % hc[i] != 0)
      return m2_fail(M2_ERR_SHAPE,
                     "m2rnn: every head count must divide N = max(Nq, Nk, Nv, Nw, Nf) = %lld, but %s = %lld%s",
                     (long long)a->N, hc_name[i], (long long)hc[i], shapes);
  return M2_OK;
}

/* ckpt_every >= 0, 0 becoming the default. */
static m2_status ckpt_check(m2_m2rnn_attr *a) {
  if (a->ckpt_every < 0)
    return m2_fail(M2_ERR_VALUE, "m2rnn: ckpt_every = %d must be >= 0 (0: the default)", a->ckpt_every);
  if (a->ckpt_every == 0) a->ckpt_every = M2_M2RNN_CKPT_EVERY;
  return M2_OK;
}

m2_status m2_m2rnn_check(m2_tensor *const *in, const m2_m2rnn_opts *o, m2_m2rnn_attr *g) {
  char s0[96], s1[96], s2[96];
  memset(g, 0, sizeof *g);
  for (int i = 0; i < 6; i++) {
    if (!in[i]) {
      if (i == 5) continue;
      return m2_fail(M2_ERR_VALUE, "m2rnn: %s %s is required (only h0 may be NULL)", IN_NAMES[i], IN_LAYOUT[i]);
    }
    M2_TRY(m2_check_float(in[i], "m2rnn", IN_NAMES[i]));
    if (!m2_dtypes_mix(in[i]->dtype, in[0]->dtype))
      return m2_fail(M2_ERR_DTYPE, "m2rnn: %s is %s but q is %s; convert one with :to()", IN_NAMES[i],
                     m2_dtype_name(in[i]->dtype), m2_dtype_name(in[0]->dtype));
    if (in[i]->ndim != IN_NDIM[i])
      return m2_fail(M2_ERR_SHAPE, "m2rnn: %s must be %s, got shape %s", IN_NAMES[i], IN_LAYOUT[i],
                     m2_shape_str(in[i], s0, sizeof s0));
  }
  m2_tensor *q = in[0], *k = in[1], *v = in[2], *W = in[3], *f = in[4], *h0 = in[5];
  g->B = q->shape[0];
  g->T = q->shape[1];
  for (int i = 1; i < 5; i++) {
    if (i == 3) continue;
    if (in[i]->shape[0] != g->B || in[i]->shape[1] != g->T)
      return m2_fail(M2_ERR_SHAPE, "m2rnn: %s %s and q %s disagree on (B, T)", IN_NAMES[i],
                     m2_shape_str(in[i], s0, sizeof s0), m2_shape_str(q, s1, sizeof s1));
  }
  g->K = q->shape[3];
  g->V = v->shape[3];
  if (k->shape[3] != g->K)
    return m2_fail(M2_ERR_SHAPE, "m2rnn: q %s and k %s disagree on K", m2_shape_str(q, s0, sizeof s0),
                   m2_shape_str(k, s1, sizeof s1));
  if (W->shape[1] != g->V || W->shape[2] != g->V)
    return m2_fail(M2_ERR_SHAPE, "m2rnn: W must be (Nw, V, V) with V = %lld from v %s, got W %s", (long long)g->V,
                   m2_shape_str(v, s0, sizeof s0), m2_shape_str(W, s1, sizeof s1));
  if (g->K <= 0 || g->V <= 0)
    return m2_fail(M2_ERR_SHAPE, "m2rnn: K and V must be positive, got K = %lld (q %s) and V = %lld (v %s)",
                   (long long)g->K, m2_shape_str(q, s0, sizeof s0), (long long)g->V, m2_shape_str(v, s1, sizeof s1));
  g->Nq = q->shape[2];
  g->Nk = k->shape[2];
  g->Nv = v->shape[2];
  g->Nf = f->shape[2];
  g->Nw = W->shape[0];
  char shapes[320];
  snprintf(shapes, sizeof shapes, " (q %s, v %s, W %s)", m2_shape_str(q, s0, sizeof s0), m2_shape_str(v, s1, sizeof s1),
           m2_shape_str(W, s2, sizeof s2));
  M2_TRY(heads_check(g, shapes));
  if (h0) {
    int64_t want[4] = {g->B, g->N, g->K, g->V};
    if (h0->shape[0] != want[0] || h0->shape[1] != want[1] || h0->shape[2] != want[2] || h0->shape[3] != want[3])
      return m2_fail(M2_ERR_SHAPE, "m2rnn: h0 must be (B, N, K, V) = %s, got %s", m2_shape_str_raw(4, want, s0, sizeof s0),
                     m2_shape_str(h0, s1, sizeof s1));
  }
  g->grad_clip = o ? o->grad_clip : 0;
  g->ckpt_every = o ? o->ckpt_every : 0;
  return ckpt_check(g);
}

m2_status m2_m2rnn_attr_resolve(m2_m2rnn_attr *a) {
  if (a->B < 0 || a->T < 0 || a->K < 1 || a->V < 1)
    return m2_fail(M2_ERR_SHAPE, "m2rnn: need B >= 0, T >= 0, K >= 1, V >= 1, got B = %lld, T = %lld, K = %lld, "
                   "V = %lld", (long long)a->B, (long long)a->T, (long long)a->K, (long long)a->V);
  M2_TRY(heads_check(a, ""));
  return ckpt_check(a);
}

/* ---------------- host f64 buffers ---------------- */

/* t's elements as f64 on the host: t's own data when it is contiguous F64, else a converted
 * copy returned in *owned (free it). NULL t gives NULL. */
static m2_status f64_view(const m2_tensor *t, const double **out, double **owned) {
  *out = NULL;
  *owned = NULL;
  if (!t) return M2_OK;
  if (t->dtype == M2_F64 && m2_is_contiguous(t)) {
    *out = m2_data(t);
    return M2_OK;
  }
  int64_t n = m2_numel(t);
  double *b = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!b) return m2_fail(M2_ERR_OOM, "m2rnn: out of host memory (%lld doubles)", (long long)n);
  if (t->dtype == M2_F32 && m2_is_contiguous(t)) {
    const float *p = m2_data(t);
    for (int64_t i = 0; i < n; i++) b[i] = p[i];
  } else {
    m2_status s = m2_to_host(t, M2_F64, b);
    if (s != M2_OK) { free(b); return s; }
  }
  *out = b;
  *owned = b;
  return M2_OK;
}

/* A new contiguous tensor of dtype dt and the given shape holding src (n doubles). */
static m2_tensor *tensor_from_f64(m2_dtype dt, int ndim, const int64_t *shape, const double *src) {
  m2_tensor *t = m2_empty(dt, M2_DEV_CPU, ndim, shape);
  if (!t) return NULL;
  int64_t n = m2_numel(t);
  if (dt == M2_F64) memcpy(m2_data(t), src, sizeof(double) * (size_t)n);
  else {
    float *p = m2_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)src[i];
  }
  return t;
}

/* ---------------- one chain ---------------- */

/* Element offsets of chain (b, n) at t = 0 and the per-step strides. Gradient buffers share
 * the layout of their inputs, so the same offsets index them. */
typedef struct m2rnn_chain {
  int64_t q, k, v, f, y, w; /* w: W_n in W (Nw, V, V) */
  int64_t sq, sk, sv, sf, sy;
} m2rnn_chain;

static m2rnn_chain chain_at(const m2_m2rnn_attr *g, int64_t b, int64_t n) {
  m2rnn_chain c;
  int64_t T = g->T, N = g->N, K = g->K, V = g->V;
  c.sq = g->Nq * K;
  c.sk = g->Nk * K;
  c.sv = g->Nv * V;
  c.sf = g->Nf;
  c.sy = N * V;
  c.q = b * T * c.sq + n / (N / g->Nq) * K;
  c.k = b * T * c.sk + n / (N / g->Nk) * K;
  c.v = b * T * c.sv + n / (N / g->Nv) * V;
  c.f = b * T * c.sf + n / (N / g->Nf);
  c.y = b * T * c.sy + n * V;
  c.w = n / (N / g->Nw) * V * V;
  return c;
}

/* One forward step of one chain: Z (K, V) = tanh(Hp W + k v^T), Hn (K, V) = f Hp + (1 - f) Z,
 * and y (V) = Hn^T q unless y is NULL. */
M2_SIMD_CLONES static void step_fwd(int K, int V, const double *q, const double *k, const double *v, double f,
                                    const double *W, const double *restrict Hp, double *restrict Hn,
                                    double *restrict Z, double *y) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, V, V, 1.0, Hp, V, W, V, 0.0, Z, V); /* Z = Hp W */
  for (int i = 0; i < K; i++)
    for (int j = 0; j < V; j++) {
      int e = i * V + j;
      double z = m2rnn_tanh(Z[e] + k[i] * v[j]);
      Z[e] = z;
      Hn[e] = f * Hp[e] + (1.0 - f) * z;
    }
  if (y) cblas_dgemv(CblasRowMajor, CblasTrans, K, V, 1.0, Hn, V, q, 1, 0.0, y, 1);
}

/* One backward step of one chain. In: Hp = H_{t-1}, Hc = H_t, Z (K, V), dy (V), and G (K, V),
 * the gradient carried from the future (dL/dH_t without the y_t term). Out: G = dL/dH_{t-1},
 * Z overwritten by dX (the caller does dW += H_{t-1}^T dX for many steps at once); dq, dk (K),
 * dv (V) and *df accumulate (+=). clip > 0 clamps G first. */
M2_SIMD_CLONES static void step_bwd(int K, int V, const double *q, const double *k, const double *v, double f,
                                    const double *W, const double *dy, const double *restrict Hp,
                                    const double *restrict Hc, double *restrict Z, double *restrict G, double clip,
                                    double *dq, double *dk, double *dv, double *df) {
  int KV = K * V;
  if (clip > 0)
    for (int e = 0; e < KV; e++) G[e] = G[e] > clip ? clip : G[e] < -clip ? -clip : G[e];
  for (int i = 0; i < K; i++) /* D = q dy^T + G, kept in G */
    for (int j = 0; j < V; j++) G[i * V + j] += q[i] * dy[j];
  cblas_dgemv(CblasRowMajor, CblasNoTrans, K, V, 1.0, Hc, V, dy, 1, 1.0, dq, 1); /* dq = H_t dy */
  *df += cblas_ddot(KV, G, 1, Hp, 1) - cblas_ddot(KV, G, 1, Z, 1);            /* df = sum D (H_{t-1} - Z) */
  for (int e = 0; e < KV; e++) Z[e] = (1.0 - f) * G[e] * (1.0 - Z[e] * Z[e]);  /* dX = (1 - f) D (1 - Z^2) */
  cblas_dgemv(CblasRowMajor, CblasNoTrans, K, V, 1.0, Z, V, v, 1, 1.0, dk, 1); /* dk = dX v */
  cblas_dgemv(CblasRowMajor, CblasTrans, K, V, 1.0, Z, V, k, 1, 1.0, dv, 1);   /* dv = dX^T k */
  for (int e = 0; e < KV; e++) G[e] *= f;                                      /* G = f D + dX W^T */
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, V, V, 1.0, Z, V, W, V, 1.0, G, V);
}

/* ---------------- forward ---------------- */

typedef struct m2rnn_fwd_job {
  const m2_m2rnn_attr *g;
  int64_t C, S;                        /* steps between checkpoints, their number ceil(T / C) */
  const double *q, *k, *v, *W, *f, *h0; /* inputs, f64; h0 may be NULL */
  double *y, *hT, *ck;                 /* (B,T,N,V), (B,N,K,V), (B,S,N,K,V) */
  int64_t b0, b1;                      /* batch rows of this job */
  m2_status status;
} m2rnn_fwd_job;

static void *fwd_worker(void *arg) {
  m2rnn_fwd_job *j = arg;
  const m2_m2rnn_attr *g = j->g;
  int K = (int)g->K, V = (int)g->V;
  int64_t KV = g->K * g->V, N = g->N;
  double *buf = malloc(sizeof(double) * (size_t)(3 * KV));
  if (!buf) { j->status = M2_ERR_OOM; return NULL; }
  for (int64_t b = j->b0; b < j->b1; b++)
    for (int64_t n = 0; n < N; n++) {
      m2rnn_chain c = chain_at(g, b, n);
      double *Ha = buf, *Hb = buf + KV, *Z = buf + 2 * KV;
      if (j->h0) memcpy(Ha, j->h0 + (b * N + n) * KV, sizeof(double) * (size_t)KV);
      else memset(Ha, 0, sizeof(double) * (size_t)KV);
      for (int64_t t = 0; t < g->T; t++) {
        if (t % j->C == 0)
          memcpy(j->ck + ((b * j->S + t / j->C) * N + n) * KV, Ha, sizeof(double) * (size_t)KV);
        step_fwd(K, V, j->q + c.q + t * c.sq, j->k + c.k + t * c.sk, j->v + c.v + t * c.sv, j->f[c.f + t * c.sf],
                 j->W + c.w, Ha, Hb, Z, j->y + c.y + t * c.sy);
        double *tmp = Ha;
        Ha = Hb;
        Hb = tmp;
      }
      memcpy(j->hT + (b * N + n) * KV, Ha, sizeof(double) * (size_t)KV);
    }
  free(buf);
  j->status = M2_OK;
  return NULL;
}

/* Run worker on njobs jobs (an array of job_size-byte structs), job 0 on this thread. */
static m2_status run_jobs(void *(*worker)(void *), void *jobs, size_t job_size, int njobs,
                          m2_status *(*status_of)(void *)) {
  pthread_t th[M2_THREADS];
  bool started[M2_THREADS] = {false};
  for (int i = 1; i < njobs; i++) {
    void *job = (char *)jobs + (size_t)i * job_size;
    if (pthread_create(&th[i], NULL, worker, job) == 0) started[i] = true;
    else worker(job); /* no thread: run it here */
  }
  worker(jobs);
  m2_status s = M2_OK;
  for (int i = 0; i < njobs; i++) {
    if (started[i]) pthread_join(th[i], NULL);
    m2_status si = *status_of((char *)jobs + (size_t)i * job_size);
    if (si != M2_OK && s == M2_OK) s = si;
  }
  return s == M2_OK ? M2_OK : m2_fail(s, "m2rnn: out of host memory for a worker's scratch");
}

/* Number of jobs for B batch rows and `work` multiply-adds: one per online core (at most
 * M2_THREADS), at least 1e6 multiply-adds each, at most one per batch row. */
static int n_jobs(int64_t B, double work) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  double nj = cores < 1 ? 1 : cores > M2_THREADS ? M2_THREADS : cores;
  if (nj > work / 1e6) nj = work / 1e6;
  if (nj > (double)B) nj = (double)B;
  return nj < 1 ? 1 : (int)nj;
}

static m2_status *fwd_status(void *j) { return &((m2rnn_fwd_job *)j)->status; }

/* in: q, k, v, W, f, h0 (h0 may be NULL); attr: m2_m2rnn_attr (checked by m2_m2rnn). out: y (B,T,N,V),
 * hT (B,N,K,V). saved: ck (B, S, N, K, V) f64, the state before steps 0, 64, 128, ..., S = ceil(T / 64). */
static m2_status m2rnn_fwd(m2_opcall *c) {
  const m2_m2rnn_attr g = *M2_ATTR(c, m2_m2rnn_attr);
  const int64_t C = M2RNN_CKPT, S = (g.T + C - 1) / C;
  m2_dtype dt = c->in[0]->dtype;
  const double *in[6];
  double *owned[6] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < 6 && s == M2_OK; i++) s = f64_view(c->in[i], &in[i], &owned[i]);
  int64_t ny = g.B * g.T * g.N * g.V, nh = g.B * g.N * g.K * g.V;
  int64_t yshape[4] = {g.B, g.T, g.N, g.V}, hshape[4] = {g.B, g.N, g.K, g.V};
  int64_t ckshape[5] = {g.B, S, g.N, g.K, g.V};
  double *yb = NULL, *hb = NULL;
  m2_tensor *ck = NULL;
  if (s == M2_OK) {
    yb = malloc(sizeof(double) * (size_t)(ny ? ny : 1));
    hb = malloc(sizeof(double) * (size_t)(nh ? nh : 1));
    ck = m2_empty(M2_F64, M2_DEV_CPU, 5, ckshape);
    if (!yb || !hb) s = m2_fail(M2_ERR_OOM, "m2rnn: out of host memory for the outputs");
    else if (!ck) s = m2_errcode();
  }
  if (s == M2_OK) {
    m2rnn_fwd_job jobs[M2_THREADS];
    int nj = n_jobs(g.B, (double)g.B * g.T * g.N * g.K * g.V * g.V);
    for (int i = 0; i < nj; i++)
      jobs[i] = (m2rnn_fwd_job){&g, C, S, in[0], in[1], in[2], in[3], in[4], in[5], yb, hb, m2_data(ck),
                                g.B * i / nj, g.B * (i + 1) / nj, M2_OK};
    s = run_jobs(fwd_worker, jobs, sizeof jobs[0], nj, fwd_status);
  }
  if (s == M2_OK) {
    c->n_out = 2;
    c->out[0] = tensor_from_f64(dt, 4, yshape, yb);
    c->out[1] = c->out[0] ? tensor_from_f64(dt, 4, hshape, hb) : NULL;
    if (!c->out[1]) s = m2_errcode();
    else m2_save(c, ck);
  }
  m2_release(ck);
  free(yb);
  free(hb);
  for (int i = 0; i < 6; i++) free(owned[i]);
  return s;
}

/* ---------------- backward ---------------- */

typedef struct m2rnn_bwd_job {
  const m2_m2rnn_attr *g;
  int64_t C, S;                                    /* steps between checkpoints, their number ceil(T / C) */
  const double *q, *k, *v, *W, *f, *ck, *dy, *dhT; /* dhT (B,N,K,V) */
  double clip;
  double *dq, *dk, *dv, *df, *dh0; /* shared, but each job owns its batch rows */
  double *dW;                      /* this job's own (Nw, V, V) accumulator */
  int64_t b0, b1;
  m2_status status;
} m2rnn_bwd_job;

static void *bwd_worker(void *arg) {
  m2rnn_bwd_job *j = arg;
  const m2_m2rnn_attr *g = j->g;
  int K = (int)g->K, V = (int)g->V;
  int64_t KV = g->K * g->V, N = g->N, C = j->C;
  /* Hs: the C + 1 states of a segment; Zs: its C tanh values, then its dX; G: the carried gradient */
  double *buf = malloc(sizeof(double) * (size_t)((2 * C + 2) * KV));
  if (!buf) { j->status = M2_ERR_OOM; return NULL; }
  double *Hs = buf, *Zs = Hs + (C + 1) * KV, *G = Zs + C * KV;
  for (int64_t b = j->b0; b < j->b1; b++)
    for (int64_t n = 0; n < N; n++) {
      m2rnn_chain c = chain_at(g, b, n);
      const double *W = j->W + c.w;
      memcpy(G, j->dhT + (b * N + n) * KV, sizeof(double) * (size_t)KV);
      for (int64_t s = j->S - 1; s >= 0; s--) {
        int64_t t0 = s * C, L = g->T - t0 < C ? g->T - t0 : C;
        /* recompute the segment from its checkpoint: Hs[i] = state before step t0 + i */
        memcpy(Hs, j->ck + ((b * j->S + s) * N + n) * KV, sizeof(double) * (size_t)KV);
        for (int64_t i = 0; i < L; i++) {
          int64_t t = t0 + i;
          step_fwd(K, V, NULL, j->k + c.k + t * c.sk, j->v + c.v + t * c.sv, j->f[c.f + t * c.sf], W, Hs + i * KV,
                   Hs + (i + 1) * KV, Zs + i * KV, NULL);
        }
        for (int64_t i = L - 1; i >= 0; i--) {
          int64_t t = t0 + i;
          step_bwd(K, V, j->q + c.q + t * c.sq, j->k + c.k + t * c.sk, j->v + c.v + t * c.sv, j->f[c.f + t * c.sf], W,
                   j->dy + c.y + t * c.sy, Hs + i * KV, Hs + (i + 1) * KV, Zs + i * KV, G, j->clip,
                   j->dq + c.q + t * c.sq, j->dk + c.k + t * c.sk, j->dv + c.v + t * c.sv, j->df + c.f + t * c.sf);
        }
        /* dW += sum over the segment of H_{t-1}^T dX_t, as GEMMs over `piece` stacked steps: few
           calls, each small enough (V V K piece <= 2^18) that OpenBLAS does not start its threads */
        int64_t piece = (1 << 18) / (g->V * g->V * g->K);
        piece = piece < 1 ? 1 : piece;
        for (int64_t i = 0; i < L; i += piece) {
          int64_t m = L - i < piece ? L - i : piece;
          cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, V, (int)(m * K), 1.0, Hs + i * KV, V, Zs + i * KV,
                      V, 1.0, j->dW + c.w, V);
        }
      }
      memcpy(j->dh0 + (b * N + n) * KV, G, sizeof(double) * (size_t)KV);
    }
  free(buf);
  j->status = M2_OK;
  return NULL;
}

static m2_status *bwd_status(void *j) { return &((m2rnn_bwd_job *)j)->status; }

/* dout: dy (B,T,N,V), dhT (B,N,K,V). din: dq, dk, dv, dW (summed over the heads and batch rows
 * that share a W), df, dh0 (= dL/dH_0, not clipped). attr.grad_clip > 0 clips the carried gradient. */
static m2_status m2rnn_bwd(m2_opcall *c) {
  const m2_m2rnn_attr g = *M2_ATTR(c, m2_m2rnn_attr);
  const int64_t C = M2RNN_CKPT, S = (g.T + C - 1) / C;
  m2_dtype dt = c->in[0]->dtype;
  const double *in[6], *dy = NULL, *dhT = NULL;
  double *owned[8] = {0};
  m2_status s = M2_OK;
  for (int i = 0; i < 6 && s == M2_OK; i++) s = f64_view(c->in[i], &in[i], &owned[i]);
  if (s == M2_OK) s = f64_view(c->dout[0], &dy, &owned[6]);
  if (s == M2_OK) s = f64_view(c->dout[1], &dhT, &owned[7]);
  int64_t VV = g.V * g.V;
  int64_t n_of[6] = {g.B * g.T * g.Nq * g.K, g.B * g.T * g.Nk * g.K, g.B * g.T * g.Nv * g.V, g.Nw * VV,
                     g.B * g.T * g.Nf, g.B * g.N * g.K * g.V};
  m2rnn_bwd_job jobs[M2_THREADS];
  int nj = n_jobs(g.B, 4.0 * g.B * g.T * g.N * g.K * VV);
  /* gradient buffers (f64, zeroed); dW gets one per job, summed afterwards */
  double *gb[6] = {0}, *dWj[M2_THREADS] = {0};
  if (s == M2_OK) {
    bool ok = true;
    for (int i = 0; i < 6; i++) ok = (gb[i] = calloc((size_t)(n_of[i] ? n_of[i] : 1), sizeof(double))) && ok;
    for (int i = 1; i < nj; i++) ok = (dWj[i] = calloc((size_t)n_of[3], sizeof(double))) && ok;
    dWj[0] = gb[3];
    if (!ok) s = m2_fail(M2_ERR_OOM, "m2rnn: out of host memory for gradients");
  }
  if (s == M2_OK) {
    for (int i = 0; i < nj; i++)
      jobs[i] = (m2rnn_bwd_job){&g, C, S, in[0], in[1], in[2], in[3], in[4], m2_data(c->saved[0]), dy, dhT, g.grad_clip,
                                gb[0], gb[1], gb[2], gb[4], gb[5], dWj[i], g.B * i / nj, g.B * (i + 1) / nj, M2_OK};
    s = run_jobs(bwd_worker, jobs, sizeof jobs[0], nj, bwd_status);
    for (int i = 1; i < nj && s == M2_OK; i++)
      for (int64_t e = 0; e < n_of[3]; e++) gb[3][e] += dWj[i][e];
  }
  for (int i = 0; i < 6 && s == M2_OK; i++) {
    if (!c->needs_din[i] || !c->in[i]) continue;
    c->din[i] = tensor_from_f64(dt, c->in[i]->ndim, c->in[i]->shape, gb[i]);
    if (!c->din[i]) s = m2_errcode();
  }
  for (int i = 0; i < 6; i++) free(gb[i]);
  for (int i = 1; i < nj; i++) free(dWj[i]);
  for (int i = 0; i < 8; i++) free(owned[i]);
  return s;
}

const m2_op m2_op_m2rnn = {"m2rnn", m2rnn_fwd, m2rnn_bwd,
                           M2_OP_CAST_IN0 | M2_OP_CAST_STATE1 | M2_OP_MIXED_KERNELS};

m2_status m2_m2rnn(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *W, m2_tensor *f, m2_tensor *h0,
                   const m2_m2rnn_opts *o, m2_tensor **y, m2_tensor **hT) {
  m2_tensor *in[6] = {q, k, v, W, f, h0};
  m2_m2rnn_attr a;
  M2_TRY(m2_m2rnn_check(in, o, &a)); /* the one check: the kernels (CPU and CUDA) trust a */
  return mixer_call(&m2_op_m2rnn, in, &a, sizeof a, y, hT);
}
