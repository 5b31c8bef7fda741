/* bind_runfile.c — core/runfile/runfile.h and core/runfile/runfile_sweep.h for Lua: the m2.Run userdata
 * (run files: attributes, metric series, checkpoints), inspect, and the sweep index.
 * lua/m2/train.lua, runs.lua and sweep.lua build on it.
 *
 *   local r <close> = m2.core.run_open("runs/a.h5", {mode = "create", overwrite = false, staged = false,
 *       flush_interval = 5, keep_last = 0, no_fsync = false, device = "cpu", script = src,
 *       config_json = "{}"})           -- mode: "read" (default) | "create" | "resume";
 *                                      -- read also takes open_timeout, no_repair
 *   r:path() r:writable() r:close() r:set_keep_last(k)
 *   r:replace()   (staged = true: rename the new file over the one it overwrites; a close before deletes it)
 *   r:set_attr(key, v) r:set_config{key = v, ...} r:set_status(s)
 *   r:get_attr(key) -> v | nil, msg (absent)      r:attr_names([config_only]) -> {names}
 *   r:log(group, name, step, value) r:set_goal(group, name, "min"|"max") r:flush() r:truncate(step)
 *   r:read_series(group, name) -> steps, values [, times]   (Lua arrays)
 *   r:list_series(group) -> {names}   r:series_stats(group, name) -> {count, last, last_step, best, ...}
 *   r:log_array(name, step, {values})   (/arrays/<name>: one row of width #values)
 *   r:read_array(name) -> steps, rows [, times]   (rows: a Lua array of Lua arrays)   r:list_arrays() -> {names}
 *   r:ckpt_begin(step) r:ckpt_put(path, tensor) r:ckpt_set(key, v) r:ckpt_commit() r:ckpt_abort()
 *   r:ckpt_list() -> {steps}  r:ckpt_latest() -> step | nil  r:ckpt_tensors(step) -> {paths}
 *   r:ckpt_damaged() -> {names} (unreadable ones, not in ckpt_list)  r:ckpt_verify(step) -> true | false, msg
 *   r:ckpt_info(step, path) -> dtype, {shape}  r:ckpt_read(step, path) -> tensor
 *   r:ckpt_read_into(step, path, tensor)  r:ckpt_get(step, key) -> v | nil, msg  r:ckpt_attr_names(step)
 *   m2.core.inspect(path) -> true | false, msg   (prints to stdout; a sweep index gets the table)
 *   m2.core.sweep_index_write(path, {name, script, sweep_source, created, keys = {...},
 *       members = {{name, file, status, exit_code, hparams = {k = v}}, ...}})
 *   m2.core.sweep_index_read(path) -> the same table    m2.core.is_sweep_index(path) -> bool
 *   m2.core.run_is_standard_attr(key) -> bool (a root attribute m2lab itself writes)
 *   m2.core.run_writer_alive(path) -> bool (an m2lab writer holds the file's writer lock)
 *   m2.core.run_writer_pid(path) -> pid | nil (the pid of that writer, when known)
 * Values: Lua integer <-> int64, float <-> float64, boolean <-> bool, string <-> string. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bind.h"
#include "runfile/runfile.h"
#include "runfile/runfile_sweep.h"

#define M2LUA_RUN "m2.Run"

typedef struct run_ud {
  m2_run *r; /* NULL once closed */
} run_ud;

static m2_run *check_run(lua_State *L, int arg) {
  run_ud *u = luaL_testudata(L, arg, M2LUA_RUN);
  if (!u) m2lua_typeerror(L, arg, M2LUA_RUN);
  if (!u->r) m2lua_argerror(L, arg, "run file was already closed");
  return u->r;
}

/* ---------------- values ---------------- */

