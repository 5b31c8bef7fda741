/* ops_ssd.c — Mamba-2 SSD (DESIGN 3.3): the recurrent reference, the chunked (state-space dual)
 * form, and their shared hand-written backward (reverse-time recurrence over checkpointed states).
 *
 * Per batch b and head h (group gi = h / (H / G) supplies B and C), state h (P x N) from h0 (or 0):
 *   h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T
 *   y_t = h_t C_t                                  (no D skip: the layer adds it)
 * Kernels compute in double (inputs F32 or F64, outputs in the inputs' dtype).
 *
 * Op rows "ssd" and "ssd_chunked": in = {x, dt, A, Bm, Cm, h0 (or NULL)}, out = {y, hT},
 * attr = m2_ssd_attr (ops_ssd.h: the sizes and the chunk, checked and resolved by the public functions: default 256,
 * and for "ssd", where it is only the checkpoint interval of the backward, 64).
 * saved[0] = the states before every chunk-th step, (B, H, NS, P, N) F64, NS = ceil(T / chunk);
 * the chunked forward produces exactly these states (one per chunk) as part of its scan.
 *
 * Backward (both rows): the recurrent backward, segment by segment from the last, recomputing the
 * segment's states from its checkpoint. The chunked op reuses it (the gradient does not depend on
 * how the forward was evaluated; on the CPU the O(T P N) recurrence is the cheapest backward). */
#include "ops.h"
#include "ops_mixers.h"
#include "ops_ssd.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* double views of float tensors: dbuf.h; the buffer plumbing shared with GDN: mixer_common.h */

/* ---------------- shapes and options (checked once, by the public functions) ---------------- */

static const char *const SSD_NAMES[6] = {"x", "dt", "A", "Bm", "Cm", "h0"};

m2_status ssd_check(m2_tensor *const *in, const m2_ssd_opts *o, bool chunked, m2_ssd_attr *d) {
  const char *op = chunked ? "ssd_chunked" : "ssd";
  memset(d, 0, sizeof *d);
  M2_TRY(mixer_check_inputs(in, SSD_NAMES, op));
  m2_tensor *x = in[0], *Bm = in[3];
  char a[96];
  if (x->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "%s: x has shape %s, expected 4 dims (B, T, H, P)", op, m2_shape_str(x, a, sizeof a));
  if (Bm->ndim != 4)
    return m2_fail(M2_ERR_SHAPE, "%s: Bm has shape %s, expected 4 dims (B, T, G, N)", op, m2_shape_str(Bm, a, sizeof a));
  d->B = x->shape[0], d->T = x->shape[1], d->H = x->shape[2], d->P = x->shape[3];
  d->G = Bm->shape[2], d->N = Bm->shape[3];
  int64_t sb[4] = {d->B, d->T, d->G, d->N}, sh[4] = {d->B, d->H, d->P, d->N};
  M2_TRY(mixer_want_shape(in[1], op, "dt", "(B, T, H)", 3, x->shape));
  M2_TRY(mixer_want_shape(in[2], op, "A", "(H)", 1, &d->H));
  M2_TRY(mixer_want_shape(Bm, op, "Bm", "(B, T, G, N)", 4, sb));
  M2_TRY(mixer_want_shape(in[4], op, "Cm", "(B, T, G, N)", 4, Bm->shape));
  if (in[5]) M2_TRY(mixer_want_shape(in[5], op, "h0", "(B, H, P, N)", 4, sh));
  if (d->G < 1 || d->H % d->G != 0)
    return m2_fail(M2_ERR_SHAPE, "%s: the group count G = %lld of Bm/Cm must divide the head count H = %lld", op,
                   (long long)d->G, (long long)d->H);
  if (d->P < 1 || d->N < 1) return m2_fail(M2_ERR_SHAPE, "%s: P and N must be at least 1", op);
  int64_t chunk = o ? o->chunk : 0;
  if (chunk < 0) return m2_fail(M2_ERR_VALUE, "%s: chunk must be >= 0 (0 = default), got %lld", op, (long long)chunk);
  d->chunk = chunk > 0 ? chunk : chunked ? M2_SSD_CHUNK : M2_SSD_CKPT;
  return M2_OK;
}

m2_status ssd_supports(const m2_opcall *c, const mixer_rules *r) {
  return mixer_supports(c, SSD_NAMES, c->op->name, M2_ATTR(c, m2_ssd_attr)->N, "N", r);
}

/* Pointers into the inputs and outputs (all double). */
typedef struct ssd_io {
  const double *x, *dt, *A, *Bm, *Cm, *h0; /* (B,T,H,P) (B,T,H) (H) (B,T,G,N) (B,T,G,N) (B,H,P,N)|NULL */
  double *y, *hT;                          /* (B,T,H,P) (B,H,P,N) */
  double *ckpt;                            /* (B,H,NS,P,N) or NULL */
} ssd_io;

