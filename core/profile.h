/* profile.h — where a step's time goes, op by op: with profiling on, every op's forward (m2_call_run) and backward
 * (m2_backward) synchronises its device before and after and adds the wall time between to the op's row. The times
 * are therefore each op's own (device work plus host work, no overlap) and the profiled steps run slower than
 * unprofiled ones; the shares are what to read. Off by default (one branch per op call). */
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
  double fwd_s, bwd_s;
} m2_profile_row;

/* Turn profiling on or off; returns the setting before. */
bool m2_profile_enable(bool on);
bool m2_profile_on(void);
/* Forget every row. */
void m2_profile_reset(void);
/* Copy up to max rows, largest total time first; returns how many rows exist. */
int m2_profile_rows(m2_profile_row *rows, int max);

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
 * start time (after synchronising dev), end synchronises dev and adds the time since t0 to op's forward or backward
 * column. Every begin needs its end; nested calls are not timed (their time stays with the outermost). */
double m2_profile_begin(m2_device dev);
void m2_profile_end(const char *op, bool bwd, m2_device dev, double t0);

#ifdef __cplusplus
}
#endif
#endif
