/* runfile_ckpt.c — checkpoints: written under a temporary name and renamed when complete,
 * keep-last-K pruning, cleanup of incomplete ones, reading tensors and attributes back. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "runfile_int.h"

/* Largest chunk of a stored tensor: HDF5 chunks must stay below 4 GiB, and the checksum
 * filter holds a copy of one chunk in memory. */
#define M2_RF_MAX_CHUNK_BYTES ((uint64_t)256 << 20)

/* ---------------- which checkpoints exist ---------------- */

/* 1: complete (complete = 1), 0: readable but not complete (a writer died before setting it), -1: unreadable. */
static int ckpt_state(hid_t file, const char *name) {
  char path[96];
  snprintf(path, sizeof path, "/checkpoints/%s", name);
  hid_t g = H5Gopen2(file, path, H5P_DEFAULT), a = -1;
  int state = -1;
  htri_t ex = g >= 0 ? H5Aexists(g, "complete") : -1;
  if (ex == 0) state = 0;
  if (ex > 0 && (a = H5Aopen(g, "complete", H5P_DEFAULT)) >= 0) {
    int64_t v = 0;
    if (H5Aread(a, H5T_NATIVE_INT64, &v) >= 0) state = v == 1 ? 1 : 0;
  }
  m2_h5_close(&a);
  m2_h5_close(&g);
  H5Eclear2(H5E_DEFAULT);
  return state;
}

bool m2_rf_ckpt_is_complete(hid_t file, const char *name) { return ckpt_state(file, name) == 1; }

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* The entries of /checkpoints: complete checkpoints (ascending steps); damaged ones, when `damaged` is given (a
 * decimal name whose group or complete attribute cannot be read); junk, when `junk` is given (".tmp-<step>", or a
 * readable group without complete = 1: a writer died while writing it). */
static m2_status list_ckpts(m2_run *r, m2_i64list *out, m2_strlist *damaged, m2_strlist *junk) {
  memset(out, 0, sizeof *out);
  if (junk) memset(junk, 0, sizeof *junk);
  if (damaged) memset(damaged, 0, sizeof *damaged);
  m2_strlist names;
  M2_TRY(m2_h5_list(r->file, "checkpoints", -1, &names, r->path));
  out->v = malloc(sizeof(int64_t) * (size_t)(names.n ? names.n : 1));
  if (!out->v) {
    m2_strlist_free(&names);
    return m2_fail(M2_ERR_OOM, "%s: out of memory", r->path);
  }
  m2_status st = M2_OK;
  for (int i = 0; i < names.n && st == M2_OK; i++) {
    int64_t step;
    bool decimal = m2_rf_parse_step(names.v[i], &step);
    int state = decimal ? ckpt_state(r->file, names.v[i]) : 0;
    if (state == 1) out->v[out->n++] = step;
    else if (state < 0) {
      if (damaged) st = m2_strlist_push(damaged, names.v[i]);
    } else if (junk) {
      st = m2_strlist_push(junk, names.v[i]);
    }
  }
  m2_strlist_free(&names);
  if (st != M2_OK) {
    m2_i64list_free(out);
    if (junk) m2_strlist_free(junk);
    if (damaged) m2_strlist_free(damaged);
    return st;
  }
  qsort(out->v, (size_t)out->n, sizeof(int64_t), cmp_i64);
  return M2_OK;
}

/* Can every object header and attribute under checkpoint group g be read? (What deleting it reads: deleting frees
 * every object, reading their headers and attributes; the tensors' data is freed unread.) */
static herr_t meta_cb(hid_t obj, const char *name, const H5O_info_t *info, void *ud) {
  (void)info, (void)ud;
  hid_t o = H5Oopen(obj, name, H5P_DEFAULT);
  if (o < 0) return -1;
  hsize_t idx = 0;
  int n = H5Aget_num_attrs(o);
  for (int i = 0; i < n; i++) {
    hid_t a = H5Aopen_by_idx(o, ".", H5_INDEX_NAME, H5_ITER_INC, idx++, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) {
      H5Oclose(o);
      return -1;
    }
    H5Aclose(a);
  }
  H5Oclose(o);
  return n < 0 ? -1 : 0;
}

