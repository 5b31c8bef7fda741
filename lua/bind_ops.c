/* bind_ops.c — every op of core/ops.h and core/ops_mixers.h as m2.<name>(...), most also as
 * tensor methods (t:exp(), t:sum(dim, keepdim), a:matmul(b)), and the arithmetic metamethods
 * (+ - * / unary- ^) with tensors and numbers. Dims are 1-based (negative from the end). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "bind.h"

/* ---------------- arithmetic with numbers ---------------- */

/* A 0-d tensor holding the number at `arg`, with like's dtype and device, anchored on the stack. */
static m2_tensor *scalar_like(lua_State *L, int arg, const m2_tensor *like) {
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_scalar(like->dtype, like->device, lua_tonumber(L, arg));
  if (!*slot) m2lua_fail(L);
  return *slot;
}

typedef enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV } arith_op;

static int arith(lua_State *L, arith_op op) {
  bool ta = m2lua_istensor(L, 1), tb = m2lua_istensor(L, 2);
  if (!ta && !tb) {
    if (lua_type(L, 1) != LUA_TNUMBER) return m2lua_typeerror(L, 1, "m2.Tensor or number");
    return m2lua_typeerror(L, 2, M2LUA_TENSOR);
  }
  if (ta && tb) {
    m2_tensor *a = m2lua_checktensor(L, 1), *b = m2lua_checktensor(L, 2);
    switch (op) {
      case OP_ADD: M2LUA_RETURN(L, m2_add(a, b));
      case OP_SUB: M2LUA_RETURN(L, m2_sub(a, b));
      case OP_MUL: M2LUA_RETURN(L, m2_mul(a, b));
      case OP_DIV: M2LUA_RETURN(L, m2_div(a, b));
    }
  }
  if (ta) { /* tensor op number */
    m2_tensor *a = m2lua_checktensor(L, 1);
    if (lua_type(L, 2) != LUA_TNUMBER) return m2lua_typeerror(L, 2, "m2.Tensor or number");
    double s = lua_tonumber(L, 2);
    switch (op) {
      case OP_ADD: M2LUA_RETURN(L, m2_add_scalar(a, s));
      case OP_SUB: M2LUA_RETURN(L, m2_add_scalar(a, -s));
      case OP_MUL: M2LUA_RETURN(L, m2_scale(a, s));
      case OP_DIV: M2LUA_RETURN(L, m2_scale(a, 1.0 / s));
    }
  }
  /* number op tensor */
  m2_tensor *b = m2lua_checktensor(L, 2);
  if (lua_type(L, 1) != LUA_TNUMBER) return m2lua_typeerror(L, 1, "m2.Tensor or number");
  double s = lua_tonumber(L, 1);
  switch (op) {
    case OP_ADD: M2LUA_RETURN(L, m2_add_scalar(b, s));
    case OP_MUL: M2LUA_RETURN(L, m2_scale(b, s));
    case OP_SUB: {
      m2_tensor **slot = m2lua_newtensor(L);
      m2_tensor *nb = m2_neg(b);
      if (!nb) return m2lua_fail(L);
      *slot = m2_add_scalar(nb, s);
      m2_release(nb);
      if (!*slot) return m2lua_fail(L);
      m2lua_account(L, *slot);
      return 1;
    }
    case OP_DIV: {
      m2_tensor *a = scalar_like(L, 1, b);
      M2LUA_RETURN(L, m2_div(a, b));
    }
  }
  return 0;
}

static int l_add(lua_State *L) { return arith(L, OP_ADD); }
static int l_sub(lua_State *L) { return arith(L, OP_SUB); }
static int l_mul(lua_State *L) { return arith(L, OP_MUL); }
static int l_div(lua_State *L) { return arith(L, OP_DIV); }

