/* shards.h — language-model token shards (llm.c's .bin format) and a deterministic window loader over them.
 * A dataset above core: it uses core's tensor API and RNG (core/rng.h); core does not include it.
 *
 * The file format (little-endian, as llm.c writes it; datasets/README.md has the prose):
 *   int32 header[256]: header[0] = magic, header[1] = version, header[2] = token count n, the rest 0;
 *   then n tokens, nothing after them.
 *     magic 20240520, version 1: uint16 tokens (llm.c's GPT-2 shards; vocab <= 65,536)
 *     magic 20240520, version 2: uint32 tokens (ours, for vocab > 65,536, e.g. the paper's 100,352)
 *     magic 20240801, version 7: uint32 tokens (llm.c's own uint32 variant, its llama-3 scripts): read, never written
 *
 * The loader: a split is a list of shards, memory-mapped. Each shard is cut into fixed tiles of T tokens
 * (tile j covers positions [j T, j T + T], T + 1 tokens: x = the first T, y = the last T), never crossing a file
 * boundary; tiles may cross document boundaries (the EOT token between documents stays in the stream, as in
 * llm.c and GPT-2 training). N = sum over shards of floor((n_i - 1) / T) tiles make one epoch. Global window k
 * (k = 0, 1, 2, ...) is tile perm_e(k mod N) of epoch e = k / N, where perm_e is a bijection of [0, N) drawn from
 * (seed, e) with Philox (shuffle = true) or the identity (shuffle = false: validation in file order). Row b of batch
 * `index` on rank r of R is window k = (index B + b) R + r: a batch is a pure function of (seed, index), so a
 * resumed run gets bit-identical batches, and the R ranks read disjoint tiles within an epoch. */
#ifndef M2_DATASETS_SHARDS_H
#define M2_DATASETS_SHARDS_H
#include "tensor.h"
#ifdef __cplusplus
extern "C" {
#endif

#define M2_SHARD_MAGIC 20240520        /* llm.c's magic: version 1 = uint16, version 2 = uint32 (ours) */
#define M2_SHARD_MAGIC_LLMC32 20240801 /* llm.c's uint32 shards (version 7) */
#define M2_SHARD_HEADER_INTS 256       /* int32s before the tokens (1024 bytes) */

typedef struct m2_shard_info {
  int32_t magic, version;
  int width;      /* bytes per token: 2 or 4 */
  int64_t tokens; /* header[2] */
} m2_shard_info;

/* Write n tokens to `path` with the llm.c header. version 1 (uint16; every id must be < 65,536, else an error
 * naming the first one that is not), 2 (uint32), or 0: 1 when every id fits in uint16, else 2. n < 2^31 (the
 * header holds it in an int32). Written to "<path>.tmp" and renamed: the file is complete or absent. */
m2_status m2_shard_write(const char *path, const uint32_t *tokens, int64_t n, int version);

/* The header of one shard, checked (magic, version, size): every error names the file. */
m2_status m2_shard_info_read(const char *path, m2_shard_info *info);

typedef struct m2_shards m2_shards; /* a split: memory-mapped shards */

typedef struct m2_shards_opts {
  int64_t vocab; /* > 0: every token is checked < vocab when the shards open (an error names the file, the position
                    and the id); 0: unknown, unchecked */
} m2_shards_opts;

/* Open n shard files (in this order). o may be NULL. NULL + message naming the file on: a missing or unreadable
 * file, a truncated or over-long one, a wrong magic or version, a token id >= vocab. */
m2_shards *m2_shards_open(int n, const char *const *paths, const m2_shards_opts *o);
/* Open the files matching a glob pattern (sorted by name); no match is an error naming the pattern. */
m2_shards *m2_shards_open_glob(const char *pattern, const m2_shards_opts *o);
void m2_shards_close(m2_shards *s); /* NULL allowed */

int m2_shards_count(const m2_shards *s);
const char *m2_shards_path(const m2_shards *s, int i);
int64_t m2_shards_shard_tokens(const m2_shards *s, int i);
int m2_shards_width(const m2_shards *s, int i); /* 2 or 4 */
int64_t m2_shards_tokens(const m2_shards *s);   /* all shards */
/* Copy tokens [pos, pos + n) of shard i into out (as int64). */
m2_status m2_shards_read(const m2_shards *s, int i, int64_t pos, int64_t n, int64_t *out);
/* Tiles of T tokens in one epoch (0 when every shard is shorter than T + 1 tokens). */
int64_t m2_shards_windows(const m2_shards *s, int64_t length);

typedef struct m2_window_opts {
  uint64_t seed;
  int64_t index;   /* which batch: the data cursor (batches are independent of each other) */
  int64_t batch;   /* B windows */
  int64_t length;  /* T: a window is T + 1 tokens */
  int rank, world; /* this rank's windows: every world-th, starting at rank (world 0 is taken as 1) */
  bool shuffle;    /* true: a new tile order every epoch, drawn from (seed, epoch); false: tiles in file order */
} m2_window_opts;

/* Where global window k starts: shard and position (tests and tools). */
m2_status m2_shards_window_at(const m2_shards *s, const m2_window_opts *o, int64_t k, int *shard, int64_t *pos);
/* x, y: (B, T) int64 into caller memory (B T each): y[b, t] = x[b, t + 1] within the window. */
m2_status m2_shards_batch_into(const m2_shards *s, const m2_window_opts *o, int64_t *x, int64_t *y);
/* x, y: new (B, T) I64 CPU tensors. */
m2_status m2_shards_batch(const m2_shards *s, const m2_window_opts *o, m2_tensor **x, m2_tensor **y);

#ifdef __cplusplus
}
#endif
#endif