/* Delete a checkpoint group (path "/checkpoints/<name>"). A damaged one whose own header still reads is unlinked
 * without being freed (its reference count raised first, so HDF5 reads nothing under it): its space is lost, but a
 * damaged checkpoint never blocks pruning, a rewrite of its step, or a resume. One whose header is damaged cannot be
 * unlinked at all: M2_ERR_IO. */
static m2_status remove_ckpt(m2_run *r, const char *path) {
  bool intact = H5Ovisit_by_name2(r->file, path, H5_INDEX_NAME, H5_ITER_INC, meta_cb, NULL, H5O_INFO_BASIC,
                                  H5P_DEFAULT) >= 0;
  H5Eclear2(H5E_DEFAULT);
  if (intact && H5Ldelete(r->file, path, H5P_DEFAULT) >= 0) return M2_OK;
  char why[768];
  m2_h5_last_error(why, sizeof why);
  hid_t g = H5Oopen(r->file, path, H5P_DEFAULT);
  bool kept = g >= 0 && H5Oincr_refcount(g) >= 0;
  if (g >= 0) H5Oclose(g);
  if (kept && H5Ldelete(r->file, path, H5P_DEFAULT) >= 0) return M2_OK;
  if (!why[0]) m2_h5_last_error(why, sizeof why);
  H5Eclear2(H5E_DEFAULT);
  return m2_fail(M2_ERR_IO, "%s: %s: a damaged checkpoint that cannot be deleted (%s)", r->path, path, why);
}

/* Delete incomplete checkpoints (a writer died while writing them). Damaged ones stay (inspect reports them) until
 * pruning passes them or their step is written again. */
static m2_status delete_junk(m2_run *r, bool *deleted) {
  m2_i64list steps;
  m2_strlist junk;
  M2_TRY(list_ckpts(r, &steps, NULL, &junk));
  m2_status st = M2_OK;
  for (int i = 0; i < junk.n && st == M2_OK; i++) {
    char path[300];
    snprintf(path, sizeof path, "/checkpoints/%s", junk.v[i]);
    st = remove_ckpt(r, path);
    *deleted = true;
  }
  m2_i64list_free(&steps);
  m2_strlist_free(&junk);
  return st;
}

/* Delete the oldest complete checkpoints until at most `keep` remain, and damaged ones older than the oldest kept
 * (pruning would have deleted them; one that cannot be deleted is moved aside, never an error). */
static m2_status prune(m2_run *r, int keep, bool *deleted) {
  m2_i64list steps;
  m2_strlist damaged;
  M2_TRY(list_ckpts(r, &steps, &damaged, NULL));
  m2_status st = M2_OK;
  int i = 0;
  for (; i + keep < steps.n && st == M2_OK; i++) {
    char path[96];
    snprintf(path, sizeof path, "/checkpoints/%" PRId64, steps.v[i]);
    st = remove_ckpt(r, path);
    *deleted = true;
  }
  for (int k = 0; k < damaged.n && st == M2_OK && i < steps.n; k++) {
    int64_t step;
    if (!m2_rf_parse_step(damaged.v[k], &step) || step >= steps.v[i]) continue;
    char path[96];
    snprintf(path, sizeof path, "/checkpoints/%s", damaged.v[k]);
    if (remove_ckpt(r, path) == M2_OK) *deleted = true;
    else m2_clear_error(); /* its header is damaged: it stays (inspect reports it) */
  }
  m2_i64list_free(&steps);
  m2_strlist_free(&damaged);
  return st;
}

