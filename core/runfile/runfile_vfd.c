/* runfile_vfd.c — the run-file writer's HDF5 file driver: POSIX I/O like HDF5's own sec2 driver (the files are plain
 * HDF5 files that every other program opens with the default driver), plus a journal for the flushes HDF5 does not
 * order.
 *
 * Why: in SWMR mode HDF5 writes metadata in an order that keeps the file valid whatever moment the writer dies at.
 * Outside SWMR mode (the writer's EXCLUSIVE phases: new series, attributes, checkpoints) a flush writes the dirty
 * metadata in any order, so a writer killed inside one could leave a group pointing past the end of the file
 * (measured: 3 damaged files in 384 stress kills, test_runfile_crash).
 *
 * How: between m2_rf_journal_begin and m2_rf_journal_commit (runfile_writer.c wraps every flush outside SWMR mode in them)
 * the driver keeps every write and truncation in memory, in order (a flush writes metadata and the chunk caches'
 * raw data: small; large tensors reach the file at H5Dwrite, outside flushes, in space no on-disk metadata
 * references yet), and reads see them. The commit writes them to "<file>-journal" (header, records, trailer with a count and an
 * FNV-1a checksum), fsyncs it, applies them to the file, fsyncs the file and deletes the journal. A writer killed
 * before the journal is complete leaves the file as the previous commit left it (the fsyncs, skipped with
 * m2_run_opts.no_fsync, are for power loss: a killed process's writes survive in the page cache anyway) (the partial journal is dropped
 * on the next open); killed after, the next open replays the journal (m2_rf_journal_recover: resume, and readers
 * when no writer holds the lock). Journal format: "M2JNL001", then records (u64 addr, u64 size, u8 kind: 0 = write
 * of `size` bytes that follow, 1 = truncate to addr), then "M2JNLEND", u64 record count, u64 checksum of all bytes
 * before the trailer; integers little-endian (this machine's order: the journal never leaves it). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "runfile_int.h"

#define JNL_MAGIC "M2JNL001"
#define JNL_END "M2JNLEND"
#define MAXADDR (((haddr_t)1 << (8 * sizeof(off_t) - 1)) - 1)

typedef struct jrec {
  haddr_t addr;
  size_t size; /* 0 with kind 1 */
  int kind;    /* 0 write, 1 truncate to addr */
  unsigned char *buf;
} jrec;

typedef struct jfile {
  H5FD_t pub; /* first: the library's part */
  int fd;
  haddr_t eoa, eof; /* eof: the logical end of file (kept writes and truncations included) */
  dev_t dev;
  ino_t ino;
  char *path;
  bool journaling;
  bool sync; /* fsync the journal and the file at each commit (not with m2_run_opts.no_fsync) */
  int failed; /* errno of a write that failed (a full disk: ENOSPC), 0 while none did. From then on writes are
                 dropped, unwritten (the file stays as the last complete commit or SWMR flush left it) but reported
                 as done, so that HDF5 can still close the file (a close that fails leaves HDF5 a half-closed file
                 that crashed it at exit); the run-file layer refuses to go on (m2_rf_vfd_error). */
  jrec *rec;
  size_t nrec, cap;
} jfile;

static hid_t g_driver = -1;
int m2_rf_io_errno;

/* ---------------- plain I/O ---------------- */

/* Fault injection for tests: with M2_RUNFILE_ENOSPC_AFTER=N in the environment, the writes of this process through
 * the driver (file and journal) fail with ENOSPC once N bytes have been written, as on a disk that fills up. */
static int64_t g_space = -2; /* -2: not read yet, -1: no limit */

static size_t space_for(size_t n) {
  if (g_space == -2) {
    const char *e = getenv("M2_RUNFILE_ENOSPC_AFTER");
    g_space = e && *e ? strtoll(e, NULL, 10) : -1;
  }
  if (g_space < 0) return n;
  size_t ok = (uint64_t)g_space < n ? (size_t)g_space : n;
  g_space -= (int64_t)ok;
  return ok;
}

static int pread_all(int fd, void *buf, size_t n, off_t at) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = pread(fd, p, n, at);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) { /* past the end of the file: zeros */
      memset(p, 0, n);
      return 0;
    }
    p += r, n -= (size_t)r, at += r;
  }
  return 0;
}

