/* test_runfile_crash.c — run files under a killed writer and a live reader:
 * (1) a child writes metrics and checkpoint N, starts checkpoint N+1 and is SIGKILLed between
 *     two tensor writes: checkpoint N is complete and bit-exact, N+1 absent, the run resumes;
 *     incomplete checkpoint groups found on disk are ignored by readers and deleted on resume;
 * (2) a child killed while appending in SWMR mode leaves a file readers open directly;
 * (3) a child appends metrics with flushes (and switches to EXCLUSIVE for a new series and a
 *     checkpoint) while the parent opens the file in SWMR read mode again and again: step and
 *     value stay consistent (value written first, steps monotone, values right) and grow;
 * (4) children writing metrics, new series and checkpoints are killed at random moments: the
 *     file always opens, its latest checkpoint is bit-exact and the run resumes. The children mark the flushes
 *     outside SWMR mode (the ones the writer's driver journals, runfile_vfd.c) in a shared page
 *     (m2_rf_flush_window), so the test counts the kills that land inside one; those trials are checked in a
 *     child process (before the journal, such a file could crash HDF5's reader). */
#include <hdf5.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "../core/runfile/runfile.h"
#include "../core/runfile/runfile_int.h"

static char g_dir[64];
static char g_path[4][256];

#define N 40       /* the complete checkpoint */
#define NT 5       /* tensors per checkpoint */
static const char *const paths[NT] = {"params/embed.weight", "params/blocks.0.mixer.W", "optim/exp_avg/embed.weight",
                                      "optim/step_count", "rng/state"};

static void make_tensors(uint64_t seed, m2_tensor **t) {
  m2_rng rng = m2_rng_make(seed, 1);
  t[0] = m2_randn(&rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){64, 32});
  t[1] = m2_randn(&rng, M2_F32, M2_DEV_CPU, 3, (int64_t[]){4, 16, 16});
  t[2] = m2_randn(&rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){64, 32});
  t[3] = m2_empty(M2_I64, M2_DEV_CPU, 1, (int64_t[]){9});
  t[4] = m2_empty(M2_I64, M2_DEV_CPU, 1, (int64_t[]){4});
  for (int k = 3; k < 5; k++) {
    int64_t *p = m2_data(t[k]);
    for (int64_t i = 0; i < m2_numel(t[k]); i++) p[i] = (int64_t)m2_rng_u64(&rng);
  }
}

static void free_tensors(m2_tensor **t) {
  for (int i = 0; i < NT; i++) m2_release(t[i]);
}

static bool same_bits(const m2_tensor *a, const m2_tensor *b) {
  return a && b && a->dtype == b->dtype && m2_same_shape(a, b) &&
         memcmp(m2_data(a), m2_data(b), (size_t)m2_numel(a) * m2_dtype_size(a->dtype)) == 0;
}

static double loss_at(int64_t s) { return 1.0 / (1.0 + (double)s) + 1e-3 * (double)(s % 7); }

/* ---------------- (1) killed inside a checkpoint ---------------- */

static void child_ckpt_crash(const char *path) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.keep_last = 3;
  o.flush_interval = 0.05;
  o.script = "-- crash test\n";
  m2_run *r = m2_run_open(path, &o);
  if (!r) _exit(10);
  for (int s = 0; s < N; s++)
    if (m2_run_log(r, "metrics", "loss", s, loss_at(s)) != M2_OK) _exit(11);
  m2_tensor *t[NT];
  make_tensors(N, t);
  if (m2_run_ckpt_begin(r, N) != M2_OK) _exit(12);
  for (int i = 0; i < NT; i++)
    if (m2_run_ckpt_put(r, paths[i], t[i]) != M2_OK) _exit(13);
  if (m2_run_ckpt_set(r, "data_cursor", m2_vi64(123456789012345)) != M2_OK) _exit(14);
  if (m2_run_ckpt_commit(r) != M2_OK) _exit(15);
  free_tensors(t);
  for (int s = N; s < N + 10; s++)
    if (m2_run_log(r, "metrics", "loss", s, loss_at(s)) != M2_OK) _exit(16);
  make_tensors(N + 10, t);
  if (m2_run_ckpt_begin(r, N + 10) != M2_OK) _exit(17);
  if (m2_run_ckpt_put(r, paths[0], t[0]) != M2_OK) _exit(18);
  if (m2_run_ckpt_put(r, paths[1], t[1]) != M2_OK) _exit(19);
  raise(SIGKILL); /* between the tensor writes of checkpoint N+10 */
  _exit(20);
}

