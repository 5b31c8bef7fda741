/* runfile_int.h — internals shared by the run-file code (core/runfile/runfile*.c): the m2_run struct, the
 * HDF5 check macro, attribute/type helpers. Not part of the public API. */
#ifndef M2_RUNFILE_INT_H
#define M2_RUNFILE_INT_H
#include <hdf5.h>
#include "runfile.h"

/* Check an HDF5 call. On a negative result: st = M2_ERR_IO with the message
 * "<file>: <object>: <HDF5's innermost error message> [<call text> at <src>:<line>]" and
 * `goto fail`. The enclosing function declares `m2_status st`, names the file and the object
 * it works on in `const char *h5file, *h5obj` (updated as it moves between objects), and has a
 * `fail:` label that releases what it holds. */
#define H5CHK(expr)                                                          \
  do {                                                                       \
    if ((expr) < 0) {                                                        \
      st = m2_h5_fail(h5file, h5obj, #expr, __FILE__, __LINE__);             \
      goto fail;                                                             \
    }                                                                        \
  } while (0)

/* Fail with a non-HDF5 reason and jump to fail: */
#define RF_FAIL(code, ...)            \
  do {                                \
    st = m2_fail(code, __VA_ARGS__);  \
    goto fail;                        \
  } while (0)
#define RF_TRY(expr)                  \
  do {                                \
    st = (expr);                      \
    if (st != M2_OK) goto fail;       \
  } while (0)

m2_status m2_h5_fail(const char *file, const char *obj, const char *call, const char *src, int line);
/* The innermost message of HDF5's current error stack ("" when empty); clears the stack. */
void m2_h5_last_error(char *buf, size_t n);
/* Turn off HDF5's error printing (once per process) and initialise the library. */
void m2_h5_init(void);
/* Close any HDF5 id (file, group, dataset, dataspace, datatype, attribute, property list),
 * ignoring errors; sets *id = -1. */
void m2_h5_close(hid_t *id);

/* File access property list: latest format, HDF5 file locking off, strong close degree;
 * writers additionally get metadata-cache evictions off. */
hid_t m2_h5_fapl(bool writer);
/* Open for reading (SWMR read when possible), retrying while a writer is EXCLUSIVE and
 * clearing stale "open for write" flags (unless no_repair). Returns the file id or -1 with
 * m2_errmsg set. */
hid_t m2_h5_open_read(const char *path, double timeout, bool no_repair);
/* Take the writer lock on an open fd without waiting (fcntl result: 0, or -1 with errno). */
int m2_rf_lock_fd(int fd);
/* The pid of the m2lab writer holding the lock of the file open at fd (0 when unknown or none), and the error a
 * second writer gets: "<path>: the run file is being written by pid N (...)". */
long m2_rf_lock_holder(int fd);
m2_status m2_rf_busy(const char *path, int fd);

/* Types */
hid_t m2_h5_bool_type(void);  /* new enum {FALSE=0, TRUE=1} over int8 (close it) */
hid_t m2_h5_str_type(void);   /* new variable-length UTF-8 string type (close it) */
hid_t m2_h5_bf16_type(void);  /* new float type with bf16 bit fields (close it) */
/* File and memory types of a dtype (new ids, close them). */
m2_status m2_h5_dtype_types(m2_dtype dt, hid_t *file_type, hid_t *mem_type, const char *file, const char *obj);
/* The dtype of a stored type, or M2_ERR_DTYPE naming file/obj. */
m2_status m2_h5_dtype_of(hid_t type, m2_dtype *out, const char *file, const char *obj);

/* Attributes on an object (replaces an existing one of that name). */
m2_status m2_h5_attr_write(hid_t obj, const char *key, m2_value v, const char *file, const char *obj_name);
/* Read a scalar attribute as an m2_value (strings owned by out). M2_ERR_INDEX when absent. */
m2_status m2_h5_attr_read(hid_t obj, const char *key, m2_value *out, const char *file, const char *obj_name);
/* Sorted attribute names of an object. */
m2_status m2_h5_attr_names(hid_t obj, m2_strlist *out, const char *file, const char *obj_name);
/* Sorted names of the links in a group of the given object type (H5O_TYPE_GROUP/DATASET, or
 * -1 for any); an absent group gives an empty list. */
m2_status m2_h5_list(hid_t loc, const char *group, int obj_type, m2_strlist *out, const char *file);
m2_status m2_h5_exists(hid_t loc, const char *path, bool *out, const char *file);
/* The n variable-length strings of attribute a, read in a child process with a time limit (runfile_vlen.c: HDF5
 * 1.10.8 loops on or copies past a damaged global heap): out[i] malloc'd (NULL for a NULL string); an error names
 * file and where (the object and attribute). */
m2_status m2_h5_read_vlen_strs(hid_t a, int64_t n, char **out, const char *file, const char *where);
/* Tests only. The hook is called first in that child when set (the fuzz target silences the child's expected
 * crashes); m2_rf_strings_in_process = true reads strings in this process instead, unguarded (the fuzz target, on
 * inputs whose heaps it has checked: a fork per string read costs ~30x its input's time under ASan). */
extern void (*m2_rf_string_reader_hook)(void);
extern bool m2_rf_strings_in_process;

/* Names */
bool m2_rf_valid_name(const char *s);       /* an attribute/series name */
bool m2_rf_valid_tensor_path(const char *s);
m2_status m2_rf_check_group(const char *group); /* "metrics" or "eval" */
void m2_rf_iso_time(double unix_seconds, char *buf, size_t n);
double m2_rf_now(void);       /* wall clock, seconds since the epoch */
double m2_rf_monotonic(void);
int m2_rf_default_goal(const char *name);
char *m2_rf_strdup(const char *s);
m2_status m2_strlist_push(m2_strlist *l, const char *s);
void m2_strlist_sort(m2_strlist *l);
/* A checkpoint group name ("123") -> step; false for anything else (".tmp-5", "abc", "-1"). */
bool m2_rf_parse_step(const char *name, int64_t *step);

/* ---- the run handle ---- */
typedef struct m2_rf_series {
  char group[8];   /* "metrics" / "eval" */
  char *name;
  bool in_file;    /* datasets exist in the file */
  bool has_time;
  hid_t ds_step, ds_value, ds_time; /* open while the writer holds them, else -1 */
  int64_t nfile;   /* entries on disk */
  int64_t nbuf, cap;
  int64_t *step;   /* (nbuf) pending */
  double *value, *time;
  int goal;        /* 0 unset, +1 max, -1 min */
  bool goal_dirty; /* goal not yet written */
} m2_rf_series;

/* An array series being written (runfile_array_series.c): as m2_rf_series, with rows of `width` values. */
typedef struct m2_rf_array {
  char *name;
  int64_t width;
  bool in_file, has_time;
  hid_t ds_step, ds_value, ds_time; /* open while the writer holds them, else -1 */
  int64_t nfile, nbuf, cap;         /* rows on disk, pending, buffer capacity */
  int64_t *step;                    /* (nbuf) pending */
  double *value, *time;             /* (nbuf, width), (nbuf) */
} m2_rf_array;

typedef struct m2_rf_pending { char *key; m2_value v; } m2_rf_pending;

struct m2_run {
  char *path;
  m2_run_mode mode;
  bool writer;
  hid_t file;          /* -1 when not open (after a failed switch) */
  hid_t fapl;          /* writer's file access property list */
  bool swmr;           /* writer is APPEND (SWMR write) */
  bool broken;         /* a mode switch failed: the handle only closes */
  int lock_fd;         /* writer's OFD lock, -1 for readers */
  char *final_path;    /* a staged overwrite (m2_run_opts.staged): the file it replaces at m2_run_replace, else NULL */
  int old_lock_fd;     /* ... and the writer lock held on that file meanwhile (-1 when none) */
  double flush_interval, last_flush;
  int keep_last;
  bool no_time, no_fsync;
  double start_unix;
  int nseries, capseries;
  m2_rf_series *series;
  int npending;
  m2_rf_pending *pending;  /* root attributes to write at the next EXCLUSIVE moment */
  int64_t nbuffered;       /* total pending metric entries */
  /* the checkpoint being written */
  bool in_ckpt;
  int64_t ckpt_step;
  hid_t ckpt_group;
  char ckpt_tmp[64];       /* "/checkpoints/.tmp-<step>" */
  int narrays, caparrays;
  m2_rf_array *arrays;     /* array series (runfile_array_series.c) */
};

/* The run-file code in layers; each file calls only files listed before it:
 *   runfile_vfd.c      the writer's file driver and its journal
 *   runfile_h5.c       HDF5 helpers: errors, types, attributes, listing, names, the read-side open
 *   runfile_vlen.c     variable-length strings read in a child process (a damaged global heap cannot hang or crash us)
 *   runfile_series.c   the writer's series table and the series datasets
 *   runfile_array_series.c   array series (/arrays/<name>: rows of values), hooked into runfile_series.c's table
 *   runfile_writer.c   APPEND <-> EXCLUSIVE switches, journaled flushes, fsync, m2_run_flush
 *   runfile_metrics.c, runfile_ckpt.c   metric series and checkpoints (runfile.h's calls)
 *   runfile.c          open, close, root attributes
 *   runfile_inspect.c, runfile_sweep.c   a run's summary (m2_inspect); sweep index files */

/* Writer state switches (runfile_writer.c) */
m2_status m2_rf_to_exclusive(m2_run *r);
m2_status m2_rf_to_append(m2_run *r);   /* writes pending attrs & series, then H5Fstart_swmr_write */
m2_status m2_rf_write_pending_attrs(m2_run *r);
m2_status m2_rf_check_open(m2_run *r, bool need_writer, const char *what);
m2_status m2_rf_fsync(m2_run *r);
/* The writer's flushes outside SWMR mode: H5Fflush (global), H5Fstart_swmr_write (which flushes everything first)
 * and H5Fclose (swmr: whether the file is in SWMR mode, whose flushes need no journal). Each runs inside a journal
 * window of the writer's file driver (runfile_vfd.c), so that it reaches the file whole or not at all. While one
 * runs, *m2_rf_flush_window is 1 when the pointer is set: a test hook (test_runfile_crash). */
extern volatile int *m2_rf_flush_window;
herr_t m2_rf_h5flush(hid_t file);
herr_t m2_rf_h5start_swmr(hid_t file);
herr_t m2_rf_h5close(hid_t file, bool swmr);

/* runfile_vfd.c: the writer's file driver (sec2's POSIX I/O plus a journal for the windows above). After a write
 * fails (a full disk) it refuses every later write of that file, so the file stays as its last complete flush left
 * it. m2_rf_io_errno: the errno of the last failed write (m2_h5_fail names it and clears it); m2_rf_close_failed:
 * set when the flush of a close failed (m2_rf_h5close reports it). Tests: M2_RUNFILE_ENOSPC_AFTER=N (bytes). */
extern int m2_rf_io_errno, m2_rf_close_failed;
int m2_rf_vfd_error(hid_t file); /* the errno of the write that failed on this writer's file, 0 when none did */
hid_t m2_rf_vfd(void);
void m2_rf_journal_begin(hid_t file);
void m2_rf_vfd_set_sync(hid_t file, bool sync); /* default true; false for m2_run_opts.no_fsync */
herr_t m2_rf_journal_commit(hid_t file);
/* A complete "<path>-journal" left by a writer killed inside a commit is replayed onto the file (*replayed), an
 * incomplete one deleted. The caller holds the writer lock. */
m2_status m2_rf_journal_recover(const char *path, bool *replayed);
bool m2_rf_journal_exists(const char *path);
m2_status m2_rf_journal_discard(const char *path); /* a new file's: an older file's journal must not replay */
/* Series (runfile_series.c) */
m2_status m2_rf_series_load(m2_run *r);          /* resume: find existing series, trim to len(step) */
m2_status m2_rf_series_write_all(m2_run *r);     /* create missing series, write buffers */
bool m2_rf_series_need_exclusive(const m2_run *r);
void m2_rf_series_close_ids(m2_run *r);
void m2_rf_series_free_all(m2_run *r);
m2_rf_series *m2_rf_series_find(m2_run *r, const char *group, const char *name); /* NULL when not in the table */
/* The series group/name of the table, added when new; checks the group and the name. */
m2_status m2_rf_series_get(m2_run *r, const char *group, const char *name, m2_rf_series **out);
m2_status m2_rf_series_open_ids(m2_run *r, m2_rf_series *s); /* open its datasets (ds_*) that are not open */
/* Length of a 1-D dataset (M2_ERR_IO naming file/obj otherwise), and cutting one to n entries. */
m2_status m2_rf_ds_len(hid_t ds, int64_t *n, const char *file, const char *obj);
m2_status m2_rf_ds_trim(hid_t ds, int64_t n, const char *file, const char *obj);
/* Array series (runfile_array_series.c), called by the m2_rf_series_* functions above of the same names and by
 * m2_run_truncate: the scalar table's load / write_all / need_exclusive / close_ids / free_all cover both. */
m2_status m2_rf_arrays_load(m2_run *r);
m2_status m2_rf_arrays_write_all(m2_run *r);
bool m2_rf_arrays_need_exclusive(const m2_run *r);
void m2_rf_arrays_close_ids(m2_run *r);
void m2_rf_arrays_free_all(m2_run *r);
m2_status m2_rf_arrays_truncate(m2_run *r, int64_t after_step);
/* Checkpoints (runfile_ckpt.c) */
m2_status m2_rf_ckpt_cleanup(m2_run *r);         /* resume: delete incomplete checkpoints */
bool m2_rf_ckpt_is_complete(hid_t file, const char *name);
/* Why the checkpoint entry `name` (one of m2_run_ckpt_damaged's) cannot be read: the error, naming file and group. */
m2_status m2_rf_ckpt_why_damaged(m2_run *r, const char *name);
/* Incomplete checkpoints (".tmp-<step>", or a readable group without complete = 1), sorted: a resume deletes them. */
m2_status m2_rf_ckpt_junk(m2_run *r, m2_strlist *out);

#endif