static int pwrite_all(int fd, const void *buf, size_t n, off_t at) {
  const unsigned char *p = buf;
  size_t room = space_for(n);
  if (room < n) { /* (injected) the disk fills up: a part is written, then ENOSPC */
    int r = room ? pwrite_all(fd, buf, room, at) : 0;
    if (r == 0) errno = ENOSPC;
    return -1;
  }
  while (n > 0) {
    ssize_t r = pwrite(fd, p, n, at);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r, n -= (size_t)r, at += r;
  }
  return 0;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
#define FNV_START 14695981039346656037ull

/* ---------------- the kept records ---------------- */

static void drop_records(jfile *f) {
  for (size_t i = 0; i < f->nrec; i++) free(f->rec[i].buf);
  free(f->rec);
  f->rec = NULL;
  f->nrec = f->cap = 0;
}

static int keep(jfile *f, int kind, haddr_t addr, size_t size, const void *buf) {
  if (f->nrec == f->cap) {
    size_t cap = f->cap ? 2 * f->cap : 64;
    jrec *r = realloc(f->rec, cap * sizeof *r);
    if (!r) return -1;
    f->rec = r, f->cap = cap;
  }
  jrec *r = &f->rec[f->nrec];
  r->kind = kind, r->addr = addr, r->size = size, r->buf = NULL;
  if (size) {
    if (!(r->buf = malloc(size))) return -1;
    memcpy(r->buf, buf, size);
  }
  f->nrec++;
  return 0;
}

/* Apply records (in order) to the file. */
static int apply(int fd, const jrec *rec, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (rec[i].kind == 0 && pwrite_all(fd, rec[i].buf, rec[i].size, (off_t)rec[i].addr) != 0) return -1;
    if (rec[i].kind == 1 && ftruncate(fd, (off_t)rec[i].addr) != 0) return -1;
  }
  return 0;
}

static char *journal_path(const char *path) {
  size_t n = strlen(path) + 10;
  char *j = malloc(n);
  if (j) snprintf(j, n, "%s-journal", path);
  return j;
}

