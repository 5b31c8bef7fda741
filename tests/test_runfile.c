/* test_runfile.c — HDF5 run files: root attributes, metric and eval series with many appends
 * (across SWMR switches), checkpoints of random F32/F64/BF16/I32/I64 tensors with keep-last-2
 * pruning, bit-exact read back, resume, inspect output, space reuse, and clean errors for
 * missing / foreign / truncated / damaged files and unwritable paths. */
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* ---------------- what the test writes (kept to compare) ---------------- */

#define NSTEPS 300
#define NTENS 8
static const char *const metric_names[] = {"loss", "lr", "grad_norm"};
static double g_metric[3][NSTEPS];
static double g_tps[NSTEPS];     /* tokens_per_s, logged from step 150 */
static double g_acc[NSTEPS / 50 + 1];

typedef struct ckpt_expect {
  int64_t step;
  m2_tensor *t[NTENS];
  int64_t cursor, rng_offset;
  double scale;
} ckpt_expect;
static ckpt_expect g_ck[4];
static const char *const tensor_paths[NTENS] = {
    "params/blocks.0.mlp.up.weight", "params/blocks.0.mlp.up.bias", "optim/exp_avg/blocks.0.mlp.up.weight",
    "data/indices",                  "params/emb.bf16",             "scalars/temperature",
    "params/blocks.1.mixer.A_log",   "counts"};

static m2_tensor *rand_i64(m2_rng *rng, int ndim, const int64_t *shape) {
  m2_tensor *t = m2_empty(M2_I64, M2_DEV_CPU, ndim, shape);
  int64_t *p = m2_data(t);
  for (int64_t i = 0; i < m2_numel(t); i++) p[i] = (int64_t)m2_rng_u64(rng); /* full 64-bit range */
  return t;
}

static m2_tensor *rand_i32(m2_rng *rng, int ndim, const int64_t *shape) {
  m2_tensor *t = m2_empty(M2_I32, M2_DEV_CPU, ndim, shape);
  int32_t *p = m2_data(t);
  for (int64_t i = 0; i < m2_numel(t); i++) p[i] = (int32_t)m2_rng_u64(rng);
  return t;
}

static void make_ckpt(m2_rng *rng, ckpt_expect *e, int64_t step) {
  e->step = step;
  e->t[0] = m2_randn(rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){3, 5});
  e->t[1] = m2_randn(rng, M2_F32, M2_DEV_CPU, 1, (int64_t[]){5});
  e->t[2] = m2_randn(rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){3, 5});
  e->t[3] = rand_i64(rng, 1, (int64_t[]){7});
  m2_tensor *f = m2_randn(rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){4, 6});
  e->t[4] = m2_clone_raw(f, M2_BF16, M2_DEV_CPU);
  m2_release(f);
  e->t[5] = m2_scalar(M2_F64, M2_DEV_CPU, m2_rng_uniform(rng)); /* 0-d */
  e->t[6] = m2_randn(rng, M2_F64, M2_DEV_CPU, 3, (int64_t[]){2, 3, 4});
  e->t[7] = rand_i32(rng, 2, (int64_t[]){5, 2});
  e->cursor = (int64_t)m2_rng_u64(rng);
  e->rng_offset = step * 1000 + 7;
  e->scale = m2_rng_uniform(rng);
}

static bool same_bits(const m2_tensor *a, const m2_tensor *b) {
  if (!a || !b || a->dtype != b->dtype || !m2_same_shape(a, b) || a->ndim != b->ndim) return false;
  m2_tensor *ca = m2_clone_raw(a, a->dtype, M2_DEV_CPU), *cb = m2_clone_raw(b, b->dtype, M2_DEV_CPU);
  bool eq = memcmp(m2_data(ca), m2_data(cb), (size_t)m2_numel(a) * m2_dtype_size(a->dtype)) == 0;
  m2_release(ca);
  m2_release(cb);
  return eq;
}

static void put_ckpt(m2_run *r, ckpt_expect *e, bool log_inside) {
  CHECK_OK(m2_run_ckpt_begin(r, e->step));
  for (int i = 0; i < NTENS; i++) {
    if (i == 2) {
      /* a non-contiguous view is stored contiguously */
      m2_tensor *tt = m2_transpose(e->t[2], 0, 1);
      m2_tensor *view = m2_transpose(tt, 0, 1);
      CHECK_OK(m2_run_ckpt_put(r, tensor_paths[i], view));
      m2_release(view);
      m2_release(tt);
    } else {
      CHECK_OK(m2_run_ckpt_put(r, tensor_paths[i], e->t[i]));
    }
    if (log_inside && i == 3) CHECK_OK(m2_run_log(r, "metrics", "ckpt_marker", e->step, 1.0)); /* new series mid-checkpoint */
  }
  CHECK_OK(m2_run_ckpt_set(r, "data_cursor", m2_vi64(e->cursor)));
  CHECK_OK(m2_run_ckpt_set(r, "rng_offset", m2_vi64(e->rng_offset)));
  CHECK_OK(m2_run_ckpt_set(r, "loss_scale", m2_vf64(e->scale)));
  CHECK_OK(m2_run_ckpt_set(r, "optim_json", m2_vstr("{\"kind\":\"adamw\",\"betas\":[0.9,0.95]}")));
  CHECK_OK(m2_run_ckpt_set(r, "finished_epoch", m2_vbool(e->step == 300)));
  CHECK_FAILS(m2_run_ckpt_set(r, "step", m2_vi64(1)) != M2_OK, M2_ERR_VALUE, "set by m2lab");
  CHECK_FAILS(m2_run_ckpt_put(r, tensor_paths[0], e->t[0]) != M2_OK, M2_ERR_VALUE, "stored twice");
  CHECK_FAILS(m2_run_ckpt_put(r, "../evil", e->t[0]) != M2_OK, M2_ERR_VALUE, "bad tensor path");
  CHECK_FAILS(m2_run_ckpt_put(r, "params//x", e->t[0]) != M2_OK, M2_ERR_VALUE, "bad tensor path");
  CHECK_FAILS(m2_run_ckpt_begin(r, 5) != M2_OK, M2_ERR_VALUE, "still open");
  CHECK_OK(m2_run_ckpt_commit(r));
}

