/* dist_dp.c — data-parallel gradient sums in buckets, the global grad norm, and ZeRO-1 (dist_dp.h). */
#include "dist_dp.h"
#include "backend.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct dp_bucket {
  int first, count; /* parameters first .. first + count - 1 */
  int64_t len;      /* their elements */
  int64_t c;        /* chunk per rank: ceil(len / world) */
} dp_bucket;

struct m2_dp {
  m2_dist *g;
  m2_optim *opt;
  bool zero;
  int R, rank, n;
  int64_t *off;     /* (n) offset of each parameter in its bucket */
  int *bucket_of;   /* (n) */
  int nb;
  dp_bucket *b;     /* (nb) */
  m2_device dev;
  m2_tensor *flat;  /* (max world * c) on dev: a packed bucket */
  m2_tensor *chunk; /* (max c) on dev: this rank's chunk */
  unsigned char *has, *has_all; /* (n), (world * n): who has a gradient */
  bool *local;      /* (n) rank-local parameters (m2_dp_opts.rank_local): in no bucket (bucket_of -1) */
  int nlocal;
  int cached_bucket, cached_state; /* flat holds state `cached_state` of this bucket (m2_dp_full_state), or -1 */
  int64_t total;
};

/* A 1-D view of elements [off, off + len) of contiguous t */
static m2_tensor *view1(const m2_tensor *t, int64_t off, int64_t len) {
  int64_t one = 1;
  return m2_view_raw(t, 1, &len, &one, t->offset + off);
}

/* dst[doff : doff + len] = src[soff : soff + len] (contiguous tensors, any devices); len 0 does nothing */
static m2_status copy_range(m2_tensor *dst, int64_t doff, const m2_tensor *src, int64_t soff, int64_t len) {
  if (len <= 0) return M2_OK;
  m2_tensor *d = view1(dst, doff, len), *s = d ? view1(src, soff, len) : NULL;
  m2_status st = d && s ? m2_copy_(d, s) : m2_errcode();
  m2_release(s);
  m2_release(d);
  return st;
}

static m2_status zero_range(m2_tensor *t, int64_t off, int64_t len) {
  if (len <= 0) return M2_OK;
  m2_tensor *v = view1(t, off, len);
  m2_status st = v ? m2_zero_(v) : m2_errcode();
  m2_release(v);
  return st;
}

/* the part of parameter i this rank owns: [*lo, *hi) of its elements (a rank-local one: all) */
static void owned(const m2_dp *dp, int i, int64_t *lo, int64_t *hi) {
  int64_t n = m2_numel(m2_optim_param(dp->opt, i));
  if (dp->local[i]) {
    *lo = 0, *hi = n;
    return;
  }
  const dp_bucket *b = &dp->b[dp->bucket_of[i]];
  int64_t a = (int64_t)dp->rank * b->c - dp->off[i], z = a + b->c;
  if (a < 0) a = 0;
  if (z > n) z = n;
  if (z < a) z = a = 0;
  *lo = a;
  *hi = z;
}

