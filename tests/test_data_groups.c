/* test_data_groups.c — group tables (orders, identity, associativity, inverses, non-abelian S3),
 * word-problem batches (prefix products, determinism, variable lengths), bad names. */
#include "check.h"
#include "../datasets/groups.h"

static void check_group_axioms(const char *name, int order) {
  m2_group *g = m2_group_new(name);
  CHECK(g != NULL, "group %s", name);
  if (!g) return;
  CHECK(m2_group_order(g) == order, "%s order %d", name, m2_group_order(g));
  int n = m2_group_order(g), bad = 0;
  for (int a = 0; a < n; a++) {
    if (m2_group_mul(g, 0, a) != a || m2_group_mul(g, a, 0) != a) bad++;
    int inv = 0;
    for (int b = 0; b < n; b++) inv += m2_group_mul(g, a, b) == 0;
    if (inv != 1) bad++;
    for (int b = 0; b < n && n <= 60; b++)
      for (int c = 0; c < n; c += 7)
        if (m2_group_mul(g, m2_group_mul(g, a, b), c) != m2_group_mul(g, a, m2_group_mul(g, b, c))) bad++;
  }
  CHECK(bad == 0, "%s: %d axiom violations", name, bad);
  m2_group_free(g);
}

int main(void) {
  check_group_axioms("S3", 6);
  check_group_axioms("s5", 120);
  check_group_axioms("A5", 60);
  check_group_axioms("Z7", 7);
  m2_group *s3 = m2_group_new("S3");
  /* S3 in lexicographic order: 0=012 1=021 2=102 3=120 4=201 5=210; (p*q)[i] = q[p[i]]:
     1*2 = q[p] with p=021, q=102 -> [q0,q2,q1] = [1,2,0] = 3 ; 2*1 = [p=102 -> q=021] -> [2,0,1] = 4 */
  CHECK(m2_group_mul(s3, 1, 2) == 3, "S3 1*2 = %d", m2_group_mul(s3, 1, 2));
  CHECK(m2_group_mul(s3, 2, 1) == 4, "S3 2*1 = %d (non-abelian)", m2_group_mul(s3, 2, 1));

  m2_group_batch_opts o = {.seed = 5, .index = 3, .batch = 4, .length = 50};
  m2_tensor *x, *y, *x2, *y2, *x3, *y3;
  CHECK_OK(m2_group_batch(s3, &o, &x, &y));
  CHECK_OK(m2_group_batch(s3, &o, &x2, &y2));
  o.index = 4;
  CHECK_OK(m2_group_batch(s3, &o, &x3, &y3));
  CHECK(max_rel_diff(x, x2) == 0 && max_rel_diff(y, y2) == 0, "same (seed, index) -> same batch");
  CHECK(max_rel_diff(x, x3) > 0, "another index -> another batch");
  int64_t xs[200], ys[200];
  m2_to_host(x, M2_I64, xs);
  m2_to_host(y, M2_I64, ys);
  int bad = 0, counts[6] = {0};
  for (int b = 0; b < 4; b++) {
    int acc = 0;
    for (int t = 0; t < 50; t++) {
      int e = (int)xs[b * 50 + t];
      counts[e]++;
      acc = t ? m2_group_mul(s3, acc, e) : e;
      bad += ys[b * 50 + t] != acc;
    }
  }
  CHECK(bad == 0, "targets are prefix products (%d wrong)", bad);
  for (int e = 0; e < 6; e++) CHECK(counts[e] > 10, "element %d drawn %d times of 200", e, counts[e]);
  /* variable lengths: ignored targets after each sequence's end */
  o.random_length = true;
  m2_tensor *xv, *yv;
  CHECK_OK(m2_group_batch(s3, &o, &xv, &yv));
  m2_to_host(yv, M2_I64, ys);
  int ignored = 0;
  for (int i = 0; i < 200; i++) ignored += ys[i] == -100;
  CHECK(ignored > 0 && ys[0] != -100, "random lengths pad with -100 (%d)", ignored);
  CHECK_FAILS(m2_group_new("Q8") == NULL, M2_ERR_VALUE, "unknown group 'Q8'");
  CHECK_FAILS(m2_group_new("S9") == NULL, M2_ERR_VALUE, "unknown group");
  /* a batch whose element count overflows int64 is refused, naming the shape (found by tests/fuzz/fuzz_lua.c) */
  m2_group_batch_opts big = {.seed = 1, .index = 0, .batch = INT64_MAX, .length = 5};
  m2_tensor *xb = NULL, *yb = NULL;
  CHECK_FAILS(m2_group_batch(s3, &big, &xb, &yb) != M2_OK, M2_ERR_SHAPE, "group batch: shape (9223372036854775807, 5)");
  m2_tensor *all[] = {x, y, x2, y2, x3, y3, xv, yv};
  for (int i = 0; i < 8; i++) m2_release(all[i]);
  m2_group_free(s3);
  CHECK(m2_live_tensors() == 0, "leak");
  return check_finish("test_data_groups");
}
