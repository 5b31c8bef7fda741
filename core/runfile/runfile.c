/* runfile.c — run files: open (create / resume / read), the writer lock, root attributes and
 * status, close. The top of the run-file code: it uses the writer's state switches (runfile_writer.c),
 * the series (runfile_series.c) and the checkpoints (runfile_ckpt.c). See runfile.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "runfile_int.h"

#ifndef M2_VERSION
#define M2_VERSION "unknown"
#endif
#ifndef M2_GIT_REV
#define M2_GIT_REV "unknown"
#endif

static const char *const standard_attrs[] = {
    "format_version", "m2lab_version", "git_rev", "start_time", "start_unix",   "host",
    "device",         "script",        "config_json", "status", "resume_count", "last_resume",
    "script_path",    "script_sha256", "overrides_json", "num_params"};

bool m2_run_is_standard_attr(const char *key) {
  for (size_t i = 0; i < sizeof standard_attrs / sizeof *standard_attrs; i++)
    if (strcmp(key, standard_attrs[i]) == 0) return true;
  return false;
}

const char *m2_run_path(const m2_run *r) { return r ? r->path : ""; }
bool m2_run_writable(const m2_run *r) { return r && r->writer; }
void m2_run_set_keep_last(m2_run *r, int keep_last) {
  if (r) r->keep_last = keep_last > 0 ? keep_last : 0;
}

/* ---------------- the writer lock ---------------- */

static m2_status lock_acquire(m2_run *r, bool create, bool overwrite, bool *created) {
  *created = false;
  struct stat sb;
  bool existed = stat(r->path, &sb) == 0;
  if (existed && !S_ISREG(sb.st_mode)) return m2_fail(M2_ERR_IO, "%s: not a regular file", r->path);
  if (create && existed && !overwrite)
    return m2_fail(M2_ERR_IO, "%s: already exists (set opts.overwrite to replace it, or open it with M2_RUN_RESUME)",
                   r->path);
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0) | (create && !existed ? O_EXCL : 0);
  int fd = open(r->path, flags, 0644);
  if (fd < 0) {
    int e = errno;
    if (!create && e == ENOENT) return m2_fail(M2_ERR_IO, "%s: no such file", r->path);
    if (create) return m2_fail(M2_ERR_IO, "%s: cannot create: %s", r->path, strerror(e));
    return m2_fail(M2_ERR_IO, "%s: cannot open for writing: %s", r->path, strerror(e));
  }
  *created = create && !existed;
  /* a reader may hold the lock for a moment while it clears stale flags: wait a little */
  double deadline = m2_rf_monotonic() + 0.5;
  while (m2_rf_lock_fd(fd) != 0) {
    int e = errno;
    if ((e != EAGAIN && e != EACCES) || m2_rf_monotonic() > deadline) {
      m2_status st = e == EAGAIN || e == EACCES ? m2_rf_busy(r->path, fd)
                                                : m2_fail(M2_ERR_IO, "%s: cannot lock: %s", r->path, strerror(e));
      close(fd);
      if (*created) unlink(r->path);
      *created = false;
      return st;
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  r->lock_fd = fd;
  return M2_OK;
}

/* ---------------- open ---------------- */

static m2_status check_format(m2_run *r) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  htri_t ex;
  H5CHK(ex = H5Aexists(r->file, "format_version"));
  if (!ex) RF_FAIL(M2_ERR_IO, "%s: not an m2lab run file (no format_version attribute)", r->path);
  m2_value v;
  RF_TRY(m2_h5_attr_read(r->file, "format_version", &v, r->path, "/"));
  if (v.kind != M2_VAL_I64) {
    m2_value_free(&v);
    RF_FAIL(M2_ERR_IO, "%s: not an m2lab run file (format_version is not an integer)", r->path);
  }
  if (v.i > M2_RUNFILE_FORMAT || v.i < 1)
    RF_FAIL(M2_ERR_UNSUPPORTED, "%s: format_version %lld; this m2lab reads versions 1..%d", r->path, (long long)v.i,
            M2_RUNFILE_FORMAT);
fail:
  return st;
}

static m2_status read_start_unix(m2_run *r) {
  m2_value v;
  r->start_unix = m2_rf_now();
  if (m2_h5_attr_read(r->file, "start_unix", &v, r->path, "/") == M2_OK) {
    if (v.kind == M2_VAL_F64) r->start_unix = v.f;
    m2_value_free(&v);
  }
  m2_clear_error();
  return M2_OK;
}

