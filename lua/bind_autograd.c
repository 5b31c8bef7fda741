/* bind_autograd.c — grad mode (m2.no_grad), gradient checks from Lua (m2.gradcheck), leak
 * counters (m2.live_tensors / m2.live_nodes) and the default RNG (m2.seed, rng state). */
#include "bind.h"

/* m2.no_grad(fn, ...) -> fn(...)'s results, run with grad recording off. The mode is restored
 * even when fn raises (the error is re-raised unchanged). */
static int l_no_grad(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  m2_no_grad_push();
  int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
  m2_no_grad_pop();
  if (rc != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

static int l_grad_enabled(lua_State *L) {
  lua_pushboolean(L, m2_grad_enabled());
  return 1;
}

static int l_live_tensors(lua_State *L) {
  lua_pushinteger(L, m2_live_tensors());
  return 1;
}

static int l_live_nodes(lua_State *L) {
  lua_pushinteger(L, m2_live_nodes());
  return 1;
}

/* ---------------- gradcheck ---------------- */

typedef struct gc_ud {
  lua_State *L;
  int fn;        /* stack index of the Lua function */
  int n;
  int err_ref;   /* registry ref of the first Lua error raised by fn, or LUA_NOREF */
  m2_tensor *const *in;
  m2_tensor *out;
} gc_ud;

/* Runs inside lua_pcall: calls fn(inputs...) and keeps a new reference to its tensor result. */
static int gc_trampoline(lua_State *L) {
  gc_ud *u = lua_touserdata(L, 1);
  lua_pushvalue(L, 2); /* fn */
  for (int i = 0; i < u->n; i++) m2lua_pushref(L, u->in[i]);
  lua_call(L, u->n, 1);
  m2lua_tensor *r = luaL_testudata(L, -1, M2LUA_TENSOR);
  if (!r || !r->t) return m2lua_error(L, "gradcheck: the function must return a tensor, got %s", luaL_typename(L, -1));
  m2_retain(r->t);
  u->out = r->t;
  return 0;
}

static m2_tensor *gc_call(m2_tensor *const *in, void *p) {
  gc_ud *u = p;
  lua_State *L = u->L;
  if (u->err_ref != LUA_NOREF) {
    m2_fail(M2_ERR_VALUE, "gradcheck: the function raised an error");
    return NULL;
  }
  u->in = in;
  u->out = NULL;
  lua_pushcfunction(L, gc_trampoline);
  lua_pushlightuserdata(L, u);
  lua_pushvalue(L, u->fn); /* an index into l_gradcheck's frame, which is the current one */
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    u->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    m2_fail(M2_ERR_VALUE, "gradcheck: the function raised an error");
    return NULL;
  }
  return u->out;
}

/* m2.gradcheck(fn, {inputs...} [, {eps, atol, rtol, seed, max_checks}]) -> ok, max_err, message
 * fn(inputs...) returns a tensor; inputs should be f64 leaves, those with requires_grad are
 * checked against central differences. A Lua error inside fn is re-raised. */
static int l_gradcheck(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TTABLE);
  m2lua_checkopts(L, 3);
  int n = (int)luaL_len(L, 2);
  if (n < 1) return m2lua_argerror(L, 2, "empty list of inputs");
  m2_tensor **in = lua_newuserdatauv(L, sizeof(m2_tensor *) * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 2, i + 1);
    m2lua_tensor *t = luaL_testudata(L, -1, M2LUA_TENSOR);
    if (!t || !t->t) return m2lua_error(L, "gradcheck: input %d is not a tensor", i + 1);
    in[i] = t->t; /* kept alive by the inputs table */
    lua_pop(L, 1);
  }
  m2_gradcheck_opts o = {
      m2lua_optfield_num(L, 3, "eps", 0),   m2lua_optfield_num(L, 3, "atol", 0),
      m2lua_optfield_num(L, 3, "rtol", 0),  (uint64_t)m2lua_optfield_int(L, 3, "seed", 1234),
      m2lua_optfield_cint(L, 3, "max_checks", 0),
  };
  gc_ud u = {L, 1, n, LUA_NOREF, NULL, NULL};
  double max_err = 0;
  m2_status s = m2_gradcheck(gc_call, &u, n, in, &o, &max_err);
  if (u.err_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, u.err_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, u.err_ref);
    return lua_error(L);
  }
  lua_pushboolean(L, s == M2_OK);
  lua_pushnumber(L, max_err);
  if (s == M2_OK) lua_pushnil(L);
  else lua_pushstring(L, m2_errmsg());
  m2_clear_error();
  return 3;
}

/* ---------------- RNG ---------------- */

/* m2.seed(n): reseed the default generator (parameter init, m2.randn/rand/randint) */
static int l_seed(lua_State *L) {
  m2_manual_seed((uint64_t)m2lua_checkint(L, 1));
  return 0;
}

/* m2.rng_state() -> {seed=, stream=, offset=} of the default generator (for checkpoints) */
static int l_rng_state(lua_State *L) {
  m2_rng *r = m2_default_rng();
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)r->seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)r->stream);
  lua_setfield(L, -2, "stream");
  lua_pushinteger(L, (lua_Integer)r->offset);
  lua_setfield(L, -2, "offset");
  return 1;
}

/* m2.set_rng_state{seed=, stream=, offset=} */
static int l_set_rng_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  m2_rng *r = m2_default_rng();
  r->seed = (uint64_t)m2lua_optfield_int(L, 1, "seed", (int64_t)r->seed);
  r->stream = (uint64_t)m2lua_optfield_int(L, 1, "stream", (int64_t)r->stream);
  r->offset = (uint64_t)m2lua_optfield_int(L, 1, "offset", (int64_t)r->offset);
  return 0;
}

void m2lua_open_autograd(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"no_grad", l_no_grad},
      {"grad_enabled", l_grad_enabled},
      {"live_tensors", l_live_tensors},
      {"live_nodes", l_live_nodes},
      {"gradcheck", l_gradcheck},
      {"seed", l_seed},
      {"rng_state", l_rng_state},
      {"set_rng_state", l_set_rng_state},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
}
