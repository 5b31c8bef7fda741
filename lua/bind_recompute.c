/* bind_recompute.c — m2.checkpoint: activation checkpointing from Lua (core/recompute.h, m2_checkpoint).
 *
 * m2.checkpoint(fn, ...) -> fn(...)'s results (1 to 4 tensors), computed under no_grad so that none of fn's
 * intermediate tensors is kept for the backward; the tape records one "recompute" node holding only the tensor
 * arguments. Its backward calls fn again on detached copies of them (those that needed a gradient require grad),
 * with grad on, the matmul precision / activation dtype and the default RNG state of the first call, and
 * backpropagates through that fresh graph (parameters' .grad accumulate as usual). Arguments that are not tensors
 * are passed again as they are. fn must compute the same thing every time (the RNG state is replayed; other state
 * it reads must not change between the forward and the backward). With grad mode off it is a plain call.
 * The backward runs fn on the main Lua thread. */
#include "bind.h"
#include <stdlib.h>

typedef struct lck {
  lua_State *L;               /* where fn runs: the caller's thread for the first call, then the main thread */
  int ref;                    /* registry ref of {fn, args..., n = nargs}: tensor arguments are left out */
  int nargs;
  int ntens;                  /* tensor arguments, at positions pos[0..ntens) (1-based among the arguments) */
  int pos[M2_MAX_IN];
  /* while m2.checkpoint runs (NULL after): its locals */
  int *err_ref;               /* the Lua error of the first call, to re-raise as it is */
  bool *dropped;              /* set when k is freed before m2.checkpoint returns (no node kept it) */
  /* per call */
  m2_tensor *const *in;
  m2_tensor **outs;
  int n_out;
} lck;

static void lck_drop(void *p) {
  lck *k = p;
  if (!k) return;
  if (k->ref != LUA_NOREF) luaL_unref(k->L, LUA_REGISTRYINDEX, k->ref);
  if (k->dropped) *k->dropped = true;
  free(k);
}

/* In protected mode: fn(args, tensors in their places) -> outs (new refs). */
static int lck_call(lua_State *L) {
  lck *k = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (!lua_checkstack(L, k->nargs + 4)) return m2lua_error(L, "m2.checkpoint: too many arguments");
  lua_rawgeti(L, LUA_REGISTRYINDEX, k->ref); /* 1: the table */
  lua_rawgeti(L, 1, 1);                      /* fn */
  for (int a = 1, j = 0; a <= k->nargs; a++) {
    if (j < k->ntens && k->pos[j] == a) m2lua_pushref(L, k->in[j++]);
    else lua_rawgeti(L, 1, a + 1);
  }
  lua_call(L, k->nargs, LUA_MULTRET);
  const int nres = lua_gettop(L) - 1;
  if (nres < 1) return m2lua_error(L, "m2.checkpoint: the function returned nothing (it must return tensors)");
  if (nres > M2_MAX_OUT)
    return m2lua_error(L, "m2.checkpoint: the function returned %d results (at most %d tensors)", nres, M2_MAX_OUT);
  for (int i = 0; i < nres; i++) {
    m2lua_tensor *r = luaL_testudata(L, 2 + i, M2LUA_TENSOR);
    if (!r || !r->t)
      return m2lua_error(L, "m2.checkpoint: the function's result %d is %s, not a tensor (it must return only "
                            "tensors)", i + 1, r ? "a closed tensor" : luaL_typename(L, 2 + i));
  }
  for (int i = 0; i < nres; i++) {
    m2lua_tensor *r = lua_touserdata(L, 2 + i);
    m2_retain(r->t);
    k->outs[i] = r->t;
  }
  k->n_out = nres;
  return 0;
}