/* A staged overwrite: take the writer lock of the existing file at r->path (it stays as it is until m2_run_replace),
 * and move r->path to "<path>.new", the file the new run is written to. */
static m2_status stage(m2_run *r) {
  int fd = open(r->path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return m2_fail(M2_ERR_IO, "%s: cannot open for writing: %s", r->path, strerror(errno));
  if (m2_rf_lock_fd(fd) != 0) {
    int e = errno;
    m2_status st = e == EAGAIN || e == EACCES ? m2_rf_busy(r->path, fd)
                                              : m2_fail(M2_ERR_IO, "%s: cannot lock: %s", r->path, strerror(e));
    close(fd);
    return st;
  }
  size_t n = strlen(r->path) + 5;
  char *staged = malloc(n);
  if (!staged) {
    close(fd);
    return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  }
  snprintf(staged, n, "%s.new", r->path);
  r->final_path = r->path;
  r->path = staged;
  r->old_lock_fd = fd;
  return M2_OK;
}

static m2_status open_create(m2_run *r, const m2_run_opts *o) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  bool created = false;
  hid_t g = -1;
  struct stat sb;
  if (o->staged && o->overwrite && stat(r->path, &sb) == 0 && S_ISREG(sb.st_mode)) {
    M2_TRY(stage(r)); /* (a stale "<path>.new" of a writer killed while staged is overwritten) */
    h5file = r->path;
  }
  RF_TRY(lock_acquire(r, true, o->overwrite || r->final_path, &created));
  if (r->final_path) created = true; /* a staged file is deleted on failure whether or not it was there */
  RF_TRY(m2_rf_journal_discard(r->path)); /* an overwritten file's journal is not this file's */
  H5CHK(r->fapl = m2_h5_fapl(true));
  H5CHK(r->file = H5Fcreate(r->path, H5F_ACC_TRUNC, H5P_DEFAULT, r->fapl));
  m2_rf_vfd_set_sync(r->file, !r->no_fsync);
  r->start_unix = m2_rf_now();
  char iso[64], host[256] = "";
  m2_rf_iso_time(r->start_unix, iso, sizeof iso);
  if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
  const m2_kv attrs[] = {
      {"format_version", m2_vi64(M2_RUNFILE_FORMAT)},
      {"m2lab_version", m2_vstr(M2_VERSION)},
      {"git_rev", m2_vstr(M2_GIT_REV)},
      {"start_time", m2_vstr(iso)},
      {"start_unix", m2_vf64(r->start_unix)},
      {"host", m2_vstr(host)},
      {"device", m2_vstr(o->device ? o->device : "cpu")},
      {"script", m2_vstr(o->script ? o->script : "")},
      {"config_json", m2_vstr(o->config_json ? o->config_json : "{}")},
      {"status", m2_vstr("running")},
      {"resume_count", m2_vi64(0)},
  };
  for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++)
    RF_TRY(m2_h5_attr_write(r->file, attrs[i].key, attrs[i].v, r->path, "/"));
  static const char *const groups[] = {"metrics", "eval", "checkpoints"};
  for (int i = 0; i < 3; i++) {
    h5obj = groups[i];
    H5CHK(g = H5Gcreate2(r->file, groups[i], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    m2_h5_close(&g);
  }
  h5obj = "/";
  H5CHK(m2_rf_h5flush(r->file));
  return M2_OK;
fail:
  m2_h5_close(&g);
  if (created) {
    m2_h5_close(&r->file);
    unlink(r->path);
  }
  return st;
}

static m2_status open_resume(m2_run *r, const m2_run_opts *o) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  bool created;
  RF_TRY(lock_acquire(r, false, false, &created));
  RF_TRY(m2_rf_journal_recover(r->path, NULL)); /* a writer killed inside a flush's commit */
  struct stat sb; /* (HDF5 would open an empty file for writing as a new one) */
  if (stat(r->path, &sb) == 0 && sb.st_size == 0) RF_FAIL(M2_ERR_IO, "%s: empty: a run killed before its first flush (nothing to read or resume; start it again with overwrite)", r->path);
  H5CHK(r->fapl = m2_h5_fapl(true));
  r->file = H5Fopen(r->path, H5F_ACC_RDWR, r->fapl);
  if (r->file < 0) {
    char msg[768];
    m2_h5_last_error(msg, sizeof msg);
    if (strstr(msg, "signature")) RF_FAIL(M2_ERR_IO, "%s: not an HDF5 file (file signature not found)", r->path);
    int io = m2_rf_io_errno;
    m2_rf_io_errno = 0;
    if (io) RF_FAIL(M2_ERR_IO, "%s: cannot open for writing: %s: %s", r->path, strerror(io), msg);
    RF_FAIL(M2_ERR_IO, "%s: cannot open for writing: %s", r->path, msg);
  }
  m2_rf_vfd_set_sync(r->file, !r->no_fsync);
  /* A writer killed in the middle of an exclusive-mode flush can leave the superblock's end-of-allocation
     behind data it had already written; new metadata would then be placed over it ("addr overflow" at the
     next flush). Move the EOA to at least the end of the file first, as h5clear --increment does. */
  H5CHK(H5Fincrement_filesize(r->file, 0));
  RF_TRY(check_format(r));
  RF_TRY(read_start_unix(r));
  RF_TRY(m2_rf_ckpt_cleanup(r));
  RF_TRY(m2_rf_series_load(r));
  m2_value v;
  int64_t count = 0;
  if (m2_h5_attr_read(r->file, "resume_count", &v, r->path, "/") == M2_OK) {
    if (v.kind == M2_VAL_I64) count = v.i;
    m2_value_free(&v);
  }
  m2_clear_error();
  char iso[64];
  m2_rf_iso_time(m2_rf_now(), iso, sizeof iso);
  RF_TRY(m2_h5_attr_write(r->file, "resume_count", m2_vi64(count + 1), r->path, "/"));
  RF_TRY(m2_h5_attr_write(r->file, "last_resume", m2_vstr(iso), r->path, "/"));
  RF_TRY(m2_h5_attr_write(r->file, "status", m2_vstr("running"), r->path, "/"));
  H5CHK(m2_rf_h5flush(r->file));
fail:
  return st;
}