/* t ^ p for p in {2, 0.5, 1, -1} */
static int l_pow(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double p = m2lua_checknum(L, 2);
  if (p == 2) M2LUA_RETURN(L, m2_square(t));
  if (p == 0.5) M2LUA_RETURN(L, m2_sqrt(t));
  if (p == 1) M2LUA_RETURN(L, m2_scale(t, 1.0));
  if (p == -1) {
    lua_pushnumber(L, 1.0);
    m2_tensor *one = scalar_like(L, lua_gettop(L), t);
    M2LUA_RETURN(L, m2_div(one, t));
  }
  return m2lua_error(L, "tensor ^ %g: only the powers 2, 0.5, 1 and -1 are supported", p);
}

/* ---------------- unary maps ---------------- */

#define UNARY(name)                                                                      \
  static int l_##name(lua_State *L) {                                                    \
    m2_tensor *t = m2lua_checktensor(L, 1);                                              \
    M2LUA_RETURN(L, m2_##name(t));                                                       \
  }
UNARY(neg)
UNARY(exp)
UNARY(log)
UNARY(tanh)
UNARY(sigmoid)
UNARY(silu)
UNARY(softplus)
UNARY(relu)
UNARY(square)
UNARY(sqrt)
UNARY(sum_all)
UNARY(mean_all)
UNARY(max_all)

static int l_scale(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double s = m2lua_checknum(L, 2);
  M2LUA_RETURN(L, m2_scale(t, s));
}
static int l_add_scalar(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double s = m2lua_checknum(L, 2);
  M2LUA_RETURN(L, m2_add_scalar(t, s));
}
/* clamp(x, lo, hi): nil bounds are open */
static int l_clamp(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double lo = m2lua_optnum(L, 2, -INFINITY), hi = m2lua_optnum(L, 3, INFINITY);
  M2LUA_RETURN(L, m2_clamp(t, lo, hi));
}

/* ---------------- reductions ---------------- */

typedef m2_tensor *(*reduce_fn)(m2_tensor *, int, bool);
typedef m2_tensor *(*reduce_all_fn)(m2_tensor *);

/* f(x [, dim [, keepdim]]): without dim, over all elements (a 0-d tensor) */
static int reduce(lua_State *L, reduce_fn f, reduce_all_fn fall) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) M2LUA_RETURN(L, fall(t));
  int d = m2lua_checkdim(L, 2, t->ndim);
  bool keep = m2lua_optbool(L, 3, false);
  M2LUA_RETURN(L, f(t, d, keep));
}
static int l_sum(lua_State *L) { return reduce(L, m2_sum, m2_sum_all); }
static int l_mean(lua_State *L) { return reduce(L, m2_mean, m2_mean_all); }
static int l_max(lua_State *L) { return reduce(L, m2_max, m2_max_all); }

/* argmax(x [, dim [, keepdim]]) -> i64 tensor of 0-based positions (data, like token ids);
 * without dim, over the flattened tensor (a 0-d tensor). */
static int l_argmax(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    m2_tensor **slot = m2lua_newtensor(L);
    int64_t all = -1;
    m2_tensor *flat = m2_reshape(t, 1, &all);
    if (!flat) return m2lua_fail(L);
    *slot = m2_argmax(flat, 0, false);
    m2_release(flat);
    if (!*slot) return m2lua_fail(L);
    return 1;
  }
  int d = m2lua_checkdim(L, 2, t->ndim);
  bool keep = m2lua_optbool(L, 3, false);
  M2LUA_RETURN(L, m2_argmax(t, d, keep));
}

/* eq(a, b) -> f32 0/1 (b may be a number) */
static int l_eq(lua_State *L) {
  m2_tensor *a = m2lua_checktensor(L, 1);
  m2_tensor *b = lua_type(L, 2) == LUA_TNUMBER ? scalar_like(L, 2, a) : m2lua_checktensor(L, 2);
  M2LUA_RETURN(L, m2_eq(a, b));
}

