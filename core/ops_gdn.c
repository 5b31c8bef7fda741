/* ops_gdn.c — Gated DeltaNet (DESIGN 3.2): the recurrent reference, the chunked UT/WY form,
 * and their shared hand-written backward (reverse-time recurrence over checkpointed states).
 *
 * Per batch b and head h, with state S (K x V), starting from h0 (or 0):
 *   S  <- exp(g_t) S
 *   v' =  beta_t (v_t - S^T k_t)
 *   S  <- S + k_t v'^T
 *   o_t = S^T (q_t * scale)
 * Kernels compute in double (inputs F32 or F64, outputs in the inputs' dtype).
 *
 * Op rows "gdn" and "gdn_chunked": in = {q, k, v, g, beta, h0 (or NULL)}, out = {o, hT},
 * attr = m2_gdn_attr (ops_gdn.h: the sizes, scale and chunk, checked and resolved by the public functions; for
 * "gdn" the chunk is only the checkpoint interval of the backward).
 * saved[0] = the states before every chunk-th step, (B, H, NS, K, V) F64, NS = ceil(T / chunk);
 * the chunked forward produces exactly these states (one per chunk) as part of its scan.
 *
 * Backward (both rows): the recurrent backward. For each checkpoint segment, last first, the
 * segment's states are recomputed from the checkpoint, then the step gradients are taken in
 * reverse time. The chunked op reuses it: the gradient of a function does not depend on how
 * its forward was evaluated, and on the CPU the O(T K V) recurrence is the cheapest backward. */
#include "ops.h"
#include "ops_mixers.h"
#include "ops_gdn.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* double views of float tensors: dbuf.h; the buffer plumbing shared with SSD: mixer_common.h */

/* ---------------- shapes and options (checked once, by the public functions) ---------------- */

static const char *const GDN_NAMES[6] = {"q", "k", "v", "g", "beta", "h0"};

m2_status gdn_check(m2_tensor *const *in, const m2_gdn_opts *o, bool chunked, m2_gdn_attr *d) {
  const char *op = chunked ? "gdn_chunked" : "gdn";
  memset(d, 0, sizeof *d);
  M2_TRY(mixer_check_inputs(in, GDN_NAMES, op));
  m2_tensor *q = in[0];
  if (q->ndim != 4) {
    char a[96];
    return m2_fail(M2_ERR_SHAPE, "%s: q has shape %s, expected 4 dims (B, T, H, K)", op, m2_shape_str(q, a, sizeof a));
  }
  d->B = q->shape[0], d->T = q->shape[1], d->H = q->shape[2], d->K = q->shape[3];
  d->V = in[2]->ndim == 4 ? in[2]->shape[3] : 0;
  int64_t sv[4] = {d->B, d->T, d->H, d->V}, sh[4] = {d->B, d->H, d->K, d->V};
  M2_TRY(mixer_want_shape(in[1], op, "k", "(B, T, H, K)", 4, q->shape));
  M2_TRY(mixer_want_shape(in[2], op, "v", "(B, T, H, V)", 4, sv));
  M2_TRY(mixer_want_shape(in[3], op, "g", "(B, T, H)", 3, q->shape));
  M2_TRY(mixer_want_shape(in[4], op, "beta", "(B, T, H)", 3, q->shape));
  if (in[5]) M2_TRY(mixer_want_shape(in[5], op, "h0", "(B, H, K, V)", 4, sh));
  if (d->K < 1 || d->V < 1) return m2_fail(M2_ERR_SHAPE, "%s: K and V must be at least 1", op);
  int64_t chunk = o ? o->chunk : 0;
  if (chunk < 0)
    return m2_fail(M2_ERR_VALUE, "%s: chunk must be >= 0 (0 = default %d), got %lld", op, M2_GDN_CHUNK,
                   (long long)chunk);
  d->chunk = chunk > 0 ? chunk : M2_GDN_CHUNK;
  double scale = o ? o->scale : 0;
  d->scale = scale != 0 ? scale : 1.0 / sqrt((double)d->K);
  return M2_OK;
}