/* Plant incomplete checkpoint groups the way a writer killed later in its commit could leave them. */
static void plant_incomplete(const char *path) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  H5Pset_file_locking(fapl, 0, 1);
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, fapl);
  CHECK(f >= 0, "raw open to plant junk");
  hid_t g1 = H5Gcreate2(f, "/checkpoints/.tmp-77", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t g2 = H5Gcreate2(f, "/checkpoints/99", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT); /* no complete=1 */
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t ds = H5Dcreate2(g2, "w", H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(g1 >= 0 && g2 >= 0 && ds >= 0, "junk planted");
  H5Dclose(ds);
  H5Sclose(sp);
  H5Gclose(g1);
  H5Gclose(g2);
  H5Fclose(f);
  H5Pclose(fapl);
}

static int count_links(const char *path, const char *group) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, 0, 1);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  hid_t g = f >= 0 ? H5Gopen2(f, group, H5P_DEFAULT) : -1;
  H5G_info_t info = {0};
  int n = g >= 0 && H5Gget_info(g, &info) >= 0 ? (int)info.nlinks : -1;
  if (g >= 0) H5Gclose(g);
  if (f >= 0) H5Fclose(f);
  H5Pclose(fapl);
  return n;
}

static void check_ckpt_n(m2_run *r, int64_t step) {
  m2_tensor *want[NT];
  make_tensors((uint64_t)step, want);
  for (int i = 0; i < NT; i++) {
    m2_tensor *t = m2_run_ckpt_read(r, step, paths[i]);
    CHECK(same_bits(t, want[i]), "checkpoint %lld: %s bit-exact", (long long)step, paths[i]);
    m2_release(t);
  }
  free_tensors(want);
}

static void test_ckpt_crash(void) {
  const char *path = g_path[0];
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) child_ckpt_crash(path);
  int ws = 0;
  waitpid(pid, &ws, 0);
  CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "child killed itself (status %d)", ws);

  /* the killed writer left the "open for write" flag: with no_repair a reader says so */
  m2_run_opts o = {0};
  o.no_repair = true;
  o.open_timeout = 0.5;
  m2_run *r = NULL;
  CHECK_FAILS((r = m2_run_open(path, &o)) == NULL, M2_ERR_IO, "no m2lab writer holds it");
  /* by default the stale flag is cleared */
  o.no_repair = false;
  r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_i64list l;
  CHECK_OK(m2_run_ckpt_list(r, &l));
  CHECK(l.n == 1 && l.v[0] == N, "only checkpoint %d survives (have %d)", N, l.n);
  m2_i64list_free(&l);
  check_ckpt_n(r, N);
  m2_value v;
  CHECK_OK(m2_run_ckpt_get(r, N, "data_cursor", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == 123456789012345, "data_cursor");
  CHECK_FAILS(m2_run_ckpt_read(r, N + 10, paths[0]) == NULL, M2_ERR_INDEX, "no complete checkpoint at step 50");
  m2_series s;
  CHECK_OK(m2_run_read_series(r, "metrics", "loss", &s));
  CHECK(s.n >= N, "metrics flushed before the checkpoint survive (%lld)", (long long)s.n);
  bool ok = true;
  for (int64_t i = 0; i < s.n; i++) ok = ok && s.step[i] == i && s.value[i] == loss_at(i);
  CHECK(ok, "surviving metrics are right");
  m2_series_free(&s);
  CHECK_OK(m2_run_get_attr(r, "status", &v));
  CHECK(v.kind == M2_VAL_STR && !strcmp(v.s, "running"), "status still says running");
  m2_value_free(&v);
  CHECK_OK(m2_run_close(r));
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  CHECK_OK(m2_inspect(path, f));
  fclose(f);
  CHECK(buf && strstr(buf, "killed or crashed"), "inspect tells a dead run from a live one");
  CHECK(buf && strstr(buf, "checkpoints (1): 40"), "inspect lists checkpoint 40");
  free(buf);

  /* incomplete checkpoints on disk: readers skip them, a resuming writer deletes them */
  plant_incomplete(path);
  CHECK(count_links(path, "/checkpoints") == 3, "3 links under /checkpoints");
  r = m2_run_open(path, NULL);
  CHECK(r && m2_run_ckpt_list(r, &l) == M2_OK && l.n == 1 && l.v[0] == N, "readers see only complete checkpoints");
  m2_i64list_free(&l);
  CHECK_FAILS(m2_run_ckpt_read(r, 99, "w") == NULL, M2_ERR_INDEX, "no complete checkpoint at step 99");
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  ro.keep_last = 3;
  r = m2_run_open(path, &ro);
  CHECK_NOTNULL(r);
  if (!r) return;
  int64_t last = -1;
  CHECK_OK(m2_run_ckpt_latest(r, &last));
  CHECK(last == N, "resume from %d", N);
  CHECK_OK(m2_run_truncate(r, last));
  for (int st = N + 1; st < N + 10; st++) CHECK_OK(m2_run_log(r, "metrics", "loss", st, loss_at(st)));
  m2_tensor *t[NT];
  make_tensors(N + 10, t);
  m2_ckpt_tensor ct[NT];
  for (int i = 0; i < NT; i++) ct[i] = (m2_ckpt_tensor){paths[i], t[i]};
  CHECK_OK(m2_run_ckpt_write(r, N + 10, ct, NT, NULL, 0));
  free_tensors(t);
  CHECK_OK(m2_run_set_status(r, "done"));
  CHECK_OK(m2_run_close(r));
  CHECK(count_links(path, "/checkpoints") == 2, "junk deleted on resume, two checkpoints left");
  r = m2_run_open(path, NULL);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK(m2_run_ckpt_list(r, &l) == M2_OK && l.n == 2 && l.v[0] == N && l.v[1] == N + 10, "checkpoints 40 and 50");
  m2_i64list_free(&l);
  check_ckpt_n(r, N);
  check_ckpt_n(r, N + 10);
  CHECK_OK(m2_run_read_series(r, "metrics", "loss", &s));
  ok = s.n == N + 10;
  for (int64_t i = 0; i < s.n && ok; i++) ok = s.step[i] == i && s.value[i] == loss_at(i);
  CHECK(ok, "loss after resume: %lld entries, steps 0..49 once each", (long long)s.n);
  m2_series_free(&s);
  m2_run_close(r);
}

