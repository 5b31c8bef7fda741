/* bind_core.c — what every binding area uses: located errors, argument checks, m2lua_setfuncs; and the module-level
 * functions of "m2.core" (error, where, interrupted, cuda_available, version). It calls no other binding file: the
 * module itself is put together in bind_module.c. */
#include <stdarg.h>
#include <stdio.h>
#include <limits.h>
#include <string.h>
#include "bind.h"

/* ---------------- where: the first frame outside the m2 library ---------------- */

static char g_libdir[1024];

void m2lua_set_library_dir(const char *dir) {
  if (!dir) { g_libdir[0] = 0; return; }
  snprintf(g_libdir, sizeof g_libdir, "%s", dir);
}

/* Is a chunk source ("@path") part of the m2 Lua library (lua/m2/ *.lua files)? */
static bool in_library(const char *source) {
  if (!source || source[0] != '@') return false;
  const char *path = source + 1;
  if (g_libdir[0] && strncmp(path, g_libdir, strlen(g_libdir)) == 0) return true;
  return strstr(path, "/lua/m2/") != NULL || strncmp(path, "lua/m2/", 7) == 0;
}

void m2lua_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) continue;
    if (ar.currentline <= 0) continue; /* a C function, or no line information */
    if (in_library(ar.source)) continue;
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

/* Raise "WHERE: msg". Not luaL_error: that would prefix the immediate caller's position, which
 * may be a line inside the library. The message is never used as a format string. */
static int raise_located(lua_State *L, const char *msg) {
  m2lua_where(L);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

int m2lua_fail(lua_State *L) {
  const char *msg = m2_errmsg();
  char buf[2048];
  snprintf(buf, sizeof buf, "%s", msg[0] ? msg : "m2 core call failed (no message)");
  m2_clear_error();
  return raise_located(L, buf);
}

int m2lua_error(lua_State *L, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return raise_located(L, buf);
}

int m2lua_argerror(lua_State *L, int arg, const char *extramsg) {
  lua_Debug ar;
  const char *name = "?";
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat && strcmp(ar.namewhat, "method") == 0) {
      arg--; /* do not count self */
      if (arg == 0) return m2lua_error(L, "calling '%s' on bad self (%s)", ar.name ? ar.name : "?", extramsg);
    }
    if (ar.name) name = ar.name;
  }
  return m2lua_error(L, "bad argument #%d to '%s' (%s)", arg, name, extramsg);
}

int m2lua_typeerror(lua_State *L, int arg, const char *tname) {
  const char *got;
  if (luaL_getmetafield(L, arg, "__name") == LUA_TSTRING) got = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA) got = "light userdata";
  else got = luaL_typename(L, arg);
  char buf[256];
  snprintf(buf, sizeof buf, "%s expected, got %s", tname, got);
  return m2lua_argerror(L, arg, buf);
}

/* ---------------- argument checks ---------------- */

int64_t m2lua_checkint(lua_State *L, int arg) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, arg, &isnum);
  if (!isnum) {
    if (lua_isnumber(L, arg)) m2lua_argerror(L, arg, "number has no integer representation");
    else m2lua_typeerror(L, arg, "integer");
  }
  return (int64_t)v;
}

int64_t m2lua_optint(lua_State *L, int arg, int64_t def) {
  return lua_isnoneornil(L, arg) ? def : m2lua_checkint(L, arg);
}

double m2lua_checknum(lua_State *L, int arg) {
  int isnum;
  lua_Number v = lua_tonumberx(L, arg, &isnum);
  if (!isnum) m2lua_typeerror(L, arg, "number");
  return (double)v;
}

double m2lua_optnum(lua_State *L, int arg, double def) {
  return lua_isnoneornil(L, arg) ? def : m2lua_checknum(L, arg);
}

bool m2lua_optbool(lua_State *L, int arg, bool def) {
  if (lua_isnoneornil(L, arg)) return def;
  if (!lua_isboolean(L, arg)) m2lua_typeerror(L, arg, "boolean");
  return lua_toboolean(L, arg);
}

int m2lua_todim(lua_State *L, int arg, int64_t d, int ndim) {
  if (d >= 1 && d <= ndim) return (int)(d - 1);
  if (d < 0 && d >= -(int64_t)ndim) return (int)(ndim + d); /* (not -d: -INT64_MIN overflows) */
  char buf[160];
  if (d == 0)
    snprintf(buf, sizeof buf, "dim 0 is not valid: dims are 1-based (1..%d, or -%d..-1 from the end)", ndim, ndim);
  else if (ndim == 0)
    snprintf(buf, sizeof buf, "dim %lld out of range for a 0-d tensor", (long long)d);
  else
    snprintf(buf, sizeof buf, "dim %lld out of range for a %d-d tensor (1..%d or -%d..-1)", (long long)d, ndim, ndim,
             ndim);
  return m2lua_argerror(L, arg, buf);
}

int m2lua_checkdim(lua_State *L, int arg, int ndim) { return m2lua_todim(L, arg, m2lua_checkint(L, arg), ndim); }

static int64_t shape_entry(lua_State *L, int arg, int64_t v, bool allow_neg) {
  if (v < 0 && !(allow_neg && v == -1)) {
    char buf[96];
    snprintf(buf, sizeof buf, "negative size %lld in shape", (long long)v);
    m2lua_argerror(L, arg, buf);
  }
  return v;
}

