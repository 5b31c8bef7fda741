/* sample.h — drawing the next token from logits: temperature, top-k, top-p (nucleus), and one counter-based draw
 * per row, so that a seed decides every token on any device (DESIGN 9; lua/m2/generate.lua uses it).
 *
 * Not an op: nothing to differentiate and nothing on the tape. The host code here is the reference. Logits on
 * another device are drawn there when its backend has a sample_rows hook and the options are temperature alone
 * (core/backend.h; the CUDA backend has one): B ids come back instead of B * V logits. With top-k or top-p they are copied to
 * the host first (B * V numbers a call: 25.7 MB at B = 64, V = 100352, about a millisecond over PCIe), and the ids
 * are copied back to the logits' device.
 *
 * One row z = logits / temperature (V numbers, in float64):
 *   temperature 0   greedy: the first largest logit (top_k and top_p play no part); the probabilities are one-hot.
 *   top_k > 0       keep the k largest z; at a tie on the k-th value the lower ids come first.
 *   top_p < 1       then keep the smallest set of the most likely of those (order: z descending, lower id first at a
 *                   tie) whose mass reaches top_p times the mass left by top_k (the distribution renormalised
 *                   after top-k, as Hugging Face's warpers apply them in that order).
 *   draw            u in [0, 1) from Philox (seed, M2_SAMPLE_STREAM + row, counter offset); the kept probabilities
 *                   p (renormalised) are walked in id order and the first id where the running sum exceeds u is
 *                   the token (inverse CDF). A row never returns an id of probability 0.
 * -inf logits are allowed (masked tokens, probability 0); NaN, +inf, or a row with no finite logit is an error
 * naming the row and the position. */
#ifndef M2_SAMPLE_H
#define M2_SAMPLE_H
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_sample_opts {
  double temperature; /* >= 0, finite; 0: greedy */
  int64_t top_k;      /* >= 0; 0: off (k >= V keeps everything) */
  double top_p;       /* in (0, 1]; 1: off */
  uint64_t seed;      /* the Philox key of the draws */
  uint64_t offset;    /* the Philox counter: the decode step (generate uses the position of the token drawn) */
} m2_sample_opts;

/* The defaults: temperature 1, no top-k, no top-p, seed 0, offset 0. */
#define M2_SAMPLE_DEFAULTS {1.0, 0, 1.0, 0, 0}
/* The Philox stream of row 0 ("SAMP" << 16); row b draws from M2_SAMPLE_STREAM + b. */
#define M2_SAMPLE_STREAM 0x53414D500000ull

/* Check the options (temperature >= 0 and finite, top_k >= 0, top_p in (0, 1]); messages name the setting. */
m2_status m2_sample_check(const m2_sample_opts *o);

/* logits (..., V) float, any device -> ids (...) I64 on the logits' device (a 0-d tensor for 1-D logits). */
m2_tensor *m2_sample(const m2_tensor *logits, const m2_sample_opts *o);

/* logits (..., V) float, any device -> the distribution each row is drawn from (..., V) F64 on the CPU: after
 * temperature, top-k and top-p, renormalised; zeros outside the kept set (one-hot at temperature 0). For tests and
 * for looking at what the sampler does. */
m2_tensor *m2_sample_probs(const m2_tensor *logits, const m2_sample_opts *o);

#ifdef __cplusplus
}
#endif
#endif
