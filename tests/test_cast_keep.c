/* test_cast_keep.c — m2_cast_keep_bf16 (core/op.h, core/op_cast.c): a cast call recorded as ONE cast_call node that
 * keeps its original bf16 inputs gives outputs and gradients bit for bit those of the to_dtype nodes and the op's
 * node on f32 copies, for every case of the shared table (tests/op_cases.c) with every float input bf16 and with
 * in[0] bf16 and the others f32, under f32 and bf16 products; the tape holds fewer bytes; gradients that reach one
 * tensor through several inputs of a call (and through other consumers) add in the same order; nothing leaks. */
#include "check.h"
#include "op_cases.h"
#include <string.h>

enum { V_ALL, V_ACT };
static const char *const VNAME[] = {"all bf16", "in[0] bf16"};

/* x (any float dtype) rounded to bf16 values, as dtype dt (new ref) */
static m2_tensor *rounded(m2_tensor *x, m2_dtype dt) {
  m2_tensor *h = m2_clone_raw(x, M2_BF16, M2_DEV_CPU);
  m2_tensor *r = h ? m2_clone_raw(h, dt, M2_DEV_CPU) : NULL;
  m2_release(h);
  return r;
}

/* a and b have one dtype and shape and the same bytes (compared on contiguous copies) */
static bool same_bits(const m2_tensor *a, const m2_tensor *b) {
  if (!a || !b || a->dtype != b->dtype || !m2_same_shape(a, b)) return false;
  m2_tensor *ca = m2_clone_raw(a, a->dtype, M2_DEV_CPU), *cb = m2_clone_raw(b, b->dtype, M2_DEV_CPU);
  bool same = ca && cb &&
              memcmp(m2_data(ca), m2_data(cb), (size_t)m2_numel(ca) * m2_dtype_size(ca->dtype)) == 0;
  m2_release(ca), m2_release(cb);
  return same;
}

typedef struct run_result {
  int n;
  m2_tensor *y[OC_MAX_OUT], *g[OC_MAX_IN];
  long long tape_bytes; /* after the forward */
  long nodes;
} run_result;

/* the case on fresh copies of in (variant v), the switch set to keep; the outputs and input gradients */
static void run_once(const op_case *c, const oc_inputs *in, int v, bool keep, run_result *r) {
  memset(r, 0, sizeof *r);
  const bool old = m2_cast_keep_bf16(keep);
  const bool fwd_only = (c->flags & OC_FWD_ONLY) != 0;
  m2_tensor *ti[OC_MAX_IN] = {0}, *dy[OC_MAX_OUT] = {0};
  for (int i = 0; i < in->n; i++) {
    m2_tensor *x = in->t[i];
    if (!x) continue;
    if (!m2_dtype_is_float(x->dtype)) {
      m2_retain(x);
      ti[i] = x;
      continue;
    }
    ti[i] = rounded(x, v == V_ALL || i == 0 ? M2_BF16 : M2_F32);
    if (in->grad[i] && !fwd_only && ti[i]) m2_requires_grad_(ti[i], true);
  }
  m2_clear_error();
  r->n = c->run(ti, r->y);
  CHECK(r->n > 0, "%s / %s, %s, keep %d: failed: %s", c->op, c->name, VNAME[v], keep, m2_errmsg());
  m2_tape_totals tot = {0};
  m2_tape_rows(NULL, 0, &tot);
  r->tape_bytes = tot.bytes - tot.param_bytes;
  r->nodes = tot.nodes;
  bool any = false;
  for (int j = 0; j < r->n; j++) {
    if (!r->y[j] || !r->y[j]->requires_grad || fwd_only) continue;
    m2_rng g = m2_rng_make(77, (uint64_t)j);
    m2_tensor *d = m2_randn(&g, M2_F32, M2_DEV_CPU, r->y[j]->ndim, r->y[j]->shape);
    dy[j] = rounded(d, M2_F32);
    m2_release(d);
    any = true;
  }
  if (any) {
    m2_tensor *l = oc_dot_loss(r->y, r->n, dy);
    CHECK(l && m2_backward(l, NULL) == M2_OK, "%s / %s, %s, keep %d: backward: %s", c->op, c->name, VNAME[v], keep,
          m2_errmsg());
    m2_release(l);
    for (int i = 0; i < in->n; i++)
      if (ti[i] && ti[i]->grad) { r->g[i] = ti[i]->grad; m2_retain(r->g[i]); }
  }
  for (int j = 0; j < OC_MAX_OUT; j++) m2_release(dy[j]);
  for (int i = 0; i < OC_MAX_IN; i++) m2_release(ti[i]);
  m2_cast_keep_bf16(old);
}

