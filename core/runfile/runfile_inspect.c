/* runfile_inspect.c — m2_inspect: a human summary of a run file (what `m2lab inspect` prints).
 * It only reads and prints: nothing from the file is executed, and strings are printed with
 * control characters escaped so a file cannot drive the terminal. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "runfile_int.h"

/* Print s with control characters escaped, cut to at most max bytes (0 = no limit). */
static void put_escaped(FILE *out, const char *s, size_t max) {
  size_t n = strlen(s), lim = max && n > max ? max : n;
  for (size_t i = 0; i < lim; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n') fputs("\\n", out);
    else if (c == '\t') fputs("\\t", out);
    else if (c == '\\') fputs("\\\\", out);
    else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
    else if (c == 0xc2 && i + 1 < lim && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9f) {
      fprintf(out, "\\u%04x", (unsigned char)s[i + 1]); /* a C1 control character */
      i++;
    } else fputc(c, out);
  }
  if (lim < n) fprintf(out, "... (%zu bytes)", n);
}

static void put_value(FILE *out, const m2_value *v, size_t max) {
  switch (v->kind) {
    case M2_VAL_I64: fprintf(out, "%" PRId64, v->i); break;
    case M2_VAL_F64: fprintf(out, "%.6g", v->f); break;
    case M2_VAL_BOOL: fputs(v->i ? "true" : "false", out); break;
    case M2_VAL_STR:
      fputc('"', out);
      put_escaped(out, v->s, max);
      fputc('"', out);
      break;
    default: fputs("?", out);
  }
}

typedef struct insp {
  m2_run *r;
  FILE *out;
  m2_status first;
  int ndamaged;
} insp;

/* A part of the file that cannot be read: one "damaged: <error>" line (the error names the file and the object). */
static void note_error(insp *c, m2_status st) {
  if (st == M2_OK) return;
  fputs("  damaged: ", c->out);
  put_escaped(c->out, m2_errmsg(), 0);
  fputc('\n', c->out);
  if (c->first == M2_OK) c->first = st;
  c->ndamaged++;
  m2_clear_error();
}

/* Get a root attribute as a string for display ("" when absent; an unreadable one is reported). */
static void attr_str(insp *c, const char *key, char *buf, size_t n) {
  m2_value v;
  buf[0] = 0;
  m2_status st = m2_run_get_attr(c->r, key, &v);
  if (st != M2_OK) {
    if (st != M2_ERR_INDEX) note_error(c, st);
    m2_clear_error();
    return;
  }
  if (v.kind == M2_VAL_STR) snprintf(buf, n, "%s", v.s);
  else if (v.kind == M2_VAL_I64 || v.kind == M2_VAL_BOOL) snprintf(buf, n, "%" PRId64, v.i);
  else if (v.kind == M2_VAL_F64) snprintf(buf, n, "%.6g", v.f);
  m2_value_free(&v);
}

