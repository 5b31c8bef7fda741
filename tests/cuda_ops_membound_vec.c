/* cuda_ops_membound_vec.c — the M2_VEC_MEMBOUND kernels (cuda/membound_vec.cuh) against the old kernels and the CPU:
 * rmsnorm / l2norm (aligned rows of d = 1024, 1344, 2816; odd d, whose rows start at any address: head and tail
 * values), split / concat / narrow along the last dim (column offsets that break 16- and 8-byte words, rows with a
 * tail, i64 rows), the unary maps (n a multiple of the word and not, n below one word); forward and backward, f32 and
 * bf16, on fresh random inputs. Each case runs
 *   - against the CPU (cuda_parity.h) with the switch off, then on (and the on run must launch the new kernels:
 *     m2_cuda_vec_membound_calls, the off run must not);
 *   - on against off on the GPU, the same inputs and output gradients: bit for bit for the unary maps and the copies
 *     (the same per-element arithmetic, raw bytes), within a bound for the norms (their row sums run in another
 *     order: f32 1e-5 and bf16 1e-2 of the largest value, as the CPU bounds).
 * Skips (77) without a GPU. */
#include <string.h>
#include "cuda_parity.h"
#include "cuda_unary_cases.h"

/* ---- one GPU run: outputs and input gradients of a case in dtype dt with the switch at `on` ---- */
typedef struct gpu_out {
  int n;
  m2_tensor *y[PAR_MAX_OUT];
  m2_tensor *g[8];
} gpu_out;

/* loss sum_j <y_j, dy_j>, dy_j random from seed + j (the same for both settings) */
static void gpu_run(const par_case *pc, m2_dtype dt, int on, uint64_t seed, gpu_out *o) {
  memset(o, 0, sizeof *o);
  m2_cuda_vec_membound(on);
  m2_tensor *gi[8] = {0};
  bool any = false;
  for (int i = 0; i < pc->n_in; i++) {
    m2_tensor *x = pc->in[i];
    if (!x) continue;
    if (m2_dtype_is_float(x->dtype)) {
      m2_tensor *r = par_round(x, dt);
      gi[i] = m2_clone_raw(r, dt, par_gpu);
      m2_release(r);
      if (pc->grad[i] && gi[i]) m2_requires_grad_(gi[i], true), any = true;
    } else {
      gi[i] = m2_clone_raw(x, x->dtype, par_gpu);
    }
  }
  o->n = pc->fn(gi, pc->ud, o->y);
  CHECK(o->n > 0, "%s %s (switch %d): cuda forward failed", pc->name, m2_dtype_name(dt), on);
  m2_tensor *loss = NULL;
  for (int j = 0; any && j < o->n; j++) {
    if (!o->y[j]->requires_grad) continue;
    m2_rng r = m2_rng_make(seed + (uint64_t)j, 7);
    m2_tensor *dy = m2_randn(&r, M2_F32, M2_DEV_CPU, o->y[j]->ndim, o->y[j]->shape);
    m2_tensor *dyg = m2_clone_raw(dy, o->y[j]->dtype, par_gpu);
    m2_tensor *p = m2_mul(o->y[j], dyg), *s = p ? m2_sum_all(p) : NULL;
    m2_tensor *nl = !s ? NULL : loss ? m2_add(loss, s) : (m2_retain(s), s);
    CHECK(nl != NULL, "%s: loss term %d failed", pc->name, j);
    m2_release(loss);
    loss = nl;
    m2_release(dy), m2_release(dyg), m2_release(p), m2_release(s);
  }
  if (loss)
    CHECK(m2_backward(loss, NULL) == M2_OK, "%s %s (switch %d): backward failed", pc->name, m2_dtype_name(dt), on);
  m2_release(loss);
  for (int i = 0; i < pc->n_in; i++) {
    if (gi[i] && gi[i]->grad) m2_retain(gi[i]->grad), o->g[i] = gi[i]->grad;
    m2_release(gi[i]);
  }
}
static void gpu_out_free(gpu_out *o) {
  for (int j = 0; j < PAR_MAX_OUT; j++) m2_release(o->y[j]);
  for (int i = 0; i < 8; i++) m2_release(o->g[i]);
}

/* a and b hold the same bytes (same dtype and shape) */
static bool same_bits(const m2_tensor *a, const m2_tensor *b) {
  if (a->dtype != b->dtype || !m2_same_shape(a, b)) return false;
  m2_tensor *ha = m2_clone_raw(a, a->dtype, M2_DEV_CPU), *hb = m2_clone_raw(b, b->dtype, M2_DEV_CPU);
  bool eq = ha && hb && memcmp(m2_data(ha), m2_data(hb), (size_t)m2_numel(ha) * m2_elsize(ha)) == 0;
  m2_release(ha), m2_release(hb);
  return eq;
}
static bool close_or_same(const m2_tensor *on, const m2_tensor *off, double tol, double *err) {
  if (tol == 0) {
    *err = same_bits(on, off) ? 0 : INFINITY;
    return *err == 0;
  }
  *err = max_rel_diff(on, off);
  return *err <= tol;
}