static m2_value check_value(lua_State *L, int arg) {
  switch (lua_type(L, arg)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, arg)) return m2_vi64((int64_t)lua_tointeger(L, arg));
      return m2_vf64((double)lua_tonumber(L, arg));
    case LUA_TBOOLEAN: return m2_vbool(lua_toboolean(L, arg));
    case LUA_TSTRING: return m2_vstr(lua_tostring(L, arg));
    default: m2lua_typeerror(L, arg, "number, boolean or string");
  }
  return m2_vi64(0);
}

static void push_value(lua_State *L, const m2_value *v) {
  switch (v->kind) {
    case M2_VAL_I64: lua_pushinteger(L, (lua_Integer)v->i); break;
    case M2_VAL_F64: lua_pushnumber(L, v->f); break;
    case M2_VAL_BOOL: lua_pushboolean(L, v->i != 0); break;
    case M2_VAL_STR: lua_pushstring(L, v->s ? v->s : ""); break;
    default: lua_pushnil(L);
  }
}

static void push_strlist(lua_State *L, m2_strlist *l) {
  lua_createtable(L, l->n, 0);
  for (int i = 0; i < l->n; i++) {
    lua_pushstring(L, l->v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  m2_strlist_free(l);
}

/* Push a value read by a core call, or nil + message when it is absent (M2_ERR_INDEX). */
static int return_value(lua_State *L, m2_status st, m2_value *v) {
  if (st == M2_ERR_INDEX) {
    lua_pushnil(L);
    lua_pushstring(L, m2_errmsg());
    m2_clear_error();
    return 2;
  }
  if (st != M2_OK) return m2lua_fail(L);
  push_value(L, v);
  m2_value_free(v);
  return 1;
}

/* ---------------- open / close ---------------- */

static const char *opt_string(lua_State *L, int tbl, const char *key) {
  if (!lua_istable(L, tbl)) return NULL;
  lua_getfield(L, tbl, key);
  const char *s = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) m2lua_error(L, "option '%s' must be a string", key);
    s = lua_tostring(L, -1); /* kept alive by the options table */
  }
  lua_pop(L, 1);
  return s;
}

static int l_run_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  m2lua_checkopts(L, 2);
  m2_run_opts o;
  memset(&o, 0, sizeof o);
  const char *mode = opt_string(L, 2, "mode");
  if (!mode || strcmp(mode, "read") == 0) o.mode = M2_RUN_READ;
  else if (strcmp(mode, "create") == 0) o.mode = M2_RUN_CREATE;
  else if (strcmp(mode, "resume") == 0) o.mode = M2_RUN_RESUME;
  else return m2lua_error(L, "run_open: mode must be \"read\", \"create\" or \"resume\", got \"%s\"", mode);
  o.overwrite = m2lua_optfield_bool(L, 2, "overwrite", false);
  o.staged = m2lua_optfield_bool(L, 2, "staged", false);
  o.flush_interval = m2lua_optfield_num(L, 2, "flush_interval", 0);
  o.open_timeout = m2lua_optfield_num(L, 2, "open_timeout", 0);
  o.keep_last = m2lua_optfield_cint(L, 2, "keep_last", 0);
  o.no_time = m2lua_optfield_bool(L, 2, "no_time", false);
  o.no_fsync = m2lua_optfield_bool(L, 2, "no_fsync", false);
  o.no_repair = m2lua_optfield_bool(L, 2, "no_repair", false);
  o.device = opt_string(L, 2, "device");
  o.script = opt_string(L, 2, "script");
  o.config_json = opt_string(L, 2, "config_json");
  run_ud *u = lua_newuserdatauv(L, sizeof *u, 0); /* created first, filled after */
  u->r = NULL;
  luaL_setmetatable(L, M2LUA_RUN);
  u->r = m2_run_open(path, &o);
  if (!u->r) return m2lua_fail(L);
  return 1;
}

static int r_close(lua_State *L) {
  run_ud *u = luaL_checkudata(L, 1, M2LUA_RUN);
  if (!u->r) return 0;
  m2_run *r = u->r;
  u->r = NULL;
  M2LUA_CHECK(L, m2_run_close(r));
  return 0;
}

