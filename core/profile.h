/* profile.h — where a step's time goes, op by op, in one of two modes (off by default: one branch per op call).
 *
 * Sync mode (m2_profile_enable(true)): every op's forward (m2_call_run) and backward (m2_backward) synchronises its
 * device before and after and adds the wall time between to the op's row. The times are therefore each op's own
 * (device work plus host work, no overlap) and the profiled steps run slower than unprofiled ones; the shares are
 * what to read.
 *
 * Timeline mode (m2_profile_set_mode(M2_PROFILE_TIMELINE)): nothing is synchronised per op. At the outermost op
 * call's begin and end the device's stream gets a timestamp (a backend mark, m2_backend.mark) and the host clock is
 * read; the marks are resolved later (when rows or totals are read, or when the mark pool is full). A row then adds
 * the op's span on the device's stream (its *_gpu_s columns: from the begin mark to the end mark) and the host's
 * time to issue its work (fwd_s / bwd_s). The totals (m2_profile_timeline) say how long the device's stream sat
 * between op spans: the GPU's idle share of a step, the bound on what a CUDA graph could save. Tensors on a device
 * without marks (the CPU) use the host clock for both. */
#ifndef M2_PROFILE_H
#define M2_PROFILE_H
#include <stdbool.h>
#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_profile_row {
  const char *op;  /* the op row's name (static) */
  long fwd_calls, bwd_calls;
  double fwd_s, bwd_s;         /* sync mode: wall time, device synchronised; timeline mode: host issue time */
  double fwd_gpu_s, bwd_gpu_s; /* timeline mode: the calls' spans on the device's stream (0 in sync mode) */
  double gap_s;                /* timeline mode: the gaps that ended at this row's calls (the device idle, or on work
                                * outside op calls, just before they began; summed into the totals' gaps_s) */
  double mem_peak_b;           /* both modes: the most bytes held on the calls' device type (m2_mem_current) at any
                                * moment of any of the row's calls: the row with the largest one held the step's peak */
  double mem_rise_b;           /* the most any one call raised that above what was held when it began (its outputs,
                                * workspace and temporaries at their high point) */
} m2_profile_row;

enum { M2_PROFILE_OFF = 0, M2_PROFILE_SYNC = 1, M2_PROFILE_TIMELINE = 2 };
/* The timeline's buffer: outermost calls (two mark slots each) kept until resolved; a full buffer is resolved and
 * reused (a flush: it waits for the device mid-run). */
#define M2_PROFILE_TIMELINE_CALLS 8192

/* Turn profiling on (sync mode) or off; returns whether it was on (in either mode) before. */
bool m2_profile_enable(bool on);
/* On in either mode (the dispatchers' test). */
bool m2_profile_on(void);
/* Set the mode (M2_PROFILE_OFF / _SYNC / _TIMELINE); returns the mode before, or -1 (nothing changed) for an
 * unknown mode or when the timeline's call buffer cannot be allocated. */
int m2_profile_set_mode(int mode);
int m2_profile_mode(void);
/* Forget every row, the timeline's pending calls and its totals. */
void m2_profile_reset(void);
/* Copy up to max rows, largest total first (device spans, then host / sync time); returns how many rows exist.
 * Resolves the timeline's pending marks first (this waits for the device). */
int m2_profile_rows(m2_profile_row *rows, int max);

/* The timeline mode's totals since the last reset, over the outermost op calls on the timeline's device: the first
 * device whose calls were marked (their spans on its stream), or the host clock when no call was marked (CPU
 * tensors only; then spans are host times). Calls on other devices count in their rows only.
 *   window_s: first start mark to last end mark, summed over the pool's flushes (each flush synchronises
 *             mid-step; the time across it is left out, of the window and of the gaps)
 *   spans_s:  the sum of the calls' spans (a nested call's time is its outermost call's)
 *   gaps_s:   the sum of end(i-1) -> start(i) between consecutive calls (a negative one as 0): the device waiting
 *             for the host to issue work, or running work outside any op call (host <-> device copies, gradient
 *             zeroing, allocator frees); spans_s + gaps_s = window_s up to the marks' resolution
 *   host_s:   the sum of the calls' host issue times (begin to end on the host clock)
 * Resolves the pending marks first (this waits for the device). */
typedef struct m2_profile_totals {
  m2_device dev;  /* the timeline's device; M2_DEV_CPU: the host clock */
  long calls;     /* op calls on it */
  long flushes;   /* times the mark pool was full and resolved mid-run */
  double window_s, spans_s, gaps_s, host_s;
} m2_profile_totals;
void m2_profile_timeline(m2_profile_totals *out);

/* The dispatcher's bf16 conversions (core/op_cast.c: the f32 copies of a call's bf16 inputs, the roundings of its
 * outputs, and their backwards) counted by the op whose call needed them, while profiling is on: their time is in
 * the "to_dtype" row above; this table says which op caused them. bytes: those of the copies made (the converted
 * tensors), in the forward and in the backward. */
typedef struct m2_profile_cast_row {
  const char *op; /* the op row's name (static) */
  long fwd_calls, bwd_calls;
  double fwd_bytes, bwd_bytes;
} m2_profile_cast_row;
/* Count one conversion of `bytes` made for a call of op (the dispatcher's hook; a no-op while profiling is off). */
void m2_profile_cast(const char *op, bool bwd, double bytes);
/* Copy up to max rows, most conversions first; returns how many rows exist. Forgotten by m2_profile_reset. */
int m2_profile_cast_rows(m2_profile_cast_row *rows, int max);

/* Hooks for the dispatchers (op calls, backward nodes, the optimizer step, gradient clipping): begin returns the
 * start time (sync mode: after synchronising dev; timeline mode: after marking dev's stream), end synchronises dev
 * and adds the time since t0 to op's forward or backward column (timeline mode: marks dev's stream and keeps the
 * call to resolve later). Every begin needs its end; nested calls are not timed (their time stays with the
 * outermost). */
double m2_profile_begin(m2_device dev);
void m2_profile_end(const char *op, bool bwd, m2_device dev, double t0);

#ifdef __cplusplus
}
#endif
#endif
