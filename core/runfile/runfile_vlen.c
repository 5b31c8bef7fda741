/* runfile_vlen.c — reading variable-length strings (the run file's string attributes) in a child process.
 *
 * Why: HDF5 keeps variable-length strings in global heap collections ("GCOL"), which carry no checksum, and 1.10.8
 * (Debian's) trusts them: a collection holding a free-space object of size 0 makes H5HG_read loop for ever, an object
 * whose size runs past its collection (or past the string's stated length) makes it copy out of bounds (a crash, or
 * a heap overflow in our process), an object index the collection does not define reads past HDF5's object table.
 * Found by tests/fuzz/fuzz_runfile.c on damaged files.
 *
 * Why this guard and not another: a check of the collection's bytes before HDF5 parses it (in a file driver, or by
 * scanning the file) cannot see the string's own reference (its length and object index live in the attribute,
 * which HDF5 decodes and does not expose), so an intact-looking collection can still overflow the copy; and HDF5
 * 1.10 has no public call that reads an attribute's raw bytes to avoid its vlen code. So the read itself runs where a
 * loop or a bad copy cannot hurt: a forked child does the H5Aread and sends the strings back through a pipe; the
 * parent waits at most M2_RUNFILE_STRING_TIMEOUT seconds (default 20) and turns a child that crashes, hangs or fails
 * into a clean error naming the file, object and attribute. The parent never loads the collection, so HDF5's state
 * in it stays clean (a writer resuming the file writes new strings into new collections).
 *
 * The child only reads (a reader's file is read-only; a writer's metadata cache has evictions off, so nothing is
 * written before the next flush) and leaves with _exit: no atexit handler, no HDF5 close, no stdio flush. Cost: one
 * fork per string attribute read, ~1-2 ms on the 2-core CI VM (`m2lab inspect` of a tiny_lm run reads 31 strings:
 * 55-75 ms before, 85-110 ms with the child, under load); more in a process with a large resident set (page tables).
 * What it does not catch: a damaged collection that HDF5 reads without crashing gives a wrong string, not an error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "runfile_int.h"

void (*m2_rf_string_reader_hook)(void);
bool m2_rf_strings_in_process;

#define VLEN_MAX_BYTES ((size_t)256 << 20) /* all strings of one attribute: a damaged heap may claim any length */

static double string_timeout(void) {
  const char *e = getenv("M2_RUNFILE_STRING_TIMEOUT");
  double t = e && e[0] ? strtod(e, NULL) : 0;
  return t > 0 ? t : 20.0;
}

static bool write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w, n -= (size_t)w;
  }
  return true;
}

/* The child: 'O', then for each string a u64 length (UINT64_MAX for a NULL) and its bytes, then 'Z'; or 'E' and
 * HDF5's message. */
static void child_read(int fd, hid_t a, int64_t n) {
  if (m2_rf_string_reader_hook) m2_rf_string_reader_hook();
  char **raw = calloc((size_t)n + 1, sizeof *raw);
  hid_t mt = m2_h5_str_type();
  if (!raw || mt < 0 || H5Aread(a, mt, raw) < 0) {
    char msg[768];
    m2_h5_last_error(msg, sizeof msg);
    write_all(fd, "E", 1);
    write_all(fd, msg, strlen(msg));
    _exit(1);
  }
  bool ok = write_all(fd, "O", 1);
  for (int64_t i = 0; ok && i < n; i++) {
    uint64_t len = raw[i] ? (uint64_t)strlen(raw[i]) : UINT64_MAX;
    ok = write_all(fd, &len, sizeof len) && (!raw[i] || write_all(fd, raw[i], (size_t)len));
  }
  ok = ok && write_all(fd, "Z", 1);
  _exit(ok ? 0 : 1);
}