/* __gc: close quietly (an error here has nobody to report to) */
static int r_gc(lua_State *L) {
  run_ud *u = luaL_checkudata(L, 1, M2LUA_RUN);
  if (u->r) m2_run_close(u->r);
  u->r = NULL;
  m2_clear_error();
  return 0;
}

static int r_tostring(lua_State *L) {
  run_ud *u = luaL_checkudata(L, 1, M2LUA_RUN);
  if (!u->r) lua_pushliteral(L, "m2.Run (closed)");
  else lua_pushfstring(L, "m2.Run (%s, %s)", m2_run_path(u->r), m2_run_writable(u->r) ? "writer" : "reader");
  return 1;
}

static int r_path(lua_State *L) {
  lua_pushstring(L, m2_run_path(check_run(L, 1)));
  return 1;
}

static int r_replace(lua_State *L) {
  M2LUA_CHECK(L, m2_run_replace(check_run(L, 1)));
  return 0;
}

static int r_writable(lua_State *L) {
  lua_pushboolean(L, m2_run_writable(check_run(L, 1)));
  return 1;
}

static int r_set_keep_last(lua_State *L) {
  m2_run_set_keep_last(check_run(L, 1), (int)m2lua_checkint(L, 2));
  return 0;
}

/* ---------------- attributes ---------------- */

static int r_set_attr(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_set_attr(r, luaL_checkstring(L, 2), check_value(L, 3)));
  return 0;
}

static int r_set_config(lua_State *L) {
  m2_run *r = check_run(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING) return m2lua_error(L, "set_config: keys must be strings");
    M2LUA_CHECK(L, m2_run_set_attr(r, lua_tostring(L, -2), check_value(L, lua_gettop(L))));
    lua_pop(L, 1);
  }
  return 0;
}

static int r_set_status(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_set_status(r, luaL_checkstring(L, 2)));
  return 0;
}

static int r_get_attr(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_value v;
  return return_value(L, m2_run_get_attr(r, luaL_checkstring(L, 2), &v), &v);
}

static int r_attr_names(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_attr_names(r, m2lua_optbool(L, 2, false), &l));
  push_strlist(L, &l);
  return 1;
}

/* ---------------- series ---------------- */

static int r_log(lua_State *L) {
  m2_run *r = check_run(L, 1);
  const char *group = luaL_checkstring(L, 2), *name = luaL_checkstring(L, 3);
  int64_t step = m2lua_checkint(L, 4);
  double v = m2lua_checknum(L, 5);
  M2LUA_CHECK(L, m2_run_log(r, group, name, step, v));
  return 0;
}

static int r_set_goal(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_set_goal(r, luaL_checkstring(L, 2), luaL_checkstring(L, 3), luaL_checkstring(L, 4)));
  return 0;
}

static int r_flush(lua_State *L) {
  M2LUA_CHECK(L, m2_run_flush(check_run(L, 1)));
  return 0;
}

static int r_truncate(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_truncate(r, m2lua_checkint(L, 2)));
  return 0;
}

