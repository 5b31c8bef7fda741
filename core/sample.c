/* sample.c — the sampler of sample.h on the host: per row the temperature, top-k (a quickselect for the k-th value),
 * top-p (sorting only the head of the distribution that can hold the nucleus) and the inverse-CDF draw from Philox.
 * Work per row: O(V) plus O(h log h) for the h tokens above the top-p cut; rows are spread over threads. */
#include "sample.h"
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "backend.h"
#include "rng.h"

#define M2_SAMPLE_THREADS 32 /* the most threads one call spreads its rows over */

m2_status m2_sample_check(const m2_sample_opts *o) {
  if (!o) return m2_fail(M2_ERR_VALUE, "sample: options are NULL");
  if (!(o->temperature >= 0) || !isfinite(o->temperature))
    return m2_fail(M2_ERR_VALUE, "sample: temperature must be a finite number >= 0 (0: greedy), got %g",
                   o->temperature);
  if (o->top_k < 0)
    return m2_fail(M2_ERR_VALUE, "sample: top_k must be >= 0 (0: off), got %lld", (long long)o->top_k);
  if (!(o->top_p > 0 && o->top_p <= 1))
    return m2_fail(M2_ERR_VALUE, "sample: top_p must be in (0, 1] (1: off), got %g", o->top_p);
  return M2_OK;
}

/* a token of the top-p head: its scaled logit and id, sorted z descending, lower id first at a tie */
typedef struct zid {
  double z;
  int64_t id;
} zid;

static int zid_cmp(const void *a, const void *b) {
  const zid *x = a, *y = b;
  if (x->z != y->z) return x->z > y->z ? -1 : 1;
  return x->id < y->id ? -1 : (x->id > y->id);
}

/* scratch of one call, sized for rows of V */
typedef struct work {
  int64_t V;
  double *z;           /* (V) the row / temperature */
  double *p;           /* (V) exp(z - max) on the kept set, 0 elsewhere */
  double *sel;         /* (V) quickselect's copy of z */
  unsigned char *keep; /* (V) the kept set */
  zid *head;           /* (V) the top-p candidates */
} work;

static void work_free(work *w) {
  free(w->z), free(w->p), free(w->sel), free(w->keep), free(w->head);
}

static m2_status work_alloc(work *w, int64_t V) {
  memset(w, 0, sizeof *w);
  w->V = V;
  size_t n = (size_t)V;
  w->z = malloc(n * sizeof(double));
  w->p = malloc(n * sizeof(double));
  w->sel = malloc(n * sizeof(double));
  w->keep = malloc(n);
  w->head = malloc(n * sizeof(zid));
  if (!w->z || !w->p || !w->sel || !w->keep || !w->head) {
    work_free(w);
    return m2_fail(M2_ERR_OOM, "sample: cannot allocate the scratch for rows of %lld logits", (long long)V);
  }
  return M2_OK;
}

static double median3(double a, double b, double c) {
  if (a > b) { double t = a; a = b; b = t; }
  if (b > c) b = c;
  return a > b ? a : b;
}

/* the k-th largest of a[0..n) (1 <= k <= n; reorders a): Hoare quickselect, median-of-three pivot */
static double kth_largest(double *a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1, want = k - 1; /* the position in descending order */
  while (lo < hi) {
    double pivot = median3(a[lo], a[lo + (hi - lo) / 2], a[hi]);
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        double t = a[i];
        a[i] = a[j], a[j] = t;
        i++, j--;
      }
    }
    /* a[lo..j] >= pivot, a[i..hi] <= pivot, a[j+1..i-1] == pivot */
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return a[want];
  }
  return a[lo];
}