typedef m2_tensor *(*dim_fn)(m2_tensor *, int);
static int along(lua_State *L, dim_fn f, bool dim_default_last) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int d = dim_default_last && lua_isnoneornil(L, 2) ? t->ndim - 1 : m2lua_checkdim(L, 2, t->ndim);
  if (t->ndim == 0) return m2lua_argerror(L, 1, "a 0-d tensor has no dim");
  M2LUA_RETURN(L, f(t, d));
}
static int l_softmax(lua_State *L) { return along(L, m2_softmax, true); }
static int l_log_softmax(lua_State *L) { return along(L, m2_log_softmax, true); }
static int l_cumsum(lua_State *L) { return along(L, m2_cumsum, false); }

/* ---------------- matrix products ---------------- */

/* matmul(a, b [, ta, tb]) or matmul(a, b, {ta=, tb=}) */
static int l_matmul(lua_State *L) {
  m2_tensor *a = m2lua_checktensor(L, 1), *b = m2lua_checktensor(L, 2);
  bool ta, tb;
  if (lua_istable(L, 3)) {
    m2lua_checkkeys(L, 3, "matmul", (const char *const[]){"ta", "tb", NULL});
    ta = m2lua_optfield_bool(L, 3, "ta", false);
    tb = m2lua_optfield_bool(L, 3, "tb", false);
  } else {
    ta = m2lua_optbool(L, 3, false);
    tb = m2lua_optbool(L, 4, false);
  }
  M2LUA_RETURN(L, m2_matmul(a, b, ta, tb));
}

/* matmul_precision([p]) -> the setting before the call; p = "f32" (fp32 products, the default) or "bf16" (the operands
 * of f32 matmul and linear rounded to bf16, fp32 accumulation and results: tensor cores on CUDA; core/ops.h) */
static int l_matmul_precision(lua_State *L) {
  const int old = m2_matmul_precision();
  if (!lua_isnoneornil(L, 1)) {
    static const char *const names[] = {"f32", "bf16", NULL};
    m2_set_matmul_precision(luaL_checkoption(L, 1, NULL, names) == 1 ? M2_MM_BF16 : M2_MM_F32);
  }
  lua_pushstring(L, old == M2_MM_BF16 ? "bf16" : "f32");
  return 1;
}

/* activations([dt]) -> the setting before the call; dt = "f32" (the default) or "bf16" (matmul and linear return bf16,
 * their f32 operands rounded to bf16 by recorded conversions: bf16 activations; core/ops.h m2_set_activation_dtype) */
static int l_activations(lua_State *L) {
  const m2_dtype old = m2_activation_dtype();
  if (!lua_isnoneornil(L, 1)) {
    static const char *const names[] = {"f32", "bf16", NULL};
    m2_set_activation_dtype(luaL_checkoption(L, 1, NULL, names) == 1 ? M2_BF16 : M2_F32);
  }
  lua_pushstring(L, old == M2_BF16 ? "bf16" : "f32");
  return 1;
}

/* swiglu(a, b): silu(a) * b in one op (same shapes) */
static int l_swiglu(lua_State *L) {
  m2_tensor *a = m2lua_checktensor(L, 1), *b = m2lua_checktensor(L, 2);
  M2LUA_RETURN(L, m2_swiglu(a, b));
}

/* linear(x, w [, bias]): x (..., in) @ w (out, in)^T + bias (out) */
static int l_linear(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *w = m2lua_checktensor(L, 2), *b = m2lua_opttensor(L, 3);
  M2LUA_RETURN(L, m2_linear(x, w, b));
}

/* ---------------- neural-net ops ---------------- */

/* embedding(weight (V, d), ids int (...)) -> (..., d); ids are 0-based token ids */
static int l_embedding(lua_State *L) {
  m2_tensor *w = m2lua_checktensor(L, 1), *ids = m2lua_checktensor(L, 2);
  M2LUA_RETURN(L, m2_embedding(w, ids));
}

/* cross_entropy(logits (..., C), targets int (...) [, ignore_index = -100]) -> 0-d mean */
static int l_cross_entropy(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *y = m2lua_checktensor(L, 2);
  int64_t ignore = m2lua_optint(L, 3, -100);
  M2LUA_RETURN(L, m2_cross_entropy(x, y, ignore));
}

