/* test_runfile_arrays.c — array series (/arrays/<name>: step (n), value (n, width), time (n); runfile.h):
 * (1) round trip: rows of two widths logged across many flushes and SWMR <-> EXCLUSIVE switches (a new scalar series,
 *     a new array series, a checkpoint in between) read back bit-exact from the writer and from a reader; bad rows
 *     refused with clear errors; no_time; `m2lab inspect`'s summary line;
 * (2) a writer SIGKILLed with rows buffered: the flushed rows are there, the run resumes, truncates at a step (as
 *     m2.train's resume does) and appends;
 * (3) a flush cut short (value and time extended, step not: what a writer killed inside an APPEND flush leaves):
 *     readers see the complete rows, a resume trims the rest;
 * (4) writers killed at random moments after their first flush: every file resumes, every row read matches what
 *     was logged at its step, and the run appends;
 * (5) bad files: truncated, and an array series whose value is 1-D (a foreign writer): errors naming the file and
 *     object, never a crash; inspect reports the damaged series and prints the rest;
 * (6) a live reader polling (opening read-only again and again) while a writer appends and switches: every read is
 *     a consistent prefix. */
#include <hdf5.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "../core/runfile/runfile.h"

static char g_dir[64];
static char *tmp_path(const char *name) {
  static char buf[8][256];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 256, "%s/%s", g_dir, name);
  return p;
}

/* The row logged at `step` of series `which` (0: width 8, 1: width 3): distinct values everywhere. */
static double row_value(int which, int64_t step, int64_t j) {
  return (double)which * 1000.0 + (double)step + (double)j / 16.0 + 1.0 / (3.0 + (double)step);
}

static m2_status log_row(m2_run *r, int which, int64_t step) {
  double row[8];
  int64_t w = which ? 3 : 8;
  for (int64_t j = 0; j < w; j++) row[j] = row_value(which, step, j);
  return m2_run_log_array(r, which ? "moe_load_02" : "moe_load_01", step, row, w);
}

/* The array series `which` read from r has rows for exactly steps first..first+n-1, each as logged. */
static void check_rows(m2_run *r, int which, int64_t first, int64_t n, const char *what) {
  m2_array_series a;
  m2_status st = m2_run_read_array(r, which ? "moe_load_02" : "moe_load_01", &a);
  CHECK(st == M2_OK, "%s: read_array", what);
  if (st != M2_OK) return;
  int64_t w = which ? 3 : 8;
  CHECK(a.n == n && a.width == w, "%s: %" PRId64 " rows of width %" PRId64 ", want %" PRId64 " of %" PRId64, what,
        a.n, a.width, n, w);
  int bad = 0;
  for (int64_t i = 0; i < a.n && i < n; i++) {
    if (a.step[i] != first + i) bad++;
    for (int64_t j = 0; j < a.width && j < w; j++)
      if (a.value[i * a.width + j] != row_value(which, a.step[i], j)) bad++;
    if (a.time && !(a.time[i] >= 0 && a.time[i] < 3600)) bad++;
  }
  CHECK(bad == 0, "%s: %d wrong entries", what, bad);
  m2_array_series_free(&a);
}

/* ---------------- (1) round trip ---------------- */