/* ---------------- recurrent step and forward ---------------- */

/* One step on h (P x N) in place; y (P) gets h C when y != NULL. x (P), Bv, Cv (N) are the token's. */
static void ssd_step(double *hs, int64_t P, int64_t N, const double *x, double dt, double A, const double *Bv,
                     const double *Cv, double *y) {
  double a = exp(dt * A);
  for (int64_t p = 0; p < P; p++) {
    double *hp = hs + p * N, xp = dt * x[p], acc = 0;
    for (int64_t n = 0; n < N; n++) {
      hp[n] = a * hp[n] + xp * Bv[n];
      acc += hp[n] * Cv[n];
    }
    if (y) y[p] = acc;
  }
}

static void ssd_rec_bh(const m2_ssd_attr *d, const ssd_io *io, int64_t b, int64_t h, int64_t seg) {
  int64_t P = d->P, N = d->N, T = d->T, H = d->H, G = d->G, PN = P * N, NS = (T + seg - 1) / seg;
  int64_t gi = h / (H / G);
  double *hs = io->hT + (b * H + h) * PN;
  mixer_load(hs, io->h0 ? io->h0 + (b * H + h) * PN : NULL, PN);
  for (int64_t t = 0; t < T; t++) {
    if (io->ckpt && t % seg == 0) memcpy(io->ckpt + ((b * H + h) * NS + t / seg) * PN, hs, sizeof(double) * (size_t)PN);
    int64_t r = (b * T + t) * H + h, rg = (b * T + t) * G + gi;
    ssd_step(hs, P, N, io->x + r * P, io->dt[r], io->A[h], io->Bm + rg * N, io->Cm + rg * N, io->y + r * P);
  }
}

/* ---------------- forward: chunked ----------------
 * Within a chunk of L tokens with cumulative log-decay cs_r = A (dt_0 + ... + dt_r) and the state
 * h at the chunk start (indices local to the chunk):
 *   y_r = exp(cs_r) h C_r + sum_{j<=r} exp(cs_r - cs_j) (C_r.B_j) dt_j x_j    (the quadratic form
 *         with the segment-sum decay mask)
 *   h  <- exp(cs_{L-1}) h + sum_j exp(cs_{L-1} - cs_j) dt_j x_j B_j^T        (state passing) */

static void ssd_chunked_bh(const m2_ssd_attr *d, const ssd_io *io, int64_t b, int64_t h, int64_t C, double *cs,
                           double *M) {
  int64_t P = d->P, N = d->N, T = d->T, H = d->H, G = d->G, PN = P * N, NS = (T + C - 1) / C;
  int64_t gi = h / (H / G);
  double A = io->A[h];
  double *hs = io->hT + (b * H + h) * PN;
  mixer_load(hs, io->h0 ? io->h0 + (b * H + h) * PN : NULL, PN);
  for (int64_t t0 = 0; t0 < T; t0 += C) {
    int64_t L = T - t0 < C ? T - t0 : C;
    if (io->ckpt) memcpy(io->ckpt + ((b * H + h) * NS + t0 / C) * PN, hs, sizeof(double) * (size_t)PN);
    double acc = 0;
    for (int64_t r = 0; r < L; r++) cs[r] = acc += A * io->dt[(b * T + t0 + r) * H + h];
    /* M_rj = exp(cs_r - cs_j) (C_r.B_j) dt_j, j <= r */
    for (int64_t r = 0; r < L; r++) {
      const double *Cr = io->Cm + ((b * T + t0 + r) * G + gi) * N;
      for (int64_t j = 0; j <= r; j++) {
        const double *Bj = io->Bm + ((b * T + t0 + j) * G + gi) * N;
        double cb = 0;
        for (int64_t n = 0; n < N; n++) cb += Cr[n] * Bj[n];
        M[r * C + j] = exp(cs[r] - cs[j]) * cb * io->dt[(b * T + t0 + j) * H + h];
      }
    }
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * T + t0 + r) * H + h;
      const double *Cr = io->Cm + ((b * T + t0 + r) * G + gi) * N;
      double *y = io->y + tok * P, e = exp(cs[r]);
      for (int64_t p = 0; p < P; p++) {
        const double *hp = hs + p * N;
        double s = 0;
        for (int64_t n = 0; n < N; n++) s += hp[n] * Cr[n];
        y[p] = e * s;
      }
      for (int64_t j = 0; j <= r; j++) {
        const double *xj = io->x + ((b * T + t0 + j) * H + h) * P;
        double m = M[r * C + j];
        for (int64_t p = 0; p < P; p++) y[p] += m * xj[p];
      }
    }
    double eL = exp(cs[L - 1]);
    for (int64_t i = 0; i < PN; i++) hs[i] *= eL;
    for (int64_t j = 0; j < L; j++) {
      int64_t tok = (b * T + t0 + j) * H + h;
      const double *xj = io->x + tok * P, *Bj = io->Bm + ((b * T + t0 + j) * G + gi) * N;
      double w = exp(cs[L - 1] - cs[j]) * io->dt[tok];
      for (int64_t p = 0; p < P; p++) {
        double c = w * xj[p];
        double *hp = hs + p * N;
        for (int64_t n = 0; n < N; n++) hp[n] += c * Bj[n];
      }
    }
  }
}