m2_status m2_rf_ckpt_cleanup(m2_run *r) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/checkpoints";
  bool ex, deleted = false;
  RF_TRY(m2_h5_exists(r->file, "checkpoints", &ex, r->path));
  if (!ex) {
    hid_t g = -1;
    H5CHK(g = H5Gcreate2(r->file, "checkpoints", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    m2_h5_close(&g);
    return M2_OK;
  }
  RF_TRY(delete_junk(r, &deleted));
  if (deleted) H5CHK(m2_rf_h5flush(r->file));
fail:
  return st;
}

/* ---------------- writing ---------------- */

m2_status m2_run_ckpt_begin(m2_run *r, int64_t step) {
  M2_TRY(m2_rf_check_open(r, true, "ckpt_begin"));
  if (r->in_ckpt)
    return m2_fail(M2_ERR_VALUE, "%s: checkpoint %" PRId64 " is still open (commit or abort it first)", r->path,
                   r->ckpt_step);
  if (step < 0) return m2_fail(M2_ERR_VALUE, "%s: checkpoint step %" PRId64 " is negative", r->path, step);
  m2_status st = M2_OK;
  snprintf(r->ckpt_tmp, sizeof r->ckpt_tmp, "/checkpoints/.tmp-%" PRId64, step);
  const char *h5file = r->path, *h5obj = r->ckpt_tmp;
  /* readers get every metric logged so far before the file goes EXCLUSIVE */
  if (r->swmr) RF_TRY(m2_run_flush(r));
  RF_TRY(m2_rf_to_exclusive(r));
  bool deleted = false;
  RF_TRY(delete_junk(r, &deleted));
  /* Prune now, flush, and the new checkpoint's data reuses the freed space (runfile.h). */
  if (r->keep_last > 0) RF_TRY(prune(r, r->keep_last > 1 ? r->keep_last - 1 : 1, &deleted));
  if (deleted) H5CHK(m2_rf_h5flush(r->file));
  H5CHK(r->ckpt_group = H5Gcreate2(r->file, r->ckpt_tmp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  r->in_ckpt = true;
  r->ckpt_step = step;
  return M2_OK;
fail:
  return st;
}

static m2_status check_in_ckpt(m2_run *r, const char *what) {
  M2_TRY(m2_rf_check_open(r, true, what));
  if (!r->in_ckpt) return m2_fail(M2_ERR_VALUE, "%s: %s: no checkpoint begun (call m2_run_ckpt_begin)", r->path, what);
  return M2_OK;
}

m2_status m2_run_ckpt_put(m2_run *r, const char *path, const m2_tensor *t) {
  M2_TRY(check_in_ckpt(r, "ckpt_put"));
  char where[1200];
  snprintf(where, sizeof where, "/checkpoints/%" PRId64 "/%s", r->ckpt_step, path ? path : "(null)");
  if (!m2_rf_valid_tensor_path(path))
    return m2_fail(M2_ERR_VALUE,
                   "%s: bad tensor path '%s' ('/'-separated names of letters, digits and _.@:+=-; no empty "
                   "component, none starting with '.')",
                   r->path, path ? path : "(null)");
  if (!t) return m2_fail(M2_ERR_VALUE, "%s: %s: tensor is NULL", r->path, where);
  if (t->ndim < 0 || t->ndim > M2_MAX_DIMS) return m2_fail(M2_ERR_SHAPE, "%s: %s: bad ndim %d", r->path, where, t->ndim);
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = where;
  hid_t ft = -1, mt = -1, sp = -1, dcpl = -1, lcpl = -1, ds = -1;
  m2_tensor *host = NULL;
  bool ex;
  RF_TRY(m2_h5_exists(r->ckpt_group, path, &ex, r->path));
  if (ex) RF_FAIL(M2_ERR_VALUE, "%s: %s: stored twice in one checkpoint", r->path, where);
  RF_TRY(m2_h5_dtype_types(t->dtype, &ft, &mt, r->path, where));
  if (t->device.type == M2_CPU && m2_is_contiguous(t)) {
    host = (m2_tensor *)t;
    m2_retain(host);
  } else if (!(host = m2_clone_raw(t, t->dtype, M2_DEV_CPU))) {
    RF_FAIL(m2_errcode(), "%s: %s: copying to the host: %s", r->path, where, m2_errmsg());
  }
  int64_t numel = m2_numel(t);
  hsize_t dims[M2_MAX_DIMS], chunk[M2_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) dims[i] = chunk[i] = (hsize_t)t->shape[i];
  H5CHK(dcpl = H5Pcreate(H5P_DATASET_CREATE));
  if (t->ndim == 0) {
    H5CHK(sp = H5Screate(H5S_SCALAR));
    H5CHK(H5Pset_layout(dcpl, H5D_COMPACT)); /* inside the (checksummed) object header */
  } else {
    H5CHK(sp = H5Screate_simple(t->ndim, dims, NULL));
    if (numel > 0) {
      /* one chunk per tensor (split when large) with the Fletcher-32 checksum */
      uint64_t bytes = (uint64_t)numel * m2_dtype_size(t->dtype);
      for (int d = 0; bytes > M2_RF_MAX_CHUNK_BYTES && d < t->ndim;) {
        if (chunk[d] <= 1) { d++; continue; }
        uint64_t half = (chunk[d] + 1) / 2;
        bytes = bytes / chunk[d] * half;
        chunk[d] = half;
      }
      H5CHK(H5Pset_chunk(dcpl, t->ndim, chunk));
      H5CHK(H5Pset_fletcher32(dcpl));
    }
  }
  H5CHK(lcpl = H5Pcreate(H5P_LINK_CREATE));
  H5CHK(H5Pset_create_intermediate_group(lcpl, 1));
  H5CHK(ds = H5Dcreate2(r->ckpt_group, path, ft, sp, lcpl, dcpl, H5P_DEFAULT));
  if (numel > 0) H5CHK(H5Dwrite(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, m2_data(host)));
fail:
  m2_release(host);
  m2_h5_close(&ds);
  m2_h5_close(&lcpl);
  m2_h5_close(&dcpl);
  m2_h5_close(&sp);
  m2_h5_close(&ft);
  m2_h5_close(&mt);
  return st;
}

m2_status m2_run_ckpt_set(m2_run *r, const char *key, m2_value v) {
  M2_TRY(check_in_ckpt(r, "ckpt_set"));
  if (!m2_rf_valid_name(key)) return m2_fail(M2_ERR_VALUE, "%s: bad checkpoint attribute name '%s'", r->path, key ? key : "(null)");
  if (!strcmp(key, "step") || !strcmp(key, "complete") || !strcmp(key, "time"))
    return m2_fail(M2_ERR_VALUE, "%s: checkpoint attribute '%s' is set by m2lab", r->path, key);
  char where[96];
  snprintf(where, sizeof where, "/checkpoints/%" PRId64, r->ckpt_step);
  return m2_h5_attr_write(r->ckpt_group, key, v, r->path, where);
}

static m2_status finish_ckpt(m2_run *r, m2_status st) {
  /* back to APPEND whatever happened, unless the file itself is gone */
  r->in_ckpt = false;
  m2_h5_close(&r->ckpt_group);
  if (r->broken || r->file < 0) return st;
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    bool ex = false;
    if (m2_h5_exists(r->file, r->ckpt_tmp, &ex, r->path) == M2_OK && ex) remove_ckpt(r, r->ckpt_tmp);
    m2_rf_h5flush(r->file);
    m2_rf_to_append(r);
    H5Eclear2(H5E_DEFAULT);
    return m2_fail(st, "%s", msg);
  }
  return m2_rf_to_append(r);
}

m2_status m2_run_ckpt_commit(m2_run *r) {
  M2_TRY(check_in_ckpt(r, "ckpt_commit"));
  m2_status st = M2_OK;
  char final[96], iso[64];
  snprintf(final, sizeof final, "/checkpoints/%" PRId64, r->ckpt_step);
  const char *h5file = r->path, *h5obj = r->ckpt_tmp;
  m2_rf_iso_time(m2_rf_now(), iso, sizeof iso);
  RF_TRY(m2_h5_attr_write(r->ckpt_group, "step", m2_vi64(r->ckpt_step), r->path, final));
  RF_TRY(m2_h5_attr_write(r->ckpt_group, "time", m2_vstr(iso), r->path, final));
  RF_TRY(m2_h5_attr_write(r->ckpt_group, "complete", m2_vi64(1), r->path, final));
  m2_h5_close(&r->ckpt_group);
  RF_TRY(m2_rf_series_write_all(r));           /* metrics logged meanwhile */
  H5CHK(m2_rf_h5flush(r->file));  /* 1: the data, under the temporary name */
  RF_TRY(m2_rf_fsync(r));
  bool ex;
  RF_TRY(m2_h5_exists(r->file, final, &ex, r->path));
  if (ex) RF_TRY(remove_ckpt(r, final)); /* (a damaged one of that step included) */
  h5obj = final;
  H5CHK(H5Lmove(r->file, r->ckpt_tmp, r->file, final, H5P_DEFAULT, H5P_DEFAULT));
  bool deleted = false;
  if (r->keep_last > 0) RF_TRY(prune(r, r->keep_last, &deleted));
  H5CHK(m2_rf_h5flush(r->file));  /* 2: the rename (and pruning) */
  RF_TRY(m2_rf_fsync(r));
fail:
  return finish_ckpt(r, st);
}

m2_status m2_run_ckpt_abort(m2_run *r) {
  M2_TRY(check_in_ckpt(r, "ckpt_abort"));
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = r->ckpt_tmp;
  m2_h5_close(&r->ckpt_group);
  RF_TRY(remove_ckpt(r, r->ckpt_tmp));
  H5CHK(m2_rf_h5flush(r->file));
fail:
  return finish_ckpt(r, st);
}

m2_status m2_run_ckpt_write(m2_run *r, int64_t step, const m2_ckpt_tensor *tensors, int nt, const m2_kv *attrs,
                            int na) {
  M2_TRY(m2_run_ckpt_begin(r, step));
  m2_status st = M2_OK;
  for (int i = 0; i < nt && st == M2_OK; i++) st = m2_run_ckpt_put(r, tensors[i].path, tensors[i].t);
  for (int i = 0; i < na && st == M2_OK; i++) st = m2_run_ckpt_set(r, attrs[i].key, attrs[i].v);
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    m2_run_ckpt_abort(r);
    return m2_fail(st, "%s", msg);
  }
  return m2_run_ckpt_commit(r);
}

/* ---------------- reading ---------------- */

m2_status m2_run_ckpt_list(m2_run *r, m2_i64list *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "ckpt_list"));
  return list_ckpts(r, out, NULL, NULL);
}