m2_status gdn_supports(const m2_opcall *c, const mixer_rules *r) {
  return mixer_supports(c, GDN_NAMES, c->op->name, M2_ATTR(c, m2_gdn_attr)->K, "K", r);
}

/* ---------------- recurrent step ---------------- */

/* One step on S (K x V) in place; o (V) gets S^T q * scale when o != NULL. u (V) is scratch.
 * q, k (K), v (V) are the token's vectors. */
static void gdn_step(double *S, int64_t K, int64_t V, const double *q, const double *k, const double *v, double g,
                     double beta, double scale, double *o, double *u) {
  double a = exp(g);
  for (int64_t j = 0; j < V; j++) u[j] = 0;
  for (int64_t i = 0; i < K; i++) { /* S <- a S ; u = S^T k */
    double *Si = S + i * V, ki = k[i];
    for (int64_t j = 0; j < V; j++) { Si[j] *= a; u[j] += ki * Si[j]; }
  }
  for (int64_t j = 0; j < V; j++) u[j] = beta * (v[j] - u[j]); /* u becomes v' */
  if (o)
    for (int64_t j = 0; j < V; j++) o[j] = 0;
  for (int64_t i = 0; i < K; i++) { /* S += k v'^T ; o = S^T q * scale */
    double *Si = S + i * V, ki = k[i], qi = q[i] * scale;
    for (int64_t j = 0; j < V; j++) Si[j] += ki * u[j];
    if (o)
      for (int64_t j = 0; j < V; j++) o[j] += qi * Si[j];
  }
}

/* ---------------- forward: recurrent ---------------- */

/* Pointers into the (B, T, H, *) inputs and outputs (all double). */
typedef struct gdn_io {
  const double *q, *k, *v, *g, *beta, *h0; /* (B,T,H,K) (B,T,H,K) (B,T,H,V) (B,T,H) (B,T,H) (B,H,K,V)|NULL */
  double *o, *hT;                          /* (B,T,H,V) (B,H,K,V) */
  double *ckpt;                            /* (B,H,NS,K,V) or NULL */
} gdn_io;

static void gdn_rec_bh(const m2_gdn_attr *d, const gdn_io *io, int64_t b, int64_t h, double scale, int64_t seg,
                       double *u) {
  int64_t K = d->K, V = d->V, T = d->T, H = d->H, KV = K * V, NS = (T + seg - 1) / seg;
  double *S = io->hT + (b * H + h) * KV;
  mixer_load(S, io->h0 ? io->h0 + (b * H + h) * KV : NULL, KV);
  for (int64_t t = 0; t < T; t++) {
    if (io->ckpt && t % seg == 0) memcpy(io->ckpt + ((b * H + h) * NS + t / seg) * KV, S, sizeof(double) * (size_t)KV);
    int64_t r = (b * T + t) * H + h;
    gdn_step(S, K, V, io->q + r * K, io->k + r * K, io->v + r * V, io->g[r], io->beta[r], scale, io->o + r * V, u);
  }
}

/* ---------------- forward: chunked (UT transform / WY factors) ----------------
 * Within a chunk of L tokens with cumulative log-decay gam_r = g_0 + ... + g_r and the state S
 * at the chunk start (all indices local to the chunk):
 *   A_rj = beta_r exp(gam_r - gam_j) k_r.k_j          (j < r; strictly lower, L x L)
 *   T    = (I + A)^-1                                  (unit lower; forward substitution)
 *   U    = T diag(beta) V,  W = T diag(beta exp(gam)) K (WY factors: L x V, L x K)
 *   V'   = U - W S                                     (the v' of every token, L x V)
 *   o_r  = exp(gam_r) S^T q_r + sum_{j<=r} exp(gam_r - gam_j) (q_r.k_j) v'_j   (q scaled)
 *   S   <- exp(gam_{L-1}) S + sum_j exp(gam_{L-1} - gam_j) k_j v'_j^T
 * (unrolling the recurrence: v'_r = beta_r (v_r - exp(gam_r) S^T k_r - sum_{j<r} exp(gam_r - gam_j) (k_r.k_j) v'_j)). */