/* ---------------- forward op ---------------- */

static m2_status ssd_forward(m2_opcall *c, bool chunked) {
  const char *op = chunked ? "ssd_chunked" : "ssd";
  const m2_ssd_attr d = *M2_ATTR(c, m2_ssd_attr);
  int64_t seg = d.chunk;
  int64_t NS = (d.T + seg - 1) / seg;
  mixer_fwd_bufs mb;
  m2_status s = mixer_fwd_open(c, &mb, (int64_t[]){d.B, d.T, d.H, d.P}, (int64_t[]){d.B, d.H, d.P, d.N},
                               (int64_t[]){d.B, d.H, NS, d.P, d.N});
  double *wmem = NULL;
  if (s == M2_OK && chunked) {
    wmem = malloc(sizeof(double) * (size_t)(seg + seg * seg));
    if (!wmem) s = m2_fail(M2_ERR_OOM, "%s: out of host memory for a %lld x %lld chunk", op, (long long)seg, (long long)seg);
  }
  if (s == M2_OK) {
    const dbuf *in = mb.in;
    ssd_io io = {in[0].p, in[1].p, in[2].p, in[3].p, in[4].p, in[5].p, mb.y.p, mb.hT.p, mb.ck ? m2_data(mb.ck) : NULL};
    for (int64_t b = 0; b < d.B; b++)
      for (int64_t h = 0; h < d.H; h++) {
        if (chunked) ssd_chunked_bh(&d, &io, b, h, seg, wmem, wmem + seg);
        else ssd_rec_bh(&d, &io, b, h, seg);
      }
  }
  free(wmem);
  return mixer_fwd_close(c, &mb, s);
}

static m2_status ssd_fwd(m2_opcall *c) { return ssd_forward(c, false); }
static m2_status ssd_chunked_fwd(m2_opcall *c) { return ssd_forward(c, true); }

/* ---------------- backward (both rows) ----------------
 * Step t, with a = exp(dt_t A), states P = h_{t-1} and S = h_t, carrying dh = dL/dh_t:
 *   dC_t += S^T dy_t ;  dh += dy_t C_t^T
 *   dx_t = dt_t dh B_t ;  dB_t += dt_t dh^T x_t
 *   ddt_t = x_t^T dh B_t + a A sum(dh * P) ;  dA += a dt_t sum(dh * P)
 *   dh_{t-1} = a dh
 * and dh0 = dh_{-1}. dB and dC add up over the heads of a group. */

typedef struct ssd_grads {
  double *dx, *ddt, *dA, *dB, *dC, *dh0; /* shapes of the inputs */
} ssd_grads;