static void header(insp *c) {
  char a[256], b[256], d[256];
  attr_str(c, "format_version", a, sizeof a);
  attr_str(c, "m2lab_version", b, sizeof b);
  attr_str(c, "git_rev", d, sizeof d);
  fprintf(c->out, "%-12s", "format");
  put_escaped(c->out, a, 20);
  fputs("  (m2lab ", c->out);
  put_escaped(c->out, b[0] ? b : "?", 40);
  fputs(", git ", c->out);
  put_escaped(c->out, d[0] ? d : "?", 40);
  fputs(")\n", c->out);

  char status[512];
  attr_str(c, "status", status, sizeof status);
  if (!status[0]) snprintf(status, sizeof status, "?");
  fprintf(c->out, "%-12s", "status");
  put_escaped(c->out, status, 200);
  bool alive = m2_run_writer_alive(m2_run_path(c->r));
  if (strcmp(status, "running") == 0)
    fputs(alive ? "  (a writer has the file open)" : "  (no writer has the file open: the run was killed or crashed)",
          c->out);
  else if (alive)
    fputs("  (a writer has the file open)", c->out);
  fputc('\n', c->out);

  attr_str(c, "start_time", a, sizeof a);
  attr_str(c, "host", b, sizeof b);
  attr_str(c, "device", d, sizeof d);
  fprintf(c->out, "%-12s", "started");
  put_escaped(c->out, a[0] ? a : "?", 40);
  fputs(" on ", c->out);
  put_escaped(c->out, b[0] ? b : "?", 80);
  fputs(", device ", c->out);
  put_escaped(c->out, d[0] ? d : "?", 40);
  fputc('\n', c->out);
  attr_str(c, "resume_count", a, sizeof a);
  if (a[0] && strcmp(a, "0") != 0) {
    attr_str(c, "last_resume", b, sizeof b);
    fprintf(c->out, "%-12s", "resumed");
    put_escaped(c->out, a, 20);
    fputs(" time(s), last at ", c->out);
    put_escaped(c->out, b[0] ? b : "?", 40);
    fputc('\n', c->out);
  }

  m2_value v;
  if (m2_run_get_attr(c->r, "script", &v) == M2_OK && v.kind == M2_VAL_STR) {
    size_t lines = 0, n = strlen(v.s);
    for (size_t i = 0; i < n; i++) lines += v.s[i] == '\n';
    if (n && v.s[n - 1] != '\n') lines++;
    fprintf(c->out, "%-12s%zu line%s, %zu bytes", "script", lines, lines == 1 ? "" : "s", n);
    if (n) {
      char first[128];
      size_t k = strcspn(v.s, "\n");
      snprintf(first, sizeof first, "%.*s", (int)(k < sizeof first - 1 ? k : sizeof first - 1), v.s);
      fputs(": ", c->out);
      put_escaped(c->out, first, 70);
    }
    fputc('\n', c->out);
  }
  m2_value_free(&v);
  m2_clear_error();
  if (m2_run_get_attr(c->r, "config_json", &v) == M2_OK && v.kind == M2_VAL_STR)
    fprintf(c->out, "%-12s%zu bytes of JSON\n", "config_json", strlen(v.s));
  m2_value_free(&v);
  m2_clear_error();
}

static void config(insp *c) {
  m2_strlist keys;
  m2_status st = m2_run_attr_names(c->r, true, &keys);
  if (st != M2_OK) {
    fprintf(c->out, "config\n");
    note_error(c, st);
    return;
  }
  fprintf(c->out, "config (%d keys)\n", keys.n);
  size_t w = 0;
  for (int i = 0; i < keys.n; i++) w = strlen(keys.v[i]) > w ? strlen(keys.v[i]) : w;
  if (w > 32) w = 32;
  for (int i = 0; i < keys.n; i++) {
    m2_value v;
    fputs("  ", c->out);
    put_escaped(c->out, keys.v[i], 64);
    for (size_t k = strlen(keys.v[i]); k < w; k++) fputc(' ', c->out);
    fputs(" = ", c->out);
    m2_status s = m2_run_get_attr(c->r, keys.v[i], &v);
    if (s == M2_OK) put_value(c->out, &v, 70);
    else fputs("(unreadable)", c->out);
    fputc('\n', c->out);
    m2_value_free(&v);
    if (s != M2_OK) note_error(c, s);
  }
  m2_strlist_free(&keys);
}

