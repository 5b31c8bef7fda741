/* profile_timeline_check.h — the profiler's timeline mode (core/profile.h, M2_PROFILE_TIMELINE) on one device,
 * shared by test_profile_timeline.c (the CPU: the host clock stands in for device marks) and
 * cuda_profile_timeline.c (a GPU: CUDA events on its stream). On fresh random inputs:
 *   - a forward and backward of matmul, tanh, mul and sum_all: each op's row has one forward and one backward call,
 *     device spans and host times > 0 (on the host clock the two are equal); a call nested in an outermost one is
 *     counted once, with the outer; nothing is counted once the mode is off;
 *   - the totals: the op calls on the timeline's device are the rows' calls, the spans the rows' device time, a host
 *     sleep of 20 ms between two op calls shows as >= 15 ms of gaps, in the row of the call after it (the rows' gaps
 *     sum to the totals'), and spans + gaps = window (the marks telescope);
 *   - on a GPU, an op call on CPU tensors in between gets its row but stays out of the totals;
 *   - more calls than the mark pool holds: the pool is flushed (twice) and the totals still add up;
 *   - m2_profile_reset forgets rows and totals; sync mode (m2_profile_enable) fills no timeline column. */
#ifndef M2_PROFILE_TIMELINE_CHECK_H
#define M2_PROFILE_TIMELINE_CHECK_H
#include <string.h>
#include <time.h>
#include "check.h"

/* fresh N(0, 1) values (r, c) made on the host, copied to dev */
static m2_tensor *tl_rand(uint64_t seed, m2_device dev, int64_t r, int64_t c, bool grad) {
  int64_t shape[2] = {r, c};
  m2_rng g = m2_rng_make(seed, 5);
  m2_tensor *h = m2_randn(&g, M2_F32, M2_DEV_CPU, 2, shape);
  m2_tensor *t = h ? m2_clone_raw(h, M2_F32, dev) : NULL;
  m2_release(h);
  if (t && grad) m2_requires_grad_(t, true);
  return t;
}

static const m2_profile_row *tl_row(const m2_profile_row *rows, int n, const char *op) {
  for (int i = 0; i < n; i++)
    if (strcmp(rows[i].op, op) == 0) return &rows[i];
  return NULL;
}