static void ssd_bwd_bh(const m2_ssd_attr *d, const ssd_io *io, const double *dy, const double *dhT, ssd_grads *gr,
                       int64_t b, int64_t h, int64_t seg, double *St, double *dh) {
  int64_t P = d->P, N = d->N, T = d->T, H = d->H, G = d->G, PN = P * N, NS = (T + seg - 1) / seg;
  int64_t gi = h / (H / G);
  double A = io->A[h], dA = 0;
  mixer_load(dh, dhT ? dhT + (b * H + h) * PN : NULL, PN);
  for (int64_t sg = NS - 1; sg >= 0; sg--) {
    int64_t t0 = sg * seg, L = T - t0 < seg ? T - t0 : seg;
    /* recompute the segment's states: St[r] = h_{t0 + r - 1} */
    memcpy(St, io->ckpt + ((b * H + h) * NS + sg) * PN, sizeof(double) * (size_t)PN);
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * T + t0 + r) * H + h, rg = (b * T + t0 + r) * G + gi;
      memcpy(St + (r + 1) * PN, St + r * PN, sizeof(double) * (size_t)PN);
      ssd_step(St + (r + 1) * PN, P, N, io->x + tok * P, io->dt[tok], A, io->Bm + rg * N, io->Cm + rg * N, NULL);
    }
    for (int64_t r = L - 1; r >= 0; r--) {
      int64_t tok = (b * T + t0 + r) * H + h, rg = (b * T + t0 + r) * G + gi;
      const double *Pv = St + r * PN, *S = St + (r + 1) * PN;
      const double *x = io->x + tok * P, *dyv = dy + tok * P, *Bv = io->Bm + rg * N, *Cv = io->Cm + rg * N;
      double *dx = gr->dx + tok * P, *dB = gr->dB + rg * N, *dC = gr->dC + rg * N;
      double dt = io->dt[tok], a = exp(dt * A), ddt = 0, hp_sum = 0;
      for (int64_t p = 0; p < P; p++) {
        double *dhp = dh + p * N, dyp = dyv[p], xp = x[p], db = 0, hs = 0;
        const double *Sp = S + p * N, *Pp = Pv + p * N;
        for (int64_t n = 0; n < N; n++) {
          dC[n] += dyp * Sp[n];
          dhp[n] += dyp * Cv[n];
          db += dhp[n] * Bv[n];
          dB[n] += dt * xp * dhp[n];
          hs += dhp[n] * Pp[n];
          dhp[n] *= a;
        }
        dx[p] = dt * db;
        ddt += xp * db;
        hp_sum += hs;
      }
      gr->ddt[tok] = ddt + a * A * hp_sum;
      dA += a * dt * hp_sum;
    }
  }
  gr->dA[h] += dA;
  if (gr->dh0) memcpy(gr->dh0 + (b * H + h) * PN, dh, sizeof(double) * (size_t)PN);
}

static m2_status ssd_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  const m2_ssd_attr d = *M2_ATTR(c, m2_ssd_attr);
  if (c->n_saved < 1 || !c->saved[0]) return m2_fail(M2_ERR_AUTOGRAD, "%s: backward without saved states", op);
  int64_t seg = d.chunk, PN = d.P * d.N;
  mixer_bwd_bufs mb;
  m2_status s = mixer_bwd_open(c, &mb);
  double *wmem = NULL;
  if (s == M2_OK) {
    wmem = malloc(sizeof(double) * (size_t)((seg + 2) * PN));
    if (!wmem) s = m2_fail(M2_ERR_OOM, "%s: out of host memory for the backward buffers", op);
  }
  if (s == M2_OK) {
    const dbuf *in = mb.in, *din = mb.din;
    ssd_io io = {in[0].p, in[1].p, in[2].p, in[3].p, in[4].p, in[5].p, NULL, NULL, m2_data(c->saved[0])};
    ssd_grads gr = {din[0].p, din[1].p, din[2].p, din[3].p, din[4].p, din[5].p};
    for (int64_t b = 0; b < d.B; b++)
      for (int64_t h = 0; h < d.H; h++)
        ssd_bwd_bh(&d, &io, mb.dy.p, mb.dhT.p, &gr, b, h, seg, wmem, wmem + (seg + 1) * PN);
  }
  free(wmem);
  return mixer_bwd_close(c, &mb, s);
}

const m2_op m2_op_ssd = {"ssd", ssd_fwd, ssd_bwd, M2_OP_CAST_IN0 | M2_OP_CAST_STATE1};
const m2_op m2_op_ssd_chunked = {"ssd_chunked", ssd_chunked_fwd, ssd_bwd, M2_OP_CAST_IN0 | M2_OP_CAST_STATE1};

/* ---------------- public API ---------------- */

static m2_status ssd_run(const m2_op *op, m2_tensor *const *in, const m2_ssd_opts *o, m2_tensor **y, m2_tensor **hT) {
  m2_ssd_attr a;
  M2_TRY(ssd_check(in, o, op == &m2_op_ssd_chunked, &a)); /* the one check: the kernels trust a */
  return mixer_call(op, in, &a, sizeof a, y, hT);
}

m2_status m2_ssd(m2_tensor *x, m2_tensor *dt, m2_tensor *A, m2_tensor *Bm, m2_tensor *Cm, m2_tensor *h0,
                 const m2_ssd_opts *o, m2_tensor **y, m2_tensor **hT) {
  return ssd_run(&m2_op_ssd, (m2_tensor *[6]){x, dt, A, Bm, Cm, h0}, o, y, hT);
}

m2_status m2_ssd_chunked(m2_tensor *x, m2_tensor *dt, m2_tensor *A, m2_tensor *Bm, m2_tensor *Cm, m2_tensor *h0,
                         const m2_ssd_opts *o, m2_tensor **y, m2_tensor **hT) {
  return ssd_run(&m2_op_ssd_chunked, (m2_tensor *[6]){x, dt, A, Bm, Cm, h0}, o, y, hT);
}