/* One row (V logits, f64 or f32, at src) -> *id (the token drawn, when id != NULL) and probs (V, when != NULL). */
static m2_status sample_row(const void *src, bool f64, const m2_sample_opts *o, int64_t row, work *w, int64_t *id,
                            double *probs) {
  const int64_t V = w->V;
  const double *xd = f64 ? src : NULL;
  const float *xf = f64 ? NULL : src;
  double *z = w->z, *p = w->p, best_x = -INFINITY;
  int64_t best = -1;
  /* one pass: check, z = x / temperature, the first largest */
  const double temp = o->temperature > 0 ? o->temperature : 1;
  for (int64_t i = 0; i < V; i++) {
    double x = f64 ? xd[i] : (double)xf[i];
    if (isnan(x) || x == INFINITY)
      return m2_fail(M2_ERR_VALUE, "sample: logits row %lld (0-based), token %lld is %s: only finite logits and "
                     "-inf (a masked token) can be sampled", (long long)row, (long long)i, isnan(x) ? "NaN" : "+inf");
    if (x > best_x) best_x = x, best = i;
    z[i] = x / temp;
  }
  if (best < 0)
    return m2_fail(M2_ERR_VALUE, "sample: logits row %lld (0-based) has no finite logit (all %lld are -inf)",
                   (long long)row, (long long)V);
  if (o->temperature == 0) { /* greedy */
    if (probs) {
      memset(probs, 0, (size_t)V * sizeof(double));
      probs[best] = 1;
    }
    if (id) *id = best;
    return M2_OK;
  }
  const double zmax = z[best]; /* x / temperature keeps the order */
  unsigned char *keep = w->keep;
  int64_t nkeep = V;
  double mass = 0; /* of the kept set, summed in id order */
  if (o->top_k > 0 && o->top_k < V) { /* the k largest; at a tie on the k-th value, lower ids first */
    memcpy(w->sel, z, (size_t)V * sizeof(double));
    double v = kth_largest(w->sel, V, o->top_k);
    int64_t gt = 0;
    for (int64_t i = 0; i < V; i++) gt += z[i] > v;
    int64_t need = o->top_k - gt;
    for (int64_t i = 0; i < V; i++) {
      bool k = z[i] > v || (z[i] == v && need > 0);
      if (z[i] == v && need > 0) need--;
      p[i] = k ? exp(z[i] - zmax) : 0;
      mass += p[i];
    }
    nkeep = o->top_k;
  } else {
    for (int64_t i = 0; i < V; i++) mass += p[i] = exp(z[i] - zmax);
  }
  if (o->top_p < 1) {
    /* The nucleus: the smallest head (z descending, lower id first) with mass >= target. Every token below
     * thr = (mass - target) / nkeep together weighs less than mass - target, so the tokens at or above thr hold
     * the nucleus: only they are sorted (all kept tokens when rounding says otherwise). */
    double target = o->top_p * mass, thr = (mass - target) / (double)nkeep, head_mass = 0;
    int64_t h = 0;
    for (int64_t i = 0; i < V; i++)
      if (p[i] > 0 && p[i] >= thr) w->head[h++] = (zid){z[i], i}, head_mass += p[i];
    if (head_mass < target) {
      h = 0;
      for (int64_t i = 0; i < V; i++)
        if (p[i] > 0) w->head[h++] = (zid){z[i], i};
    }
    qsort(w->head, (size_t)h, sizeof(zid), zid_cmp);
    memset(keep, 0, (size_t)V);
    double cum = 0;
    for (int64_t j = 0; j < h; j++) {
      keep[w->head[j].id] = 1;
      cum += p[w->head[j].id];
      if (cum >= target) break;
    }
    mass = 0;
    for (int64_t i = 0; i < V; i++) {
      if (!keep[i]) p[i] = 0;
      mass += p[i];
    }
  }
  if (probs)
    for (int64_t i = 0; i < V; i++) probs[i] = p[i] / mass;
  if (id) { /* inverse CDF in id order; never an id of probability 0 */
    uint32_t r[4];
    m2_philox(o->seed, M2_SAMPLE_STREAM + (uint64_t)row, o->offset, r);
    double u = (double)(((uint64_t)r[0] << 21) ^ (r[1] >> 11)) * (1.0 / 9007199254740992.0); /* [0, 1), 53 bits */
    double t = u * mass, cum = 0;
    int64_t i = 0;
    for (; i < V; i++) { /* a token of probability 0 cannot be the first to pass t */
      cum += p[i];
      if (cum > t) break;
    }
    if (i == V) /* u * mass rounded above the running sum: the last token that can be drawn */
      for (i = V - 1; i > 0 && !(p[i] > 0); i--) {}
    *id = i;
  }
  return M2_OK;
}

