/* ops_moe_ep.c — the token exchange of expert parallelism as two autograd ops, moe_dispatch and moe_combine
 * (core/ops_moe_ep.h has the layout). Built from the collectives of dist.h and device copies, so the same code runs
 * on any device (M2_OP_ANYDEV_*): on CPU ranks over MPI, on GPU ranks over NCCL, and in one process (no group, or
 * world 1) as a copy.
 *
 * A plan from the count matrix C (R, E) (C[q, e] = rank q's slots for expert e; me = this rank, El = E / R):
 *   send_rows[q] = sum of C[me, e] over q's experts     (my rows for rank q: consecutive in xp)
 *   recv_rows[q] = sum of C[q, e] over my experts       (rank q's rows for me)
 * The all-to-all delivers tmp = [from rank 0: its rows of my expert 0, expert 1, ...][from rank 1: ...]...; xl holds
 * the same blocks by expert first: [expert 0: from rank 0, rank 1, ...][expert 1: ...]. */
#include "ops.h"
#include "backend.h"
#include "ops_moe_ep.h"
#include <stdlib.h>
#include <string.h>

typedef struct ep_plan {
  int R, me;
  int64_t E, El, d;
  int64_t *C;                    /* (R, E) host */
  int64_t *send_rows, *recv_rows; /* (R) each */
  int64_t M, Ml;                 /* my slots; the rows of my experts from every rank */
} ep_plan;

static void plan_free(ep_plan *p) {
  free(p->C), free(p->send_rows), free(p->recv_rows);
  memset(p, 0, sizeof *p);
}

static int world_of(const m2_dist *g) { return g ? g->env.world : 1; }

/* p->C must be filled; sets the rest */
static void plan_counts(ep_plan *p) {
  p->M = p->Ml = 0;
  for (int q = 0; q < p->R; q++) {
    p->send_rows[q] = p->recv_rows[q] = 0;
    for (int64_t j = 0; j < p->El; j++) {
      p->send_rows[q] += p->C[(int64_t)p->me * p->E + q * p->El + j];
      p->recv_rows[q] += p->C[(int64_t)q * p->E + p->me * p->El + j];
    }
    p->M += p->send_rows[q];
    p->Ml += p->recv_rows[q];
  }
}

static m2_status plan_alloc(ep_plan *p, const m2_dist *g, int64_t E, int64_t d) {
  memset(p, 0, sizeof *p);
  p->R = world_of(g), p->me = g ? g->env.rank : 0, p->E = E, p->El = E / p->R, p->d = d;
  p->C = calloc((size_t)(p->R * E), sizeof *p->C);
  p->send_rows = calloc((size_t)p->R, sizeof *p->send_rows);
  p->recv_rows = calloc((size_t)p->R, sizeof *p->recv_rows);
  if (!p->C || !p->send_rows || !p->recv_rows) {
    plan_free(p);
    return m2_fail(M2_ERR_OOM, "moe expert parallel: out of host memory");
  }
  return M2_OK;
}

/* n i64 values of t (any device) into host memory */
static m2_status host_i64(const m2_tensor *t, int64_t *out, int64_t n) {
  if (n == 0) return M2_OK;
  return m2_memcpy(M2_DEV_CPU, out, t->device, m2_data(t), (size_t)n * sizeof *out);
}

/* rows [s0, s0 + n) of src to rows [d0, d0 + n) of dst (contiguous (rows, d) tensors of one dtype) */
static m2_status copy_rows(m2_tensor *dst, int64_t d0, const m2_tensor *src, int64_t s0, int64_t n, int64_t d) {
  if (n <= 0 || d <= 0) return M2_OK;
  const size_t row = (size_t)d * m2_elsize(src);
  return m2_memcpy(dst->device, (char *)m2_data(dst) + (size_t)d0 * row, src->device,
                   (const char *)m2_data(src) + (size_t)s0 * row, (size_t)n * row);
}

/* between tmp (blocks by source rank, then expert) and xl (by expert, then source rank); to_xl: tmp -> xl */
static m2_status regroup(const ep_plan *p, m2_tensor *tmp, m2_tensor *xl, bool to_xl) {
  int64_t dst = 0; /* row in xl */
  for (int64_t j = 0; j < p->El; j++) {
    const int64_t e = (int64_t)p->me * p->El + j;
    int64_t base = 0; /* row in tmp where rank q's block starts */
    for (int q = 0; q < p->R; q++) {
      int64_t src = base;
      for (int64_t i = 0; i < j; i++) src += p->C[(int64_t)q * p->E + p->me * p->El + i];
      const int64_t n = p->C[(int64_t)q * p->E + e];
      M2_TRY(to_xl ? copy_rows(xl, dst, tmp, src, n, p->d) : copy_rows(tmp, src, xl, dst, n, p->d));
      dst += n;
      base += p->recv_rows[q];
    }
  }
  return M2_OK;
}