/* ---------------- 1. write a run ---------------- */

static const char *g_script = "-- s3 state tracking\nlocal m2 = require \"m2\"\nm2.train{steps = 300}\n";
static const char *g_config_json = "{\"lr\":0.003,\"steps\":300,\"model\":\"m2rnn\"}";

static void write_run(const char *path, m2_rng *rng) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.keep_last = 2;
  o.flush_interval = 0.01; /* many automatic flushes, some while APPEND */
  o.device = "cpu";
  o.script = g_script;
  o.config_json = g_config_json;
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK(m2_run_writable(r), "writable");
  const m2_kv cfg[] = {{"lr", m2_vf64(0.003)},
                       {"steps", m2_vi64(NSTEPS)},
                       {"model", m2_vstr("m2rnn")},
                       {"use_bias", m2_vbool(true)},
                       {"note", m2_vstr("red \x1b[31mtext\x1b[0m and a\nnewline")}};
  CHECK_OK(m2_run_set_config(r, cfg, 5));
  CHECK_FAILS(m2_run_set_attr(r, "format_version", m2_vi64(2)) != M2_OK, M2_ERR_VALUE, "format_version");
  CHECK_FAILS(m2_run_set_attr(r, "a/b", m2_vi64(2)) != M2_OK, M2_ERR_VALUE, "bad attribute name");
  CHECK_FAILS(m2_run_log(r, "foo", "loss", 0, 1) != M2_OK, M2_ERR_VALUE, "\"metrics\" or \"eval\"");
  CHECK_FAILS(m2_run_log(r, "metrics", "a/b", 0, 1) != M2_OK, M2_ERR_VALUE, "bad series name");
  CHECK_FAILS(m2_run_ckpt_put(r, "x", NULL) != M2_OK, M2_ERR_VALUE, "no checkpoint begun");
  CHECK_FAILS(m2_run_set_goal(r, "eval", "acc", "best") != M2_OK, M2_ERR_VALUE, "min\" or \"max");
  CHECK_OK(m2_run_set_goal(r, "eval", "acc", "max"));
  CHECK_OK(m2_run_set_goal(r, "metrics", "lr", "max"));

  /* an aborted checkpoint leaves nothing behind */
  CHECK_OK(m2_run_ckpt_begin(r, 1));
  CHECK_OK(m2_run_ckpt_put(r, "params/x", g_ck[0].t[0]));
  CHECK_OK(m2_run_ckpt_abort(r));

  int ck = 0;
  for (int s = 0; s < NSTEPS; s++) {
    for (int m = 0; m < 3; m++) {
      g_metric[m][s] = m == 1 ? 3e-3 * (1.0 - s / (double)NSTEPS) : 10.0 * m2_rng_uniform(rng);
      CHECK_OK(m2_run_log(r, "metrics", metric_names[m], s, g_metric[m][s]));
    }
    if (s >= 150) {
      g_tps[s] = 1e5 * m2_rng_uniform(rng);
      CHECK_OK(m2_run_log(r, "metrics", "tokens_per_s", s, g_tps[s]));
    }
    if (s % 50 == 0) {
      g_acc[s / 50] = m2_rng_uniform(rng);
      CHECK_OK(m2_run_log(r, "eval", "acc", s, g_acc[s / 50]));
    }
    if (s % 40 == 0) usleep(2000); /* let the flush interval pass now and then */
    if (s + 1 == 100 || s + 1 == 200 || s + 1 == 300) put_ckpt(r, &g_ck[ck++], s + 1 == 200);
  }
  m2_i64list l;
  CHECK_OK(m2_run_ckpt_list(r, &l));
  CHECK(l.n == 2 && l.v[0] == 200 && l.v[1] == 300, "keep-last-2 while writing: got %d checkpoints", l.n);
  m2_i64list_free(&l);
  /* the writer reads its own series (flushing first) */
  m2_series s;
  CHECK_OK(m2_run_read_series(r, "metrics", "loss", &s));
  CHECK(s.n == NSTEPS, "writer reads %lld loss entries", (long long)s.n);
  m2_series_free(&s);
  CHECK_OK(m2_run_set_status(r, "done"));
  CHECK_OK(m2_run_close(r));
}

/* ---------------- 2. read it back ---------------- */

static void check_attr_str(m2_run *r, const char *key, const char *want) {
  m2_value v;
  CHECK_OK(m2_run_get_attr(r, key, &v));
  CHECK(v.kind == M2_VAL_STR && v.s && strcmp(v.s, want) == 0, "attr %s = '%s', want '%s'", key,
        v.kind == M2_VAL_STR ? v.s : "(not a string)", want);
  m2_value_free(&v);
}

