/* test_shards.c — token shards (datasets/shards.c): write / read round trips in both widths, files laid out
 * byte for byte as llm.c's scripts write them (both of its magics), the loader's determinism, resume, epochs and rank
 * disjointness, every bad-input error (each naming the file), and the loader's tokens/s (printed). */
#include "check.h"
#include "../datasets/shards.h"
#include "../core/rng.h"
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char g_dir[64];

static const char *tmp_path(const char *name) {
  static char buf[8][256];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 256, "%s/%s", g_dir, name);
  return p;
}

/* a shard written the way llm.c's data_common.py writes one: 256 int32 (magic, version, n, zeros), then tokens */
static void write_llmc(const char *path, int32_t magic, int32_t version, int64_t n, const uint32_t *tok, int width,
                       int64_t extra_bytes) {
  FILE *f = fopen(path, "wb");
  int32_t h[256] = {0};
  h[0] = magic;
  h[1] = version;
  h[2] = (int32_t)n;
  fwrite(h, 4, 256, f);
  for (int64_t i = 0; i < n; i++) {
    if (width == 2) {
      uint16_t v = (uint16_t)tok[i];
      fwrite(&v, 2, 1, f);
    } else {
      fwrite(&tok[i], 4, 1, f);
    }
  }
  for (int64_t i = 0; i < extra_bytes; i++) fputc(0x5a, f);
  fclose(f);
}

static uint32_t *random_tokens(m2_rng *r, int64_t n, int64_t vocab) {
  uint32_t *t = malloc(sizeof(uint32_t) * (size_t)n);
  for (int64_t i = 0; i < n; i++) t[i] = (uint32_t)m2_rng_randint(r, vocab);
  return t;
}

static bool read_all_equal(const m2_shards *s, int i, const uint32_t *want, int64_t n) {
  int64_t *got = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  bool ok = m2_shards_read(s, i, 0, n, got) == M2_OK;
  for (int64_t j = 0; ok && j < n; j++) ok = got[j] == (int64_t)want[j];
  free(got);
  return ok;
}

