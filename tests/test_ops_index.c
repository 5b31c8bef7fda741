/* test_ops_index.c — concat (incl. more than M2_MAX_IN tensors), split (incl. more than
 * M2_MAX_OUT pieces), gather, index_select: forward against element-by-element references
 * (m2_get), F64 gradient checks, integer tensors, error cases. */
#include "check.h"

static m2_tensor *randn(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, bool grad) {
  m2_tensor *t = m2_randn(r, dt, M2_DEV_CPU, nd, shape);
  if (grad) m2_requires_grad_(t, true);
  return t;
}
static m2_tensor *randint(m2_rng *r, m2_dtype dt, int nd, const int64_t *shape, int64_t hi) {
  m2_tensor *t = m2_zeros(dt, M2_DEV_CPU, nd, shape);
  for (int64_t i = 0; i < m2_numel(t); i++) m2_store(m2_data(t), dt, i, (double)m2_rng_randint(r, hi));
  return t;
}
/* multi-index of flat position i in shape */
static void unravel(int nd, const int64_t *shape, int64_t i, int64_t *idx) {
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = i % shape[d];
    i /= shape[d];
  }
}
static double get(const m2_tensor *t, const int64_t *idx) {
  double v = NAN;
  m2_get(t, idx, &v);
  return v;
}

/* ---- concat ---- */
/* out[.., j, ..] == xs[k][.., j - off_k, ..] everywhere */
static bool concat_ok(const m2_tensor *o, int n, m2_tensor *const *xs, int d) {
  if (!o) return false;
  for (int64_t i = 0; i < m2_numel(o); i++) {
    int64_t idx[M2_MAX_DIMS];
    unravel(o->ndim, o->shape, i, idx);
    int k = 0;
    while (idx[d] >= xs[k]->shape[d]) idx[d] -= xs[k++]->shape[d];
    int64_t oi[M2_MAX_DIMS];
    unravel(o->ndim, o->shape, i, oi);
    if (get(o, oi) != get(xs[k], idx)) return false;
  }
  return true;
}
typedef struct { int n, dim; } cat_ud;
static m2_tensor *f_concat(m2_tensor *const *in, void *ud) {
  cat_ud *u = ud;
  return m2_concat(u->n, in, u->dim);
}

static void test_concat(m2_rng *r) {
  for (int dim = 0; dim < 3; dim++) {
    m2_tensor *xs[3];
    for (int k = 0; k < 3; k++) {
      int64_t s[3] = {2, 3, 4};
      s[dim] = k + 1; /* 1, 2, 3 along dim */
      xs[k] = randn(r, M2_F32, 3, s, false);
    }
    m2_tensor *o = m2_concat(3, xs, dim - 3); /* negative dims too */
    CHECK(o && o->shape[dim] == 6, "concat dim %d: shape", dim);
    CHECK(concat_ok(o, 3, xs, dim), "concat dim %d vs reference", dim);
    m2_release(o);
    for (int k = 0; k < 3; k++) m2_release(xs[k]);
  }
  /* integer tensors join too */
  {
    int64_t s1[2] = {2, 2}, s2[2] = {2, 3};
    m2_tensor *xs[2] = {randint(r, M2_I64, 2, s1, 100), randint(r, M2_I64, 2, s2, 100)};
    m2_tensor *o = m2_concat(2, xs, 1);
    CHECK(o && o->dtype == M2_I64 && concat_ok(o, 2, xs, 1), "concat of i64 tensors");
    m2_release(o); m2_release(xs[0]); m2_release(xs[1]);
  }
  /* one tensor: itself */
  {
    int64_t s[1] = {3};
    m2_tensor *x = randn(r, M2_F32, 1, s, false), *o = m2_concat(1, &x, 0);
    CHECK(o == x, "concat of one tensor is that tensor");
    m2_release(o); m2_release(x);
  }
  /* more than M2_MAX_IN tensors (grouped calls), with gradients */
  {
    enum { N = 19 };
    m2_tensor *xs[N];
    int64_t total = 0;
    for (int k = 0; k < N; k++) {
      total += 1 + k % 3;
      int64_t s[2] = {2, 1 + k % 3};
      xs[k] = randn(r, M2_F64, 2, s, true);
    }
    m2_tensor *o = m2_concat(N, xs, 1);
    CHECK(o && o->shape[1] == total && total == 37 && concat_ok(o, N, xs, 1),
          "concat of %d tensors", N);
    m2_release(o);
    cat_ud u = {N, 1};
    double err;
    CHECK_OK(m2_gradcheck(f_concat, &u, N, xs, NULL, &err));
    for (int k = 0; k < N; k++) m2_release(xs[k]);
  }
  /* gradient along dim 0, one input not a parameter */
  {
    int64_t s1[3] = {1, 2, 3}, s2[3] = {3, 2, 3};
    m2_tensor *xs[3] = {randn(r, M2_F64, 3, s1, true), randn(r, M2_F64, 3, s2, false), randn(r, M2_F64, 3, s1, true)};
    cat_ud u = {3, 0};
    double err;
    CHECK_OK(m2_gradcheck(f_concat, &u, 3, xs, NULL, &err));
    for (int k = 0; k < 3; k++) m2_release(xs[k]);
  }
  /* errors */
  {
    int64_t s1[2] = {2, 3}, s2[2] = {3, 3};
    m2_tensor *a = randn(r, M2_F32, 2, s1, false), *b = randn(r, M2_F32, 2, s2, false),
              *c = randn(r, M2_F64, 2, s1, false);
    m2_tensor *ab[2] = {a, b}, *ac[2] = {a, c};
    CHECK_FAILS(m2_concat(2, ab, 1) == NULL, M2_ERR_SHAPE, "(3, 3)");
    CHECK_FAILS(m2_concat(2, ac, 0) == NULL, M2_ERR_DTYPE, "f64");
    CHECK_FAILS(m2_concat(2, ab, 2) == NULL, M2_ERR_INDEX, "dim 2");
    CHECK_FAILS(m2_concat(0, ab, 0) == NULL, M2_ERR_VALUE, "at least one");
    m2_tensor *o = m2_concat(2, ab, 0);
    CHECK(o && o->shape[0] == 5, "concat (2,3)+(3,3) along 0");
    m2_release(o); m2_release(a); m2_release(b); m2_release(c);
  }
}