static void check_ckpt(m2_run *r, const ckpt_expect *e) {
  m2_strlist paths;
  CHECK_OK(m2_run_ckpt_tensors(r, e->step, &paths));
  CHECK(paths.n == NTENS, "checkpoint %lld has %d tensors", (long long)e->step, paths.n);
  for (int i = 0; i < NTENS; i++) {
    bool listed = false;
    for (int j = 0; j < paths.n; j++) listed |= strcmp(paths.v[j], tensor_paths[i]) == 0;
    CHECK(listed, "%s listed", tensor_paths[i]);
    m2_tensor *t = m2_run_ckpt_read(r, e->step, tensor_paths[i]);
    CHECK(t && same_bits(t, e->t[i]), "checkpoint %lld tensor %s bit-exact", (long long)e->step, tensor_paths[i]);
    m2_dtype dt;
    int nd;
    int64_t shape[M2_MAX_DIMS];
    CHECK_OK(m2_run_ckpt_info(r, e->step, tensor_paths[i], &dt, &nd, shape));
    CHECK(dt == e->t[i]->dtype && nd == e->t[i]->ndim, "info of %s", tensor_paths[i]);
    m2_release(t);
  }
  for (int j = 1; j < paths.n; j++) CHECK(strcmp(paths.v[j - 1], paths.v[j]) < 0, "tensor paths sorted");
  m2_strlist_free(&paths);
  m2_value v;
  CHECK_OK(m2_run_ckpt_get(r, e->step, "data_cursor", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == e->cursor, "data_cursor");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "rng_offset", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == e->rng_offset, "rng_offset");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "step", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == e->step, "step attribute");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "complete", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == 1, "complete attribute");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "loss_scale", &v));
  CHECK(v.kind == M2_VAL_F64 && memcmp(&v.f, &e->scale, 8) == 0, "loss_scale bit-exact");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "finished_epoch", &v));
  CHECK(v.kind == M2_VAL_BOOL && v.i == (e->step == 300), "bool attribute");
  CHECK_OK(m2_run_ckpt_get(r, e->step, "optim_json", &v));
  CHECK(v.kind == M2_VAL_STR && strstr(v.s, "adamw"), "json attribute");
  m2_value_free(&v);
}

