/* runfile.h — HDF5 run files: a run's metadata, metric series, eval series and checkpoints
 * in one file that h5py/pandas can read while the run writes it (SWMR).
 *
 * Layout (format_version 1)
 *   /                       root attributes: format_version (int), m2lab_version, git_rev,
 *                           start_time (ISO 8601 UTC), start_unix (seconds), host, device,
 *                           script (the experiment's Lua source), config_json, status
 *                           ("running" / "done" / "failed: msg" / "interrupted"), resume_count,
 *                           and every top-level config key as its own attribute.
 *   /arrays/<name>/         step (n), value (n, width), time (n): array series (below).
 *   /metrics/<name>/        step (int64), value (float64), time (float64, seconds since
 *   /eval/<name>/           start_unix; absent when opts.no_time): 1-D chunked extendible
 *                           datasets of equal length; optional attribute goal = "min" | "max".
 *   /checkpoints/<step>/    tensors by path ("params/blocks.1.mlp.up.weight",
 *                           "optim/exp_avg/..."; groups created as needed) and attributes
 *                           step, complete = 1, time, plus the caller's (data cursor, rng
 *                           offsets, json blobs).
 * Strings are variable-length UTF-8, booleans h5py's enum {FALSE, TRUE}, bf16 tensors an
 * HDF5 float type with bf16's bit fields (h5py reads them as float32, exactly).
 *
 * Live readers (SWMR) and the writer's two states
 *   HDF5 1.10's single-writer/multiple-reader mode lets readers (h5py
 *   File(path, "r", swmr=True, libver="latest"), or m2_run_open in M2_RUN_READ mode) open the
 *   file while one writer appends to it. But a writer in SWMR mode may only extend and write
 *   datasets that already exist: it may not create or delete groups, datasets or attributes,
 *   nor rewrite attributes, and HDF5 has no call to leave SWMR mode. So the writer is in one
 *   of two states:
 *   APPEND (SWMR write): a flush extends /<group>/<name>/value, then time, then step, and
 *      flushes each (H5Dflush) before touching the next. A reader takes n = len(step); then
 *      value[:n] and time[:n] are already on disk.
 *   EXCLUSIVE (plain read-write): the writer closes the file and reopens it without SWMR to
 *      create new metric series, write attributes and the status, and write checkpoints; it
 *      returns to APPEND with H5Fstart_swmr_write. Meanwhile the superblock marks the file
 *      "open for write" and readers' opens fail; readers retry (m2_run_open for
 *      opts.open_timeout seconds, notebooks/m2lab_runs.py likewise). A reader that keeps the
 *      file open sees appended data through refresh() (H5Drefresh) for a while, but HDF5 1.10's
 *      SWMR assumes the writer never leaves SWMR mode: after some EXCLUSIVE switches a
 *      long-lived reader's view stops growing (stale, never wrong, in our tests), and it never
 *      sees new series or checkpoints. Readers should reopen the file to poll (m2_run_open /
 *      load_run per poll; a poll of a small run takes milliseconds).
 *   A new or resumed run stays EXCLUSIVE from open until its first flush, so the attributes
 *   set right after open cost no extra switch. A metric name logged for the first time, an
 *   attribute or the status set later cost one switch at the next flush (automatic every
 *   opts.flush_interval seconds, on m2_run_flush and on close).
 *
 * Crash safety
 *   - The writer turns off metadata-cache evictions: between two flushes nothing reaches the
 *     disk except raw data written into space the on-disk metadata does not reference yet,
 *     so a killed writer leaves the file as its last flush left it. SWMR flushes are ordered
 *     so the file stays valid even when the writer dies inside one. A flush outside SWMR mode
 *     (a few per checkpoint, one when a new series appears, the close) is not ordered, so the
 *     writer's file driver (runfile_vfd.c: POSIX I/O like sec2, the files stay plain HDF5)
 *     journals it: its writes are kept in memory, written to "<file>-journal" with a checksum,
 *     fsync'ed, applied, fsync'ed, and the journal deleted; the next open replays a complete
 *     journal and drops an incomplete one. A new file is journaled from its creation to its
 *     first flush, so a writer killed before that leaves an empty file, which opening and
 *     resuming report as "a run killed before its first flush". Measured with test_runfile_crash run 64 times at
 *     once on a loaded machine: 512 random kills, 289 of them inside such a flush (213 left a
 *     journal), no bad file; before the journal, 3 of 69 such kills damaged the file ("addr
 *     overflow" on resume, and HDF5 1.10 crashed listing the group).
 *   - A checkpoint is complete or absent: its tensors and attributes (complete = 1 last) are
 *     written under /checkpoints/.tmp-<step>, flushed and fsync'ed, renamed with H5Lmove to
 *     /checkpoints/<step>, flushed and fsync'ed again. Readers list only groups whose name is
 *     a decimal step and whose complete attribute is 1; a resuming writer deletes the others. One whose
 *     group or complete attribute cannot be read is damaged (m2_run_ckpt_damaged): listed apart, reported by m2_inspect, skipped
 *     by a resume (which falls back to the newest checkpoint that reads back whole), deleted when pruning passes it.
 *   - A writer that dies leaves the superblock's status flags set, and HDF5 then refuses every
 *     open ("file is already open for write (may use <h5clear file> ...)"). An m2lab writer
 *     holds an OFD lock (fcntl F_OFD_SETLK on one byte far beyond the data) for as long as it
 *     has the file open, so flags set while no m2lab writer holds that lock are stale: a
 *     resuming writer clears them (what `h5clear -s` does) and so does a reader unless
 *     opts.no_repair. The same lock keeps a second m2lab writer off the file. HDF5's own file
 *     locking is off for m2lab: a reader holding the file open would otherwise block the
 *     writer's switch to EXCLUSIVE.
 *   - Integrity: every tensor of a checkpoint is stored with the Fletcher-32 checksum filter
 *     and the latest-format metadata (object headers, with numeric attributes, and indexes) is
 *     checksummed, so a damaged checkpoint reads as an error, never as wrong numbers
 *     (m2_run_ckpt_verify checks a whole one). Not covered: metric datasets (a live reader
 *     would trip over a chunk being rewritten) and string attributes, which live in HDF5's
 *     global heap. Readers retry a metadata read whose checksum fails 26 times (67 ms in all)
 *     before reporting it: HDF5's default of 100 waits for hours on a damaged file.
 *   - Space: HDF5 1.10 never shrinks a file, and space freed by deleting a checkpoint is reused
 *     only within the writer session that deleted it. keep_last pruning therefore deletes the
 *     oldest checkpoints at the start of the next checkpoint (keeping keep_last - 1 of them, at
 *     least one), flushes, and then writes the new one into the freed space: the file stays
 *     near keep_last checkpoints in size. `h5repack` compacts a finished run.
 *
 * Errors: every HDF5 call is checked (H5CHK in runfile_int.h; cleanup after an error is best
 * effort); its message (HDF5's own error stack printing is turned off) goes into m2_errmsg()
 * as "<file>: <object>: <HDF5 message> [<call> at <src>:<line>]", code M2_ERR_IO. Bad input (a missing, truncated, damaged or foreign file, an unwritable
 * path, a missing checkpoint or tensor) gives an m2_status, never a crash.
 * An m2_run is not thread-safe. Do not fork while an m2_run is open. In one process, read a
 * run that is being written through its writer handle, not through a second m2_run_open. */
