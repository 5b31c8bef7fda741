/* runfile_metrics.c — metric and eval series: buffered logging, flushing (SWMR-safe order),
 * resume-time loading and truncation, reading whole series, last/best statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "runfile_int.h"

#define M2_RF_CHUNK 1024 /* elements per chunk of a series dataset (8 KiB) */

/* ---------------- the in-memory series table ---------------- */

static m2_rf_series *series_find(m2_run *r, const char *group, const char *name) {
  for (int i = 0; i < r->nseries; i++)
    if (strcmp(r->series[i].group, group) == 0 && strcmp(r->series[i].name, name) == 0) return &r->series[i];
  return NULL;
}

static m2_status series_add(m2_run *r, const char *group, const char *name, m2_rf_series **out) {
  if (r->nseries == r->capseries) {
    int cap = r->capseries ? 2 * r->capseries : 16;
    m2_rf_series *s = realloc(r->series, sizeof *s * (size_t)cap);
    if (!s) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
    r->series = s;
    r->capseries = cap;
  }
  m2_rf_series *s = &r->series[r->nseries];
  memset(s, 0, sizeof *s);
  snprintf(s->group, sizeof s->group, "%s", group);
  if (!(s->name = m2_rf_strdup(name))) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  s->ds_step = s->ds_value = s->ds_time = -1;
  s->has_time = !r->no_time;
  r->nseries++;
  *out = s;
  return M2_OK;
}

static m2_status series_get(m2_run *r, const char *group, const char *name, m2_rf_series **out) {
  M2_TRY(m2_rf_check_group(group));
  if (!m2_rf_valid_name(name))
    return m2_fail(M2_ERR_VALUE, "%s: bad series name '%s' (1..255 characters, no '/', not starting with '.')", r->path,
                   name ? name : "(null)");
  if ((*out = series_find(r, group, name))) return M2_OK;
  return series_add(r, group, name, out);
}

void m2_rf_series_close_ids(m2_run *r) {
  for (int i = 0; i < r->nseries; i++) {
    m2_h5_close(&r->series[i].ds_step);
    m2_h5_close(&r->series[i].ds_value);
    m2_h5_close(&r->series[i].ds_time);
  }
}

void m2_rf_series_free_all(m2_run *r) {
  m2_rf_series_close_ids(r);
  for (int i = 0; i < r->nseries; i++) {
    m2_rf_series *s = &r->series[i];
    free(s->name);
    free(s->step);
    free(s->value);
    free(s->time);
  }
  free(r->series);
  r->series = NULL;
  r->nseries = r->capseries = 0;
}

bool m2_rf_series_need_exclusive(const m2_run *r) {
  for (int i = 0; i < r->nseries; i++)
    if (!r->series[i].in_file || r->series[i].goal_dirty) return true;
  return false;
}

/* ---------------- writing ---------------- */

