/* bind_tensor.c — the m2.Tensor userdata: constructors, properties, element access, views,
 * autograd fields, indexing metamethods. (Arithmetic metamethods live in bind_ops.c.) */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bind.h"

#define METHODS_KEY "m2.Tensor.methods"

/* ---------------- the userdata ---------------- */

bool m2lua_istensor(lua_State *L, int idx) { return luaL_testudata(L, idx, M2LUA_TENSOR) != NULL; }

m2_tensor *m2lua_checktensor(lua_State *L, int arg) {
  m2lua_tensor *u = luaL_testudata(L, arg, M2LUA_TENSOR);
  if (!u) m2lua_typeerror(L, arg, M2LUA_TENSOR);
  if (!u->t) m2lua_argerror(L, arg, "tensor was already closed (released)");
  return u->t;
}

m2_tensor *m2lua_opttensor(lua_State *L, int arg) { return lua_isnoneornil(L, arg) ? NULL : m2lua_checktensor(L, arg); }

m2_tensor **m2lua_newtensor(lua_State *L) {
  m2lua_tensor *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->t = NULL;
  luaL_setmetatable(L, M2LUA_TENSOR);
  return &u->t;
}

/* Bytes of fresh tensor storage handed to Lua since the last GC step. Lua cannot see the C
 * memory a tensor owns, so we charge it to the collector: without this, a training loop can
 * pile up gigabytes of unreferenced tensors between two collections. */
static size_t g_gc_debt;
#define GC_CHARGE_BYTES (4u << 20)

void m2lua_account(lua_State *L, const m2_tensor *t) {
  /* charge tensors that span their whole storage (fresh results; views of a part are free).
     Saved-for-backward aliases share the storage, so its refcount says nothing here. */
  if (!t || !t->storage || t->offset != 0 || (size_t)m2_numel(t) * m2_elsize(t) != t->storage->nbytes) return;
  g_gc_debt += t->storage->nbytes + sizeof *t;
  if (g_gc_debt >= GC_CHARGE_BYTES) {
    int kb = (int)(g_gc_debt / 1024 > 1 << 20 ? 1 << 20 : g_gc_debt / 1024);
    g_gc_debt = 0;
    lua_gc(L, LUA_GCSTEP, kb);
  }
}

void m2lua_pushref(lua_State *L, m2_tensor *t) {
  m2_tensor **slot = m2lua_newtensor(L);
  m2_retain(t);
  *slot = t;
}

static int t_gc(lua_State *L) {
  m2lua_tensor *u = luaL_checkudata(L, 1, M2LUA_TENSOR);
  m2_release(u->t);
  u->t = NULL;
  return 0;
}

m2_dtype m2lua_checkdtype(lua_State *L, int arg) {
  const char *s = luaL_checkstring(L, arg);
  m2_dtype dt;
  if (!m2_dtype_from_name(s, &dt)) {
    char buf[160];
    snprintf(buf, sizeof buf, "unknown dtype '%s' (f32, f64, bf16, i32, i64)", s);
    m2lua_argerror(L, arg, buf);
  }
  return dt;
}

