/* shards.c — llm.c token shards: write, check, memory-map, and cut into deterministic (B, T) batches. */
#include "shards.h"
#include "rng.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES ((int64_t)M2_SHARD_HEADER_INTS * 4)
#define M2_TILE_STREAM 0x711E5EEDull /* xor-ed into the seed for the epoch permutations */

typedef struct shard {
  char *path;
  int fd;
  void *map;        /* the whole file, read-only */
  size_t map_bytes;
  int width;        /* 2 or 4 */
  int64_t n;        /* tokens */
  const void *tok;  /* map + 1024 */
} shard;

struct m2_shards {
  int count;
  shard *sh; /* (count) */
  int64_t total;
};

/* ---------------------------------------------------------------------------------------------------------------
 * the header
 * ------------------------------------------------------------------------------------------------------------- */

/* magic + version -> bytes per token (0: unknown) */
static int token_width(int32_t magic, int32_t version) {
  if (magic == M2_SHARD_MAGIC && version == 1) return 2;
  if (magic == M2_SHARD_MAGIC && version == 2) return 4;
  if (magic == M2_SHARD_MAGIC_LLMC32 && version == 7) return 4;
  return 0;
}

/* check a header against the file size -> info */
static m2_status check_header(const char *path, const int32_t *h, int64_t file_bytes, m2_shard_info *info) {
  if (h[0] != M2_SHARD_MAGIC && h[0] != M2_SHARD_MAGIC_LLMC32)
    return m2_fail(M2_ERR_IO, "%s: not a token shard: magic %d (expected %d, llm.c's .bin format, or %d for llm.c's "
                   "uint32 shards)", path, (int)h[0], M2_SHARD_MAGIC, M2_SHARD_MAGIC_LLMC32);
  int width = token_width(h[0], h[1]);
  if (!width)
    return m2_fail(M2_ERR_IO, "%s: unsupported shard version %d for magic %d (known: %d with version 1 = uint16 "
                   "tokens or 2 = uint32, %d with version 7 = uint32)", path, (int)h[1], (int)h[0], M2_SHARD_MAGIC,
                   M2_SHARD_MAGIC_LLMC32);
  if (h[2] < 0) return m2_fail(M2_ERR_IO, "%s: negative token count %d in the header", path, (int)h[2]);
  int64_t want = HEADER_BYTES + (int64_t)h[2] * width;
  if (file_bytes < want)
    return m2_fail(M2_ERR_IO, "%s: truncated: the header says %d tokens (%lld bytes with the header) but the file "
                   "has %lld bytes", path, (int)h[2], (long long)want, (long long)file_bytes);
  if (file_bytes > want)
    return m2_fail(M2_ERR_IO, "%s: %lld bytes after the %d tokens the header announces (a damaged shard, or not "
                   "one)", path, (long long)(file_bytes - want), (int)h[2]);
  info->magic = h[0];
  info->version = h[1];
  info->width = width;
  info->tokens = h[2];
  return M2_OK;
}

