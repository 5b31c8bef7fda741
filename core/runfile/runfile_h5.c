/* runfile_h5.c — HDF5 plumbing for run files: error capture, property lists, the reader's
 * open-with-retry, types, attributes, link listing, names and small list helpers. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "runfile_int.h"

/* The byte an m2lab writer locks (F_OFD_SETLK): far beyond any data, so it never meets a
 * lock that HDF5 or another tool places on the file's contents. */
#define M2_RF_LOCK_BYTE ((off_t)1 << 62)

/* ---------------- errors ---------------- */

void m2_h5_init(void) {
  static bool done = false;
  if (done) return;
  done = true;
  H5open();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* messages go into m2_errmsg instead */
}

typedef struct walk_ctx { char *buf; size_t n; } walk_ctx;

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *ud) {
  walk_ctx *c = ud;
  if (e->desc && e->desc[0]) snprintf(c->buf, c->n, "%s", e->desc); /* keep the innermost */
  return 0;
}

void m2_h5_last_error(char *buf, size_t n) {
  if (!n) return;
  buf[0] = 0;
  walk_ctx c = {buf, n};
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &c);
  H5Eclear2(H5E_DEFAULT);
}

m2_status m2_h5_fail(const char *file, const char *obj, const char *call, const char *src, int line) {
  char msg[768];
  m2_h5_last_error(msg, sizeof msg);
  const char *base = strrchr(src, '/');
  base = base ? base + 1 : src;
  int io = m2_rf_io_errno; /* the system's reason, when a write of the writer's file driver failed under it */
  m2_rf_io_errno = 0;
  if (io)
    return m2_fail(M2_ERR_IO, "%s: %s: %s: %s%s [%s at %s:%d]", file ? file : "?", obj && obj[0] ? obj : "/",
                   strerror(io), msg[0] ? msg : "HDF5 call failed",
                   io == ENOSPC ? " (the disk is full: the file keeps what its last complete flush wrote)" : "", call,
                   base, line);
  return m2_fail(M2_ERR_IO, "%s: %s: %s [%s at %s:%d]", file ? file : "?", obj && obj[0] ? obj : "/",
                 msg[0] ? msg : "HDF5 call failed", call, base, line);
}

void m2_h5_close(hid_t *id) {
  if (!id || *id < 0) return;
  switch (H5Iget_type(*id)) {
    case H5I_FILE: H5Fclose(*id); break;
    case H5I_GROUP: H5Gclose(*id); break;
    case H5I_DATASET: H5Dclose(*id); break;
    case H5I_DATASPACE: H5Sclose(*id); break;
    case H5I_DATATYPE: H5Tclose(*id); break;
    case H5I_ATTR: H5Aclose(*id); break;
    case H5I_GENPROP_LST: H5Pclose(*id); break;
    default: break;
  }
  H5Eclear2(H5E_DEFAULT);
  *id = -1;
}

/* ---------------- property lists, opening for reading ---------------- */

hid_t m2_h5_fapl(bool writer) {
  m2_status st = M2_OK;
  const char *h5file = "(file access properties)", *h5obj = "";
  hid_t p = -1;
  H5CHK(p = H5Pcreate(H5P_FILE_ACCESS));
  H5CHK(H5Pset_libver_bounds(p, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST));
  H5CHK(H5Pset_file_locking(p, 0, 1));
  H5CHK(H5Pset_fclose_degree(p, H5F_CLOSE_STRONG));
  /* A SWMR reader re-reads metadata whose checksum fails (it may have caught a write half
   * done), sleeping 1, 2, 4, ... ns in between: HDF5's default of 100 attempts would wait for
   * centuries on a damaged file. 26 attempts wait 67 ms in all. */
  H5CHK(H5Pset_metadata_read_attempts(p, 26));
  if (writer) {
    H5AC_cache_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.version = H5AC__CURR_CACHE_CONFIG_VERSION;
    H5CHK(H5Pget_mdc_config(p, &cfg));
    cfg.evictions_enabled = 0; /* nothing reaches the disk between flushes (see runfile.h) */
    cfg.incr_mode = H5C_incr__off;
    cfg.flash_incr_mode = H5C_flash_incr__off;
    cfg.decr_mode = H5C_decr__off;
    H5CHK(H5Pset_mdc_config(p, &cfg));
    H5CHK(H5Pset_driver(p, m2_rf_vfd(), NULL)); /* sec2's I/O plus journaled flushes (runfile_vfd.c) */
    /* The writer holds the m2lab lock, so any "open for write" flags are left by a dead
     * writer: clear them on open (HDF5's private property, the one h5clear -s sets). */
    hbool_t clear = 1;
    if (H5Pset(p, "clear_status_flags", &clear) < 0) H5Eclear2(H5E_DEFAULT);
  }
  return p;
fail:
  (void)st;
  m2_h5_close(&p);
  return -1;
}

