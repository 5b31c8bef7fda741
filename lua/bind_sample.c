/* bind_sample.c — the sampler of core/sample.h as m2.sample(logits, opts) -> ids and m2.sample_probs(logits, opts)
 * -> the distribution drawn from; opts {temperature = 1, top_k = 0, top_p = 1, seed = 0, offset = 0}, an unknown key
 * is an error. lua/m2/generate.lua draws every generated token through it. */
#include <string.h>
#include "bind.h"

static const char *const KEYS[] = {"temperature", "top_k", "top_p", "seed", "offset", NULL};

static m2_sample_opts check_opts(lua_State *L, int tbl) {
  m2lua_checkopts(L, tbl);
  if (lua_istable(L, tbl)) {
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
      lua_pop(L, 1);
      bool known = false;
      if (lua_type(L, -1) == LUA_TSTRING)
        for (int i = 0; KEYS[i] && !known; i++) known = strcmp(lua_tostring(L, -1), KEYS[i]) == 0;
      if (!known) {
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
        m2lua_error(L, "sample: unknown option '%s' (known: temperature, top_k, top_p, seed, offset)", k);
      }
    }
  }
  m2_sample_opts o = M2_SAMPLE_DEFAULTS;
  o.temperature = m2lua_optfield_num(L, tbl, "temperature", o.temperature);
  o.top_k = m2lua_optfield_int(L, tbl, "top_k", o.top_k);
  o.top_p = m2lua_optfield_num(L, tbl, "top_p", o.top_p);
  o.seed = (uint64_t)m2lua_optfield_int(L, tbl, "seed", 0);
  o.offset = (uint64_t)m2lua_optfield_int(L, tbl, "offset", 0);
  return o;
}

/* m2.sample(logits (..., V) [, opts]) -> ids (...) i64 on the logits' device */
static int l_sample(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  m2_sample_opts o = check_opts(L, 2);
  M2LUA_RETURN(L, m2_sample(x, &o));
}

/* m2.sample_probs(logits (..., V) [, opts]) -> (..., V) f64 on the CPU */
static int l_sample_probs(lua_State *L) {
  m2_tensor *x = m2lua_checktensor(L, 1);
  m2_sample_opts o = check_opts(L, 2);
  M2LUA_RETURN(L, m2_sample_probs(x, &o));
}

void m2lua_open_sample(lua_State *L) {
  static const luaL_Reg fns[] = {{"sample", l_sample}, {"sample_probs", l_sample_probs}, {NULL, NULL}};
  m2lua_setfuncs(L, -1, fns);
}