static void round_trip(void) {
  const char *path = tmp_path("arrays.h5");
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.flush_interval = 1e9; /* flushes only where the test asks */
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  for (int64_t s = 1; s <= 300; s++) {
    CHECK_OK(log_row(r, 0, s));
    CHECK_OK(m2_run_log(r, "metrics", "loss", s, 1.0 / (double)s));
    if (s >= 100) CHECK_OK(log_row(r, 1, s)); /* a new array series while APPEND: a switch */
    if (s == 150) CHECK_OK(m2_run_log(r, "metrics", "late", s, 1.0)); /* a new scalar series: another */
    if (s == 200) { /* a checkpoint in between (EXCLUSIVE) */
      m2_tensor *t = m2_zeros(M2_F32, M2_DEV_CPU, 1, (int64_t[]){4});
      m2_ckpt_tensor ct = {"params/w", t};
      CHECK_OK(m2_run_ckpt_write(r, s, &ct, 1, NULL, 0));
      m2_release(t);
    }
    if (s % 7 == 0) CHECK_OK(m2_run_flush(r));
    if (s == 120) check_rows(r, 0, 1, 120, "writer handle, mid-run"); /* flushes what is buffered */
  }
  /* bad rows: clear errors, nothing written */
  double row[8] = {0};
  CHECK_FAILS(m2_run_log_array(r, "moe_load_01", 301, row, 7) != M2_OK, M2_ERR_VALUE,
              "/arrays/moe_load_01 has width 8, got a row of 7 values");
  CHECK_FAILS(m2_run_log_array(r, "a/b", 1, row, 2) != M2_OK, M2_ERR_VALUE, "bad array series name 'a/b'");
  CHECK_FAILS(m2_run_log_array(r, "x", 1, row, 0) != M2_OK, M2_ERR_VALUE, "width 0 out of range");
  CHECK_FAILS(m2_run_log_array(r, "x", 1, NULL, 2) != M2_OK, M2_ERR_VALUE, "values is NULL");
  m2_array_series a;
  CHECK_FAILS(m2_run_read_array(r, "nope", &a) != M2_OK, M2_ERR_INDEX, "no array series /arrays/nope");
  CHECK_OK(m2_run_set_status(r, "done"));
  CHECK_OK(m2_run_close(r));

  r = m2_run_open(path, NULL);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_strlist names;
  CHECK(m2_run_list_arrays(r, &names) == M2_OK && names.n == 2 && !strcmp(names.v[0], "moe_load_01") &&
            !strcmp(names.v[1], "moe_load_02"),
        "list_arrays");
  m2_strlist_free(&names);
  CHECK(m2_run_list_series(r, "metrics", &names) == M2_OK && names.n == 2, "array series are not metric series");
  m2_strlist_free(&names);
  check_rows(r, 0, 1, 300, "reader, width 8");
  check_rows(r, 1, 100, 201, "reader, width 3");
  CHECK_FAILS(m2_run_log_array(r, "moe_load_01", 1, row, 8) != M2_OK, M2_ERR_VALUE, "read-only");
  m2_run_close(r);

  /* inspect: one summary line per array series (the last row of moe_load_02: 1300 + 1/303 + j/16, j < 3) */
  char out_path[300];
  snprintf(out_path, sizeof out_path, "%s", tmp_path("inspect.txt"));
  FILE *f = fopen(out_path, "w+");
  CHECK_OK(m2_inspect(path, f));
  rewind(f);
  char text[8192];
  size_t k = fread(text, 1, sizeof text - 1, f);
  text[k] = 0;
  fclose(f);
  unlink(out_path);
  char want[200];
  snprintf(want, sizeof want, "%.6g / %.6g / %.6g", row_value(1, 300, 0), row_value(1, 300, 1), row_value(1, 300, 2));
  CHECK(strstr(text, "arrays (2 series)") && strstr(text, want) && strstr(text, "moe_load_01"), "inspect:\n%s", text);
  const char *line = strstr(text, "  moe_load_02");
  int64_t cnt = 0, last = 0, width = 0;
  CHECK(line && sscanf(line, "  moe_load_02 %" SCNd64 " %" SCNd64 " %" SCNd64, &cnt, &last, &width) == 3 &&
            cnt == 201 && last == 300 && width == 3,
        "inspect line: %s", line ? line : "(none)");

  /* no_time: no time dataset, rows as logged */
  const char *p2 = tmp_path("notime.h5");
  o.no_time = true;
  r = m2_run_open(p2, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  for (int64_t s = 1; s <= 20; s++) CHECK_OK(log_row(r, 1, s));
  CHECK_OK(m2_run_close(r));
  r = m2_run_open(p2, NULL);
  CHECK(r && m2_run_read_array(r, "moe_load_02", &a) == M2_OK && a.n == 20 && a.time == NULL, "no_time");
  m2_array_series_free(&a);
  if (r) check_rows(r, 1, 1, 20, "no_time rows");
  m2_run_close(r);
  unlink(p2);
}

/* ---------------- (2) killed with rows buffered; resume and truncate ---------------- */

static void killed_resume(void) {
  const char *path = tmp_path("killed.h5");
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    m2_run_opts o = {0};
    o.mode = M2_RUN_CREATE;
    o.flush_interval = 1e9;
    m2_run *r = m2_run_open(path, &o);
    if (!r) _exit(10);
    for (int64_t s = 1; s <= 80; s++) {
      if (log_row(r, 0, s) != M2_OK) _exit(11);
      if (s % 10 == 0 && m2_run_flush(r) != M2_OK) _exit(12);
    }
    log_row(r, 0, 81); /* buffered, never flushed */
    raise(SIGKILL);
    _exit(20);
  }
  int ws = 0;
  waitpid(pid, &ws, 0);
  CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "child killed itself");
  m2_run_opts o = {0};
  o.no_repair = true;
  o.open_timeout = 0.5;
  m2_run *r = m2_run_open(path, &o); /* SWMR: opens without repair */
  CHECK_NOTNULL(r);
  if (r) check_rows(r, 0, 1, 80, "after the kill");
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  r = m2_run_open(path, &ro);
  CHECK_NOTNULL(r);
  if (!r) return;
  double row[8] = {0};
  CHECK_FAILS(m2_run_log_array(r, "moe_load_01", 81, row, 3) != M2_OK, M2_ERR_VALUE,
              "has width 8, got a row of 3"); /* the width comes from the file */
  CHECK_OK(m2_run_truncate(r, 50)); /* a resume from the checkpoint of step 50 */
  check_rows(r, 0, 1, 50, "truncated at 50");
  for (int64_t s = 51; s <= 90; s++) CHECK_OK(log_row(r, 0, s));
  CHECK_OK(m2_run_close(r));
  r = m2_run_open(path, NULL);
  CHECK_NOTNULL(r);
  if (r) check_rows(r, 0, 1, 90, "resumed and appended");
  m2_run_close(r);
  unlink(path);
}