#ifndef M2_RUNFILE_H
#define M2_RUNFILE_H
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "../tensor.h" /* the only part of the core the run files use */
#include "runfile_types.h"

#define M2_RUNFILE_FORMAT 1


typedef enum m2_run_mode {
  M2_RUN_READ = 0, /* read-only; opens while a writer is live (SWMR) */
  M2_RUN_CREATE,   /* a new run file */
  M2_RUN_RESUME,   /* an existing run file, for writing: deletes incomplete checkpoints */
} m2_run_mode;

/* Options for m2_run_open; a zeroed struct (or NULL) gives the defaults. */
typedef struct m2_run_opts {
  m2_run_mode mode;
  bool overwrite;         /* CREATE: replace an existing file (default: refuse) */
  bool staged;            /* CREATE with overwrite of an existing file: write the new run beside it, as
                             "<path>.new", and leave the existing file untouched (and locked against other
                             writers) until m2_run_replace renames the new one over it; a close before that
                             deletes the new file. A caller replaces once the run has proven itself (m2.train:
                             after its first step), so a bad setting found late never costs the old run. */
  double flush_interval;  /* seconds between automatic metric flushes (0 -> 5) */
  double open_timeout;    /* READ: seconds to keep retrying while a writer is EXCLUSIVE (0 -> 10) */
  int keep_last;          /* checkpoints kept by m2_run_ckpt_commit (0 = all) */
  bool no_time;           /* CREATE/RESUME: new series get no time dataset */
  bool no_fsync;          /* skip fsync at checkpoint commits (tests on slow disks) */
  bool no_repair;         /* READ: fail on stale "open for write" flags instead of clearing them */
  /* CREATE: root attributes written at open (NULL -> default). RESUME ignores them. */
  const char *device;      /* "cuda:0" (default "cpu") */
  const char *script;      /* the experiment script's Lua source text (default "") */
  const char *config_json; /* the resolved config as JSON (default "{}") */
} m2_run_opts;