static void read_run(const char *path, bool resumed) {
  int64_t latest = resumed ? 320 : 300;
  m2_run *r = m2_run_open(path, NULL); /* NULL opts: read */
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK(!m2_run_writable(r), "read-only");
  m2_value v;
  CHECK_OK(m2_run_get_attr(r, "format_version", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == M2_RUNFILE_FORMAT, "format_version");
  check_attr_str(r, "script", g_script);
  check_attr_str(r, "config_json", g_config_json);
  check_attr_str(r, "model", "m2rnn");
  check_attr_str(r, "device", "cpu");
  check_attr_str(r, "m2lab_version", M2_VERSION);
  CHECK_OK(m2_run_get_attr(r, "lr", &v));
  CHECK(v.kind == M2_VAL_F64 && v.f == 0.003, "lr");
  CHECK_OK(m2_run_get_attr(r, "steps", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == NSTEPS, "steps");
  CHECK_OK(m2_run_get_attr(r, "use_bias", &v));
  CHECK(v.kind == M2_VAL_BOOL && v.i == 1, "use_bias");
  CHECK_OK(m2_run_get_attr(r, "start_time", &v));
  CHECK(v.kind == M2_VAL_STR && strlen(v.s) == 20 && v.s[10] == 'T' && v.s[19] == 'Z', "start_time ISO 8601: %s",
        v.kind == M2_VAL_STR ? v.s : "?");
  m2_value_free(&v);
  CHECK_FAILS(m2_run_get_attr(r, "nope", &v) != M2_OK, M2_ERR_INDEX, "no attribute 'nope'");
  m2_strlist keys;
  CHECK_OK(m2_run_attr_names(r, true, &keys));
  CHECK(keys.n == 5 && !strcmp(keys.v[0], "lr") && !strcmp(keys.v[1], "model") && !strcmp(keys.v[2], "note") &&
            !strcmp(keys.v[3], "steps") && !strcmp(keys.v[4], "use_bias"),
        "config keys (%d)", keys.n);
  m2_strlist_free(&keys);

  m2_strlist names;
  CHECK_OK(m2_run_list_series(r, "metrics", &names));
  CHECK(names.n == 5 && !strcmp(names.v[0], "ckpt_marker") && !strcmp(names.v[1], "grad_norm") &&
            !strcmp(names.v[2], "loss") && !strcmp(names.v[3], "lr") && !strcmp(names.v[4], "tokens_per_s"),
        "metric names (%d)", names.n);
  m2_strlist_free(&names);
  CHECK_OK(m2_run_list_series(r, "eval", &names));
  CHECK(names.n == 1 && !strcmp(names.v[0], "acc"), "eval names");
  m2_strlist_free(&names);

  /* after the resume (truncated at step 249, loss logged again for 250..319 as 0.5) */
  int64_t keep = resumed ? 250 : NSTEPS;
  for (int m = 0; m < 3; m++) {
    m2_series s;
    CHECK_OK(m2_run_read_series(r, "metrics", metric_names[m], &s));
    int64_t want = m == 0 && resumed ? 320 : keep;
    CHECK(s.n == want, "%s: %lld entries, want %lld", metric_names[m], (long long)s.n, (long long)want);
    bool ok = s.time != NULL && s.n == want;
    for (int64_t i = 0; i < s.n && ok; i++) {
      double v = i < keep ? g_metric[m][i] : 0.5;
      ok = s.step[i] == i && memcmp(&s.value[i], &v, 8) == 0 && s.time[i] >= 0 && (i == 0 || s.time[i] >= s.time[i - 1]);
    }
    CHECK(ok, "%s: steps, values (bit-exact) and times", metric_names[m]);
    m2_series_free(&s);
  }
  m2_series s;
  CHECK_OK(m2_run_read_series(r, "metrics", "tokens_per_s", &s));
  bool ok = s.n == keep - 150;
  for (int64_t i = 0; i < s.n && ok; i++) ok = s.step[i] == 150 + i && s.value[i] == g_tps[150 + i];
  CHECK(ok, "tokens_per_s (started after the first flushes)");
  m2_series_free(&s);
  CHECK_OK(m2_run_read_series(r, "eval", "acc", &s));
  ok = s.n == (keep + 49) / 50;
  for (int64_t i = 0; i < s.n && ok; i++) ok = s.step[i] == 50 * i && s.value[i] == g_acc[i];
  CHECK(ok, "eval acc");
  m2_series_free(&s);
  CHECK_FAILS(m2_run_read_series(r, "metrics", "nope", &s) != M2_OK, M2_ERR_INDEX, "no series /metrics/nope");

  /* stats: loss has goal min (default), acc max (set), tokens_per_s max (default), lr max (set) */
  m2_series_stats st;
  CHECK_OK(m2_run_series_stats(r, "metrics", "loss", &st));
  double mn = INFINITY;
  int64_t mn_step = -1, nloss = resumed ? 320 : NSTEPS;
  for (int i = 0; i < nloss; i++) {
    double v = i < keep ? g_metric[0][i] : 0.5;
    if (v < mn) mn = v, mn_step = i;
  }
  CHECK(st.goal == -1 && st.best == mn && st.best_step == mn_step && st.count == nloss && st.last_step == nloss - 1,
        "loss stats");
  CHECK_OK(m2_run_series_stats(r, "eval", "acc", &st));
  double mx = -INFINITY;
  int64_t nacc = (keep + 49) / 50;
  for (int i = 0; i < nacc; i++) mx = g_acc[i] > mx ? g_acc[i] : mx;
  CHECK(st.goal == +1 && st.best == mx && st.last == g_acc[nacc - 1], "acc stats");
  CHECK_OK(m2_run_series_stats(r, "metrics", "tokens_per_s", &st));
  CHECK(st.goal == +1, "tokens_per_s default goal max");
  CHECK_OK(m2_run_series_stats(r, "metrics", "lr", &st));
  CHECK(st.goal == +1 && st.best == g_metric[1][0], "lr goal set to max");

  /* checkpoints */
  m2_i64list l;
  CHECK_OK(m2_run_ckpt_list(r, &l));
  CHECK(l.n == 2 && l.v[0] == (latest == 300 ? 200 : 300) && l.v[1] == latest, "checkpoints kept: %d", l.n);
  m2_i64list_free(&l);
  int64_t last;
  CHECK_OK(m2_run_ckpt_latest(r, &last));
  CHECK(last == latest, "latest checkpoint %lld", (long long)last);
  for (int k = 0; k < 4; k++)
    if (g_ck[k].step == latest || g_ck[k].step == (resumed ? 300 : 200)) check_ckpt(r, &g_ck[k]);
  CHECK_FAILS(m2_run_ckpt_read(r, 100, tensor_paths[0]) == NULL, M2_ERR_INDEX, "no complete checkpoint at step 100");
  CHECK_FAILS(m2_run_ckpt_read(r, 100, tensor_paths[0]) == NULL, M2_ERR_INDEX, "have: ");
  CHECK_FAILS(m2_run_ckpt_read(r, 1, "params/x") == NULL, M2_ERR_INDEX, "no complete checkpoint at step 1");
  CHECK_FAILS(m2_run_ckpt_read(r, latest, "params/nope") == NULL, M2_ERR_INDEX, "params/nope: no such tensor");
  CHECK_FAILS(m2_run_ckpt_read(r, latest, "params") == NULL, M2_ERR_INDEX, "is a group");
  /* read_into: dtype converted, shape checked */
  m2_tensor *d64 = m2_zeros(M2_F64, M2_DEV_CPU, 2, (int64_t[]){3, 5});
  CHECK_OK(m2_run_ckpt_read_into(r, 300, tensor_paths[0], d64));
  CHECK(max_rel_diff(d64, g_ck[2].t[0]) == 0, "read_into f64");
  m2_tensor *wrong = m2_zeros(M2_F32, M2_DEV_CPU, 2, (int64_t[]){5, 3});
  CHECK_FAILS(m2_run_ckpt_read_into(r, 300, tensor_paths[0], wrong) != M2_OK, M2_ERR_SHAPE, "stored shape (3, 5)");
  m2_release(d64);
  m2_release(wrong);
  /* writes on a reader */
  CHECK_FAILS(m2_run_log(r, "metrics", "loss", 1, 1) != M2_OK, M2_ERR_VALUE, "read-only");
  CHECK_FAILS(m2_run_ckpt_begin(r, 400) != M2_OK, M2_ERR_VALUE, "read-only");
  CHECK_OK(m2_run_close(r));
}

/* ---------------- 3. resume ---------------- */

static void resume_run(const char *path, m2_rng *rng) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_RESUME;
  o.keep_last = 2;
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  /* a second writer is refused while this one is open */
  m2_run *r2 = NULL;
  CHECK_FAILS((r2 = m2_run_open(path, &o)) == NULL, M2_ERR_IO, "another writer has this run open");
  m2_run_close(r2);
  int64_t last;
  CHECK_OK(m2_run_ckpt_latest(r, &last));
  CHECK(last == 300, "resume from 300");
  /* resume from 300, log steps 300..319 of loss, checkpoint 320 */
  CHECK_OK(m2_run_truncate(r, 249));
  for (int s = 250; s < 320; s++) CHECK_OK(m2_run_log(r, "metrics", "loss", s, 0.5));
  make_ckpt(rng, &g_ck[3], 320);
  put_ckpt(r, &g_ck[3], false);
  m2_value v;
  CHECK_OK(m2_run_get_attr(r, "resume_count", &v));
  CHECK(v.kind == M2_VAL_I64 && v.i == 1, "resume_count");
  CHECK_OK(m2_run_set_status(r, "done"));
  CHECK_OK(m2_run_close(r));
}

/* ---------------- 4. inspect ---------------- */

static void inspect_run(const char *path) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  CHECK_OK(m2_inspect(path, f));
  fclose(f);
  static const char *const want[] = {"format",  "status      done", "started", "device cpu", "script      3 lines",
                                     "config (5 keys)", "lr", "model",   "\"m2rnn\"",   "metrics (5 series)",
                                     "loss",    "grad_norm",        "tokens_per_s", "eval (1 series)", "acc",
                                     "(max @",  "(min @",           "checkpoints (2): 300, 320",
                                     "latest 320: 8 tensors", "params 4", "data_cursor", "resumed"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) CHECK(buf && strstr(buf, want[i]), "inspect shows '%s'", want[i]);
  CHECK(buf && !strchr(buf, '\x1b'), "inspect escapes control characters");
  CHECK(buf && strstr(buf, "\\x1b[31m"), "escaped ESC shown");
  if (g_failures) fprintf(stderr, "%s", buf ? buf : "");
  free(buf);
  /* inspecting garbage fails cleanly with the reason, which the caller prints (once) */
  f = open_memstream(&buf, &n);
  CHECK_FAILS(m2_inspect(tmp_path("nothing-here.h5"), f) != M2_OK, M2_ERR_IO, "nothing-here.h5");
  fclose(f);
  CHECK(buf && buf[0] == 0, "nothing printed: the error goes to the caller");
  free(buf);
}