/* linear_cross_entropy(h, W, targets [, ignore_index = -100 [, chunk_rows = 0]]): cross_entropy(linear(h, W), targets)
 * without holding all the logits (core/ops_lmloss.c) */
static int l_linear_cross_entropy(lua_State *L) {
  m2_tensor *h = m2lua_checktensor(L, 1), *w = m2lua_checktensor(L, 2), *t = m2lua_checktensor(L, 3);
  int64_t ignore = m2lua_optint(L, 4, -100), chunk = m2lua_optint(L, 5, 0);
  M2LUA_RETURN(L, m2_linear_cross_entropy(h, w, t, ignore, chunk));
}

/* rmsnorm(x, weight or nil [, eps = 1e-5]) */
static int l_rmsnorm(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *w = m2lua_opttensor(L, 2);
  double eps = m2lua_optnum(L, 3, 1e-5);
  M2LUA_RETURN(L, m2_rmsnorm(x, w, eps));
}

/* l2norm(x [, eps = 1e-6]) over the last dim */
static int l_l2norm(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  double eps = m2lua_optnum(L, 2, 1e-6);
  M2LUA_RETURN(L, m2_l2norm(x, eps));
}

/* ---------------- indexing and joining ---------------- */

/* concat({a, b, ...}, dim) */
static int l_concat(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 1) return m2lua_argerror(L, 1, "empty list of tensors");
  m2_tensor **xs = lua_newuserdatauv(L, sizeof(m2_tensor *) * (size_t)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    m2lua_tensor *u = luaL_testudata(L, -1, M2LUA_TENSOR);
    if (!u || !u->t) return m2lua_error(L, "concat: entry %lld of the list is not a tensor", (long long)i);
    xs[i - 1] = u->t; /* kept alive by the list */
    lua_pop(L, 1);
  }
  int d = m2lua_checkdim(L, 2, xs[0]->ndim);
  M2LUA_RETURN(L, m2_concat((int)n, xs, d));
}

/* split(x, dim, sizes) with sizes a list {2, 3, ...} (sum = size of dim) or a chunk size
 * (the last chunk may be smaller) -> list of tensors */
static int l_split(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  int d = m2lua_checkdim(L, 2, x->ndim);
  int64_t total = x->shape[d];
  int n;
  int64_t *sizes;
  if (lua_istable(L, 3)) {
    n = (int)luaL_len(L, 3);
    if (n < 1) return m2lua_argerror(L, 3, "empty list of sizes");
    sizes = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)n, 0);
    for (int i = 0; i < n; i++) {
      lua_geti(L, 3, i + 1);
      int isint;
      sizes[i] = lua_tointegerx(L, -1, &isint);
      lua_pop(L, 1);
      if (!isint || sizes[i] < 0) return m2lua_argerror(L, 3, "sizes must be non-negative integers");
    }
  } else {
    int64_t chunk = m2lua_checkint(L, 3);
    if (chunk <= 0) return m2lua_argerror(L, 3, "chunk size must be positive");
    n = (int)(total / chunk + (total % chunk != 0)); /* total + chunk - 1 overflowed for chunk near 2^63 (fuzz_lua) */
    if (n < 1) n = 1;
    sizes = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)n, 0);
    for (int i = 0; i < n; i++) sizes[i] = total - (int64_t)i * chunk < chunk ? total - (int64_t)i * chunk : chunk;
  }
  lua_createtable(L, n, 0);
  int list = lua_gettop(L);
  m2_tensor ***slots = lua_newuserdatauv(L, sizeof(m2_tensor **) * (size_t)n, 0);
  m2_tensor **outs = lua_newuserdatauv(L, sizeof(m2_tensor *) * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    slots[i] = m2lua_newtensor(L);
    lua_rawseti(L, list, i + 1);
  }
  M2LUA_CHECK(L, m2_split(x, d, n, sizes, outs));
  for (int i = 0; i < n; i++) *slots[i] = outs[i];
  lua_settop(L, list);
  return 1;
}