m2_status m2_run_ckpt_damaged(m2_run *r, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  M2_TRY(m2_rf_check_open(r, false, "ckpt_damaged"));
  m2_i64list steps;
  M2_TRY(list_ckpts(r, &steps, out, NULL));
  m2_i64list_free(&steps);
  m2_strlist_sort(out);
  return M2_OK;
}

m2_status m2_rf_ckpt_junk(m2_run *r, m2_strlist *out) {
  m2_i64list steps;
  M2_TRY(list_ckpts(r, &steps, NULL, out));
  m2_i64list_free(&steps);
  m2_strlist_sort(out);
  return M2_OK;
}

m2_status m2_rf_ckpt_why_damaged(m2_run *r, const char *name) {
  m2_status st = M2_OK;
  char where[320];
  snprintf(where, sizeof where, "/checkpoints/%s", name);
  const char *h5file = r->path, *h5obj = where;
  hid_t g = -1;
  m2_value v = {0};
  H5CHK(g = H5Gopen2(r->file, where, H5P_DEFAULT));
  RF_TRY(m2_h5_attr_read(g, "complete", &v, r->path, where));
  if (v.kind != M2_VAL_I64 || v.i != 1) RF_FAIL(M2_ERR_IO, "%s: %s: its complete attribute is not 1", r->path, where);
  RF_FAIL(M2_ERR_IO, "%s: %s: cannot be read as a complete checkpoint", r->path, where);
fail:
  m2_value_free(&v);
  m2_h5_close(&g);
  return st;
}