int m2lua_checkshape(lua_State *L, int arg, int *ndim, int64_t *shape, bool allow_neg) {
  int n = 0;
  if (lua_istable(L, arg) && !luaL_testudata(L, arg, M2LUA_TENSOR)) { /* (m2lua_istensor, without bind_tensor.c) */
    lua_Integer len = luaL_len(L, arg);
    if (len > M2_MAX_DIMS) {
      char buf[96];
      snprintf(buf, sizeof buf, "shape has %lld dims, at most %d are allowed", (long long)len, M2_MAX_DIMS);
      m2lua_argerror(L, arg, buf);
    }
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, arg, i);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      lua_pop(L, 1);
      if (!isnum) {
        char buf[96];
        snprintf(buf, sizeof buf, "shape entry %lld is not an integer", (long long)i);
        m2lua_argerror(L, arg, buf);
      }
      shape[n++] = shape_entry(L, arg, v, allow_neg);
    }
    *ndim = n;
    return arg + 1;
  }
  int top = lua_gettop(L), a = arg;
  for (; a <= top && lua_type(L, a) == LUA_TNUMBER; a++) {
    if (n == M2_MAX_DIMS) {
      char buf[96];
      snprintf(buf, sizeof buf, "at most %d dims are allowed", M2_MAX_DIMS);
      m2lua_argerror(L, a, buf);
    }
    shape[n++] = shape_entry(L, a, m2lua_checkint(L, a), allow_neg);
  }
  *ndim = n;
  return a;
}

void m2lua_checkopts(lua_State *L, int tbl) {
  if (!lua_isnoneornil(L, tbl) && !lua_istable(L, tbl)) m2lua_typeerror(L, tbl, "table of options");
}

void m2lua_checkkeys(lua_State *L, int tbl, const char *what, const char *const *known) {
  if (!lua_istable(L, tbl)) return;
  tbl = lua_absindex(L, tbl);
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    lua_pop(L, 1); /* the value; the key stays for lua_next */
    bool ok = false;
    if (lua_type(L, -1) == LUA_TSTRING)
      for (const char *const *k = known; *k && !ok; k++) ok = strcmp(lua_tostring(L, -1), *k) == 0;
    if (!ok) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (const char *const *k = known; *k; k++) {
        if (k != known) luaL_addstring(&b, ", ");
        luaL_addstring(&b, *k);
      }
      luaL_pushresult(&b);
      if (lua_type(L, -2) == LUA_TSTRING)
        m2lua_error(L, "%s: unknown option '%s' (known: %s)", what, lua_tostring(L, -2), lua_tostring(L, -1));
      m2lua_error(L, "%s: options are named (known: %s); got a %s key", what, lua_tostring(L, -1),
                  luaL_typename(L, -2));
    }
  }
}

static void field_error(lua_State *L, const char *key, const char *want) {
  m2lua_error(L, "option '%s' must be %s, got %s", key, want, luaL_typename(L, -1));
}

int64_t m2lua_optfield_int(lua_State *L, int tbl, const char *key, int64_t def) {
  if (!lua_istable(L, tbl)) return def;
  lua_getfield(L, tbl, key);
  int64_t v = def;
  if (!lua_isnil(L, -1)) {
    int isnum;
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) field_error(L, key, "an integer");
  }
  lua_pop(L, 1);
  return v;
}

int m2lua_optfield_cint(lua_State *L, int tbl, const char *key, int def) {
  int64_t v = m2lua_optfield_int(L, tbl, key, def);
  if (v < INT_MIN || v > INT_MAX)
    m2lua_error(L, "option '%s' = %lld is out of range (a C int: [%d, %d])", key, (long long)v, INT_MIN, INT_MAX);
  return (int)v;
}

double m2lua_optfield_num(lua_State *L, int tbl, const char *key, double def) {
  if (!lua_istable(L, tbl)) return def;
  lua_getfield(L, tbl, key);
  double v = def;
  if (!lua_isnil(L, -1)) {
    int isnum;
    v = lua_tonumberx(L, -1, &isnum);
    if (!isnum) field_error(L, key, "a number");
  }
  lua_pop(L, 1);
  return v;
}

bool m2lua_optfield_bool(lua_State *L, int tbl, const char *key, bool def) {
  if (!lua_istable(L, tbl)) return def;
  lua_getfield(L, tbl, key);
  bool v = def;
  if (!lua_isnil(L, -1)) {
    if (!lua_isboolean(L, -1)) field_error(L, key, "a boolean");
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* ---------------- module-level functions ---------------- */

/* m2.core.error(msg): raise msg located at the caller's script line (for the Lua library). */
static int l_error(lua_State *L) {
  const char *msg = luaL_checkstring(L, 1);
  return raise_located(L, msg);
}

/* m2.core.where() -> "FILE:LINE: " of the first frame outside the library ("" if none). */
static int l_where(lua_State *L) {
  m2lua_where(L);
  return 1;
}

/* m2.interrupted() -> true after Ctrl-C / SIGTERM. Calling it tells the host that the script
 * polls: the first signal then no longer stops the script by itself (a second one does). The
 * host's state comes from the registry (bind.h, M2LUA_INTERRUPT_KEY). */
static int l_interrupted(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, M2LUA_INTERRUPT_KEY);
  m2lua_interrupt *in = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (in) in->polling = 1;
  lua_pushboolean(L, in && in->signals > 0);
  return 1;
}

static int l_cuda_available(lua_State *L) {
#ifdef M2_HAVE_CUDA
  lua_pushboolean(L, 1);
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

void m2lua_setfuncs(lua_State *L, int mod, const luaL_Reg *fns) {
  mod = lua_absindex(L, mod);
  for (; fns->name; fns++) {
    lua_pushcfunction(L, fns->func);
    lua_setfield(L, mod, fns->name);
  }
}

void m2lua_open_core(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"error", l_error},
      {"where", l_where},
      {"interrupted", l_interrupted},
      {"cuda_available", l_cuda_available},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
  lua_pushstring(L, M2_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, M2_GIT_REV);
  lua_setfield(L, -2, "git_rev");
}