m2_status m2_h5_read_vlen_strs(hid_t a, int64_t n, char **out, const char *file, const char *where) {
  for (int64_t i = 0; i < n; i++) out[i] = NULL;
  if (n <= 0) return M2_OK;
  if (m2_rf_strings_in_process) { /* a test's switch (runfile_int.h): HDF5's own read, unguarded */
    char **raw = calloc((size_t)n, sizeof *raw);
    hid_t mt = m2_h5_str_type();
    bool ok = raw && mt >= 0 && H5Aread(a, mt, raw) >= 0;
    for (int64_t i = 0; ok && i < n; i++) ok = !raw[i] || (out[i] = m2_rf_strdup(raw[i])) != NULL;
    char msg[768];
    m2_h5_last_error(msg, sizeof msg);
    if (raw) for (int64_t i = 0; i < n; i++) if (raw[i]) H5free_memory(raw[i]);
    free(raw);
    m2_h5_close(&mt);
    if (ok) return M2_OK;
    for (int64_t i = 0; i < n; i++) free(out[i]), out[i] = NULL;
    return m2_fail(M2_ERR_IO, "%s: %s: %s [H5Aread of its strings]", file, where, msg[0] ? msg : "out of memory");
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0)
    return m2_fail(M2_ERR_IO, "%s: %s: cannot read its strings: pipe: %s", file, where, strerror(errno));
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(p[0]), close(p[1]);
    return m2_fail(M2_ERR_IO, "%s: %s: cannot read its strings: fork: %s", file, where, strerror(e));
  }
  if (pid == 0) {
    close(p[0]);
    signal(SIGPIPE, SIG_DFL);
    child_read(p[1], a, n);
  }
  close(p[1]);

  /* collect everything the child writes, until it closes the pipe or the time is up */
  double limit = string_timeout(), deadline = m2_rf_monotonic() + limit;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  bool timed_out = false, too_big = false, oom = false;
  for (;;) {
    double left = deadline - m2_rf_monotonic();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd pf = {p[0], POLLIN, 0};
    int r = poll(&pf, 1, left > 1e6 ? 1000000000 : (int)(left * 1000) + 1);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    if (len == cap) {
      if (cap >= VLEN_MAX_BYTES) {
        too_big = true;
        break;
      }
      size_t ncap = cap ? 2 * cap : 4096;
      char *nb = realloc(buf, ncap);
      if (!nb) {
        oom = true;
        break;
      }
      buf = nb, cap = ncap;
    }
    ssize_t got = read(p[0], buf + len, cap - len);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break; /* end of the child's output */
    len += (size_t)got;
  }
  close(p[0]);
  if (timed_out || too_big || oom) kill(pid, SIGKILL);
  int ws = 0;
  pid_t w;
  while ((w = waitpid(pid, &ws, 0)) < 0 && errno == EINTR) {
  }

  m2_status st = M2_OK;
  if (timed_out)
    st = m2_fail(M2_ERR_IO, "%s: %s: reading its string did not finish in %g s: the file's global heap (where HDF5 "
                 "keeps strings, unchecksummed) is damaged, and HDF5 1.10.8 loops on it (a longer limit: "
                 "M2_RUNFILE_STRING_TIMEOUT=SECONDS)", file, where, limit);
  else if (too_big || oom)
    st = m2_fail(M2_ERR_IO, "%s: %s: its strings claim more than %zu MiB: the file's global heap (where HDF5 keeps "
                 "strings) is damaged", file, where, cap >> 20);
  else if (w == pid && WIFSIGNALED(ws))
    st = m2_fail(M2_ERR_IO, "%s: %s: reading its string crashed HDF5 (signal %d, %s): the file's global heap (where "
                 "HDF5 keeps strings, unchecksummed) is damaged", file, where, WTERMSIG(ws), strsignal(WTERMSIG(ws)));
  else if (len >= 1 && buf[0] == 'E')
    st = m2_fail(M2_ERR_IO, "%s: %s: %.*s [H5Aread of its strings]", file, where, (int)(len > 600 ? 600 : len - 1),
                 buf + 1);
  if (st != M2_OK) {
    free(buf);
    return st;
  }
  /* parse; anything short or malformed is a child that did not finish (an abort inside HDF5, a sanitizer's exit) */
  size_t at = 1;
  bool ok = len >= 2 && buf[0] == 'O';
  for (int64_t i = 0; ok && i < n; i++) {
    uint64_t sl;
    if (len - at < sizeof sl) {
      ok = false;
      break;
    }
    memcpy(&sl, buf + at, sizeof sl);
    at += sizeof sl;
    if (sl == UINT64_MAX) continue; /* NULL: stays NULL */
    if (sl > len - at) {
      ok = false;
      break;
    }
    if (!(out[i] = malloc((size_t)sl + 1))) {
      ok = false;
      break;
    }
    memcpy(out[i], buf + at, (size_t)sl);
    out[i][sl] = 0;
    at += (size_t)sl;
  }
  ok = ok && at == len - 1 && buf[at] == 'Z';
  free(buf);
  if (!ok) {
    for (int64_t i = 0; i < n; i++) free(out[i]), out[i] = NULL;
    if (w == pid && WIFEXITED(ws) && WEXITSTATUS(ws) != 0)
      return m2_fail(M2_ERR_IO, "%s: %s: reading its string failed (the reader exited with %d): the file's global "
                     "heap (where HDF5 keeps strings) is damaged", file, where, WEXITSTATUS(ws));
    return m2_fail(M2_ERR_IO, "%s: %s: reading its string gave an incomplete answer: the file's global heap (where "
                   "HDF5 keeps strings) is damaged", file, where);
  }
  return M2_OK;
}