/* gather(x, dim, index) (torch.gather; index holds 0-based positions) */
static int l_gather(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  int d = m2lua_checkdim(L, 2, x->ndim);
  m2_tensor *idx = m2lua_checktensor(L, 3);
  M2LUA_RETURN(L, m2_gather(x, d, idx));
}

/* index_select(x, dim, index): index 1-D int of 0-based positions */
static int l_index_select(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  int d = m2lua_checkdim(L, 2, x->ndim);
  m2_tensor *idx = m2lua_checktensor(L, 3);
  M2LUA_RETURN(L, m2_index_select(x, d, idx));
}

/* ---------------- sequence mixers ---------------- */

/* conv1d_causal(x (B,T,C), w (C,W) [, bias (C)]) */
static int l_conv1d_causal(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *w = m2lua_checktensor(L, 2), *b = m2lua_opttensor(L, 3);
  M2LUA_RETURN(L, m2_conv1d_causal(x, w, b));
}

/* For mixers taking (..., h0, opts): returns h0 (or NULL) and sets *opts to the options
 * table index; a table in h0's place is taken as the options. */
static m2_tensor *h0_and_opts(lua_State *L, int arg, int *opts) {
  if (lua_istable(L, arg) && !m2lua_istensor(L, arg)) {
    *opts = arg;
    return NULL;
  }
  *opts = arg + 1;
  m2lua_checkopts(L, *opts);
  return m2lua_opttensor(L, arg);
}

/* Push two fresh results of a two-output op. */
static int push_two(lua_State *L, m2_tensor **s0, m2_tensor **s1, m2_tensor *a, m2_tensor *b) {
  *s0 = a;
  *s1 = b;
  m2lua_account(L, a);
  m2lua_account(L, b);
  return 2;
}

/* m2rnn(q, k, v, W, f [, h0] [, {grad_clip = 0, ckpt_every = 0}]) -> y, hT (ckpt_every 0: M2_M2RNN_CKPT_EVERY) */
static int l_m2rnn(lua_State *L) {
  m2_tensor *in[5];
  for (int i = 0; i < 5; i++) in[i] = m2lua_checktensor(L, i + 1);
  int opts;
  m2_tensor *h0 = h0_and_opts(L, 6, &opts);
  m2lua_checkkeys(L, opts, "m2rnn", (const char *const[]){"grad_clip", "ckpt_every", NULL});
  m2_m2rnn_opts o = {m2lua_optfield_num(L, opts, "grad_clip", 0.0), m2lua_optfield_cint(L, opts, "ckpt_every", 0)};
  m2_tensor **s0 = m2lua_newtensor(L), **s1 = m2lua_newtensor(L), *y = NULL, *hT = NULL;
  M2LUA_CHECK(L, m2_m2rnn(in[0], in[1], in[2], in[3], in[4], h0, &o, &y, &hT));
  return push_two(L, s0, s1, y, hT);
}

typedef m2_status (*gdn_fn)(m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *,
                            const m2_gdn_opts *, m2_tensor **, m2_tensor **);
/* gdn(q, k, v, g, beta [, h0] [, {scale = 1/sqrt(K), chunk = 64}]) -> o, hT */
static int gdn_common(lua_State *L, gdn_fn f) {
  m2_tensor *in[5];
  for (int i = 0; i < 5; i++) in[i] = m2lua_checktensor(L, i + 1);
  int opts;
  m2_tensor *h0 = h0_and_opts(L, 6, &opts);
  m2lua_checkkeys(L, opts, f == m2_gdn ? "gdn" : "gdn_chunked", (const char *const[]){"scale", "chunk", NULL});
  m2_gdn_opts o = {m2lua_optfield_num(L, opts, "scale", 0.0), m2lua_optfield_cint(L, opts, "chunk", 0)};
  m2_tensor **s0 = m2lua_newtensor(L), **s1 = m2lua_newtensor(L), *y = NULL, *hT = NULL;
  M2LUA_CHECK(L, f(in[0], in[1], in[2], in[3], in[4], h0, &o, &y, &hT));
  return push_two(L, s0, s1, y, hT);
}
static int l_gdn(lua_State *L) { return gdn_common(L, m2_gdn); }
static int l_gdn_chunked(lua_State *L) { return gdn_common(L, m2_gdn_chunked); }

