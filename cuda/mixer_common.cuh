/* mixer_common.cuh — what the recurrent GDN and SSD CUDA ops (cuda/ops_gdn.cu, cuda/ops_ssd.cu) do alike:
 * one warp owns one row of a head's state, lane l holding elements l + 32 r (r < R); the forward writes fp32
 * checkpoints; the backward runs one launch per checkpoint segment, last first, with blocks of W warps whose
 * per-step partial rows are summed in warp order (then over the blocks by a second kernel). Here: the R
 * dispatch, the warps' row sum, the block size, the saved-state check, output/scratch allocation and launch
 * errors. The kernels' maths stays in each op's file. Included by those two files only. */
#ifndef M2_CUDA_MIXER_COMMON_CUH
#define M2_CUDA_MIXER_COMMON_CUH
#include "ops_common.cuh"
extern "C" {
#include "../core/mixer_common.h"
}

#define MX_MAX_DIM 512 /* the longest state row: 16 elements a lane */

#define MX_MAX_SEG 64  /* the most steps between the states the forward keeps (the backward's scratch holds a segment) */

/* What the kernels take beyond the public checks (gdn_supports, ssd_supports): f32 / bf16 (f64 refused), rows of at
 * most MX_MAX_DIM. */
static const mixer_rules mx_rules_cuda = {"CUDA", cu_check_float, MX_MAX_DIM};

/* The kernels' checkpoint interval for the op's chunk (attr, >= 1): the chunk, at most MX_MAX_SEG. The forward and
 * the backward both take it from here. */
static inline int64_t mx_seg(int64_t chunk) { return chunk < MX_MAX_SEG ? chunk : MX_MAX_SEG; }

/* dst (row) = the sum over the block's W warps of their rows red (W, row), in warp order. Every thread of the
 * block calls it (two barriers). */
__device__ __forceinline__ void mx_sum_warp_rows(const float *red, float *dst, int row, int W) {
  __syncthreads();
  for (int x = threadIdx.x; x < row; x += blockDim.x) {
    float s = 0;
    for (int ww = 0; ww < W; ww++) s += red[ww * row + x];
    dst[x] = s;
  }
  __syncthreads();
}

/* t as a contiguous tensor of dtype dt on its device (new ref; t itself when it already is). */
static inline m2_tensor *mx_as(m2_tensor *t, m2_dtype dt) {
  if (t->dtype == dt && m2_is_contiguous(t)) { m2_retain(t); return t; }
  return m2_clone_raw(t, dt, t->device);
}

/* M2_OK, or M2_ERR_CUDA naming the launch that failed ("forward" / "backward"). */
static inline m2_status mx_launched(const char *op, const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return M2_OK;
  return m2_fail(M2_ERR_CUDA, "%s: %s kernel launch failed: %s", op, what, cudaGetErrorString(e));
}

/* The forward's outputs in the inputs' dtype and device, and (when mixer_keep) the fp32 checkpoints. */
static inline m2_status mx_fwd_outputs(const m2_opcall *c, const int64_t ys[4], const int64_t hs[4],
                                       const int64_t cks[5], m2_tensor **y, m2_tensor **hT, m2_tensor **ck) {
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  bool keep = mixer_keep(c);
  *y = m2_empty(dt, dev, 4, ys), *hT = m2_empty(dt, dev, 4, hs);
  *ck = keep ? m2_empty(M2_F32, dev, 5, cks) : NULL;
  return (*y && *hT && (*ck || !keep)) ? M2_OK : m2_errcode();
}

/* saved[0] holds the forward's fp32 checkpoints of nck floats, else M2_ERR_AUTOGRAD. */
static inline m2_status mx_check_saved(const m2_opcall *c, const char *op, int64_t nck) {
  if (c->n_saved < 1 || !c->saved[0] || c->saved[0]->dtype != M2_F32 || m2_numel(c->saved[0]) != nck)
    return m2_fail(M2_ERR_AUTOGRAD, "%s: backward without the saved CUDA states", op);
  return M2_OK;
}

/* Warps a backward block (one row each) of `ncols` rows: the block's partial rows (row floats each) fit in
 * 48 KiB, at most 32, at most the rows there are, at most what the kernel's registers allow, at least 1. */
static inline int mx_bwd_warps(int64_t row, int64_t ncols, int max_threads) {
  int W = (int)(49152 / (row * 4));
  if (W > 32) W = 32;
  if (W > ncols) W = (int)ncols;
  if (W > max_threads / 32) W = max_threads / 32;
  if (W < 1) W = 1;
  return W;
}

/* The backward's tensors: dy, dhT contiguous in the inputs' dtype, fp32 scratch (states, per-step partial
 * rows, the carried state gradient), and the wanted gradients din (NULL where not wanted). */
typedef struct mx_bwd_work {
  m2_tensor *dy, *dhT, *states, *part, *carry;
  m2_tensor *din[6];
} mx_bwd_work;

static inline m2_status mx_bwd_open(m2_opcall *c, int64_t nstates, int64_t npart, int64_t ncarry,
                                    mx_bwd_work *w) {
  m2_device dev = c->in[0]->device;
  m2_dtype dt = c->in[0]->dtype;
  memset(w, 0, sizeof *w);
  w->dy = mx_as(c->dout[0], dt), w->dhT = mx_as(c->dout[1], dt);
  w->states = cu_scratch_f32(dev, nstates > 0 ? nstates : 1), w->part = cu_scratch_f32(dev, npart > 0 ? npart : 1);
  w->carry = cu_scratch_f32(dev, ncarry > 0 ? ncarry : 1);
  m2_status s = (w->dy && w->dhT && w->states && w->part && w->carry) ? M2_OK : m2_errcode();
  for (int i = 0; i < 6 && s == M2_OK; i++)
    if (c->in[i] && c->needs_din[i] && !(w->din[i] = m2_empty(dt, dev, c->in[i]->ndim, c->in[i]->shape)))
      s = m2_errcode();
  return s;
}

/* Release the scratch; hand over the gradients when s is M2_OK, else release them. Returns s. */
static inline m2_status mx_bwd_close(m2_opcall *c, mx_bwd_work *w, m2_status s) {
  m2_release(w->dy), m2_release(w->dhT), m2_release(w->states), m2_release(w->part), m2_release(w->carry);
  for (int i = 0; i < 6; i++) {
    if (s == M2_OK) c->din[i] = w->din[i];
    else m2_release(w->din[i]);
  }
  return s;
}

#endif
