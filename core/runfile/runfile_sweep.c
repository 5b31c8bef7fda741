/* runfile_sweep.c — the sweep index file (write whole + rename, read back) and its inspect
 * table. See runfile_sweep.h for the layout. */
#define _GNU_SOURCE
#include "runfile_sweep.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "runfile_int.h"

/* ---------------- string-array attributes ---------------- */

static m2_status write_str_array(hid_t obj, const char *key, char *const *v, int n, const char *file) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = key;
  hid_t t = -1, sp = -1, a = -1;
  hsize_t dims[1] = {(hsize_t)n};
  H5CHK(t = m2_h5_str_type());
  H5CHK(sp = H5Screate_simple(1, dims, NULL));
  H5CHK(a = H5Acreate2(obj, key, t, sp, H5P_DEFAULT, H5P_DEFAULT));
  if (n > 0) H5CHK(H5Awrite(a, t, v));
fail:
  m2_h5_close(&a);
  m2_h5_close(&sp);
  m2_h5_close(&t);
  return st;
}

static m2_status read_str_array(hid_t obj, const char *key, char ***out, int *nout, const char *file) {
  m2_status st = M2_OK;
  const char *h5file = file, *h5obj = key;
  hid_t sp = -1, a = -1;
  char **raw = NULL;
  hssize_t n = 0;
  *out = NULL;
  *nout = 0;
  htri_t ex;
  H5CHK(ex = H5Aexists(obj, key));
  if (!ex) RF_FAIL(M2_ERR_IO, "%s: / has no attribute '%s' (a damaged sweep index)", file, key);
  H5CHK(a = H5Aopen(obj, key, H5P_DEFAULT));
  H5CHK(sp = H5Aget_space(a));
  H5CHK(n = H5Sget_simple_extent_npoints(sp));
  raw = calloc((size_t)n + 1, sizeof *raw);
  char **copy = calloc((size_t)n + 1, sizeof *copy);
  if (!raw || !copy) {
    free(copy);
    RF_FAIL(M2_ERR_OOM, "%s: out of memory", file);
  }
  char where[300];
  snprintf(where, sizeof where, "/ (attribute '%s')", key);
  st = m2_h5_read_vlen_strs(a, n, raw, file, where); /* in a child process: see runfile_vlen.c */
  if (st != M2_OK) {
    free(copy);
    goto fail;
  }
  for (hssize_t i = 0; i < n; i++) copy[i] = raw[i] ? raw[i] : m2_rf_strdup("");
  *out = copy;
  *nout = (int)n;
fail:
  free(raw);
  m2_h5_close(&a);
  m2_h5_close(&sp);
  return st;
}

/* ---------------- write ---------------- */