m2_dp *m2_dp_new(m2_dist *g, m2_optim *opt, const m2_dp_opts *o) {
  if (!g || !opt) { m2_fail(M2_ERR_VALUE, "dp: NULL process group or optimizer"); return NULL; }
  int64_t cap = o && o->bucket_elems > 0 ? o->bucket_elems : M2_DP_DEFAULT_BUCKET;
  int n = m2_optim_nparams(opt);
  m2_dp *dp = calloc(1, sizeof *dp);
  if (!dp) { m2_fail(M2_ERR_OOM, "dp: out of host memory"); return NULL; }
  dp->g = g, dp->opt = opt, dp->zero = o && o->zero, dp->R = g->env.world, dp->rank = g->env.rank, dp->n = n;
  dp->cached_bucket = -1;
  dp->dev = n ? m2_optim_param(opt, 0)->device : M2_DEV_CPU;
  dp->off = calloc((size_t)(n ? n : 1), sizeof *dp->off);
  dp->bucket_of = calloc((size_t)(n ? n : 1), sizeof *dp->bucket_of);
  dp->b = calloc((size_t)(n ? n : 1), sizeof *dp->b);
  dp->has = calloc((size_t)(n ? n : 1), 1);
  dp->has_all = calloc((size_t)(n ? n : 1) * (size_t)dp->R, 1);
  dp->local = calloc((size_t)(n ? n : 1), sizeof *dp->local);
  if (!dp->off || !dp->bucket_of || !dp->b || !dp->has || !dp->has_all || !dp->local) {
    m2_dp_free(dp);
    m2_fail(M2_ERR_OOM, "dp: out of host memory");
    return NULL;
  }
  int64_t maxc = 1;
  for (int i = 0; i < n; i++) {
    const m2_tensor *p = m2_optim_param(opt, i);
    if (p->dtype != M2_F32 || !m2_is_contiguous(p) || !m2_device_eq(p->device, dp->dev)) {
      m2_dp_free(dp);
      m2_fail(M2_ERR_UNSUPPORTED, "dp: parameter %d ('%s') must be f32, contiguous and on the device of the first "
                                  "(data parallelism keeps f32 master weights on one device per rank)", i,
              p->name ? p->name : "?");
      return NULL;
    }
    int64_t k = m2_numel(p);
    if (o && o->rank_local && o->rank_local[i]) {
      dp->local[i] = true;
      dp->nlocal++;
      dp->bucket_of[i] = -1;
      continue;
    }
    dp_bucket *cur = dp->nb ? &dp->b[dp->nb - 1] : NULL;
    /* a bucket holds consecutive parameters: one after a rank-local parameter starts a new one */
    if (!cur || (cur->len > 0 && cur->len + k > cap) || cur->first + cur->count != i) {
      cur = &dp->b[dp->nb++];
      cur->first = i;
    }
    dp->off[i] = cur->len;
    dp->bucket_of[i] = dp->nb - 1;
    cur->count++;
    cur->len += k;
    dp->total += k;
  }
  for (int k = 0; k < dp->nb; k++) {
    dp->b[k].c = (dp->b[k].len + dp->R - 1) / dp->R;
    if (dp->b[k].c > maxc) maxc = dp->b[k].c;
  }
  int64_t fl = maxc * dp->R;
  dp->flat = m2_empty(M2_F32, dp->dev, 1, &fl);
  dp->chunk = dp->flat ? m2_empty(M2_F32, dp->dev, 1, &maxc) : NULL;
  if (!dp->chunk) {
    m2_fail_context(m2_errcode(), "dp: bucket buffers (%lld elements)", (long long)(fl + maxc));
    m2_dp_free(dp);
    return NULL;
  }
  for (int i = 0; dp->zero && i < n; i++) {
    if (dp->local[i]) continue;
    int64_t lo, hi;
    owned(dp, i, &lo, &hi);
    if (m2_optim_set_range(opt, i, lo, hi) != M2_OK) { m2_dp_free(dp); return NULL; }
  }
  return dp;
}

void m2_dp_free(m2_dp *dp) {
  if (!dp) return;
  for (int i = 0; dp->zero && dp->opt && i < dp->n; i++)
    m2_optim_set_range(dp->opt, i, 0, m2_numel(m2_optim_param(dp->opt, i)));
  m2_release(dp->flat);
  m2_release(dp->chunk);
  free(dp->off), free(dp->bucket_of), free(dp->b), free(dp->has), free(dp->has_all), free(dp->local);
  free(dp);
}

int m2_dp_nbuckets(const m2_dp *dp) { return dp->nb; }
int64_t m2_dp_elems(const m2_dp *dp) { return dp->total; }

/* ---------------- gradients ---------------- */

/* pack bucket k's gradients into flat[0 : width) (missing ones and the padding as zeros) */
static m2_status pack_grads(m2_dp *dp, const dp_bucket *b, int64_t width) {
  for (int i = b->first; i < b->first + b->count; i++) {
    m2_tensor *p = m2_optim_param(dp->opt, i);
    int64_t k = m2_numel(p);
    if (p->grad) M2_TRY(copy_range(dp->flat, dp->off[i], p->grad, 0, k));
    else M2_TRY(zero_range(dp->flat, dp->off[i], k));
  }
  return zero_range(dp->flat, b->len, width - b->len);
}

/* a gradient buffer for a parameter some other rank computed a gradient for */
static m2_status ensure_grad(m2_tensor *p) {
  if (p->grad) return M2_OK;
  p->grad = m2_zeros_like(p);
  return p->grad ? M2_OK : m2_errcode();
}