static m2_status exchange(m2_dist *g, const ep_plan *p, const m2_tensor *send, m2_tensor *recv, bool forward) {
  if (!g) return copy_rows(recv, 0, send, 0, send->shape[0], p->d);
  int64_t *sc = malloc((size_t)p->R * 2 * sizeof *sc);
  if (!sc) return m2_fail(M2_ERR_OOM, "moe expert parallel: out of host memory");
  int64_t *rc = sc + p->R;
  for (int q = 0; q < p->R; q++) {
    sc[q] = (forward ? p->send_rows[q] : p->recv_rows[q]) * p->d;
    rc[q] = (forward ? p->recv_rows[q] : p->send_rows[q]) * p->d;
  }
  m2_status s = m2_dist_alltoallv(g, send, sc, recv, rc);
  free(sc);
  return s;
}

/* xp (M, d), sorted by expert -> *xl (Ml, d), grouped by my experts */
static m2_status to_experts(m2_dist *g, const ep_plan *p, const m2_tensor *xp, m2_tensor **xl) {
  m2_tensor *tmp = m2_empty(xp->dtype, xp->device, 2, (int64_t[]){p->Ml, p->d});
  m2_tensor *out = tmp ? m2_empty(xp->dtype, xp->device, 2, (int64_t[]){p->Ml, p->d}) : NULL;
  m2_status s = out ? exchange(g, p, xp, tmp, true) : m2_errcode();
  if (s == M2_OK) s = regroup(p, tmp, out, true);
  m2_release(tmp);
  if (s != M2_OK) {
    m2_release(out);
    return s;
  }
  *xl = out;
  return M2_OK;
}

/* yl (Ml, d), grouped by my experts -> *yp (M, d), in xp's order */
static m2_status from_experts(m2_dist *g, const ep_plan *p, const m2_tensor *yl, m2_tensor **yp) {
  m2_tensor *tmp = m2_empty(yl->dtype, yl->device, 2, (int64_t[]){p->Ml, p->d});
  m2_tensor *out = tmp ? m2_empty(yl->dtype, yl->device, 2, (int64_t[]){p->M, p->d}) : NULL;
  m2_status s = out ? regroup(p, tmp, (m2_tensor *)yl, false) : m2_errcode();
  if (s == M2_OK) s = exchange(g, p, tmp, out, false);
  m2_release(tmp);
  if (s != M2_OK) {
    m2_release(out);
    return s;
  }
  *yp = out;
  return M2_OK;
}

/* ---------------- checks ---------------- */

static m2_status check_group(const char *op, const m2_dist *g, int64_t E) {
  if (E < 1) return m2_fail(M2_ERR_VALUE, "%s: experts = %lld must be >= 1", op, (long long)E);
  int R = world_of(g);
  if (E % R != 0)
    return m2_fail(M2_ERR_VALUE, "%s: experts = %lld is not a multiple of the world size %d (expert parallelism gives "
                                 "every rank E / world experts)", op, (long long)E, R);
  return M2_OK;
}

static m2_status check_rows(const char *op, const char *name, const m2_tensor *x) {
  if (!x) return m2_fail(M2_ERR_VALUE, "%s: %s is NULL", op, name);
  char s[96];
  if (x->ndim != 2) return m2_fail(M2_ERR_SHAPE, "%s: %s %s must be (rows, d)", op, name, m2_shape_str(x, s, sizeof s));
  if (x->dtype != M2_F32 && x->dtype != M2_F64 && x->dtype != M2_BF16)
    return m2_fail(M2_ERR_DTYPE, "%s: %s is %s; f32, f64 or bf16 expected", op, name, m2_dtype_name(x->dtype));
  return M2_OK;
}

/* ---------------- moe_dispatch ---------------- */