/* the rows [first, rows) step `stride` of one worker; the first failing row keeps its status and message */
typedef struct job {
  const void *x; /* (rows, V) f64 or f32, host */
  bool f64;
  int64_t V, rows, first, stride;
  const m2_sample_opts *o;
  int64_t *ids;   /* (rows) or NULL */
  double *probs;  /* (rows, V) or NULL */
  m2_status st;
  int64_t bad_row; /* the row that failed, or -1 */
  char msg[512];
} job;

static void *run_job(void *arg) {
  job *j = arg;
  work w;
  j->st = work_alloc(&w, j->V);
  bool have_work = j->st == M2_OK;
  j->bad_row = have_work ? -1 : j->first;
  for (int64_t b = j->first; j->st == M2_OK && b < j->rows; b += j->stride) {
    const char *row = (const char *)j->x + (size_t)(b * j->V) * (j->f64 ? sizeof(double) : sizeof(float));
    j->st = sample_row(row, j->f64, j->o, b, &w, j->ids ? j->ids + b : NULL, j->probs ? j->probs + b * j->V : NULL);
    if (j->st != M2_OK) j->bad_row = b;
  }
  if (j->st != M2_OK) snprintf(j->msg, sizeof j->msg, "%s", m2_errmsg()); /* messages are per thread */
  if (have_work) work_free(&w);
  return NULL;
}

/* the shared body: check, the logits on the host, every row -> ids (rows) and/or probs (rows * V); rows are spread
 * over up to M2_SAMPLE_THREADS threads when there are several (each row's draw depends on the row alone, so the
 * result is the same with any number of threads) */
static m2_status sample_rows(const m2_tensor *logits, const m2_sample_opts *o, int64_t *ids, double *probs) {
  const int64_t V = logits->shape[logits->ndim - 1], rows = V > 0 ? m2_numel(logits) / V : 0;
  if (rows == 0) return M2_OK;
  bool f64 = logits->dtype == M2_F64;
  const void *x = NULL;
  void *host = NULL;
  if (logits->device.type == M2_CPU && m2_is_contiguous(logits) && (f64 || logits->dtype == M2_F32)) {
    x = m2_data(logits); /* read in place */
  } else {
    size_t n = (size_t)(rows * V);
    host = malloc(n * (f64 ? sizeof(double) : sizeof(float)));
    if (!host) return m2_fail(M2_ERR_OOM, "sample: cannot allocate %zu bytes for the logits on the host", n * 8);
    m2_status st = m2_to_host(logits, f64 ? M2_F64 : M2_F32, host);
    if (st != M2_OK) {
      free(host);
      return st;
    }
    x = host;
  }
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t nth = rows < M2_SAMPLE_THREADS ? rows : M2_SAMPLE_THREADS;
  if (ncpu > 0 && nth > ncpu) nth = ncpu;
  if (rows * V < (1 << 16)) nth = 1; /* too little work to share */
  job jobs[M2_SAMPLE_THREADS];
  pthread_t tid[M2_SAMPLE_THREADS];
  bool started[M2_SAMPLE_THREADS] = {false};
  for (int64_t t = 0; t < nth; t++) {
    jobs[t] = (job){x, f64, V, rows, t, nth, o, ids, probs, M2_OK, -1, {0}};
    if (t > 0) started[t] = pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0;
    if (t > 0 && !started[t]) jobs[t].stride = 0; /* no thread: its rows run below */
  }
  run_job(&jobs[0]);
  for (int64_t t = 1; t < nth; t++) {
    if (started[t]) pthread_join(tid[t], NULL);
    else { jobs[t].stride = nth; run_job(&jobs[t]); }
  }
  free(host);
  const job *bad = NULL; /* the lowest failing row, as one thread would report it */
  for (int64_t t = 0; t < nth; t++)
    if (jobs[t].st != M2_OK && (!bad || jobs[t].bad_row < bad->bad_row)) bad = &jobs[t];
  if (bad) return m2_fail(bad->st, "%s", bad->msg);
  return M2_OK;
}

