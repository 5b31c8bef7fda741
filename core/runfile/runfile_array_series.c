/* runfile_array_series.c — array series (runfile.h): /arrays/<name>/ with step (n) int64, value (n, width) float64
 * and time (n) float64, one row per logged step (a MoE layer's per-expert load at each log step). They follow the
 * scalar series of runfile_series.c / runfile_metrics.c in everything that keeps a file safe:
 *   - values are buffered and written at the same flushes (the writer's table below is written, closed, loaded and
 *     freed by the scalar table's functions, which call the m2_rf_arrays_* here);
 *   - a new array series is created only while EXCLUSIVE (m2_rf_arrays_need_exclusive asks for the switch);
 *   - APPEND extends value, then time, then step, flushing each: a live reader that takes n = len(step) finds n rows
 *     of value and time on disk;
 *   - a resume trims the three datasets to the shortest (a writer killed inside a flush); m2_run_truncate cuts them
 *     at a step, as it does the scalar series.
 * A series' width is fixed by its first row (or by the file on resume); a row of another width is refused. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "runfile_int.h"

#define M2_RF_ARRAY_CHUNK 8192        /* elements per chunk of value (64 KiB); rows per chunk = this / width */
#define M2_RF_ARRAY_MAX_WIDTH (1 << 20)

/* ---------------- the in-memory table ---------------- */

static m2_rf_array *array_find(m2_run *r, const char *name) {
  for (int i = 0; i < r->narrays; i++)
    if (strcmp(r->arrays[i].name, name) == 0) return &r->arrays[i];
  return NULL;
}

static m2_status array_add(m2_run *r, const char *name, int64_t width, m2_rf_array **out) {
  if (r->narrays == r->caparrays) {
    int cap = r->caparrays ? 2 * r->caparrays : 16;
    m2_rf_array *a = realloc(r->arrays, sizeof *a * (size_t)cap);
    if (!a) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
    r->arrays = a;
    r->caparrays = cap;
  }
  m2_rf_array *a = &r->arrays[r->narrays];
  memset(a, 0, sizeof *a);
  if (!(a->name = m2_rf_strdup(name))) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  a->width = width;
  a->ds_step = a->ds_value = a->ds_time = -1;
  a->has_time = !r->no_time;
  r->narrays++;
  *out = a;
  return M2_OK;
}

void m2_rf_arrays_close_ids(m2_run *r) {
  for (int i = 0; i < r->narrays; i++) {
    m2_h5_close(&r->arrays[i].ds_step);
    m2_h5_close(&r->arrays[i].ds_value);
    m2_h5_close(&r->arrays[i].ds_time);
  }
}

void m2_rf_arrays_free_all(m2_run *r) {
  m2_rf_arrays_close_ids(r);
  for (int i = 0; i < r->narrays; i++) {
    m2_rf_array *a = &r->arrays[i];
    free(a->name);
    free(a->step);
    free(a->value);
    free(a->time);
  }
  free(r->arrays);
  r->arrays = NULL;
  r->narrays = r->caparrays = 0;
}

bool m2_rf_arrays_need_exclusive(const m2_run *r) {
  for (int i = 0; i < r->narrays; i++)
    if (!r->arrays[i].in_file) return true;
  return false;
}

/* ---------------- writing ---------------- */

