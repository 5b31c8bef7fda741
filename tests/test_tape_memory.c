/* test_tape_memory.c — m2_tape_rows (autograd.h): what the live tape nodes hold, each buffer once, by op, role and
 * dtype, on a tiny graph whose answer is worked out by hand below; and how much less they hold when the nodes drop the
 * data of the inputs their backward never reads (m2_op.bwd_unread), with the same gradient. */
#include "check.h"
#include <math.h>

/* The row (op, role, dtype) of rows[0..n), or NULL. */
static const m2_tape_row *find(const m2_tape_row *rows, int n, const char *op, int role, m2_dtype dt) {
  for (int i = 0; i < n; i++)
    if (!strcmp(rows[i].op, op) && rows[i].role == role && rows[i].dtype == dt) return &rows[i];
  return NULL;
}

static void expect(const m2_tape_row *rows, int n, const char *op, int role, m2_dtype dt, long long bytes,
                   long buffers, long refs) {
  const m2_tape_row *r = find(rows, n, op, role, dt);
  CHECK(r != NULL, "no row %s / %s / %s", op, m2_tape_role_name(role), m2_dtype_name(dt));
  if (!r) return;
  CHECK(r->bytes == bytes && r->buffers == buffers && r->refs == refs,
        "%s / %s / %s: %lld bytes in %ld buffers, %ld refs; expected %lld, %ld, %ld", op, m2_tape_role_name(role),
        m2_dtype_name(dt), r->bytes, r->buffers, r->refs, bytes, buffers, refs);
}

/* The graph below, with the inputs whose values no backward reads kept whole (drop false) or as metadata only (drop
 * true: m2_op.bwd_unread); checks the rows by hand, runs the backward and checks that nothing is held after it. */