static int lock_probe(const char *path, bool take, int *fd_out) {
  /* returns 1 if an m2lab writer holds the lock, 0 if free (and, when take, now ours), -1 on error */
  int fd = open(path, (take ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return -1;
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = M2_RF_LOCK_BYTE;
  fl.l_len = 1;
  if (take) {
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
      *fd_out = fd;
      return 0;
    }
    int busy = errno == EAGAIN || errno == EACCES;
    close(fd);
    return busy ? 1 : -1;
  }
  int r = fcntl(fd, F_OFD_GETLK, &fl);
  close(fd);
  if (r != 0) return -1;
  return fl.l_type == F_UNLCK ? 0 : 1;
}

bool m2_run_writer_alive(const char *path) { return lock_probe(path, false, NULL) == 1; }

/* The writer's pid, for the message another writer gets: an OFD lock has no owner pid (F_OFD_GETLK reports -1), so
 * the writer also locks the byte M2_RF_PID_BASE + pid, and whoever finds the file locked reads the pid off the
 * conflicting lock's offset. */
#define M2_RF_PID_BASE (M2_RF_LOCK_BYTE + 16)
#define M2_RF_PID_SPAN ((off_t)1 << 23) /* > Linux's largest pid_max, 2^22 */

/* Exposed to runfile.c: take the writer lock on an open fd (non-blocking), and the pid byte. */
int m2_rf_lock_fd(int fd) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = M2_RF_LOCK_BYTE;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &fl) != 0) return -1;
  pid_t pid = getpid();
  if (pid > 0 && pid < M2_RF_PID_SPAN) {
    int e = errno;
    fl.l_start = M2_RF_PID_BASE + pid;
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0) errno = e; /* the name in a message only: not needed */
  }
  return 0;
}

long m2_rf_lock_holder(int fd) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = M2_RF_PID_BASE;
  fl.l_len = M2_RF_PID_SPAN;
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0 || fl.l_type == F_UNLCK) return 0;
  return (long)(fl.l_start - M2_RF_PID_BASE);
}

long m2_run_writer_pid(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  long pid = m2_rf_lock_holder(fd);
  close(fd);
  return pid;
}

m2_status m2_rf_busy(const char *path, int fd) {
  long pid = m2_rf_lock_holder(fd);
  if (pid > 0)
    return m2_fail(M2_ERR_IO, "%s: the run file is being written by pid %ld (another writer has this run open: it "
                   "holds the m2lab writer lock)", path, pid);
  return m2_fail(M2_ERR_IO, "%s: another writer has this run open (it holds the m2lab writer lock)", path);
}

/* Clear stale status flags (what `h5clear -s` does) while holding the writer lock, so that a
 * writer resuming at the same moment cannot be opening the file too. */
static bool clear_stale_flags(const char *path) {
  int fd = -1;
  if (lock_probe(path, true, &fd) != 0) return false;
  bool ok = false;
  hid_t p = m2_h5_fapl(false);
  hbool_t clear = 1;
  if (p >= 0 && H5Pset(p, "clear_status_flags", &clear) >= 0) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, p);
    if (f >= 0) ok = H5Fclose(f) >= 0;
  }
  m2_h5_close(&p);
  H5Eclear2(H5E_DEFAULT);
  close(fd);
  return ok;
}