void m2lua_tensor_opts(lua_State *L, int tbl, m2_dtype *dt, m2_device *dev, bool *requires_grad) {
  if (lua_isnoneornil(L, tbl)) return;
  if (!lua_istable(L, tbl)) { m2lua_typeerror(L, tbl, "table of options"); return; }
  tbl = lua_absindex(L, tbl);
  if (lua_getfield(L, tbl, "dtype") != LUA_TNIL) {
    const char *s = lua_tostring(L, -1);
    if (!s || !m2_dtype_from_name(s, dt))
      m2lua_error(L, "option dtype: unknown dtype '%s' (f32, f64, bf16, i32, i64)", s ? s : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  if (lua_getfield(L, tbl, "device") != LUA_TNIL) {
    const char *s = lua_tostring(L, -1);
    if (!s || !m2_device_parse(s, dev))
      m2lua_error(L, "option device: unknown device '%s' (cpu, cuda, cuda:N)", s ? s : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  if (requires_grad) *requires_grad = m2lua_optfield_bool(L, tbl, "requires_grad", *requires_grad);
}

/* Apply requires_grad to a freshly made leaf in a filled slot. */
static int finish_new(lua_State *L, m2_tensor *t, bool rg) {
  m2lua_account(L, t);
  if (rg) M2LUA_CHECK(L, m2_requires_grad_(t, true));
  return 1;
}

/* ---------------- constructors ---------------- */

/* Shape of a nested table: walks first elements. */
static int nested_shape(lua_State *L, int idx, int64_t *shape) {
  int nd = 0;
  lua_pushvalue(L, idx);
  while (lua_istable(L, -1) && !m2lua_istensor(L, -1)) {
    if (nd == M2_MAX_DIMS) m2lua_error(L, "m2.tensor: nested table is deeper than %d dims", M2_MAX_DIMS);
    shape[nd++] = (int64_t)luaL_len(L, -1);
    if (shape[nd - 1] == 0) break;
    lua_geti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  return nd;
}

static void nested_fill(lua_State *L, int idx, int d, int nd, const int64_t *shape, double *out, int64_t *k) {
  int64_t len = (int64_t)luaL_len(L, idx);
  if (len != shape[d])
    m2lua_error(L, "m2.tensor: ragged nested table (a row at depth %d has %lld entries, expected %lld)", d + 1,
                (long long)len, (long long)shape[d]);
  for (int64_t i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    if (d + 1 < nd) {
      if (!lua_istable(L, -1)) m2lua_error(L, "m2.tensor: ragged nested table (expected a table at depth %d)", d + 2);
      nested_fill(L, lua_gettop(L), d + 1, nd, shape, out, k);
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
      out[(*k)++] = lua_tonumber(L, -1);
    } else if (lua_isboolean(L, -1)) {
      out[(*k)++] = lua_toboolean(L, -1) ? 1 : 0;
    } else {
      m2lua_error(L, "m2.tensor: entries must be numbers, got %s", luaL_typename(L, -1));
    }
    lua_pop(L, 1);
  }
}

/* m2.tensor(data [, opts]): data a number (0-d) or a nested table of numbers; default f32. */
static int l_tensor(lua_State *L) {
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, 2, &dt, &dev, &rg);
  if (lua_type(L, 1) == LUA_TNUMBER) {
    m2_tensor **slot = m2lua_newtensor(L);
    *slot = m2_scalar(dt, dev, lua_tonumber(L, 1));
    if (!*slot) return m2lua_fail(L);
    return finish_new(L, *slot, rg);
  }
  if (m2lua_istensor(L, 1)) {
    m2_tensor *src = m2lua_checktensor(L, 1);
    m2_tensor **slot = m2lua_newtensor(L);
    *slot = m2_clone_raw(src, dt, dev);
    if (!*slot) return m2lua_fail(L);
    return finish_new(L, *slot, rg);
  }
  if (!lua_istable(L, 1)) return m2lua_typeerror(L, 1, "table or number");
  int64_t shape[M2_MAX_DIMS];
  int nd = nested_shape(L, 1, shape);
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  double *buf = lua_newuserdatauv(L, sizeof(double) * (size_t)(n ? n : 1), 0); /* GC-owned scratch */
  int64_t k = 0;
  if (n > 0) nested_fill(L, 1, 0, nd, shape, buf, &k);
  m2_tensor **slot = m2lua_newtensor(L);
  m2_tensor *host = m2_from_data(M2_F64, M2_DEV_CPU, nd, shape, buf);
  if (!host) return m2lua_fail(L);
  *slot = m2_clone_raw(host, dt, dev);
  m2_release(host);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, rg);
}

typedef enum { FILL_EMPTY, FILL_ZEROS, FILL_ONES } fill_kind;

static int make_filled(lua_State *L, fill_kind kind) {
  int64_t shape[M2_MAX_DIMS];
  int nd;
  int next = m2lua_checkshape(L, 1, &nd, shape, false);
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, next, &dt, &dev, &rg);
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = kind == FILL_EMPTY ? m2_empty(dt, dev, nd, shape)
        : kind == FILL_ZEROS ? m2_zeros(dt, dev, nd, shape)
                             : m2_full(dt, dev, nd, shape, 1.0);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, rg);
}
static int l_empty(lua_State *L) { return make_filled(L, FILL_EMPTY); }
static int l_zeros(lua_State *L) { return make_filled(L, FILL_ZEROS); }
static int l_ones(lua_State *L) { return make_filled(L, FILL_ONES); }

/* m2.full({shape}, value [, opts]) */
static int l_full(lua_State *L) {
  int64_t shape[M2_MAX_DIMS];
  int nd;
  if (!lua_istable(L, 1)) return m2lua_typeerror(L, 1, "shape table");
  m2lua_checkshape(L, 1, &nd, shape, false);
  double v = m2lua_checknum(L, 2);
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, 3, &dt, &dev, &rg);
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_full(dt, dev, nd, shape, v);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, rg);
}