/* Write the journal of f's records (and fsync it when sync). */
static int write_journal(const char *jpath, const jrec *rec, size_t n, bool sync) {
  int fd = open(jpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  uint64_t h = FNV_START;
  off_t at = 0;
  int bad = pwrite_all(fd, JNL_MAGIC, 8, at);
  h = fnv1a(h, JNL_MAGIC, 8), at += 8;
  for (size_t i = 0; i < n && !bad; i++) {
    unsigned char head[17];
    uint64_t a = rec[i].addr, s = rec[i].size;
    memcpy(head, &a, 8), memcpy(head + 8, &s, 8), head[16] = (unsigned char)rec[i].kind;
    bad = pwrite_all(fd, head, sizeof head, at);
    h = fnv1a(h, head, sizeof head), at += (off_t)sizeof head;
    if (!bad && rec[i].size) {
      bad = pwrite_all(fd, rec[i].buf, rec[i].size, at);
      h = fnv1a(h, rec[i].buf, rec[i].size), at += (off_t)rec[i].size;
    }
  }
  unsigned char tail[24];
  uint64_t cnt = n;
  memcpy(tail, JNL_END, 8), memcpy(tail + 8, &cnt, 8), memcpy(tail + 16, &h, 8);
  if (!bad) bad = pwrite_all(fd, tail, sizeof tail, at);
  if (!bad && sync) bad = fsync(fd);
  close(fd);
  return bad ? -1 : 0;
}

/* Read a journal: 1 = complete (records in *out, their data in *blob), 0 = absent or incomplete, -1 = error. */
static int read_journal(const char *jpath, jrec **out, size_t *nout, unsigned char **blob) {
  *out = NULL, *nout = 0, *blob = NULL;
  int fd = open(jpath, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    m2_fail(M2_ERR_IO, "%s: cannot open: %s", jpath, strerror(errno));
    return -1;
  }
  struct stat sb;
  unsigned char *all = NULL;
  jrec *rec = NULL;
  int res = 0;
  if (fstat(fd, &sb) != 0 || sb.st_size < 32) goto done;
  size_t len = (size_t)sb.st_size;
  if (!(all = malloc(len))) {
    res = -1;
    m2_fail(M2_ERR_OOM, "%s: out of memory reading the journal (%zu bytes)", jpath, len);
    goto done;
  }
  if (pread_all(fd, all, len, 0) != 0 || memcmp(all, JNL_MAGIC, 8) != 0 || memcmp(all + len - 24, JNL_END, 8) != 0)
    goto done;
  uint64_t cnt, h;
  memcpy(&cnt, all + len - 16, 8), memcpy(&h, all + len - 8, 8);
  if (fnv1a(FNV_START, all, len - 24) != h || cnt > len) goto done;
  if (!(rec = calloc(cnt ? cnt : 1, sizeof *rec))) {
    res = -1;
    m2_fail(M2_ERR_OOM, "%s: out of memory reading the journal", jpath);
    goto done;
  }
  size_t at = 8, i = 0;
  for (; i < cnt && at + 17 <= len - 24; i++) {
    uint64_t a, sz;
    memcpy(&a, all + at, 8), memcpy(&sz, all + at + 8, 8);
    rec[i].addr = a, rec[i].size = (size_t)sz, rec[i].kind = all[at + 16];
    at += 17;
    if (sz > len - 24 - at) break;
    rec[i].buf = sz ? all + at : NULL;
    at += (size_t)sz;
  }
  if (i != cnt || at != len - 24) goto done;
  *out = rec, *nout = cnt, *blob = all;
  close(fd);
  return 1;
done:
  free(rec);
  free(all);
  close(fd);
  return res;
}

m2_status m2_rf_journal_recover(const char *path, bool *replayed) {
  if (replayed) *replayed = false;
  char *jpath = journal_path(path);
  if (!jpath) return m2_fail(M2_ERR_OOM, "%s: out of memory", path);
  jrec *rec = NULL;
  size_t n = 0;
  unsigned char *blob = NULL;
  int r = read_journal(jpath, &rec, &n, &blob);
  m2_status st = M2_OK;
  if (r < 0) st = m2_errcode();
  if (r == 1) {
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 || apply(fd, rec, n) != 0 || fsync(fd) != 0)
      st = m2_fail(M2_ERR_IO, "%s: cannot replay the journal %s: %s", path, jpath, strerror(errno));
    if (fd >= 0) close(fd);
    if (replayed && st == M2_OK) *replayed = true;
  }
  free(rec);
  free(blob);
  if (st == M2_OK && unlink(jpath) != 0 && errno != ENOENT)
    st = m2_fail(M2_ERR_IO, "%s: cannot delete: %s", jpath, strerror(errno));
  free(jpath);
  return st;
}

m2_status m2_rf_journal_discard(const char *path) {
  char *jpath = journal_path(path);
  if (!jpath) return m2_fail(M2_ERR_OOM, "%s: out of memory", path);
  m2_status st = M2_OK;
  if (unlink(jpath) != 0 && errno != ENOENT) st = m2_fail(M2_ERR_IO, "%s: cannot delete: %s", jpath, strerror(errno));
  free(jpath);
  return st;
}

bool m2_rf_journal_exists(const char *path) {
  char *jpath = journal_path(path);
  struct stat sb;
  bool ex = jpath && stat(jpath, &sb) == 0;
  free(jpath);
  return ex;
}

/* ---------------- the driver ---------------- */

static void set_failed(jfile *f, int err) {
  if (!f->failed) f->failed = err ? err : EIO;
  m2_rf_io_errno = f->failed;
}

/* The end of a flush window: the journal, then the records into the file, then the journal deleted. Without a
 * complete journal (it could not be written: a full disk) nothing is applied: the file stays as the last commit left
 * it, and the driver refuses every later write (a partly applied flush is what damages a file). A journal whose
 * records could not all be applied stays, and the next open replays it. */
static int commit(jfile *f) {
  f->journaling = false;
  int e = 0;
  if (f->failed) {
    /* dropped (see jfile.failed) */
  } else if (f->nrec) {
    char *jp = journal_path(f->path);
    bool journaled = jp && write_journal(jp, f->rec, f->nrec, f->sync) == 0;
    if (!journaled) {
      set_failed(f, jp ? errno : ENOMEM);
      if (jp) unlink(jp); /* a journal that may be partial must never be replayed */
      e = -1;
    } else if (apply(f->fd, f->rec, f->nrec) != 0 || (f->sync && fsync(f->fd) != 0)) {
      set_failed(f, errno); /* the journal stays: replayed at the next open */
      e = -1;
    } else if (unlink(jp) != 0) {
      set_failed(f, errno);
      e = -1;
    }
    free(jp);
  }
  drop_records(f);
  return e;
}