hid_t m2_h5_open_read(const char *path, double timeout, bool no_repair) {
  m2_h5_init();
  struct stat sb;
  if (stat(path, &sb) != 0) {
    m2_fail(M2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    m2_fail(M2_ERR_IO, "%s: not a regular file", path);
    return -1;
  }

  hid_t fapl = m2_h5_fapl(false);
  if (fapl < 0) return -1;
  double deadline = m2_rf_monotonic() + (timeout > 0 ? timeout : 10.0);
  bool cleared = false;
  char msg[768];
  hid_t f = -1;
  for (;;) {
    if (m2_rf_journal_exists(path)) { /* a writer killed inside a commit, or one committing now */
      int lfd = -1;
      if (!no_repair && lock_probe(path, true, &lfd) == 0) {
        m2_status rs = m2_rf_journal_recover(path, NULL);
        close(lfd);
        if (rs != M2_OK) break;
        continue;
      }
      if (no_repair && !m2_run_writer_alive(path)) {
        m2_fail(M2_ERR_IO, "%s: a writer died while committing a flush (%s-journal is there): resume the run to "
                "replay it", path, path);
        break;
      }
      if (m2_rf_monotonic() > deadline) {
        m2_fail(M2_ERR_IO, "%s: the writer's flush journal (%s-journal) did not go away in %g s", path, path,
                timeout > 0 ? timeout : 10.0);
        break;
      }
      struct timespec ts = {0, 5 * 1000 * 1000};
      nanosleep(&ts, NULL);
      continue;
    }
    f = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl);
    if (f >= 0) break;
    m2_h5_last_error(msg, sizeof msg);
    if (strstr(msg, "signature")) {
      struct stat now;
      if (stat(path, &now) == 0 && now.st_size == 0) /* (after any journal was replayed or dropped above) */
        m2_fail(M2_ERR_IO, "%s: empty: a run killed before its first flush (nothing to read or resume; start it again with overwrite)", path);
      else
        m2_fail(M2_ERR_IO, "%s: not an HDF5 file (file signature not found)", path);
      break;
    }
    bool flagged = strstr(msg, "open for SWMR writing") || strstr(msg, "already open for write");
    if (!flagged) {
      /* e.g. a file of an older format that SWMR reading does not accept: plain read */
      f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
      if (f >= 0) break;
      char msg2[768];
      m2_h5_last_error(msg2, sizeof msg2);
      m2_fail(M2_ERR_IO, "%s: cannot open: %s", path, msg2[0] ? msg2 : msg);
      break;
    }
    if (!m2_run_writer_alive(path)) {
      if (no_repair) {
        m2_fail(M2_ERR_IO,
                "%s: marked open for writing but no m2lab writer holds it (a crashed writer?): "
                "resume the run, or clear the mark with `h5clear -s %s`",
                path, path);
        break;
      }
      if (!cleared && clear_stale_flags(path)) {
        cleared = true;
        continue;
      }
    }
    if (m2_rf_monotonic() > deadline) {
      if (m2_run_writer_alive(path))
        m2_fail(M2_ERR_IO, "%s: the writer kept the file in EXCLUSIVE mode for more than %g s: %s", path,
                timeout > 0 ? timeout : 10.0, msg);
      else
        m2_fail(M2_ERR_IO,
                "%s: marked open for writing, no m2lab writer holds it, and the mark could not be cleared "
                "(a read-only file, or another program writing it?): %s",
                path, msg);
      break;
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  m2_h5_close(&fapl);
  return f;
}

/* ---------------- types ---------------- */

hid_t m2_h5_bool_type(void) {
  hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
  if (t < 0) return -1;
  int8_t v = 0;
  if (H5Tenum_insert(t, "FALSE", &v) < 0) goto bad;
  v = 1;
  if (H5Tenum_insert(t, "TRUE", &v) < 0) goto bad;
  return t;
bad:
  m2_h5_close(&t);
  return -1;
}

hid_t m2_h5_str_type(void) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0) return -1;
  if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
    m2_h5_close(&t);
    return -1;
  }
  return t;
}