static void test_round_trip(m2_rng *r) {
  /* version 1 (uint16) and 2 (uint32), through our writer */
  int64_t n1 = 5000 + m2_rng_randint(r, 1000), n2 = 3000 + m2_rng_randint(r, 1000);
  uint32_t *t1 = random_tokens(r, n1, 65536), *t2 = random_tokens(r, n2, 100352);
  t1[7] = 65535; /* the largest uint16 id */
  t2[3] = 100351;
  const char *p1 = tmp_path("rt_train_000000.bin"), *p2 = tmp_path("rt_train_000001.bin");
  CHECK_OK(m2_shard_write(p1, t1, n1, 1));
  CHECK_OK(m2_shard_write(p2, t2, n2, 2));
  m2_shard_info i1, i2;
  CHECK_OK(m2_shard_info_read(p1, &i1));
  CHECK_OK(m2_shard_info_read(p2, &i2));
  CHECK(i1.magic == 20240520 && i1.version == 1 && i1.width == 2 && i1.tokens == n1, "v1 header %d %d %d %lld",
        i1.magic, i1.version, i1.width, (long long)i1.tokens);
  CHECK(i2.magic == 20240520 && i2.version == 2 && i2.width == 4 && i2.tokens == n2, "v2 header");
  /* the bytes: llm.c's header, then the tokens, nothing else */
  struct stat st;
  stat(p1, &st);
  CHECK(st.st_size == 1024 + 2 * n1, "v1 size %lld", (long long)st.st_size);
  stat(p2, &st);
  CHECK(st.st_size == 1024 + 4 * n2, "v2 size %lld", (long long)st.st_size);
  FILE *f = fopen(p1, "rb");
  int32_t h[256];
  uint16_t first[8];
  CHECK(fread(h, 4, 256, f) == 256 && fread(first, 2, 8, f) == 8, "read back");
  fclose(f);
  int nonzero = 0;
  for (int i = 3; i < 256; i++) nonzero += h[i] != 0;
  CHECK(h[0] == 20240520 && h[1] == 1 && h[2] == n1 && nonzero == 0, "v1 header bytes");
  CHECK(first[0] == t1[0] && first[7] == 65535, "v1 tokens as little-endian uint16");
  m2_shards *s = m2_shards_open(2, (const char *const[]){p1, p2}, &(m2_shards_opts){.vocab = 100352});
  CHECK(s != NULL, "open both");
  if (s) {
    CHECK(m2_shards_count(s) == 2 && m2_shards_tokens(s) == n1 + n2, "counts");
    CHECK(m2_shards_width(s, 0) == 2 && m2_shards_width(s, 1) == 4, "widths");
    CHECK(read_all_equal(s, 0, t1, n1), "uint16 round trip");
    CHECK(read_all_equal(s, 1, t2, n2), "uint32 round trip");
    CHECK(strcmp(m2_shards_path(s, 1), p2) == 0, "path");
    m2_shards_close(s);
  }
  /* the glob opens them in name order */
  s = m2_shards_open_glob(tmp_path("rt_train_*.bin"), NULL);
  CHECK(s && m2_shards_count(s) == 2 && m2_shards_shard_tokens(s, 0) == n1, "glob");
  m2_shards_close(s);
  /* version 0 picks the smallest width that fits */
  const char *p3 = tmp_path("auto.bin");
  CHECK_OK(m2_shard_write(p3, t1, n1, 0));
  CHECK_OK(m2_shard_info_read(p3, &i1));
  CHECK(i1.version == 1, "auto: uint16 when every id fits");
  CHECK_OK(m2_shard_write(p3, t2, n2, 0));
  CHECK_OK(m2_shard_info_read(p3, &i2));
  CHECK(i2.version == 2, "auto: uint32 otherwise");
  /* an empty shard is valid */
  CHECK_OK(m2_shard_write(p3, t1, 0, 1));
  CHECK_OK(m2_shard_info_read(p3, &i1));
  CHECK(i1.tokens == 0, "empty shard");
  free(t1);
  free(t2);
}