static m2_status array_create(m2_run *r, m2_rf_array *a) {
  m2_status st = M2_OK;
  char gpath[300];
  snprintf(gpath, sizeof gpath, "/arrays/%s", a->name);
  const char *h5file = r->path, *h5obj = gpath;
  hid_t lcpl = -1, g = -1, sp1 = -1, sp2 = -1, dcpl1 = -1, dcpl2 = -1;
  hsize_t dim1 = 0, max1 = H5S_UNLIMITED, chunk1 = 1024;
  hsize_t dim2[2] = {0, (hsize_t)a->width}, max2[2] = {H5S_UNLIMITED, (hsize_t)a->width};
  hsize_t rows = (hsize_t)(M2_RF_ARRAY_CHUNK / a->width), chunk2[2] = {rows ? rows : 1, (hsize_t)a->width};
  H5CHK(lcpl = H5Pcreate(H5P_LINK_CREATE));
  H5CHK(H5Pset_create_intermediate_group(lcpl, 1));
  H5CHK(g = H5Gcreate2(r->file, gpath, lcpl, H5P_DEFAULT, H5P_DEFAULT));
  H5CHK(sp1 = H5Screate_simple(1, &dim1, &max1));
  H5CHK(sp2 = H5Screate_simple(2, dim2, max2));
  H5CHK(dcpl1 = H5Pcreate(H5P_DATASET_CREATE));
  H5CHK(H5Pset_chunk(dcpl1, 1, &chunk1));
  H5CHK(dcpl2 = H5Pcreate(H5P_DATASET_CREATE));
  H5CHK(H5Pset_chunk(dcpl2, 2, chunk2));
  H5CHK(a->ds_step = H5Dcreate2(g, "step", H5T_STD_I64LE, sp1, H5P_DEFAULT, dcpl1, H5P_DEFAULT));
  H5CHK(a->ds_value = H5Dcreate2(g, "value", H5T_IEEE_F64LE, sp2, H5P_DEFAULT, dcpl2, H5P_DEFAULT));
  if (a->has_time) H5CHK(a->ds_time = H5Dcreate2(g, "time", H5T_IEEE_F64LE, sp1, H5P_DEFAULT, dcpl1, H5P_DEFAULT));
  a->in_file = true;
  a->nfile = 0;
fail:
  m2_h5_close(&dcpl2);
  m2_h5_close(&dcpl1);
  m2_h5_close(&sp2);
  m2_h5_close(&sp1);
  m2_h5_close(&g);
  m2_h5_close(&lcpl);
  return st;
}