/* ---------------- 5. bad files and paths ---------------- */

static void copy_file(const char *from, const char *to, off_t truncate_to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  char buf[65536];
  size_t k;
  off_t total = 0;
  while (a && b && (k = fread(buf, 1, sizeof buf, a)) > 0) {
    if (truncate_to >= 0 && total + (off_t)k > truncate_to) k = (size_t)(truncate_to - total);
    fwrite(buf, 1, k, b);
    total += (off_t)k;
    if (truncate_to >= 0 && total >= truncate_to) break;
  }
  if (a) fclose(a);
  if (b) fclose(b);
}

static void poke(const char *path, off_t off, const void *bytes, size_t n) {
  int fd = open(path, O_WRONLY);
  CHECK(fd >= 0 && pwrite(fd, bytes, n, off) == (ssize_t)n, "poke %s", path);
  if (fd >= 0) close(fd);
}

static off_t file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* The series of the finished test run (after the resume): entry i of group/name, false if none. */
static bool expected_entry(const char *group, const char *name, int64_t i, int64_t *step, double *value) {
  *step = i;
  if (!strcmp(group, "eval")) {
    *step = 50 * i;
    *value = g_acc[i];
    return !strcmp(name, "acc") && i < 5;
  }
  if (!strcmp(name, "ckpt_marker")) {
    *step = 200;
    *value = 1.0;
    return i == 0;
  }
  if (!strcmp(name, "tokens_per_s")) {
    *step = 150 + i;
    *value = g_tps[150 + i];
    return i < 100;
  }
  for (int m = 0; m < 3; m++)
    if (!strcmp(name, metric_names[m])) {
      *value = i < 250 ? g_metric[m][i] : 0.5;
      return i < (m == 0 ? 320 : 250);
    }
  return false;
}

/* What the good file lists (series per group, checkpoints): a damaged copy listing less lost something. */
static m2_strlist g_good_series[2];
static m2_i64list g_good_ckpts;

static bool has_all_names(const m2_strlist *got, const m2_strlist *want) {
  for (int i = 0; i < want->n; i++) {
    bool found = false;
    for (int j = 0; j < got->n && !found; j++) found = strcmp(got->v[j], want->v[i]) == 0;
    if (!found) return false;
  }
  return true;
}

/* Read everything: 0 = all as written, 1 = a clean error somewhere (or a series or checkpoint missing from its list),
 * 2 = wrong checkpoint data returned, 3 = metric values changed silently (metric datasets carry no checksum),
 * 4 = something could not be read or was missing, and m2_inspect said nothing (exit 0). */
static int read_everything(const char *path) {
  m2_run_opts o = {0};
  o.open_timeout = 0.2;
  o.no_repair = true;
  m2_run *r = m2_run_open(path, &o);
  if (!r) return 1;
  int res = 0;
  m2_strlist names;
  static const char *const groups[] = {"metrics", "eval"};
  for (int g = 0; g < 2; g++) {
    if (m2_run_list_series(r, groups[g], &names) != M2_OK) { res = 1; continue; }
    if (!has_all_names(&names, &g_good_series[g]) && (res == 0 || res == 3)) res = 1;
    for (int i = 0; i < names.n; i++) {
      m2_series s;
      if (m2_run_read_series(r, groups[g], names.v[i], &s) != M2_OK) {
        res = res ? res : 1;
        continue;
      }
      int64_t st;
      double v;
      bool same = !expected_entry(groups[g], names.v[i], s.n, &st, &v);
      for (int64_t k = 0; k < s.n && same; k++)
        same = expected_entry(groups[g], names.v[i], k, &st, &v) && s.step[k] == st && memcmp(&s.value[k], &v, 8) == 0;
      if (!same && res != 2) res = 3;
      m2_series_free(&s);
    }
    m2_strlist_free(&names);
  }
  m2_i64list l;
  if (m2_run_ckpt_list(r, &l) != M2_OK) res = 1;
  else {
    if (l.n != g_good_ckpts.n && (res == 0 || res == 3)) res = 1;
    for (int i = 0; i < l.n; i++) {
      const ckpt_expect *e = NULL;
      for (int k = 0; k < 4; k++)
        if (g_ck[k].step == l.v[i]) e = &g_ck[k];
      if (!e) {
        res = 2;
        continue;
      }
      for (int k = 0; k < NTENS; k++) {
        m2_tensor *t = m2_run_ckpt_read(r, l.v[i], tensor_paths[k]);
        if (!t) res = res == 0 || res == 3 ? 1 : res;
        else if (!same_bits(t, e->t[k])) res = 2;
        m2_release(t);
      }
      m2_value v;
      if (m2_run_ckpt_get(r, l.v[i], "data_cursor", &v) != M2_OK) res = res == 0 || res == 3 ? 1 : res;
      else if (v.kind != M2_VAL_I64 || v.i != e->cursor) res = 2;
    }
    m2_i64list_free(&l);
  }
  FILE *devnull = fopen("/dev/null", "w");
  m2_run_close(r);
  bool inspect_ok = m2_inspect(path, devnull) == M2_OK;
  fclose(devnull);
  if (!inspect_ok && (res == 0 || res == 3)) res = 1;
  else if (inspect_ok && res == 1) res = 4; /* damage that inspect hid */
  return res;
}