m2_status m2_dp_sync_grads(m2_dp *dp) {
  dp->cached_bucket = -1;
  int n = dp->n, R = dp->R;
  for (int i = 0; i < n; i++) dp->has[i] = m2_optim_param(dp->opt, i)->grad != NULL;
  M2_TRY(m2_dist_allgather_host(dp->g, dp->has, dp->has_all, (size_t)n));
  for (int i = 0; i < n; i++) {
    if (dp->local[i]) continue; /* its own rank's gradient is the whole one */
    bool any = false;
    for (int r = 0; r < R; r++) any = any || dp->has_all[(size_t)r * (size_t)n + (size_t)i];
    if (any) M2_TRY(ensure_grad(m2_optim_param(dp->opt, i)));
  }
  for (int k = 0; k < dp->nb; k++) {
    const dp_bucket *b = &dp->b[k];
    if (!dp->zero) {
      M2_TRY(pack_grads(dp, b, b->len));
      m2_tensor *v = view1(dp->flat, 0, b->len);
      m2_status s = v ? m2_dist_allreduce_sum(dp->g, v) : m2_errcode();
      m2_release(v);
      M2_TRY(s);
      for (int i = b->first; i < b->first + b->count; i++) {
        m2_tensor *p = m2_optim_param(dp->opt, i);
        if (p->grad) M2_TRY(copy_range(p->grad, 0, dp->flat, dp->off[i], m2_numel(p)));
      }
      continue;
    }
    M2_TRY(pack_grads(dp, b, b->c * R));
    m2_tensor *send = view1(dp->flat, 0, b->c * R), *recv = send ? view1(dp->chunk, 0, b->c) : NULL;
    m2_status s = recv ? m2_dist_reduce_scatter_sum(dp->g, send, recv) : m2_errcode();
    m2_release(recv);
    m2_release(send);
    M2_TRY(s);
    int64_t base = (int64_t)dp->rank * b->c; /* bucket offset of the chunk */
    for (int i = b->first; i < b->first + b->count; i++) {
      m2_tensor *p = m2_optim_param(dp->opt, i);
      int64_t lo, hi;
      owned(dp, i, &lo, &hi);
      if (p->grad) M2_TRY(copy_range(p->grad, lo, dp->chunk, dp->off[i] + lo - base, hi - lo));
    }
  }
  return M2_OK;
}

/* ZeRO-1: sum of squares of this rank's owned gradient elements (double, parameters in order, elements in order) */
static m2_status owned_sumsq(m2_dp *dp, double *out) {
  double ss = 0;
  m2_tensor **views = calloc((size_t)(dp->n ? dp->n : 1), sizeof *views);
  double *parts = calloc((size_t)(dp->n ? dp->n : 1), sizeof *parts);
  m2_status st = views && parts ? M2_OK : m2_fail(M2_ERR_OOM, "dp: out of host memory");
  for (int i = 0; st == M2_OK && i < dp->n; i++) {
    m2_tensor *p = m2_optim_param(dp->opt, i);
    int64_t lo, hi;
    owned(dp, i, &lo, &hi);
    if (!p->grad || hi == lo) continue;
    views[i] = view1(p->grad, lo, hi - lo);
    if (!views[i]) st = m2_errcode();
  }
  if (st == M2_OK && dp->dev.type != M2_CPU) {
    const m2_backend *be = m2_backend_get(dp->dev.type);
    st = be && be->sumsq_many ? be->sumsq_many(views, dp->n, parts)
                              : m2_fail(M2_ERR_UNSUPPORTED, "dp: the device backend has no sum-of-squares kernel");
  }
  for (int i = 0; st == M2_OK && i < dp->n; i++) {
    if (!views[i]) continue;
    if (dp->dev.type != M2_CPU) { ss += parts[i]; continue; }
    const float *x = m2_data(views[i]);
    for (int64_t j = 0, k = m2_numel(views[i]); j < k; j++) ss += (double)x[j] * (double)x[j];
  }
  for (int i = 0; views && i < dp->n; i++) m2_release(views[i]);
  free(views);
  free(parts);
  *out = ss;
  return st;
}

static m2_status scale_owned(m2_dp *dp, double scale) {
  for (int i = 0; i < dp->n; i++) {
    m2_tensor *p = m2_optim_param(dp->opt, i);
    int64_t lo, hi;
    owned(dp, i, &lo, &hi);
    if (!p->grad || hi == lo) continue;
    m2_tensor *v = view1(p->grad, lo, hi - lo);
    if (!v) return m2_errcode();
    m2_status st = M2_OK;
    if (dp->dev.type != M2_CPU) {
      st = m2_backend_get(dp->dev.type)->scale_(v, scale);
    } else { /* as m2_clip_grad_norm scales */
      float *x = m2_data(v), sf = (float)scale;
      for (int64_t j = 0, k = m2_numel(v); j < k; j++) x[j] *= sf;
    }
    m2_release(v);
    M2_TRY(st);
  }
  return M2_OK;
}