/* ---------------- (2) killed while appending (SWMR) ---------------- */

static void test_append_crash(void) {
  const char *path = g_path[1];
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    m2_run_opts o = {0};
    o.mode = M2_RUN_CREATE;
    m2_run *r = m2_run_open(path, &o);
    if (!r) _exit(10);
    for (int s = 0; s < 100; s++) {
      if (m2_run_log(r, "metrics", "loss", s, loss_at(s)) != M2_OK) _exit(11);
      if (s % 10 == 9 && m2_run_flush(r) != M2_OK) _exit(12);
    }
    m2_run_log(r, "metrics", "loss", 100, 0); /* buffered, never flushed */
    raise(SIGKILL);
    _exit(20);
  }
  int ws = 0;
  waitpid(pid, &ws, 0);
  CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "child killed itself");
  /* SWMR flags (write + SWMR write) are left set: SWMR readers open it without any repair */
  m2_run_opts o = {0};
  o.no_repair = true;
  o.open_timeout = 0.5;
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  m2_series s;
  CHECK(r && m2_run_read_series(r, "metrics", "loss", &s) == M2_OK && s.n == 100 && s.step[99] == 99 &&
            s.value[99] == loss_at(99),
        "the 100 flushed entries are there");
  m2_series_free(&s);
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  r = m2_run_open(path, &ro);
  CHECK_NOTNULL(r);
  CHECK(r && m2_run_log(r, "metrics", "loss", 100, 0.25) == M2_OK, "log after resume");
  CHECK_OK(m2_run_close(r));
  r = m2_run_open(path, NULL);
  CHECK(r && m2_run_read_series(r, "metrics", "loss", &s) == M2_OK && s.n == 101 && s.value[100] == 0.25,
        "resumed run appends");
  m2_series_free(&s);
  m2_run_close(r);
}

/* ---------------- (3) a live reader ---------------- */

