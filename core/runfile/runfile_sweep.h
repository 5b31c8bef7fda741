/* runfile_sweep.h — the sweep index file: one small HDF5 file per sweep (DIR/index.h5) that
 * links every member's run file and records each member's hyper-parameters and status.
 *
 * Layout (sweep_format_version 1)
 *   /                    attributes: sweep_format_version (int), kind = "m2lab sweep", name,
 *                        script (the members' experiment script path), sweep_source (the sweep
 *                        script's Lua text), created, updated (ISO 8601 UTC), keys (1-D string
 *                        array: the hyper-parameter names, in column order), members (1-D string
 *                        array: member names in sweep order).
 *   /members/<name>      HDF5 external link to "<file>":"/" — the member's run file, named
 *                        relative to the index's directory (h5py follows it: f["members/x/metrics"]).
 *   /info/<name>         a group whose attributes are the member's hyper-parameters (typed: int,
 *                        float, bool, string), plus file, status ("pending" / "running" / "done" /
 *                        "failed: <error>" / "interrupted") and exit_code (int, -1 before it ran).
 * The file is small and rewritten whole at every update: written as DIR/.index.h5.tmp-<pid>,
 * fsync'ed and renamed over the old one, so a reader (or a crash) only ever sees a complete
 * index. Only the sweep's own process writes it. */
#ifndef M2_RUNFILE_SWEEP_H
#define M2_RUNFILE_SWEEP_H
#include "runfile.h"

#define M2_SWEEP_FORMAT 1

typedef struct m2_sweep_member {
  char *name;      /* link name: 1..255 characters, no '/', not starting with '.' */
  char *file;      /* run file, relative to the index's directory (or absolute) */
  char *status;
  int64_t exit_code;
  int nh;
  m2_kv *hparams;  /* owned keys and values when read back */
} m2_sweep_member;

typedef struct m2_sweep_index {
  char *name, *script, *sweep_source, *created;
  int nkeys;
  char **keys;
  int n;
  m2_sweep_member *members;
} m2_sweep_index;

/* Write the whole index (atomically, see above). Borrowed strings. */
m2_status m2_sweep_index_write(const char *path, const m2_sweep_index *ix);
/* Read an index; free with m2_sweep_index_free. A run file or a foreign file: M2_ERR_IO
 * "PATH: not an m2lab sweep index (no sweep_format_version attribute)". */
m2_status m2_sweep_index_read(const char *path, m2_sweep_index *out);
void m2_sweep_index_free(m2_sweep_index *ix);
/* Does path hold a sweep index (false for anything else, errors included)? */
bool m2_is_sweep_index(const char *path);

/* Print a table of the members: name, status, hyper-parameters, steps, last loss and the last
 * value of up to four eval series (read from each member's run file; a member being written
 * at that moment shows "busy"). Reads only. */
m2_status m2_sweep_inspect(const char *path, FILE *out);
/* `m2lab inspect PATH`: a sweep index gets m2_sweep_inspect, anything else m2_inspect. */
m2_status m2_inspect_any(const char *path, FILE *out);

#endif