static void bad_files(const char *good) {
  m2_run_opts rd = {0}, rs = {0}, cr = {0};
  rd.open_timeout = 0.2;
  rs.mode = M2_RUN_RESUME;
  cr.mode = M2_RUN_CREATE;
  /* missing */
  CHECK_FAILS(m2_run_open(tmp_path("missing.h5"), &rd) == NULL, M2_ERR_IO, "missing.h5: cannot open");
  CHECK_FAILS(m2_run_open(tmp_path("missing.h5"), &rs) == NULL, M2_ERR_IO, "missing.h5: no such file");
  /* not HDF5 */
  FILE *f = fopen(tmp_path("text.h5"), "w");
  fputs("this is not an HDF5 file\n", f);
  fclose(f);
  CHECK_FAILS(m2_run_open(tmp_path("text.h5"), &rd) == NULL, M2_ERR_IO, "text.h5: not an HDF5 file");
  CHECK_FAILS(m2_run_open(tmp_path("text.h5"), &rs) == NULL, M2_ERR_IO, "text.h5: not an HDF5 file");
  /* HDF5, not m2lab */
  hid_t h = H5Fcreate(tmp_path("foreign.h5"), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t ds = H5Dcreate2(h, "data", H5T_NATIVE_INT, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(h >= 0 && ds >= 0, "foreign file written");
  H5Dclose(ds);
  H5Sclose(sp);
  H5Fclose(h);
  CHECK_FAILS(m2_run_open(tmp_path("foreign.h5"), &rd) == NULL, M2_ERR_IO,
              "foreign.h5: not an m2lab run file (no format_version attribute)");
  CHECK_FAILS(m2_run_open(tmp_path("foreign.h5"), &rs) == NULL, M2_ERR_IO,
              "foreign.h5: not an m2lab run file (no format_version attribute)");
  FILE *devnull = fopen("/dev/null", "w");
  CHECK_FAILS(m2_inspect(tmp_path("foreign.h5"), devnull) != M2_OK, M2_ERR_IO, "not an m2lab run file");
  fclose(devnull);
  /* a directory */
  CHECK_FAILS(m2_run_open(g_dir, &rd) == NULL, M2_ERR_IO, "not a regular file");
  /* truncated to half */
  off_t size = file_size(good);
  copy_file(good, tmp_path("half.h5"), size / 2);
  CHECK_FAILS(m2_run_open(tmp_path("half.h5"), &rd) == NULL, M2_ERR_IO, "half.h5: ");
  CHECK_FAILS(m2_run_open(tmp_path("half.h5"), &rs) == NULL, M2_ERR_IO, "half.h5: ");
  /* a damaged signature */
  copy_file(good, tmp_path("nosig.h5"), -1);
  poke(tmp_path("nosig.h5"), 0, "XXXX", 4);
  CHECK_FAILS(m2_run_open(tmp_path("nosig.h5"), &rd) == NULL, M2_ERR_IO, "nosig.h5: not an HDF5 file");
  /* damaged bytes inside a checkpoint tensor: the checksum catches it, naming file and dataset */
  copy_file(good, tmp_path("bitrot.h5"), -1);
  haddr_t addr = HADDR_UNDEF;
  hsize_t csize = 0;
  h = H5Fopen(tmp_path("bitrot.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
  ds = H5Dopen2(h, "/checkpoints/320/params/blocks.0.mlp.up.weight", H5P_DEFAULT);
  unsigned mask;
  hsize_t coff[2];
  sp = H5Dget_space(ds);
  CHECK(ds >= 0 && H5Dget_chunk_info(ds, sp, 0, coff, &mask, &addr, &csize) >= 0 && addr != HADDR_UNDEF,
        "chunk address");
  H5Sclose(sp);
  H5Dclose(ds);
  H5Fclose(h);
  if (addr != HADDR_UNDEF) poke(tmp_path("bitrot.h5"), (off_t)addr + 8, "\x55\xAA", 2);
  m2_run *r = m2_run_open(tmp_path("bitrot.h5"), &rd);
  CHECK_NOTNULL(r);
  CHECK_FAILS(m2_run_ckpt_read(r, 320, "params/blocks.0.mlp.up.weight") == NULL, M2_ERR_IO,
              "/checkpoints/320/params/blocks.0.mlp.up.weight");
  CHECK_FAILS(m2_run_ckpt_read(r, 320, "params/blocks.0.mlp.up.weight") == NULL, M2_ERR_IO, "bitrot.h5");
  CHECK_FAILS(m2_run_ckpt_read(r, 320, "params/blocks.0.mlp.up.weight") == NULL, M2_ERR_IO, "checksum");
  m2_tensor *ok = m2_run_ckpt_read(r, 320, "params/blocks.0.mlp.up.bias");
  CHECK(ok && same_bits(ok, g_ck[3].t[1]), "an undamaged tensor still reads");
  CHECK_FAILS(m2_run_ckpt_verify(r, 320) != M2_OK, M2_ERR_IO, "Fletcher32 checksum");
  CHECK_OK(m2_run_ckpt_verify(r, 300)); /* the previous checkpoint is intact: resume from it */
  m2_release(ok);
  m2_run_close(r);

  /* bytes overwritten at many places: a clean error or the right data, never wrong checkpoint
   * numbers and never a crash (each read in a child process, to see crashes) */
  int crashes = 0, wrong = 0, errors = 0, clean = 0, metric_damage = 0, hidden = 0;
  const int NPOS = 96;
  m2_run *gr = m2_run_open(good, &rd);
  CHECK(gr && m2_run_list_series(gr, "metrics", &g_good_series[0]) == M2_OK &&
        m2_run_list_series(gr, "eval", &g_good_series[1]) == M2_OK && m2_run_ckpt_list(gr, &g_good_ckpts) == M2_OK,
        "the good file's lists");
  m2_run_close(gr);
  for (int k = 0; k < NPOS; k++) {
    copy_file(good, tmp_path("poked.h5"), -1);
    off_t off = (off_t)((double)size * (k + 0.5) / NPOS);
    unsigned char junk[24];
    for (int i = 0; i < 24; i++) junk[i] = (unsigned char)(0x5a ^ (i * 37 + k));
    poke(tmp_path("poked.h5"), off, junk, sizeof junk);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      alarm(20); /* a hang counts as a crash */
      _exit(read_everything(tmp_path("poked.h5")));
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    if (!WIFEXITED(ws)) crashes++;
    else if (WEXITSTATUS(ws) == 2) wrong++;
    else if (WEXITSTATUS(ws) == 1) errors++;
    else if (WEXITSTATUS(ws) == 3) metric_damage++;
    else if (WEXITSTATUS(ws) == 4) hidden++;
    else clean++;
  }
  printf("%d damaged copies: %d clean errors, %d changed metric values (no checksum there), %d read as written "
         "(damage in unused space), %d wrong checkpoint data, %d crashed, %d with damage m2_inspect did not report\n",
         NPOS, errors, metric_damage, clean, wrong, crashes, hidden);
  CHECK(hidden == 0, "%d damaged files: m2_inspect returned OK although something could not be read", hidden);
  m2_strlist_free(&g_good_series[0]);
  m2_strlist_free(&g_good_series[1]);
  m2_i64list_free(&g_good_ckpts);
  CHECK(crashes == 0, "%d damaged files crashed the reader", crashes);
  CHECK(wrong == 0, "%d damaged files gave wrong checkpoint data", wrong);
  CHECK(errors > 0, "damage was detected at least once");

  /* unwritable paths */
  CHECK_FAILS(m2_run_open("/nonexistent-m2lab-dir/run.h5", &cr) == NULL, M2_ERR_IO,
              "/nonexistent-m2lab-dir/run.h5: cannot create");
  char under_file[300];
  snprintf(under_file, sizeof under_file, "%s/x.h5", tmp_path("text.h5"));
  CHECK_FAILS(m2_run_open(under_file, &cr) == NULL, M2_ERR_IO, "cannot create: Not a directory");
  if (geteuid() != 0) {
    mkdir(tmp_path("ro"), 0500);
    CHECK_FAILS(m2_run_open(tmp_path("ro/run.h5"), &cr) == NULL, M2_ERR_IO, "Permission denied");
    rmdir(tmp_path("ro"));
  }
  /* an existing file is not replaced unless asked */
  CHECK_FAILS(m2_run_open(good, &cr) == NULL, M2_ERR_IO, "already exists");
  CHECK(file_size(good) == size, "refused create left the file alone");
  copy_file(good, tmp_path("replace.h5"), -1);
  cr.overwrite = true;
  r = m2_run_open(tmp_path("replace.h5"), &cr);
  CHECK_NOTNULL(r);
  CHECK_OK(m2_run_close(r));
  m2_i64list l;
  r = m2_run_open(tmp_path("replace.h5"), &rd);
  CHECK(r && m2_run_ckpt_list(r, &l) == M2_OK && l.n == 0, "overwritten run is empty");
  m2_i64list_free(&l);
  m2_run_close(r);
  m2_strlist lst;
  CHECK_FAILS(m2_run_list_series(NULL, "metrics", &lst) != M2_OK, M2_ERR_VALUE, "run is NULL");
}

/* ---------------- 6. pruning reuses space ---------------- */

static void space_reuse(m2_rng *rng) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.keep_last = 2;
  o.no_fsync = true;
  m2_run *r = m2_run_open(tmp_path("space.h5"), &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_tensor *w = m2_randn(rng, M2_F32, M2_DEV_CPU, 2, (int64_t[]){256, 256}); /* 256 KiB */
  for (int k = 1; k <= 10; k++) {
    m2_run_log(r, "metrics", "loss", k, 1.0 / k);
    m2_ckpt_tensor t[] = {{"params/w", w}, {"optim/exp_avg/w", w}};
    CHECK_OK(m2_run_ckpt_write(r, 100 * k, t, 2, NULL, 0));
  }
  CHECK_OK(m2_run_close(r));
  off_t sz = file_size(tmp_path("space.h5"));
  /* 10 checkpoints of 512 KiB; keep-last-2 with reuse stays near 3 of them */
  printf("10 checkpoints of 512 KiB with keep_last=2: file is %.2f MiB\n", sz / 1048576.0);
  CHECK(sz < 4 * 512 * 1024, "file size %lld: pruned space is reused", (long long)sz);
  m2_release(w);
}

/* ---------------- 6b. a staged overwrite ---------------- */

static void staged_overwrite(const char *good) {
  char *path = tmp_path("staged.h5"), staged[300];
  snprintf(staged, sizeof staged, "%s.new", path);
  copy_file(good, path, -1);
  off_t size = file_size(path);
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.overwrite = o.staged = o.no_fsync = true;
  /* closed before m2_run_replace: the new file goes, the old one stays as it was */
  m2_run *r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK(strcmp(m2_run_path(r), staged) == 0, "written beside the old file: %s", m2_run_path(r));
  CHECK(m2_run_writer_alive(path), "the old file is locked against other writers meanwhile");
  m2_run_opts o2 = o;
  CHECK_FAILS(m2_run_open(path, &o2) == NULL, M2_ERR_IO, "another writer has this run open");
  CHECK_OK(m2_run_log(r, "metrics", "loss", 1, 0.5));
  CHECK_OK(m2_run_flush(r));
  m2_run *rd = m2_run_open(path, NULL);
  m2_i64list l = {0};
  CHECK(rd && m2_run_ckpt_list(rd, &l) == M2_OK && l.n > 0, "a reader still sees the old run");
  m2_i64list_free(&l);
  m2_run_close(rd);
  CHECK_OK(m2_run_close(r));
  CHECK(file_size(path) == size && access(staged, F_OK) != 0, "old file kept, staged file deleted");
  /* replaced: the new run is at the path, with what was written before and after the rename */
  r = m2_run_open(path, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK_OK(m2_run_log(r, "metrics", "loss", 1, 0.5));
  CHECK_OK(m2_run_flush(r)); /* APPEND (SWMR) at the rename */
  CHECK_OK(m2_run_replace(r));
  CHECK(strcmp(m2_run_path(r), path) == 0 && access(staged, F_OK) != 0, "renamed over the old file");
  CHECK_OK(m2_run_replace(r)); /* a second call does nothing */
  CHECK_OK(m2_run_log(r, "metrics", "loss", 2, 0.25));
  m2_tensor *w = m2_zeros(M2_F32, M2_DEV_CPU, 1, (int64_t[]){3});
  m2_ckpt_tensor t[] = {{"params/w", w}};
  CHECK_OK(m2_run_ckpt_write(r, 2, t, 1, NULL, 0));
  CHECK_OK(m2_run_set_status(r, "done"));
  CHECK_OK(m2_run_close(r));
  m2_release(w);
  rd = m2_run_open(path, NULL);
  m2_series se = {0};
  CHECK(rd && m2_run_read_series(rd, "metrics", "loss", &se) == M2_OK && se.n == 2 && se.step[1] == 2,
        "both values of the new run are in the replaced file");
  m2_series_free(&se);
  CHECK(rd && m2_run_ckpt_list(rd, &l) == M2_OK && l.n == 1 && l.v[0] == 2, "only the new run's checkpoint");
  m2_i64list_free(&l);
  m2_run_close(rd);
  unlink(path);
}

/* ---------------- 7. unusual tensors ---------------- */

static void edge_tensors(m2_rng *rng) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  o.no_fsync = true;
  m2_run *r = m2_run_open(tmp_path("edge.h5"), &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_tensor *empty = m2_empty(M2_F32, M2_DEV_CPU, 2, (int64_t[]){0, 5});
  m2_tensor *six = rand_i64(rng, 6, (int64_t[]){1, 2, 1, 2, 1, 2});
  m2_tensor *big = m2_randn(rng, M2_F64, M2_DEV_CPU, 1, (int64_t[]){100000}); /* several checksum blocks */
  m2_ckpt_tensor t[] = {{"empty", empty}, {"six/dims", six}, {"big", big}};
  const m2_kv a[] = {{"note", m2_vstr("")}, {"neg", m2_vi64(INT64_MIN)}, {"nan", m2_vf64(NAN)}};
  CHECK_OK(m2_run_ckpt_write(r, 0, t, 3, a, 3));
  /* a failing put inside ckpt_write aborts the whole checkpoint */
  m2_ckpt_tensor bad[] = {{"ok", six}, {"bad path/", six}};
  CHECK_FAILS(m2_run_ckpt_write(r, 5, bad, 2, NULL, 0) != M2_OK, M2_ERR_VALUE, "bad tensor path");
  CHECK_OK(m2_run_close(r));
  r = m2_run_open(tmp_path("edge.h5"), NULL);
  CHECK_NOTNULL(r);
  if (!r) return;
  m2_i64list l;
  CHECK(m2_run_ckpt_list(r, &l) == M2_OK && l.n == 1 && l.v[0] == 0, "step 0 kept, aborted step 5 absent");
  m2_i64list_free(&l);
  m2_tensor *e = m2_run_ckpt_read(r, 0, "empty");
  CHECK(e && e->ndim == 2 && e->shape[0] == 0 && e->shape[1] == 5 && e->dtype == M2_F32, "empty tensor round trip");
  m2_tensor *x = m2_run_ckpt_read(r, 0, "six/dims");
  CHECK(same_bits(x, six), "6-d tensor round trip");
  m2_tensor *b = m2_run_ckpt_read(r, 0, "big");
  CHECK(same_bits(b, big), "large tensor round trip");
  m2_value v;
  CHECK(m2_run_ckpt_get(r, 0, "neg", &v) == M2_OK && v.kind == M2_VAL_I64 && v.i == INT64_MIN, "INT64_MIN attribute");
  CHECK(m2_run_ckpt_get(r, 0, "nan", &v) == M2_OK && v.kind == M2_VAL_F64 && isnan(v.f), "NaN attribute");
  CHECK(m2_run_ckpt_get(r, 0, "note", &v) == M2_OK && v.kind == M2_VAL_STR && v.s[0] == 0, "empty string attribute");
  m2_value_free(&v);
  m2_run_close(r);
  m2_release(e);
  m2_release(x);
  m2_release(b);
  m2_release(empty);
  m2_release(six);
  m2_release(big);
  unlink(tmp_path("edge.h5"));
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/m2rf-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  m2_rng rng = m2_rng_make(20260509, 3);
  for (int k = 0; k < 3; k++) make_ckpt(&rng, &g_ck[k], 100 * (k + 1));
  char path[256];
  snprintf(path, sizeof path, "%s", tmp_path("run.h5"));
  write_run(path, &rng);
  read_run(path, false);
  resume_run(path, &rng);
  read_run(path, true);
  inspect_run(path);
  bad_files(path);
  space_reuse(&rng);
  staged_overwrite(path);
  edge_tensors(&rng);

  for (int k = 0; k < 4; k++)
    for (int i = 0; i < NTENS; i++) m2_release(g_ck[k].t[i]);
  CHECK(m2_live_tensors() == 0, "leaked %ld tensors", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked %ld nodes", m2_live_nodes());
  static const char *const files[] = {"run.h5",    "text.h5",   "foreign.h5", "half.h5",  "nosig.h5",
                                      "bitrot.h5", "poked.h5",  "replace.h5", "space.h5"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) unlink(tmp_path(files[i]));
  rmdir(g_dir);
  return check_finish("test_runfile");
}