/* The case against the CPU with the switch off and on, then on against off. tol: the on-vs-off bound for f32, bf16
 * (0: the same bits). vec: the on runs must launch the new kernels. */
static void vec_case(const par_case *pc, const double tol[2], bool vec) {
  long c0 = m2_cuda_vec_membound_calls();
  m2_cuda_vec_membound(0);
  par_run(pc);
  long c1 = m2_cuda_vec_membound_calls();
  CHECK(c1 == c0, "%s: the switch is off but %ld vectorized launches ran", pc->name, c1 - c0);
  m2_cuda_vec_membound(1);
  par_run(pc);
  long c2 = m2_cuda_vec_membound_calls();
  if (vec) CHECK(c2 > c1, "%s: the switch is on but no vectorized kernel ran", pc->name);
  for (int di = 0; di < (pc->f32_only ? 1 : 2); di++) {
    m2_dtype dt = di ? M2_BF16 : M2_F32;
    uint64_t seed = par_seed++;
    gpu_out off, on;
    gpu_run(pc, dt, 0, seed, &off);
    gpu_run(pc, dt, 1, seed, &on);
    double worst = 0, e = 0;
    CHECK(on.n == off.n, "%s %s: %d outputs on, %d off", pc->name, m2_dtype_name(dt), on.n, off.n);
    for (int j = 0; j < on.n && j < off.n; j++) {
      CHECK(close_or_same(on.y[j], off.y[j], tol[di], &e), "%s %s: output %d on vs off: %.3g (bound %g)", pc->name,
            m2_dtype_name(dt), j, e, tol[di]);
      if (!(e <= worst)) worst = e;
    }
    for (int i = 0; i < pc->n_in; i++) {
      if (!pc->grad[i] || !pc->in[i]) continue;
      CHECK(on.g[i] && off.g[i], "%s %s: no gradient of input %d", pc->name, m2_dtype_name(dt), i);
      if (!on.g[i] || !off.g[i]) continue;
      CHECK(close_or_same(on.g[i], off.g[i], tol[di], &e), "%s %s: gradient %d on vs off: %.3g (bound %g)", pc->name,
            m2_dtype_name(dt), i, e, tol[di]);
      if (!(e <= worst)) worst = e;
    }
    printf("  %-28s %-4s on vs off %s %.2e\n", pc->name, m2_dtype_name(dt), tol[di] == 0 ? "(bits)" : "", worst);
    gpu_out_free(&off), gpu_out_free(&on);
  }
  m2_cuda_vec_membound(0);
}

/* ---- ops ---- */
static int f_rms(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_rmsnorm(in[0], in[1], 1e-5)); }
static int f_l2(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_l2norm(in[0], 1e-6)); }

typedef struct split_ud { int dim, n; int64_t sizes[3]; } split_ud;
static int f_split(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  split_ud *s = ud;
  return m2_split(in[0], s->dim, s->n, s->sizes, outs) == M2_OK ? s->n : -1;
}
static int f_concat(m2_tensor *const *in, void *ud, m2_tensor **outs) { PAR_ONE(m2_concat(3, in, *(int *)ud)); }
typedef struct narrow_ud { int dim; int64_t start, len; } narrow_ud;
static int f_narrow(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  narrow_ud *a = ud;
  m2_tensor *v = m2_narrow(in[0], a->dim, a->start, a->len);
  outs[0] = v ? m2_contiguous(v) : NULL; /* the copy of a column range; backward: narrow's (zeros, copy into) */
  m2_release(v);
  return outs[0] ? 1 : -1;
}

