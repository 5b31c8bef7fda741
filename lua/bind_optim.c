/* bind_optim.c — core/optim.h for Lua: the m2.Optim userdata (SGD / AdamW), global grad-norm
 * clipping and LR schedules. lua/m2/optim.lua wraps these into m2.optim.adamw{...} etc. */
#include <stdio.h>
#include <string.h>
#include "bind.h"

#define M2LUA_OPTIM "m2.Optim"

typedef struct optim_ud {
  m2_optim *o; /* NULL once closed */
} optim_ud;

static m2_optim *check_optim(lua_State *L, int arg) {
  optim_ud *u = luaL_testudata(L, arg, M2LUA_OPTIM);
  if (!u) m2lua_typeerror(L, arg, M2LUA_OPTIM);
  if (!u->o) m2lua_argerror(L, arg, "optimizer was already closed");
  return u->o;
}

m2_optim *m2lua_checkoptim(lua_State *L, int arg) { return check_optim(L, arg); }

static optim_ud *new_optim(lua_State *L) {
  optim_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->o = NULL;
  luaL_setmetatable(L, M2LUA_OPTIM);
  return u;
}

static int o_gc(lua_State *L) {
  optim_ud *u = luaL_checkudata(L, 1, M2LUA_OPTIM);
  if (u->o) m2_optim_free(u->o);
  u->o = NULL;
  return 0;
}

/* m2.core.optim_sgd{momentum = 0, weight_decay = 0, nesterov = false} */
static int l_optim_sgd(lua_State *L) {
  m2lua_checkopts(L, 1);
  m2_sgd_opts o = {m2lua_optfield_num(L, 1, "momentum", 0), m2lua_optfield_num(L, 1, "weight_decay", 0),
                   m2lua_optfield_bool(L, 1, "nesterov", false)};
  optim_ud *u = new_optim(L);
  u->o = m2_sgd_new(&o);
  if (!u->o) return m2lua_fail(L);
  return 1;
}

/* m2.core.optim_adamw{beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0} */
static int l_optim_adamw(lua_State *L) {
  m2lua_checkopts(L, 1);
  m2_adamw_opts o = {m2lua_optfield_num(L, 1, "beta1", 0.9), m2lua_optfield_num(L, 1, "beta2", 0.999),
                     m2lua_optfield_num(L, 1, "eps", 1e-8), m2lua_optfield_num(L, 1, "weight_decay", 0)};
  optim_ud *u = new_optim(L);
  u->o = m2_adamw_new(&o);
  if (!u->o) return m2lua_fail(L);
  return 1;
}

/* o:add(tensor, name [, no_decay]) */
static int o_add(lua_State *L) {
  m2_optim *o = check_optim(L, 1);
  m2_tensor *t = m2lua_checktensor(L, 2);
  const char *name = luaL_optstring(L, 3, t->name ? t->name : "param");
  M2LUA_CHECK(L, m2_optim_add(o, t, name, m2lua_optbool(L, 4, false)));
  return 0;
}

/* o:step(lr) */
static int o_step(lua_State *L) {
  m2_optim *o = check_optim(L, 1);
  M2LUA_CHECK(L, m2_optim_step(o, m2lua_checknum(L, 2)));
  return 0;
}

static int o_zero_grad(lua_State *L) {
  M2LUA_CHECK(L, m2_optim_zero_grad(check_optim(L, 1)));
  return 0;
}

static int o_clear_grads(lua_State *L) {
  m2_optim_clear_grads(check_optim(L, 1));
  return 0;
}

static int o_nparams(lua_State *L) {
  lua_pushinteger(L, m2_optim_nparams(check_optim(L, 1)));
  return 1;
}

/* o:param(i) -> tensor (1-based) */
static int check_param_index(lua_State *L, m2_optim *o, int arg) {
  int64_t i = m2lua_checkint(L, arg);
  int n = m2_optim_nparams(o);
  if (i < 1 || i > n) {
    char buf[96];
    snprintf(buf, sizeof buf, "parameter %lld out of range 1..%d", (long long)i, n);
    m2lua_argerror(L, arg, buf);
  }
  return (int)i - 1;
}

static int o_param(lua_State *L) {
  m2_optim *o = check_optim(L, 1);
  m2lua_pushref(L, m2_optim_param(o, check_param_index(L, o, 2)));
  return 1;
}

static int o_steps(lua_State *L) {
  lua_pushinteger(L, m2_optim_steps(check_optim(L, 1)));
  return 1;
}