static void graph(bool drop) {
  const bool was = m2_tape_drop_unread(drop);
  m2_tape_totals tot;
  CHECK(m2_tape_rows(NULL, 0, &tot) == 0 && tot.nodes == 0 && tot.bytes == 0, "an empty tape holds nothing");

  /* W (4, 8) f32 parameter: 128 bytes; x (2, 3, 4) f32, no grad: 96 bytes */
  m2_tensor *W = m2_full(M2_F32, M2_DEV_CPU, 2, (int64_t[]){4, 8}, 0.125);
  m2_requires_grad_(W, true);
  m2_tensor *x = m2_full(M2_F32, M2_DEV_CPU, 3, (int64_t[]){2, 3, 4}, 0.5);
  /* h = x W (2, 3, 8): matmul holds x and W (h: 192 bytes, held by its consumers)
     e = exp(h): holds h (input; its backward reads only e: dropped) and keeps e (output alias: another tensor object,
       e's buffer)
     m = e * h: holds e and h again: two references, no new buffer
     k = max(m, dim 2) (2, 3): holds m (dropped: the backward reads the argmax), saves its argmax (2, 3) i64: 48 bytes
     c = to_dtype(k, bf16) (2, 3) bf16: 12 bytes, holds k (24 bytes; dropped: to_dtype's backward reads its dtype)
     s = c * c: bf16 on the CPU runs on f32 copies, one per input (to_dtype(c, f32) twice, each holding c: dropped),
       mul holds the two copies (24 bytes each), and its f32 product (24 bytes) is rounded by a to_dtype that holds it
       (dropped) */
  m2_tensor *h = m2_matmul(x, W, false, false);
  m2_tensor *e = m2_exp(h);
  m2_tensor *m = m2_mul(e, h);
  m2_tensor *k = m2_max(m, 2, false);
  m2_tensor *c = m2_to_dtype(k, M2_BF16);
  m2_tensor *s = m2_mul(c, c);
  CHECK(s && s->dtype == M2_BF16, "s = c * c is bf16");
  m2_release(h), m2_release(e), m2_release(m), m2_release(k), m2_release(c);

  m2_tape_row rows[32];
  int n = m2_tape_rows(rows, 32, &tot);
  /* nodes: matmul, exp, mul, max, to_dtype (k to bf16), to_dtype (c to f32) twice, mul, to_dtype (the product to
     bf16) */
  CHECK(tot.nodes == 9, "9 live nodes, got %ld", tot.nodes);
  expect(rows, n, "matmul", M2_TAPE_PARAM, M2_F32, 128, 1, 1);
  expect(rows, n, "matmul", M2_TAPE_INPUT, M2_F32, 96, 1, 1);
  expect(rows, n, "exp", M2_TAPE_OUTPUT, M2_F32, 192, 1, 1);
  expect(rows, n, "max", M2_TAPE_SAVED, M2_I64, 48, 1, 1);
  long long all;
  if (!drop) {
    expect(rows, n, "exp", M2_TAPE_INPUT, M2_F32, 192, 1, 1);
    expect(rows, n, "mul", M2_TAPE_INPUT, M2_F32, 48, 2, 4); /* e, h (counted above), the two f32 copies of c */
    expect(rows, n, "max", M2_TAPE_INPUT, M2_F32, 192, 1, 1);
    expect(rows, n, "to_dtype", M2_TAPE_INPUT, M2_F32, 48, 2, 2); /* k; the product before rounding */
    expect(rows, n, "to_dtype", M2_TAPE_INPUT, M2_BF16, 12, 1, 2); /* c, twice */
    CHECK(n == 9, "9 rows, got %d", n);
    all = 128 + 96 + 192 + 192 + 48 + 192 + 48 + 48 + 12;
    CHECK(tot.bytes == all && tot.param_bytes == 128 && tot.buffers == 11 && tot.refs == 14,
          "totals: %lld bytes (%lld of parameters) in %ld buffers, %ld refs; expected %lld, 128, 11, 14", tot.bytes,
          tot.param_bytes, tot.buffers, tot.refs, all);
  } else {
    /* exp, max and the to_dtypes hold no data: m and k, c, the product are freed, h is first held by mul */
    expect(rows, n, "mul", M2_TAPE_INPUT, M2_F32, 192 + 48, 3, 4); /* e (counted above), h, the two copies of c */
    CHECK(n == 5, "5 rows, got %d", n);
    all = 128 + 96 + 192 + 240 + 48;
    CHECK(tot.bytes == all && tot.param_bytes == 128 && tot.buffers == 7 && tot.refs == 8,
          "totals: %lld bytes (%lld of parameters) in %ld buffers, %ld refs; expected %lld, 128, 7, 8", tot.bytes,
          tot.param_bytes, tot.buffers, tot.refs, all);
  }
  for (int i = 1; i < n; i++) CHECK(rows[i - 1].bytes >= rows[i].bytes, "rows by bytes, most first");
  CHECK(m2_tape_rows(rows, 2, NULL) == n, "the count of rows whatever max");

  /* the backward frees what it ran through: nothing left held (the nodes stay while s holds them) */
  m2_tensor *g = m2_full(M2_BF16, M2_DEV_CPU, 2, (int64_t[]){2, 3}, 1.0);
  CHECK_OK(m2_backward(s, g));
  n = m2_tape_rows(rows, 32, &tot);
  CHECK(n == 0 && tot.bytes == 0 && tot.nodes > 0, "after backward: %d rows, %lld bytes, %ld nodes", n, tot.bytes,
        tot.nodes);
  /* dL/dW, the same whether the nodes kept their inputs whole or not: s = c^2 with c = bf16(k), k = max_j e_j h_j with
     e = exp(h), h = x W = 0.5 * 4 * 0.125 = 0.25 everywhere (all j tie: the first argmax, j = 0, takes the gradient);
     dL/dk = 2c (c = bf16(e^0.25 0.25)), dk/dh_0 = e^h (1 + h), dh_0/dW[i][0] = sum over 6 rows of x = 3 */
  const double h0 = 0.25, k0 = exp(h0) * h0;
  double cb, gw0, gw1;
  m2_tensor *kk = m2_scalar(M2_F32, M2_DEV_CPU, k0), *kb = m2_to_dtype(kk, M2_BF16);
  m2_item(kb, &cb);
  m2_release(kk), m2_release(kb);
  m2_get(W->grad, (int64_t[]){1, 0}, &gw0);
  m2_get(W->grad, (int64_t[]){1, 1}, &gw1);
  CHECK_CLOSE(gw0, 2 * cb * exp(h0) * (1 + h0) * 3, 1e-5, 1e-5, "dL/dW[1][0]");
  CHECK(gw1 == 0, "dL/dW[1][1] is 0 (not an argmax): %g", gw1);
  m2_release(g);
  m2_release(s);
  n = m2_tape_rows(rows, 32, &tot);
  CHECK(n == 0 && tot.nodes == 0, "no live node once the result is gone: %ld", tot.nodes);
  m2_release(W);
  m2_release(x);
  m2_tape_drop_unread(was);
}

int main(void) {
  m2_cast_keep_bf16(false); /* the nodes counted by hand are those of the f32 copies (test_cast_keep covers the other) */
  CHECK(m2_tape_drop_unread(true), "on by default");
  graph(false);
  graph(true);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_tape_memory");
}