/* plain data parallelism with rank-local parameters: rank 0 counts the replicated gradients (every rank holds
 * their sum), each rank its rank-local ones */
static m2_status plain_local_sumsq(m2_dp *dp, double *out) {
  m2_tensor **ps = calloc((size_t)(dp->n ? dp->n : 1), sizeof *ps);
  double *parts = calloc((size_t)(dp->n ? dp->n : 1), sizeof *parts);
  m2_status st = ps && parts ? M2_OK : m2_fail(M2_ERR_OOM, "dp: out of host memory");
  double ss = 0;
  for (int i = 0; st == M2_OK && i < dp->n; i++) {
    m2_tensor *p = m2_optim_param(dp->opt, i);
    if (p->grad && (dp->local[i] || dp->rank == 0)) ps[i] = p->grad;
  }
  if (st == M2_OK && dp->dev.type != M2_CPU) {
    const m2_backend *be = m2_backend_get(dp->dev.type);
    st = be && be->sumsq_many ? be->sumsq_many(ps, dp->n, parts)
                              : m2_fail(M2_ERR_UNSUPPORTED, "dp: the device backend has no sum-of-squares kernel");
  }
  for (int i = 0; st == M2_OK && i < dp->n; i++) {
    if (!ps[i]) continue;
    if (dp->dev.type != M2_CPU) { ss += parts[i]; continue; }
    const float *x = m2_data(ps[i]);
    for (int64_t j = 0, k = m2_numel(ps[i]); j < k; j++) ss += (double)x[j] * (double)x[j];
  }
  free(ps);
  free(parts);
  *out = ss;
  return st;
}

/* plain data parallelism with rank-local parameters: scale every gradient (each rank holds the whole of its own) */
static m2_status scale_all(m2_dp *dp, double scale) {
  for (int i = 0; i < dp->n; i++) {
    m2_tensor *g = m2_optim_param(dp->opt, i)->grad;
    if (!g) continue;
    if (dp->dev.type != M2_CPU) {
      M2_TRY(m2_backend_get(dp->dev.type)->scale_(g, scale));
    } else {
      float *x = m2_data(g), sf = (float)scale;
      for (int64_t j = 0, k = m2_numel(g); j < k; j++) x[j] *= sf;
    }
  }
  return M2_OK;
}

m2_status m2_dp_clip_grad_norm(m2_dp *dp, double max_norm, double *norm) {
  if (!dp->zero && !dp->nlocal) {
    m2_tensor **ps = calloc((size_t)(dp->n ? dp->n : 1), sizeof *ps);
    if (!ps) return m2_fail(M2_ERR_OOM, "dp: out of host memory");
    for (int i = 0; i < dp->n; i++) ps[i] = m2_optim_param(dp->opt, i);
    m2_status s = m2_clip_grad_norm(ps, dp->n, max_norm, norm);
    free(ps);
    return s;
  }
  double mine = 0, total = 0;
  double *all = calloc((size_t)dp->R, sizeof *all);
  if (!all) return m2_fail(M2_ERR_OOM, "dp: out of host memory");
  m2_status st = dp->zero ? owned_sumsq(dp, &mine) : plain_local_sumsq(dp, &mine);
  if (st == M2_OK) st = m2_dist_allgather_host(dp->g, &mine, all, sizeof mine);
  for (int r = 0; r < dp->R; r++) total += all[r];
  free(all);
  M2_TRY(st);
  double nrm = sqrt(total);
  if (norm) *norm = nrm;
  if (!isfinite(nrm) || !(max_norm > 0) || nrm <= max_norm) return M2_OK;
  return dp->zero ? scale_owned(dp, max_norm / (nrm + 1e-6)) : scale_all(dp, max_norm / (nrm + 1e-6));
}

/* ---------------- the step ---------------- */