hid_t m2_h5_bf16_type(void) {
  /* bf16: sign bit 15, exponent bits 7..14 (bias 127), mantissa bits 0..6, as in h5py's
   * construction of float16 from float32. */
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  if (t < 0) return -1;
  if (H5Tset_fields(t, 15, 7, 8, 0, 7) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 127) < 0) {
    m2_h5_close(&t);
    return -1;
  }
  return t;
}

m2_status m2_h5_dtype_types(m2_dtype dt, hid_t *ft, hid_t *mt, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  *ft = *mt = -1;
  switch (dt) {
    case M2_F32: H5CHK(*ft = H5Tcopy(H5T_IEEE_F32LE)); H5CHK(*mt = H5Tcopy(H5T_NATIVE_FLOAT)); break;
    case M2_F64: H5CHK(*ft = H5Tcopy(H5T_IEEE_F64LE)); H5CHK(*mt = H5Tcopy(H5T_NATIVE_DOUBLE)); break;
    case M2_I32: H5CHK(*ft = H5Tcopy(H5T_STD_I32LE)); H5CHK(*mt = H5Tcopy(H5T_NATIVE_INT32)); break;
    case M2_I64: H5CHK(*ft = H5Tcopy(H5T_STD_I64LE)); H5CHK(*mt = H5Tcopy(H5T_NATIVE_INT64)); break;
    case M2_BF16:
      H5CHK(*ft = m2_h5_bf16_type());
      H5CHK(*mt = m2_h5_bf16_type()); /* x86/arm hosts are little-endian, as the file type */
      break;
    default: RF_FAIL(M2_ERR_DTYPE, "%s: %s: dtype %d cannot be stored", file, obj, (int)dt);
  }
  return M2_OK;
fail:
  m2_h5_close(ft);
  m2_h5_close(mt);
  return st;
}

m2_status m2_h5_dtype_of(hid_t type, m2_dtype *out, const char *file, const char *obj) {
  H5T_class_t c = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  if (c == H5T_FLOAT) {
    if (size == 4) { *out = M2_F32; return M2_OK; }
    if (size == 8) { *out = M2_F64; return M2_OK; }
    if (size == 2) {
      size_t spos, epos, esize, mpos, msize;
      if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) >= 0 && esize == 8 && msize == 7) {
        *out = M2_BF16;
        return M2_OK;
      }
      *out = M2_F32; /* IEEE half: HDF5 converts it to float exactly */
      return M2_OK;
    }
  } else if (c == H5T_INTEGER) {
    H5T_sign_t s = H5Tget_sign(type);
    if (size < 4 || (size == 4 && s == H5T_SGN_2)) { *out = M2_I32; return M2_OK; }
    if (size == 4 || (size == 8 && s == H5T_SGN_2)) { *out = M2_I64; return M2_OK; }
  }
  H5Eclear2(H5E_DEFAULT);
  return m2_fail(M2_ERR_DTYPE, "%s: %s: stored type (HDF5 class %d, %zu bytes) is not an m2lab dtype", file, obj,
                 (int)c, size);
}

/* ---------------- attributes ---------------- */