/* m2.scalar(v [, opts]) -> 0-d tensor */
static int l_scalar(lua_State *L) {
  double v = m2lua_checknum(L, 1);
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, 2, &dt, &dev, &rg);
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_scalar(dt, dev, v);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, rg);
}

/* m2.randn(shape... [, {mean=0, std=1, dtype, device, requires_grad}]) from the default RNG;
 * m2.rand(shape... [, {lo=0, hi=1, ...}]) uniform in [lo, hi). */
static int make_random(lua_State *L, bool normal) {
  int64_t shape[M2_MAX_DIMS];
  int nd;
  int next = m2lua_checkshape(L, 1, &nd, shape, false);
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, next, &dt, &dev, &rg);
  double a = m2lua_optfield_num(L, next, normal ? "mean" : "lo", 0.0);
  double b = m2lua_optfield_num(L, next, normal ? "std" : "hi", 1.0);
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_empty(dt, dev, nd, shape);
  if (!*slot) return m2lua_fail(L);
  m2_rng *r = m2_default_rng();
  M2LUA_CHECK(L, normal ? m2_rng_normal_(r, *slot, a, b) : m2_rng_uniform_(r, *slot, a, b));
  return finish_new(L, *slot, rg);
}
static int l_randn(lua_State *L) { return make_random(L, true); }
static int l_rand(lua_State *L) { return make_random(L, false); }

/* m2.randint(n, shape... [, opts]) -> integers uniform in [0, n), default dtype i64. */
static int l_randint(lua_State *L) {
  int64_t n = m2lua_checkint(L, 1);
  if (n <= 0) return m2lua_argerror(L, 1, "n must be positive");
  int64_t shape[M2_MAX_DIMS];
  int nd;
  int next = m2lua_checkshape(L, 2, &nd, shape, false);
  m2_dtype dt = M2_I64;
  m2_device dev = M2_DEV_CPU;
  m2lua_tensor_opts(L, next, &dt, &dev, NULL);
  m2_tensor **slot = m2lua_newtensor(L);
  m2_tensor *host = m2_empty(M2_I64, M2_DEV_CPU, nd, shape);
  if (!host) return m2lua_fail(L);
  int64_t *p = m2_data(host), cnt = m2_numel(host);
  m2_rng *r = m2_default_rng();
  for (int64_t i = 0; i < cnt; i++) p[i] = m2_rng_randint(r, n);
  *slot = (dt == M2_I64 && dev.type == M2_CPU) ? host : m2_clone_raw(host, dt, dev);
  if (*slot != host) m2_release(host);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, false);
}

/* m2.arange(n) or m2.arange(start, stop [, step]) [, opts]: values start, start+step, ... < stop. */
static int l_arange(lua_State *L) {
  double start = 0, stop, step = 1;
  int opts = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    start = m2lua_checknum(L, 1);
    stop = m2lua_checknum(L, 2);
    opts = 3;
    if (lua_type(L, 3) == LUA_TNUMBER) { step = m2lua_checknum(L, 3); opts = 4; }
  } else {
    stop = m2lua_checknum(L, 1);
  }
  if (step == 0) return m2lua_argerror(L, 3, "step must not be 0");
  if (!isfinite(start) || !isfinite(stop) || !isfinite(step))
    return m2lua_error(L, "m2.arange: start, stop and step must be finite, got %g, %g, %g", start, stop, step);
  double cnt_d = (stop - start) / step;
  /* a count past 2^48 was cast to int64 unchecked (undefined for inf) and its byte size could wrap */
  if (!(cnt_d <= (double)M2_MAX_NUMEL))
    return m2lua_error(L, "m2.arange(%g, %g, %g): %g values are too many (at most 2^48)", start, stop, step, cnt_d);
  int64_t cnt = cnt_d > 0 ? (int64_t)cnt_d : 0;
  if ((double)cnt < cnt_d) cnt++;
  m2_dtype dt = M2_F32;
  m2_device dev = M2_DEV_CPU;
  bool rg = false;
  m2lua_tensor_opts(L, opts, &dt, &dev, &rg);
  double *buf = lua_newuserdatauv(L, sizeof(double) * (size_t)(cnt ? cnt : 1), 0);
  for (int64_t i = 0; i < cnt; i++) buf[i] = start + (double)i * step;
  m2_tensor **slot = m2lua_newtensor(L);
  m2_tensor *host = m2_from_data(M2_F64, M2_DEV_CPU, 1, &cnt, buf);
  if (!host) return m2lua_fail(L);
  *slot = m2_clone_raw(host, dt, dev);
  m2_release(host);
  if (!*slot) return m2lua_fail(L);
  return finish_new(L, *slot, rg);
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, m2lua_istensor(L, 1));
  return 1;
}

