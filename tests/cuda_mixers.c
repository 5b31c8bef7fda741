/* cuda_mixers.c — the CUDA sequence-mixer ops (cuda/ops_gdn.cu, ops_ssd.cu, ops_attention.cu) against the
 * CPU reference rows (core/ops_gdn.c, ops_ssd.c, ops_attention.c, run in float64) on fresh random inputs:
 * every forward output and every input gradient, for f32 (bound 1e-4) and bf16 (bound 2e-2) inputs.
 * Both sides see the same values (inputs and output gradients rounded to the dtype first); the error is
 * max |cuda - ref| / max |ref| per tensor, NaN or Inf never passes. Covers gdn and gdn_chunked (with h0,
 * beta in (0, 2), K and V not multiples of 32, several checkpoint segments), ssd and ssd_chunked (G < H,
 * with and without h0), attention (GQA, S > T, T > S with key-less rows, non-causal, head dims up to 320)
 * and rope (large position offsets); T is never a multiple of a block size. Then a backward that wants
 * only some gradients, the public API on CUDA tensors, and the argument errors (f64, shapes, limits).
 * Skips (exit 77) without a GPU. */
#include <math.h>
#include <string.h>
#include "check.h"

#ifndef M2_HAVE_CUDA
int main(void) {
  printf("cuda_mixers: built without CUDA, skipped\n");
  return 77;
}
#else
#include "../core/backend.h"
#include "../core/ops_attention.h"
#include "../core/ops_gdn.h"
#include "../core/ops_ssd.h"

extern const m2_op m2_op_gdn, m2_op_gdn_chunked, m2_op_ssd, m2_op_ssd_chunked, m2_op_attention, m2_op_rope;

static const m2_device GPU = {M2_CUDA, 0};
static double g_worst[2][2]; /* [dtype f32/bf16][fwd/bwd] */

/* ---------------- host values ---------------- */

typedef struct arr {
  int nd;
  int64_t shape[5];
  double *x; /* NULL: the input is omitted */
} arr;

static int64_t arr_n(const arr *a) {
  int64_t n = 1;
  for (int i = 0; i < a->nd; i++) n *= a->shape[i];
  return n;
}

static arr mk(int nd, const int64_t *shape) {
  arr a = {nd, {0}, NULL};
  for (int i = 0; i < nd; i++) a.shape[i] = shape[i];
  a.x = malloc(sizeof(double) * (size_t)(arr_n(&a) + 1));
  return a;
}
/* scale * N(0, 1) */
static arr randn(m2_rng *r, int nd, const int64_t *shape, double scale) {
  arr a = mk(nd, shape);
  for (int64_t i = 0; i < arr_n(&a); i++) {
    double u1 = m2_rng_uniform(r), u2 = m2_rng_uniform(r);
    a.x[i] = scale * sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300)) * cos(6.283185307179586 * u2);
  }
  return a;
}
/* uniform in [lo, hi) */
static arr unif(m2_rng *r, int nd, const int64_t *shape, double lo, double hi) {
  arr a = mk(nd, shape);
  for (int64_t i = 0; i < arr_n(&a); i++) a.x[i] = lo + (hi - lo) * m2_rng_uniform(r);
  return a;
}
/* normalise every last-dim vector to unit length (q and k of GDN) */
static void l2rows(arr *a) {
  int64_t d = a->shape[a->nd - 1], rows = arr_n(a) / d;
  for (int64_t r = 0; r < rows; r++) {
    double s = 0;
    for (int64_t i = 0; i < d; i++) s += a->x[r * d + i] * a->x[r * d + i];
    s = 1.0 / sqrt(s + 1e-12);
    for (int64_t i = 0; i < d; i++) a->x[r * d + i] *= s;
  }
}
static arr none(void) { arr a = {0, {0}, NULL}; return a; }
static void arr_free(arr *a) { free(a->x); a->x = NULL; }