static m2_status write_index(const char *tmp, const char *path, const m2_sweep_index *ix) {
  m2_status st = M2_OK;
  const char *h5file = path, *h5obj = "/";
  hid_t f = -1, fapl = -1, g = -1, gi = -1, gm = -1;
  H5CHK(fapl = H5Pcreate(H5P_FILE_ACCESS));
  H5CHK(H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST));
  H5CHK(f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
  char iso[64];
  m2_rf_iso_time(m2_rf_now(), iso, sizeof iso);
  const m2_kv attrs[] = {
      {"sweep_format_version", m2_vi64(M2_SWEEP_FORMAT)},
      {"kind", m2_vstr("m2lab sweep")},
      {"name", m2_vstr(ix->name ? ix->name : "")},
      {"script", m2_vstr(ix->script ? ix->script : "")},
      {"sweep_source", m2_vstr(ix->sweep_source ? ix->sweep_source : "")},
      {"created", m2_vstr(ix->created && ix->created[0] ? ix->created : iso)},
      {"updated", m2_vstr(iso)},
  };
  for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++) RF_TRY(m2_h5_attr_write(f, attrs[i].key, attrs[i].v, path, "/"));
  RF_TRY(write_str_array(f, "keys", ix->keys, ix->nkeys, path));
  char **names = calloc((size_t)ix->n + 1, sizeof *names);
  if (!names) RF_FAIL(M2_ERR_OOM, "%s: out of memory", path);
  for (int i = 0; i < ix->n; i++) names[i] = ix->members[i].name;
  st = write_str_array(f, "members", names, ix->n, path);
  free(names);
  if (st != M2_OK) goto fail;
  h5obj = "/members";
  H5CHK(gm = H5Gcreate2(f, "members", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  h5obj = "/info";
  H5CHK(gi = H5Gcreate2(f, "info", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  for (int i = 0; i < ix->n; i++) {
    const m2_sweep_member *m = &ix->members[i];
    if (!m2_rf_valid_name(m->name))
      RF_FAIL(M2_ERR_VALUE, "%s: bad member name '%s' (1..255 characters, no '/', not starting with '.')", path,
              m->name ? m->name : "(null)");
    if (!m->file || !m->file[0]) RF_FAIL(M2_ERR_VALUE, "%s: member '%s' has no file", path, m->name);
    char where[320];
    snprintf(where, sizeof where, "/members/%s", m->name);
    h5obj = where;
    H5CHK(H5Lcreate_external(m->file, "/", gm, m->name, H5P_DEFAULT, H5P_DEFAULT));
    snprintf(where, sizeof where, "/info/%s", m->name);
    H5CHK(g = H5Gcreate2(gi, m->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int j = 0; j < m->nh; j++) {
      const char *k = m->hparams[j].key;
      if (!m2_rf_valid_name(k) || strcmp(k, "file") == 0 || strcmp(k, "status") == 0 || strcmp(k, "exit_code") == 0)
        RF_FAIL(M2_ERR_VALUE, "%s: member '%s': bad hyper-parameter name '%s'", path, m->name, k ? k : "(null)");
      RF_TRY(m2_h5_attr_write(g, k, m->hparams[j].v, path, where));
    }
    RF_TRY(m2_h5_attr_write(g, "file", m2_vstr(m->file), path, where));
    RF_TRY(m2_h5_attr_write(g, "status", m2_vstr(m->status && m->status[0] ? m->status : "pending"), path, where));
    RF_TRY(m2_h5_attr_write(g, "exit_code", m2_vi64(m->exit_code), path, where));
    m2_h5_close(&g);
  }
  h5obj = "/";
  m2_h5_close(&gi);
  m2_h5_close(&gm);
  H5CHK(H5Fclose(f));
  f = -1;
fail:
  m2_h5_close(&g);
  m2_h5_close(&gi);
  m2_h5_close(&gm);
  m2_h5_close(&f);
  m2_h5_close(&fapl);
  return st;
}

m2_status m2_sweep_index_write(const char *path, const m2_sweep_index *ix) {
  m2_h5_init();
  if (!path || !path[0]) return m2_fail(M2_ERR_VALUE, "m2_sweep_index_write: empty path");
  char tmp[4096];
  const char *slash = strrchr(path, '/');
  int dirlen = slash ? (int)(slash - path) + 1 : 0;
  snprintf(tmp, sizeof tmp, "%.*s.index.h5.tmp-%d", dirlen, path, (int)getpid());
  m2_status st = write_index(tmp, path, ix);
  if (st == M2_OK) {
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      fsync(fd);
      close(fd);
    }
    if (rename(tmp, path) != 0) st = m2_fail(M2_ERR_IO, "%s: cannot replace the index: %s", path, strerror(errno));
  }
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    unlink(tmp);
    return m2_fail(st, "%s", msg);
  }
  return M2_OK;
}

/* ---------------- read ---------------- */

static void free_strs(char **v, int n) {
  if (!v) return;
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

void m2_sweep_index_free(m2_sweep_index *ix) {
  if (!ix) return;
  free(ix->name);
  free(ix->script);
  free(ix->sweep_source);
  free(ix->created);
  free_strs(ix->keys, ix->nkeys);
  for (int i = 0; i < ix->n; i++) {
    m2_sweep_member *m = &ix->members[i];
    free(m->name);
    free(m->file);
    free(m->status);
    for (int j = 0; j < m->nh; j++) {
      free((char *)m->hparams[j].key);
      m2_value_free(&m->hparams[j].v);
    }
    free(m->hparams);
  }
  free(ix->members);
  memset(ix, 0, sizeof *ix);
}

static m2_status open_index(const char *path, hid_t *f) {
  m2_h5_init();
  *f = -1;
  if (access(path, F_OK) != 0) return m2_fail(M2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, 0, 1);
  *f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (*f < 0) {
    char msg[768];
    m2_h5_last_error(msg, sizeof msg);
    if (strstr(msg, "signature")) return m2_fail(M2_ERR_IO, "%s: not an HDF5 file (file signature not found)", path);
    return m2_fail(M2_ERR_IO, "%s: cannot open: %s", path, msg);
  }
  htri_t ex = H5Aexists(*f, "sweep_format_version");
  if (ex <= 0) {
    H5Fclose(*f);
    *f = -1;
    return m2_fail(M2_ERR_IO, "%s: not an m2lab sweep index (no sweep_format_version attribute)", path);
  }
  return M2_OK;
}

static char *attr_string(hid_t obj, const char *key, const char *file, const char *objname) {
  m2_value v;
  if (m2_h5_attr_read(obj, key, &v, file, objname) != M2_OK) {
    m2_clear_error();
    return m2_rf_strdup("");
  }
  if (v.kind == M2_VAL_STR) return v.s;
  char buf[64];
  if (v.kind == M2_VAL_I64 || v.kind == M2_VAL_BOOL) snprintf(buf, sizeof buf, "%" PRId64, v.i);
  else snprintf(buf, sizeof buf, "%.17g", v.f);
  return m2_rf_strdup(buf);
}

m2_status m2_sweep_index_read(const char *path, m2_sweep_index *out) {
  memset(out, 0, sizeof *out);
  hid_t f;
  M2_TRY(open_index(path, &f));
  m2_status st = M2_OK;
  const char *h5file = path, *h5obj = "/";
  hid_t g = -1;
  char **names = NULL;
  int nnames = 0;
  m2_strlist attrs = {0, NULL};
  out->name = attr_string(f, "name", path, "/");
  out->script = attr_string(f, "script", path, "/");
  out->sweep_source = attr_string(f, "sweep_source", path, "/");
  out->created = attr_string(f, "created", path, "/");
  RF_TRY(read_str_array(f, "keys", &out->keys, &out->nkeys, path));
  RF_TRY(read_str_array(f, "members", &names, &nnames, path));
  out->members = calloc((size_t)nnames + 1, sizeof *out->members);
  if (!out->members) RF_FAIL(M2_ERR_OOM, "%s: out of memory", path);
  for (int i = 0; i < nnames; i++) {
    m2_sweep_member *m = &out->members[i];
    out->n = i + 1;
    m->name = names[i];
    names[i] = NULL;
    char where[320];
    snprintf(where, sizeof where, "/info/%s", m->name);
    h5obj = where;
    H5CHK(g = H5Gopen2(f, where, H5P_DEFAULT));
    m->file = attr_string(g, "file", path, where);
    m->status = attr_string(g, "status", path, where);
    m2_value ec;
    m->exit_code = -1;
    if (m2_h5_attr_read(g, "exit_code", &ec, path, where) == M2_OK && ec.kind == M2_VAL_I64) m->exit_code = ec.i;
    m2_clear_error();
    RF_TRY(m2_h5_attr_names(g, &attrs, path, where));
    m->hparams = calloc((size_t)attrs.n + 1, sizeof *m->hparams);
    if (!m->hparams) RF_FAIL(M2_ERR_OOM, "%s: out of memory", path);
    for (int j = 0; j < attrs.n; j++) {
      const char *k = attrs.v[j];
      if (strcmp(k, "file") == 0 || strcmp(k, "status") == 0 || strcmp(k, "exit_code") == 0) continue;
      m2_kv *kv = &m->hparams[m->nh];
      RF_TRY(m2_h5_attr_read(g, k, &kv->v, path, where));
      kv->key = m2_rf_strdup(k);
      m->nh++;
    }
    m2_strlist_free(&attrs);
    m2_h5_close(&g);
  }
fail:
  m2_strlist_free(&attrs);
  free_strs(names, nnames);
  m2_h5_close(&g);
  H5Fclose(f);
  if (st != M2_OK) {
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", m2_errmsg());
    m2_sweep_index_free(out);
    return m2_fail(st, "%s", msg);
  }
  return M2_OK;
}

bool m2_is_sweep_index(const char *path) {
  hid_t f;
  bool yes = open_index(path, &f) == M2_OK;
  if (yes) H5Fclose(f);
  m2_clear_error();
  return yes;
}

/* ---------------- the inspect table ---------------- */

/* s with control characters replaced, cut to w bytes (with "~" marking a cut) */
static void cell(char *buf, size_t n, const char *s, int w) {
  size_t k = 0, len = strlen(s);
  for (size_t i = 0; i < len && k + 1 < n; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[k++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
  buf[k] = 0;
  if (w > 1 && (int)k > w) {
    buf[w - 1] = '~';
    buf[w] = 0;
  }
}

static void value_text(const m2_value *v, char *buf, size_t n) {
  switch (v->kind) {
    case M2_VAL_I64: snprintf(buf, n, "%" PRId64, v->i); break;
    case M2_VAL_F64: snprintf(buf, n, "%.4g", v->f); break;
    case M2_VAL_BOOL: snprintf(buf, n, "%s", v->i ? "true" : "false"); break;
    case M2_VAL_STR: snprintf(buf, n, "%s", v->s ? v->s : ""); break;
    default: snprintf(buf, n, "-");
  }
}

#define MAX_EVAL_COLS 4
#define CELL 64

typedef struct row {
  char c[8 + 64][CELL]; /* name, status, keys..., steps, loss, evals... */
} row;

m2_status m2_sweep_inspect(const char *path, FILE *out) {
  m2_sweep_index ix;
  M2_TRY(m2_sweep_index_read(path, &ix));
  char dir[4096] = "";
  const char *slash = strrchr(path, '/');
  if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) + 1, path);
  int nk = ix.nkeys > 48 ? 48 : ix.nkeys;
  /* eval columns: the eval series of the first member that has any (up to MAX_EVAL_COLS) */
  char evals[MAX_EVAL_COLS][CELL];
  int ne = 0;
  int ncol = 2 + nk + 2;
  row *rows = calloc((size_t)ix.n + 1, sizeof *rows);
  int done = 0, failed = 0;
  if (!rows) {
    m2_sweep_index_free(&ix);
    return m2_fail(M2_ERR_OOM, "%s: out of memory", path);
  }
  row *hdr = &rows[0];
  snprintf(hdr->c[0], CELL, "member");
  snprintf(hdr->c[1], CELL, "status");
  for (int k = 0; k < nk; k++) cell(hdr->c[2 + k], CELL, ix.keys[k], 24);
  snprintf(hdr->c[2 + nk], CELL, "step");
  snprintf(hdr->c[3 + nk], CELL, "loss");
  for (int i = 0; i < ix.n; i++) {
    m2_sweep_member *m = &ix.members[i];
    row *r = &rows[i + 1];
    cell(r->c[0], CELL, m->name, 40);
    cell(r->c[1], CELL, m->status, 40);
    if (strcmp(m->status, "done") == 0) done++;
    else if (strncmp(m->status, "failed", 6) == 0) failed++;
    for (int k = 0; k < nk; k++) {
      snprintf(r->c[2 + k], CELL, "-");
      for (int j = 0; j < m->nh; j++)
        if (strcmp(m->hparams[j].key, ix.keys[k]) == 0) {
          char buf[256];
          value_text(&m->hparams[j].v, buf, sizeof buf);
          cell(r->c[2 + k], CELL, buf, 24);
        }
    }
    snprintf(r->c[2 + nk], CELL, "-");
    snprintf(r->c[3 + nk], CELL, "-");
    for (int e = 0; e < MAX_EVAL_COLS; e++) snprintf(r->c[4 + nk + e], CELL, "-");
    char file[8192];
    if (m->file[0] == '/') snprintf(file, sizeof file, "%s", m->file);
    else snprintf(file, sizeof file, "%s%s", dir, m->file);
    if (access(file, F_OK) != 0) continue;
    m2_run_opts o = {.mode = M2_RUN_READ, .open_timeout = 2.0};
    m2_run *run = m2_run_open(file, &o);
    if (!run) {
      snprintf(r->c[2 + nk], CELL, "%s", strstr(m2_errmsg(), "open for write") ? "busy" : "unreadable");
      m2_clear_error();
      continue;
    }
    m2_series_stats s;
    if (m2_run_series_stats(run, "metrics", "loss", &s) == M2_OK && s.count > 0) {
      snprintf(r->c[2 + nk], CELL, "%" PRId64, s.last_step);
      snprintf(r->c[3 + nk], CELL, "%.4g", s.last);
    }
    m2_clear_error();
    m2_strlist ev = {0, NULL};
    if (m2_run_list_series(run, "eval", &ev) == M2_OK) {
      for (int j = 0; j < ev.n; j++) {
        int col = -1;
        for (int e = 0; e < ne; e++)
          if (strcmp(evals[e], ev.v[j]) == 0) col = e;
        if (col < 0 && ne < MAX_EVAL_COLS) {
          cell(evals[ne], CELL, ev.v[j], 24);
          col = ne++;
        }
        if (col < 0) continue;
        if (m2_run_series_stats(run, "eval", ev.v[j], &s) == M2_OK && s.count > 0)
          snprintf(r->c[4 + nk + col], CELL, "%.4g", s.last);
      }
    }
    m2_strlist_free(&ev);
    m2_clear_error();
    m2_run_close(run);
    m2_clear_error();
  }
  for (int e = 0; e < ne; e++) snprintf(hdr->c[4 + nk + e], CELL, "eval.%.58s", evals[e]);
  ncol += ne;
  int width[8 + 64] = {0};
  for (int i = 0; i <= ix.n; i++)
    for (int c = 0; c < ncol; c++) {
      int w = (int)strlen(rows[i].c[c]);
      if (w > width[c]) width[c] = w;
    }
  char name[256], script[256];
  cell(name, sizeof name, ix.name, 80);
  cell(script, sizeof script, ix.script, 120);
  fprintf(out, "sweep %s: %d members (%d done, %d failed, %d other), script %s\n", name, ix.n, done, failed,
          ix.n - done - failed, script);
  fprintf(out, "created %s; step, loss: the last logged training step and loss; eval.*: the last eval values\n\n",
          ix.created);
  for (int i = 0; i <= ix.n; i++) {
    for (int c = 0; c < ncol; c++)
      fprintf(out, "%s%-*s", c ? "  " : "", c + 1 < ncol ? width[c] : 0, rows[i].c[c]);
    fputc('\n', out);
  }
  free(rows);
  m2_sweep_index_free(&ix);
  return M2_OK;
}

m2_status m2_inspect_any(const char *path, FILE *out) {
  if (m2_is_sweep_index(path)) return m2_sweep_inspect(path, out);
  return m2_inspect(path, out);
}