/* ZeRO-1: all-gather bucket k of parameters (or of state j when state >= 0) into flat[0 : world c) */
static m2_status gather_bucket(m2_dp *dp, int k, int state) {
  const dp_bucket *b = &dp->b[k];
  int64_t base = (int64_t)dp->rank * b->c;
  M2_TRY(zero_range(dp->chunk, 0, b->c));
  for (int i = b->first; i < b->first + b->count; i++) {
    int64_t lo, hi;
    owned(dp, i, &lo, &hi);
    if (hi == lo) continue;
    if (state < 0) {
      M2_TRY(copy_range(dp->chunk, dp->off[i] + lo - base, m2_optim_param(dp->opt, i), lo, hi - lo));
    } else {
      m2_tensor *s = m2_optim_state(dp->opt, i, state);
      if (s) M2_TRY(copy_range(dp->chunk, dp->off[i] + lo - base, s, 0, hi - lo));
    }
  }
  m2_tensor *send = view1(dp->chunk, 0, b->c), *recv = send ? view1(dp->flat, 0, b->c * dp->R) : NULL;
  m2_status st = recv ? m2_dist_allgather(dp->g, send, recv) : m2_errcode();
  m2_release(recv);
  m2_release(send);
  return st;
}

m2_status m2_dp_step(m2_dp *dp, double lr) {
  M2_TRY(m2_optim_step(dp->opt, lr));
  if (!dp->zero) return M2_OK;
  dp->cached_bucket = -1;
  for (int k = 0; k < dp->nb; k++) {
    M2_TRY(gather_bucket(dp, k, -1));
    const dp_bucket *b = &dp->b[k];
    for (int i = b->first; i < b->first + b->count; i++) {
      m2_tensor *p = m2_optim_param(dp->opt, i);
      M2_TRY(copy_range(p, 0, dp->flat, dp->off[i], m2_numel(p)));
    }
  }
  return M2_OK;
}

m2_status m2_dp_broadcast_params(m2_dp *dp, int root) {
  for (int i = 0; i < dp->n; i++)
    if (!dp->local[i]) M2_TRY(m2_dist_broadcast(dp->g, m2_optim_param(dp->opt, i), root));
  return M2_OK;
}

/* ---------------- checkpoints ---------------- */

m2_tensor *m2_dp_full_state(m2_dp *dp, int i, int j) {
  if (i < 0 || i >= dp->n || j < 0 || j >= m2_optim_state_count(dp->opt)) {
    m2_fail(M2_ERR_INDEX, "dp full_state: (%d, %d) out of range", i, j);
    return NULL;
  }
  if (!dp->zero || dp->local[i]) {
    m2_tensor *s = m2_optim_state(dp->opt, i, j);
    if (s) m2_retain(s);
    else m2_clear_error();
    return s;
  }
  if (m2_optim_steps(dp->opt) == 0) return NULL; /* no state before the first step, on any rank */
  int k = dp->bucket_of[i];
  if (dp->cached_bucket != k || dp->cached_state != j) {
    dp->cached_bucket = -1;
    if (gather_bucket(dp, k, j) != M2_OK) return NULL;
    dp->cached_bucket = k;
    dp->cached_state = j;
  }
  m2_tensor *p = m2_optim_param(dp->opt, i);
  m2_tensor *out = m2_empty(M2_F32, p->device, p->ndim, p->shape);
  if (out && copy_range(out, 0, dp->flat, dp->off[i], m2_numel(p)) != M2_OK) {
    m2_release(out);
    return NULL;
  }
  return out;
}

m2_status m2_dp_load_state(m2_dp *dp, int i, int j, const m2_tensor *full) {
  if (i < 0 || i >= dp->n || j < 0 || j >= m2_optim_state_count(dp->opt))
    return m2_fail(M2_ERR_INDEX, "dp load_state: (%d, %d) out of range", i, j);
  m2_tensor *p = m2_optim_param(dp->opt, i);
  if (!full || m2_numel(full) != m2_numel(p) || !m2_is_contiguous(full) || full->dtype != M2_F32)
    return m2_fail(M2_ERR_SHAPE, "dp load_state: state %d of parameter %d must be contiguous f32 with its %lld "
                                 "elements", j, i, (long long)m2_numel(p));
  M2_TRY(m2_optim_init_state(dp->opt));
  int64_t lo = 0, hi = m2_numel(p);
  if (dp->zero) owned(dp, i, &lo, &hi);
  m2_tensor *s = m2_optim_state(dp->opt, i, j);
  if (!s) { m2_clear_error(); return M2_OK; } /* nothing of it is ours */
  return copy_range(s, 0, full, lo, hi - lo);
}