#define WRITER_SECONDS 1.5

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void child_writer(const char *path) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.flush_interval = 0.02;
  o.keep_last = 1;
  o.no_fsync = true;
  m2_run *r = m2_run_open(path, &o);
  if (!r) _exit(10);
  double t0 = now_s();
  bool late = false, ckpt = false;
  m2_tensor *t[NT];
  make_tensors(7, t);
  int64_t s = 0;
  for (; now_s() - t0 < WRITER_SECONDS; s++) {
    if (m2_run_log(r, "metrics", "loss", s, loss_at(s)) != M2_OK) _exit(11);
    if (m2_run_log(r, "metrics", "lr", s, 1e-3) != M2_OK) _exit(12);
    if (!late && now_s() - t0 > 0.5) late = true; /* a new series: one switch to EXCLUSIVE */
    if (late && m2_run_log(r, "eval", "acc", s, 0.5) != M2_OK) _exit(13);
    if (!ckpt && now_s() - t0 > 0.9) { /* a checkpoint: another switch */
      ckpt = true;
      m2_ckpt_tensor ct[NT];
      for (int i = 0; i < NT; i++) ct[i] = (m2_ckpt_tensor){paths[i], t[i]};
      if (m2_run_ckpt_write(r, s, ct, NT, NULL, 0) != M2_OK) _exit(14);
    }
    usleep(500);
  }
  if (m2_run_set_attr(r, "steps_done", m2_vi64(s)) != M2_OK) _exit(15);
  if (m2_run_set_status(r, "done") != M2_OK) _exit(16);
  if (m2_run_close(r) != M2_OK) _exit(17);
  free_tensors(t);
  _exit(0);
}

/* One raw SWMR read of /metrics/loss: 1 = consistent, 0 = could not open now, -1 = inconsistent. */
static int raw_read(const char *path, int64_t *n_out) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  H5Pset_file_locking(fapl, 0, 1);
  H5Pset_metadata_read_attempts(fapl, 26);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl);
  H5Pclose(fapl);
  if (f < 0) return 0;
  int res = 0;
  hid_t ds = H5Dopen2(f, "/metrics/loss/step", H5P_DEFAULT), dv = H5Dopen2(f, "/metrics/loss/value", H5P_DEFAULT);
  if (ds >= 0 && dv >= 0) {
    hid_t ss = H5Dget_space(ds);
    hsize_t ns = 0, nv = 0;
    H5Sget_simple_extent_dims(ss, &ns, NULL);
    hid_t sv = H5Dget_space(dv); /* the value extent is read after the step extent */
    H5Sget_simple_extent_dims(sv, &nv, NULL);
    res = nv >= ns ? 1 : -1; /* value is extended first: never shorter than step */
    if (res == 1 && ns > 0) {
      int64_t *st = malloc(sizeof(int64_t) * ns);
      double *va = malloc(sizeof(double) * ns);
      hsize_t off = 0;
      hid_t ms = H5Screate_simple(1, &ns, NULL);
      H5Sselect_hyperslab(ss, H5S_SELECT_SET, &off, NULL, &ns, NULL);
      H5Sselect_hyperslab(sv, H5S_SELECT_SET, &off, NULL, &ns, NULL);
      if (H5Dread(ds, H5T_NATIVE_INT64, ms, ss, H5P_DEFAULT, st) < 0 ||
          H5Dread(dv, H5T_NATIVE_DOUBLE, ms, sv, H5P_DEFAULT, va) < 0)
        res = 0;
      for (hsize_t i = 0; i < ns && res == 1; i++)
        if (st[i] != (int64_t)i || va[i] != loss_at((int64_t)i)) res = -1; /* monotone steps, right values */
      H5Sclose(ms);
      free(st);
      free(va);
    }
    *n_out = (int64_t)ns;
    H5Sclose(ss);
    H5Sclose(sv);
  }
  if (ds >= 0) H5Dclose(ds);
  if (dv >= 0) H5Dclose(dv);
  H5Fclose(f);
  H5Eclear2(H5E_DEFAULT);
  return res;
}