/* ---------------- (3) a flush cut short ---------------- */

/* Extend value (and time) of /arrays/<name> by k rows of junk without touching step, as a writer killed between
 * the value and step writes of an APPEND flush leaves it. */
static void extend_without_step(const char *path, const char *name, int k) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  CHECK(f >= 0, "open %s with HDF5", path);
  if (f < 0) return;
  const char *which[2] = {"value", "time"};
  for (int i = 0; i < 2; i++) {
    char p[300];
    snprintf(p, sizeof p, "/arrays/%s/%s", name, which[i]);
    hid_t ds = H5Dopen2(f, p, H5P_DEFAULT);
    hid_t sp = H5Dget_space(ds);
    hsize_t d[2] = {0, 0};
    int nd = H5Sget_simple_extent_dims(sp, d, NULL);
    d[0] += (hsize_t)k;
    CHECK(ds >= 0 && nd >= 1 && H5Dset_extent(ds, d) >= 0, "extend %s", p);
    H5Sclose(sp);
    H5Dclose(ds);
  }
  H5Fclose(f);
}

static void partial_flush(void) {
  const char *path = tmp_path("partial.h5");
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  for (int64_t s = 1; s <= 30; s++) CHECK_OK(log_row(r, 1, s));
  CHECK_OK(m2_run_close(r));
  extend_without_step(path, "moe_load_02", 5);
  r = m2_run_open(path, NULL);
  CHECK_NOTNULL(r);
  if (r) check_rows(r, 1, 1, 30, "a reader takes len(step) rows");
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  r = m2_run_open(path, &ro); /* resumed and closed without a row: the trim alone */
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK_OK(m2_run_close(r));
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(f, "/arrays/moe_load_02/value", H5P_DEFAULT);
  hid_t dt = H5Dopen2(f, "/arrays/moe_load_02/time", H5P_DEFAULT);
  hid_t sp = H5Dget_space(ds), spt = H5Dget_space(dt);
  hsize_t d[2] = {0, 0}, nt = 0;
  H5Sget_simple_extent_dims(sp, d, NULL);
  H5Sget_simple_extent_dims(spt, &nt, NULL);
  CHECK(d[0] == 30 && d[1] == 3 && nt == 30, "resume trimmed the junk rows: value (%llu, %llu), time (%llu)",
        (unsigned long long)d[0], (unsigned long long)d[1], (unsigned long long)nt);
  H5Sclose(spt);
  H5Sclose(sp);
  H5Dclose(dt);
  H5Dclose(ds);
  H5Fclose(f);
  r = m2_run_open(path, &ro);
  CHECK_NOTNULL(r);
  if (!r) return;
  for (int64_t s = 31; s <= 40; s++) CHECK_OK(log_row(r, 1, s));
  CHECK_OK(m2_run_close(r));
  r = m2_run_open(path, NULL);
  if (r) check_rows(r, 1, 1, 40, "after the resume");
  m2_run_close(r);
  unlink(path);
}

/* ---------------- (4) random kills ---------------- */