static void series_table(insp *c, const char *group) {
  m2_strlist names;
  /* every link in the group, not only the ones that read as series groups: a damaged one is reported, never
     left out */
  m2_status st = m2_h5_list(c->r->file, group, -1, &names, m2_run_path(c->r));
  if (st != M2_OK) {
    fprintf(c->out, "%s\n", group);
    note_error(c, st);
    return;
  }
  fprintf(c->out, "%s (%d series)\n", group, names.n);
  if (names.n == 0) {
    m2_strlist_free(&names);
    return;
  }
  int w = 4;
  for (int i = 0; i < names.n; i++) w = (int)strlen(names.v[i]) > w ? (int)strlen(names.v[i]) : w;
  if (w > 40) w = 40;
  fprintf(c->out, "  %-*s %8s %10s %13s %13s  %s\n", w, "name", "count", "last step", "last", "best", "(at step)");
  for (int i = 0; i < names.n; i++) {
    m2_series_stats s;
    fputs("  ", c->out);
    put_escaped(c->out, names.v[i], 40);
    for (int k = (int)strlen(names.v[i]); k < w; k++) fputc(' ', c->out);
    st = m2_run_series_stats(c->r, group, names.v[i], &s);
    if (st != M2_OK) {
      fputc('\n', c->out);
      note_error(c, st);
      continue;
    }
    if (s.count == 0) {
      fprintf(c->out, " %8d\n", 0);
      continue;
    }
    fprintf(c->out, " %8" PRId64 " %10" PRId64 " %13.6g %13.6g  (%s @ %" PRId64 ")\n", s.count, s.last_step, s.last,
            s.best, s.goal > 0 ? "max" : "min", s.best_step);
  }
  m2_strlist_free(&names);
}

/* Array series (/arrays/<name>): one line each, the count, the last step, the width and the last row's min, mean
 * and max. Printed only when the file has any. */
static void array_table(insp *c) {
  m2_strlist names;
  m2_status st = m2_h5_list(c->r->file, "arrays", -1, &names, m2_run_path(c->r));
  if (st != M2_OK) {
    fputs("arrays\n", c->out);
    note_error(c, st);
    return;
  }
  if (names.n == 0) {
    m2_strlist_free(&names);
    return;
  }
  fprintf(c->out, "arrays (%d series)\n", names.n);
  int w = 4;
  for (int i = 0; i < names.n; i++) w = (int)strlen(names.v[i]) > w ? (int)strlen(names.v[i]) : w;
  if (w > 40) w = 40;
  fprintf(c->out, "  %-*s %8s %10s %7s  %s\n", w, "name", "count", "last step", "width", "last row: min / mean / max");
  for (int i = 0; i < names.n; i++) {
    m2_array_series a;
    fputs("  ", c->out);
    put_escaped(c->out, names.v[i], 40);
    for (int k = (int)strlen(names.v[i]); k < w; k++) fputc(' ', c->out);
    st = m2_run_read_array(c->r, names.v[i], &a);
    if (st != M2_OK) {
      fputc('\n', c->out);
      note_error(c, st);
      continue;
    }
    if (a.n == 0) {
      fprintf(c->out, " %8d %10s %7" PRId64 "\n", 0, "", a.width);
    } else {
      const double *row = a.value + (a.n - 1) * a.width;
      double mn = row[0], mx = row[0], sum = 0;
      for (int64_t j = 0; j < a.width; j++) {
        mn = row[j] < mn ? row[j] : mn;
        mx = row[j] > mx ? row[j] : mx;
        sum += row[j];
      }
      fprintf(c->out, " %8" PRId64 " %10" PRId64 " %7" PRId64 "  %.6g / %.6g / %.6g\n", a.n, a.step[a.n - 1], a.width,
              mn, sum / (double)a.width, mx);
    }
    m2_array_series_free(&a);
  }
  m2_strlist_free(&names);
}

/* Check one checkpoint: the metadata of its tensors and its attributes, and with `data` every tensor's bytes against
 * their checksums. The first error, naming file and object. */