m2_status m2_run_ckpt_latest(m2_run *r, int64_t *step) {
  m2_i64list l;
  M2_TRY(m2_run_ckpt_list(r, &l));
  if (l.n == 0) {
    m2_i64list_free(&l);
    return m2_fail(M2_ERR_INDEX, "%s: /checkpoints: no complete checkpoint", r->path);
  }
  *step = l.v[l.n - 1];
  m2_i64list_free(&l);
  return M2_OK;
}

/* Open /checkpoints/<step> if it is complete; else M2_ERR_INDEX listing what there is. */
static m2_status open_ckpt(m2_run *r, int64_t step, hid_t *g, char *where, size_t nwhere) {
  M2_TRY(m2_rf_check_open(r, false, "checkpoint"));
  snprintf(where, nwhere, "/checkpoints/%" PRId64, step);
  char name[32];
  snprintf(name, sizeof name, "%" PRId64, step);
  bool ex;
  M2_TRY(m2_h5_exists(r->file, where, &ex, r->path));
  if (step < 0 || !ex || !m2_rf_ckpt_is_complete(r->file, name)) {
    m2_i64list l;
    char have[400] = "";
    if (list_ckpts(r, &l, NULL, NULL) == M2_OK) {
      size_t k = 0;
      for (int i = 0; i < l.n && k + 24 < sizeof have; i++)
        k += (size_t)snprintf(have + k, sizeof have - k, "%s%" PRId64, i ? ", " : "", l.v[i]);
      m2_i64list_free(&l);
    }
    return m2_fail(M2_ERR_INDEX, "%s: %s: no complete checkpoint at step %" PRId64 " (have: %s)", r->path, where, step,
                   have[0] ? have : "none");
  }
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = where;
  H5CHK(*g = H5Gopen2(r->file, where, H5P_DEFAULT));
fail:
  return st;
}

