/* profile.c — per-op time accounting (profile.h): sync mode and timeline mode. */
#include "profile.h"
#include "backend.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROF_MAX 256 /* distinct op rows; more are counted under "(other)" */

static int g_mode; /* M2_PROFILE_OFF / _SYNC / _TIMELINE */
static m2_profile_row g_rows[PROF_MAX];
static int g_n;
/* Calls nest (an op's backward may call ops; the optimizer step is timed as one row): only the outermost call is
 * timed, and the inner ones' time stays in its row. */
static int g_depth;
static m2_devtype g_mem_t;   /* the outermost call's device type and the bytes held there when it began */
static size_t g_mem0;
static m2_profile_cast_row g_cast[PROF_MAX]; /* the conversions by the op that caused them */
static int g_ncast;

/* ---- timeline mode: the outermost calls since the last flush, each with its two mark slots ----
 * Call i of the buffer owns slots 2i (begin) and 2i + 1 (end), so the pool has 2 * TL_CALLS slots per device; a
 * full buffer is resolved and reused from slot 0 (tl_flush). */
#define TL_CALLS M2_PROFILE_TIMELINE_CALLS
#define TL_DEVS 64 /* device indices whose mark slots are made up front (tl_begin) */
typedef struct tl_call {
  int row;       /* index in g_rows */
  bool bwd;
  m2_device dev;
  int s0, s1;    /* begin / end mark slots; -1: no device marks (the host clock stands in) */
  double h0, h1; /* host clock at begin / end (seconds) */
} tl_call;
static tl_call *g_calls; /* TL_CALLS, allocated when the timeline mode is first set */
static int g_ncalls;     /* calls in the buffer */
static int g_nres;       /* of which resolved (their spans added to rows and totals) */
static bool g_open;      /* an outermost call began in timeline mode and has not ended: it is g_calls[g_ncalls] */
static bool g_grown[M2_NUM_DEVTYPES][TL_DEVS];
/* Totals per clock: 0 the host clock (calls without marks), 1 the timeline's device (the first marked device). */
typedef struct tl_clock {
  int first, last;           /* the buffer's first and latest resolved call on this clock; -1: none yet */
  double closed_s, open_s;   /* window of the buffers flushed before / of this buffer as far as resolved */
  double spans_s, gaps_s, host_s;
  long calls;
} tl_clock;
static tl_clock g_clk[2];
static m2_device g_tl_dev;
static bool g_tl_has_dev;
static long g_flushes;

static void tl_clear(void) {
  g_ncalls = g_nres = 0;
  g_open = false;
  for (int k = 0; k < 2; k++) {
    memset(&g_clk[k], 0, sizeof g_clk[k]);
    g_clk[k].first = g_clk[k].last = -1;
  }
  g_tl_dev = M2_DEV_CPU;
  g_tl_has_dev = false;
  g_flushes = 0;
}