static m2_status array_open_ids(m2_run *r, m2_rf_array *a) {
  m2_status st = M2_OK;
  char path[300];
  const char *h5file = r->path, *h5obj = path;
  if (a->ds_step < 0) {
    snprintf(path, sizeof path, "/arrays/%s/step", a->name);
    H5CHK(a->ds_step = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
  if (a->ds_value < 0) {
    snprintf(path, sizeof path, "/arrays/%s/value", a->name);
    H5CHK(a->ds_value = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
  if (a->has_time && a->ds_time < 0) {
    snprintf(path, sizeof path, "/arrays/%s/time", a->name);
    H5CHK(a->ds_time = H5Dopen2(r->file, path, H5P_DEFAULT));
  }
fail:
  return st;
}

/* Rows n0 .. n0+k of a dataset of rank 1 (width 0) or 2 (width columns): extend, write buf, flush when APPEND. */
static m2_status rows_append(m2_run *r, const m2_rf_array *a, hid_t ds, const char *which, hid_t mtype, int64_t width,
                             int64_t n0, int64_t k, const void *buf) {
  m2_status st = M2_OK;
  char where[300];
  snprintf(where, sizeof where, "/arrays/%s/%s", a->name, which);
  const char *h5file = r->path, *h5obj = where;
  hid_t fs = -1, ms = -1;
  int rank = width ? 2 : 1;
  hsize_t n1[2] = {(hsize_t)(n0 + k), (hsize_t)width}, off[2] = {(hsize_t)n0, 0}, cnt[2] = {(hsize_t)k, (hsize_t)width};
  H5CHK(H5Dset_extent(ds, n1));
  H5CHK(fs = H5Dget_space(ds));
  H5CHK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL));
  H5CHK(ms = H5Screate_simple(rank, cnt, NULL));
  H5CHK(H5Dwrite(ds, mtype, ms, fs, H5P_DEFAULT, buf));
  if (r->swmr) H5CHK(H5Dflush(ds));
fail:
  m2_h5_close(&ms);
  m2_h5_close(&fs);
  return st;
}

static m2_status array_write(m2_run *r, m2_rf_array *a) {
  if (!a->in_file) {
    if (r->swmr) return m2_fail(M2_ERR_IO, "%s: /arrays/%s: internal: series created in SWMR mode", r->path, a->name);
    M2_TRY(array_create(r, a));
  }
  if (a->nbuf == 0) return M2_OK;
  M2_TRY(array_open_ids(r, a));
  /* value and time before step: a reader that sees n steps finds n rows (runfile.h) */
  M2_TRY(rows_append(r, a, a->ds_value, "value", H5T_NATIVE_DOUBLE, a->width, a->nfile, a->nbuf, a->value));
  if (a->has_time) M2_TRY(rows_append(r, a, a->ds_time, "time", H5T_NATIVE_DOUBLE, 0, a->nfile, a->nbuf, a->time));
  M2_TRY(rows_append(r, a, a->ds_step, "step", H5T_NATIVE_INT64, 0, a->nfile, a->nbuf, a->step));
  a->nfile += a->nbuf;
  r->nbuffered -= a->nbuf;
  a->nbuf = 0;
  return M2_OK;
}

m2_status m2_rf_arrays_write_all(m2_run *r) {
  for (int i = 0; i < r->narrays; i++) M2_TRY(array_write(r, &r->arrays[i]));
  return M2_OK;
}

m2_status m2_run_log_array(m2_run *r, const char *name, int64_t step, const double *values, int64_t width) {
  M2_TRY(m2_rf_check_open(r, true, "log_array"));
  if (!m2_rf_valid_name(name))
    return m2_fail(M2_ERR_VALUE, "%s: bad array series name '%s' (1..255 characters, no '/', not starting with '.')",
                   r->path, name ? name : "(null)");
  if (width < 1 || width > M2_RF_ARRAY_MAX_WIDTH)
    return m2_fail(M2_ERR_VALUE, "%s: /arrays/%s: width %" PRId64 " out of range (1..%d)", r->path, name, width,
                   M2_RF_ARRAY_MAX_WIDTH);
  if (!values) return m2_fail(M2_ERR_VALUE, "%s: /arrays/%s: values is NULL", r->path, name);
  m2_rf_array *a = array_find(r, name);
  if (!a) M2_TRY(array_add(r, name, width, &a));
  if (a->width != width)
    return m2_fail(M2_ERR_VALUE, "%s: /arrays/%s has width %" PRId64 ", got a row of %" PRId64 " values", r->path,
                   name, a->width, width);
  if (a->nbuf == a->cap) {
    int64_t cap = a->cap ? 2 * a->cap : 16;
    int64_t *s = realloc(a->step, sizeof *s * (size_t)cap);
    if (s) a->step = s;
    double *v = realloc(a->value, sizeof *v * (size_t)(cap * width));
    if (v) a->value = v;
    double *t = realloc(a->time, sizeof *t * (size_t)cap);
    if (t) a->time = t;
    if (!s || !v || !t) return m2_fail(M2_ERR_OOM, "%s: out of memory buffering /arrays/%s", r->path, name);
    a->cap = cap;
  }
  a->step[a->nbuf] = step;
  memcpy(a->value + a->nbuf * width, values, sizeof(double) * (size_t)width);
  a->time[a->nbuf] = m2_rf_now() - r->start_unix;
  a->nbuf++;
  r->nbuffered++;
  if (!r->in_ckpt && (m2_rf_monotonic() - r->last_flush >= r->flush_interval || r->nbuffered >= (1 << 20)))
    return m2_run_flush(r);
  return M2_OK;
}

/* ---------------- shapes, resume, truncation ---------------- */

/* Rows (first dimension) of a dataset, and its width (second dimension; 0 for a 1-D dataset). */
static m2_status ds_rows(hid_t ds, int rank, int64_t *n, int64_t *width, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hid_t sp = -1;
  hsize_t d[2] = {0, 0};
  int nd;
  H5CHK(sp = H5Dget_space(ds));
  H5CHK(nd = H5Sget_simple_extent_ndims(sp));
  if (nd != rank) RF_FAIL(M2_ERR_IO, "%s: %s: expected a %d-D dataset, found %d-D", file, obj, rank, nd);
  H5CHK(H5Sget_simple_extent_dims(sp, d, NULL));
  *n = (int64_t)d[0];
  if (width) *width = (int64_t)d[1];
fail:
  m2_h5_close(&sp);
  return st;
}

static m2_status ds_cut(hid_t ds, int64_t n, int64_t width, const char *file, const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hsize_t d[2] = {(hsize_t)n, (hsize_t)width};
  H5CHK(H5Dset_extent(ds, d));
fail:
  return st;
}

/* Cut a series in the file to n rows. */
static m2_status array_cut(m2_run *r, m2_rf_array *a, int64_t n) {
  char gp[300];
  snprintf(gp, sizeof gp, "/arrays/%s", a->name);
  M2_TRY(ds_cut(a->ds_step, n, 0, r->path, gp));
  M2_TRY(ds_cut(a->ds_value, n, a->width, r->path, gp));
  if (a->has_time) M2_TRY(ds_cut(a->ds_time, n, 0, r->path, gp));
  a->nfile = n;
  return M2_OK;
}

static m2_status array_load_one(m2_run *r, const char *name) {
  char gp[300], obj[320];
  snprintf(gp, sizeof gp, "/arrays/%s", name);
  bool has_time;
  snprintf(obj, sizeof obj, "%s/time", gp);
  M2_TRY(m2_h5_exists(r->file, obj, &has_time, r->path));
  m2_rf_array *a;
  M2_TRY(array_add(r, name, 1, &a));
  a->has_time = has_time;
  a->in_file = true;
  int64_t ns = 0, nv = 0, nt = 0;
  m2_status st = array_open_ids(r, a);
  if (st == M2_OK) {
    snprintf(obj, sizeof obj, "%s/step", gp);
    st = ds_rows(a->ds_step, 1, &ns, NULL, r->path, obj);
  }
  if (st == M2_OK) {
    snprintf(obj, sizeof obj, "%s/value", gp);
    st = ds_rows(a->ds_value, 2, &nv, &a->width, r->path, obj);
    if (st == M2_OK && (a->width < 1 || a->width > M2_RF_ARRAY_MAX_WIDTH))
      st = m2_fail(M2_ERR_IO, "%s: %s: width %" PRId64 " out of range (1..%d)", r->path, obj, a->width,
                   M2_RF_ARRAY_MAX_WIDTH);
  }
  if (st == M2_OK && has_time) {
    snprintf(obj, sizeof obj, "%s/time", gp);
    st = ds_rows(a->ds_time, 1, &nt, NULL, r->path, obj);
  }
  /* a writer killed inside a flush may have extended value/time and not step: trim */
  int64_t n = ns < nv ? ns : nv;
  if (has_time && nt < n) n = nt;
  if (st == M2_OK && (ns != n || nv != n || (has_time && nt != n))) st = array_cut(r, a, n);
  a->nfile = n;
  m2_rf_arrays_close_ids(r);
  return st;
}

m2_status m2_rf_arrays_load(m2_run *r) {
  m2_strlist names;
  M2_TRY(m2_h5_list(r->file, "arrays", H5O_TYPE_GROUP, &names, r->path));
  m2_status st = M2_OK;
  for (int i = 0; i < names.n && st == M2_OK; i++)
    if (m2_rf_valid_name(names.v[i])) st = array_load_one(r, names.v[i]);
  m2_strlist_free(&names);
  return st;
}

m2_status m2_rf_arrays_truncate(m2_run *r, int64_t after_step) {
  for (int i = 0; i < r->narrays; i++) {
    m2_rf_array *a = &r->arrays[i];
    int64_t k = 0; /* drop buffered rows past the step */
    for (int64_t j = 0; j < a->nbuf; j++)
      if (a->step[j] <= after_step) {
        a->step[k] = a->step[j];
        a->time[k] = a->time[j];
        memmove(a->value + k * a->width, a->value + j * a->width, sizeof(double) * (size_t)a->width);
        k++;
      }
    r->nbuffered -= a->nbuf - k;
    a->nbuf = k;
    if (!a->in_file || a->nfile == 0) continue;
    M2_TRY(array_open_ids(r, a));
    int64_t *steps = malloc(sizeof(int64_t) * (size_t)a->nfile);
    if (!steps) return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
    m2_status st = M2_OK;
    char obj[320];
    snprintf(obj, sizeof obj, "/arrays/%s/step", a->name);
    {
      const char *h5file = r->path, *h5obj = obj;
      H5CHK(H5Dread(a->ds_step, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps));
    }
    int64_t n = 0;
    while (n < a->nfile && steps[n] <= after_step) n++;
    if (n < a->nfile) st = array_cut(r, a, n);
  fail:
    free(steps);
    if (st != M2_OK) return st;
  }
  return M2_OK;
}

/* ---------------- reading ---------------- */

void m2_array_series_free(m2_array_series *s) {
  if (!s) return;
  free(s->step);
  free(s->value);
  free(s->time);
  memset(s, 0, sizeof *s);
}

static m2_status read_rows(hid_t ds, hid_t mtype, int64_t n, int64_t width, void *buf, const char *file,
                           const char *obj) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = obj;
  hid_t fs = -1, ms = -1;
  if (n == 0) return M2_OK;
  int rank = width ? 2 : 1;
  hsize_t off[2] = {0, 0}, cnt[2] = {(hsize_t)n, (hsize_t)width};
  H5CHK(fs = H5Dget_space(ds));
  H5CHK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL));
  H5CHK(ms = H5Screate_simple(rank, cnt, NULL));
  H5CHK(H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, buf));