static m2_status open_tensor(m2_run *r, hid_t g, const char *gwhere, const char *path, hid_t *ds, char *where,
                             size_t nwhere) {
  snprintf(where, nwhere, "%s/%s", gwhere, path ? path : "(null)");
  if (!m2_rf_valid_tensor_path(path)) return m2_fail(M2_ERR_VALUE, "%s: bad tensor path '%s'", r->path, path ? path : "(null)");
  bool ex;
  M2_TRY(m2_h5_exists(g, path, &ex, r->path));
  if (!ex) return m2_fail(M2_ERR_INDEX, "%s: %s: no such tensor in the checkpoint", r->path, where);
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = where;
  H5O_info_t oi;
  H5CHK(H5Oget_info_by_name2(g, path, &oi, H5O_INFO_BASIC, H5P_DEFAULT));
  if (oi.type != H5O_TYPE_DATASET) RF_FAIL(M2_ERR_INDEX, "%s: %s: is a group, not a tensor", r->path, where);
  H5CHK(*ds = H5Dopen2(g, path, H5P_DEFAULT));
fail:
  return st;
}

static m2_status tensor_info(m2_run *r, hid_t ds, const char *where, m2_dtype *dt, int *ndim, int64_t *shape) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = where;
  hid_t t = -1, sp = -1;
  H5CHK(t = H5Dget_type(ds));
  RF_TRY(m2_h5_dtype_of(t, dt, r->path, where));
  H5CHK(sp = H5Dget_space(ds));
  H5S_class_t cls;
  H5CHK(cls = H5Sget_simple_extent_type(sp));
  if (cls == H5S_NULL) RF_FAIL(M2_ERR_IO, "%s: %s: empty (null) dataspace", r->path, where);
  int nd;
  H5CHK(nd = H5Sget_simple_extent_ndims(sp));
  if (nd > M2_MAX_DIMS) RF_FAIL(M2_ERR_UNSUPPORTED, "%s: %s: %d dimensions (at most %d)", r->path, where, nd, M2_MAX_DIMS);
  hsize_t dims[M2_MAX_DIMS];
  if (nd > 0) H5CHK(H5Sget_simple_extent_dims(sp, dims, NULL));
  *ndim = nd;
  for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
fail:
  m2_h5_close(&sp);
  m2_h5_close(&t);
  return st;
}

m2_status m2_run_ckpt_info(m2_run *r, int64_t step, const char *path, m2_dtype *dtype, int *ndim, int64_t *shape) {
  hid_t g = -1, ds = -1;
  char gw[96], where[1200];
  m2_status st = open_ckpt(r, step, &g, gw, sizeof gw);
  if (st == M2_OK) st = open_tensor(r, g, gw, path, &ds, where, sizeof where);
  if (st == M2_OK) st = tensor_info(r, ds, where, dtype, ndim, shape);
  m2_h5_close(&ds);
  m2_h5_close(&g);
  return st;
}

static m2_status read_tensor(m2_run *r, int64_t step, const char *path, m2_tensor **out) {
  *out = NULL;
  hid_t g = -1, ds = -1, ft = -1, mt = -1;
  char gw[96], where[1200] = "";
  m2_dtype dt;
  int nd;
  int64_t shape[M2_MAX_DIMS];
  m2_status st = open_ckpt(r, step, &g, gw, sizeof gw);
  const char *h5file = r->path, *h5obj = where;
  if (st != M2_OK) goto fail;
  RF_TRY(open_tensor(r, g, gw, path, &ds, where, sizeof where));
  RF_TRY(tensor_info(r, ds, where, &dt, &nd, shape));
  RF_TRY(m2_h5_dtype_types(dt, &ft, &mt, r->path, where));
  if (!(*out = m2_empty(dt, M2_DEV_CPU, nd, shape))) RF_FAIL(m2_errcode(), "%s: %s: %s", r->path, where, m2_errmsg());
  if (m2_numel(*out) > 0) H5CHK(H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, m2_data(*out)));
  m2_set_name(*out, path);
