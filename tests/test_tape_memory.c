/* test_tape_memory.c — m2_tape_rows (autograd.h): what the live tape nodes hold, each buffer once, by op, role and
 * dtype, on a tiny graph whose answer is worked out by hand below. */
#include "check.h"

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

int main(void) {
  m2_tape_totals tot;
  CHECK(m2_tape_rows(NULL, 0, &tot) == 0 && tot.nodes == 0 && tot.bytes == 0, "an empty tape holds nothing");

  /* W (4, 8) f32 parameter: 128 bytes; x (2, 3, 4) f32, no grad: 96 bytes */
  m2_tensor *W = m2_full(M2_F32, M2_DEV_CPU, 2, (int64_t[]){4, 8}, 0.125);
  m2_requires_grad_(W, true);
  m2_tensor *x = m2_full(M2_F32, M2_DEV_CPU, 3, (int64_t[]){2, 3, 4}, 0.5);
  /* h = x W (2, 3, 8): matmul holds x and W (192 bytes of output, held by its consumers)
     e = exp(h): holds h (input) and keeps e (output alias: another tensor object, e's buffer)
     m = e * h: holds e and h again: two references, no new buffer
     k = max(m, dim 2) (2, 3): holds m, saves its argmax (2, 3) i64: 48 bytes
     c = to_dtype(k, bf16) (2, 3) bf16: 12 bytes, holds k (24 bytes);
     s = c * c: bf16 on the CPU runs on f32 copies, one per input (to_dtype(c, f32) twice, each holding c), mul
     holds the two copies (24 bytes each), and its f32 product (24 bytes) is rounded by a to_dtype that holds it */
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
  expect(rows, n, "exp", M2_TAPE_INPUT, M2_F32, 192, 1, 1);
  expect(rows, n, "exp", M2_TAPE_OUTPUT, M2_F32, 192, 1, 1);
  expect(rows, n, "mul", M2_TAPE_INPUT, M2_F32, 48, 2, 4); /* e, h (counted above), the two f32 copies of c */
  expect(rows, n, "max", M2_TAPE_INPUT, M2_F32, 192, 1, 1);
  expect(rows, n, "max", M2_TAPE_SAVED, M2_I64, 48, 1, 1);
  expect(rows, n, "to_dtype", M2_TAPE_INPUT, M2_F32, 48, 2, 2); /* k; the product before rounding */
  expect(rows, n, "to_dtype", M2_TAPE_INPUT, M2_BF16, 12, 1, 2); /* c, twice */
  CHECK(n == 9, "9 rows, got %d", n);
  const long long all = 128 + 96 + 192 + 192 + 48 + 192 + 48 + 48 + 12;
  CHECK(tot.bytes == all && tot.param_bytes == 128 && tot.buffers == 11 && tot.refs == 14,
        "totals: %lld bytes (%lld of parameters) in %ld buffers, %ld refs; expected %lld, 128, 11, 14", tot.bytes,
        tot.param_bytes, tot.buffers, tot.refs, all);
  for (int i = 1; i < n; i++) CHECK(rows[i - 1].bytes >= rows[i].bytes, "rows by bytes, most first");
  CHECK(m2_tape_rows(rows, 2, NULL) == n, "the count of rows whatever max");

  /* the backward frees what it ran through: nothing left held (the nodes stay while s holds them) */
  m2_tensor *g = m2_full(M2_BF16, M2_DEV_CPU, 2, (int64_t[]){2, 3}, 1.0);
  CHECK_OK(m2_backward(s, g));
  n = m2_tape_rows(rows, 32, &tot);
  CHECK(n == 0 && tot.bytes == 0 && tot.nodes > 0, "after backward: %d rows, %lld bytes, %ld nodes", n, tot.bytes,
        tot.nodes);
  m2_release(g);
  m2_release(s);
  n = m2_tape_rows(rows, 32, &tot);
  CHECK(n == 0 && tot.nodes == 0, "no live node once the result is gone: %ld", tot.nodes);

  m2_release(W);
  m2_release(x);
  CHECK(m2_live_nodes() == 0, "nodes leaked: %ld", m2_live_nodes());
  CHECK(m2_live_tensors() == 0, "tensors leaked: %ld", m2_live_tensors());
  return check_finish("test_tape_memory");
}