m2_status m2_h5_attr_write(hid_t obj, const char *key, m2_value v, const char *file, const char *obj_name) {
  m2_status st = M2_OK;
  char where[512];
  snprintf(where, sizeof where, "%s (attribute '%s')", obj_name, key);
  const char *h5file = file, *h5obj = where;
  hid_t ft = -1, mt = -1, sp = -1, a = -1;
  htri_t ex;
  H5CHK(ex = H5Aexists(obj, key));
  if (ex > 0) H5CHK(H5Adelete(obj, key));
  switch (v.kind) {
    case M2_VAL_I64: H5CHK(ft = H5Tcopy(H5T_STD_I64LE)); H5CHK(mt = H5Tcopy(H5T_NATIVE_INT64)); break;
    case M2_VAL_F64: H5CHK(ft = H5Tcopy(H5T_IEEE_F64LE)); H5CHK(mt = H5Tcopy(H5T_NATIVE_DOUBLE)); break;
    case M2_VAL_BOOL: H5CHK(ft = m2_h5_bool_type()); H5CHK(mt = m2_h5_bool_type()); break;
    case M2_VAL_STR: H5CHK(ft = m2_h5_str_type()); H5CHK(mt = m2_h5_str_type()); break;
    default: RF_FAIL(M2_ERR_VALUE, "%s: %s: no value (kind %d)", file, where, (int)v.kind);
  }
  H5CHK(sp = H5Screate(H5S_SCALAR));
  H5CHK(a = H5Acreate2(obj, key, ft, sp, H5P_DEFAULT, H5P_DEFAULT));
  if (v.kind == M2_VAL_I64) H5CHK(H5Awrite(a, mt, &v.i));
  else if (v.kind == M2_VAL_F64) H5CHK(H5Awrite(a, mt, &v.f));
  else if (v.kind == M2_VAL_BOOL) {
    int8_t b = v.i ? 1 : 0;
    H5CHK(H5Awrite(a, mt, &b));
  } else {
    const char *s = v.s ? v.s : "";
    H5CHK(H5Awrite(a, mt, &s));
  }
fail:
  m2_h5_close(&a);
  m2_h5_close(&sp);
  m2_h5_close(&ft);
  m2_h5_close(&mt);
  return st;
}

m2_status m2_h5_attr_read(hid_t obj, const char *key, m2_value *out, const char *file, const char *obj_name) {
  m2_status st = M2_OK;
  char where[512];
  snprintf(where, sizeof where, "%s (attribute '%s')", obj_name, key);
  const char *h5file = file, *h5obj = where;
  hid_t a = -1, t = -1, sp = -1, mt = -1, sup = -1;
  memset(out, 0, sizeof *out);
  htri_t ex;
  H5CHK(ex = H5Aexists(obj, key));
  if (!ex) RF_FAIL(M2_ERR_INDEX, "%s: %s has no attribute '%s'", file, obj_name, key);
  H5CHK(a = H5Aopen(obj, key, H5P_DEFAULT));
  H5CHK(t = H5Aget_type(a));
  H5CHK(sp = H5Aget_space(a));
  hssize_t np;
  H5CHK(np = H5Sget_simple_extent_npoints(sp));
  if (np != 1) RF_FAIL(M2_ERR_UNSUPPORTED, "%s: %s: holds %lld values, not one", file, where, (long long)np);
  H5T_class_t c;
  H5CHK(c = H5Tget_class(t));
  if (c == H5T_INTEGER) {
    out->kind = M2_VAL_I64;
    H5CHK(H5Aread(a, H5T_NATIVE_INT64, &out->i));
  } else if (c == H5T_FLOAT) {
    out->kind = M2_VAL_F64;
    H5CHK(H5Aread(a, H5T_NATIVE_DOUBLE, &out->f));
  } else if (c == H5T_ENUM) {
    /* h5py's bool (FALSE/TRUE) or any integer enum: read the raw value of its base type */
    size_t size = H5Tget_size(t);
    if (size == 0 || size > 8) RF_FAIL(M2_ERR_UNSUPPORTED, "%s: %s: enum of %zu bytes", file, where, size);
    H5CHK(mt = H5Tget_native_type(t, H5T_DIR_DEFAULT));
    H5CHK(sup = H5Tget_super(t));
    unsigned char raw[8] = {0};
    H5CHK(H5Aread(a, mt, raw));
    int64_t iv = 0;
    bool sgn = H5Tget_sign(sup) == H5T_SGN_2;
    if (size == 1) iv = sgn ? (int64_t)(int8_t)raw[0] : (int64_t)raw[0];
    else if (size == 2) { int16_t x; uint16_t u; memcpy(&x, raw, 2); memcpy(&u, raw, 2); iv = sgn ? x : u; }
    else if (size == 4) { int32_t x; uint32_t u; memcpy(&x, raw, 4); memcpy(&u, raw, 4); iv = sgn ? x : (int64_t)u; }
    else memcpy(&iv, raw, 8);
    char name0[16] = "";
    int8_t zero = 0;
    bool is_bool = H5Tget_nmembers(t) == 2 && size == 1 &&
                   H5Tenum_nameof(t, &zero, name0, sizeof name0) >= 0 && strcmp(name0, "FALSE") == 0;
    H5Eclear2(H5E_DEFAULT);
    out->kind = is_bool ? M2_VAL_BOOL : M2_VAL_I64;
    out->i = iv;
  } else if (c == H5T_STRING) {
    htri_t vl;
    H5CHK(vl = H5Tis_variable_str(t));
    out->kind = M2_VAL_STR;
    if (vl) {
      char *s = NULL;
      RF_TRY(m2_h5_read_vlen_strs(a, 1, &s, file, where)); /* not H5Aread here: see runfile_vlen.c */
      out->s = s ? s : m2_rf_strdup("");
    } else {
      size_t n = H5Tget_size(t);
      H5CHK(mt = H5Tcopy(t));
      out->s = calloc(n + 1, 1);
      if (!out->s) RF_FAIL(M2_ERR_OOM, "%s: %s: out of memory", file, where);
      H5CHK(H5Aread(a, mt, out->s));
    }
    if (!out->s) RF_FAIL(M2_ERR_OOM, "%s: %s: out of memory", file, where);
  } else {
    RF_FAIL(M2_ERR_UNSUPPORTED, "%s: %s: HDF5 type class %d is not a number, bool or string", file, where, (int)c);
  }
fail:
  if (st != M2_OK) m2_value_free(out);
  m2_h5_close(&sup);
  m2_h5_close(&mt);
  m2_h5_close(&sp);
  m2_h5_close(&t);
  m2_h5_close(&a);
  return st;
}