static H5FD_t *j_open(const char *name, unsigned flags, hid_t fapl, haddr_t maxaddr) {
  (void)fapl;
  if (!name || !*name || maxaddr == 0 || maxaddr == HADDR_UNDEF || maxaddr > MAXADDR) return NULL;
  int o = O_CLOEXEC | ((flags & H5F_ACC_RDWR) ? O_RDWR : O_RDONLY);
  if (flags & H5F_ACC_TRUNC) o |= O_TRUNC;
  if (flags & H5F_ACC_CREAT) o |= O_CREAT;
  if (flags & H5F_ACC_EXCL) o |= O_EXCL;
  int fd = open(name, o, 0666);
  if (fd < 0) return NULL;
  struct stat sb;
  jfile *f = NULL;
  if (fstat(fd, &sb) != 0 || !(f = calloc(1, sizeof *f)) || !(f->path = strdup(name))) {
    free(f);
    close(fd);
    return NULL;
  }
  f->fd = fd;
  f->sync = true;
  /* A file being created is journaled from its first byte to its first commit (runfile.c flushes at once): a
     writer killed before that leaves it empty, never a superblock that promises what was not written. */
  f->journaling = (flags & (H5F_ACC_TRUNC | H5F_ACC_CREAT)) != 0;
  f->eof = (haddr_t)sb.st_size;
  f->dev = sb.st_dev;
  f->ino = sb.st_ino;
  return &f->pub;
}

int m2_rf_close_failed;

static herr_t j_close(H5FD_t *file) {
  jfile *f = (jfile *)file;
  /* H5Fclose outside SWMR mode (m2_rf_h5close): its flush ends here. A failure is reported through
     m2_rf_close_failed, not to HDF5: the driver's file is freed here either way, and HDF5 would try to close a file
     whose close failed once more at exit (a use after free). */
  if ((f->journaling ? commit(f) : 0) < 0 || f->failed) m2_rf_close_failed = f->failed ? f->failed : EIO;
  drop_records(f);
  close(f->fd);
  free(f->path);
  free(f);
  return 0;
}

static int j_cmp(const H5FD_t *a, const H5FD_t *b) {
  const jfile *x = (const jfile *)a, *y = (const jfile *)b;
  if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
  if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
  return 0;
}

static herr_t j_query(const H5FD_t *file, unsigned long *flags) {
  (void)file;
  /* sec2's features (the file format does not depend on the driver) */
  *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_DATA_SIEVE |
           H5FD_FEAT_AGGREGATE_SMALLDATA | H5FD_FEAT_POSIX_COMPAT_HANDLE | H5FD_FEAT_SUPPORTS_SWMR_IO |
           H5FD_FEAT_DEFAULT_VFD_COMPATIBLE;
  return 0;
}

static haddr_t j_get_eoa(const H5FD_t *file, H5FD_mem_t type) {
  (void)type;
  return ((const jfile *)file)->eoa;
}

static herr_t j_set_eoa(H5FD_t *file, H5FD_mem_t type, haddr_t addr) {
  (void)type;
  ((jfile *)file)->eoa = addr;
  return 0;
}

static haddr_t j_get_eof(const H5FD_t *file, H5FD_mem_t type) {
  (void)type;
  return ((const jfile *)file)->eof;
}

static herr_t j_get_handle(H5FD_t *file, hid_t fapl, void **handle) {
  (void)fapl;
  *handle = &((jfile *)file)->fd;
  return 0;
}