static m2_status series_create(m2_run *r, m2_rf_series *s) {
  m2_status st = M2_OK;
  char gpath[300];
  snprintf(gpath, sizeof gpath, "/%s/%s", s->group, s->name);
  const char *h5file = r->path, *h5obj = gpath;
  hid_t lcpl = -1, g = -1, sp = -1, dcpl = -1;
  hsize_t dim0 = 0, maxd = H5S_UNLIMITED, chunk = M2_RF_CHUNK;
  H5CHK(lcpl = H5Pcreate(H5P_LINK_CREATE));
  H5CHK(H5Pset_create_intermediate_group(lcpl, 1));
  H5CHK(g = H5Gcreate2(r->file, gpath, lcpl, H5P_DEFAULT, H5P_DEFAULT));
  H5CHK(sp = H5Screate_simple(1, &dim0, &maxd));
  H5CHK(dcpl = H5Pcreate(H5P_DATASET_CREATE));
  H5CHK(H5Pset_chunk(dcpl, 1, &chunk));
  H5CHK(s->ds_step = H5Dcreate2(g, "step", H5T_STD_I64LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  H5CHK(s->ds_value = H5Dcreate2(g, "value", H5T_IEEE_F64LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  if (s->has_time) H5CHK(s->ds_time = H5Dcreate2(g, "time", H5T_IEEE_F64LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  s->in_file = true;
  s->nfile = 0;
fail:
  m2_h5_close(&dcpl);
  m2_h5_close(&sp);
  m2_h5_close(&g);
  m2_h5_close(&lcpl);
  return st;
}

static m2_status series_open_ids(m2_run *r, m2_rf_series *s) {
  m2_status st = M2_OK;
  char path[300];
  const char *h5file = r->path, *h5obj = path;
  if (s->ds_step < 0) {
    snprintf(path, sizeof path, "/%s/%s/step", s->group, s->name);
    H5CHK(s->ds_step = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
  if (s->ds_value < 0) {
    snprintf(path, sizeof path, "/%s/%s/value", s->group, s->name);
    H5CHK(s->ds_value = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
  if (s->has_time && s->ds_time < 0) {
    snprintf(path, sizeof path, "/%s/%s/time", s->group, s->name);
    H5CHK(s->ds_time = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
fail:
  return st;
}

/* Extend ds from n0 to n0+k elements, write buf there, and flush the dataset when APPEND. */
static m2_status ds_append(m2_run *r, m2_rf_series *s, hid_t ds, const char *which, hid_t mtype, int64_t n0, int64_t k,
                           const void *buf) {
  m2_status st = M2_OK;
  char where[300];
  snprintf(where, sizeof where, "/%s/%s/%s", s->group, s->name, which);
  const char *h5file = r->path, *h5obj = where;
  hid_t fs = -1, ms = -1;
  hsize_t n1 = (hsize_t)(n0 + k), off = (hsize_t)n0, cnt = (hsize_t)k;
  H5CHK(H5Dset_extent(ds, &n1));
  H5CHK(fs = H5Dget_space(ds));
  H5CHK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL));
  H5CHK(ms = H5Screate_simple(1, &cnt, NULL));
  H5CHK(H5Dwrite(ds, mtype, ms, fs, H5P_DEFAULT, buf));
  if (r->swmr) H5CHK(H5Dflush(ds));
fail:
  m2_h5_close(&ms);
  m2_h5_close(&fs);
  return st;
}

static m2_status series_write(m2_run *r, m2_rf_series *s) {
  m2_status st = M2_OK;
  char gpath[300];
  snprintf(gpath, sizeof gpath, "/%s/%s", s->group, s->name);
  if (!s->in_file) {
    if (r->swmr) return m2_fail(M2_ERR_IO, "%s: %s: internal: series created in SWMR mode", r->path, gpath);
    M2_TRY(series_create(r, s));
  }
  if (s->goal_dirty && !r->swmr) {
    hid_t g = -1;
    const char *h5file = r->path, *h5obj = gpath;
    H5CHK(g = H5Gopen2(r->file, gpath, H5P_DEFAULT));
    st = m2_h5_attr_write(g, "goal", m2_vstr(s->goal > 0 ? "max" : "min"), r->path, gpath);
    m2_h5_close(&g);
    if (st != M2_OK) return st;
    s->goal_dirty = false;
  }
  if (s->nbuf == 0) return M2_OK;
  M2_TRY(series_open_ids(r, s));
  /* value and time before step: a reader that sees n steps finds n values (runfile.h) */
  M2_TRY(ds_append(r, s, s->ds_value, "value", H5T_NATIVE_DOUBLE, s->nfile, s->nbuf, s->value));
  if (s->has_time) M2_TRY(ds_append(r, s, s->ds_time, "time", H5T_NATIVE_DOUBLE, s->nfile, s->nbuf, s->time));
  M2_TRY(ds_append(r, s, s->ds_step, "step", H5T_NATIVE_INT64, s->nfile, s->nbuf, s->step));
  s->nfile += s->nbuf;
  r->nbuffered -= s->nbuf;
  s->nbuf = 0;
  return M2_OK;
fail:
  return st;
}

m2_status m2_rf_series_write_all(m2_run *r) {
  for (int i = 0; i < r->nseries; i++) M2_TRY(series_write(r, &r->series[i]));
  return M2_OK;
}

m2_status m2_run_flush(m2_run *r) {
  if (r && !r->writer) return M2_OK;
  M2_TRY(m2_rf_check_open(r, true, "flush"));
  if (r->in_ckpt) return m2_rf_series_write_all(r); /* EXCLUSIVE; the commit flushes */
  if (r->swmr && (m2_rf_series_need_exclusive(r) || r->npending > 0)) M2_TRY(m2_rf_to_exclusive(r));
  if (!r->swmr) M2_TRY(m2_rf_to_append(r));
  else M2_TRY(m2_rf_series_write_all(r));
  r->last_flush = m2_rf_monotonic();
  return M2_OK;
}

m2_status m2_run_log(m2_run *r, const char *group, const char *name, int64_t step, double value) {
  M2_TRY(m2_rf_check_open(r, true, "log"));
  m2_rf_series *s;
  M2_TRY(series_get(r, group, name, &s));
  if (s->nbuf == s->cap) {
    int64_t cap = s->cap ? 2 * s->cap : 256;
    int64_t *st = realloc(s->step, sizeof *st * (size_t)cap);
    if (st) s->step = st;
    double *v = realloc(s->value, sizeof *v * (size_t)cap);
    if (v) s->value = v;
    double *t = realloc(s->time, sizeof *t * (size_t)cap);
    if (t) s->time = t;
    if (!st || !v || !t) return m2_fail(M2_ERR_OOM, "%s: out of memory buffering /%s/%s", r->path, group, name);
    s->cap = cap;
  }
  s->step[s->nbuf] = step;
  s->value[s->nbuf] = value;
  s->time[s->nbuf] = m2_rf_now() - r->start_unix;
  s->nbuf++;
  r->nbuffered++;
  if (!r->in_ckpt && (m2_rf_monotonic() - r->last_flush >= r->flush_interval || r->nbuffered >= (1 << 20)))
    return m2_run_flush(r);
  return M2_OK;
}

m2_status m2_run_set_goal(m2_run *r, const char *group, const char *name, const char *goal) {
  M2_TRY(m2_rf_check_open(r, true, "set_goal"));
  int g = goal && strcmp(goal, "max") == 0 ? +1 : goal && strcmp(goal, "min") == 0 ? -1 : 0;
  if (!g) return m2_fail(M2_ERR_VALUE, "%s: goal must be \"min\" or \"max\", not \"%s\"", r->path, goal ? goal : "(null)");
  m2_rf_series *s;
  M2_TRY(series_get(r, group, name, &s));
  if (s->goal != g) {
    s->goal = g;
    s->goal_dirty = true;
  }
  return M2_OK;
}

/* ---------------- resume ---------------- */

static m2_status ds_len(hid_t ds, int64_t *n, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hid_t sp = -1;
  hsize_t d = 0;
  int nd;
  H5CHK(sp = H5Dget_space(ds));
  H5CHK(nd = H5Sget_simple_extent_ndims(sp));
  if (nd != 1) RF_FAIL(M2_ERR_IO, "%s: %s: expected a 1-D dataset, found %d-D", file, obj, nd);
  H5CHK(H5Sget_simple_extent_dims(sp, &d, NULL));
  *n = (int64_t)d;
fail:
  m2_h5_close(&sp);
  return st;
}

static m2_status ds_trim(hid_t ds, int64_t n, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hsize_t d = (hsize_t)n;
  H5CHK(H5Dset_extent(ds, &d));
fail:
  return st;
}

m2_status m2_rf_series_load(m2_run *r) {
  static const char *const groups[] = {"metrics", "eval"};
  for (int gi = 0; gi < 2; gi++) {
    m2_strlist names;
    M2_TRY(m2_h5_list(r->file, groups[gi], H5O_TYPE_GROUP, &names, r->path));
    for (int i = 0; i < names.n; i++) {
      m2_rf_series *s;
      m2_status st = M2_OK;
      if (!m2_rf_valid_name(names.v[i])) continue;
      if ((st = series_add(r, groups[gi], names.v[i], &s)) != M2_OK) {
        m2_strlist_free(&names);
        return st;
      }
      char gp[300], obj[320];
      snprintf(gp, sizeof gp, "/%s/%s", groups[gi], names.v[i]);
      bool has_time;
      snprintf(obj, sizeof obj, "%s/time", gp);
      if ((st = m2_h5_exists(r->file, obj, &has_time, r->path)) != M2_OK) {
        m2_strlist_free(&names);
        return st;
      }
      s->has_time = has_time;
      s->in_file = true;
      int64_t ns = 0, nv = 0, nt = 0;
      if ((st = series_open_ids(r, s)) == M2_OK) {
        snprintf(obj, sizeof obj, "%s/step", gp);
        st = ds_len(s->ds_step, &ns, r->path, obj);
      }
      if (st == M2_OK) {
        snprintf(obj, sizeof obj, "%s/value", gp);
        st = ds_len(s->ds_value, &nv, r->path, obj);
      }
      if (st == M2_OK && has_time) {
        snprintf(obj, sizeof obj, "%s/time", gp);
        st = ds_len(s->ds_time, &nt, r->path, obj);
      }
      /* a writer killed inside a flush may have extended value/time and not step: trim */
      int64_t n = ns < nv ? ns : nv;
      if (has_time && nt < n) n = nt;
      if (st == M2_OK && ns != n) st = ds_trim(s->ds_step, n, r->path, gp);
      if (st == M2_OK && nv != n) st = ds_trim(s->ds_value, n, r->path, gp);
      if (st == M2_OK && has_time && nt != n) st = ds_trim(s->ds_time, n, r->path, gp);
      s->nfile = n;
      if (st == M2_OK) {
        hid_t g = H5Gopen2(r->file, gp, H5P_DEFAULT);
        m2_value v;
        if (g >= 0 && m2_h5_attr_read(g, "goal", &v, r->path, gp) == M2_OK) {
          if (v.kind == M2_VAL_STR) s->goal = strcmp(v.s, "max") == 0 ? +1 : -1;
          m2_value_free(&v);
        }
        m2_h5_close(&g);
        m2_clear_error();
      }
      m2_rf_series_close_ids(r);
      if (st != M2_OK) {
        m2_strlist_free(&names);
        return st;
      }
    }
    m2_strlist_free(&names);
  }
  return M2_OK;
}

m2_status m2_run_truncate(m2_run *r, int64_t after_step) {
  M2_TRY(m2_rf_check_open(r, true, "truncate"));
  if (r->in_ckpt) return m2_fail(M2_ERR_VALUE, "%s: truncate: a checkpoint is being written", r->path);
  M2_TRY(m2_rf_to_exclusive(r));
  for (int i = 0; i < r->nseries; i++) {
    m2_rf_series *s = &r->series[i];
    /* drop buffered entries past the step */
    int64_t k = 0;
    for (int64_t j = 0; j < s->nbuf; j++)
      if (s->step[j] <= after_step) {
        s->step[k] = s->step[j];
        s->value[k] = s->value[j];
        s->time[k] = s->time[j];
        k++;
      }
    r->nbuffered -= s->nbuf - k;
    s->nbuf = k;
    if (!s->in_file || s->nfile == 0) continue;
    m2_status st = M2_OK;
    char obj[320];
    snprintf(obj, sizeof obj, "/%s/%s/step", s->group, s->name);
    M2_TRY(series_open_ids(r, s));
    int64_t *steps = malloc(sizeof(int64_t) * (size_t)s->nfile);
    if (!steps) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
    {
      const char *h5file = r->path, *h5obj = obj;
      H5CHK(H5Dread(s->ds_step, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps));
    }
    int64_t n = 0;
    while (n < s->nfile && steps[n] <= after_step) n++;
    if (n < s->nfile) {
      if ((st = ds_trim(s->ds_step, n, r->path, obj)) == M2_OK && (st = ds_trim(s->ds_value, n, r->path, obj)) == M2_OK &&
          s->has_time)
        st = ds_trim(s->ds_time, n, r->path, obj);
      s->nfile = n;
    }
  fail:
    free(steps);
    if (st != M2_OK) return st;
  }
  return M2_OK;
}

/* ---------------- reading ---------------- */

void m2_series_free(m2_series *s) {
  if (!s) return;
  free(s->step);
  free(s->value);
  free(s->time);
  memset(s, 0, sizeof *s);
}

static m2_status read_prefix(hid_t ds, hid_t mtype, int64_t n, void *buf, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hid_t fs = -1, ms = -1;
  if (n == 0) return M2_OK;
  hsize_t off = 0, cnt = (hsize_t)n;
  H5CHK(fs = H5Dget_space(ds));
  H5CHK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL));
  H5CHK(ms = H5Screate_simple(1, &cnt, NULL));
  H5CHK(H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, buf));
fail:
  m2_h5_close(&ms);
  m2_h5_close(&fs);
  return st;
}

m2_status m2_run_read_series(m2_run *r, const char *group, const char *name, m2_series *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "read_series"));
  M2_TRY(m2_rf_check_group(group));
  if (!m2_rf_valid_name(name)) return m2_fail(M2_ERR_VALUE, "%s: bad series name '%s'", r->path, name ? name : "(null)");
  if (r->writer) M2_TRY(m2_run_flush(r));
  m2_status st = M2_OK;
  char gp[300], obj[320];
  snprintf(gp, sizeof gp, "/%s/%s", group, name);
  const char *h5file = r->path, *h5obj = obj;
  hid_t ds_s = -1, ds_v = -1, ds_t = -1;
  bool ex;
  snprintf(obj, sizeof obj, "%s/step", gp);
  RF_TRY(m2_h5_exists(r->file, obj, &ex, r->path));
  if (!ex) RF_FAIL(M2_ERR_INDEX, "%s: no series %s", r->path, gp);
  H5CHK(ds_s = H5Dopen2(r->file, obj, H5P_DEFAULT));
  int64_t n, nv, nt = -1;
  RF_TRY(ds_len(ds_s, &n, r->path, obj));
  snprintf(obj, sizeof obj, "%s/value", gp);
  H5CHK(ds_v = H5Dopen2(r->file, obj, H5P_DEFAULT));
  RF_TRY(ds_len(ds_v, &nv, r->path, obj));
  snprintf(obj, sizeof obj, "%s/time", gp);
  RF_TRY(m2_h5_exists(r->file, obj, &ex, r->path));
  if (ex) {
    H5CHK(ds_t = H5Dopen2(r->file, obj, H5P_DEFAULT));
    RF_TRY(ds_len(ds_t, &nt, r->path, obj));
  }
  if (nv < n) n = nv; /* cannot happen with m2lab's write order; other writers: a prefix */
  if (ex && nt < n) n = nt;
  size_t cnt = (size_t)(n ? n : 1);
  out->step = malloc(sizeof(int64_t) * cnt);
  out->value = malloc(sizeof(double) * cnt);
  if (ex) out->time = malloc(sizeof(double) * cnt);
  if (!out->step || !out->value || (ex && !out->time)) RF_FAIL(M2_ERR_OOM, "%s: %s: out of memory", r->path, gp);
  snprintf(obj, sizeof obj, "%s/step", gp);
  RF_TRY(read_prefix(ds_s, H5T_NATIVE_INT64, n, out->step, r->path, obj));
  snprintf(obj, sizeof obj, "%s/value", gp);
  RF_TRY(read_prefix(ds_v, H5T_NATIVE_DOUBLE, n, out->value, r->path, obj));
  if (ex) {
    snprintf(obj, sizeof obj, "%s/time", gp);
    RF_TRY(read_prefix(ds_t, H5T_NATIVE_DOUBLE, n, out->time, r->path, obj));
  }
  out->n = n;
fail:
  m2_h5_close(&ds_s);
  m2_h5_close(&ds_v);
  m2_h5_close(&ds_t);
  if (st != M2_OK) m2_series_free(out);
  return st;
}

m2_status m2_run_list_series(m2_run *r, const char *group, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "list_series"));
  M2_TRY(m2_rf_check_group(group));
  if (r->writer) M2_TRY(m2_run_flush(r));
  return m2_h5_list(r->file, group, H5O_TYPE_GROUP, out, r->path);
}

m2_status m2_run_series_stats(m2_run *r, const char *group, const char *name, m2_series_stats *out) {
  memset(out, 0, sizeof *out);
  m2_series s;
  M2_TRY(m2_run_read_series(r, group, name, &s));
  int goal = 0;
  m2_rf_series *mem = r->writer ? series_find(r, group, name) : NULL;
  if (mem && mem->goal) goal = mem->goal;
  if (!goal) {
    char gp[300];
    snprintf(gp, sizeof gp, "/%s/%s", group, name);
    hid_t g = H5Gopen2(r->file, gp, H5P_DEFAULT);
    m2_value v;
    if (g >= 0 && m2_h5_attr_read(g, "goal", &v, r->path, gp) == M2_OK) {
      if (v.kind == M2_VAL_STR) goal = strcmp(v.s, "max") == 0 ? +1 : -1;
      m2_value_free(&v);
    }
    m2_h5_close(&g);
    m2_clear_error();
  }
  if (!goal) goal = m2_rf_default_goal(name);
  out->goal = goal;
  out->count = s.n;
  out->min = out->max = out->best = out->last = NAN;
  out->min_step = out->max_step = out->best_step = out->last_step = -1;
  if (s.n > 0) {
    out->last = s.value[s.n - 1];
    out->last_step = s.step[s.n - 1];
  }
  for (int64_t i = 0; i < s.n; i++) {
    double v = s.value[i];
    if (isnan(v)) continue;
    if (isnan(out->min) || v < out->min) { out->min = v; out->min_step = s.step[i]; }
    if (isnan(out->max) || v > out->max) { out->max = v; out->max_step = s.step[i]; }
  }
  out->best = goal > 0 ? out->max : out->min;
  out->best_step = goal > 0 ? out->max_step : out->min_step;
  m2_series_free(&s);
  return M2_OK;
}