static m2_status check_logits(const m2_tensor *logits, const m2_sample_opts *o) {
  if (!logits) return m2_fail(M2_ERR_VALUE, "sample: logits are NULL");
  M2_TRY(m2_sample_check(o));
  if (!m2_dtype_is_float(logits->dtype))
    return m2_fail(M2_ERR_DTYPE, "sample: logits must be floating point, got %s", m2_dtype_name(logits->dtype));
  char s[96];
  if (logits->ndim < 1 || logits->shape[logits->ndim - 1] < 1)
    return m2_fail(M2_ERR_SHAPE, "sample: logits must be (..., V) with V >= 1, got %s",
                   m2_shape_str(logits, s, sizeof s));
  return M2_OK;
}

/* The device's sampler (backend sample_rows) for what it draws: temperature alone, contiguous F32 / BF16 logits.
 * -> M2_OK with ids filled; M2_ERR_UNSUPPORTED when it does not apply (the host samples); else the host's error for
 * the lowest bad row. */
static m2_status sample_on_device(const m2_tensor *logits, const m2_sample_opts *o, int64_t rows, int64_t V,
                                  int64_t *ids) {
  const m2_backend *be = logits->device.type == M2_CPU ? NULL : m2_backend_get(logits->device.type);
  if (!be || !be->sample_rows || (o->top_k > 0 && o->top_k < V) || o->top_p < 1 || !m2_is_contiguous(logits) ||
      (logits->dtype != M2_F32 && logits->dtype != M2_BF16) || rows == 0)
    return M2_ERR_UNSUPPORTED;
  double *u = malloc(sizeof(double) * (size_t)rows);
  int64_t *bad = malloc(sizeof(int64_t) * (size_t)rows);
  m2_status st = u && bad ? M2_OK : m2_fail(M2_ERR_OOM, "sample: cannot allocate %lld draws", (long long)rows);
  for (int64_t r = 0; st == M2_OK && r < rows; r++) { /* the host's draws: Philox (seed, stream + row, offset) */
    uint32_t x[4];
    m2_philox(o->seed, M2_SAMPLE_STREAM + (uint64_t)r, o->offset, x);
    u[r] = (double)(((uint64_t)x[0] << 21) ^ (x[1] >> 11)) * (1.0 / 9007199254740992.0);
  }
  if (st == M2_OK) st = be->sample_rows(logits, o->temperature, u, ids, bad);
  for (int64_t r = 0; st == M2_OK && r < rows; r++) {
    if (bad[r] == -2)
      st = m2_fail(M2_ERR_VALUE, "sample: logits row %lld (0-based) has no finite logit (all %lld are -inf)",
                   (long long)r, (long long)V);
    else if (bad[r] >= 0)
      st = m2_fail(M2_ERR_VALUE, "sample: logits row %lld (0-based), token %lld is %s: only finite logits and -inf (a "
                   "masked token) can be sampled", (long long)r, (long long)(bad[r] / 2), bad[r] % 2 ? "+inf" : "NaN");
  }
  free(u);
  free(bad);
  return st;
}

m2_tensor *m2_sample(const m2_tensor *logits, const m2_sample_opts *o) {
  if (check_logits(logits, o) != M2_OK) return NULL;
  int64_t V = logits->shape[logits->ndim - 1], rows = m2_numel(logits) / V;
  int64_t *ids = malloc((size_t)(rows > 0 ? rows : 1) * sizeof(int64_t));
  if (!ids) {
    m2_fail(M2_ERR_OOM, "sample: cannot allocate %lld ids", (long long)rows);
    return NULL;
  }
  m2_tensor *out = NULL;
  m2_status st = sample_on_device(logits, o, rows, V, ids);
  if (st == M2_ERR_UNSUPPORTED) st = sample_rows(logits, o, ids, NULL);
  if (st == M2_OK) out = m2_from_data(M2_I64, logits->device, logits->ndim - 1, logits->shape, ids);
  free(ids);
  return out;
}

m2_tensor *m2_sample_probs(const m2_tensor *logits, const m2_sample_opts *o) {
  if (check_logits(logits, o) != M2_OK) return NULL;
  m2_tensor *out = m2_empty(M2_F64, M2_DEV_CPU, logits->ndim, logits->shape);
  if (!out) return NULL;
  if (sample_rows(logits, o, NULL, m2_data(out)) != M2_OK) {
    m2_release(out);
    return NULL;
  }
  return out;
}
