/* bind_data.c — datasets/groups.h for Lua: the m2.Group userdata (the group word problem of
 * DESIGN section 5). lua/m2/data.lua wraps it into m2.data.state_tracking{...}.
 *
 *   local g <close> = m2.core.group("S3")       -- "S3", "S5", "A5", "Z7", ... (case-insensitive)
 *   g:order() -> 6   g:name() -> "S3"   g:mul(a, b) -> a * b (element ids, 0-based: data)
 *   g:batch{seed = 0, index = 0, batch = 64, length = 32, random_length = false}
 *     -> x, y: (B, T) int64 tensors; y[t] = x_1 * ... * x_t, -100 past a random length */
#include <string.h>
#include "bind.h"
#include "../datasets/groups.h"

#define M2LUA_GROUP "m2.Group"

typedef struct group_ud {
  m2_group *g; /* NULL once closed */
} group_ud;

static m2_group *check_group(lua_State *L, int arg) {
  group_ud *u = luaL_testudata(L, arg, M2LUA_GROUP);
  if (!u) m2lua_typeerror(L, arg, M2LUA_GROUP);
  if (!u->g) m2lua_argerror(L, arg, "group was already closed");
  return u->g;
}

static int g_gc(lua_State *L) {
  group_ud *u = luaL_checkudata(L, 1, M2LUA_GROUP);
  if (u->g) m2_group_free(u->g);
  u->g = NULL;
  return 0;
}

/* m2.core.group(name) -> m2.Group */
static int l_group(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  group_ud *u = lua_newuserdatauv(L, sizeof *u, 0); /* created first, filled after */
  u->g = NULL;
  luaL_setmetatable(L, M2LUA_GROUP);
  u->g = m2_group_new(name);
  if (!u->g) return m2lua_fail(L);
  return 1;
}

static int g_order(lua_State *L) {
  lua_pushinteger(L, m2_group_order(check_group(L, 1)));
  return 1;
}

static int g_name(lua_State *L) {
  lua_pushstring(L, m2_group_name(check_group(L, 1)));
  return 1;
}

/* g:mul(a, b) with element ids 0 .. order-1 */
static int g_mul(lua_State *L) {
  m2_group *g = check_group(L, 1);
  int64_t a = m2lua_checkint(L, 2), b = m2lua_checkint(L, 3), n = m2_group_order(g);
  if (a < 0 || a >= n) return m2lua_argerror(L, 2, "element id out of range (0 .. order-1)");
  if (b < 0 || b >= n) return m2lua_argerror(L, 3, "element id out of range (0 .. order-1)");
  lua_pushinteger(L, m2_group_mul(g, (int)a, (int)b));
  return 1;
}

/* g:batch{seed, index, batch, length, random_length} -> x, y */
static int g_batch(lua_State *L) {
  m2_group *g = check_group(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int64_t seed = m2lua_optfield_int(L, 2, "seed", 0), index = m2lua_optfield_int(L, 2, "index", 0);
  if (index < 0) return m2lua_error(L, "group batch: index must be >= 0, got %lld", (long long)index);
  m2_group_batch_opts o = {(uint64_t)seed, index, m2lua_optfield_int(L, 2, "batch", 0),
                           m2lua_optfield_int(L, 2, "length", 0), m2lua_optfield_bool(L, 2, "random_length", false)};
  m2_tensor **sx = m2lua_newtensor(L), **sy = m2lua_newtensor(L), *x = NULL, *y = NULL;
  /* the slots are filled only on success (on failure the core may leave x, y dangling) */
  M2LUA_CHECK(L, m2_group_batch(g, &o, &x, &y));
  *sx = x;
  *sy = y;
  m2lua_account(L, x);
  m2lua_account(L, y);
  return 2;
}

void m2lua_open_data(lua_State *L) {
  static const luaL_Reg fns[] = {{"group", l_group}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"order", g_order}, {"name", g_name}, {"mul", g_mul}, {"batch", g_batch}, {"close", g_gc}, {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
  luaL_newmetatable(L, M2LUA_GROUP);
  lua_pushcfunction(L, g_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, g_gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
