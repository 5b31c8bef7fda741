/* cuda_mixer_parity.h — the CPU-vs-CUDA harness the sequence-mixer tests share (tests/cuda_ops_gdn.c,
 * cuda_ops_ssd.c, cuda_ops_attention.c): an op's CUDA row against its CPU reference row run in float64, through the
 * op's public entry (m2_gdn, m2_ssd_chunked, m2_attention, ...) on fresh random inputs, for f32 (bound 1e-4) and bf16
 * (bound 2e-2) inputs. Both sides see the same values (inputs and output gradients rounded to the dtype first); the
 * error is max |cuda - ref| / max |ref| per tensor, NaN or Inf never passes. Every forward output and every input
 * gradient is compared; then the CUDA backward kernel is run once more on the recorded call (the tape node of the
 * forward) wanting only the last present input's gradient: that one must agree and the others must stay NULL. */
#ifndef M2_TESTS_CUDA_MIXER_PARITY_H
#define M2_TESTS_CUDA_MIXER_PARITY_H
#include <math.h>
#include <string.h>
#include "cuda_parity.h"

static const m2_device GPU = {M2_CUDA, 0};
static double g_worst[2][2]; /* [dtype f32/bf16][fwd/bwd] */

/* ---------------- host values ---------------- */

typedef struct arr {
  int nd;
  int64_t shape[5];
  double *x; /* NULL: the input is omitted */
} arr;

static inline int64_t arr_n(const arr *a) {
  int64_t n = 1;
  for (int i = 0; i < a->nd; i++) n *= a->shape[i];
  return n;
}

static inline arr mk(int nd, const int64_t *shape) {
  arr a = {nd, {0}, NULL};
  for (int i = 0; i < nd; i++) a.shape[i] = shape[i];
  a.x = malloc(sizeof(double) * (size_t)(arr_n(&a) + 1));
  return a;
}
/* scale * N(0, 1) */
static inline arr randn(m2_rng *r, int nd, const int64_t *shape, double scale) {
  arr a = mk(nd, shape);
  for (int64_t i = 0; i < arr_n(&a); i++) {
    double u1 = m2_rng_uniform(r), u2 = m2_rng_uniform(r);
    a.x[i] = scale * sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(6.283185307179586 * u2);
  }
  return a;
}
/* uniform in [lo, hi) */
static inline arr unif(m2_rng *r, int nd, const int64_t *shape, double lo, double hi) {
  arr a = mk(nd, shape);
  for (int64_t i = 0; i < arr_n(&a); i++) a.x[i] = lo + (hi - lo) * m2_rng_uniform(r);
  return a;
}
static inline arr none(void) { arr a = {0, {0}, NULL}; return a; }
static inline void arr_free(arr *a) { free(a->x); a->x = NULL; }

/* a's values rounded to dt, as a new F64 cpu tensor (ref) and a dt cuda tensor (dev) */
static inline void to_tensors(const arr *a, m2_dtype dt, m2_tensor **ref, m2_tensor **dev) {
  int64_t n = arr_n(a);
  double *r = malloc(sizeof(double) * (size_t)(n + 1));
  void *buf = malloc((size_t)(n + 1) * 4);
  for (int64_t i = 0; i < n; i++) {
    float f = (float)a->x[i];
    if (dt == M2_BF16) {
      uint16_t h = m2_f32_to_bf16(f);
      ((uint16_t *)buf)[i] = h;
      r[i] = m2_bf16_to_f32(h);
    } else {
      ((float *)buf)[i] = f;
      r[i] = f;
    }
  }
  *ref = m2_from_data(M2_F64, M2_DEV_CPU, a->nd, a->shape, r);
  *dev = m2_from_data(dt, GPU, a->nd, a->shape, buf);
  free(r);
  free(buf);
}