static void test_llmc_files(m2_rng *r) {
  /* written by hand the way llm.c's scripts write them: GPT-2 (uint16) and llama-3 (magic 20240801, version 7) */
  int64_t n = 2000 + m2_rng_randint(r, 500);
  uint32_t *a = random_tokens(r, n, 50257), *b = random_tokens(r, n, 128256);
  const char *pa = tmp_path("llmc_gpt2_val_000000.bin"), *pb = tmp_path("llmc_llama3_val_000000.bin");
  write_llmc(pa, 20240520, 1, n, a, 2, 0);
  write_llmc(pb, 20240801, 7, n, b, 4, 0);
  m2_shards *s = m2_shards_open(1, (const char *const[]){pa}, &(m2_shards_opts){.vocab = 50257});
  CHECK(s && read_all_equal(s, 0, a, n), "llm.c GPT-2 shard");
  m2_shards_close(s);
  s = m2_shards_open(1, (const char *const[]){pb}, &(m2_shards_opts){.vocab = 128256});
  CHECK(s && m2_shards_width(s, 0) == 4 && read_all_equal(s, 0, b, n), "llm.c llama-3 shard");
  m2_shards_close(s);
  free(a);
  free(b);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void test_loader(m2_rng *r) {
  /* three shards of unequal length, one too short for a window */
  int64_t lens[3] = {1000 + m2_rng_randint(r, 200), 10, 700 + m2_rng_randint(r, 200)};
  const char *paths[3] = {tmp_path("ld_a.bin"), tmp_path("ld_b.bin"), tmp_path("ld_c.bin")};
  uint32_t *tok[3];
  for (int i = 0; i < 3; i++) {
    tok[i] = random_tokens(r, lens[i], i == 0 ? 60000 : 70000); /* shard a uint16, c uint32 */
    CHECK_OK(m2_shard_write(paths[i], tok[i], lens[i], 0));
  }
  m2_shards *s = m2_shards_open(3, paths, NULL);
  CHECK(s != NULL, "open");
  if (!s) return;
  CHECK(m2_shards_width(s, 0) == 2 && m2_shards_width(s, 2) == 4, "the loader reads both widths");
  int64_t T = 16, B = 4;
  int64_t N = m2_shards_windows(s, T);
  CHECK(N == (lens[0] - 1) / T + (lens[2] - 1) / T, "windows per epoch %lld", (long long)N);
  uint64_t seed = m2_rng_u64(r);
  m2_window_opts o = {.seed = seed, .index = 5, .batch = B, .length = T, .shuffle = true};
  int64_t x[64], y[64], x2[64], y2[64];
  CHECK_OK(m2_shards_batch_into(s, &o, x, y));
  CHECK_OK(m2_shards_batch_into(s, &o, x2, y2));
  CHECK(memcmp(x, x2, sizeof x) == 0 && memcmp(y, y2, sizeof y) == 0, "same (seed, index) -> same batch");
  /* each row is a window of the file: x = tokens [pos, pos + T), y = [pos + 1, pos + T] */
  int bad = 0;
  for (int64_t b = 0; b < B; b++) {
    int sh;
    int64_t pos;
    CHECK_OK(m2_shards_window_at(s, &o, (o.index * B + b), &sh, &pos));
    CHECK(sh != 1 && pos % T == 0 && pos + T < lens[sh], "window in a shard, on a tile (shard %d pos %lld)", sh,
          (long long)pos);
    for (int64_t t = 0; t < T; t++) {
      bad += x[b * T + t] != tok[sh][pos + t];
      bad += y[b * T + t] != tok[sh][pos + t + 1];
    }
  }
  CHECK(bad == 0, "rows are the file's tokens (%d wrong)", bad);
  /* every window of an epoch, both widths: the rows hold the file's tokens */
  int widths_seen = 0;
  for (int64_t idx = 0; idx * B < N; idx++) {
    m2_window_opts e = o;
    e.index = idx;
    int64_t xe[64], ye[64];
    CHECK_OK(m2_shards_batch_into(s, &e, xe, ye));
    for (int64_t b = 0; b < B; b++) {
      int sh;
      int64_t pos;
      m2_shards_window_at(s, &e, idx * B + b, &sh, &pos);
      widths_seen |= 1 << m2_shards_width(s, sh);
      for (int64_t t = 0; t < T; t++) {
        bad += xe[b * T + t] != tok[sh][pos + t];
        bad += ye[b * T + t] != tok[sh][pos + t + 1];
      }
    }
  }
  CHECK(bad == 0 && widths_seen == ((1 << 2) | (1 << 4)), "an epoch of batches from both widths (%d wrong)", bad);
  o.index = 6;
  CHECK_OK(m2_shards_batch_into(s, &o, x2, y2));
  CHECK(memcmp(x, x2, sizeof x) != 0, "another index -> another batch");
  /* resume: a fresh loader (files reopened) asked for batch 5 first gives what the run saw */
  m2_shards *s2 = m2_shards_open(3, paths, NULL);
  o.index = 5;
  CHECK_OK(m2_shards_batch_into(s2, &o, x2, y2));
  CHECK(memcmp(x, x2, sizeof x) == 0 && memcmp(y, y2, sizeof y) == 0, "resume: batch 5 alone is bit-identical");
  m2_shards_close(s2);
  o.seed = seed + 1;
  CHECK_OK(m2_shards_batch_into(s, &o, x2, y2));
  CHECK(memcmp(x, x2, sizeof x) != 0, "another seed -> another batch");
  o.seed = seed;

  /* an epoch visits every tile once; the next epoch in another order; ranks take disjoint tiles */
  int64_t *seen = malloc(sizeof(int64_t) * (size_t)(2 * N)), *ep2 = seen + N;
  for (int64_t k = 0; k < 2 * N; k++) {
    int sh;
    int64_t pos;
    m2_shards_window_at(s, &o, k, &sh, &pos);
    seen[k] = sh * 1000000 + pos;
  }
  int64_t *sorted = malloc(sizeof(int64_t) * (size_t)N);
  memcpy(sorted, seen, sizeof(int64_t) * (size_t)N);
  qsort(sorted, (size_t)N, sizeof(int64_t), cmp_i64);
  int dup = 0;
  for (int64_t k = 1; k < N; k++) dup += sorted[k] == sorted[k - 1];
  CHECK(dup == 0, "an epoch is a permutation of the tiles (%d repeats)", dup);
  CHECK(memcmp(seen, ep2, sizeof(int64_t) * (size_t)N) != 0, "epoch 2 has another order");
  int in_order = 0;
  for (int64_t k = 1; k < N; k++) in_order += seen[k] > seen[k - 1];
  CHECK(in_order < N * 3 / 4, "shuffled (%d of %lld steps ascending)", in_order, (long long)N);
  /* not shuffled: file order */
  m2_window_opts q = o;
  q.shuffle = false;
  bad = 0;
  for (int64_t k = 0; k < N; k++) {
    int sh;
    int64_t pos;
    m2_shards_window_at(s, &q, k, &sh, &pos);
    if (sh * 1000000 + pos != sorted[k]) bad++;
  }
  CHECK(bad == 0, "shuffle = false: tiles in file order");
  /* ranks: world 3, a batch of 4 each; over the batches of one epoch no tile is read twice, and together they
     cover the tiles read by one rank with the same global batch */
  int R = 3;
  int64_t per_rank_batches = N / (B * R), cnt = 0;
  int64_t *got = malloc(sizeof(int64_t) * (size_t)N);
  for (int rank = 0; rank < R; rank++) {
    m2_window_opts w = o;
    w.rank = rank;
    w.world = R;
    for (int64_t idx = 0; idx < per_rank_batches; idx++) {
      int64_t xb[64], yb[64];
      CHECK_OK(m2_shards_batch_into(s, &(m2_window_opts){.seed = seed, .index = idx, .batch = B, .length = T,
                                                        .rank = rank, .world = R, .shuffle = true}, xb, yb));
      for (int64_t b = 0; b < B; b++) {
        int sh;
        int64_t pos;
        m2_shards_window_at(s, &w, (idx * B + b) * R + rank, &sh, &pos);
        got[cnt++] = sh * 1000000 + pos;
        int64_t first;
        m2_shards_read(s, sh, pos, 1, &first);
        if (xb[b * T] != first) bad++;
      }
    }
  }
  CHECK(bad == 0, "rank batches hold their windows");
  qsort(got, (size_t)cnt, sizeof(int64_t), cmp_i64);
  dup = 0;
  for (int64_t k = 1; k < cnt; k++) dup += got[k] == got[k - 1];
  CHECK(cnt > 0 && dup == 0, "ranks read disjoint tiles (%lld windows, %d repeats)", (long long)cnt, dup);
  /* rank r's window k is the single-rank window k R + r */
  int sh1, sh2;
  int64_t pos1, pos2;
  m2_shards_window_at(s, &(m2_window_opts){.seed = seed, .batch = B, .length = T, .rank = 2, .world = R,
                                            .shuffle = true}, 7 * R + 2, &sh1, &pos1);
  m2_shards_window_at(s, &o, 7 * R + 2, &sh2, &pos2);
  CHECK(sh1 == sh2 && pos1 == pos2, "rank windows interleave the single-rank sequence");
  free(got);
  free(sorted);
  free(seen);
  /* the tensor form */
  m2_tensor *tx, *ty;
  CHECK_OK(m2_shards_batch(s, &o, &tx, &ty));
  CHECK(tx->dtype == M2_I64 && tx->ndim == 2 && tx->shape[0] == B && tx->shape[1] == T, "tensor batch shape");
  CHECK(memcmp(m2_data(tx), x, sizeof x) == 0 && memcmp(m2_data(ty), y, sizeof y) == 0, "tensor batch = buffers");
  m2_release(tx);
  m2_release(ty);
  /* errors in the options */
  CHECK_FAILS(m2_shards_batch_into(s, &(m2_window_opts){.batch = 2, .length = 5000}, x, y) != M2_OK, M2_ERR_VALUE,
              "no window of 5001 tokens fits");
  CHECK_FAILS(m2_shards_batch_into(s, &(m2_window_opts){.batch = 2, .length = 4, .rank = 3, .world = 3}, x, y) !=
                  M2_OK, M2_ERR_VALUE, "rank 3 is not in 0 .. world - 1 = 2");
  CHECK_FAILS(m2_shards_batch_into(s, &(m2_window_opts){.batch = 0, .length = 4}, x, y) != M2_OK, M2_ERR_VALUE,
              "must be positive");
  CHECK_FAILS(m2_shards_batch_into(s, &(m2_window_opts){.batch = 2, .length = 4, .index = -1}, x, y) != M2_OK,
              M2_ERR_VALUE, "index must be >= 0");
  CHECK_FAILS(m2_shards_read(s, 0, lens[0] - 2, 5, x) != M2_OK, M2_ERR_INDEX, "outside the shard");
  m2_shards_close(s);
  for (int i = 0; i < 3; i++) free(tok[i]);
}

static void test_errors(m2_rng *r) {
  int64_t n = 300;
  uint32_t *t = random_tokens(r, n, 999); /* ids < 999, but one */
  t[123] = 999;
  const char *good = tmp_path("good.bin");
  CHECK_OK(m2_shard_write(good, t, n, 1));
  const char *missing = tmp_path("missing.bin");
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){missing}, NULL) == NULL, M2_ERR_IO, missing);
  CHECK(strstr(m2_errmsg(), "No such file") != NULL, "missing: says why: %s", m2_errmsg());
  /* a missing file after a good one: the good one is closed again (no leak under valgrind / ASan) */
  CHECK_FAILS(m2_shards_open(2, (const char *const[]){good, missing}, NULL) == NULL, M2_ERR_IO, missing);
  /* truncated: inside the header, inside the tokens */
  const char *trunc = tmp_path("trunc.bin");
  write_llmc(trunc, 20240520, 1, n, t, 2, 0);
  CHECK(truncate(trunc, 500) == 0, "truncate");
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){trunc}, NULL) == NULL, M2_ERR_IO,
              "trunc.bin: truncated: 500 bytes, shorter than the 1024-byte shard header");
  CHECK_FAILS(m2_shard_info_read(trunc, &(m2_shard_info){0}) != M2_OK, M2_ERR_IO, "trunc.bin: truncated");
  write_llmc(trunc, 20240520, 1, n, t, 2, 0);
  CHECK(truncate(trunc, 1024 + 2 * n - 3) == 0, "truncate");
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){trunc}, NULL) == NULL, M2_ERR_IO,
              "trunc.bin: truncated: the header says 300 tokens (1624 bytes with the header) but the file has 1621");
  const char *longer = tmp_path("longer.bin");
  write_llmc(longer, 20240520, 1, n, t, 2, 6);
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){longer}, NULL) == NULL, M2_ERR_IO,
              "longer.bin: 6 bytes after the 300 tokens");
  /* wrong magic, wrong version */
  const char *magic = tmp_path("magic.bin");
  write_llmc(magic, 12345, 1, n, t, 2, 0);
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){magic}, NULL) == NULL, M2_ERR_IO,
              "magic.bin: not a token shard: magic 12345 (expected 20240520");
  const char *version = tmp_path("version.bin");
  write_llmc(version, 20240520, 3, n, t, 2, 0);
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){version}, NULL) == NULL, M2_ERR_IO,
              "version.bin: unsupported shard version 3 for magic 20240520");
  write_llmc(version, 20240801, 1, n, t, 2, 0);
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){version}, NULL) == NULL, M2_ERR_IO,
              "unsupported shard version 1 for magic 20240801");
  /* a token id >= vocab, found when the vocab is known */
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){good}, &(m2_shards_opts){.vocab = 999}) == NULL, M2_ERR_VALUE,
              "good.bin: token id 999 at position 123 is >= the vocabulary size 999");
  m2_shards *s = m2_shards_open(1, (const char *const[]){good}, &(m2_shards_opts){.vocab = 1000});
  CHECK(s != NULL, "vocab 1000 is fine");
  m2_shards_close(s);
  /* a glob that matches nothing; no files at all; a directory */
  CHECK_FAILS(m2_shards_open_glob(tmp_path("nothing_*.bin"), NULL) == NULL, M2_ERR_IO,
              "nothing_*.bin: no token shards match this pattern");
  CHECK_FAILS(m2_shards_open(0, NULL, NULL) == NULL, M2_ERR_VALUE, "no files given");
  CHECK_FAILS(m2_shards_open(1, (const char *const[]){g_dir}, NULL) == NULL, M2_ERR_IO, "not a regular file");
  /* the writer: a uint32 id in a uint16 shard, a bad version, an unwritable path (nothing left behind) */
  t[5] = 70000;
  CHECK_FAILS(m2_shard_write(tmp_path("big.bin"), t, n, 1) != M2_OK, M2_ERR_VALUE,
              "token 70000 at position 5 does not fit a version-1 (uint16) shard");
  CHECK(access(tmp_path("big.bin"), F_OK) != 0, "no file after a refused write");
  CHECK_FAILS(m2_shard_write(tmp_path("v9.bin"), t, n, 9) != M2_OK, M2_ERR_VALUE, "shard version must be 1");
  CHECK_FAILS(m2_shard_write("/nonexistent-dir/x.bin", t, n, 2) != M2_OK, M2_ERR_IO, "/nonexistent-dir/x.bin.tmp");
  free(t);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* tokens/s of batches shaped like the 400M model's step (B = 8, T = 4096) from a 16M-token uint16 shard */