typedef struct gdn_chunk_work {
  double *kc, *qc, *vc;  /* (C, K) (C, K) (C, V) the chunk's tokens, q scaled */
  double *gam, *bet, *eg; /* (C) cumulative log-decay, beta, exp(gam) */
  double *dec;           /* (C, C) exp(gam_r - gam_j) for j <= r */
  double *A, *Tm;        /* (C, C) */
  double *U, *W;         /* (C, V) (C, K); U becomes V' */
} gdn_chunk_work;

static void gdn_chunked_bh(const m2_gdn_attr *d, const gdn_io *io, int64_t b, int64_t h, double scale, int64_t C,
                           gdn_chunk_work *w) {
  int64_t K = d->K, V = d->V, T = d->T, H = d->H, KV = K * V, NS = (T + C - 1) / C;
  double *S = io->hT + (b * H + h) * KV;
  mixer_load(S, io->h0 ? io->h0 + (b * H + h) * KV : NULL, KV);
  for (int64_t t0 = 0; t0 < T; t0 += C) {
    int64_t L = T - t0 < C ? T - t0 : C;
    if (io->ckpt) memcpy(io->ckpt + ((b * H + h) * NS + t0 / C) * KV, S, sizeof(double) * (size_t)KV);
    /* gather the chunk */
    double acc = 0;
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * T + t0 + r) * H + h;
      for (int64_t i = 0; i < K; i++) {
        w->kc[r * K + i] = io->k[tok * K + i];
        w->qc[r * K + i] = io->q[tok * K + i] * scale;
      }
      memcpy(w->vc + r * V, io->v + tok * V, sizeof(double) * (size_t)V);
      acc += io->g[tok];
      w->gam[r] = acc;
      w->eg[r] = exp(acc);
      w->bet[r] = io->beta[tok];
    }
    for (int64_t r = 0; r < L; r++)
      for (int64_t j = 0; j <= r; j++) w->dec[r * C + j] = exp(w->gam[r] - w->gam[j]);
    /* A (strictly lower) and T = (I + A)^-1: row r of T is e_r - sum_{m<r} A_rm T_m */
    for (int64_t r = 0; r < L; r++)
      for (int64_t j = 0; j < r; j++) {
        double kk = 0;
        for (int64_t i = 0; i < K; i++) kk += w->kc[r * K + i] * w->kc[j * K + i];
        w->A[r * C + j] = w->bet[r] * w->dec[r * C + j] * kk;
      }
    for (int64_t r = 0; r < L; r++) {
      double *Tr = w->Tm + r * C;
      for (int64_t j = 0; j < L; j++) Tr[j] = j == r ? 1.0 : 0.0;
      for (int64_t m = 0; m < r; m++) {
        double a = w->A[r * C + m];
        const double *Tm = w->Tm + m * C;
        for (int64_t j = 0; j <= m; j++) Tr[j] -= a * Tm[j];
      }
    }
    /* U = T diag(beta) V ; W = T diag(beta exp(gam)) K */
    for (int64_t r = 0; r < L; r++) {
      double *Ur = w->U + r * V, *Wr = w->W + r * K;
      memset(Ur, 0, sizeof(double) * (size_t)V);
      memset(Wr, 0, sizeof(double) * (size_t)K);
      for (int64_t j = 0; j <= r; j++) {
        double tb = w->Tm[r * C + j] * w->bet[j], tbe = tb * w->eg[j];
        const double *vj = w->vc + j * V, *kj = w->kc + j * K;
        for (int64_t x = 0; x < V; x++) Ur[x] += tb * vj[x];
        for (int64_t i = 0; i < K; i++) Wr[i] += tbe * kj[i];
      }
    }
    /* V' = U - W S (in U) */
    for (int64_t r = 0; r < L; r++) {
      double *Ur = w->U + r * V;
      const double *Wr = w->W + r * K;
      for (int64_t i = 0; i < K; i++) {
        double wi = Wr[i];
        const double *Si = S + i * V;
        for (int64_t x = 0; x < V; x++) Ur[x] -= wi * Si[x];
      }
    }
    /* outputs */
    for (int64_t r = 0; r < L; r++) {
      double *o = io->o + ((b * T + t0 + r) * H + h) * V;
      const double *qr = w->qc + r * K;
      for (int64_t i = 0; i < K; i++) {
        double qi = w->eg[r] * qr[i];
        const double *Si = S + i * V;
        for (int64_t x = 0; x < V; x++) o[x] += qi * Si[x];
      }
      for (int64_t j = 0; j <= r; j++) {
        double qk = 0;
        for (int64_t i = 0; i < K; i++) qk += qr[i] * w->kc[j * K + i];
        qk *= w->dec[r * C + j];
        const double *vj = w->U + j * V;
        for (int64_t x = 0; x < V; x++) o[x] += qk * vj[x];
      }
    }
    /* state passing */
    double eL = w->eg[L - 1];
    for (int64_t x = 0; x < KV; x++) S[x] *= eL;
    for (int64_t j = 0; j < L; j++) {
      double dj = w->dec[(L - 1) * C + j];
      const double *kj = w->kc + j * K, *vj = w->U + j * V;
      for (int64_t i = 0; i < K; i++) {
        double c = dj * kj[i];
        double *Si = S + i * V;
        for (int64_t x = 0; x < V; x++) Si[x] += c * vj[x];
      }
    }
  }
}

