/* profile.c — per-op time accounting (profile.h). */
#include "profile.h"
#include "backend.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROF_MAX 256 /* distinct op rows; more are counted under "(other)" */

static bool g_on;
static m2_profile_row g_rows[PROF_MAX];
static int g_n;
/* Calls nest (an op's backward may call ops; the optimizer step is timed as one row): only the outermost call is
 * timed, and the inner ones' time stays in its row. */
static int g_depth;
static m2_profile_cast_row g_cast[PROF_MAX]; /* the conversions by the op that caused them */
static int g_ncast;

bool m2_profile_enable(bool on) {
  bool old = g_on;
  g_on = on;
  return old;
}
bool m2_profile_on(void) { return g_on; }
void m2_profile_reset(void) {
  memset(g_rows, 0, sizeof g_rows);
  g_n = 0;
  g_depth = 0;
  memset(g_cast, 0, sizeof g_cast);
  g_ncast = 0;
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


double m2_profile_begin(m2_device dev) {
  if (g_depth++ > 0) return -1;
  sync_dev(dev);
  return now();
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

void m2_profile_end(const char *op, bool bwd, m2_device dev, double t0) {
  if (--g_depth > 0 || t0 < 0) return;
  sync_dev(dev);
  double dt = now() - t0;
  m2_profile_row *r = row_of(op ? op : "?");
  if (bwd) r->bwd_calls++, r->bwd_s += dt;
  else r->fwd_calls++, r->fwd_s += dt;
}

static int by_total(const void *a, const void *b) {
  const m2_profile_row *x = a, *y = b;
  double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
  return tx < ty ? 1 : tx > ty ? -1 : strcmp(x->op, y->op);
}

int m2_profile_rows(m2_profile_row *rows, int max) {
  m2_profile_row sorted[PROF_MAX];
  memcpy(sorted, g_rows, sizeof(m2_profile_row) * (size_t)g_n);
  qsort(sorted, (size_t)g_n, sizeof sorted[0], by_total);
  for (int i = 0; i < g_n && i < max; i++) rows[i] = sorted[i];
  return g_n;
}

void m2_profile_cast(const char *op, bool bwd, double bytes) {
  if (!g_on) return;
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