/* Open a run file. Returns NULL on failure with the reason in m2_errmsg(), e.g.
 * "x.h5: not an m2lab run file (no format_version attribute)". */
m2_run *m2_run_open(const char *path, const m2_run_opts *opts);
/* Is an m2lab writer holding the file at path (its writer lock)? False when the file is absent
 * or unreadable. A sweep asks this before touching a member's file. */
bool m2_run_writer_alive(const char *path);
/* The pid of the m2lab writer holding the file at path (0 when none holds it, or its pid is unknown). */
long m2_run_writer_pid(const char *path);
/* Flush what is buffered, write pending attributes and the status, and close. Always frees
 * `r` (NULL is allowed); returns the first error met on the way. An open checkpoint
 * (begin without commit) is aborted. The status is left as set (a run closed while its status
 * still says "running" reads as such: set "done", "failed: ..." or "interrupted" first). */
m2_status m2_run_close(m2_run *r);
/* A staged overwrite (opts.staged): rename the new file over the one it replaces (atomically, then the directory is
 * fsync'ed) and release that file's lock. The handle then reads and writes the file at its final path. No-op when
 * the run is not staged (or already replaced); refused while a checkpoint is open. */
m2_status m2_run_replace(m2_run *r);
/* The file the handle reads and writes ("<path>.new" while a staged overwrite waits for m2_run_replace). */
const char *m2_run_path(const m2_run *r);
bool m2_run_writable(const m2_run *r);
/* Change the pruning policy of a writer (0 = keep all). */
void m2_run_set_keep_last(m2_run *r, int keep_last);

/* ---- attribute values (root attributes, checkpoint attributes) ---- */

/* ---- root attributes ----
 * Set a root attribute (a top-level config key, or one of the standard ones such as
 * "device"). Names: 1..255 characters, no '/', not starting with '.'. "format_version" is refused; "status" must
 * go through m2_run_set_status. While APPEND the write waits for the next flush or close. */
m2_status m2_run_set_attr(m2_run *r, const char *key, m2_value v);
/* Convenience: set many config keys at once. */
m2_status m2_run_set_config(m2_run *r, const m2_kv *kv, int n);
m2_status m2_run_set_status(m2_run *r, const char *status);
/* Read a root attribute (M2_ERR_INDEX naming the file and key when it is absent). */
m2_status m2_run_get_attr(m2_run *r, const char *key, m2_value *out);
/* Names of the root attributes, sorted; config_only skips the standard ones listed above. */
m2_status m2_run_attr_names(m2_run *r, bool config_only, m2_strlist *out);
bool m2_run_is_standard_attr(const char *key);

/* ---- metric and eval series ----
 * group is "metrics" or "eval"; name 1..255 characters, no '/', not starting with '.'.
 * Values are buffered in memory and flushed every opts.flush_interval seconds (checked at
 * each log), on m2_run_flush and on close. */
m2_status m2_run_log(m2_run *r, const char *group, const char *name, int64_t step, double value);
/* Which direction is better ("min" or "max"), used for "best" by m2_run_series_stats and
 * m2_inspect. Without it: "max" for names containing acc, per_s, throughput, mfu; else "min". */
m2_status m2_run_set_goal(m2_run *r, const char *group, const char *name, const char *goal);
/* Write everything buffered and pending so readers see it (may switch to EXCLUSIVE and back). */
m2_status m2_run_flush(m2_run *r);
/* For resuming: drop every logged entry with step > after_step (on disk and buffered), so a
 * run resumed from its checkpoint at after_step does not log those steps twice. Assumes each
 * series' steps are non-decreasing (entries after the first step > after_step are dropped). */
m2_status m2_run_truncate(m2_run *r, int64_t after_step);

/* Read a whole series. On a writer, flushes first. A series that does not exist: M2_ERR_INDEX. */
m2_status m2_run_read_series(m2_run *r, const char *group, const char *name, m2_series *out);
/* Series names of a group, sorted (empty when the group does not exist yet). */
m2_status m2_run_list_series(m2_run *r, const char *group, m2_strlist *out);

m2_status m2_run_series_stats(m2_run *r, const char *group, const char *name, m2_series_stats *out);

/* ---- array series ----
 * /arrays/<name>/: step (n) int64, value (n, width) float64 (h5py: a plain 2-D dataset), time (n) float64 (absent
 * when opts.no_time); one row per logged step, e.g. a MoE layer's per-expert load. Buffered, flushed, resumed (a
 * partly written flush trimmed) and truncated (m2_run_truncate) as the scalar series are; name as for series. A
 * series' width is set by its first row (1..2^20) and a row of another width is refused (M2_ERR_VALUE).
 * (core/runfile/runfile_array_series.c) */