static void test_live_reader(void) {
  const char *path = g_path[2];
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) child_writer(path);
  int raw_ok = 0, raw_busy = 0, raw_bad = 0, api_ok = 0, api_busy = 0, api_bad = 0, grew = 0;
  int64_t last_n = -1;
  int ws = 0;
  bool done = false;
  double t0 = now_s();
  while (!done && now_s() - t0 < 30) {
    done = waitpid(pid, &ws, WNOHANG) == pid;
    struct stat sb;
    if (stat(path, &sb) != 0) {
      usleep(2000);
      continue;
    }
    int64_t n = -1;
    int rr = raw_read(path, &n);
    if (rr == 1) {
      raw_ok++;
      if (n > last_n) grew += last_n >= 0;
      if (n < last_n) raw_bad++; /* never shrinks */
      last_n = n > last_n ? n : last_n;
    } else if (rr == 0) raw_busy++;
    else raw_bad++;
    /* the same through the API (it retries while the writer is EXCLUSIVE) */
    m2_run_opts o = {0};
    o.open_timeout = 5;
    m2_run *r = m2_run_open(path, &o);
    if (!r) {
      api_busy++; /* created but not yet a run file */
    } else {
      m2_series s;
      if (m2_run_read_series(r, "metrics", "loss", &s) == M2_OK) {
        bool ok = true;
        for (int64_t i = 0; i < s.n && ok; i++) ok = s.step[i] == i && s.value[i] == loss_at(i);
        if (ok) api_ok++;
        else api_bad++;
        m2_series_free(&s);
      } else {
        api_busy++; /* no /metrics/loss before the first flush */
      }
      m2_run_close(r);
    }
    usleep(3000);
  }
  if (!done) waitpid(pid, &ws, 0);
  printf("live reader: raw SWMR reads %d consistent, %d retried, %d inconsistent; API reads %d ok, %d not yet, %d bad; "
         "grew %d times\n",
         raw_ok, raw_busy, raw_bad, api_ok, api_busy, api_bad, grew);
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "writer exited cleanly (status %d)", ws);
  CHECK(raw_bad == 0 && api_bad == 0, "no inconsistent read");
  CHECK(raw_ok >= 10 && api_ok >= 10, "enough reads succeeded while the writer ran");
  CHECK(grew >= 5, "readers saw the series grow (%d)", grew);
  /* after the writer: everything is there */
  m2_run *r = m2_run_open(path, NULL);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_value v;
  CHECK_OK(m2_run_get_attr(r, "steps_done", &v));
  int64_t total = v.i;
  m2_series s;
  CHECK_OK(m2_run_read_series(r, "metrics", "loss", &s));
  CHECK(s.n == total && total > 100, "all %lld steps on disk", (long long)total);
  m2_series_free(&s);
  CHECK_OK(m2_run_read_series(r, "eval", "acc", &s));
  CHECK(s.n > 0, "the series created mid-run is there");
  m2_series_free(&s);
  m2_i64list l;
  CHECK(m2_run_ckpt_list(r, &l) == M2_OK && l.n == 1, "the mid-run checkpoint is there");
  m2_i64list_free(&l);
  m2_run_close(r);
  int64_t n_final = -1; /* (after closing: one process opens a file with one set of properties) */
  CHECK(raw_read(path, &n_final) == 1 && n_final == total, "step and value end with equal length");
}

/* ---------------- (4) killed at random moments ---------------- */

static int g_unborn; /* trials killed before the run file's first flush */

/* The checks of one killed trial's file; returns the number of problems. *has_ckpt: a checkpoint was found. A writer
 * killed before its first flush leaves no file or an empty one (creation is journaled too): opening it must say so. */
static int check_killed(const char *path, int k, bool *has_ckpt) {
  int bad = 0;
  *has_ckpt = false;
  struct stat sb;
  const bool missing = stat(path, &sb) != 0;
  m2_run *r = m2_run_open(path, NULL);
  if (!r) {
    if (missing || strstr(m2_errmsg(), "before its first flush")) { /* never got a valid first flush: no run */
      g_unborn++;
      return 0;
    }
    fprintf(stderr, "trial %d: %s\n", k, m2_errmsg());
    return 1;
  }
  int64_t last;
  if (m2_run_ckpt_latest(r, &last) == M2_OK) {
    *has_ckpt = true;
    for (int i = 0; i < 2; i++) {
      m2_tensor *t = m2_run_ckpt_read(r, last, i ? "optim/exp_avg/w" : "params/w");
      bool ok = t && m2_numel(t) == 128 * 256;
      for (int64_t j = 0; ok && j < m2_numel(t); j++) ok = ((float *)m2_data(t))[j] == (float)last;
      if (!ok) {
        fprintf(stderr, "trial %d: checkpoint %lld: %s\n", k, (long long)last, m2_errmsg());
        bad++;
      }
      m2_release(t);
    }
  }
  m2_series s;
  if (m2_run_read_series(r, "metrics", "loss", &s) == M2_OK) {
    for (int64_t i = 0; i < s.n; i++)
      if (s.step[i] != i || s.value[i] != loss_at(i)) {
        bad++;
        break;
      }
    m2_series_free(&s);
  }
  m2_run_close(r);
  m2_run_opts ro = {0};
  ro.mode = M2_RUN_RESUME;
  r = m2_run_open(path, &ro);
  if (!r || m2_run_log(r, "metrics", "loss", 100000, 1) != M2_OK || m2_run_close(r) != M2_OK) {
    fprintf(stderr, "trial %d: resume: %s\n", k, m2_errmsg());
    bad++;
  }
  return bad;
}