static void bench(m2_rng *r) {
  int64_t n = 1 << 24;
  uint32_t *t = random_tokens(r, n, 50257);
  const char *p = tmp_path("bench.bin");
  CHECK_OK(m2_shard_write(p, t, n, 1));
  free(t);
  m2_shards *s = m2_shards_open(1, (const char *const[]){p}, NULL);
  if (!s) return;
  int64_t B = 8, T = 4096;
  int64_t *x = malloc(sizeof(int64_t) * (size_t)(B * T)), *y = malloc(sizeof(int64_t) * (size_t)(B * T));
  int64_t batches = 0;
  double t0 = now_s(), dt;
  do {
    m2_shards_batch_into(s, &(m2_window_opts){.seed = 1, .index = batches, .batch = B, .length = T, .shuffle = true},
                         x, y);
    batches++;
    dt = now_s() - t0;
  } while (dt < 0.5);
  double tps = (double)(batches * B * T) / dt;
  printf("loader: %.1f M tokens/s (B = %lld, T = %lld, uint16 shard of %lld tokens, shuffled, one core; a 400M "
         "training step consumes ~0.06 M tokens/s on an H200)\n", tps / 1e6, (long long)B, (long long)T, (long long)n);
  free(x);
  free(y);
  m2_shards_close(s);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/m2shards-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
  const char *env = getenv("M2_TEST_SEED");
  if (env) seed = strtoull(env, NULL, 10);
  printf("test_shards: seed %llu (M2_TEST_SEED=%llu repeats it)\n", (unsigned long long)seed, (unsigned long long)seed);
  m2_rng r = m2_rng_make(seed, 0);
  test_round_trip(&r);
  test_llmc_files(&r);
  test_loader(&r);
  test_errors(&r);
  bench(&r);
  CHECK(m2_live_tensors() == 0, "leak");
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  return check_finish("test_shards");
}