/* max |a - b| / max |b| (a on any device, b on the cpu); NaN / Inf in a or a failed copy -> inf */
static inline double err_of(const m2_tensor *a, const m2_tensor *b) {
  if (!a || !b) return INFINITY;
  int64_t n = m2_numel(b);
  if (m2_numel(a) != n) return INFINITY;
  double *x = malloc(sizeof(double) * (size_t)(n + 1)), *y = malloc(sizeof(double) * (size_t)(n + 1));
  double num = 0, den = 0;
  if (m2_to_host(a, M2_F64, x) != M2_OK || m2_to_host(b, M2_F64, y) != M2_OK) num = INFINITY;
  for (int64_t i = 0; i < n && !isinf(num); i++) {
    double d = fabs(x[i] - y[i]);
    if (!isfinite(x[i]) || !isfinite(y[i])) d = INFINITY;
    if (d > num) num = d;
    if (fabs(y[i]) > den) den = fabs(y[i]);
  }
  free(x);
  free(y);
  return num / (den > 1e-30 ? den : 1.0);
}

static inline bool gpu_sync_ok(void) {
  const m2_backend *be = m2_backend_get(M2_CUDA);
  return be && be->synchronize(0) == M2_OK;
}

/* ---------------- one op, one dtype: forward, full backward, partial backward ---------------- */

typedef struct pcase pcase;
/* Run the op through its public entry on in[0..n_in) (NULL = omitted) with the case's settings; the outputs go
 * to outs[0..n_out). */
typedef m2_status (*pc_run_fn)(const pcase *pc, m2_tensor *const *in, m2_tensor **outs);

struct pcase {
  const char *name;
  const char *op; /* the registry name of the op the entry records (its CUDA backward is run directly) */
  int n_in, n_out;
  arr in[6];
  pc_run_fn run;
  int64_t i0; /* the case's settings, read by run (e.g. GDN: chunk and scale) */
  double f0;
};

/* L = sum_j <y_j, dy_j> on one device: its backward hands the op exactly dy_j */
static inline m2_status pc_backward(int n, m2_tensor *const *y, m2_tensor *const *dy) {
  m2_tensor *L = NULL;
  m2_status s = M2_OK;
  for (int j = 0; j < n && s == M2_OK; j++) {
    m2_tensor *p = m2_mul(y[j], dy[j]), *sj = p ? m2_sum_all(p) : NULL;
    m2_tensor *nl = !sj ? NULL : L ? m2_add(L, sj) : (m2_retain(sj), sj);
    if (!nl) s = m2_errcode();
    m2_release(p), m2_release(sj), m2_release(L);
    L = nl;
  }
  if (s == M2_OK) s = m2_backward(L, NULL);
  m2_release(L);
  return s;
}

/* The CUDA backward kernel run on the call recorded by the forward that gave y0 (borrowing its inputs and saved
 * tensors), wanting only input `want`'s gradient; the gradients it makes go to din[] (new refs). */
static inline m2_status pc_partial_backward(const pcase *pc, m2_tensor *y0, m2_tensor *const *dy, int want,
                                            m2_tensor **din) {
  m2_node *node = y0 ? y0->grad_fn : NULL;
  if (!node || strcmp(node->call.op->name, pc->op) != 0)
    return m2_fail(M2_ERR_VALUE, "%s: the output was not recorded by op %s", pc->name, pc->op);
  m2_op_fn bwd = m2_op_kernel(node->call.op, GPU, true);
  if (!bwd) return m2_fail(M2_ERR_DEVICE, "%s: no CUDA backward", pc->op);
  m2_opcall c = node->call; /* a shallow copy: the node keeps owning everything in it */
  for (int j = 0; j < M2_MAX_OUT; j++) c.dout[j] = j < pc->n_out ? dy[j] : NULL;
  for (int i = 0; i < M2_MAX_IN; i++) {
    c.din[i] = NULL;
    c.needs_din[i] = i == want;
  }
  m2_status s = bwd(&c);
  for (int i = 0; i < M2_MAX_IN; i++) din[i] = c.din[i];
  return s;
}

