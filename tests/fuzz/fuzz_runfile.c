/* fuzz_runfile.c — libFuzzer target for the run-file readers (core/runfile): every input is written as a run file in
 * a private temporary directory and goes through what `m2lab inspect` and `m2lab resume` do with one, through the C
 * API (no Lua, no training):
 *   1. m2_inspect_any (a run file or a sweep index) into /dev/null;
 *   2. a reader: root attributes, every metric and eval series with its stats, the checkpoint lists (intact and
 *      damaged), and of up to 4 checkpoints their attributes, tensor infos, tensors (small ones) and m2_run_ckpt_verify;
 *   3. a resume (M2_RUN_RESUME, keep_last 2): the newest checkpoint that verifies, as m2.train picks it, truncate the
 *      series after it, log, write a new checkpoint (pruning passes the old ones), set the status, close; then a
 *      reader and inspect again.
 * Errors are expected (most mutated files are damaged); findings are crashes, sanitizer reports, an HDF5 object left
 * open after the input (H5Fget_obj_count), or a tensor left live.
 * Seeds: tests/fuzz/corpus_runfile/ (small files written by this program: M2_FUZZ_MAKE_SEEDS=DIR writes them and
 * exits; tests/fuzz/fuzz.sh adds a real run from experiments/tiny_lm.lua when m2lab is built). Run it through
 * tests/fuzz/fuzz.sh (CTest fuzz_runfile). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <inttypes.h>
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "m2.h"
#include "runfile/runfile.h"
#include "runfile/runfile_int.h"
#include "runfile/runfile_sweep.h"

static char g_dir[64], g_path[128];
static FILE *g_null;
static int g_verbose; /* M2_FUZZ_VERBOSE=1: print the error of every failing call of the resume pass */
#define NOTE(call)                                                                     \
  do {                                                                                 \
    m2_status note_st_ = (call);                                                       \
    if (note_st_ != M2_OK && g_verbose) fprintf(stderr, "%s: %s\n", #call, m2_errmsg()); \
  } while (0)

#define MAX_CKPTS 4
#define MAX_TENSORS 16
#define MAX_READ_NUMEL (1 << 20)

static const m2_device CPU = {M2_CPU, 0};

/* Speed: a reader retries a metadata read whose checksum fails 26 times, with back-off (runfile_h5.c: for a live
 * writer's half-written metadata), about 67 ms for every damaged object, most of a damaged input's time. Here every
 * such read gets one attempt: this definition takes the place of HDF5's setter for the whole program. */
herr_t H5Pset_metadata_read_attempts(hid_t plist_id, unsigned attempts) {
  static herr_t (*real)(hid_t, unsigned);
  (void)attempts;
  if (!real) real = (herr_t(*)(hid_t, unsigned))dlsym(RTLD_NEXT, "H5Pset_metadata_read_attempts");
  return real ? real(plist_id, 1) : -1;
}

/* After each pass: no HDF5 object may stay open, else name their types and abort. One exception, a known HDF5 1.10.8
 * failure that is reported, not fixed, here (README, "Testing"): when flushing a writer's metadata at close fails on a
 * damaged file (a checksum error, "ring type mismatch"), H5Fclose fails and leaves a half-closed file in HDF5's ID
 * table that no call can touch or close again (H5Fget_name, H5Fclose and HDF5's own clean-up at exit crash on it).
 * After a pass whose m2_run_close failed, the objects left are counted as that (g_halfclosed), the next inputs use a
 * new file name, and HDF5's clean-up at exit is off (H5dont_atexit). */
static int g_close_failed;     /* m2_run_close failed in this pass */
static ssize_t g_known;        /* objects left by such closes so far */
static long g_halfclosed, g_inputs;

static void check_closed(const char *pass) {
  ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (n == g_known) return;
  if (n > g_known && g_close_failed) {
    g_known = n;
    g_halfclosed++;
    snprintf(g_path, sizeof g_path, "%s/run-%ld.h5", g_dir, g_inputs);
    return;
  }
  fprintf(stderr, "fuzz_runfile: %zd HDF5 objects are still open after the %s pass (%zd expected):\n", n, pass,
          g_known);
  hid_t ids[16];
  ssize_t k = H5Fget_obj_ids(H5F_OBJ_ALL, H5F_OBJ_ALL, 16, ids);
  for (ssize_t i = 0; i < k; i++) fprintf(stderr, "  id %lld, type %d\n", (long long)ids[i], (int)H5Iget_type(ids[i]));
  abort();
}

static long g_gheap_guarded;
static void report(void) {
  if (g_gheap_guarded)
    fprintf(stderr, "fuzz_runfile: %ld inputs held a global heap HDF5 1.10.8 loops on or reads past: read through the "
            "guarded string reader\n", g_gheap_guarded);
  if (g_halfclosed)
    fprintf(stderr, "fuzz_runfile: %ld of %ld inputs left HDF5 a half-closed file after a failed close (known, README)\n",
            g_halfclosed, g_inputs);
}

/* ---------------- the reader pass ---------------- */

static void read_attrs(m2_run *r) {
  m2_strlist names = {0};
  if (m2_run_attr_names(r, false, &names) == M2_OK) {
    for (int i = 0; i < names.n; i++) {
      m2_value v = {0};
      if (m2_run_get_attr(r, names.v[i], &v) == M2_OK) m2_value_free(&v);
    }
  }
  m2_strlist_free(&names);
}

static void read_series(m2_run *r, const char *group) {
  m2_strlist names = {0};
  if (m2_run_list_series(r, group, &names) == M2_OK) {
    for (int i = 0; i < names.n; i++) {
      m2_series s = {0};
      if (m2_run_read_series(r, group, names.v[i], &s) == M2_OK) m2_series_free(&s);
      m2_series_stats st;
      m2_run_series_stats(r, group, names.v[i], &st);
    }
  }
  m2_strlist_free(&names);
}

static void read_ckpt(m2_run *r, int64_t step) {
  m2_strlist names = {0};
  if (m2_run_ckpt_attr_names(r, step, &names) == M2_OK) {
    for (int i = 0; i < names.n; i++) {
      m2_value v = {0};
      if (m2_run_ckpt_get(r, step, names.v[i], &v) == M2_OK) m2_value_free(&v);
    }
  }
  m2_strlist_free(&names);
  if (m2_run_ckpt_tensors(r, step, &names) == M2_OK) {
    for (int i = 0; i < names.n && i < MAX_TENSORS; i++) {
      m2_dtype dt;
      int ndim;
      int64_t shape[M2_MAX_DIMS];
      if (m2_run_ckpt_info(r, step, names.v[i], &dt, &ndim, shape) != M2_OK) continue;
      int64_t numel = 1;
      for (int d = 0; d < ndim && numel <= MAX_READ_NUMEL; d++) numel *= shape[d] > 0 ? shape[d] : 1;
      if (numel > MAX_READ_NUMEL) continue;
      m2_release(m2_run_ckpt_read(r, step, names.v[i]));
      /* into a tensor of the stated shape, converting to f32 */
      m2_tensor *t = m2_zeros(M2_F32, CPU, ndim, shape);
      if (t) m2_run_ckpt_read_into(r, step, names.v[i], t);
      m2_release(t);
    }
  }
  m2_strlist_free(&names);
  m2_run_ckpt_verify(r, step);
}

static void reader_pass(void) {
  m2_run_opts o = {.mode = M2_RUN_READ, .open_timeout = 0.05};
  m2_run *r = m2_run_open(g_path, &o);
  if (!r) return;
  read_attrs(r);
  read_series(r, "metrics");
  read_series(r, "eval");
  m2_i64list steps = {0};
  m2_strlist damaged = {0};
  m2_run_ckpt_damaged(r, &damaged);
  m2_strlist_free(&damaged);
  int64_t latest;
  m2_run_ckpt_latest(r, &latest);
  if (m2_run_ckpt_list(r, &steps) == M2_OK)
    for (int i = steps.n - 1; i >= 0 && i >= steps.n - MAX_CKPTS; i--) read_ckpt(r, steps.v[i]);
  m2_i64list_free(&steps);
  if (m2_run_close(r) != M2_OK) g_close_failed = 1;
}

/* ---------------- the resume pass ---------------- */

static void resume_pass(void) {
  m2_run_opts o = {.mode = M2_RUN_RESUME, .keep_last = 2, .no_fsync = true, .flush_interval = 1e9};
  m2_run *r = m2_run_open(g_path, &o);
  if (!r) {
    if (g_verbose) fprintf(stderr, "resume open: %s\n", m2_errmsg());
    return;
  }
  /* the checkpoint a resume continues from: the newest that reads back whole (lua/m2/train.lua, pick_checkpoint) */
  int64_t from = 0;
  m2_i64list steps = {0};
  if (m2_run_ckpt_list(r, &steps) == M2_OK) {
    for (int i = steps.n - 1; i >= 0; i--) {
      if (m2_run_ckpt_verify(r, steps.v[i]) == M2_OK) {
        from = steps.v[i];
        break;
      }
    }
  }
  m2_i64list_free(&steps);
  m2_strlist damaged = {0};
  m2_run_ckpt_damaged(r, &damaged);
  m2_strlist_free(&damaged);
  m2_value v = {0};
  if (m2_run_get_attr(r, "resume_count", &v) == M2_OK) m2_value_free(&v);
  NOTE(m2_run_truncate(r, from));
  NOTE(m2_run_log(r, "metrics", "loss", from + 1, 0.5));
  m2_tensor *t = m2_zeros_v(M2_F32, CPU, 2, (int64_t)2, (int64_t)3);
  if (t) {
    m2_ckpt_tensor ct = {"params/w", t};
    m2_kv kv = {"data_cursor", m2_vi64(from + 1)};
    NOTE(m2_run_ckpt_write(r, from + 1, &ct, 1, &kv, 1));
  }
  m2_release(t);
  NOTE(m2_run_set_status(r, "done"));
  m2_status cst = m2_run_close(r);
  if (cst != M2_OK) {
    g_close_failed = 1;
    if (g_verbose) fprintf(stderr, "m2_run_close: %s\n", m2_errmsg());
  }
}

/* ---------------- seeds ---------------- */

/* A small run: config attributes, two metric series and one eval series, checkpoints 2 and 4 of three tensors (f32,
 * bf16, i64) with attributes; `ckpts` = 0 leaves them out. */
static int make_run(const char *path, int ckpts, bool no_time) {
  m2_run_opts o = {.mode = M2_RUN_CREATE, .overwrite = true, .no_fsync = true, .no_time = no_time, .keep_last = 0,
                   .script = "local m2 = require \"m2\"\n", .config_json = "{\"lr\":0.01,\"steps\":4}"};
  m2_run *r = m2_run_open(path, &o);
  if (!r) return 1;
  m2_kv cfg[] = {{"lr", m2_vf64(0.01)}, {"steps", m2_vi64(4)}, {"arch", m2_vstr("M")}, {"tie", m2_vbool(false)}};
  m2_run_set_config(r, cfg, 4);
  for (int s = 1; s <= 4; s++) {
    m2_run_log(r, "metrics", "loss", s, 2.0 / s);
    m2_run_log(r, "metrics", "lr", s, 1e-2);
    if (s % 2 == 0) m2_run_log(r, "eval", "acc", s, 0.25 * s);
  }
  m2_run_set_goal(r, "eval", "acc", "max");
  for (int c = 1; c <= ckpts; c++) {
    m2_tensor *a = m2_zeros_v(M2_F32, CPU, 2, (int64_t)2, (int64_t)3);
    m2_tensor *b = m2_zeros_v(M2_BF16, CPU, 1, (int64_t)4);
    m2_tensor *i = m2_zeros_v(M2_I64, CPU, 1, (int64_t)3);
    m2_fill_(a, 0.5 * c), m2_fill_(b, -1.0), m2_fill_(i, 7);
    m2_ckpt_tensor ts[] = {{"params/embed.weight", a}, {"optim/exp_avg/embed.weight", b}, {"data/ids", i}};
    m2_kv at[] = {{"data_cursor", m2_vi64(2 * c)}, {"optim_steps", m2_vi64(2 * c)}, {"rng_seed", m2_vi64(0)},
                  {"train_time", m2_vf64(0.25)}, {"schedule_json", m2_vstr("{\"kind\":\"cosine\"}")}};
    m2_status st = m2_run_ckpt_write(r, 2 * c, ts, 3, at, 5);
    m2_release(a), m2_release(b), m2_release(i);
    if (st != M2_OK) break;
  }
  NOTE(m2_run_set_status(r, "done"));
  return m2_run_close(r) != M2_OK;
}

static int make_sweep(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/sweep_index.h5", dir);
  m2_kv h1[] = {{"lr", m2_vf64(0.01)}, {"arch", m2_vstr("M")}}, h2[] = {{"lr", m2_vf64(0.1)}, {"arch", m2_vstr("A")}};
  m2_sweep_member mem[] = {{"lr=0.01", "run_small.h5", "done", 0, 2, h1}, {"lr=0.1", "missing.h5", "pending", -1, 2, h2}};
  char *keys[] = {"lr", "arch"};
  m2_sweep_index ix = {"seed", "experiments/tiny_lm.lua", "return {}", "2026-01-01T00:00:00Z", 2, keys, 2, mem};
  return m2_sweep_index_write(path, &ix) != M2_OK;
}

static void make_seeds(const char *dir) {
  char path[512];
  int bad = 0;
  snprintf(path, sizeof path, "%s/run_small.h5", dir);
  bad |= make_run(path, 2, false);
  snprintf(path, sizeof path, "%s/run_no_ckpt.h5", dir);
  bad |= make_run(path, 0, true);
  bad |= make_sweep(dir);
  if (bad) fprintf(stderr, "fuzz_runfile: seeds: %s\n", m2_errmsg());
  exit(bad);
}

/* ---------------- damaged global heaps ---------------- */

/* Damaged global heaps (the strings' storage, unchecksummed) are not skipped: HDF5 1.10.8 loops on or copies past
 * them, and the readers read every string in a child process with a time limit (core/runfile/runfile_vlen.c). That
 * child meets HDF5's crash on purpose: it dies quietly (default signal actions, its stderr to /dev/null, no
 * sanitizer death callback, so libFuzzer writes no crash artifact from it); the parent's clean error is what counts,
 * and a crash or hang in the parent is a finding as before.
 * Speed: a fork per string read makes an input tens of times slower under ASan (a run file has ~30 strings, read in
 * each of the 4 passes), so only inputs that hold a collection HDF5 would loop on or read past go through that child
 * (counted in g_gheap_guarded); the others read their strings in this process (m2_rf_strings_in_process). The check:
 * every "GCOL" signature in the input, its layout: "GCOL", version 1, 3 reserved, u64 collection size, then objects
 * of u16 index, u16 references, 4 reserved, u64 size and the data padded to 8 (index 0: free space, its size
 * counting its header). An input it misses that still trips HDF5 is a finding here (the product forks always). */
static void quiet_string_reader(void) {
  __sanitizer_set_death_callback(NULL);
  int fd = open("/dev/null", O_WRONLY);
  if (fd >= 0) dup2(fd, 2);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}

static bool gheap_suspect(const uint8_t *d, size_t n) {
  for (const uint8_t *g = d; n >= 16 && (g = memmem(g, n - (size_t)(g - d), "GCOL\1", 5)) != NULL; g++) {
    size_t room = n - (size_t)(g - d);
    if (room < 16) break;
    uint64_t size, at = 16;
    memcpy(&size, g + 8, 8);
    while (at < size && size - at >= 16 && at + 16 <= room) {
      uint16_t idx;
      uint64_t osz;
      memcpy(&idx, g + at, 2);
      memcpy(&osz, g + at + 8, 8);
      if (idx > 0 && osz > size) return true; /* an object larger than its collection: H5HG_read copies it anyway
                                                   (memcpy past the collection's buffer; found by this target) */
      uint64_t need = idx > 0 ? 16 + ((osz + 7) & ~(uint64_t)7) : osz;
      if (need == 0) return true;
      if (need > size - at) return true; /* an object running past its collection's end: the same copy */
      at += need;
    }
  }
  return false;
}

/* ---------------- libFuzzer ---------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag;
  if (ftw->level > 0) remove(path);
  return 0;
}
static void remove_dir(void) {
  nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *seeds = getenv("M2_FUZZ_MAKE_SEEDS");
  if (seeds && seeds[0]) make_seeds(seeds);
  g_verbose = getenv("M2_FUZZ_VERBOSE") && getenv("M2_FUZZ_VERBOSE")[0] == '1';
  m2_rf_string_reader_hook = quiet_string_reader;
  /* a looping heap: 0.25 s a string read, not 20 (an input has 60 s; a read cut short is only an error here) */
  setenv("M2_RUNFILE_STRING_TIMEOUT", "0.25", 0);
  snprintf(g_dir, sizeof g_dir, "/tmp/m2fuzz-runfile-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("fuzz_runfile: temporary directory");
    exit(1);
  }
  snprintf(g_path, sizeof g_path, "%s/run.h5", g_dir);
  atexit(remove_dir);
  atexit(report);
  H5dont_atexit();
  g_null = fopen("/dev/null", "w");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1 << 20)) return -1;
  m2_rf_strings_in_process = !gheap_suspect(data, size);
  if (!m2_rf_strings_in_process) g_gheap_guarded++;
  char extra[160];
  snprintf(extra, sizeof extra, "%s-journal", g_path); /* what a resume of the last input may have left */
  unlink(extra);
  g_inputs++;
  int fd = open(g_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) abort();
  for (size_t at = 0; at < size;) {
    ssize_t n = write(fd, data + at, size - at);
    if (n <= 0) abort();
    at += (size_t)n;
  }
  close(fd);
  g_close_failed = 0;
  m2_inspect_any(g_path, g_null);
  m2_clear_error();
  check_closed("inspect");
  g_close_failed = 0;
  reader_pass();
  m2_clear_error();
  check_closed("reader");
  g_close_failed = 0;
  resume_pass();
  m2_clear_error();
  check_closed("resume");
  g_close_failed = 0;
  reader_pass();
  m2_inspect_any(g_path, g_null);
  m2_clear_error();
  fflush(g_null);
  check_closed("second reader and inspect");
  g_close_failed = 0;
  /* nothing may outlive the input */
  if (m2_live_tensors() != 0) {
    fprintf(stderr, "fuzz_runfile: %ld tensors outlive the input\n", m2_live_tensors());
    abort();
  }
  return 0;
}