typedef m2_status (*ssd_fn)(m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *, m2_tensor *,
                            const m2_ssd_opts *, m2_tensor **, m2_tensor **);
/* ssd(x, dt, A, B, C [, h0] [, {chunk = 256}]) -> y, hT */
static int ssd_common(lua_State *L, ssd_fn f) {
  m2_tensor *in[5];
  for (int i = 0; i < 5; i++) in[i] = m2lua_checktensor(L, i + 1);
  int opts;
  m2_tensor *h0 = h0_and_opts(L, 6, &opts);
  m2lua_checkkeys(L, opts, f == m2_ssd ? "ssd" : "ssd_chunked", (const char *const[]){"chunk", NULL});
  m2_ssd_opts o = {m2lua_optfield_cint(L, opts, "chunk", 0)};
  m2_tensor **s0 = m2lua_newtensor(L), **s1 = m2lua_newtensor(L), *y = NULL, *hT = NULL;
  M2LUA_CHECK(L, f(in[0], in[1], in[2], in[3], in[4], h0, &o, &y, &hT));
  return push_two(L, s0, s1, y, hT);
}
static int l_ssd(lua_State *L) { return ssd_common(L, m2_ssd); }
static int l_ssd_chunked(lua_State *L) { return ssd_common(L, m2_ssd_chunked); }

/* attention(q, k, v [, {scale = 1/sqrt(D), causal = true}]) */
static int l_attention(lua_State *L) {
  m2_tensor *q = m2lua_checktensor(L, 1), *k = m2lua_checktensor(L, 2), *v = m2lua_checktensor(L, 3);
  m2lua_checkopts(L, 4);
  m2lua_checkkeys(L, 4, "attention", (const char *const[]){"scale", "causal", NULL});
  m2_attention_opts o = {m2lua_optfield_num(L, 4, "scale", 0.0), m2lua_optfield_bool(L, 4, "causal", true)};
  M2LUA_RETURN(L, m2_attention(q, k, v, &o));
}

/* rope(x [, theta = 10000 [, offset = 0]]) */
static int l_rope(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  double theta = m2lua_optnum(L, 2, 10000.0);
  int64_t offset = m2lua_optint(L, 3, 0);
  M2LUA_RETURN(L, m2_rope(x, theta, offset));
}

/* ---------------- mixture of experts (core/ops_moe.c) ---------------- */

/* Push n fresh results of a several-output op (slots made before the call). */
static int push_n(lua_State *L, m2_tensor ***slots, m2_tensor **outs, int n) {
  for (int i = 0; i < n; i++) {
    *slots[i] = outs[i];
    m2lua_account(L, outs[i]);
  }
  return n;
}

/* moe_route(logits (N, E), top_k) -> weights (N, k), indices (N, k) i64, aux (2) = (load balance, z-loss),
 * counts (E) i64 */
static int l_moe_route(lua_State *L) {
  m2_tensor *lg = m2lua_checktensor(L, 1);
  int64_t k = m2lua_checkint(L, 2);
  m2_tensor **s[4], *o[4] = {0};
  for (int i = 0; i < 4; i++) s[i] = m2lua_newtensor(L);
  M2LUA_CHECK(L, m2_moe_route(lg, k, &o[0], &o[1], &o[2], &o[3]));
  return push_n(L, s, o, 4);
}

/* moe_permute(x (N, d), indices (N, k), experts) -> xp (N k, d), pos (N, k) i64, offsets (experts + 1) i64 */
static int l_moe_permute(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *ix = m2lua_checktensor(L, 2);
  int64_t E = m2lua_checkint(L, 3);
  m2_tensor **s[3], *o[3] = {0};
  for (int i = 0; i < 3; i++) s[i] = m2lua_newtensor(L);
  M2LUA_CHECK(L, m2_moe_permute(x, ix, E, &o[0], &o[1], &o[2]));
  return push_n(L, s, o, 3);
}