/* ---- split ---- */
typedef struct { int dim, n; const int64_t *sizes; int nuse; const int *use; } split_ud;
/* split, then concat a chosen subset of the pieces (so some outputs get no gradient) */
static m2_tensor *f_split(m2_tensor *const *in, void *ud) {
  split_ud *u = ud;
  m2_tensor *p[16], *q[16];
  if (m2_split(in[0], u->dim, u->n, u->sizes, p) != M2_OK) return NULL;
  for (int i = 0; i < u->nuse; i++) q[i] = p[u->use[i]];
  m2_tensor *o = m2_concat(u->nuse, q, u->dim);
  for (int i = 0; i < u->n; i++) m2_release(p[i]);
  return o;
}

static void test_split(m2_rng *r) {
  int64_t sx[3] = {2, 10, 3};
  const int64_t sz5[5] = {2, 0, 3, 1, 4}, sz10[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, sz2[2] = {1, 2};
  struct { int dim, n; const int64_t *sizes; } cases[] = {{1, 5, sz5}, {1, 10, sz10}, {-1, 2, sz2}, {0, 2, (int64_t[]){1, 1}}};
  for (int ci = 0; ci < 4; ci++) {
    m2_tensor *x = randn(r, M2_F32, 3, sx, false), *p[10] = {0};
    CHECK_OK(m2_split(x, cases[ci].dim, cases[ci].n, cases[ci].sizes, p));
    int d = cases[ci].dim < 0 ? cases[ci].dim + 3 : cases[ci].dim;
    int64_t start = 0;
    for (int i = 0; i < cases[ci].n; i++) {
      m2_tensor *ref = m2_narrow(x, d, start, cases[ci].sizes[i]);
      CHECK(p[i] && m2_same_shape(p[i], ref) && (m2_numel(ref) == 0 || max_rel_diff(p[i], ref) == 0),
            "split case %d piece %d equals narrow", ci, i);
      start += cases[ci].sizes[i];
      m2_release(ref);
      m2_release(p[i]);
    }
    m2_release(x);
  }
  /* gradients: more than M2_MAX_OUT pieces, some unused, reordered */
  {
    m2_tensor *x = randn(r, M2_F64, 3, sx, true);
    int use5[3] = {4, 0, 2};
    split_ud u = {1, 5, sz5, 3, use5};
    double err;
    CHECK_OK(m2_gradcheck(f_split, &u, 1, &x, NULL, &err));
    int use10[5] = {9, 3, 4, 7, 5};
    split_ud u10 = {1, 10, sz10, 5, use10};
    CHECK_OK(m2_gradcheck(f_split, &u10, 1, &x, NULL, &err));
    int use2[1] = {1};
    split_ud u2 = {2, 2, sz2, 1, use2};
    CHECK_OK(m2_gradcheck(f_split, &u2, 1, &x, NULL, &err));
    m2_release(x);
  }
  /* integer tensor */
  {
    m2_tensor *x = randint(r, M2_I32, 3, sx, 50), *p[2];
    CHECK_OK(m2_split(x, 0, 2, (int64_t[]){1, 1}, p));
    int64_t i0[3] = {0, 4, 2}, i1[3] = {1, 4, 2};
    CHECK(p[0]->dtype == M2_I32 && get(p[0], i0) == get(x, i0) && get(p[1], i0) == get(x, i1), "split of i32");
    m2_release(p[0]); m2_release(p[1]); m2_release(x);
  }
  /* errors */
  {
    m2_tensor *x = randn(r, M2_F32, 3, sx, false), *p[3];
    CHECK_FAILS(m2_split(x, 1, 2, (int64_t[]){4, 5}, p) != M2_OK, M2_ERR_SHAPE, "add up to 9");
    /* sizes whose sum overflows int64 (UBSan; found by tests/fuzz/fuzz_lua.c: m2.split(x, 2, {2^32 + 1, 2^63 - 1})) */
    CHECK_FAILS(m2_split(x, 1, 2, (int64_t[]){((int64_t)1 << 32) + 1, INT64_MAX}, p) != M2_OK, M2_ERR_SHAPE,
                "more than dim 1");
    CHECK_FAILS(m2_split(x, 1, 3, (int64_t[]){INT64_MAX, INT64_MAX, 2}, p) != M2_OK, M2_ERR_SHAPE, "more than");
    CHECK_FAILS(m2_split(x, 1, 2, (int64_t[]){12, -2}, p) != M2_OK, M2_ERR_VALUE, "negative");
    CHECK_FAILS(m2_split(x, 3, 1, (int64_t[]){3}, p) != M2_OK, M2_ERR_INDEX, "dim 3");
    CHECK_FAILS(m2_split(x, 0, 0, (int64_t[]){2}, p) != M2_OK, M2_ERR_VALUE, "at least one");
    m2_release(x);
  }
}

/* ---- gather ---- */
typedef struct { int dim; m2_tensor *idx; } idx_ud;
static m2_tensor *f_gather(m2_tensor *const *in, void *ud) {
  idx_ud *u = ud;
  return m2_gather(in[0], u->dim, u->idx);
}
static m2_tensor *f_index_select(m2_tensor *const *in, void *ud) {
  idx_ud *u = ud;
  return m2_index_select(in[0], u->dim, u->idx);
}

static void test_gather(m2_rng *r) {
  int64_t sx[3] = {3, 4, 5};
  for (int dim = 0; dim < 3; dim++)
    for (int k = 0; k < 2; k++) {
      int64_t si[3] = {2, 3, 4}; /* smaller than x outside dim */
      si[dim] = 6;               /* larger along dim: repeats */
      m2_tensor *x = randn(r, k ? M2_F64 : M2_F32, 3, sx, false);
      m2_tensor *idx = randint(r, k ? M2_I64 : M2_I32, 3, si, sx[dim]);
      m2_tensor *o = m2_gather(x, dim, idx);
      bool ok = o && m2_same_shape(o, idx);
      for (int64_t i = 0; ok && i < m2_numel(idx); i++) {
        int64_t p[3], q[3];
        unravel(3, si, i, p);
        memcpy(q, p, sizeof q);
        q[dim] = (int64_t)get(idx, p);
        ok = get(o, p) == get(x, q);
      }
      CHECK(ok, "gather dim %d (%s index) vs reference", dim, k ? "i64" : "i32");
      m2_release(x); m2_release(idx); m2_release(o);
    }
  /* gradient (repeated indices scatter-add) */
  for (int dim = 0; dim < 3; dim++) {
    int64_t si[3] = {3, 2, 4};
    si[dim] = 7;
    m2_tensor *x = randn(r, M2_F64, 3, sx, true), *idx = randint(r, M2_I64, 3, si, sx[dim]);
    idx_ud u = {dim, idx};
    double err;
    m2_status s = m2_gradcheck(f_gather, &u, 1, &x, NULL, &err);
    CHECK(s == M2_OK, "gradcheck gather dim %d", dim);
    m2_release(x); m2_release(idx);
  }
  /* errors */
  {
    m2_tensor *x = randn(r, M2_F32, 3, sx, false);
    int64_t si[3] = {2, 2, 2};
    m2_tensor *idx = randint(r, M2_I64, 3, si, 3);
    m2_store(m2_data(idx), M2_I64, 5, 9);
    CHECK_FAILS(m2_gather(x, 1, idx) == NULL, M2_ERR_INDEX, "index 9");
    m2_store(m2_data(idx), M2_I64, 5, -1);
    CHECK_FAILS(m2_gather(x, 1, idx) == NULL, M2_ERR_INDEX, "index -1");
    m2_tensor *fi = randn(r, M2_F32, 3, si, false);
    CHECK_FAILS(m2_gather(x, 1, fi) == NULL, M2_ERR_DTYPE, "integer");
    m2_tensor *i2 = randint(r, M2_I64, 2, si, 2);
    CHECK_FAILS(m2_gather(x, 1, i2) == NULL, M2_ERR_SHAPE, "ndim");
    int64_t sbig[3] = {4, 1, 1};
    m2_tensor *ib = randint(r, M2_I64, 3, sbig, 2);
    CHECK_FAILS(m2_gather(x, 1, ib) == NULL, M2_ERR_SHAPE, "(4, 1, 1)");
    CHECK_FAILS(m2_gather(x, 3, idx) == NULL, M2_ERR_INDEX, "dim 3");
    m2_release(x); m2_release(idx); m2_release(fi); m2_release(i2); m2_release(ib);
  }
}

static void test_index_select(m2_rng *r) {
  int64_t sx[3] = {3, 4, 5};
  for (int dim = 0; dim < 3; dim++) {
    int64_t L = 7, sl[1] = {7};
    m2_tensor *x = randn(r, M2_F32, 3, sx, false), *idx = randint(r, dim == 1 ? M2_I32 : M2_I64, 1, sl, sx[dim]);
    m2_tensor *o = m2_index_select(x, dim - 3, idx);
    bool ok = o && o->shape[dim] == L;
    for (int64_t i = 0; ok && i < m2_numel(o); i++) {
      int64_t p[3], q[3], j[1];
      unravel(3, o->shape, i, p);
      memcpy(q, p, sizeof q);
      j[0] = p[dim];
      q[dim] = (int64_t)get(idx, j);
      ok = get(o, p) == get(x, q);
    }
    CHECK(ok, "index_select dim %d vs reference", dim);
    m2_release(x); m2_release(idx); m2_release(o);
    /* gradient with repeats */
    m2_tensor *xg = randn(r, M2_F64, 3, sx, true), *ig = randint(r, M2_I64, 1, sl, sx[dim]);
    idx_ud u = {dim, ig};
    double err;
    m2_status s = m2_gradcheck(f_index_select, &u, 1, &xg, NULL, &err);
    CHECK(s == M2_OK, "gradcheck index_select dim %d", dim);
    m2_release(xg); m2_release(ig);
  }
  /* int x and an empty index */
  {
    int64_t s0[1] = {0};
    m2_tensor *x = randint(r, M2_I64, 3, sx, 9), *e = m2_zeros(M2_I64, M2_DEV_CPU, 1, s0);
    m2_tensor *o = m2_index_select(x, 2, e);
    CHECK(o && o->dtype == M2_I64 && o->shape[2] == 0 && m2_numel(o) == 0, "index_select with an empty index");
    m2_release(x); m2_release(e); m2_release(o);
  }
  /* errors */
  {
    int64_t sl[1] = {3}, s2[2] = {1, 3};
    m2_tensor *x = randn(r, M2_F32, 3, sx, false), *idx = randint(r, M2_I64, 1, sl, 4);
    m2_store(m2_data(idx), M2_I64, 2, 4);
    CHECK_FAILS(m2_index_select(x, 1, idx) == NULL, M2_ERR_INDEX, "index 4");
    CHECK_FAILS(m2_index_select(x, 1, idx) == NULL, M2_ERR_INDEX, "size 4");
    m2_tensor *i2 = randint(r, M2_I64, 2, s2, 2), *fi = randn(r, M2_F64, 1, sl, false);
    CHECK_FAILS(m2_index_select(x, 1, i2) == NULL, M2_ERR_SHAPE, "1-D");
    CHECK_FAILS(m2_index_select(x, 1, fi) == NULL, M2_ERR_DTYPE, "integer");
    CHECK_FAILS(m2_index_select(x, -4, idx) == NULL, M2_ERR_INDEX, "dim -4");
    m2_release(x); m2_release(idx); m2_release(i2); m2_release(fi);
  }
}

int main(void) {
  m2_rng r = m2_rng_make(99, 0);
  test_concat(&r);
  test_split(&r);
  test_gather(&r);
  test_index_select(&r);
  CHECK(m2_live_tensors() == 0, "leaked tensors: %ld", m2_live_tensors());
  CHECK(m2_live_nodes() == 0, "leaked nodes: %ld", m2_live_nodes());
  return check_finish("test_ops_index");
}