/* i64 rows: a narrow's contiguous copy (8-byte elements: 16-byte words and an element tail) against the host's */
static void i64_rows(void) {
  int64_t sh[2] = {9, 10};
  m2_tensor *h = par_ints(M2_I64, 2, sh, -1000000, 1000000), *g = m2_clone_raw(h, M2_I64, par_gpu);
  const int64_t starts[2] = {2, 3};
  for (int k = 0; k < 2; k++) {
    m2_cuda_vec_membound(1);
    long c0 = m2_cuda_vec_membound_calls();
    m2_tensor *hv = m2_narrow(h, 1, starts[k], 5), *gv = m2_narrow(g, 1, starts[k], 5);
    m2_tensor *hc = hv ? m2_contiguous(hv) : NULL, *gc = gv ? m2_contiguous(gv) : NULL;
    CHECK(hc && gc && max_rel_diff(gc, hc) == 0, "i64 rows from column %lld differ", (long long)starts[k]);
    CHECK(m2_cuda_vec_membound_calls() > c0, "i64 rows: no vectorized copy ran");
    m2_release(hv), m2_release(gv), m2_release(hc), m2_release(gc);
  }
  m2_cuda_vec_membound(0);
  m2_release(h), m2_release(g);
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_membound_vec");
  const char *env = getenv("M2_VEC_MEMBOUND");
  if (!env || strcmp(env, "1") != 0) CHECK(m2_cuda_vec_membound(-1) == 0, "the switch is on by default");
  const double bits[2] = {0, 0}, norm_tol[2] = {1e-5, 1e-2};

  /* rmsnorm / l2norm: aligned rows (16-byte words only), odd d (rows start anywhere: head, words, tail), d below a
     word, long rows (8 warps) */
  const int64_t dims[] = {1024, 1344, 2816, 1001, 7, 4100};
  for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
    int64_t sx[2] = {dims[i] > 2000 ? 24 : 33, dims[i]}, sw[1] = {dims[i]};
    m2_tensor *x = par_randn(2, sx), *w = par_uniform(1, sw, 0.5, 1.5);
    char name[64];
    snprintf(name, sizeof name, "rmsnorm/d=%lld", (long long)dims[i]);
    par_case pc = {name, f_rms, NULL, 2, {x, w}, {true, true}};
    vec_case(&pc, norm_tol, true);
    if (dims[i] == 1024 || dims[i] == 1001) {
      snprintf(name, sizeof name, "rmsnorm/no weight d=%lld", (long long)dims[i]);
      par_case pn = {name, f_rms, NULL, 2, {x, NULL}, {true, false}};
      vec_case(&pn, norm_tol, true);
      snprintf(name, sizeof name, "l2norm/d=%lld", (long long)dims[i]);
      par_case pl = {name, f_l2, NULL, 1, {x}, {true}};
      vec_case(&pl, norm_tol, true);
    }
    m2_release(x), m2_release(w);
  }

  /* split along the last dim: the M2RNN in_proj's 2900 -> 1472 / 84 / 1344 (f32: 16-byte words; bf16: rows of 5800
     bytes, 8-byte words), a 3-d input (rows merged), odd widths and offsets (4- and 2-byte words) */
  {
    int64_t s1[2] = {37, 2900}, s2[3] = {3, 11, 2900}, s3[2] = {33, 19};
    m2_tensor *x1 = par_randn(2, s1), *x2 = par_randn(3, s2), *x3 = par_randn(2, s3);
    split_ud a = {1, 3, {1472, 84, 1344}}, b = {2, 3, {1472, 84, 1344}}, c = {1, 3, {5, 3, 11}};
    par_case p1 = {"split/2900 -> 1472,84,1344", f_split, &a, 1, {x1}, {true}};
    vec_case(&p1, bits, true);
    par_case p2 = {"split/3-d 2900", f_split, &b, 1, {x2}, {true}};
    vec_case(&p2, bits, true);
    par_case p3 = {"split/19 -> 5,3,11", f_split, &c, 1, {x3}, {true}};
    vec_case(&p3, bits, true);
    /* concat along the last dim: pieces 84, 1472, 13 wide (destination rows of 1569) */
    int64_t q1[2] = {29, 84}, q2[2] = {29, 1472}, q3[2] = {29, 13};
    m2_tensor *y1 = par_randn(2, q1), *y2 = par_randn(2, q2), *y3 = par_randn(2, q3);
    int last = 1;
    par_case p4 = {"concat/84,1472,13", f_concat, &last, 3, {y1, y2, y3}, {true, true, true}};
    vec_case(&p4, bits, true);
    /* narrow along the last dim: aligned start with a row tail (13 of 64), odd start */
    int64_t s5[2] = {40, 64};
    m2_tensor *x5 = par_randn(2, s5);
    narrow_ud n1 = {1, 4, 13}, n2 = {1, 3, 50};
    par_case p5 = {"narrow/[4, 17) of 64", f_narrow, &n1, 1, {x5}, {true}};
    vec_case(&p5, bits, true);
    par_case p6 = {"narrow/[3, 53) of 64", f_narrow, &n2, 1, {x5}, {true}};
    vec_case(&p6, bits, true);
    m2_tensor *all[] = {x1, x2, x3, y1, y2, y3, x5};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  }
  i64_rows();

  /* unary maps: n = 9933 (words and a tail of 5 / 1), 65536 (words only), 3 (the tail only) */
  int64_t su[3][2] = {{129, 77}, {64, 1024}, {1, 3}};
  for (int s = 0; s < 3; s++)
    for (int k = 0; k < NKINDS; k++) {
      m2_tensor *x = (k == LOG || k == SQRT) ? par_uniform(2, su[s], 0.2, 3.0) : par_randn(2, su[s]);
      char name[64];
      snprintf(name, sizeof name, "%s/(%lld, %lld)", un_names[k], (long long)su[s][0], (long long)su[s][1]);
      par_case pc = {name, f_un, &k, 1, {x}, {true}};
      /* add_scalar's backward is a pass-through (no kernel); its forward runs the new kernel */
      vec_case(&pc, bits, true);
      m2_release(x);
    }
  return par_finish("cuda_ops_membound_vec");
}