/* Delete a staged file that never replaced its target (and its journal, if any), leaving the target as it was. */
static void discard_staged(m2_run *r) {
  if (!r->final_path) return;
  unlink(r->path);
  m2_rf_journal_discard(r->path);
  m2_clear_error();
}

static void run_free(m2_run *r) {
  if (!r) return;
  if (r->old_lock_fd >= 0) close(r->old_lock_fd);
  free(r->final_path);
  m2_rf_series_free_all(r);
  for (int i = 0; i < r->npending; i++) {
    free(r->pending[i].key);
    m2_value_free(&r->pending[i].v);
  }
  free(r->pending);
  m2_h5_close(&r->ckpt_group);
  m2_h5_close(&r->file);
  m2_h5_close(&r->fapl);
  if (r->lock_fd >= 0) close(r->lock_fd);
  free(r->path);
  free(r);
}

m2_run *m2_run_open(const char *path, const m2_run_opts *opts) {
  m2_h5_init();
  m2_run_opts defaults;
  memset(&defaults, 0, sizeof defaults);
  const m2_run_opts *o = opts ? opts : &defaults;
  if (!path || !path[0]) {
    m2_fail(M2_ERR_VALUE, "m2_run_open: empty path");
    return NULL;
  }
  if (o->mode != M2_RUN_READ && o->mode != M2_RUN_CREATE && o->mode != M2_RUN_RESUME) {
    m2_fail(M2_ERR_VALUE, "%s: m2_run_open: bad mode %d", path, (int)o->mode);
    return NULL;
  }
  m2_run *r = calloc(1, sizeof *r);
  if (!r || !(r->path = m2_rf_strdup(path))) {
    free(r);
    m2_fail(M2_ERR_OOM, "%s: out of memory", path);
    return NULL;
  }
  r->mode = o->mode;
  r->writer = o->mode != M2_RUN_READ;
  r->file = r->fapl = r->ckpt_group = -1;
  r->lock_fd = r->old_lock_fd = -1;
  r->flush_interval = o->flush_interval > 0 ? o->flush_interval : 5.0;
  r->keep_last = o->keep_last > 0 ? o->keep_last : 0;
  r->no_time = o->no_time;
  r->no_fsync = o->no_fsync;
  r->last_flush = m2_rf_monotonic();
  m2_status st;
  if (o->mode == M2_RUN_READ) {
    r->file = m2_h5_open_read(path, o->open_timeout, o->no_repair);
    st = r->file < 0 ? m2_errcode() : check_format(r);
    if (st == M2_OK) st = read_start_unix(r);
  } else if (o->mode == M2_RUN_CREATE) {
    st = open_create(r, o);
  } else {
    st = open_resume(r, o);
  }
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    run_free(r);
    m2_fail(st, "%s", msg);
    return NULL;
  }
  return r;
}