bool m2_profile_enable(bool on) {
  bool old = g_mode != M2_PROFILE_OFF;
  g_mode = on ? M2_PROFILE_SYNC : M2_PROFILE_OFF;
  return old;
}
bool m2_profile_on(void) { return g_mode != M2_PROFILE_OFF; }
int m2_profile_mode(void) { return g_mode; }
int m2_profile_set_mode(int mode) {
  if (mode != M2_PROFILE_OFF && mode != M2_PROFILE_SYNC && mode != M2_PROFILE_TIMELINE) return -1;
  if (mode == M2_PROFILE_TIMELINE && !g_calls) {
    g_calls = malloc(sizeof(tl_call) * TL_CALLS); /* once; no allocation per op call */
    if (!g_calls) return -1;
    tl_clear();
  }
  int old = g_mode;
  g_mode = mode;
  return old;
}
void m2_profile_reset(void) {
  memset(g_rows, 0, sizeof g_rows);
  g_n = 0;
  g_depth = 0;
  memset(g_cast, 0, sizeof g_cast);
  g_ncast = 0;
  tl_clear();
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sync_dev(m2_device dev) {
  if (dev.type == M2_CPU) return;
  const m2_backend *b = m2_backend_get(dev.type);
  if (b && b->synchronize) b->synchronize(dev.index); /* a failure shows at the op's own next call */
}

static m2_profile_row *row_of(const char *op) {
  for (int i = 0; i < g_n; i++)
    if (g_rows[i].op == op || strcmp(g_rows[i].op, op) == 0) return &g_rows[i];
  if (g_n < PROF_MAX - 1) {
    g_rows[g_n].op = op;
    return &g_rows[g_n++];
  }
  m2_profile_row *r = &g_rows[PROF_MAX - 1];
  r->op = "(other)";
  g_n = PROF_MAX;
  return r;
}

/* The outermost call's memory high point into its row (both modes). */
static void mem_row(m2_profile_row *r) {
  size_t peak = m2_mem_window_peak(g_mem_t);
  if ((double)peak > r->mem_peak_b) r->mem_peak_b = (double)peak;
  double rise = peak > g_mem0 ? (double)(peak - g_mem0) : 0;
  if (rise > r->mem_rise_b) r->mem_rise_b = rise;
}

static const m2_backend *marker(m2_device dev) {
  if (dev.type == M2_CPU) return NULL;
  const m2_backend *b = m2_backend_get(dev.type);
  return b && b->mark && b->mark_ms ? b : NULL;
}

/* The time from call a's begin (or end) mark to call b's begin (or end) mark, both on one clock (a's device when
 * both have marks, else the host clock); false when the backend fails. */
static bool tl_between(const tl_call *a, bool a_end, const tl_call *b, bool b_end, double *s) {
  if (a->s0 < 0 || b->s0 < 0) {
    *s = (b_end ? b->h1 : b->h0) - (a_end ? a->h1 : a->h0);
    return true;
  }
  const m2_backend *m = marker(a->dev);
  float ms = 0;
  if (!m || m->mark_ms(a->dev.index, a_end ? a->s1 : a->s0, b_end ? b->s1 : b->s0, &ms) != M2_OK) return false;
  *s = 1e-3 * (double)ms;
  return true;
}

/* Add the spans of the calls not yet resolved to their rows and to their clock's totals. The first mark_ms waits
 * for the device to reach that call's end mark, the later ones for theirs: at most one wait for the device's
 * stream to drain up to the last mark. */
static void tl_resolve(void) {
  for (; g_nres < g_ncalls; g_nres++) {
    tl_call *c = &g_calls[g_nres];
    double span = c->h1 - c->h0;
    int k = 0;
    if (c->s0 >= 0) {
      if (!tl_between(c, false, c, true, &span)) {
        span = c->h1 - c->h0, k = -1; /* the backend failed: the row gets the host's span, the totals nothing */
      } else if (!g_tl_has_dev) {
        g_tl_dev = c->dev, g_tl_has_dev = true, k = 1;
      } else {
        k = c->dev.type == g_tl_dev.type && c->dev.index == g_tl_dev.index ? 1 : -1;
      }
    }
    m2_profile_row *r = &g_rows[c->row];
    if (c->bwd) r->bwd_gpu_s += span;
    else r->fwd_gpu_s += span;
    if (k < 0) continue;
    tl_clock *t = &g_clk[k];
    double gap = 0;
    if (t->last < 0) t->first = g_nres;
    else if (tl_between(&g_calls[t->last], true, c, false, &gap) && gap > 0) t->gaps_s += gap, r->gap_s += gap;
    t->last = g_nres;
    t->calls++;
    t->spans_s += span;
    t->host_s += c->h1 - c->h0;
  }
  for (int k = 0; k < 2; k++) {
    tl_clock *t = &g_clk[k];
    double w;
    if (t->last >= 0 && tl_between(&g_calls[t->first], false, &g_calls[t->last], true, &w)) t->open_s = w;
  }
}

/* The buffer is full: resolve it (this waits for the device: a flush synchronises mid-step, and the time across it
 * is left out of the window and the gaps), then reuse the buffer and its mark slots from the start. */
static void tl_flush(void) {
  tl_resolve();
  for (int k = 0; k < 2; k++) {
    tl_clock *t = &g_clk[k];
    t->closed_s += t->open_s;
    t->open_s = 0;
    t->first = t->last = -1;
  }
  g_ncalls = g_nres = 0;
  g_flushes++;
}

/* Timeline begin: mark dev's stream (before the host clock, so the host's time excludes the mark's own cost). */
static double tl_begin(m2_device dev) {
  if (g_ncalls == TL_CALLS) tl_flush();
  tl_call *c = &g_calls[g_ncalls];
  c->dev = dev;
  c->s0 = c->s1 = -1;
  const m2_backend *b = marker(dev);
  if (b) {
    if (dev.index >= 0 && dev.index < TL_DEVS && !g_grown[dev.type][dev.index]) {
      /* the first mark on this device: have the backend make every slot of the pool now (recording into the last
       * one), before this call's begin mark, so no slot is made inside the measured window */
      g_grown[dev.type][dev.index] = true;
      b->mark(dev.index, 2 * TL_CALLS - 1);
    }
    if (b->mark(dev.index, 2 * g_ncalls) == M2_OK) c->s0 = 2 * g_ncalls;
  }
  g_open = true;
  c->h0 = now();
  return c->h0;
}

/* Timeline end: the host clock, then dev's end mark; the call joins the buffer, its span resolved later. */
static void tl_end(const char *op, bool bwd) {
  tl_call *c = &g_calls[g_ncalls];
  g_open = false;
  c->h1 = now();
  if (c->s0 >= 0) {
    const m2_backend *b = marker(c->dev);
    if (b && b->mark(c->dev.index, 2 * g_ncalls + 1) == M2_OK) c->s1 = 2 * g_ncalls + 1;
    else c->s0 = -1; /* no end mark: the host clock stands in for this call */
  }
  m2_profile_row *r = row_of(op ? op : "?");
  mem_row(r);
  c->row = (int)(r - g_rows);
  c->bwd = bwd;
  if (bwd) r->bwd_calls++, r->bwd_s += c->h1 - c->h0;
  else r->fwd_calls++, r->fwd_s += c->h1 - c->h0;
  g_ncalls++;
}

double m2_profile_begin(m2_device dev) {
  if (g_depth++ > 0) return -1;
  g_mem_t = dev.type;
  g_mem0 = m2_mem_current(dev.type);
  m2_mem_window_start(dev.type);
  if (g_mode == M2_PROFILE_TIMELINE && g_calls) return tl_begin(dev);
  sync_dev(dev);
  return now();
}

void m2_profile_end(const char *op, bool bwd, m2_device dev, double t0) {
  if (--g_depth > 0 || t0 < 0) return;
  if (g_open) {
    tl_end(op, bwd);
    return;
  }
  sync_dev(dev);
  double dt = now() - t0;
  m2_profile_row *r = row_of(op ? op : "?");
  mem_row(r);
  if (bwd) r->bwd_calls++, r->bwd_s += dt;
  else r->fwd_calls++, r->fwd_s += dt;
}

/* Device spans first (0 in sync mode, where the order is the wall time's as before), then host / sync time. */
static int by_total(const void *a, const void *b) {
  const m2_profile_row *x = a, *y = b;
  double gx = x->fwd_gpu_s + x->bwd_gpu_s, gy = y->fwd_gpu_s + y->bwd_gpu_s;
  if (gx != gy) return gx < gy ? 1 : -1;
  double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
  return tx < ty ? 1 : tx > ty ? -1 : strcmp(x->op, y->op);
}

int m2_profile_rows(m2_profile_row *rows, int max) {
  if (g_calls) tl_resolve();
  m2_profile_row sorted[PROF_MAX];
  memcpy(sorted, g_rows, sizeof(m2_profile_row) * (size_t)g_n);
  qsort(sorted, (size_t)g_n, sizeof sorted[0], by_total);
  for (int i = 0; i < g_n && i < max; i++) rows[i] = sorted[i];
  return g_n;
}

void m2_profile_timeline(m2_profile_totals *out) {
  memset(out, 0, sizeof *out);
  out->dev = M2_DEV_CPU;
  if (!g_calls) return;
  tl_resolve();
  const tl_clock *t = &g_clk[g_tl_has_dev ? 1 : 0];
  if (g_tl_has_dev) out->dev = g_tl_dev;
  out->calls = t->calls;
  out->flushes = g_flushes;
  out->window_s = t->closed_s + t->open_s;
  out->spans_s = t->spans_s;
  out->gaps_s = t->gaps_s;
  out->host_s = t->host_s;
}

void m2_profile_cast(const char *op, bool bwd, double bytes) {
  if (g_mode == M2_PROFILE_OFF) return;
  if (!op) op = "?";
  m2_profile_cast_row *r = NULL;
  for (int i = 0; i < g_ncast && !r; i++)
    if (g_cast[i].op == op || strcmp(g_cast[i].op, op) == 0) r = &g_cast[i];
  if (!r && g_ncast < PROF_MAX - 1) r = &g_cast[g_ncast++], r->op = op;
  if (!r) { /* the last row gathers the rest */
    r = &g_cast[PROF_MAX - 1];
    r->op = "(other)";
    g_ncast = PROF_MAX;
  }
  if (bwd) r->bwd_calls++, r->bwd_bytes += bytes;
  else r->fwd_calls++, r->fwd_bytes += bytes;
}

static int by_calls(const void *a, const void *b) {
  const m2_profile_cast_row *x = a, *y = b;
  long cx = x->fwd_calls + x->bwd_calls, cy = y->fwd_calls + y->bwd_calls;
  return cx < cy ? 1 : cx > cy ? -1 : strcmp(x->op, y->op);
}

int m2_profile_cast_rows(m2_profile_cast_row *rows, int max) {
  m2_profile_cast_row sorted[PROF_MAX];
  memcpy(sorted, g_cast, sizeof(m2_profile_cast_row) * (size_t)g_ncast);
  qsort(sorted, (size_t)g_ncast, sizeof sorted[0], by_calls);
  for (int i = 0; i < g_ncast && i < max; i++) rows[i] = sorted[i];
  return g_ncast;
}