static void random_kills(void) {
  const char *path = tmp_path("kills.h5");
  int trials = 12, opened = 0;
  srand(12345);
  for (int t = 0; t < trials; t++) {
    unlink(path);
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      close(ready[0]);
      m2_run_opts o = {0};
      o.mode = M2_RUN_CREATE;
      o.flush_interval = 0.001;
      o.no_fsync = true;
      m2_run *r = m2_run_open(path, &o);
      if (!r) _exit(10);
      for (int64_t s = 1;; s++) {
        if (s == 3) { /* flushed once: the parent's kill may now come at any moment */
          if (m2_run_flush(r) != M2_OK || write(ready[1], "x", 1) != 1) _exit(14);
          close(ready[1]);
        }
        if (log_row(r, 0, s) != M2_OK) _exit(11);
        if (s % 5 == 0 && log_row(r, 1, s) != M2_OK) _exit(12);
        if (s % 40 == 0) {
          char name[32];
          snprintf(name, sizeof name, "m%" PRId64, s); /* new series: EXCLUSIVE switches */
          if (m2_run_log(r, "metrics", name, s, 1.0) != M2_OK) _exit(13);
        }
      }
    }
    close(ready[1]);
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "trial %d: the writer's first flush", t);
    close(ready[0]);
    struct timespec ts = {0, (long)(rand() % 40) * 1000000L}; /* then 0 .. 40 ms more: any moment of the loop */
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int ws = 0;
    waitpid(pid, &ws, 0);
    m2_run_opts ro = {0};
    ro.mode = M2_RUN_RESUME;
    m2_clear_error();
    m2_run *r = m2_run_open(path, &ro);
    CHECK(r != NULL, "trial %d: resume after the kill", t);
    if (!r) continue;
    opened++;
    m2_array_series a[2];
    for (int w = 0; w < 2; w++) {
      m2_status st = m2_run_read_array(r, w ? "moe_load_02" : "moe_load_01", &a[w]);
      if (st == M2_ERR_INDEX) { /* not created yet */
        m2_clear_error();
        memset(&a[w], 0, sizeof a[w]);
        continue;
      }
      CHECK(st == M2_OK, "trial %d: read", t);
      int bad = 0;
      for (int64_t i = 0; i < a[w].n; i++) {
        int64_t s = a[w].step[i];
        if (s != (w ? 5 * (i + 1) : i + 1)) bad++;
        for (int64_t j = 0; j < a[w].width; j++)
          if (a[w].value[i * a[w].width + j] != row_value(w, s, j)) bad++;
      }
      CHECK(bad == 0, "trial %d series %d: %d wrong entries of %" PRId64 " rows", t, w, bad, a[w].n);
    }
    int64_t next = a[0].n + 1;
    m2_array_series_free(&a[0]);
    m2_array_series_free(&a[1]);
    CHECK_OK(m2_run_truncate(r, next - 1));
    CHECK_OK(log_row(r, 0, next));
    CHECK_OK(m2_run_close(r));
    r = m2_run_open(path, NULL);
    CHECK_NOTNULL(r);
    if (r) check_rows(r, 0, 1, next, "resumed after a random kill");
    m2_run_close(r);
  }
  CHECK(opened == trials, "%d of %d killed runs resumed", opened, trials);
  unlink(path);
}

/* ---------------- (6) a live reader ---------------- */

/* A child logs 300 rows (and a new scalar series every 50 steps: EXCLUSIVE switches) with flushes every millisecond
 * while the parent opens the file read-only again and again: every read gives steps 1..n with their rows, n never
 * shrinks, and the finished file has all 300. */
static void live_reader(void) {
  const char *path = tmp_path("live.h5");
  unlink(path);
  int ready[2];
  CHECK(pipe(ready) == 0, "pipe");
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    m2_run_opts o = {0};
    o.mode = M2_RUN_CREATE;
    o.flush_interval = 0.001;
    o.no_fsync = true;
    m2_run *r = m2_run_open(path, &o);
    if (!r) _exit(10);
    for (int64_t s = 1; s <= 300; s++) {
      if (log_row(r, 0, s) != M2_OK) _exit(11);
      if (s % 50 == 0 && m2_run_log(r, "metrics", s == 50 ? "a" : s == 100 ? "b" : "c", s, 1.0) != M2_OK) _exit(12);
      if (s == 2 && (m2_run_flush(r) != M2_OK || write(ready[1], "x", 1) != 1)) _exit(13);
      struct timespec ts = {0, 300000L};
      nanosleep(&ts, NULL);
    }
    if (m2_run_close(r) != M2_OK) _exit(14);
    _exit(0);
  }
  close(ready[1]);
  char c;
  CHECK(read(ready[0], &c, 1) == 1, "the writer's first flush");
  close(ready[0]);
  int64_t last_n = 0;
  int polls = 0, bad = 0, ws = 0;
  bool done = false;
  while (!done) {
    done = waitpid(pid, &ws, WNOHANG) == pid; /* one more poll after the writer has finished */
    m2_run_opts ro = {0};
    ro.open_timeout = 10;
    m2_run *r = m2_run_open(path, &ro);
    CHECK(r != NULL, "live open (poll %d)", polls);
    if (!r) break;
    m2_array_series a;
    if (m2_run_read_array(r, "moe_load_01", &a) == M2_OK) {
      if (a.n < last_n || a.width != 8) bad++;
      for (int64_t i = 0; i < a.n; i++) {
        if (a.step[i] != i + 1) bad++;
        for (int64_t j = 0; j < a.width; j++)
          if (a.value[i * a.width + j] != row_value(0, i + 1, j)) bad++;
      }
      last_n = a.n;
      m2_array_series_free(&a);
    } else {
      bad++;
    }
    m2_run_close(r);
    polls++;
  }
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the writer finished (status %d)", ws);
  CHECK(bad == 0, "%d bad reads over %d polls", bad, polls);
  CHECK(last_n == 300, "the last poll read %" PRId64 " rows of 300", last_n);
  printf("live reader: %d polls\n", polls);
  unlink(path);
}