/* ---------------- forward op ---------------- */

static m2_status gdn_forward(m2_opcall *c, bool chunked) {
  const char *op = chunked ? "gdn_chunked" : "gdn";
  const m2_gdn_attr d = *M2_ATTR(c, m2_gdn_attr);
  double scale = d.scale;
  int64_t seg = d.chunk;
  int64_t NS = (d.T + seg - 1) / seg;
  mixer_fwd_bufs mb;
  m2_status s = mixer_fwd_open(c, &mb, (int64_t[]){d.B, d.T, d.H, d.V}, (int64_t[]){d.B, d.H, d.K, d.V},
                               (int64_t[]){d.B, d.H, NS, d.K, d.V});
  int64_t C = seg, K = d.K, V = d.V;
  double *wmem = NULL;
  if (s == M2_OK) {
    size_t n = chunked ? (size_t)(C * (2 * K + 2 * V) + 3 * C + 3 * C * C + C * K) : (size_t)V;
    wmem = calloc(n, sizeof(double));
    if (!wmem) s = m2_fail(M2_ERR_OOM, "%s: out of host memory for the work buffers", op);
  }
  if (s == M2_OK) {
    const dbuf *in = mb.in;
    gdn_io io = {in[0].p, in[1].p, in[2].p, in[3].p, in[4].p, in[5].p, mb.y.p, mb.hT.p, mb.ck ? m2_data(mb.ck) : NULL};
    if (chunked) {
      gdn_chunk_work w;
      double *p = wmem;
      w.kc = p, p += C * K;
      w.qc = p, p += C * K;
      w.vc = p, p += C * V;
      w.U = p, p += C * V;
      w.W = p, p += C * K;
      w.gam = p, p += C;
      w.bet = p, p += C;
      w.eg = p, p += C;
      w.dec = p, p += C * C;
      w.A = p, p += C * C;
      w.Tm = p;
      for (int64_t b = 0; b < d.B; b++)
        for (int64_t h = 0; h < d.H; h++) gdn_chunked_bh(&d, &io, b, h, scale, C, &w);
    } else {
      for (int64_t b = 0; b < d.B; b++)
        for (int64_t h = 0; h < d.H; h++) gdn_rec_bh(&d, &io, b, h, scale, seg, wmem);
    }
  }
  free(wmem);
  return mixer_fwd_close(c, &mb, s);
}