/* ---------------- properties ---------------- */

static void push_shape(lua_State *L, const m2_tensor *t) {
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static int m_shape(lua_State *L) {
  push_shape(L, m2lua_checktensor(L, 1));
  return 1;
}

/* t:size() -> shape table; t:size(d) -> size of dim d */
static int m_size(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) { push_shape(L, t); return 1; }
  lua_pushinteger(L, t->shape[m2lua_checkdim(L, 2, t->ndim)]);
  return 1;
}

static int m_stride(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->stride[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int m_dim(lua_State *L) {
  lua_pushinteger(L, m2lua_checktensor(L, 1)->ndim);
  return 1;
}
static int m_numel(lua_State *L) {
  lua_pushinteger(L, m2_numel(m2lua_checktensor(L, 1)));
  return 1;
}
static int m_dtype(lua_State *L) {
  lua_pushstring(L, m2_dtype_name(m2lua_checktensor(L, 1)->dtype));
  return 1;
}
static int m_device(lua_State *L) {
  char buf[32];
  m2_device_name(m2lua_checktensor(L, 1)->device, buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}
static int m_is_contiguous(lua_State *L) {
  lua_pushboolean(L, m2_is_contiguous(m2lua_checktensor(L, 1)));
  return 1;
}
static int m_is_leaf(lua_State *L) {
  lua_pushboolean(L, m2lua_checktensor(L, 1)->grad_fn == NULL);
  return 1;
}
/* t:grad_fn() -> name of the op that made t ("matmul"), or nil for a leaf */
static int m_grad_fn(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (t->grad_fn) lua_pushstring(L, t->grad_fn->call.op->name);
  else lua_pushnil(L);
  return 1;
}
/* t:name() -> name or nil; t:name(s) sets it (used in messages and checkpoints), returns t */
static int m_name(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_gettop(L) < 2) {
    if (t->name) lua_pushstring(L, t->name);
    else lua_pushnil(L);
    return 1;
  }
  m2_set_name(t, lua_isnil(L, 2) ? NULL : luaL_checkstring(L, 2));
  lua_settop(L, 1);
  return 1;
}

/* ---------------- element access ---------------- */

/* v as a Lua number, or for integer dtypes an integer: an i64 element near 2^63 comes through the double as 2^63,
 * outside lua_Integer (casting it is undefined): saturate to the Lua integer range as m2_store does. */
static void push_value(lua_State *L, m2_dtype dt, double v) {
  if (m2_dtype_is_float(dt)) lua_pushnumber(L, v);
  else if (v != v) lua_pushinteger(L, 0);
  else if (v >= 9223372036854775808.0) lua_pushinteger(L, LUA_MAXINTEGER);
  else if (v < -9223372036854775808.0) lua_pushinteger(L, LUA_MININTEGER);
  else lua_pushinteger(L, (lua_Integer)v);
}

static int m_item(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double v;
  M2LUA_CHECK(L, m2_item(t, &v));
  push_value(L, t->dtype, v);
  return 1;
}

/* Read ndim 1-based (negative from the end) indices from `arg` on into idx (0-based). */
static void check_index(lua_State *L, int arg, const m2_tensor *t, int64_t *idx) {
  int given = lua_gettop(L) - arg + 1;
  if (given != t->ndim)
    m2lua_error(L, "tensor of %d dims indexed with %d indices", t->ndim, given < 0 ? 0 : given);
  for (int d = 0; d < t->ndim; d++) {
    int64_t i = m2lua_checkint(L, arg + d), n = t->shape[d];
    int64_t c = i > 0 ? i - 1 : n + i;
    if (i == 0 || c < 0 || c >= n) {
      char buf[160];
      snprintf(buf, sizeof buf, "index %lld out of range for dim %d of size %lld (indices are 1-based)",
               (long long)i, d + 1, (long long)n);
      m2lua_argerror(L, arg + d, buf);
    }
    idx[d] = c;
  }
}

/* t:get(i, j, ...) -> number (1-based indices) */
static int m_get(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int64_t idx[M2_MAX_DIMS];
  check_index(L, 2, t, idx);
  double v;
  M2LUA_CHECK(L, m2_get(t, idx, &v));
  push_value(L, t->dtype, v);
  return 1;
}

/* t:set(v, i, j, ...) -> t (in place, not recorded by autograd) */
static int m_set(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  double v = m2lua_checknum(L, 2);
  int64_t idx[M2_MAX_DIMS];
  check_index(L, 3, t, idx);
  M2LUA_CHECK(L, m2_set(t, idx, v));
  lua_settop(L, 1);
  return 1;
}

static void push_nested(lua_State *L, const m2_tensor *t, int d, const double *v, int64_t *k) {
  if (d == t->ndim) {
    push_value(L, t->dtype, v[(*k)++]);
    return;
  }
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    push_nested(L, t, d + 1, v, k);
    lua_rawseti(L, -2, i + 1);
  }
}

/* t:totable() -> nested tables of numbers (a number for a 0-d tensor) */
static int m_totable(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int64_t n = m2_numel(t);
  /* refuse what Lua cannot hold before building any of it: a table has at most INT_MAX entries, and the whole
   * result (every table and number) is held to INT_MAX values */
  int64_t values = 1, width = 1;
  for (int d = 0; d < t->ndim; d++) {
    if (t->shape[d] > INT_MAX) { values = INT64_MAX; break; }
    width *= t->shape[d]; /* the tables (or numbers) at depth d+1; stays <= n or 0 from here */
    values += width;
    if (values > INT_MAX) break;
  }
  if (values > INT_MAX) {
    char b[96];
    return m2lua_error(L, "totable: a tensor of shape %s needs more than %d Lua values (narrow it first)",
                       m2_shape_str(t, b, sizeof b), INT_MAX);
  }
  double *buf = lua_newuserdatauv(L, sizeof(double) * (size_t)(n ? n : 1), 0);
  M2LUA_CHECK(L, m2_to_host(t, M2_F64, buf));
  int64_t k = 0;
  luaL_checkstack(L, t->ndim + 4, "totable");
  push_nested(L, t, 0, buf, &k);
  return 1;
}

/* ---------------- copies, conversions, views ---------------- */

/* t:clone() -> a contiguous copy; recorded by autograd when t needs grad (like torch). */
static int m_clone(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (t->requires_grad && m2_grad_enabled()) M2LUA_RETURN(L, m2_scale(t, 1.0));
  M2LUA_RETURN(L, m2_clone_raw(t, t->dtype, t->device));
}

/* t:to("f64" | "cuda:0" | other_tensor): differentiable dtype / device conversion */
static int m_to(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (m2lua_istensor(L, 2)) {
    m2_tensor *o = m2lua_checktensor(L, 2);
    m2_tensor **slot = m2lua_newtensor(L);
    m2_tensor *a = m2_to_dtype(t, o->dtype);
    if (!a) return m2lua_fail(L);
    *slot = m2_to_device(a, o->device);
    m2_release(a);
    if (!*slot) return m2lua_fail(L);
    m2lua_account(L, *slot);
    return 1;
  }
  const char *s = lua_tostring(L, 2);
  if (!s) return m2lua_typeerror(L, 2, "dtype or device name");
  m2_dtype dt;
  m2_device dev;
  if (m2_dtype_from_name(s, &dt)) M2LUA_RETURN(L, m2_to_dtype(t, dt));
  if (m2_device_parse(s, &dev)) M2LUA_RETURN(L, m2_to_device(t, dev));
  char buf[160];
  snprintf(buf, sizeof buf, "'%s' is neither a dtype (f32, f64, bf16, i32, i64) nor a device (cpu, cuda:N)", s);
  return m2lua_argerror(L, 2, buf);
}
static int m_float(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_RETURN(L, m2_to_dtype(t, M2_F32));
}
static int m_double(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_RETURN(L, m2_to_dtype(t, M2_F64));
}
static int m_long(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_RETURN(L, m2_to_dtype(t, M2_I64));
}
static int m_contiguous(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_RETURN(L, m2_contiguous(t));
}

/* t:reshape(2, -1) or t:reshape({2, -1}) */
static int m_reshape(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int64_t shape[M2_MAX_DIMS];
  int nd;
  int next = m2lua_checkshape(L, 2, &nd, shape, true);
  if (next <= lua_gettop(L)) return m2lua_typeerror(L, next, "integer");
  M2LUA_RETURN(L, m2_reshape(t, nd, shape));
}

/* t:narrow(dim, start, len): view of positions start .. start+len-1 (1-based) of dim */
static int m_narrow(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int d = m2lua_checkdim(L, 2, t->ndim);
  int64_t start = m2lua_checkint(L, 3), len = m2lua_checkint(L, 4), n = t->shape[d];
  int64_t s0 = start > 0 ? start - 1 : n + start;
  if (start == 0 || s0 < 0 || s0 > n) {
    char buf[160];
    snprintf(buf, sizeof buf, "start %lld out of range for dim of size %lld (positions are 1-based)",
             (long long)start, (long long)n);
    return m2lua_argerror(L, 3, buf);
  }
  if (len < 0 || s0 + len > n) {
    char buf[160];
    snprintf(buf, sizeof buf, "length %lld from position %lld goes past the end of a dim of size %lld",
             (long long)len, (long long)start, (long long)n);
    return m2lua_argerror(L, 4, buf);
  }
  M2LUA_RETURN(L, m2_narrow(t, d, s0, len));
}

/* t:transpose(d0, d1) (default: the last two dims) */
static int m_transpose(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_isnoneornil(L, 2) && lua_isnoneornil(L, 3)) {
    if (t->ndim < 2) return m2lua_argerror(L, 1, "transpose without dims needs at least 2 dims");
    M2LUA_RETURN(L, m2_transpose(t, t->ndim - 2, t->ndim - 1));
  }
  int d0 = m2lua_checkdim(L, 2, t->ndim), d1 = m2lua_checkdim(L, 3, t->ndim);
  M2LUA_RETURN(L, m2_transpose(t, d0, d1));
}