static inline void run_dtype(const pcase *pc, m2_dtype dt, uint64_t seed) {
  int di = dt == M2_BF16;
  double tol = di ? 2e-2 : 1e-4;
  const char *dn = m2_dtype_name(dt);
  m2_tensor *cin[6] = {0}, *gin[6] = {0}, *cdo[4] = {0}, *gdo[4] = {0}, *cy[4] = {0}, *gy[4] = {0};
  m2_tensor *pdin[M2_MAX_IN] = {0};
  double wf = 0, wb = 0;
  for (int i = 0; i < pc->n_in; i++) {
    if (!pc->in[i].x) continue;
    to_tensors(&pc->in[i], dt, &cin[i], &gin[i]);
    CHECK(cin[i] && gin[i], "%s %s: input %d", pc->name, dn, i);
    if (!cin[i] || !gin[i]) goto done;
    m2_requires_grad_(cin[i], true); /* forward keeps its checkpoints only when a node will be recorded */
    m2_requires_grad_(gin[i], true);
  }
  CHECK_OK(pc->run(pc, cin, cy));
  m2_status gs = pc->run(pc, gin, gy);
  CHECK(gs == M2_OK, "%s %s: cuda forward failed", pc->name, dn);
  CHECK(gpu_sync_ok(), "%s %s: forward kernels failed", pc->name, dn);
  for (int j = 0; j < pc->n_out; j++)
    if (!cy[j] || !gy[j]) {
      CHECK(false, "%s %s: output %d missing (cpu %p, cuda %p)", pc->name, dn, j, (void *)cy[j], (void *)gy[j]);
      goto done;
    }
  for (int j = 0; j < pc->n_out; j++) {
    m2_tensor *g = gy[j];
    CHECK(g->device.type == M2_CUDA && g->dtype == dt && m2_same_shape(g, cy[j]),
          "%s %s: output %d is not a %s cuda tensor of the reference's shape", pc->name, dn, j, dn);
    double e = err_of(g, cy[j]);
    CHECK(e <= tol, "%s %s: forward output %d error %.3g > %.3g", pc->name, dn, j, e, tol);
    if (!(e <= wf)) wf = e;
  }
  /* output gradients, the same rounded values on both sides */
  m2_rng r = m2_rng_make(seed, 11);
  for (int j = 0; j < pc->n_out; j++) {
    arr d = randn(&r, cy[j]->ndim, cy[j]->shape, 1.0);
    to_tensors(&d, dt, &cdo[j], &gdo[j]);
    arr_free(&d);
  }
  CHECK_OK(pc_backward(pc->n_out, cy, cdo));
  /* backward wanting only the last present input's gradient: the others stay NULL (before the full backward,
     which frees what the node saved) */
  int last = -1;
  for (int i = 0; i < pc->n_in; i++)
    if (gin[i]) last = i;
  m2_node *node0 = gy[0]->grad_fn;
  if (node0 && strcmp(node0->call.op->name, pc->op) != 0) {
    /* a call the dispatcher ran on f32 copies of its bf16 inputs (op_cast.c: e.g. attention, whose kernels take
       f32): the recorded node is a conversion, so the partial backward runs on a call made on those f32 copies
       (the same values), as the cast path runs it */
    m2_tensor *in32[6] = {0}, *y32[4] = {0}, *do32[4] = {0};
    for (int i = 0; i < pc->n_in; i++)
      if (gin[i]) in32[i] = m2_clone_raw(gin[i], M2_F32, GPU), m2_requires_grad_(in32[i], true);
    for (int j = 0; j < pc->n_out; j++) do32[j] = m2_clone_raw(gdo[j], M2_F32, GPU);
    gs = pc->run(pc, in32, y32);
    if (gs == M2_OK) gs = pc_partial_backward(pc, y32[0], do32, last, pdin);
    for (int i = 0; i < 6; i++) m2_release(in32[i]);
    for (int j = 0; j < 4; j++) m2_release(y32[j]), m2_release(do32[j]);
  } else {
    gs = pc_partial_backward(pc, gy[0], gdo, last, pdin);
  }
  CHECK(gs == M2_OK && gpu_sync_ok(), "%s %s: partial cuda backward failed", pc->name, dn);
  for (int i = 0; gs == M2_OK && i < M2_MAX_IN; i++) {
    if (i != last) {
      CHECK(pdin[i] == NULL, "%s %s: partial backward produced unwanted gradient %d", pc->name, dn, i);
      continue;
    }
    double e = err_of(pdin[i], cin[i]->grad);
    CHECK(e <= tol, "%s %s: partial backward gradient %d error %.3g > %.3g", pc->name, dn, i, e, tol);
  }
  /* backward with every gradient wanted */
  gs = pc_backward(pc->n_out, gy, gdo);
  CHECK(gs == M2_OK, "%s %s: cuda backward failed", pc->name, dn);
  CHECK(gpu_sync_ok(), "%s %s: backward kernels failed", pc->name, dn);
  for (int i = 0; gs == M2_OK && i < pc->n_in; i++) {
    if (!cin[i]) continue;
    m2_tensor *g = gin[i]->grad;
    CHECK(g && g->device.type == M2_CUDA && g->dtype == dt && m2_same_shape(g, cin[i]),
          "%s %s: gradient %d is not a %s cuda tensor of the input's shape", pc->name, dn, i, dn);
    double e = err_of(g, cin[i]->grad);
    CHECK(e <= tol, "%s %s: gradient of input %d error %.3g > %.3g", pc->name, dn, i, e, tol);
    if (!(e <= wb)) wb = e;
  }
  printf("  %-34s %-4s fwd %.2e  bwd %.2e\n", pc->name, dn, wf, wb);
  if (!(wf <= g_worst[di][0])) g_worst[di][0] = wf;
  if (!(wb <= g_worst[di][1])) g_worst[di][1] = wb;
done:
  for (int i = 0; i < 6; i++) m2_release(cin[i]), m2_release(gin[i]);
  for (int j = 0; j < 4; j++) m2_release(cdo[j]), m2_release(gdo[j]), m2_release(cy[j]), m2_release(gy[j]);
  for (int i = 0; i < M2_MAX_IN; i++) m2_release(pdin[i]);
}