typedef struct m2_array_series {
  int64_t n, width;
  int64_t *step;  /* (n) */
  double *value;  /* (n, width), row-major */
  double *time;   /* (n), or NULL when the series has no time dataset */
} m2_array_series;
void m2_array_series_free(m2_array_series *s);
m2_status m2_run_log_array(m2_run *r, const char *name, int64_t step, const double *values, int64_t width);
/* Read a whole array series (on a writer, flushes first); M2_ERR_INDEX when it does not exist. */
m2_status m2_run_read_array(m2_run *r, const char *name, m2_array_series *out);
/* Array series names, sorted (empty when there are none). */
m2_status m2_run_list_arrays(m2_run *r, m2_strlist *out);

/* ---- checkpoints: writing ----
 * begin -> put (each tensor) / set (each attribute) -> commit, or abort. Tensors may live on
 * any device and have any strides; they are copied to the host. Paths: '/'-separated
 * components of [A-Za-z0-9_.@:+=-] (no empty, "." or ".." component), e.g.
 * "params/blocks.1.mlp.up.weight". Attribute names "step", "complete" and "time" are set by
 * m2lab. Committing a step that already has a checkpoint replaces it. Pruning: see top. */
m2_status m2_run_ckpt_begin(m2_run *r, int64_t step);
m2_status m2_run_ckpt_put(m2_run *r, const char *path, const m2_tensor *t);
m2_status m2_run_ckpt_set(m2_run *r, const char *key, m2_value v);
m2_status m2_run_ckpt_commit(m2_run *r);
m2_status m2_run_ckpt_abort(m2_run *r);
/* All of the above in one call. */
m2_status m2_run_ckpt_write(m2_run *r, int64_t step, const m2_ckpt_tensor *tensors, int nt,
                            const m2_kv *attrs, int na);

/* ---- checkpoints: reading (complete checkpoints only) ---- */
m2_status m2_run_ckpt_list(m2_run *r, m2_i64list *out);     /* ascending steps */
m2_status m2_run_ckpt_latest(m2_run *r, int64_t *step);     /* M2_ERR_INDEX when there is none */
m2_status m2_run_ckpt_tensors(m2_run *r, int64_t step, m2_strlist *out); /* sorted paths */
/* Shape and dtype of a stored tensor (shape needs M2_MAX_DIMS entries). */
m2_status m2_run_ckpt_info(m2_run *r, int64_t step, const char *path, m2_dtype *dtype, int *ndim,
                           int64_t *shape);
/* A new contiguous CPU tensor with the stored dtype and shape (NULL on failure). */
m2_tensor *m2_run_ckpt_read(m2_run *r, int64_t step, const char *path);
/* Read into an existing tensor of the same shape (any device; the dtype is converted). */
m2_status m2_run_ckpt_read_into(m2_run *r, int64_t step, const char *path, m2_tensor *dst);
m2_status m2_run_ckpt_get(m2_run *r, int64_t step, const char *key, m2_value *out);
/* Damaged checkpoints, which m2_run_ckpt_list skips: sorted names under /checkpoints ("30": a decimal name whose group
 * or complete attribute cannot be read). A writer
 * deletes one when pruning passes it or when it writes that step again (a damaged checkpoint is unlinked without
 * reading what is under it: its space is lost); until then `m2lab inspect` reports it. Damage inside a listed
 * checkpoint (a tensor's data or header) shows when it is read: m2_run_ckpt_verify. */
m2_status m2_run_ckpt_damaged(m2_run *r, m2_strlist *out);
/* Read every tensor (checking the checksums) and attribute of a checkpoint and discard them: M2_OK when the
 * whole checkpoint reads back, else the first error. A resume falls back to an older one. */
m2_status m2_run_ckpt_verify(m2_run *r, int64_t step);
m2_status m2_run_ckpt_attr_names(m2_run *r, int64_t step, m2_strlist *out);

/* ---- inspection ----
 * Print a human summary of a run file to `out`: version, status (and whether a writer holds
 * the file), start time, host, device, script size, config keys, every metric and eval
 * series (count, last step, last value, best), checkpoints (steps, tensors and bytes of the
 * latest, its attributes). Reads only: nothing from the file is executed or interpreted
 * beyond printing (control characters are escaped). Prints what it can of a damaged file and
 * returns the first error. */
m2_status m2_inspect(const char *path, FILE *out);

#endif