/* a's values rounded to dt, as a new F64 cpu tensor (ref) and a dt cuda tensor (dev) */
static void to_tensors(const arr *a, m2_dtype dt, m2_tensor **ref, m2_tensor **dev) {
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
static double err_of(const m2_tensor *a, const m2_tensor *b) {
  int64_t n = m2_numel(b);
  if (!a || m2_numel(a) != n) return INFINITY;
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

static bool gpu_sync_ok(void) {
  const m2_backend *be = m2_backend_get(M2_CUDA);
  return be && be->synchronize(0) == M2_OK;
}

/* ---------------- one op, one dtype: forward, full backward, partial backward ---------------- */

typedef struct pcase {
  const char *name;
  const m2_op *op;
  int n_in, n_out;
  arr in[6];
  int64_t ia0;
  double fa0;
} pcase;

/* The op's checked attributes for the inputs in, from the case's options, as its public function stores them. */
static m2_status set_attr(m2_opcall *c, const pcase *pc, m2_tensor *const *in) {
  const m2_op *op = pc->op;
  if (op == &m2_op_gdn || op == &m2_op_gdn_chunked) {
    m2_gdn_opts o = {pc->fa0, (int)pc->ia0};
    m2_gdn_attr a;
    M2_TRY(gdn_check(in, &o, op == &m2_op_gdn_chunked, &a));
    M2_SET_ATTR(c, a);
  } else if (op == &m2_op_ssd || op == &m2_op_ssd_chunked) {
    m2_ssd_opts o = {(int)pc->ia0};
    m2_ssd_attr a;
    M2_TRY(ssd_check(in, &o, op == &m2_op_ssd_chunked, &a));
    M2_SET_ATTR(c, a);
  } else if (op == &m2_op_attention) {
    m2_attention_attr a;
    M2_TRY(m2_attention_check(in, &a));
    a.scale = pc->fa0, a.causal = pc->ia0 != 0, a.bf16 = false;
    M2_SET_ATTR(c, a);
  } else { /* rope */
    M2_TRY(m2_rope_check(in[0], pc->fa0));
    m2_rope_attr a = {pc->fa0, pc->ia0};
    M2_SET_ATTR(c, a);
  }
  return M2_OK;
}

static void run_dtype(const pcase *pc, m2_dtype dt, uint64_t seed) {
  int di = dt == M2_BF16;
  double tol = di ? 2e-2 : 1e-4;
  const char *dn = m2_dtype_name(dt);
  m2_tensor *cin[6] = {0}, *gin[6] = {0}, *cdo[4] = {0}, *gdo[4] = {0};
  for (int i = 0; i < pc->n_in; i++) {
    if (!pc->in[i].x) continue;
    to_tensors(&pc->in[i], dt, &cin[i], &gin[i]);
    CHECK(cin[i] && gin[i], "%s %s: input %d", pc->name, dn, i);
    if (!cin[i] || !gin[i]) goto done;
    m2_requires_grad_(cin[i], true); /* forward keeps its checkpoints only when a node will be recorded */
    m2_requires_grad_(gin[i], true);
  }
  m2_opcall cc, gc;
  m2_call_init(&cc, pc->op, pc->n_in, cin);
  m2_call_init(&gc, pc->op, pc->n_in, gin);
  CHECK_OK(set_attr(&cc, pc, cin));
  CHECK_OK(set_attr(&gc, pc, gin));
  CHECK_OK(pc->op->cpu_fwd(&cc));
  m2_status gs = pc->op->cuda_fwd(&gc);
  CHECK(gs == M2_OK, "%s %s: cuda forward failed", pc->name, dn);
  CHECK(gpu_sync_ok(), "%s %s: forward kernels failed", pc->name, dn);
  double wf = 0, wb = 0;
  if (gs != M2_OK || cc.n_out != pc->n_out || gc.n_out != pc->n_out) {
    CHECK(false, "%s %s: output counts cpu %d cuda %d", pc->name, dn, cc.n_out, gc.n_out);
    goto clear;
  }
  for (int j = 0; j < pc->n_out; j++) {
    m2_tensor *g = gc.out[j];
    CHECK(g && g->device.type == M2_CUDA && g->dtype == dt && m2_same_shape(g, cc.out[j]),
          "%s %s: output %d is not a %s cuda tensor of the reference's shape", pc->name, dn, j, dn);
    double e = err_of(g, cc.out[j]);
    CHECK(e <= tol, "%s %s: forward output %d error %.3g > %.3g", pc->name, dn, j, e, tol);
    if (!(e <= wf)) wf = e;
  }
  /* backward with every gradient wanted */
  m2_rng r = m2_rng_make(seed, 11);
  for (int j = 0; j < pc->n_out; j++) {
    arr d = randn(&r, cc.out[j]->ndim, cc.out[j]->shape, 1.0);
    to_tensors(&d, dt, &cdo[j], &gdo[j]);
    arr_free(&d);
    cc.dout[j] = cdo[j];
    gc.dout[j] = gdo[j];
  }
  for (int i = 0; i < pc->n_in; i++) cc.needs_din[i] = gc.needs_din[i] = cin[i] != NULL;
  CHECK_OK(pc->op->cpu_bwd(&cc));
  gs = pc->op->cuda_bwd(&gc);
  CHECK(gs == M2_OK, "%s %s: cuda backward failed", pc->name, dn);
  CHECK(gpu_sync_ok(), "%s %s: backward kernels failed", pc->name, dn);
  for (int i = 0; gs == M2_OK && i < pc->n_in; i++) {
    if (!cin[i]) continue;
    m2_tensor *g = gc.din[i];
    CHECK(g && g->device.type == M2_CUDA && g->dtype == dt && m2_same_shape(g, cin[i]),
          "%s %s: gradient %d is not a %s cuda tensor of the input's shape", pc->name, dn, i, dn);
    double e = err_of(g, cc.din[i]);
    CHECK(e <= tol, "%s %s: gradient of input %d error %.3g > %.3g", pc->name, dn, i, e, tol);
    if (!(e <= wb)) wb = e;
  }
  /* backward wanting only the last present input's gradient: the others stay NULL */
  int last = -1;
  for (int i = 0; i < pc->n_in; i++) {
    m2_release(gc.din[i]);
    gc.din[i] = NULL;
    if (cin[i]) last = i;
  }
  for (int i = 0; i < pc->n_in; i++) gc.needs_din[i] = i == last;
  gs = pc->op->cuda_bwd(&gc);
  CHECK(gs == M2_OK && gpu_sync_ok(), "%s %s: partial cuda backward failed", pc->name, dn);
  for (int i = 0; gs == M2_OK && i < pc->n_in; i++) {
    if (i != last) {
      CHECK(gc.din[i] == NULL, "%s %s: partial backward produced unwanted gradient %d", pc->name, dn, i);
      continue;
    }
    double e = err_of(gc.din[i], cc.din[i]);
    CHECK(e <= tol, "%s %s: partial backward gradient %d error %.3g > %.3g", pc->name, dn, i, e, tol);
  }
clear:
  printf("  %-34s %-4s fwd %.2e  bwd %.2e\n", pc->name, dn, wf, wb);
  if (!(wf <= g_worst[di][0])) g_worst[di][0] = wf;
  if (!(wb <= g_worst[di][1])) g_worst[di][1] = wb;
  for (int j = 0; j < 4; j++) cc.dout[j] = gc.dout[j] = NULL;
  m2_call_clear(&cc);
  m2_call_clear(&gc);
done:
  for (int i = 0; i < 6; i++) m2_release(cin[i]), m2_release(gin[i]);
  for (int j = 0; j < 4; j++) m2_release(cdo[j]), m2_release(gdo[j]);
}

static void run_case(pcase *pc, uint64_t seed) {
  run_dtype(pc, M2_F32, seed);
  run_dtype(pc, M2_BF16, seed + 1);
  for (int i = 0; i < 6; i++) arr_free(&pc->in[i]);
}

/* ---------------- cases ---------------- */

static void gdn_case(const m2_op *op, int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, bool h0, int64_t chunk,
                     double scale, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "%s B%lld T%lld H%lld K%lld V%lld%s c%lld", op->name, (long long)B, (long long)T,
           (long long)H, (long long)K, (long long)V, h0 ? " h0" : "", (long long)chunk);
  m2_rng r = m2_rng_make(seed, 1);
  int64_t sk[4] = {B, T, H, K}, sv[4] = {B, T, H, V}, sg[3] = {B, T, H}, sh[4] = {B, H, K, V};
  pcase pc = {name, op, 6, 2, {randn(&r, 4, sk, 1), randn(&r, 4, sk, 1), randn(&r, 4, sv, 0.7),
                               unif(&r, 3, sg, -0.6, -0.01), unif(&r, 3, sg, 0.05, 1.95),
                               h0 ? randn(&r, 4, sh, 0.5) : none()},
              chunk, scale};
  l2rows(&pc.in[0]);
  l2rows(&pc.in[1]);
  run_case(&pc, seed);
}

static void ssd_case(const m2_op *op, int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool h0,
                     int64_t chunk, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "%s B%lld T%lld H%lld P%lld G%lld N%lld%s c%lld", op->name, (long long)B, (long long)T,
           (long long)H, (long long)P, (long long)G, (long long)N, h0 ? " h0" : "", (long long)chunk);
  m2_rng r = m2_rng_make(seed, 2);
  int64_t sx[4] = {B, T, H, P}, sd[3] = {B, T, H}, sa[1] = {H}, sb[4] = {B, T, G, N}, sh[4] = {B, H, P, N};
  pcase pc = {name, op, 6, 2, {randn(&r, 4, sx, 1), unif(&r, 3, sd, 0.01, 0.4), unif(&r, 1, sa, -1.5, -0.1),
                               randn(&r, 4, sb, 0.5), randn(&r, 4, sb, 0.5), h0 ? randn(&r, 4, sh, 0.5) : none()},
              chunk, 0};
  run_case(&pc, seed);
}