/* ---------------- (5) bad files ---------------- */

static void bad_files(void) {
  const char *good = tmp_path("arrays.h5"), *half = tmp_path("half.h5"), *foreign = tmp_path("foreign.h5");
  /* truncated: an error, never a crash */
  struct stat sb;
  CHECK(stat(good, &sb) == 0, "stat");
  FILE *a = fopen(good, "rb"), *b = fopen(half, "wb");
  char buf[4096];
  off_t left = sb.st_size / 2;
  size_t k;
  while (a && b && left > 0 && (k = fread(buf, 1, (size_t)(left < 4096 ? left : 4096), a)) > 0) {
    fwrite(buf, 1, k, b);
    left -= (off_t)k;
  }
  if (a) fclose(a);
  if (b) fclose(b);
  m2_run_opts o = {0};
  o.open_timeout = 0.2;
  m2_clear_error();
  m2_run *r = m2_run_open(half, &o);
  if (r) { /* opened: reading the arrays fails cleanly or works */
    m2_array_series s;
    if (m2_run_read_array(r, "moe_load_01", &s) == M2_OK) m2_array_series_free(&s);
    else CHECK(strstr(m2_errmsg(), half) != NULL, "truncated: error names the file: %s", m2_errmsg());
    m2_run_close(r);
  } else {
    CHECK(m2_errcode() == M2_ERR_IO && strstr(m2_errmsg(), half) != NULL, "truncated: %s", m2_errmsg());
  }
  unlink(half);

  /* an array series whose value is 1-D (written by some other tool) */
  m2_run_opts co = {0};
  co.mode = M2_RUN_CREATE;
  r = m2_run_open(foreign, &co);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK_OK(log_row(r, 0, 1));
  CHECK_OK(m2_run_close(r));
  hid_t f = H5Fopen(foreign, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t g = H5Gcreate2(f, "/arrays/flat", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t d = 3;
  hid_t sp = H5Screate_simple(1, &d, NULL);
  hid_t d1 = H5Dcreate2(g, "step", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t d2 = H5Dcreate2(g, "value", H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(f >= 0 && g >= 0 && d1 >= 0 && d2 >= 0, "foreign series written");
  H5Dclose(d2);
  H5Dclose(d1);
  H5Sclose(sp);
  H5Gclose(g);
  H5Fclose(f);
  r = m2_run_open(foreign, NULL);
  CHECK_NOTNULL(r);
  m2_array_series s;
  CHECK_FAILS(r && m2_run_read_array(r, "flat", &s) != M2_OK, M2_ERR_IO, "/arrays/flat/value: expected a 2-D dataset");
  if (r) check_rows(r, 0, 1, 1, "the good series beside it");
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  m2_clear_error();
  r = m2_run_open(foreign, &ro);
  CHECK(r == NULL && strstr(m2_errmsg(), "/arrays/flat/value: expected a 2-D dataset"), "resume refuses: %s",
        m2_errmsg());
  m2_run_close(r);
  FILE *out = fopen("/dev/null", "w");
  m2_clear_error();
  CHECK(m2_inspect(foreign, out) != M2_OK && strstr(m2_errmsg(), "damaged: 1 part"), "inspect: %s", m2_errmsg());
  fclose(out);
  unlink(foreign);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/m2ra-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  round_trip();
  killed_resume();
  partial_flush();
  random_kills();
  live_reader();
  bad_files();
  unlink(tmp_path("arrays.h5"));
  rmdir(g_dir);
  return check_finish("test_runfile_arrays");
}