m2_status m2_run_close(m2_run *r) {
  if (!r) return M2_OK;
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  if (r->final_path) { /* a staged overwrite that was never confirmed: its file goes, the old one stays */
    m2_rf_series_close_ids(r);
    m2_h5_close(&r->ckpt_group);
    m2_h5_close(&r->file);
    H5Eclear2(H5E_DEFAULT);
    discard_staged(r);
    run_free(r);
    return M2_OK;
  }
  if (r->writer && !r->broken && r->file >= 0) {
    if (r->in_ckpt) {
      char msg[2048];
      m2_status s = m2_run_ckpt_abort(r);
      snprintf(msg, sizeof msg, "%s", m2_errmsg());
      if (s != M2_OK) st = m2_fail(s, "%s", msg);
    }
    if (!r->broken && r->file >= 0) {
      if (r->swmr && (m2_rf_series_need_exclusive(r) || r->npending > 0)) {
        m2_status s = m2_rf_to_exclusive(r);
        if (s != M2_OK && st == M2_OK) st = s;
      }
      if (!r->broken && r->file >= 0) {
        m2_status s = M2_OK;
        if (!r->swmr) s = m2_rf_write_pending_attrs(r);
        if (s == M2_OK) s = m2_rf_series_write_all(r);
        if (s != M2_OK && st == M2_OK) st = s;
      }
    }
  }
  m2_rf_series_close_ids(r);
  m2_h5_close(&r->ckpt_group);
  if (r->file >= 0) {
    hid_t f = r->file;
    r->file = -1;
    if ((r->writer ? m2_rf_h5close(f, r->swmr) : H5Fclose(f)) < 0) {
      m2_status s = m2_h5_fail(h5file, h5obj, "H5Fclose(file)", __FILE__, __LINE__);
      if (st == M2_OK) st = s;
    }
  }
  if (r->writer && st == M2_OK) st = m2_rf_fsync(r);
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    run_free(r);
    return m2_fail(st, "%s", msg);
  }
  run_free(r);
  return M2_OK;
}