static void att_case(int64_t B, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool causal, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "attention B%lld T%lld S%lld H%lld/%lld D%lld%s", (long long)B, (long long)T,
           (long long)S, (long long)H, (long long)Hkv, (long long)D, causal ? " causal" : " full");
  m2_rng r = m2_rng_make(seed, 3);
  int64_t sq[4] = {B, T, H, D}, sk[4] = {B, S, Hkv, D};
  pcase pc = {name, &m2_op_attention, 3, 1, {randn(&r, 4, sq, 1), randn(&r, 4, sk, 1), randn(&r, 4, sk, 1)},
              causal, 1.0 / sqrt((double)D)};
  run_case(&pc, seed);
}

static void rope_case(int64_t B, int64_t T, int64_t H, int64_t D, double theta, int64_t offset, uint64_t seed) {
  char name[96];
  snprintf(name, sizeof name, "rope B%lld T%lld H%lld D%lld off%lld", (long long)B, (long long)T, (long long)H,
           (long long)D, (long long)offset);
  m2_rng r = m2_rng_make(seed, 4);
  int64_t sx[4] = {B, T, H, D};
  pcase pc = {name, &m2_op_rope, 1, 1, {randn(&r, 4, sx, 1)}, offset, theta};
  run_case(&pc, seed);
}