m2_status m2_shard_info_read(const char *path, m2_shard_info *info) {
  FILE *f = fopen(path, "rb");
  if (!f) return m2_fail(M2_ERR_IO, "%s: cannot open the token shard: %s", path, strerror(errno));
  int32_t h[M2_SHARD_HEADER_INTS];
  size_t got = fread(h, 4, M2_SHARD_HEADER_INTS, f);
  struct stat st;
  int sr = fstat(fileno(f), &st);
  fclose(f);
  if (sr != 0) return m2_fail(M2_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
  if (got != M2_SHARD_HEADER_INTS)
    return m2_fail(M2_ERR_IO, "%s: truncated: %lld bytes, shorter than the %lld-byte shard header", path,
                   (long long)st.st_size, (long long)HEADER_BYTES);
  return check_header(path, h, (int64_t)st.st_size, info);
}

m2_status m2_shard_write(const char *path, const uint32_t *tokens, int64_t n, int version) {
  if (n < 0 || n >= ((int64_t)1 << 31))
    return m2_fail(M2_ERR_VALUE, "%s: %lld tokens: a shard holds 0 .. 2^31 - 1 (split the data into more shards)",
                   path, (long long)n);
  if (version == 0) {
    version = 1;
    for (int64_t i = 0; i < n; i++)
      if (tokens[i] > 65535) { version = 2; break; }
  }
  if (version != 1 && version != 2)
    return m2_fail(M2_ERR_VALUE, "%s: shard version must be 1 (uint16), 2 (uint32) or 0 (the smallest that fits), "
                   "got %d", path, version);
  if (version == 1)
    for (int64_t i = 0; i < n; i++)
      if (tokens[i] > 65535)
        return m2_fail(M2_ERR_VALUE, "%s: token %u at position %lld does not fit a version-1 (uint16) shard: write "
                       "version 2 (uint32)", path, tokens[i], (long long)i);
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 5);
  if (!tmp) return m2_fail(M2_ERR_OOM, "out of memory");
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp", 5);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    m2_status s = m2_fail(M2_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    free(tmp);
    return s;
  }
  int32_t h[M2_SHARD_HEADER_INTS] = {0};
  h[0] = M2_SHARD_MAGIC;
  h[1] = version;
  h[2] = (int32_t)n;
  bool ok = fwrite(h, 4, M2_SHARD_HEADER_INTS, f) == M2_SHARD_HEADER_INTS;
  if (version == 2) {
    ok = ok && (n == 0 || fwrite(tokens, 4, (size_t)n, f) == (size_t)n);
  } else {
    uint16_t buf[4096];
    for (int64_t i = 0; ok && i < n; i += 4096) {
      int64_t m = n - i < 4096 ? n - i : 4096;
      for (int64_t j = 0; j < m; j++) buf[j] = (uint16_t)tokens[i + j];
      ok = fwrite(buf, 2, (size_t)m, f) == (size_t)m;
    }
  }
  ok = fflush(f) == 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    m2_status s = m2_fail(M2_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    remove(tmp);
    free(tmp);
    return s;
  }
  free(tmp);
  return M2_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * opening a split
 * ------------------------------------------------------------------------------------------------------------- */

static uint32_t token_at(const shard *s, int64_t i) {
  return s->width == 2 ? ((const uint16_t *)s->tok)[i] : ((const uint32_t *)s->tok)[i];
}