static m2_status dispatch_fwd(m2_opcall *c) {
  const m2_moe_ep_attr *a = M2_ATTR(c, m2_moe_ep_attr);
  m2_tensor *xp = c->in[0], *off = c->in[1];
  const int64_t E = a->experts, M = xp->shape[0];
  ep_plan p;
  M2_TRY(plan_alloc(&p, a->g, E, xp->shape[1]));
  int64_t *mine = calloc((size_t)(E + 1), sizeof *mine);
  m2_status s = mine ? host_i64(off, mine, E + 1) : m2_fail(M2_ERR_OOM, "moe_dispatch: out of host memory");
  for (int64_t e = 0; s == M2_OK && e < E; e++)
    if (mine[0] != 0 || mine[e + 1] < mine[e] || mine[E] != M)
      s = m2_fail(M2_ERR_VALUE, "moe_dispatch: offsets must rise from 0 to the %lld rows of xp, as moe_permute gives "
                                "(got %lld .. %lld, expert %lld: %lld -> %lld)", (long long)M, (long long)mine[0],
                  (long long)mine[E], (long long)e, (long long)mine[e], (long long)mine[e + 1]);
  if (s == M2_OK) { /* counts first: every rank's slots per expert */
    for (int64_t e = 0; e < E; e++) mine[e] = mine[e + 1] - mine[e];
    s = a->g ? m2_dist_allgather_host(a->g, mine, p.C, (size_t)E * sizeof *mine)
             : (memcpy(p.C, mine, (size_t)E * sizeof *mine), M2_OK);
  }
  free(mine);
  m2_tensor *xl = NULL, *loff = NULL, *cnt = NULL;
  if (s == M2_OK) {
    plan_counts(&p);
    s = to_experts(a->g, &p, xp, &xl); /* then the rows */
  }
  if (s == M2_OK) {
    int64_t *lo = malloc((size_t)(p.El + 1) * sizeof *lo);
    if (!lo) s = m2_fail(M2_ERR_OOM, "moe_dispatch: out of host memory");
    for (int64_t j = 0; lo && j <= p.El; j++) {
      lo[j] = j == 0 ? 0 : lo[j - 1];
      for (int q = 0; j > 0 && q < p.R; q++) lo[j] += p.C[(int64_t)q * E + p.me * p.El + j - 1];
    }
    loff = lo ? m2_empty(M2_I64, xp->device, 1, (int64_t[]){p.El + 1}) : NULL;
    cnt = loff ? m2_empty(M2_I64, xp->device, 2, (int64_t[]){p.R, E}) : NULL;
    if (lo && !cnt) s = m2_errcode();
    if (s == M2_OK) s = m2_memcpy(loff->device, m2_data(loff), M2_DEV_CPU, lo, (size_t)(p.El + 1) * sizeof *lo);
    if (s == M2_OK) s = m2_memcpy(cnt->device, m2_data(cnt), M2_DEV_CPU, p.C, (size_t)(p.R * E) * sizeof *p.C);
    free(lo);
  }
  plan_free(&p);
  if (s != M2_OK) {
    m2_release(xl), m2_release(loff), m2_release(cnt);
    return s;
  }
  c->n_out = 3;
  c->out[0] = xl, c->out[1] = loff, c->out[2] = cnt;
  return M2_OK;
}

/* a plan from a counts tensor (R, E) (moe_dispatch's third output) */
static m2_status plan_from(ep_plan *p, const m2_moe_ep_attr *a, const m2_tensor *cnt, int64_t d) {
  M2_TRY(plan_alloc(p, a->g, a->experts, d));
  m2_status s = host_i64(cnt, p->C, (int64_t)p->R * p->E);
  if (s != M2_OK) {
    plan_free(p);
    return s;
  }
  plan_counts(p);
  return M2_OK;
}

/* a contiguous copy of g in dtype dt (gradients may arrive strided or in another dtype) */
static m2_tensor *grad_as(m2_tensor *g, m2_dtype dt) {
  if (m2_is_contiguous(g) && g->dtype == dt) return m2_retain(g), g;
  return m2_clone_raw(g, dt, g->device);
}

static m2_status dispatch_bwd(m2_opcall *c) {
  const m2_moe_ep_attr *a = M2_ATTR(c, m2_moe_ep_attr);
  m2_tensor *xp = c->in[0];
  ep_plan p;
  M2_TRY(plan_from(&p, a, c->out[2], xp->shape[1]));
  m2_tensor *g = grad_as(c->dout[0], xp->dtype), *dx = NULL;
  m2_status s = g ? from_experts(a->g, &p, g, &dx) : m2_errcode();
  m2_release(g);
  plan_free(&p);
  M2_TRY(s);
  c->din[0] = dx;
  return M2_OK;
}

const m2_op m2_op_moe_dispatch = {"moe_dispatch", dispatch_fwd, dispatch_bwd,
                                  M2_OP_KEEP_OUTPUTS | M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD};