m2_status m2_run_replace(m2_run *r) {
  M2_TRY(m2_rf_check_open(r, true, "replace"));
  if (!r->final_path) return M2_OK;
  if (r->in_ckpt)
    return m2_fail(M2_ERR_VALUE, "%s: replace: checkpoint %" PRId64 " is still open (commit or abort it first)",
                   r->path, r->ckpt_step);
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  /* closed around the rename, as for a switch to EXCLUSIVE: nothing of HDF5's refers to the old name after it */
  m2_rf_series_close_ids(r);
  hid_t f = r->file;
  r->file = -1;
  bool swmr = r->swmr;
  r->swmr = false;
  H5CHK(m2_rf_h5close(f, swmr));
  RF_TRY(m2_rf_journal_discard(r->final_path)); /* the old file's, if a writer of it was killed: not this file's */
  if (rename(r->path, r->final_path) != 0)
    RF_FAIL(M2_ERR_IO, "%s: cannot rename it to %s: %s", r->path, r->final_path, strerror(errno));
  free(r->path);
  r->path = r->final_path;
  r->final_path = NULL;
  h5file = r->path;
  close(r->old_lock_fd); /* the replaced file is gone: its lock with it */
  r->old_lock_fd = -1;
  if (!r->no_fsync) { /* the rename itself survives a power loss */
    char *dir = m2_rf_strdup(r->path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    int dfd = dir ? open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(dir);
  }
  H5CHK(r->file = H5Fopen(r->path, H5F_ACC_RDWR, r->fapl));
  m2_rf_vfd_set_sync(r->file, !r->no_fsync);
  return M2_OK;
fail:
  r->broken = true;
  return st;
}

/* ---------------- root attributes ---------------- */

static m2_status set_root_attr(m2_run *r, const char *key, m2_value v) {
  if (!r->swmr) return m2_h5_attr_write(r->file, key, v, r->path, "/");
  /* APPEND: remember it for the next EXCLUSIVE moment (a later set replaces an earlier one) */
  m2_value copy = v;
  if (v.kind == M2_VAL_STR && !(copy.s = m2_rf_strdup(v.s ? v.s : "")))
    return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  for (int i = 0; i < r->npending; i++)
    if (strcmp(r->pending[i].key, key) == 0) {
      m2_value_free(&r->pending[i].v);
      r->pending[i].v = copy;
      return M2_OK;
    }
  m2_rf_pending *p = realloc(r->pending, sizeof *p * (size_t)(r->npending + 1));
  char *k = m2_rf_strdup(key);
  if (!p || !k) {
    if (p) r->pending = p;
    free(k);
    m2_value_free(&copy);
    return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  }
  r->pending = p;
  r->pending[r->npending].key = k;
  r->pending[r->npending].v = copy;
  r->npending++;
  return M2_OK;
}

m2_status m2_run_set_attr(m2_run *r, const char *key, m2_value v) {
  M2_TRY(m2_rf_check_open(r, true, "set_attr"));
  if (!m2_rf_valid_name(key))
    return m2_fail(M2_ERR_VALUE, "%s: bad attribute name '%s' (1..255 characters, no '/', not starting with '.')",
                   r->path, key ? key : "(null)");
  if (strcmp(key, "format_version") == 0) return m2_fail(M2_ERR_VALUE, "%s: format_version is set by m2lab", r->path);
  if (strcmp(key, "status") == 0) return m2_fail(M2_ERR_VALUE, "%s: set the status with m2_run_set_status", r->path);
  if (v.kind != M2_VAL_I64 && v.kind != M2_VAL_F64 && v.kind != M2_VAL_BOOL && v.kind != M2_VAL_STR)
    return m2_fail(M2_ERR_VALUE, "%s: attribute '%s' has no value", r->path, key);
  return set_root_attr(r, key, v);
}

m2_status m2_run_set_config(m2_run *r, const m2_kv *kv, int n) {
  for (int i = 0; i < n; i++) M2_TRY(m2_run_set_attr(r, kv[i].key, kv[i].v));
  return M2_OK;
}

m2_status m2_run_set_status(m2_run *r, const char *status) {
  M2_TRY(m2_rf_check_open(r, true, "set_status"));
  if (!status || !status[0]) return m2_fail(M2_ERR_VALUE, "%s: empty status", r->path);
  return set_root_attr(r, "status", m2_vstr(status));
}

m2_status m2_run_get_attr(m2_run *r, const char *key, m2_value *out) {
  M2_TRY(m2_rf_check_open(r, false, "get_attr"));
  if (!key) return m2_fail(M2_ERR_VALUE, "%s: get_attr: key is NULL", r->path);
  for (int i = 0; i < r->npending; i++)
    if (strcmp(r->pending[i].key, key) == 0) {
      *out = r->pending[i].v;
      if (out->kind == M2_VAL_STR && !(out->s = m2_rf_strdup(out->s)))
        return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
      return M2_OK;
    }
  return m2_h5_attr_read(r->file, key, out, r->path, "/");
}

m2_status m2_run_attr_names(m2_run *r, bool config_only, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "attr_names"));
  m2_strlist all;
  M2_TRY(m2_h5_attr_names(r->file, &all, r->path, "/"));
  for (int i = 0; i < r->npending; i++) {
    bool have = false;
    for (int j = 0; j < all.n && !have; j++) have = strcmp(all.v[j], r->pending[i].key) == 0;
    if (!have && m2_strlist_push(&all, r->pending[i].key) != M2_OK) {
      m2_strlist_free(&all);
      return m2_errcode();
    }
  }
  m2_strlist_sort(&all);
  for (int i = 0; i < all.n; i++) {
    if (config_only && m2_run_is_standard_attr(all.v[i])) continue;
    if (m2_strlist_push(out, all.v[i]) != M2_OK) {
      m2_strlist_free(&all);
      m2_strlist_free(out);
      return m2_errcode();
    }
  }
  m2_strlist_free(&all);
  return M2_OK;
}
