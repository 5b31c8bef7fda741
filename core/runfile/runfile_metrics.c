/* runfile_metrics.c — metric and eval series, the calls of runfile.h: logging (flushed every flush_interval with
 * m2_run_flush, runfile_writer.c), goals, truncation for a resume, reading whole series, last/best statistics. The
 * buffering table and the datasets' writing and loading are runfile_series.c's. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "runfile_int.h"

m2_status m2_run_log(m2_run *r, const char *group, const char *name, int64_t step, double value) {
  M2_TRY(m2_rf_check_open(r, true, "log"));
  m2_rf_series *s;
  M2_TRY(m2_rf_series_get(r, group, name, &s));
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
  M2_TRY(m2_rf_series_get(r, group, name, &s));
  if (s->goal != g) {
    s->goal = g;
    s->goal_dirty = true;
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
    M2_TRY(m2_rf_series_open_ids(r, s));
    int64_t *steps = malloc(sizeof(int64_t) * (size_t)s->nfile);
    if (!steps) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
    {
      const char *h5file = r->path, *h5obj = obj;
      H5CHK(H5Dread(s->ds_step, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps));
    }
    int64_t n = 0;
    while (n < s->nfile && steps[n] <= after_step) n++;
    if (n < s->nfile) {
      if ((st = m2_rf_ds_trim(s->ds_step, n, r->path, obj)) == M2_OK &&
          (st = m2_rf_ds_trim(s->ds_value, n, r->path, obj)) == M2_OK && s->has_time)
        st = m2_rf_ds_trim(s->ds_time, n, r->path, obj);
      s->nfile = n;
    }
  fail:
    free(steps);
    if (st != M2_OK) return st;
  }
  return m2_rf_arrays_truncate(r, after_step);
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
  RF_TRY(m2_rf_ds_len(ds_s, &n, r->path, obj));
  snprintf(obj, sizeof obj, "%s/value", gp);
  H5CHK(ds_v = H5Dopen2(r->file, obj, H5P_DEFAULT));
  RF_TRY(m2_rf_ds_len(ds_v, &nv, r->path, obj));
  snprintf(obj, sizeof obj, "%s/time", gp);
  RF_TRY(m2_h5_exists(r->file, obj, &ex, r->path));
  if (ex) {
    H5CHK(ds_t = H5Dopen2(r->file, obj, H5P_DEFAULT));
    RF_TRY(m2_rf_ds_len(ds_t, &nt, r->path, obj));
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
  m2_rf_series *mem = r->writer ? m2_rf_series_find(r, group, name) : NULL;
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