static m2_status lck_fn(void *p, int n_in, m2_tensor *const *in, int *n_out, m2_tensor **outs) {
  (void)n_in;
  lck *k = p;
  lua_State *L = k->L;
  k->in = in;
  k->outs = outs;
  k->n_out = 0;
  if (!lua_checkstack(L, 3)) return m2_fail(M2_ERR_OOM, "m2.checkpoint: no room on the Lua stack");
  lua_pushcfunction(L, lck_call);
  lua_pushlightuserdata(L, k);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    for (int i = 0; i < k->n_out; i++) { m2_release(outs[i]); outs[i] = NULL; }
    const char *msg = lua_tostring(L, -1);
    m2_fail(M2_ERR_VALUE, "%s", msg ? msg : "m2.checkpoint: the function raised a non-string error");
    if (k->err_ref && *k->err_ref == LUA_NOREF) *k->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else lua_pop(L, 1);
    return M2_ERR_VALUE;
  }
  *n_out = k->n_out;
  return M2_OK;
}

/* m2.checkpoint(fn, ...) -> fn(...)'s results (see the top); fn may be a callable table (a module) */
static int l_checkpoint(lua_State *L) {
  if (lua_type(L, 1) != LUA_TFUNCTION) {
    if (luaL_getmetafield(L, 1, "__call") == LUA_TNIL) return m2lua_typeerror(L, 1, "function");
    lua_pop(L, 1);
  }
  const int nargs = lua_gettop(L) - 1;
  m2_tensor *in[M2_MAX_IN];
  int ntens = 0;
  for (int a = 2; a <= nargs + 1; a++) {
    if (!m2lua_istensor(L, a)) continue;
    if (ntens == M2_MAX_IN)
      return m2lua_error(L, "m2.checkpoint: more than %d tensor arguments (pass fewer, or let the function "
                            "capture the others)", M2_MAX_IN);
    in[ntens++] = m2lua_checktensor(L, a);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  lua_pop(L, 1);
  /* {fn, args...}: the tensor arguments stay out (the tape node holds them) */
  int pos[M2_MAX_IN];
  lua_createtable(L, nargs + 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  for (int a = 2, j = 0; a <= nargs + 1; a++) {
    if (m2lua_istensor(L, a)) { pos[j++] = a - 1; continue; }
    lua_pushvalue(L, a);
    lua_rawseti(L, -2, a);
  }
  const int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lck *k = calloc(1, sizeof *k);
  if (!k) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return m2lua_error(L, "m2.checkpoint: out of host memory");
  }
  for (int j = 0; j < ntens; j++) k->pos[j] = pos[j];
  k->L = L;
  k->nargs = nargs;
  k->ntens = ntens;
  k->ref = ref;
  int err_ref = LUA_NOREF;
  bool dropped = false;
  k->err_ref = &err_ref;
  k->dropped = &dropped;
  m2_tensor *outs[M2_MAX_OUT] = {0};
  int n = 0;
  m2_status s = m2_checkpoint(lck_fn, k, lck_drop, ntens, in, &n, outs); /* drops k unless a node keeps it */
  if (!dropped) { /* the node's: its backward runs on the main thread (this one may be a finished coroutine) */
    k->L = main;
    k->err_ref = NULL;
    k->dropped = NULL;
  }
  if (s != M2_OK) {
    if (err_ref != LUA_NOREF) { /* the function's own error, as it was raised */
      lua_rawgeti(L, LUA_REGISTRYINDEX, err_ref);
      luaL_unref(L, LUA_REGISTRYINDEX, err_ref);
      return lua_error(L);
    }
    return m2lua_fail(L);
  }
  lua_settop(L, 0);
  if (!lua_checkstack(L, n)) {
    for (int i = 0; i < n; i++) m2_release(outs[i]);
    return m2lua_error(L, "m2.checkpoint: no room on the Lua stack");
  }
  for (int i = 0; i < n; i++) {
    m2_tensor **slot = m2lua_newtensor(L);
    *slot = outs[i];
    outs[i] = NULL;
    m2lua_account(L, *slot);
  }
  return n;
}

void m2lua_open_recompute(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"checkpoint", l_checkpoint},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
}