static herr_t attr_name_cb(hid_t loc, const char *name, const H5A_info_t *info, void *ud) {
  return m2_strlist_push(ud, name) == M2_OK ? 0 : -1;
}

m2_status m2_h5_attr_names(hid_t obj, m2_strlist *out, const char *file, const char *obj_name) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj_name;
  memset(out, 0, sizeof *out);
  hsize_t idx = 0;
  H5CHK(H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_name_cb, out));
  m2_strlist_sort(out);
  return M2_OK;
fail:
  m2_strlist_free(out);
  return st;
}

/* ---------------- links ---------------- */

m2_status m2_h5_exists(hid_t loc, const char *path, bool *out, const char *file) {
  /* H5Lexists fails when an intermediate component is missing: test each prefix */
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = path;
  char buf[1100];
  *out = false;
  size_t n = strlen(path);
  if (n >= sizeof buf) return m2_fail(M2_ERR_VALUE, "%s: path too long: %.64s...", file, path);
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char save = buf[i];
      buf[i] = 0;
      htri_t e;
      H5CHK(e = H5Lexists(loc, buf, H5P_DEFAULT));
      if (e <= 0) return M2_OK;
      buf[i] = save;
    }
  }
  *out = true;
  return M2_OK;
fail:
  return st;
}

typedef struct list_ctx { m2_strlist *out; int type; m2_status st; } list_ctx;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *ud) {
  list_ctx *c = ud;
  if (c->type >= 0) {
    if (info->type != H5L_TYPE_HARD) return 0;
    H5O_info_t oi;
    if (H5Oget_info_by_name2(g, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
      H5Eclear2(H5E_DEFAULT);
      return 0;
    }
    if ((int)oi.type != c->type) return 0;
  }
  c->st = m2_strlist_push(c->out, name);
  return c->st == M2_OK ? 0 : -1;
}

m2_status m2_h5_list(hid_t loc, const char *group, int obj_type, m2_strlist *out, const char *file) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = group;
  hid_t g = -1;
  memset(out, 0, sizeof *out);
  bool ex;
  RF_TRY(m2_h5_exists(loc, group, &ex, file));
  if (!ex) return M2_OK;
  H5CHK(g = H5Gopen2(loc, group, H5P_DEFAULT));
  list_ctx c = {out, obj_type, M2_OK};
  hsize_t idx = 0;
  herr_t e = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &c);
  if (c.st != M2_OK) RF_FAIL(c.st, "%s", m2_errmsg());
  H5CHK(e);
  m2_strlist_sort(out);