static int r_read_series(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_series s;
  M2LUA_CHECK(L, m2_run_read_series(r, luaL_checkstring(L, 2), luaL_checkstring(L, 3), &s));
  if (!lua_checkstack(L, 4)) {
    m2_series_free(&s);
    return m2lua_error(L, "read_series: out of Lua stack");
  }
  lua_createtable(L, (int)s.n, 0);
  lua_createtable(L, (int)s.n, 0);
  for (int64_t i = 0; i < s.n; i++) {
    lua_pushinteger(L, (lua_Integer)s.step[i]);
    lua_rawseti(L, -3, (lua_Integer)i + 1);
    lua_pushnumber(L, s.value[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  int nret = 2;
  if (s.time) {
    lua_createtable(L, (int)s.n, 0);
    for (int64_t i = 0; i < s.n; i++) {
      lua_pushnumber(L, s.time[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    nret = 3;
  }
  m2_series_free(&s);
  return nret;
}

static int r_list_series(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_list_series(r, luaL_checkstring(L, 2), &l));
  push_strlist(L, &l);
  return 1;
}

/* ---------------- array series ---------------- */

static int r_log_array(lua_State *L) {
  m2_run *r = check_run(L, 1);
  const char *name = luaL_checkstring(L, 2);
  int64_t step = m2lua_checkint(L, 3);
  if (!lua_istable(L, 4)) return m2lua_typeerror(L, 4, "table of numbers");
  lua_Integer n = (lua_Integer)lua_rawlen(L, 4);
  if (n < 1) return m2lua_error(L, "log_array: /arrays/%s: the row is empty (a Lua array of numbers expected)", name);
  double *row = lua_newuserdatauv(L, sizeof(double) * (size_t)n, 0); /* freed by the GC, even after an error */
  for (lua_Integer i = 1; i <= n; i++) {
    int isnum;
    lua_rawgeti(L, 4, i);
    row[i - 1] = lua_tonumberx(L, -1, &isnum);
    if (!isnum)
      return m2lua_error(L, "log_array: /arrays/%s: value %lld is a %s, not a number", name, (long long)i,
                         luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  M2LUA_CHECK(L, m2_run_log_array(r, name, step, row, (int64_t)n));
  return 0;
}

static int r_read_array(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_array_series a;
  M2LUA_CHECK(L, m2_run_read_array(r, luaL_checkstring(L, 2), &a));
  if (!lua_checkstack(L, 6)) {
    m2_array_series_free(&a);
    return m2lua_error(L, "read_array: out of Lua stack");
  }
  lua_createtable(L, (int)a.n, 0);
  lua_createtable(L, (int)a.n, 0);
  for (int64_t i = 0; i < a.n; i++) {
    lua_pushinteger(L, (lua_Integer)a.step[i]);
    lua_rawseti(L, -3, (lua_Integer)i + 1);
    lua_createtable(L, (int)a.width, 0);
    for (int64_t j = 0; j < a.width; j++) {
      lua_pushnumber(L, a.value[i * a.width + j]);
      lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  int nret = 2;
  if (a.time) {
    lua_createtable(L, (int)a.n, 0);
    for (int64_t i = 0; i < a.n; i++) {
      lua_pushnumber(L, a.time[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    nret = 3;
  }
  m2_array_series_free(&a);
  return nret;
}

static int r_list_arrays(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_list_arrays(r, &l));
  push_strlist(L, &l);
  return 1;
}

static void setnum(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void setint(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static int r_series_stats(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_series_stats s;
  M2LUA_CHECK(L, m2_run_series_stats(r, luaL_checkstring(L, 2), luaL_checkstring(L, 3), &s));
  lua_createtable(L, 0, 10);
  setint(L, "count", s.count);
  setint(L, "last_step", s.last_step);
  setnum(L, "last", s.last);
  lua_pushstring(L, s.goal > 0 ? "max" : "min");
  lua_setfield(L, -2, "goal");
  setnum(L, "best", s.best);
  setint(L, "best_step", s.best_step);
  setnum(L, "min", s.min);
  setnum(L, "max", s.max);
  setint(L, "min_step", s.min_step);
  setint(L, "max_step", s.max_step);
  return 1;
}

/* ---------------- checkpoints ---------------- */

static int r_ckpt_begin(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_ckpt_begin(r, m2lua_checkint(L, 2)));
  return 0;
}

static int r_ckpt_put(lua_State *L) {
  m2_run *r = check_run(L, 1);
  const char *path = luaL_checkstring(L, 2);
  M2LUA_CHECK(L, m2_run_ckpt_put(r, path, m2lua_checktensor(L, 3)));
  return 0;
}

static int r_ckpt_set(lua_State *L) {
  m2_run *r = check_run(L, 1);
  M2LUA_CHECK(L, m2_run_ckpt_set(r, luaL_checkstring(L, 2), check_value(L, 3)));
  return 0;
}

static int r_ckpt_commit(lua_State *L) {
  M2LUA_CHECK(L, m2_run_ckpt_commit(check_run(L, 1)));
  return 0;
}

static int r_ckpt_abort(lua_State *L) {
  M2LUA_CHECK(L, m2_run_ckpt_abort(check_run(L, 1)));
  return 0;
}

static int r_ckpt_list(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_i64list l;
  M2LUA_CHECK(L, m2_run_ckpt_list(r, &l));
  lua_createtable(L, l.n, 0);
  for (int i = 0; i < l.n; i++) {
    lua_pushinteger(L, (lua_Integer)l.v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  m2_i64list_free(&l);
  return 1;
}

static int r_ckpt_damaged(lua_State *L) {
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_ckpt_damaged(check_run(L, 1), &l));
  push_strlist(L, &l);
  return 1;
}

/* -> true, or false and the first error (a damaged tensor or attribute) */
static int r_ckpt_verify(lua_State *L) {
  m2_status st = m2_run_ckpt_verify(check_run(L, 1), m2lua_checkint(L, 2));
  lua_pushboolean(L, st == M2_OK);
  if (st == M2_OK) return 1;
  lua_pushstring(L, m2_errmsg());
  m2_clear_error();
  return 2;
}

static int r_ckpt_latest(lua_State *L) {
  m2_run *r = check_run(L, 1);
  int64_t step;
  m2_status st = m2_run_ckpt_latest(r, &step);
  if (st == M2_ERR_INDEX) {
    m2_clear_error();
    lua_pushnil(L);
    return 1;
  }
  if (st != M2_OK) return m2lua_fail(L);
  lua_pushinteger(L, (lua_Integer)step);
  return 1;
}

static int r_ckpt_tensors(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_ckpt_tensors(r, m2lua_checkint(L, 2), &l));
  push_strlist(L, &l);
  return 1;
}

static int r_ckpt_info(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_dtype dt;
  int nd;
  int64_t shape[M2_MAX_DIMS];
  M2LUA_CHECK(L, m2_run_ckpt_info(r, m2lua_checkint(L, 2), luaL_checkstring(L, 3), &dt, &nd, shape));
  lua_pushstring(L, m2_dtype_name(dt));
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, (lua_Integer)shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 2;
}

static int r_ckpt_read(lua_State *L) {
  m2_run *r = check_run(L, 1);
  int64_t step = m2lua_checkint(L, 2);
  const char *path = luaL_checkstring(L, 3);
  M2LUA_RETURN(L, m2_run_ckpt_read(r, step, path));
}

static int r_ckpt_read_into(lua_State *L) {
  m2_run *r = check_run(L, 1);
  int64_t step = m2lua_checkint(L, 2);
  const char *path = luaL_checkstring(L, 3);
  M2LUA_CHECK(L, m2_run_ckpt_read_into(r, step, path, m2lua_checktensor(L, 4)));
  return 0;
}

static int r_ckpt_get(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_value v;
  int64_t step = m2lua_checkint(L, 2);
  return return_value(L, m2_run_ckpt_get(r, step, luaL_checkstring(L, 3), &v), &v);
}

static int r_ckpt_attr_names(lua_State *L) {
  m2_run *r = check_run(L, 1);
  m2_strlist l;
  M2LUA_CHECK(L, m2_run_ckpt_attr_names(r, m2lua_checkint(L, 2), &l));
  push_strlist(L, &l);
  return 1;
}

/* ---------------- inspect ---------------- */

static int l_inspect(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  fflush(stdout);
  m2_status st = m2_inspect_any(path, stdout);
  fflush(stdout);
  if (st != M2_OK) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, m2_errmsg());
    m2_clear_error();
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---------------- sweep index ---------------- */

static char *field_str(lua_State *L, int tbl, const char *key, bool required) {
  lua_getfield(L, tbl, key);
  char *s = NULL;
  if (lua_type(L, -1) == LUA_TSTRING) s = (char *)lua_tostring(L, -1);
  else if (!lua_isnil(L, -1) || required) m2lua_error(L, "sweep index: field '%s' must be a string", key);
  lua_pop(L, 1); /* the string stays alive: the table holds it */
  return s;
}

static int l_sweep_index_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  m2_sweep_index ix;
  memset(&ix, 0, sizeof ix);
  ix.name = field_str(L, 2, "name", false);
  ix.script = field_str(L, 2, "script", false);
  ix.sweep_source = field_str(L, 2, "sweep_source", false);
  ix.created = field_str(L, 2, "created", false);
  lua_getfield(L, 2, "keys");
  int keys = lua_gettop(L);
  ix.nkeys = lua_istable(L, keys) ? (int)luaL_len(L, keys) : 0;
  lua_getfield(L, 2, "members");
  int mem = lua_gettop(L);
  ix.n = lua_istable(L, mem) ? (int)luaL_len(L, mem) : 0;
  /* scratch memory owned by Lua userdata (kept in the table `scratch`), so an error raised
   * below cannot leak it */
  lua_newtable(L);
  int scratch = lua_gettop(L);
  ix.keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(ix.nkeys + 1), 0);
  ix.members = lua_newuserdatauv(L, sizeof(m2_sweep_member) * (size_t)(ix.n + 1), 0);
  memset(ix.members, 0, sizeof(m2_sweep_member) * (size_t)(ix.n + 1));
  for (int k = 0; k < ix.nkeys; k++) {
    lua_geti(L, keys, k + 1);
    if (lua_type(L, -1) != LUA_TSTRING) return m2lua_error(L, "sweep index: keys must be strings");
    ix.keys[k] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  for (int i = 0; i < ix.n; i++) {
    m2_sweep_member *m = &ix.members[i];
    lua_geti(L, mem, i + 1);
    int mt = lua_gettop(L);
    if (!lua_istable(L, mt)) return m2lua_error(L, "sweep index: member %d is not a table", i + 1);
    m->name = field_str(L, mt, "name", true);
    m->file = field_str(L, mt, "file", true);
    m->status = field_str(L, mt, "status", false);
    m->exit_code = m2lua_optfield_int(L, mt, "exit_code", -1);
    lua_getfield(L, mt, "hparams");
    int hp = lua_gettop(L);
    int nh = 0;
    if (lua_istable(L, hp)) {
      lua_pushnil(L);
      while (lua_next(L, hp)) {
        nh++;
        lua_pop(L, 1);
      }
    }
    m->hparams = lua_newuserdatauv(L, sizeof(m2_kv) * (size_t)(nh + 1), 0);
    lua_rawseti(L, scratch, i + 1);
    if (nh > 0) {
      lua_pushnil(L);
      while (lua_next(L, hp)) {
        if (lua_type(L, -2) != LUA_TSTRING) return m2lua_error(L, "sweep index: hyper-parameter names must be strings");
        m->hparams[m->nh].key = lua_tostring(L, -2);
        m->hparams[m->nh].v = check_value(L, lua_gettop(L));
        m->nh++;
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 2); /* hparams, member */
  }
  M2LUA_CHECK(L, m2_sweep_index_write(path, &ix));
  return 0;
}

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v ? v : "");
  lua_setfield(L, -2, k);
}

static int l_sweep_index_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  m2_sweep_index ix;
  M2LUA_CHECK(L, m2_sweep_index_read(path, &ix));
  lua_createtable(L, 0, 6);
  set_str(L, "name", ix.name);
  set_str(L, "script", ix.script);
  set_str(L, "sweep_source", ix.sweep_source);
  set_str(L, "created", ix.created);
  lua_createtable(L, ix.nkeys, 0);
  for (int k = 0; k < ix.nkeys; k++) {
    lua_pushstring(L, ix.keys[k]);
    lua_rawseti(L, -2, k + 1);
  }
  lua_setfield(L, -2, "keys");
  lua_createtable(L, ix.n, 0);
  for (int i = 0; i < ix.n; i++) {
    m2_sweep_member *m = &ix.members[i];
    lua_createtable(L, 0, 5);
    set_str(L, "name", m->name);
    set_str(L, "file", m->file);
    set_str(L, "status", m->status);
    setint(L, "exit_code", m->exit_code);
    lua_createtable(L, 0, m->nh);
    for (int j = 0; j < m->nh; j++) {
      push_value(L, &m->hparams[j].v);
      lua_setfield(L, -2, m->hparams[j].key);
    }
    lua_setfield(L, -2, "hparams");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "members");
  m2_sweep_index_free(&ix);
  return 1;
}

static int l_run_is_standard_attr(lua_State *L) {
  lua_pushboolean(L, m2_run_is_standard_attr(luaL_checkstring(L, 1)));
  return 1;
}

static int l_run_writer_pid(lua_State *L) {
  long pid = m2_run_writer_pid(luaL_checkstring(L, 1));
  if (pid > 0) lua_pushinteger(L, (lua_Integer)pid);
  else lua_pushnil(L);
  return 1;
}

static int l_run_writer_alive(lua_State *L) {
  lua_pushboolean(L, m2_run_writer_alive(luaL_checkstring(L, 1)));
  return 1;
}

static int l_is_sweep_index(lua_State *L) {
  lua_pushboolean(L, m2_is_sweep_index(luaL_checkstring(L, 1)));
  return 1;
}

void m2lua_open_runfile(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"close", r_close},
      {"path", r_path},
      {"replace", r_replace},
      {"writable", r_writable},
      {"set_keep_last", r_set_keep_last},
      {"set_attr", r_set_attr},
      {"set_config", r_set_config},
      {"set_status", r_set_status},
      {"get_attr", r_get_attr},
      {"attr_names", r_attr_names},
      {"log", r_log},
      {"set_goal", r_set_goal},
      {"flush", r_flush},
      {"truncate", r_truncate},
      {"read_series", r_read_series},
      {"list_series", r_list_series},
      {"series_stats", r_series_stats},
      {"log_array", r_log_array},
      {"read_array", r_read_array},
      {"list_arrays", r_list_arrays},
      {"ckpt_begin", r_ckpt_begin},
      {"ckpt_put", r_ckpt_put},
      {"ckpt_set", r_ckpt_set},
      {"ckpt_commit", r_ckpt_commit},
      {"ckpt_abort", r_ckpt_abort},
      {"ckpt_list", r_ckpt_list},
      {"ckpt_latest", r_ckpt_latest},
      {"ckpt_damaged", r_ckpt_damaged},
      {"ckpt_verify", r_ckpt_verify},
      {"ckpt_tensors", r_ckpt_tensors},
      {"ckpt_info", r_ckpt_info},
      {"ckpt_read", r_ckpt_read},
      {"ckpt_read_into", r_ckpt_read_into},
      {"ckpt_get", r_ckpt_get},
      {"ckpt_attr_names", r_ckpt_attr_names},
      {NULL, NULL},
  };
  static const luaL_Reg fns[] = {
      {"run_open", l_run_open},
      {"inspect", l_inspect},
      {"sweep_index_write", l_sweep_index_write},
      {"sweep_index_read", l_sweep_index_read},
      {"is_sweep_index", l_is_sweep_index},
      {"run_writer_alive", l_run_writer_alive},
      {"run_writer_pid", l_run_writer_pid},
      {"run_is_standard_attr", l_run_is_standard_attr},
      {NULL, NULL},
  };
  int mod = lua_gettop(L);
  if (luaL_newmetatable(L, M2LUA_RUN)) {
    lua_newtable(L);
    m2lua_setfuncs(L, -1, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, r_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, r_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, r_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  m2lua_setfuncs(L, mod, fns);
}