/* t:permute(3, 1, 2) or t:permute({3, 1, 2}) */
static int m_permute(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int64_t p[M2_MAX_DIMS];
  int nd;
  m2lua_checkshape(L, 2, &nd, p, true);
  if (nd != t->ndim) return m2lua_error(L, "permute: %d dims given for a %d-d tensor", nd, t->ndim);
  int perm[M2_MAX_DIMS];
  bool seen[M2_MAX_DIMS] = {false};
  for (int i = 0; i < nd; i++) {
    perm[i] = m2lua_todim(L, 2, p[i], t->ndim);
    if (seen[perm[i]]) return m2lua_error(L, "permute: dim %lld appears twice", (long long)p[i]);
    seen[perm[i]] = true;
  }
  M2LUA_RETURN(L, m2_permute(t, perm));
}

/* t:expand(4, -1, 3) or t:expand({...}): broadcast view, -1 keeps a dim */
static int m_expand(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  int64_t shape[M2_MAX_DIMS];
  int nd;
  m2lua_checkshape(L, 2, &nd, shape, true);
  M2LUA_RETURN(L, m2_expand(t, nd, shape));
}

/* ---------------- autograd fields ---------------- */

/* t:requires_grad() -> boolean; t:requires_grad(true|false) sets it on a leaf and returns t */
static int m_requires_grad(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_gettop(L) < 2) {
    lua_pushboolean(L, t->requires_grad);
    return 1;
  }
  bool on = m2lua_optbool(L, 2, true);
  M2LUA_CHECK(L, m2_requires_grad_(t, on));
  lua_settop(L, 1);
  return 1;
}