fail:
  m2_h5_close(&g);
  if (st != M2_OK) m2_strlist_free(out);
  return st;
}

/* ---------------- names, time, lists ---------------- */

bool m2_rf_valid_name(const char *s) {
  if (!s || !s[0] || s[0] == '.') return false;
  size_t n = strlen(s);
  if (n > 255) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '/' || c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool m2_rf_valid_tensor_path(const char *s) {
  if (!s || !s[0] || strlen(s) > 1000) return false;
  const char *p = s;
  while (*p) {
    const char *e = strchr(p, '/');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 0 || p[0] == '.') return false; /* empty, ".", ".." or hidden components */
    for (size_t i = 0; i < len; i++) {
      char c = p[i];
      if (!(isalnum((unsigned char)c) || strchr("_.@:+=-", c))) return false;
    }
    if (!e) break;
    p = e + 1;
    if (!*p) return false; /* trailing '/' */
  }
  return true;
}

m2_status m2_rf_check_group(const char *group) {
  if (group && (strcmp(group, "metrics") == 0 || strcmp(group, "eval") == 0)) return M2_OK;
  return m2_fail(M2_ERR_VALUE, "series group must be \"metrics\" or \"eval\", not %s%s%s", group ? "\"" : "",
                 group ? group : "NULL", group ? "\"" : "");
}

void m2_rf_iso_time(double t, char *buf, size_t n) {
  time_t s = (time_t)floor(t);
  struct tm tm;
  gmtime_r(&s, &tm);
  strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

double m2_rf_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double m2_rf_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int m2_rf_default_goal(const char *name) {
  char low[256];
  size_t i = 0;
  for (; name[i] && i < sizeof low - 1; i++) low[i] = (char)tolower((unsigned char)name[i]);
  low[i] = 0;
  static const char *const larger_better[] = {"acc", "per_s", "throughput", "mfu"};
  for (size_t k = 0; k < sizeof larger_better / sizeof *larger_better; k++)
    if (strstr(low, larger_better[k])) return +1;
  return -1;
}

char *m2_rf_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

m2_status m2_strlist_push(m2_strlist *l, const char *s) {
  char **v = realloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
  if (!v) return m2_fail(M2_ERR_OOM, "out of memory listing names");
  l->v = v;
  if (!(l->v[l->n] = m2_rf_strdup(s))) return m2_fail(M2_ERR_OOM, "out of memory listing names");
  l->n++;
  return M2_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
void m2_strlist_sort(m2_strlist *l) {
  if (l->n > 1) qsort(l->v, (size_t)l->n, sizeof(char *), cmp_str);
}

void m2_strlist_free(m2_strlist *l) {
  if (!l) return;
  for (int i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

void m2_i64list_free(m2_i64list *l) {
  if (!l) return;
  free(l->v);
  l->v = NULL;
  l->n = 0;
}

void m2_value_free(m2_value *v) {
  if (!v) return;
  if (v->kind == M2_VAL_STR) free(v->s);
  memset(v, 0, sizeof *v);
}

bool m2_rf_parse_step(const char *name, int64_t *step) {
  if (!name[0] || strlen(name) > 18) return false;
  int64_t s = 0;
  for (const char *p = name; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    s = s * 10 + (*p - '0');
  }
  if (name[0] == '0' && name[1]) return false; /* one spelling per step */
  *step = s;
  return true;
}