/* ---------------- public API and errors ---------------- */

static m2_tensor *dev_f(m2_dtype dt, int nd, const int64_t *shape, uint64_t seed, double lo, double hi) {
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

static void api_and_errors(void) {
  int64_t sq[4] = {1, 9, 2, 8}, sg[3] = {1, 9, 2};
  /* the public API dispatches to the CUDA rows and agrees with the CPU */
  m2_tensor *q = dev_f(M2_F32, 4, sq, 1, -0.3, 0.3), *k = dev_f(M2_F32, 4, sq, 2, -0.3, 0.3),
            *v = dev_f(M2_F32, 4, sq, 3, -1, 1), *g = dev_f(M2_F32, 3, sg, 4, -0.5, -0.1),
            *be = dev_f(M2_F32, 3, sg, 5, 0.1, 1.9);
  m2_tensor *o = NULL, *hT = NULL, *co = NULL, *chT = NULL;
  m2_tensor *cq = m2_clone_raw(q, M2_F32, M2_DEV_CPU), *ck = m2_clone_raw(k, M2_F32, M2_DEV_CPU),
            *cv = m2_clone_raw(v, M2_F32, M2_DEV_CPU), *cg = m2_clone_raw(g, M2_F32, M2_DEV_CPU),
            *cb = m2_clone_raw(be, M2_F32, M2_DEV_CPU);
  CHECK_OK(m2_gdn_chunked(q, k, v, g, be, NULL, NULL, &o, &hT));
  CHECK_OK(m2_gdn_chunked(cq, ck, cv, cg, cb, NULL, NULL, &co, &chT));
  CHECK(o && o->device.type == M2_CUDA && err_of(o, co) <= 1e-4 && err_of(hT, chT) <= 1e-4,
        "m2_gdn_chunked on cuda agrees with the cpu");
  m2_release(o), m2_release(hT), m2_release(co), m2_release(chT);
  int64_t sA2[1] = {2}, sB1[4] = {1, 9, 1, 8};
  m2_tensor *A2 = dev_f(M2_F32, 1, sA2, 16, -1.2, -0.2), *Bm = dev_f(M2_F32, 4, sB1, 17, -1, 1),
            *Cm = dev_f(M2_F32, 4, sB1, 18, -1, 1);
  m2_tensor *cA2 = m2_clone_raw(A2, M2_F32, M2_DEV_CPU), *cBm = m2_clone_raw(Bm, M2_F32, M2_DEV_CPU),
            *cCm = m2_clone_raw(Cm, M2_F32, M2_DEV_CPU);
  m2_ssd_opts so = {32};
  CHECK_OK(m2_ssd_chunked(v, be, A2, Bm, Cm, NULL, &so, &o, &hT));
  CHECK_OK(m2_ssd_chunked(cv, cb, cA2, cBm, cCm, NULL, &so, &co, &chT));
  CHECK(o && o->device.type == M2_CUDA && err_of(o, co) <= 1e-4 && err_of(hT, chT) <= 1e-4,
        "m2_ssd_chunked on cuda agrees with the cpu");
  m2_release(o), m2_release(hT), m2_release(co), m2_release(chT);
  m2_release(A2), m2_release(Bm), m2_release(Cm), m2_release(cA2), m2_release(cBm), m2_release(cCm);
  o = hT = NULL;
  m2_attention_opts ao = {0, true};
  m2_tensor *a = m2_attention(q, k, v, &ao), *ca = m2_attention(cq, ck, cv, &ao);
  CHECK(a && a->device.type == M2_CUDA && err_of(a, ca) <= 1e-4, "m2_attention on cuda agrees with the cpu");
  m2_tensor *rp = m2_rope(q, 10000, 3), *crp = m2_rope(cq, 10000, 3);
  CHECK(rp && rp->device.type == M2_CUDA && err_of(rp, crp) <= 1e-5, "m2_rope on cuda agrees with the cpu");
  m2_release(a), m2_release(ca), m2_release(rp), m2_release(crp);

  /* f64 is refused on cuda */
  m2_tensor *q64 = dev_f(M2_F64, 4, sq, 6, -1, 1);
  m2_tensor *g64 = dev_f(M2_F64, 3, sg, 7, -1, -0.1);
  CHECK(q64 && q64->device.type == M2_CUDA && q64->dtype == M2_F64, "an f64 cuda tensor");
  CHECK_FAILS(m2_gdn(q64, q64, q64, g64, g64, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "f64");
  CHECK_FAILS(m2_attention(q64, q64, q64, NULL) == NULL, M2_ERR_DTYPE, "f64");
  CHECK_FAILS(m2_rope(q64, 10000, 0) == NULL, M2_ERR_DTYPE, "f64");
  int64_t sA[1] = {2};
  m2_tensor *A64 = dev_f(M2_F64, 1, sA, 8, -1, -0.1);
  CHECK_FAILS(m2_ssd(q64, g64, A64, q64, q64, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_DTYPE, "f64");
  /* shapes and limits */
  int64_t sk3[4] = {1, 9, 3, 8}, sbig[4] = {1, 3, 1, 520}, sgb[3] = {1, 3, 1}, sodd[4] = {1, 9, 2, 7};
  m2_tensor *k3 = dev_f(M2_F32, 4, sk3, 9, -1, 1);
  CHECK_FAILS(m2_attention(q, k3, k3, NULL) == NULL, M2_ERR_SHAPE, "must divide");
  m2_tensor *big = dev_f(M2_F32, 4, sbig, 10, -0.1, 0.1), *gb = dev_f(M2_F32, 3, sgb, 11, -0.5, -0.1);
  CHECK_FAILS(m2_gdn(big, big, big, gb, gb, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_UNSUPPORTED, "K <= 512");
  CHECK_FAILS(m2_gdn(q, k, v, g, q, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "beta");
  m2_tensor *h0bad = dev_f(M2_F32, 4, sq, 12, -1, 1);
  CHECK_FAILS(m2_gdn(q, k, v, g, be, h0bad, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "h0");
  m2_tensor *odd = dev_f(M2_F32, 4, sodd, 13, -1, 1);
  CHECK_FAILS(m2_rope(odd, 10000, 0) == NULL, M2_ERR_SHAPE, "even");
  m2_tensor *A3 = dev_f(M2_F32, 1, sA, 14, -1, -0.1);
  m2_tensor *Bm3 = dev_f(M2_F32, 4, sk3, 15, -1, 1); /* G = 3 does not divide H = 2 */
  CHECK_FAILS(m2_ssd(q, g, A3, Bm3, Bm3, NULL, NULL, &o, &hT) != M2_OK, M2_ERR_SHAPE, "divide");
  m2_tensor *rel[] = {q, k, v, g, be, cq, ck, cv, cg, cb, q64, g64, A64, k3, big, gb, h0bad, odd, A3, Bm3};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) m2_release(rel[i]);
}

int main(void) {
  if (m2_cuda_device_count() == 0) {
    printf("cuda_mixers: no CUDA device, skipped\n");
    return 77;
  }
  uint64_t seed = 500;
  /* gated deltanet: both rows (same CUDA kernels); checkpoint segments 64 / 16 / 64 / 7 */
  gdn_case(&m2_op_gdn, 2, 77, 3, 32, 24, true, 0, 0, seed += 10);
  gdn_case(&m2_op_gdn_chunked, 1, 130, 2, 64, 40, false, 16, 0, seed += 10);
  gdn_case(&m2_op_gdn_chunked, 2, 33, 2, 48, 16, true, 0, 0.3, seed += 10);
  gdn_case(&m2_op_gdn, 1, 20, 1, 160, 8, true, 7, 0, seed += 10);
  /* mamba-2 ssd: G < H, P over one block, N up to 130 */
  ssd_case(&m2_op_ssd, 2, 77, 4, 16, 2, 24, true, 0, seed += 10);
  ssd_case(&m2_op_ssd_chunked, 1, 100, 6, 40, 3, 70, false, 32, seed += 10);
  ssd_case(&m2_op_ssd_chunked, 2, 45, 2, 8, 1, 130, true, 0, seed += 10);
  ssd_case(&m2_op_ssd, 1, 70, 3, 5, 3, 7, false, 9, seed += 10);
  /* attention: GQA, S > T, T > S (rows without keys), full, large head dims */
  att_case(2, 37, 37, 4, 2, 32, true, seed += 10);
  att_case(1, 50, 70, 3, 1, 64, true, seed += 10);
  att_case(1, 45, 20, 2, 2, 48, true, seed += 10);
  att_case(2, 33, 41, 2, 1, 16, false, seed += 10);
  att_case(1, 40, 40, 2, 1, 136, true, seed += 10);
  att_case(1, 23, 23, 2, 2, 320, true, seed += 10);
  /* rope */
  rope_case(2, 37, 3, 32, 10000, 5, seed += 10);
  rope_case(1, 19, 2, 64, 10000, 4000, seed += 10);
  rope_case(1, 5, 1, 6, 500, 0, seed += 10);
  api_and_errors();
  printf("cuda_mixers: worst error f32 fwd %.2e bwd %.2e, bf16 fwd %.2e bwd %.2e\n", g_worst[0][0], g_worst[0][1],
         g_worst[1][0], g_worst[1][1]);
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("cuda_mixers");
}
#endif /* M2_HAVE_CUDA */