static void test_random_kills(void) {
  const char *path = g_path[3];
  unsigned seed = 12345;
  int bad = 0, checked = 0, waited = 0, waited_ckpt = 0, in_window = 0, damaged = 0, journals = 0;
  const int TRIALS = 8;
  /* shared with the children: [0] = 1 while a flush outside SWMR mode runs, [1] = checkpoints written */
  volatile int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(shared != MAP_FAILED, "shared page for the children's progress");
  if (shared == MAP_FAILED) return;
  for (int k = 0; k < TRIALS; k++) {
    unlink(path);
    shared[0] = shared[1] = 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      m2_rf_flush_window = &shared[0];
      m2_run_opts o = {0};
      o.mode = M2_RUN_CREATE;
      o.keep_last = 2;
      o.flush_interval = 0.005;
      m2_run *r = m2_run_open(path, &o);
      if (!r) _exit(3);
      m2_tensor *w = m2_empty(M2_F32, M2_DEV_CPU, 2, (int64_t[]){128, 256});
      for (int s = 0;; s++) {
        m2_run_log(r, "metrics", "loss", s, loss_at(s));
        char name[16];
        snprintf(name, sizeof name, "m%d", s % 40); /* new series now and then: EXCLUSIVE switches */
        if (s < 400) m2_run_log(r, "eval", name, s, 1);
        if (s % 20 == 19) {
          m2_fill_(w, s);
          m2_ckpt_tensor t[] = {{"params/w", w}, {"optim/exp_avg/w", w}};
          if (m2_run_ckpt_write(r, s, t, 2, NULL, 0) != M2_OK) _exit(4);
          shared[1]++;
        }
      }
    }
    /* odd trials: the kill comes after the first checkpoint (whatever the machine's load), even ones anywhere */
    const bool wait_ckpt = k % 2 == 1;
    for (int ms = 0; wait_ckpt && shared[1] < 1 && ms < 20000; ms++) usleep(1000);
    seed = seed * 1103515245u + 12345u;
    usleep(20000 + (seed >> 8) % 250000);
    kill(pid, SIGKILL);
    int ws = 0;
    waitpid(pid, &ws, 0);
    if (!WIFSIGNALED(ws)) {
      fprintf(stderr, "trial %d: the writer exited by itself (status %d)\n", k, ws);
      bad++;
      continue;
    }
    bool has_ckpt = false;
    journals += m2_rf_journal_exists(path); /* killed inside a commit: the next open replays or drops it */
    if (shared[0]) {
      /* killed inside a journaled flush: the same checks, in a child (a damaged file could crash HDF5) */
      in_window++;
      fflush(NULL);
      pid_t c = fork();
      if (c == 0) _exit(check_killed(path, k, &has_ckpt) ? 1 : 0);
      int cs = 0;
      waitpid(c, &cs, 0);
      if (!WIFEXITED(cs) || WEXITSTATUS(cs) != 0) {
        fprintf(stderr, "trial %d: killed inside a flush: the checks failed (status %d)\n", k, cs);
        damaged++;
      }
      continue;
    }
    checked++;
    bad += check_killed(path, k, &has_ckpt);
    if (wait_ckpt) waited++, waited_ckpt += has_ckpt;
  }
  printf("random kills: %d trials; %d outside a flush (%d bad; %d of the %d killed after a first checkpoint found "
         "one); %d inside a journaled flush (%d bad); %d left a journal; %d before the first flush (an empty file)\n",
         TRIALS, checked, bad, waited_ckpt, waited, in_window, damaged, journals, g_unborn);
  CHECK(bad == 0, "%d random kills outside a flush left a bad file", bad);
  CHECK(damaged == 0, "%d random kills inside a journaled flush left a bad file", damaged);
  CHECK(waited_ckpt == waited, "every trial killed after its first checkpoint finds one (%d of %d)", waited_ckpt,
        waited);
  munmap((void *)shared, 4096);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/m2rfc-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the raw reads below expect failures while the writer switches */
  for (int i = 0; i < 4; i++) snprintf(g_path[i], sizeof g_path[i], "%s/run%d.h5", g_dir, i);
  test_ckpt_crash();
  test_append_crash();
  test_live_reader();
  test_random_kills();
  CHECK(m2_live_tensors() == 0, "leaked %ld tensors", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked %ld nodes", m2_live_nodes());
  for (int i = 0; i < 4; i++) unlink(g_path[i]);
  rmdir(g_dir);
  return check_finish("test_runfile_crash");
}