fail:
  if (st != M2_OK) {
    m2_release(*out);
    *out = NULL;
  }
  m2_h5_close(&ft);
  m2_h5_close(&mt);
  m2_h5_close(&ds);
  m2_h5_close(&g);
  return st;
}

m2_tensor *m2_run_ckpt_read(m2_run *r, int64_t step, const char *path) {
  m2_tensor *t;
  return read_tensor(r, step, path, &t) == M2_OK ? t : NULL;
}

m2_status m2_run_ckpt_read_into(m2_run *r, int64_t step, const char *path, m2_tensor *dst) {
  if (!dst) return m2_fail(M2_ERR_VALUE, "%s: ckpt_read_into: destination is NULL", r ? r->path : "?");
  m2_tensor *src;
  M2_TRY(read_tensor(r, step, path, &src));
  m2_status st = M2_OK;
  if (!m2_same_shape(src, dst)) {
    char a[96], b[96];
    st = m2_fail(M2_ERR_SHAPE, "%s: /checkpoints/%" PRId64 "/%s: stored shape %s, destination %s", r->path, step, path,
                 m2_shape_str(src, a, sizeof a), m2_shape_str(dst, b, sizeof b));
  } else if ((st = m2_copy_(dst, src)) != M2_OK) {
    st = m2_fail_context(st, "%s: /checkpoints/%" PRId64 "/%s", r->path, step, path);
  }
  m2_release(src);
  return st;
}

typedef struct visit_ctx { m2_strlist *out; m2_status st; } visit_ctx;

static herr_t visit_cb(hid_t obj, const char *name, const H5O_info_t *info, void *ud) {
  visit_ctx *c = ud;
  if (info->type != H5O_TYPE_DATASET) return 0;
  c->st = m2_strlist_push(c->out, name);
  return c->st == M2_OK ? 0 : -1;
}

m2_status m2_run_ckpt_tensors(m2_run *r, int64_t step, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  hid_t g = -1;
  char gw[96];
  m2_status st = open_ckpt(r, step, &g, gw, sizeof gw);
  const char *h5file = r->path, *h5obj = gw;
  if (st != M2_OK) goto fail;
  visit_ctx c = {out, M2_OK};
  herr_t e = H5Ovisit2(g, H5_INDEX_NAME, H5_ITER_INC, visit_cb, &c, H5O_INFO_BASIC);
  if (c.st != M2_OK) RF_FAIL(c.st, "%s", m2_errmsg());
  H5CHK(e);
  m2_strlist_sort(out);
fail:
  m2_h5_close(&g);
  if (st != M2_OK) m2_strlist_free(out);
  return st;
}

m2_status m2_run_ckpt_get(m2_run *r, int64_t step, const char *key, m2_value *out) {
  memset(out, 0, sizeof *out);
  hid_t g = -1;
  char gw[96];
  if (!key) return m2_fail(M2_ERR_VALUE, "ckpt_get: key is NULL");
  m2_status st = open_ckpt(r, step, &g, gw, sizeof gw);
  if (st == M2_OK) st = m2_h5_attr_read(g, key, out, r->path, gw);
  m2_h5_close(&g);
  return st;
}

m2_status m2_run_ckpt_attr_names(m2_run *r, int64_t step, m2_strlist *out) {
  memset(out, 0, sizeof *out);
  hid_t g = -1;
  char gw[96];
  m2_status st = open_ckpt(r, step, &g, gw, sizeof gw);
  if (st == M2_OK) st = m2_h5_attr_names(g, out, r->path, gw);
  m2_h5_close(&g);
  return st;
}

m2_status m2_run_ckpt_verify(m2_run *r, int64_t step) {
  m2_strlist paths, keys;
  M2_TRY(m2_run_ckpt_tensors(r, step, &paths));
  m2_status st = M2_OK;
  for (int i = 0; i < paths.n && st == M2_OK; i++) {
    m2_tensor *t;
    st = read_tensor(r, step, paths.v[i], &t);
    m2_release(t);
  }
  m2_strlist_free(&paths);
  if (st == M2_OK) st = m2_run_ckpt_attr_names(r, step, &keys);
  if (st != M2_OK) return st;
  for (int i = 0; i < keys.n && st == M2_OK; i++) {
    m2_value v;
    if ((st = m2_run_ckpt_get(r, step, keys.v[i], &v)) == M2_OK) m2_value_free(&v);
  }
  m2_strlist_free(&keys);
  return st;
}