static int o_set_steps(lua_State *L) {
  m2_optim_set_steps(check_optim(L, 1), m2lua_checkint(L, 2));
  return 0;
}

static int o_kind(lua_State *L) {
  lua_pushstring(L, m2_optim_kind_of(check_optim(L, 1)) == M2_OPTIM_ADAMW ? "adamw" : "sgd");
  return 1;
}

/* o:state_names() -> {"exp_avg", "exp_avg_sq"} (the state tensors each parameter has) */
static int o_state_names(lua_State *L) {
  m2_optim *o = check_optim(L, 1);
  int n = m2_optim_state_count(o);
  lua_createtable(L, n, 0);
  for (int j = 0; j < n; j++) {
    lua_pushstring(L, m2_optim_state_name(o, j));
    lua_rawseti(L, -2, j + 1);
  }
  return 1;
}

/* o:state(i, j) -> state tensor j of parameter i (1-based), or nil before the first step */
static int o_state(lua_State *L) {
  m2_optim *o = check_optim(L, 1);
  int i = check_param_index(L, o, 2);
  int64_t j = m2lua_checkint(L, 3);
  if (j < 1 || j > m2_optim_state_count(o)) return m2lua_argerror(L, 3, "state index out of range");
  m2_tensor *t = m2_optim_state(o, i, (int)j - 1);
  if (t) m2lua_pushref(L, t);
  else lua_pushnil(L);
  return 1;
}

static int o_init_state(lua_State *L) {
  M2LUA_CHECK(L, m2_optim_init_state(check_optim(L, 1)));
  return 0;
}

/* m2.core.clip_grad_norm({tensors...}, max_norm) -> norm (before clipping) */
static int l_clip_grad_norm(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double max_norm = m2lua_checknum(L, 2);
  int n = (int)luaL_len(L, 1);
  m2_tensor **ps = lua_newuserdatauv(L, sizeof(m2_tensor *) * (size_t)(n ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    m2lua_tensor *t = luaL_testudata(L, -1, M2LUA_TENSOR);
    if (!t || !t->t) return m2lua_error(L, "clip_grad_norm: entry %d is not a tensor", i + 1);
    ps[i] = t->t;
    lua_pop(L, 1);
  }
  double norm = 0;
  M2LUA_CHECK(L, m2_clip_grad_norm(ps, n, max_norm, &norm));
  lua_pushnumber(L, norm);
  return 1;
}

/* m2.core.schedule_lr({kind=, lr=, min_lr=, warmup=, stable=, decay=}, step) -> lr */
static int l_schedule_lr(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  m2_schedule s = {0};
  lua_getfield(L, 1, "kind");
  const char *kind = lua_isnil(L, -1) ? "constant" : lua_tostring(L, -1);
  if (kind && strcmp(kind, "constant") == 0) s.kind = M2_SCHED_CONSTANT;
  else if (kind && strcmp(kind, "cosine") == 0) s.kind = M2_SCHED_COSINE;
  else if (kind && strcmp(kind, "wsd") == 0) s.kind = M2_SCHED_WSD;
  else return m2lua_error(L, "schedule: unknown kind '%s' (constant, cosine, wsd)", kind ? kind : "?");
  lua_pop(L, 1);
  s.lr = m2lua_optfield_num(L, 1, "lr", 0);
  s.min_lr = m2lua_optfield_num(L, 1, "min_lr", 0);
  s.warmup = m2lua_optfield_int(L, 1, "warmup", 0);
  s.stable = m2lua_optfield_int(L, 1, "stable", 0);
  s.decay = m2lua_optfield_int(L, 1, "decay", 0);
  lua_pushnumber(L, m2_schedule_lr(&s, m2lua_checkint(L, 2)));
  return 1;
}

void m2lua_open_optim(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"optim_sgd", l_optim_sgd},
      {"optim_adamw", l_optim_adamw},
      {"clip_grad_norm", l_clip_grad_norm},
      {"schedule_lr", l_schedule_lr},
      {NULL, NULL},
  };
  static const luaL_Reg methods[] = {
      {"add", o_add},           {"step", o_step},         {"zero_grad", o_zero_grad},
      {"clear_grads", o_clear_grads},
      {"nparams", o_nparams},   {"param", o_param},       {"steps", o_steps},
      {"set_steps", o_set_steps}, {"kind", o_kind},       {"state_names", o_state_names},
      {"state", o_state},       {"init_state", o_init_state}, {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
  luaL_newmetatable(L, M2LUA_OPTIM);
  lua_pushcfunction(L, o_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, o_gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  m2lua_setfuncs(L, -1, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