static herr_t j_read(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size, void *buf) {
  (void)type, (void)dxpl;
  jfile *f = (jfile *)file;
  if (addr == HADDR_UNDEF || addr + size > f->eoa) return -1;
  unsigned char *p = buf;
  if (pread_all(f->fd, p, size, (off_t)addr) != 0) return -1;
  for (size_t i = 0; i < f->nrec; i++) { /* the kept records, in order, over what the file holds */
    const jrec *r = &f->rec[i];
    if (r->kind == 1) {
      if (r->addr < addr + size) {
        haddr_t from = r->addr > addr ? r->addr : addr;
        memset(p + (from - addr), 0, (size_t)(addr + size - from));
      }
      continue;
    }
    haddr_t lo = r->addr > addr ? r->addr : addr, hi = r->addr + r->size < addr + size ? r->addr + r->size : addr + size;
    if (lo < hi) memcpy(p + (lo - addr), r->buf + (lo - r->addr), (size_t)(hi - lo));
  }
  return 0;
}

static herr_t j_write(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size, const void *buf) {
  (void)dxpl, (void)type;
  jfile *f = (jfile *)file;
  if (addr == HADDR_UNDEF || addr + size > f->eoa) return -1;
  if (f->failed) return 0; /* dropped (see jfile.failed) */
  if (f->journaling) {
    if (keep(f, 0, addr, size, buf) != 0) return -1;
  } else if (pwrite_all(f->fd, buf, size, (off_t)addr) != 0) {
    set_failed(f, errno);
    return -1;
  }
  if (addr + size > f->eof) f->eof = addr + size;
  return 0;
}

static herr_t j_truncate(H5FD_t *file, hid_t dxpl, hbool_t closing) {
  (void)dxpl, (void)closing;
  jfile *f = (jfile *)file;
  if (f->eoa == f->eof) return 0;
  if (f->failed) return 0; /* dropped (see jfile.failed) */
  if (f->journaling) {
    if (keep(f, 1, f->eoa, 0, NULL) != 0) return -1;
  } else if (ftruncate(f->fd, (off_t)f->eoa) != 0) {
    set_failed(f, errno);
    return -1;
  }
  f->eof = f->eoa;
  return 0;
}

static herr_t j_lock(H5FD_t *file, hbool_t rw) {
  return flock(((jfile *)file)->fd, (rw ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 ? 0 : -1;
}

static herr_t j_unlock(H5FD_t *file) { return flock(((jfile *)file)->fd, LOCK_UN) == 0 ? 0 : -1; }

static const H5FD_class_t j_class = {
    .name = "m2lab_journal",
    .maxaddr = MAXADDR,
    .fc_degree = H5F_CLOSE_WEAK,
    .open = j_open,
    .close = j_close,
    .cmp = j_cmp,
    .query = j_query,
    .get_eoa = j_get_eoa,
    .set_eoa = j_set_eoa,
    .get_eof = j_get_eof,
    .get_handle = j_get_handle,
    .read = j_read,
    .write = j_write,
    .truncate = j_truncate,
    .lock = j_lock,
    .unlock = j_unlock,
    .fl_map = H5FD_FLMAP_DICHOTOMY,
};

hid_t m2_rf_vfd(void) {
  if (g_driver < 0 || H5Iis_valid(g_driver) <= 0) g_driver = H5FDregister(&j_class);
  return g_driver;
}

/* The driver's record of an open file (NULL when it does not use this driver). */
static jfile *jfile_of(hid_t file) {
  hid_t fapl = H5Fget_access_plist(file);
  if (fapl < 0) return NULL;
  bool ours = H5Pget_driver(fapl) == m2_rf_vfd();
  H5Pclose(fapl);
  void *h = NULL;
  if (!ours || H5Fget_vfd_handle(file, H5P_DEFAULT, &h) < 0 || !h) return NULL;
  return (jfile *)((char *)h - offsetof(jfile, fd));
}

void m2_rf_journal_begin(hid_t file) {
  jfile *f = jfile_of(file);
  if (f) f->journaling = true; /* (a new file's window is open since its creation: its records stay) */
}

void m2_rf_vfd_set_sync(hid_t file, bool sync) {
  jfile *f = jfile_of(file);
  if (f) f->sync = sync;
}

herr_t m2_rf_journal_commit(hid_t file) {
  jfile *f = jfile_of(file);
  if (!f) return 0;
  herr_t e = commit(f);
  if (f->failed) {
    m2_rf_io_errno = f->failed;
    e = -1;
  }
  return e;
}

int m2_rf_vfd_error(hid_t file) {
  jfile *f = file >= 0 ? jfile_of(file) : NULL;
  return f ? f->failed : 0;
}
