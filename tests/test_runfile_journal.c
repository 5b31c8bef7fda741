/* test_runfile_journal.c — the writer driver's flush journal (core/runfile/runfile_vfd.c), deterministically: a complete
 * journal is replayed (writes in order, an overlapping later write wins, then the truncation), an incomplete or
 * corrupted one is dropped without touching the file, none at all is fine; an empty file (a writer killed before its
 * first flush) is reported as such; then a real run file: a flush leaves no
 * journal behind, and h5py-style reading with the default driver sees what the journaled flushes wrote. (The
 * random kills of test_runfile_crash exercise the same code under a dying writer.) */
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "../core/runfile/runfile.h"
#include "../core/runfile/runfile_int.h"

static char g_dir[64], g_file[128], g_jnl[160];

static uint64_t fnv(uint64_t h, const void *d, size_t n) {
  const unsigned char *p = d;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* A journal in the documented format: records (addr, size, kind, data); `cut` bytes dropped from the end, `flip`
 * >= 0 flips that byte. */
typedef struct rec { uint64_t addr, size; unsigned char kind; const char *data; } rec;
static void write_journal(const rec *r, int n, size_t cut, long flip) {
  unsigned char buf[4096];
  size_t at = 0;
  memcpy(buf, "M2JNL001", 8), at = 8;
  for (int i = 0; i < n; i++) {
    memcpy(buf + at, &r[i].addr, 8), memcpy(buf + at + 8, &r[i].size, 8), buf[at + 16] = r[i].kind;
    at += 17;
    memcpy(buf + at, r[i].data, r[i].size), at += r[i].size;
  }
  uint64_t cnt = (uint64_t)n, h = fnv(14695981039346656037ull, buf, at);
  memcpy(buf + at, "M2JNLEND", 8), memcpy(buf + at + 8, &cnt, 8), memcpy(buf + at + 16, &h, 8), at += 24;
  if (flip >= 0) buf[flip] ^= 0x40;
  FILE *f = fopen(g_jnl, "wb");
  fwrite(buf, 1, at - cut, f);
  fclose(f);
}

static void write_file(const char *s) {
  FILE *f = fopen(g_file, "wb");
  fputs(s, f);
  fclose(f);
}

static bool file_is(const char *want) {
  char got[256] = {0};
  FILE *f = fopen(g_file, "rb");
  size_t n = f ? fread(got, 1, sizeof got - 1, f) : 0;
  if (f) fclose(f);
  bool ok = n == strlen(want) && memcmp(got, want, n) == 0;
  if (!ok) fprintf(stderr, "file holds \"%.*s\", want \"%s\"\n", (int)n, got, want);
  return ok;
}

static void test_recover(void) {
  const rec r[] = {{2, 3, 0, "xyz"}, {3, 2, 0, "QR"}, {20, 2, 0, "tt"}, {12, 0, 1, ""}};
  bool replayed = false;
  write_file("0123456789abcdef");
  CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
  CHECK(!replayed && file_is("0123456789abcdef"), "no journal: nothing to do");

  write_journal(r, 4, 0, -1);
  CHECK(m2_rf_journal_exists(g_file), "journal written");
  CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
  /* writes in order (the later QR over yz), the write past the end grows the file, the truncation cuts it to 12 */
  CHECK(replayed && file_is("01xQR56789ab"), "complete journal replayed");
  CHECK(!m2_rf_journal_exists(g_file), "replayed journal deleted");
  CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
  CHECK(!replayed && file_is("01xQR56789ab"), "replaying is done once");

  const size_t cuts[] = {1, 8, 24, 30};
  for (int i = 0; i < 4; i++) {
    write_file("0123456789abcdef");
    write_journal(r, 4, cuts[i], -1);
    CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
    CHECK(!replayed && file_is("0123456789abcdef") && !m2_rf_journal_exists(g_file),
          "journal cut by %zu bytes: dropped, file untouched", cuts[i]);
  }
  const long flips[] = {0, 9, 27, 40};
  for (int i = 0; i < 4; i++) {
    write_file("0123456789abcdef");
    write_journal(r, 4, 0, flips[i]);
    CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
    CHECK(!replayed && file_is("0123456789abcdef") && !m2_rf_journal_exists(g_file),
          "journal with byte %ld flipped: dropped, file untouched", flips[i]);
  }
  write_file("0123456789abcdef");
  write_journal(r, 0, 0, -1); /* an empty (but complete) journal */
  CHECK_OK(m2_rf_journal_recover(g_file, &replayed));
  CHECK(replayed && file_is("0123456789abcdef"), "empty journal");
  unlink(g_file);
}

/* A writer killed before its first flush leaves an empty file (its creation is journaled): both reading and resuming
 * say so, instead of a bare "not an HDF5 file". */
static void test_empty_file(void) {
  write_file("");
  m2_run_opts rs = {0};
  rs.mode = M2_RUN_RESUME;
  CHECK_FAILS(m2_run_open(g_file, NULL) == NULL, M2_ERR_IO, "before its first flush");
  CHECK_FAILS(m2_run_open(g_file, &rs) == NULL, M2_ERR_IO, "before its first flush");
  unlink(g_file);
}

static void test_run_file(void) {
  m2_run_opts o = {0};
  o.mode = M2_RUN_CREATE;
  write_journal((const rec[]){{0, 4, 0, "JUNK"}}, 1, 0, -1); /* a stale journal of an older file of that name */
  m2_run *r = m2_run_open(g_file, &o);
  CHECK_NOTNULL(r);
  if (!r) return;
  CHECK(!m2_rf_journal_exists(g_file), "creating a run drops a stale journal (it is not this file's)");
  for (int s = 0; s < 50; s++) CHECK_OK(m2_run_log(r, s % 2 ? "eval" : "metrics", s % 10 < 5 ? "a" : "b", s, s));
  CHECK_OK(m2_run_set_attr(r, "note", m2_vstr("journaled")));
  m2_tensor *w = m2_full(M2_F32, M2_DEV_CPU, 2, (int64_t[]){16, 8}, 2.5);
  m2_ckpt_tensor t[] = {{"params/w", w}};
  CHECK_OK(m2_run_ckpt_write(r, 7, t, 1, NULL, 0));
  CHECK_OK(m2_run_flush(r));
  CHECK(!m2_rf_journal_exists(g_file), "no journal left after flushes");
  CHECK_OK(m2_run_close(r));
  CHECK(!m2_rf_journal_exists(g_file), "no journal left after close");
  /* the default driver (what h5py uses) reads the file */
  hid_t f = H5Fopen(g_file, H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(f >= 0, "H5Fopen with the default driver");
  if (f >= 0) {
    CHECK(H5Lexists(f, "/checkpoints/7/params/w", H5P_DEFAULT) > 0, "checkpoint there");
    CHECK(H5Lexists(f, "/metrics/a/value", H5P_DEFAULT) > 0 && H5Lexists(f, "/eval/b/step", H5P_DEFAULT) > 0,
          "series there");
    H5Fclose(f);
  }
  r = m2_run_open(g_file, NULL);
  CHECK_NOTNULL(r);
  if (r) {
    m2_tensor *back = m2_run_ckpt_read(r, 7, "params/w");
    CHECK(back && m2_numel(back) == 128 && ((float *)m2_data(back))[127] == 2.5f, "checkpoint reads back");
    m2_release(back);
    m2_run_close(r);
  }
  m2_release(w);
  unlink(g_file);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/m2jnl-XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  snprintf(g_file, sizeof g_file, "%s/run.h5", g_dir);
  snprintf(g_jnl, sizeof g_jnl, "%s-journal", g_file);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  test_recover();
  test_empty_file();
  test_run_file();
  unlink(g_jnl);
  rmdir(g_dir);
  return check_finish("test_runfile_journal");
}