static void release_result(run_result *r) {
  for (int j = 0; j < OC_MAX_OUT; j++) m2_release(r->y[j]);
  for (int i = 0; i < OC_MAX_IN; i++) m2_release(r->g[i]);
}

static int g_variants, g_fewer, g_more;
static long long g_bytes_off, g_bytes_on;

static void compare(const op_case *c, const oc_inputs *in, int v) {
  run_result off, on;
  run_once(c, in, v, false, &off);
  run_once(c, in, v, true, &on);
  CHECK(off.n == on.n, "%s / %s, %s: %d outputs, %d with the switch on", c->op, c->name, VNAME[v], off.n, on.n);
  for (int j = 0; j < off.n && j < on.n; j++)
    CHECK(same_bits(off.y[j], on.y[j]), "%s / %s, %s: output %d differs with the switch on", c->op, c->name,
          VNAME[v], j);
  for (int i = 0; i < OC_MAX_IN; i++) {
    CHECK((off.g[i] != NULL) == (on.g[i] != NULL), "%s / %s, %s: gradient %d on one side only", c->op, c->name,
          VNAME[v], i);
    if (off.g[i] && on.g[i])
      CHECK(same_bits(off.g[i], on.g[i]), "%s / %s, %s: gradient of input %d differs with the switch on (%s, %s)",
            c->op, c->name, VNAME[v], i, m2_dtype_name(off.g[i]->dtype), m2_dtype_name(on.g[i]->dtype));
  }
  CHECK(on.tape_bytes <= off.tape_bytes, "%s / %s, %s: the tape holds %lld bytes with the switch on, %lld off",
        c->op, c->name, VNAME[v], on.tape_bytes, off.tape_bytes);
  g_fewer += on.tape_bytes < off.tape_bytes;
  g_more += on.tape_bytes > off.tape_bytes;
  g_bytes_off += off.tape_bytes, g_bytes_on += on.tape_bytes;
  g_variants++;
  release_result(&off), release_result(&on);
  CHECK(m2_live_nodes() == 0, "%s / %s, %s: %ld nodes left after the backward", c->op, c->name, VNAME[v],
        m2_live_nodes());
}

static void table_cases(void) {
  for (int k = 0; k < oc_ncases; k++) {
    const op_case *c = &oc_cases[k];
    if (c->flags & (OC_TWO_DEVICES | OC_NO_BF16)) continue;
    oc_inputs in;
    oc_make(c, 4242, &in);
    int nfloat = 0;
    for (int i = 0; i < in.n; i++) nfloat += in.t[i] && m2_dtype_is_float(in.t[i]->dtype);
    if (nfloat > 0) compare(c, &in, V_ALL);
    if (nfloat > 1 && in.t[0] && m2_dtype_is_float(in.t[0]->dtype)) compare(c, &in, V_ACT);
    oc_release(&in);
  }
}

/* One bf16 tensor h feeding one call through both inputs (h h^T: two different gradients), a strided f32 input
 * twice, and consumers made after the call (their gradients reach h first): the sums must add in the other way's
 * order, bit for bit. Returns p's gradient (f32) and, through *hg, h's output. */