static m2_status ckpt_check(m2_run *r, int64_t step, bool data) {
  if (data) return m2_run_ckpt_verify(r, step);
  m2_strlist paths, keys;
  M2_TRY(m2_run_ckpt_tensors(r, step, &paths));
  m2_status st = M2_OK;
  for (int i = 0; i < paths.n && st == M2_OK; i++) {
    m2_dtype dt;
    int nd;
    int64_t shape[M2_MAX_DIMS];
    st = m2_run_ckpt_info(r, step, paths.v[i], &dt, &nd, shape);
  }
  m2_strlist_free(&paths);
  if (st == M2_OK) st = m2_run_ckpt_attr_names(r, step, &keys);
  if (st != M2_OK) return st;
  for (int i = 0; i < keys.n && st == M2_OK; i++) {
    m2_value v;
    st = m2_run_ckpt_get(r, step, keys.v[i], &v);
    if (st == M2_OK) m2_value_free(&v);
  }
  m2_strlist_free(&keys);
  return st;
}

/* Checkpoint data is read back (checksums) when the file is at most this large; else only the metadata is checked
 * (a resume reads, and so checks, what it loads). */
#define INSPECT_VERIFY_BYTES ((off_t)1 << 30)

static void checkpoints(insp *c) {
  m2_i64list steps;
  m2_strlist damaged;
  m2_status st = m2_run_ckpt_list(c->r, &steps);
  if (st == M2_OK && (st = m2_run_ckpt_damaged(c->r, &damaged)) != M2_OK) m2_i64list_free(&steps);
  if (st != M2_OK) {
    fprintf(c->out, "checkpoints\n");
    note_error(c, st);
    return;
  }
  fprintf(c->out, "checkpoints (%d)", steps.n);
  for (int i = 0; i < steps.n; i++) {
    if (i == 12 && steps.n > 16) {
      fprintf(c->out, " ... %" PRId64, steps.v[steps.n - 1]);
      break;
    }
    fprintf(c->out, "%s%" PRId64, i ? ", " : ": ", steps.v[i]);
  }
  fputc('\n', c->out);
  int64_t newest_damaged = -1;
  for (int i = 0; i < damaged.n; i++) {
    int64_t step;
    if (m2_rf_parse_step(damaged.v[i], &step) && step > newest_damaged) newest_damaged = step;
    note_error(c, m2_rf_ckpt_why_damaged(c->r, damaged.v[i]));
  }
  m2_strlist_free(&damaged);
  m2_strlist junk;
  if ((st = m2_rf_ckpt_junk(c->r, &junk)) != M2_OK) note_error(c, st);
  for (int i = 0; st == M2_OK && i < junk.n; i++) {
    int64_t step;
    if (m2_rf_parse_step(junk.v[i], &step)) { /* (the writer names a checkpoint by its step only once complete) */
      if (step > newest_damaged) newest_damaged = step;
      m2_fail(M2_ERR_IO, "%s: /checkpoints/%s: not complete (no complete = 1 attribute)", m2_run_path(c->r), junk.v[i]);
      note_error(c, M2_ERR_IO);
    } else {
      fputs("  incomplete: /checkpoints/", c->out);
      put_escaped(c->out, junk.v[i], 80);
      fputs(" (a writer died while writing it; a resume deletes it)\n", c->out);
    }
  }
  if (st == M2_OK) m2_strlist_free(&junk);
  struct stat sb;
  bool data = stat(m2_run_path(c->r), &sb) == 0 && sb.st_size <= INSPECT_VERIFY_BYTES;
  int64_t last = -1;
  for (int i = 0; i < steps.n; i++) {
    st = ckpt_check(c->r, steps.v[i], data);
    if (st != M2_OK) note_error(c, st);
    else last = steps.v[i];
  }
  if (!data && steps.n) {
    fprintf(c->out, "  (tensor data not read back: the file is %.1f GiB; a resume checks what it loads)\n",
            (double)sb.st_size / 1073741824.0);
  }
  bool newest = steps.n && last == steps.v[steps.n - 1] && last > newest_damaged;
  m2_i64list_free(&steps);
  if (last < 0) return;
  m2_strlist paths;
  st = m2_run_ckpt_tensors(c->r, last, &paths);
  if (st != M2_OK) {
    note_error(c, st);
    return;
  }
  /* tensors and bytes per top-level component ("params", "optim", ...) */
  enum { MAXG = 16 };
  char gname[MAXG][64];
  int gcount[MAXG] = {0}, ng = 0;
  double gbytes[MAXG] = {0}, total = 0;
  for (int i = 0; i < paths.n; i++) {
    m2_dtype dt;
    int nd;
    int64_t shape[M2_MAX_DIMS];
    st = m2_run_ckpt_info(c->r, last, paths.v[i], &dt, &nd, shape);
    if (st != M2_OK) {
      note_error(c, st);
      continue;
    }
    double bytes = (double)m2_dtype_size(dt);
    for (int d = 0; d < nd; d++) bytes *= (double)shape[d];
    total += bytes;
    char top[64];
    size_t k = strcspn(paths.v[i], "/");
    snprintf(top, sizeof top, "%.*s", (int)(k < 63 ? k : 63), paths.v[i]);
    if (!strchr(paths.v[i], '/')) snprintf(top, sizeof top, "(top level)");
    int g = 0;
    while (g < ng && strcmp(gname[g], top) != 0) g++;
    if (g == ng && ng < MAXG) snprintf(gname[ng++], 64, "%s", top);
    if (g < ng) {
      gcount[g]++;
      gbytes[g] += bytes;
    }
  }
  fprintf(c->out, "  %s %" PRId64 ": %d tensors, ", newest ? "latest" : "latest intact", last, paths.n);
  if (total >= 1048576.0) fprintf(c->out, "%.1f MiB", total / 1048576.0);
  else fprintf(c->out, "%.1f KiB", total / 1024.0);
  for (int g = 0; g < ng; g++) {
    fputs(g ? ", " : " (", c->out);
    put_escaped(c->out, gname[g], 40);
    fprintf(c->out, " %d", gcount[g]);
  }
  fputs(ng ? ")\n" : "\n", c->out);
  m2_strlist_free(&paths);
  m2_strlist keys;
  st = m2_run_ckpt_attr_names(c->r, last, &keys);
  if (st != M2_OK) {
    note_error(c, st);
    return;
  }
  for (int i = 0; i < keys.n; i++) {
    m2_value v;
    if (!strcmp(keys.v[i], "complete") || !strcmp(keys.v[i], "step")) continue;
    fputs("    ", c->out);
    put_escaped(c->out, keys.v[i], 64);
    fputs(" = ", c->out);
    st = m2_run_ckpt_get(c->r, last, keys.v[i], &v);
    if (st == M2_OK) put_value(c->out, &v, 70);
    fputc('\n', c->out);
    m2_value_free(&v);
    if (st != M2_OK) note_error(c, st);
  }
  m2_strlist_free(&keys);
}

m2_status m2_inspect(const char *path, FILE *out) {
  if (!out) return m2_fail(M2_ERR_VALUE, "m2_inspect: output stream is NULL");
  m2_run_opts o;
  memset(&o, 0, sizeof o);
  o.mode = M2_RUN_READ;
  o.open_timeout = 5;
  m2_run *r = m2_run_open(path, &o);
  if (!r) return m2_errcode(); /* the caller prints it (m2lab inspect: once, on stderr) */
  insp c = {r, out, M2_OK, 0};
  fprintf(out, "%-12s", "run file");
  put_escaped(out, path, 0);
  fputc('\n', out);
  header(&c);
  config(&c);
  series_table(&c, "metrics");
  series_table(&c, "eval");
  array_table(&c);
  checkpoints(&c);
  m2_status cs = m2_run_close(r);
  if (c.first != M2_OK)
    return m2_fail(c.first, "%s: damaged: %d part%s of the file cannot be read (the \"damaged:\" line%s above)", path,
                   c.ndamaged, c.ndamaged == 1 ? "" : "s", c.ndamaged == 1 ? "" : "s");
  return cs;
}