/* t:backward([grad]) */
static int m_backward(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  m2_tensor *g = m2lua_opttensor(L, 2);
  M2LUA_CHECK(L, m2_backward(t, g));
  return 0;
}

static int m_detach(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_RETURN(L, m2_detach(t));
}

/* t:zero_grad(): zero the accumulated .grad (keeps the buffer); returns t */
static int m_zero_grad(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (t->grad) M2LUA_CHECK(L, m2_zero_(t->grad));
  lua_settop(L, 1);
  return 1;
}

static int m_fill_(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_CHECK(L, m2_fill_(t, m2lua_checknum(L, 2)));
  lua_settop(L, 1);
  return 1;
}

static int m_copy_(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  M2LUA_CHECK(L, m2_copy_(t, m2lua_checktensor(L, 2)));
  lua_settop(L, 1);
  return 1;
}

/* t:release(): drop the C tensor now (same as leaving a `<close>` scope); t is unusable after. */
static int m_release(lua_State *L) {
  m2lua_tensor *u = luaL_checkudata(L, 1, M2LUA_TENSOR);
  m2_release(u->t);
  u->t = NULL;
  return 0;
}

/* ---------------- indexing metamethods ---------------- */

/* The i-th slice along dim 1 as a raw view (no autograd) with ndim-1 dims. */
static m2_tensor *select_raw(const m2_tensor *t, int64_t i) {
  return m2_view_raw(t, t->ndim - 1, t->shape + 1, t->stride + 1, t->offset + i * t->stride[0]);
}