static m2_tensor *shared_inputs(bool keep, m2_tensor **out) {
  const bool old = m2_cast_keep_bf16(keep);
  m2_rng r = m2_rng_make(9, 3);
  m2_tensor *p = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){6, 6});
  m2_tensor *q = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, (int64_t[]){6, 6});
  m2_requires_grad_(p, true), m2_requires_grad_(q, true);
  m2_tensor *h = m2_to_dtype(p, M2_BF16);              /* bf16, made by a node */
  m2_tensor *a = m2_matmul(h, h, false, true);           /* h h^T: h through both inputs */
  m2_tensor *qt = m2_transpose(q, 0, 1);                 /* strided f32 */
  m2_tensor *s = m2_sub(h, qt), *s2 = m2_mul(qt, h);     /* bf16 / f32 mixes */
  m2_tensor *e = m2_exp(h), *t = m2_tanh(h);             /* consumers made after the call */
  m2_tensor *m1 = m2_mul(a, e), *m2 = m2_add(m1, t), *m3 = m2_mul(m2, s), *m4 = m2_add(m3, s2);
  m2_tensor *l = m2_sum_all(m4);
  CHECK(l && m2_backward(l, NULL) == M2_OK, "shared inputs, keep %d: backward: %s", keep, m2_errmsg());
  m2_tensor *g = NULL;
  if (p->grad && q->grad) {
    m2_tensor *both[2] = {p->grad, q->grad};
    g = m2_concat(2, both, 0);
  }
  *out = m4;
  m2_retain(m4);
  m2_tensor *all[] = {p, q, h, a, qt, s, s2, e, t, m1, m2, m3, m4, l};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) m2_release(all[i]);
  m2_cast_keep_bf16(old);
  return g;
}

static void shared(void) {
  m2_tensor *y0 = NULL, *y1 = NULL;
  m2_tensor *g0 = shared_inputs(false, &y0), *g1 = shared_inputs(true, &y1);
  CHECK(g0 && g1 && same_bits(g0, g1), "shared inputs: the gradients differ with the switch on");
  CHECK(same_bits(y0, y1), "shared inputs: the outputs differ with the switch on");
  m2_release(g0), m2_release(g1), m2_release(y0), m2_release(y1);
}

/* the switch: off by default (unless the environment says otherwise), the setter returns the setting before */
static void switch_api(void) {
  const bool was = m2_cast_keep_bf16(true);
  CHECK(m2_cast_keep_bf16_on(), "on after setting it");
  CHECK(m2_cast_keep_bf16(false) == true, "the setter returns the setting before");
  CHECK(!m2_cast_keep_bf16_on(), "off after clearing it");
  m2_cast_keep_bf16(was);
}

/* one node instead of three, holding the bf16 input (not its f32 copy) */
static void one_node(void) {
  m2_rng r = m2_rng_make(4, 1);
  m2_tensor *x = m2_randn(&r, M2_BF16, M2_DEV_CPU, 2, (int64_t[]){16, 16});
  m2_requires_grad_(x, true);
  for (int keep = 0; keep < 2; keep++) {
    const bool old = m2_cast_keep_bf16(keep);
    m2_tensor *y = m2_softplus(x); /* reads its input; its output rounded to bf16 */
    m2_tape_row rows[8];
    m2_tape_totals tot;
    int n = m2_tape_rows(rows, 8, &tot);
    CHECK(n >= 1 && tot.nodes == (keep ? 1 : 3), "keep %d: %ld nodes", keep, tot.nodes);
    long long held = tot.bytes - tot.param_bytes;
    CHECK(held == (keep ? 0 : 16 * 16 * 4), "keep %d: the tape holds %lld bytes besides the parameter", keep, held);
    for (int i = 0; i < n && i < 8; i++)
      CHECK(!strcmp(rows[i].op, keep ? "softplus" : rows[i].op), "keep: the rows name the op the node wraps, not %s",
            rows[i].op);
    CHECK(y && y->dtype == M2_BF16, "softplus of bf16 is bf16");
    m2_release(y);
    CHECK(m2_live_nodes() == 0, "keep %d: nodes left", keep);
    m2_cast_keep_bf16(old);
  }
  m2_release(x);
}

int main(void) {
  switch_api();
  one_node();
  shared();
  table_cases();
  m2_set_matmul_precision(M2_MM_BF16);
  table_cases();
  m2_set_matmul_precision(M2_MM_F32);
  printf("test_cast_keep: %d case variants bit-identical; tape bytes (less parameters) %lld off, %lld on; fewer in "
         "%d, more in %d\n", g_variants, g_bytes_off, g_bytes_on, g_fewer, g_more);
  CHECK(g_fewer > 0, "the switch holds fewer bytes somewhere");
  CHECK(m2_live_nodes() == 0, "%ld autograd nodes leaked", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "%ld tensors leaked", m2_live_tensors());
  return check_finish("test_cast_keep");
}