static m2_status gdn_fwd(m2_opcall *c) { return gdn_forward(c, false); }
static m2_status gdn_chunked_fwd(m2_opcall *c) { return gdn_forward(c, true); }

/* ---------------- backward (both rows) ----------------
 * Step t, from its state before (P = S_{t-1}) and after (S = S_t), carrying dS = dL/dS_t:
 *   dq_t = scale S do_t ;  dS += (scale q_t) do_t^T
 *   with a = exp(g_t), u = a P^T k_t, v' = beta_t (v_t - u):
 *   dv' = dS^T k_t ;  dk_t = dS v' + a P du ;  dbeta_t = dv'.(v_t - u)
 *   dv_t = beta_t dv' ;  du = -beta_t dv'
 *   dA  = dS + k_t du^T ;  dg_t = a sum(dA * P) ;  dS_{t-1} = a dA
 * and dh0 = dS_{-1}. */

typedef struct gdn_grads {
  double *dq, *dk, *dv, *dg, *dbeta, *dh0; /* shapes of the inputs */
} gdn_grads;

static void gdn_bwd_bh(const m2_gdn_attr *d, const gdn_io *io, const double *dout, const double *dhT, gdn_grads *gr,
                       int64_t b, int64_t h, double scale, int64_t seg, double *St, double *dS, double *u, double *dvp,
                       double *du) {
  int64_t K = d->K, V = d->V, T = d->T, H = d->H, KV = K * V, NS = (T + seg - 1) / seg;
  mixer_load(dS, dhT ? dhT + (b * H + h) * KV : NULL, KV);
  for (int64_t sg = NS - 1; sg >= 0; sg--) {
    int64_t t0 = sg * seg, L = T - t0 < seg ? T - t0 : seg;
    /* recompute the segment's states: St[r] = S_{t0 + r - 1} */
    memcpy(St, io->ckpt + ((b * H + h) * NS + sg) * KV, sizeof(double) * (size_t)KV);
    for (int64_t r = 0; r < L; r++) {
      int64_t tok = (b * T + t0 + r) * H + h;
      memcpy(St + (r + 1) * KV, St + r * KV, sizeof(double) * (size_t)KV);
      gdn_step(St + (r + 1) * KV, K, V, io->q + tok * K, io->k + tok * K, io->v + tok * V, io->g[tok], io->beta[tok],
               scale, NULL, u);
    }
    for (int64_t r = L - 1; r >= 0; r--) {
      int64_t tok = (b * T + t0 + r) * H + h;
      const double *P = St + r * KV, *S = St + (r + 1) * KV;
      const double *q = io->q + tok * K, *k = io->k + tok * K, *v = io->v + tok * V, *dov = dout + tok * V;
      double a = exp(io->g[tok]), beta = io->beta[tok];
      double *dq = gr->dq + tok * K, *dk = gr->dk + tok * K, *dv = gr->dv + tok * V;
      for (int64_t j = 0; j < V; j++) u[j] = 0, dvp[j] = 0;
      for (int64_t i = 0; i < K; i++) {
        double *dSi = dS + i * V, qi = q[i] * scale, ki = k[i], acc = 0;
        const double *Si = S + i * V, *Pi = P + i * V;
        for (int64_t j = 0; j < V; j++) {
          acc += Si[j] * dov[j];
          dSi[j] += qi * dov[j];
          u[j] += ki * Pi[j];
          dvp[j] += ki * dSi[j];
        }
        dq[i] = scale * acc;
      }
      double db = 0;
      for (int64_t j = 0; j < V; j++) {
        u[j] = v[j] - a * u[j]; /* v - u */
        db += dvp[j] * u[j];
        u[j] *= beta; /* v' */
        dv[j] = beta * dvp[j];
        du[j] = -beta * dvp[j];
      }
      gr->dbeta[tok] = db;
      double dg = 0;
      for (int64_t i = 0; i < K; i++) {
        double *dSi = dS + i * V, ki = k[i], acc = 0, acc2 = 0, acc3 = 0;
        const double *Pi = P + i * V;
        for (int64_t j = 0; j < V; j++) {
          acc += dSi[j] * u[j];
          acc2 += Pi[j] * du[j];
          double dA = dSi[j] + ki * du[j];
          acc3 += dA * Pi[j];
          dSi[j] = a * dA;
        }
        dk[i] = acc + a * acc2;
        dg += acc3;
      }
      gr->dg[tok] = a * dg;
    }
  }
  if (gr->dh0) memcpy(gr->dh0 + (b * H + h) * KV, dS, sizeof(double) * (size_t)KV);
}

