/* runfile_series.c — a writer's metric and eval series: the in-memory table that buffers logged values, creating
 * and extending their datasets (value and time before step, the order that keeps live readers safe; runfile.h),
 * and, on resume, finding the series already in the file and trimming a partly written flush. It knows nothing of
 * the writer's state switches (runfile_writer.c): it writes in whichever state the caller put the file. */
#include <stdlib.h>
#include <string.h>
#include "runfile_int.h"

#define M2_RF_CHUNK 1024 /* elements per chunk of a series dataset (8 KiB) */

/* ---------------- the in-memory series table ---------------- */

m2_rf_series *m2_rf_series_find(m2_run *r, const char *group, const char *name) {
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

m2_status m2_rf_series_get(m2_run *r, const char *group, const char *name, m2_rf_series **out) {
  M2_TRY(m2_rf_check_group(group));
  if (!m2_rf_valid_name(name))
    return m2_fail(M2_ERR_VALUE, "%s: bad series name '%s' (1..255 characters, no '/', not starting with '.')", r->path,
                   name ? name : "(null)");
  if ((*out = m2_rf_series_find(r, group, name))) return M2_OK;
  return series_add(r, group, name, out);
}

void m2_rf_series_close_ids(m2_run *r) {
  for (int i = 0; i < r->nseries; i++) {
    m2_h5_close(&r->series[i].ds_step);
    m2_h5_close(&r->series[i].ds_value);
    m2_h5_close(&r->series[i].ds_time);
  }
  m2_rf_arrays_close_ids(r);
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
  m2_rf_arrays_free_all(r);
}

bool m2_rf_series_need_exclusive(const m2_run *r) {
  for (int i = 0; i < r->nseries; i++)
    if (!r->series[i].in_file || r->series[i].goal_dirty) return true;
  return m2_rf_arrays_need_exclusive(r);
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

m2_status m2_rf_series_open_ids(m2_run *r, m2_rf_series *s) {
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
  M2_TRY(m2_rf_series_open_ids(r, s));
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
  return m2_rf_arrays_write_all(r);
}

/* ---------------- resume ---------------- */

m2_status m2_rf_ds_len(hid_t ds, int64_t *n, const char *file, const char *obj) {
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

m2_status m2_rf_ds_trim(hid_t ds, int64_t n, const char *file, const char *obj) {
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
      if ((st = m2_rf_series_open_ids(r, s)) == M2_OK) {
        snprintf(obj, sizeof obj, "%s/step", gp);
        st = m2_rf_ds_len(s->ds_step, &ns, r->path, obj);
      }
      if (st == M2_OK) {
        snprintf(obj, sizeof obj, "%s/value", gp);
        st = m2_rf_ds_len(s->ds_value, &nv, r->path, obj);
      }
      if (st == M2_OK && has_time) {
        snprintf(obj, sizeof obj, "%s/time", gp);
        st = m2_rf_ds_len(s->ds_time, &nt, r->path, obj);
      }
      /* a writer killed inside a flush may have extended value/time and not step: trim */
      int64_t n = ns < nv ? ns : nv;
      if (has_time && nt < n) n = nt;
      if (st == M2_OK && ns != n) st = m2_rf_ds_trim(s->ds_step, n, r->path, gp);
      if (st == M2_OK && nv != n) st = m2_rf_ds_trim(s->ds_value, n, r->path, gp);
      if (st == M2_OK && has_time && nt != n) st = m2_rf_ds_trim(s->ds_time, n, r->path, gp);
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
  return m2_rf_arrays_load(r);
}