static int64_t check_first_index(lua_State *L, const m2_tensor *t, lua_Integer i) {
  if (t->ndim == 0) m2lua_error(L, "cannot index a 0-d tensor (use :item())");
  int64_t n = t->shape[0], c = i > 0 ? i - 1 : n + i;
  if (i == 0 || c < 0 || c >= n)
    m2lua_error(L, "index %lld out of range for dim 1 of size %lld (indices are 1-based)", (long long)i,
                (long long)n);
  return c;
}

static int t_index(lua_State *L) {
  m2lua_tensor *u = luaL_checkudata(L, 1, M2LUA_TENSOR);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (!u->t) return m2lua_error(L, "tensor was already closed (released)");
    m2_tensor *t = u->t;
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint) return m2lua_error(L, "tensor index must be an integer");
    int64_t c = check_first_index(L, t, i);
    if (t->ndim == 1) {
      double v;
      M2LUA_CHECK(L, m2_get(t, &c, &v));
      push_value(L, t->dtype, v);
      return 1;
    }
    if (t->requires_grad && m2_grad_enabled()) { /* differentiable: narrow + reshape */
      m2_tensor **slot = m2lua_newtensor(L);
      m2_tensor *n = m2_narrow(t, 0, c, 1);
      if (!n) return m2lua_fail(L);
      *slot = m2_reshape(n, t->ndim - 1, t->shape + 1);
      m2_release(n);
      if (!*slot) return m2lua_fail(L);
      return 1;
    }
    M2LUA_RETURN(L, select_raw(t, c));
  }
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "grad") == 0) {
    if (!u->t) return m2lua_error(L, "tensor was already closed (released)");
    if (u->t->grad) m2lua_pushref(L, u->t->grad);
    else lua_pushnil(L);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1)); /* the method table */
  return 1;
}

/* t[i] = number | tensor (fills / copies into the slice, in place); t.grad = nil | tensor */
static int t_newindex(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint) return m2lua_error(L, "tensor index must be an integer");
    int64_t c = check_first_index(L, t, i);
    if (t->ndim == 1) {
      M2LUA_CHECK(L, m2_set(t, &c, m2lua_checknum(L, 3)));
      return 0;
    }
    m2_tensor **slot = m2lua_newtensor(L); /* holds the view until the GC takes it */
    *slot = select_raw(t, c);
    if (!*slot) return m2lua_fail(L);
    if (lua_type(L, 3) == LUA_TNUMBER) M2LUA_CHECK(L, m2_fill_(*slot, lua_tonumber(L, 3)));
    else M2LUA_CHECK(L, m2_copy_(*slot, m2lua_checktensor(L, 3)));
    return 0;
  }
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "grad") == 0) {
    if (lua_isnil(L, 3)) {
      m2_release(t->grad);
      t->grad = NULL;
      return 0;
    }
    m2_tensor *g = m2lua_checktensor(L, 3);
    if (!m2_same_shape(g, t) || g->dtype != t->dtype)
      return m2lua_error(L, "t.grad must have the tensor's shape and dtype");
    m2_retain(g);
    m2_release(t->grad);
    t->grad = g;
    return 0;
  }
  return m2lua_error(L, "cannot set field '%s' of a tensor", k ? k : luaL_typename(L, 2));
}