static m2_status gdn_bwd(m2_opcall *c) {
  const char *op = c->op->name;
  const m2_gdn_attr d = *M2_ATTR(c, m2_gdn_attr);
  if (c->n_saved < 1 || !c->saved[0]) return m2_fail(M2_ERR_AUTOGRAD, "%s: backward without saved states", op);
  double scale = d.scale;
  int64_t seg = d.chunk;
  int64_t K = d.K, V = d.V, KV = K * V;
  mixer_bwd_bufs mb;
  m2_status s = mixer_bwd_open(c, &mb);
  double *wmem = NULL;
  if (s == M2_OK) {
    wmem = malloc(sizeof(double) * (size_t)((seg + 2) * KV + 3 * V));
    if (!wmem) s = m2_fail(M2_ERR_OOM, "%s: out of host memory for the backward buffers", op);
  }
  if (s == M2_OK) {
    const dbuf *in = mb.in, *din = mb.din;
    gdn_io io = {in[0].p, in[1].p, in[2].p, in[3].p, in[4].p, in[5].p, NULL, NULL, m2_data(c->saved[0])};
    gdn_grads gr = {din[0].p, din[1].p, din[2].p, din[3].p, din[4].p, din[5].p};
    double *St = wmem, *dS = St + (seg + 1) * KV, *u = dS + KV, *dvp = u + V, *du = dvp + V;
    for (int64_t b = 0; b < d.B; b++)
      for (int64_t h = 0; h < d.H; h++)
        gdn_bwd_bh(&d, &io, mb.dy.p, mb.dhT.p, &gr, b, h, scale, seg, St, dS, u, dvp, du);
  }
  free(wmem);
  return mixer_bwd_close(c, &mb, s);
}

const m2_op m2_op_gdn = {"gdn", gdn_fwd, gdn_bwd, M2_OP_CAST_IN0 | M2_OP_CAST_STATE1};
const m2_op m2_op_gdn_chunked = {"gdn_chunked", gdn_chunked_fwd, gdn_bwd, M2_OP_CAST_IN0 | M2_OP_CAST_STATE1};

/* ---------------- public API ---------------- */

static m2_status gdn_run(const m2_op *op, m2_tensor *const *in, const m2_gdn_opts *o, m2_tensor **out, m2_tensor **hT) {
  m2_gdn_attr a;
  M2_TRY(gdn_check(in, o, op == &m2_op_gdn_chunked, &a)); /* the one check: the kernels trust a */
  return mixer_call(op, in, &a, sizeof a, out, hT);
}

m2_status m2_gdn(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *g, m2_tensor *beta, m2_tensor *h0,
                 const m2_gdn_opts *o, m2_tensor **out, m2_tensor **hT) {
  return gdn_run(&m2_op_gdn, (m2_tensor *[6]){q, k, v, g, beta, h0}, o, out, hT);
}

m2_status m2_gdn_chunked(m2_tensor *q, m2_tensor *k, m2_tensor *v, m2_tensor *g, m2_tensor *beta, m2_tensor *h0,
                         const m2_gdn_opts *o, m2_tensor **out, m2_tensor **hT) {
  return gdn_run(&m2_op_gdn_chunked, (m2_tensor *[6]){q, k, v, g, beta, h0}, o, out, hT);
}