static m2_status map_shard(shard *s, const char *path, int64_t vocab) {
  s->fd = -1;
  s->path = strdup(path);
  if (!s->path) return m2_fail(M2_ERR_OOM, "out of memory");
  s->fd = open(path, O_RDONLY);
  if (s->fd < 0) return m2_fail(M2_ERR_IO, "%s: cannot open the token shard: %s", path, strerror(errno));
  struct stat st;
  if (fstat(s->fd, &st) != 0) return m2_fail(M2_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) return m2_fail(M2_ERR_IO, "%s: not a regular file", path);
  if (st.st_size < HEADER_BYTES)
    return m2_fail(M2_ERR_IO, "%s: truncated: %lld bytes, shorter than the %lld-byte shard header", path,
                   (long long)st.st_size, (long long)HEADER_BYTES);
  s->map_bytes = (size_t)st.st_size;
  s->map = mmap(NULL, s->map_bytes, PROT_READ, MAP_PRIVATE, s->fd, 0);
  if (s->map == MAP_FAILED) {
    s->map = NULL;
    return m2_fail(M2_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
  }
  m2_shard_info info;
  M2_TRY(check_header(path, (const int32_t *)s->map, (int64_t)st.st_size, &info));
  s->width = info.width;
  s->n = info.tokens;
  s->tok = (const char *)s->map + HEADER_BYTES;
  if (vocab > 0 && !(s->width == 2 && vocab >= 65536)) {
    for (int64_t i = 0; i < s->n; i++) {
      uint32_t t = token_at(s, i);
      if ((int64_t)t >= vocab)
        return m2_fail(M2_ERR_VALUE, "%s: token id %u at position %lld is >= the vocabulary size %lld (shards made "
                       "with another tokenizer?)", path, t, (long long)i, (long long)vocab);
    }
  }
  return M2_OK;
}

void m2_shards_close(m2_shards *s) {
  if (!s) return;
  for (int i = 0; i < s->count; i++) {
    shard *h = &s->sh[i];
    if (h->map) munmap(h->map, h->map_bytes);
    if (h->fd >= 0) close(h->fd);
    free(h->path);
  }
  free(s->sh);
  free(s);
}

m2_shards *m2_shards_open(int n, const char *const *paths, const m2_shards_opts *o) {
  if (n <= 0) {
    m2_fail(M2_ERR_VALUE, "token shards: no files given");
    return NULL;
  }
  int64_t vocab = o ? o->vocab : 0;
  m2_shards *s = calloc(1, sizeof *s);
  if (s) s->sh = calloc((size_t)n, sizeof *s->sh);
  if (!s || !s->sh) {
    free(s);
    m2_fail(M2_ERR_OOM, "out of memory");
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    s->count = i + 1; /* what close must undo */
    if (map_shard(&s->sh[i], paths[i], vocab) != M2_OK) {
      m2_shards_close(s);
      return NULL;
    }
    s->total += s->sh[i].n;
  }
  return s;
}

m2_shards *m2_shards_open_glob(const char *pattern, const m2_shards_opts *o) {
  glob_t g;
  int r = glob(pattern, 0, NULL, &g); /* sorted by name */
  if (r == GLOB_NOMATCH || (r == 0 && g.gl_pathc == 0)) {
    if (r == 0) globfree(&g);
    m2_fail(M2_ERR_IO, "%s: no token shards match this pattern", pattern);
    return NULL;
  }
  if (r != 0) {
    m2_fail(M2_ERR_IO, "%s: cannot list the token shards (glob error %d)", pattern, r);
    return NULL;
  }
  if (g.gl_pathc > (size_t)1 << 30) {
    globfree(&g);
    m2_fail(M2_ERR_VALUE, "%s: too many files", pattern);
    return NULL;
  }
  m2_shards *s = m2_shards_open((int)g.gl_pathc, (const char *const *)g.gl_pathv, o);
  globfree(&g);
  return s;
}

int m2_shards_count(const m2_shards *s) { return s->count; }
const char *m2_shards_path(const m2_shards *s, int i) { return i >= 0 && i < s->count ? s->sh[i].path : NULL; }
int64_t m2_shards_shard_tokens(const m2_shards *s, int i) { return i >= 0 && i < s->count ? s->sh[i].n : 0; }
int m2_shards_width(const m2_shards *s, int i) { return i >= 0 && i < s->count ? s->sh[i].width : 0; }
int64_t m2_shards_tokens(const m2_shards *s) { return s->total; }

m2_status m2_shards_read(const m2_shards *s, int i, int64_t pos, int64_t n, int64_t *out) {
  if (i < 0 || i >= s->count) return m2_fail(M2_ERR_INDEX, "token shards: shard %d of %d", i, s->count);
  const shard *h = &s->sh[i];
  if (pos < 0 || n < 0 || pos + n > h->n)
    return m2_fail(M2_ERR_INDEX, "%s: tokens [%lld, %lld) are outside the shard's %lld", h->path, (long long)pos,
                   (long long)(pos + n), (long long)h->n);
  for (int64_t t = 0; t < n; t++) out[t] = token_at(h, pos + t);
  return M2_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * windows
 * ------------------------------------------------------------------------------------------------------------- */

static int64_t tiles_in(const shard *h, int64_t T) { return h->n > T ? (h->n - 1) / T : 0; }

int64_t m2_shards_windows(const m2_shards *s, int64_t length) {
  if (length <= 0) return 0;
  int64_t N = 0;
  for (int i = 0; i < s->count; i++) N += tiles_in(&s->sh[i], length);
  return N;
}

/* A bijection of [0, n) keyed by (seed, epoch): a balanced 4-round Feistel network on 2h bits (Philox round
 * functions), cycle-walking until the value falls below n (2^(2h) < 4 n: fewer than 4 walks on average). */
static uint64_t permute(uint64_t j, uint64_t n, uint64_t seed, uint64_t epoch) {
  if (n <= 1) return 0;
  int bits = 64 - __builtin_clzll(n - 1);
  int h = (bits + 1) / 2;
  uint64_t mask = (1ull << h) - 1, x = j;
  do {
    uint64_t L = x >> h, R = x & mask;
    for (uint64_t r = 0; r < 4; r++) {
      uint32_t out[4];
      m2_philox(seed ^ M2_TILE_STREAM, epoch, (r << 40) | R, out);
      uint64_t f = ((((uint64_t)out[0] << 32) | out[1])) & mask;
      uint64_t nl = R;
      R = (L ^ f) & mask;
      L = nl;
    }
    x = (L << h) | R;
  } while (x >= n);
  return x;
}

static m2_status check_window_opts(const m2_shards *s, const m2_window_opts *o, int64_t *N) {
  if (o->batch <= 0 || o->length <= 0)
    return m2_fail(M2_ERR_VALUE, "token batch: batch (%lld) and length (%lld) must be positive", (long long)o->batch,
                   (long long)o->length);
  int world = o->world > 0 ? o->world : 1;
  if (o->rank < 0 || o->rank >= world)
    return m2_fail(M2_ERR_VALUE, "token batch: rank %d is not in 0 .. world - 1 = %d", o->rank, world - 1);
  if (o->index < 0) return m2_fail(M2_ERR_VALUE, "token batch: index must be >= 0, got %lld", (long long)o->index);
  *N = m2_shards_windows(s, o->length);
  if (*N == 0) {
    int64_t longest = 0;
    for (int i = 0; i < s->count; i++)
      if (s->sh[i].n > longest) longest = s->sh[i].n;
    return m2_fail(M2_ERR_VALUE, "%s%s: no window of %lld tokens fits: the longest of the %d shard(s) has %lld tokens",
                   s->sh[0].path, s->count > 1 ? " (and the other shards)" : "", (long long)(o->length + 1), s->count,
                   (long long)longest);
  }
  return M2_OK;
}

/* tile -> (shard, position), with prefix[i] = tiles before shard i (count + 1 entries) */
static void locate(const m2_shards *s, const int64_t *prefix, int64_t T, int64_t tile, int *sh, int64_t *pos) {
  int lo = 0, hi = s->count - 1; /* the last i with prefix[i] <= tile */
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  *sh = lo;
  *pos = (tile - prefix[lo]) * T;
}

static int64_t *tile_prefix(const m2_shards *s, int64_t T) {
  int64_t *p = malloc(sizeof(int64_t) * (size_t)(s->count + 1));
  if (!p) return NULL;
  p[0] = 0;
  for (int i = 0; i < s->count; i++) p[i + 1] = p[i] + tiles_in(&s->sh[i], T);
  return p;
}

static int64_t tile_of(const m2_window_opts *o, int64_t k, int64_t N) {
  uint64_t e = (uint64_t)(k / N), j = (uint64_t)(k % N);
  return o->shuffle ? (int64_t)permute(j, (uint64_t)N, o->seed, e) : (int64_t)j;
}

m2_status m2_shards_window_at(const m2_shards *s, const m2_window_opts *o, int64_t k, int *sh, int64_t *pos) {
  int64_t N;
  M2_TRY(check_window_opts(s, o, &N));
  if (k < 0) return m2_fail(M2_ERR_VALUE, "token windows: k must be >= 0");
  int64_t *prefix = tile_prefix(s, o->length);
  if (!prefix) return m2_fail(M2_ERR_OOM, "out of memory");
  locate(s, prefix, o->length, tile_of(o, k, N), sh, pos);
  free(prefix);
  return M2_OK;
}

m2_status m2_shards_batch_into(const m2_shards *s, const m2_window_opts *o, int64_t *x, int64_t *y) {
  int64_t N;
  M2_TRY(check_window_opts(s, o, &N));
  int64_t T = o->length, B = o->batch, R = o->world > 0 ? o->world : 1;
  int64_t *prefix = tile_prefix(s, T);
  if (!prefix) return m2_fail(M2_ERR_OOM, "out of memory");
  for (int64_t b = 0; b < B; b++) {
    int64_t k = (o->index * B + b) * R + o->rank, pos;
    int sh;
    locate(s, prefix, T, tile_of(o, k, N), &sh, &pos);
    const shard *h = &s->sh[sh];
    int64_t *xb = x + b * T, *yb = y + b * T;
    if (h->width == 2) {
      const uint16_t *w = (const uint16_t *)h->tok + pos;
      for (int64_t t = 0; t < T; t++) xb[t] = w[t];
      for (int64_t t = 0; t < T; t++) yb[t] = w[t + 1];
    } else {
      const uint32_t *w = (const uint32_t *)h->tok + pos;
      for (int64_t t = 0; t < T; t++) xb[t] = w[t];
      for (int64_t t = 0; t < T; t++) yb[t] = w[t + 1];
    }
  }
  free(prefix);
  return M2_OK;
}

m2_status m2_shards_batch(const m2_shards *s, const m2_window_opts *o, m2_tensor **x, m2_tensor **y) {
  *x = *y = NULL;
  int64_t shape[2] = {o->batch, o->length}, N;
  M2_TRY(check_window_opts(s, o, &N));
  m2_tensor *tx = m2_empty(M2_I64, M2_DEV_CPU, 2, shape), *ty = tx ? m2_empty(M2_I64, M2_DEV_CPU, 2, shape) : NULL;
  if (!tx || !ty) {
    m2_release(tx);
    return m2_errcode();
  }
  m2_status st = m2_shards_batch_into(s, o, m2_data(tx), m2_data(ty));
  if (st != M2_OK) {
    m2_release(tx);
    m2_release(ty);
    return st;
  }
  *x = tx;
  *y = ty;
  return M2_OK;
}