/* moe_grouped_matmul(x (M, in), w (E, out, in), offsets (E + 1)) -> (M, out) */
static int l_moe_grouped_matmul(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1), *w = m2lua_checktensor(L, 2), *off = m2lua_checktensor(L, 3);
  M2LUA_RETURN(L, m2_moe_grouped_matmul(x, w, off));
}

/* moe_unpermute(yp (N k, d), weights (N, k), pos (N, k)) -> (N, d) */
static int l_moe_unpermute(lua_State *L) {
  m2_tensor *yp = m2lua_checktensor(L, 1), *w = m2lua_checktensor(L, 2), *pos = m2lua_checktensor(L, 3);
  M2LUA_RETURN(L, m2_moe_unpermute(yp, w, pos));
}

/* ---------------- registration ---------------- */

void m2lua_open_ops(lua_State *L) {
  /* functions that are also tensor methods */
  static const luaL_Reg both[] = {
      {"add", l_add},
      {"sub", l_sub},
      {"mul", l_mul},
      {"div", l_div},
      {"scale", l_scale},
      {"add_scalar", l_add_scalar},
      {"neg", l_neg},
      {"exp", l_exp},
      {"log", l_log},
      {"tanh", l_tanh},
      {"sigmoid", l_sigmoid},
      {"silu", l_silu},
      {"swiglu", l_swiglu},
      {"softplus", l_softplus},
      {"relu", l_relu},
      {"square", l_square},
      {"sqrt", l_sqrt},
      {"clamp", l_clamp},
      {"sum", l_sum},
      {"mean", l_mean},
      {"max", l_max},
      {"sum_all", l_sum_all},
      {"mean_all", l_mean_all},
      {"max_all", l_max_all},
      {"argmax", l_argmax},
      {"eq", l_eq},
      {"softmax", l_softmax},
      {"log_softmax", l_log_softmax},
      {"cumsum", l_cumsum},
      {"matmul", l_matmul},
      {"linear", l_linear},
      {"matmul_precision", l_matmul_precision},
      {"activations", l_activations},
      {"cross_entropy", l_cross_entropy},
      {"rmsnorm", l_rmsnorm},
      {"l2norm", l_l2norm},
      {"split", l_split},
      {"gather", l_gather},
      {"index_select", l_index_select},
      {"rope", l_rope},
      {NULL, NULL},
  };
  /* module-only functions (their first argument is not "the" tensor) */
  static const luaL_Reg only[] = {
      {"embedding", l_embedding},
      {"concat", l_concat},
      {"conv1d_causal", l_conv1d_causal},
      {"m2rnn", l_m2rnn},
      {"gdn", l_gdn},
      {"gdn_chunked", l_gdn_chunked},
      {"ssd", l_ssd},
      {"ssd_chunked", l_ssd_chunked},
      {"attention", l_attention},
      {"linear_cross_entropy", l_linear_cross_entropy},
      {"moe_route", l_moe_route},
      {"moe_permute", l_moe_permute},
      {"moe_grouped_matmul", l_moe_grouped_matmul},
      {"moe_unpermute", l_moe_unpermute},
      {NULL, NULL},
  };
  int mod = lua_gettop(L);
  m2lua_setfuncs(L, mod, both);
  m2lua_setfuncs(L, mod, only);
  m2lua_push_methods(L);
  m2lua_setfuncs(L, -1, both);
  lua_pop(L, 1);
  luaL_getmetatable(L, M2LUA_TENSOR);
  static const luaL_Reg meta[] = {
      {"__add", l_add}, {"__sub", l_sub}, {"__mul", l_mul}, {"__div", l_div},
      {"__unm", l_neg}, {"__pow", l_pow}, {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, meta);
  lua_pop(L, 1);
}