fail:
  m2_h5_close(&ms);
  m2_h5_close(&fs);
  return st;
}

m2_status m2_run_read_array(m2_run *r, const char *name, m2_array_series *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "read_array"));
  if (!m2_rf_valid_name(name))
    return m2_fail(M2_ERR_VALUE, "%s: bad array series name '%s'", r->path, name ? name : "(null)");
  if (r->writer) M2_TRY(m2_run_flush(r));
  m2_status st = M2_OK;
  char gp[300], obj[320];
  snprintf(gp, sizeof gp, "/arrays/%s", name);
  const char *h5file = r->path, *h5obj = obj;
  hid_t ds_s = -1, ds_v = -1, ds_t = -1;
  bool ex;
  snprintf(obj, sizeof obj, "%s/step", gp);
  RF_TRY(m2_h5_exists(r->file, obj, &ex, r->path));
  if (!ex) RF_FAIL(M2_ERR_INDEX, "%s: no array series %s", r->path, gp);
  H5CHK(ds_s = H5Dopen2(r->file, obj, H5P_DEFAULT));
  int64_t n, nv, nt = -1, width;
  RF_TRY(ds_rows(ds_s, 1, &n, NULL, r->path, obj));
  snprintf(obj, sizeof obj, "%s/value", gp);
  H5CHK(ds_v = H5Dopen2(r->file, obj, H5P_DEFAULT));
  RF_TRY(ds_rows(ds_v, 2, &nv, &width, r->path, obj));
  if (width < 1 || width > M2_RF_ARRAY_MAX_WIDTH)
    RF_FAIL(M2_ERR_IO, "%s: %s: width %" PRId64 " out of range (1..%d)", r->path, obj, width, M2_RF_ARRAY_MAX_WIDTH);
  snprintf(obj, sizeof obj, "%s/time", gp);
  RF_TRY(m2_h5_exists(r->file, obj, &ex, r->path));
  if (ex) {
    H5CHK(ds_t = H5Dopen2(r->file, obj, H5P_DEFAULT));
    RF_TRY(ds_rows(ds_t, 1, &nt, NULL, r->path, obj));
  }
  if (nv < n) n = nv; /* cannot happen with m2lab's write order; other writers: a prefix */
  if (ex && nt < n) n = nt;
  size_t cnt = (size_t)(n ? n : 1);
  out->step = malloc(sizeof(int64_t) * cnt);
  out->value = malloc(sizeof(double) * cnt * (size_t)width);
  if (ex) out->time = malloc(sizeof(double) * cnt);
  if (!out->step || !out->value || (ex && !out->time)) RF_FAIL(M2_ERR_OOM, "%s: %s: out of memory", r->path, gp);
  snprintf(obj, sizeof obj, "%s/step", gp);
  RF_TRY(read_rows(ds_s, H5T_NATIVE_INT64, n, 0, out->step, r->path, obj));
  snprintf(obj, sizeof obj, "%s/value", gp);
  RF_TRY(read_rows(ds_v, H5T_NATIVE_DOUBLE, n, width, out->value, r->path, obj));
  if (ex) {
    snprintf(obj, sizeof obj, "%s/time", gp);
    RF_TRY(read_rows(ds_t, H5T_NATIVE_DOUBLE, n, 0, out->time, r->path, obj));
  }
  out->n = n;
  out->width = width;
fail:
  m2_h5_close(&ds_s);
  m2_h5_close(&ds_v);
  m2_h5_close(&ds_t);
  if (st != M2_OK) m2_array_series_free(out);
  return st;
}

m2_status m2_run_list_arrays(m2_run *r, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "list_arrays"));
  if (r->writer) M2_TRY(m2_run_flush(r));
  return m2_h5_list(r->file, "arrays", H5O_TYPE_GROUP, out, r->path);
}