static inline void run_case(pcase *pc, uint64_t seed) {
  run_dtype(pc, M2_F32, seed);
  run_dtype(pc, M2_BF16, seed + 1);
  for (int i = 0; i < 6; i++) arr_free(&pc->in[i]);
}

/* A dt cuda tensor of uniform values in [lo, hi) (f64 made on the device from the f32 values). */
static inline m2_tensor *dev_f(m2_dtype dt, int nd, const int64_t *shape, uint64_t seed, double lo, double hi) {
  m2_rng r = m2_rng_make(seed, 5);
  arr a = unif(&r, nd, shape, lo, hi);
  m2_tensor *ref = NULL, *dev = NULL;
  to_tensors(&a, dt == M2_F64 ? M2_F32 : dt, &ref, &dev);
  arr_free(&a);
  if (dt == M2_F64) {
    m2_tensor *d64 = m2_clone_raw(ref, M2_F64, GPU);
    m2_release(dev);
    dev = d64;
  }
  m2_release(ref);
  return dev;
}

/* The worst errors, leak checks and the verdict. */
static inline int mixer_finish(const char *name) {
  printf("%s: worst error f32 fwd %.2e bwd %.2e, bf16 fwd %.2e bwd %.2e\n", name, g_worst[0][0], g_worst[0][1],
         g_worst[1][0], g_worst[1][1]);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish(name);
}

#endif