m2_status m2_moe_dispatch(m2_dist *g, m2_tensor *xp, m2_tensor *offsets, int64_t experts, m2_tensor **xl,
                          m2_tensor **loff, m2_tensor **counts) {
  const char *op = "moe_dispatch";
  M2_TRY(check_group(op, g, experts));
  M2_TRY(check_rows(op, "xp", xp));
  char s[96];
  if (!offsets || offsets->dtype != M2_I64 || offsets->ndim != 1 || offsets->shape[0] != experts + 1)
    return m2_fail(M2_ERR_SHAPE, "%s: offsets %s must be i64 (experts + 1 = %lld), as moe_permute gives", op,
                   offsets ? m2_shape_str(offsets, s, sizeof s) : "NULL", (long long)(experts + 1));
  if (!m2_device_eq(xp->device, offsets->device))
    return m2_fail(M2_ERR_DEVICE, "%s: xp and offsets are on different devices", op);
  m2_tensor *in[2] = {xp, offsets};
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_dispatch, 2, in);
  m2_moe_ep_attr at = {.g = g, .experts = experts};
  M2_SET_ATTR(&c, at);
  m2_tensor *outs[M2_MAX_OUT] = {0};
  M2_TRY(m2_call_run(&c, outs));
  m2_tensor **want[3] = {xl, loff, counts};
  for (int i = 0; i < 3; i++) {
    if (want[i]) *want[i] = outs[i];
    else m2_release(outs[i]);
  }
  return M2_OK;
}

/* ---------------- moe_combine ---------------- */

static m2_status combine_fwd(m2_opcall *c) {
  const m2_moe_ep_attr *a = M2_ATTR(c, m2_moe_ep_attr);
  m2_tensor *yl = c->in[0];
  ep_plan p;
  M2_TRY(plan_from(&p, a, c->in[1], yl->shape[1]));
  m2_status s = M2_OK;
  if (p.Ml != yl->shape[0])
    s = m2_fail(M2_ERR_SHAPE, "moe_combine: yl has %lld rows but the counts give this rank's experts %lld",
                (long long)yl->shape[0], (long long)p.Ml);
  m2_tensor *yp = NULL;
  if (s == M2_OK) s = from_experts(a->g, &p, yl, &yp);
  plan_free(&p);
  M2_TRY(s);
  c->n_out = 1;
  c->out[0] = yp;
  return M2_OK;
}

static m2_status combine_bwd(m2_opcall *c) {
  const m2_moe_ep_attr *a = M2_ATTR(c, m2_moe_ep_attr);
  m2_tensor *yl = c->in[0];
  ep_plan p;
  M2_TRY(plan_from(&p, a, c->in[1], yl->shape[1]));
  m2_tensor *g = grad_as(c->dout[0], yl->dtype), *dy = NULL;
  m2_status s = g ? to_experts(a->g, &p, g, &dy) : m2_errcode();
  m2_release(g);
  plan_free(&p);
  M2_TRY(s);
  c->din[0] = dy;
  return M2_OK;
}

const m2_op m2_op_moe_combine = {"moe_combine", combine_fwd, combine_bwd, M2_OP_ANYDEV_FWD | M2_OP_ANYDEV_BWD};

m2_tensor *m2_moe_combine(m2_dist *g, m2_tensor *yl, m2_tensor *counts) {
  const char *op = "moe_combine";
  if (check_rows(op, "yl", yl) != M2_OK) return NULL;
  char s[96];
  if (!counts || counts->dtype != M2_I64 || counts->ndim != 2 || counts->shape[0] != world_of(g)) {
    m2_fail(M2_ERR_SHAPE, "%s: counts %s must be i64 (world = %d, experts), as moe_dispatch gives", op,
            counts ? m2_shape_str(counts, s, sizeof s) : "NULL", world_of(g));
    return NULL;
  }
  if (check_group(op, g, counts->shape[1]) != M2_OK) return NULL;
  if (!m2_device_eq(yl->device, counts->device)) {
    m2_fail(M2_ERR_DEVICE, "%s: yl and counts are on different devices", op);
    return NULL;
  }
  m2_tensor *in[2] = {yl, counts};
  m2_opcall c;
  m2_call_init(&c, &m2_op_moe_combine, 2, in);
  m2_moe_ep_attr at = {.g = g, .experts = counts->shape[1]};
  M2_SET_ATTR(&c, at);
  return m2_call1(&c);
}