static int t_len(lua_State *L) {
  m2_tensor *t = m2lua_checktensor(L, 1);
  if (t->ndim == 0) return m2lua_error(L, "a 0-d tensor has no length (use :numel())");
  lua_pushinteger(L, t->shape[0]);
  return 1;
}

static int t_tostring(lua_State *L) {
  m2lua_tensor *u = luaL_checkudata(L, 1, M2LUA_TENSOR);
  if (!u->t) {
    lua_pushliteral(L, "tensor(closed)");
    return 1;
  }
  char buf[4096];
  m2_format(u->t, buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

/* a == b: the same C tensor (two wrappers of one tensor compare equal) */
static int t_eq(lua_State *L) {
  m2lua_tensor *a = luaL_testudata(L, 1, M2LUA_TENSOR), *b = luaL_testudata(L, 2, M2LUA_TENSOR);
  lua_pushboolean(L, a && b && a->t == b->t);
  return 1;
}

/* ---------------- registration ---------------- */

void m2lua_push_methods(lua_State *L) { lua_getfield(L, LUA_REGISTRYINDEX, METHODS_KEY); }

void m2lua_open_tensor(lua_State *L) {
  static const luaL_Reg ctors[] = {
      {"tensor", l_tensor}, {"zeros", l_zeros},     {"ones", l_ones},       {"empty", l_empty},
      {"full", l_full},     {"scalar", l_scalar},   {"randn", l_randn},     {"rand", l_rand},
      {"randint", l_randint}, {"arange", l_arange}, {"is_tensor", l_is_tensor}, {NULL, NULL},
  };
  /* methods, also exported as m2.<name>(t, ...) */
  static const luaL_Reg methods[] = {
      {"shape", m_shape},
      {"size", m_size},
      {"stride", m_stride},
      {"dim", m_dim},
      {"numel", m_numel},
      {"dtype", m_dtype},
      {"device", m_device},
      {"is_contiguous", m_is_contiguous},
      {"is_leaf", m_is_leaf},
      {"grad_fn", m_grad_fn},
      {"name", m_name},
      {"item", m_item},
      {"get", m_get},
      {"set", m_set},
      {"totable", m_totable},
      {"clone", m_clone},
      {"to", m_to},
      {"float", m_float},
      {"double", m_double},
      {"long", m_long},
      {"contiguous", m_contiguous},
      {"reshape", m_reshape},
      {"view", m_reshape},
      {"narrow", m_narrow},
      {"transpose", m_transpose},
      {"t", m_transpose},
      {"permute", m_permute},
      {"expand", m_expand},
      {"requires_grad", m_requires_grad},
      {"backward", m_backward},
      {"detach", m_detach},
      {"zero_grad", m_zero_grad},
      {"fill_", m_fill_},
      {"copy_", m_copy_},
      {"release", m_release},
      {NULL, NULL},
  };
  int mod = lua_gettop(L);
  m2lua_setfuncs(L, mod, ctors);
  /* the method table: in the registry, as m2.core.Tensor (Lua may add methods) and as the
     upvalue of __index */
  lua_newtable(L);
  m2lua_setfuncs(L, -1, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
  lua_pushvalue(L, -1);
  lua_setfield(L, mod, "Tensor");
  int mt = lua_gettop(L);
  /* the metatable */
  luaL_newmetatable(L, M2LUA_TENSOR);
  static const luaL_Reg meta[] = {
      {"__gc", t_gc},     {"__close", t_gc},          {"__newindex", t_newindex},
      {"__len", t_len},   {"__tostring", t_tostring}, {"__eq", t_eq},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, meta);
  lua_pushvalue(L, mt);
  lua_pushcclosure(L, t_index, 1);
  lua_setfield(L, -2, "__index");
  /* view and copy methods are also functions of the module: m2.reshape(t, 2, 3) */
  static const char *const exported[] = {"clone", "to", "contiguous", "reshape", "narrow", "transpose",
                                         "permute", "expand", "detach", NULL};
  for (int i = 0; exported[i]; i++) {
    lua_getfield(L, mt, exported[i]);
    lua_setfield(L, mod, exported[i]);
  }
  lua_settop(L, mod);
}