static void tl_sleep(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* spans + gaps against the window: equal up to eps (the host clock: double rounding; device marks: the float ms of
 * each elapsed time), never more */
static void tl_check_sums(const m2_profile_totals *t, bool host_clock, const char *what) {
  const double eps = host_clock ? 1e-9 + 1e-9 * t->window_s : 1e-5 + 1e-4 * t->window_s;
  CHECK(t->spans_s > 0 && t->gaps_s >= 0 && t->window_s > 0, "%s: spans %.9f s, gaps %.9f s, window %.9f s", what,
        t->spans_s, t->gaps_s, t->window_s);
  CHECK(t->spans_s + t->gaps_s <= t->window_s + eps, "%s: spans %.9f + gaps %.9f s > window %.9f s", what, t->spans_s,
        t->gaps_s, t->window_s);
  CHECK(fabs(t->spans_s + t->gaps_s - t->window_s) <= eps, "%s: spans %.9f + gaps %.9f s != window %.9f s", what,
        t->spans_s, t->gaps_s, t->window_s);
  if (host_clock) CHECK(t->host_s == t->spans_s, "%s: host clock: host %.9f s != spans %.9f s", what, t->host_s,
                        t->spans_s);
}

static void timeline_checks(m2_device dev) {
  const bool host_clock = dev.type == M2_CPU;
  static const char *const ops[] = {"matmul", "tanh", "mul", "sum_all"};
  m2_profile_row rows[64];
  m2_profile_totals tot;
  m2_tensor *x = tl_rand(11, dev, 64, 96, false), *w = tl_rand(12, dev, 96, 80, true);
  m2_tensor *u = tl_rand(13, dev, 64, 80, false), *xc = tl_rand(14, M2_DEV_CPU, 16, 16, false);
  CHECK(x && w && u && xc, "inputs");

  m2_profile_reset();
  CHECK(m2_profile_set_mode(M2_PROFILE_TIMELINE) == M2_PROFILE_OFF, "set_mode returns the mode before (off)");
  CHECK(m2_profile_mode() == M2_PROFILE_TIMELINE && m2_profile_on(), "timeline mode on");
  m2_tensor *y = m2_matmul(x, w, false, false);
  m2_tensor *t = m2_tanh(y);
  tl_sleep(0.02); /* the device has nothing to do for 20 ms: a gap between tanh and mul */
  m2_tensor *cpu = host_clock ? NULL : m2_exp(xc); /* on a GPU: a call on the host clock, in its row only */
  m2_tensor *m = m2_mul(t, u);
  m2_tensor *s = m2_sum_all(m);
  CHECK(s && m2_backward(s, NULL) == M2_OK, "backward");
  const double t0 = m2_profile_begin(dev); /* an outermost call holding a sigmoid call */
  m2_tensor *g = m2_sigmoid(x);
  m2_profile_end("(outer)", false, dev, t0);
  CHECK(m2_profile_set_mode(M2_PROFILE_OFF) == M2_PROFILE_TIMELINE, "set_mode returns the mode before (timeline)");
  CHECK(!m2_profile_on(), "off");
  m2_tensor *g2 = m2_sigmoid(x); /* off: not counted */

  int n = m2_profile_rows(rows, 64);
  CHECK(n > 0 && n <= 64, "%d rows", n);
  if (n > 64) n = 64;
  for (int i = 0; i < 4; i++) {
    const m2_profile_row *r = tl_row(rows, n, ops[i]);
    CHECK(r && r->fwd_calls == 1 && r->bwd_calls == 1, "%s: %ld forward, %ld backward calls (want 1, 1)", ops[i],
          r ? r->fwd_calls : -1, r ? r->bwd_calls : -1);
    if (!r) continue;
    CHECK(r->fwd_s > 0 && r->bwd_s > 0 && r->fwd_gpu_s > 0 && r->bwd_gpu_s > 0,
          "%s: host %.9f / %.9f s, device %.9f / %.9f s: all > 0", ops[i], r->fwd_s, r->bwd_s, r->fwd_gpu_s,
          r->bwd_gpu_s);
  }
  const m2_profile_row *outer = tl_row(rows, n, "(outer)"), *ex = tl_row(rows, n, "exp");
  CHECK(outer && outer->fwd_calls == 1 && outer->fwd_gpu_s > 0, "the outer call is one row with a span");
  CHECK(!tl_row(rows, n, "sigmoid"), "the nested sigmoid call (and the one after off) has no row");
  CHECK(host_clock || (ex && ex->fwd_calls == 1 && ex->fwd_gpu_s == ex->fwd_s),
        "the CPU call has its row, its span on the host clock");
  long calls = 0;
  double gpu = 0, host = 0;
  for (int i = 0; i < n; i++) {
    if (host_clock)
      CHECK(rows[i].fwd_gpu_s == rows[i].fwd_s && rows[i].bwd_gpu_s == rows[i].bwd_s, "%s: host clock: span != host",
            rows[i].op);
    if (i > 0)
      CHECK(rows[i].fwd_gpu_s + rows[i].bwd_gpu_s <= rows[i - 1].fwd_gpu_s + rows[i - 1].bwd_gpu_s,
            "rows sorted by device time (%s after %s)", rows[i].op, rows[i - 1].op);
    if (&rows[i] == ex) continue;
    calls += rows[i].fwd_calls + rows[i].bwd_calls;
    gpu += rows[i].fwd_gpu_s + rows[i].bwd_gpu_s;
    host += rows[i].fwd_s + rows[i].bwd_s;
  }
  m2_profile_timeline(&tot);
  printf("  %s: %ld calls, window %.3f ms, spans %.3f ms, gaps %.3f ms, host %.3f ms\n", host_clock ? "cpu" : "gpu",
         tot.calls, tot.window_s * 1e3, tot.spans_s * 1e3, tot.gaps_s * 1e3, tot.host_s * 1e3);
  CHECK(tot.dev.type == dev.type && tot.dev.index == dev.index, "the timeline's device");
  CHECK(tot.calls == calls && calls >= 9, "totals: %ld calls, the rows %ld (>= 9)", tot.calls, calls);
  CHECK(tot.flushes == 0, "%ld flushes", tot.flushes);
  CHECK_CLOSE(tot.spans_s, gpu, 1e-12, 1e-9, "spans = the rows' device time");
  CHECK_CLOSE(tot.host_s, host, 1e-12, 1e-9, "host = the rows' host time");
  CHECK(tot.gaps_s >= 0.015, "the 20 ms sleep shows in the gaps: %.6f s", tot.gaps_s);
  const m2_profile_row *mr = tl_row(rows, n, "mul");
  double row_gaps = 0;
  for (int i = 0; i < n; i++) row_gaps += &rows[i] == ex ? 0 : rows[i].gap_s;
  CHECK(mr && mr->gap_s >= 0.015, "the 20 ms sleep shows before mul, the call after it: %.6f s", mr ? mr->gap_s : -1);
  CHECK_CLOSE(row_gaps, tot.gaps_s, 1e-12, 1e-9, "the rows' gaps sum to the totals' gaps");
  tl_check_sums(&tot, host_clock, "step");
  m2_profile_timeline(&tot); /* read again: nothing new to resolve, the same totals */
  CHECK(tot.calls == calls, "totals read twice: %ld calls", tot.calls);
  m2_release(y), m2_release(t), m2_release(cpu), m2_release(m), m2_release(s), m2_release(g), m2_release(g2);

  /* more calls than the pool holds: flushed twice, the totals still add up */
  const long many = 2L * M2_PROFILE_TIMELINE_CALLS + 100;
  m2_tensor *a = tl_rand(15, dev, 1, 3, false);
  m2_profile_reset();
  m2_profile_set_mode(M2_PROFILE_TIMELINE);
  for (long i = 0; i < many; i++) m2_release(m2_add_scalar(a, 1.0));
  m2_profile_set_mode(M2_PROFILE_OFF);
  m2_profile_timeline(&tot);
  n = m2_profile_rows(rows, 64);
  const m2_profile_row *ra = tl_row(rows, n, "add_scalar");
  CHECK(ra && ra->fwd_calls == many, "add_scalar: %ld calls (want %ld)", ra ? ra->fwd_calls : -1, many);
  CHECK(tot.calls == many && tot.flushes == 2, "pool: %ld calls, %ld flushes (want %ld, 2)", tot.calls, tot.flushes,
        many);
  if (ra) CHECK_CLOSE(tot.spans_s, ra->fwd_gpu_s, 1e-12, 1e-9, "pool: spans = the row's device time");
  tl_check_sums(&tot, host_clock, "pool");
  m2_release(a);

  /* reset forgets */
  m2_profile_reset();
  m2_profile_timeline(&tot);
  CHECK(m2_profile_rows(rows, 64) == 0, "reset kept rows");
  CHECK(tot.calls == 0 && tot.window_s == 0 && tot.spans_s == 0 && tot.gaps_s == 0 && tot.host_s == 0,
        "reset kept totals");

  /* sync mode, as before: no timeline column, no totals */
  CHECK(!m2_profile_enable(true) && m2_profile_mode() == M2_PROFILE_SYNC, "enable: sync mode");
  m2_tensor *y2 = m2_matmul(x, w, false, false);
  CHECK(m2_profile_enable(false) && m2_profile_mode() == M2_PROFILE_OFF, "enable(false): off");
  n = m2_profile_rows(rows, 64);
  const m2_profile_row *rm = tl_row(rows, n, "matmul");
  CHECK(n == 1 && rm && rm->fwd_calls == 1 && rm->fwd_s > 0 && rm->fwd_gpu_s == 0 && rm->bwd_gpu_s == 0,
        "sync mode: one matmul row with wall time, no device span");
  m2_profile_timeline(&tot);
  CHECK(tot.calls == 0, "sync mode: %ld timeline calls", tot.calls);
  CHECK(m2_profile_set_mode(7) == -1 && m2_profile_mode() == M2_PROFILE_OFF, "an unknown mode is refused");
  m2_profile_reset();
  m2_release(y2), m2_release(x), m2_release(w), m2_release(u), m2_release(xc);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
}
#endif
