/* bind_data.c — datasets/ for Lua: the m2.Group userdata (the group word problem of DESIGN section 5) and the
 * m2.Shards userdata (token shards, datasets/shards.h). lua/m2/data.lua wraps them into m2.data.state_tracking{...}
 * and m2.data.tokens{...}.
 *
 *   local g <close> = m2.core.group("S3")       -- "S3", "S5", "A5", "Z7", ... (case-insensitive)
 *   g:order() -> 6   g:name() -> "S3"   g:mul(a, b) -> a * b (element ids, 0-based: data)
 *   g:batch{seed = 0, index = 0, batch = 64, length = 32, random_length = false}
 *     -> x, y: (B, T) int64 tensors; y[t] = x_1 * ... * x_t, -100 past a random length
 *
 *   local s <close> = m2.core.shards(paths, {vocab = 50257})   -- paths: a glob pattern or a list of files
 *   s:count()  s:tokens()  s:path(i)  s:shard_tokens(i)  s:width(i)   (i = 1 .. count)
 *   s:windows(T) -> tiles of T tokens in one epoch
 *   s:batch{seed, index, batch, length, rank = 0, world = 1, shuffle = true} -> x, y: (B, T) int64
 *   s:window(k, {seed, length, shuffle}) -> i, pos: where global window k starts (shard 1-based, token 0-based)
 *   s:read(i, pos, n) -> (n) int64 tensor of tokens [pos, pos + n) of shard i
 *   m2.core.shard_write(path, tokens, version = 0)   -- tokens: an integer tensor or a list; version 0 = smallest */
#include <string.h>
#include "bind.h"
#include "../datasets/groups.h"
#include "../datasets/shards.h"

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


/* ---- token shards ---- */

#define M2LUA_SHARDS "m2.Shards"

typedef struct shards_ud {
  m2_shards *s; /* NULL once closed */
} shards_ud;

static m2_shards *check_shards(lua_State *L, int arg) {
  shards_ud *u = luaL_testudata(L, arg, M2LUA_SHARDS);
  if (!u) m2lua_typeerror(L, arg, M2LUA_SHARDS);
  if (!u->s) m2lua_argerror(L, arg, "token shards were already closed");
  return u->s;
}

static int s_gc(lua_State *L) {
  shards_ud *u = luaL_checkudata(L, 1, M2LUA_SHARDS);
  m2_shards_close(u->s);
  u->s = NULL;
  return 0;
}

/* m2.core.shards(pattern | {path, ...}, {vocab = n}) -> m2.Shards */
static int l_shards(lua_State *L) {
  if (!lua_isstring(L, 1) && !lua_istable(L, 1)) return m2lua_typeerror(L, 1, "string (glob) or list of paths");
  m2lua_checkopts(L, 2);
  m2_shards_opts o = {m2lua_optfield_int(L, 2, "vocab", 0)};
  if (o.vocab < 0) return m2lua_error(L, "token shards: vocab must be >= 0, got %lld", (long long)o.vocab);
  shards_ud *u = lua_newuserdatauv(L, sizeof *u, 0); /* created first, filled after */
  u->s = NULL;
  luaL_setmetatable(L, M2LUA_SHARDS);
  if (lua_isstring(L, 1)) {
    u->s = m2_shards_open_glob(lua_tostring(L, 1), &o);
  } else {
    lua_Integer n = luaL_len(L, 1);
    if (n <= 0 || n > (1 << 30)) return m2lua_argerror(L, 1, "expected a non-empty list of shard paths");
    const char **paths = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0); /* freed by the GC */
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 1, i);
      if (!lua_isstring(L, -1)) return m2lua_argerror(L, 1, "every shard path must be a string");
      paths[i - 1] = lua_tostring(L, -1);
      lua_pop(L, 1); /* the string stays alive: the table at 1 holds it */
    }
    u->s = m2_shards_open((int)n, paths, &o);
    lua_pop(L, 1);
  }
  if (!u->s) return m2lua_fail(L);
  return 1;
}

static int shard_index(lua_State *L, m2_shards *s, int arg) {
  int64_t i = m2lua_checkint(L, arg);
  if (i < 1 || i > m2_shards_count(s)) return m2lua_argerror(L, arg, "shard number out of range (1 .. count)");
  return (int)i - 1;
}

static int s_count(lua_State *L) {
  lua_pushinteger(L, m2_shards_count(check_shards(L, 1)));
  return 1;
}
static int s_tokens(lua_State *L) {
  lua_pushinteger(L, m2_shards_tokens(check_shards(L, 1)));
  return 1;
}
static int s_path(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  lua_pushstring(L, m2_shards_path(s, shard_index(L, s, 2)));
  return 1;
}
static int s_shard_tokens(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  lua_pushinteger(L, m2_shards_shard_tokens(s, shard_index(L, s, 2)));
  return 1;
}
static int s_width(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  lua_pushinteger(L, m2_shards_width(s, shard_index(L, s, 2)));
  return 1;
}
static int s_windows(lua_State *L) {
  lua_pushinteger(L, m2_shards_windows(check_shards(L, 1), m2lua_checkint(L, 2)));
  return 1;
}

static m2_window_opts window_opts(lua_State *L, int tbl) {
  m2lua_checkopts(L, tbl);
  int64_t rank = m2lua_optfield_int(L, tbl, "rank", 0), world = m2lua_optfield_int(L, tbl, "world", 1);
  if (world < 1 || world > (1 << 20)) m2lua_error(L, "token batch: world must be 1 .. 2^20, got %lld", (long long)world);
  if (rank < 0 || rank >= world)
    m2lua_error(L, "token batch: rank %lld is not in 0 .. world - 1 = %lld", (long long)rank, (long long)world - 1);
  m2_window_opts o = {(uint64_t)m2lua_optfield_int(L, tbl, "seed", 0), m2lua_optfield_int(L, tbl, "index", 0),
                      m2lua_optfield_int(L, tbl, "batch", 0), m2lua_optfield_int(L, tbl, "length", 0), (int)rank,
                      (int)world, m2lua_optfield_bool(L, tbl, "shuffle", true)};
  return o;
}

/* s:batch{seed, index, batch, length, rank, world, shuffle} -> x, y */
static int s_batch(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  m2_window_opts o = window_opts(L, 2);
  m2_tensor **sx = m2lua_newtensor(L), **sy = m2lua_newtensor(L), *x = NULL, *y = NULL;
  M2LUA_CHECK(L, m2_shards_batch(s, &o, &x, &y));
  *sx = x;
  *sy = y;
  m2lua_account(L, x);
  m2lua_account(L, y);
  return 2;
}

/* s:window(k, {seed, length, shuffle, rank, world}) -> shard (1-based), pos (0-based) */
static int s_window(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  int64_t k = m2lua_checkint(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  m2_window_opts o = window_opts(L, 3);
  if (o.batch == 0) o.batch = 1;
  int sh;
  int64_t pos;
  M2LUA_CHECK(L, m2_shards_window_at(s, &o, k, &sh, &pos));
  lua_pushinteger(L, sh + 1);
  lua_pushinteger(L, pos);
  return 2;
}

/* s:read(i, pos, n) -> (n) int64 tensor */
static int s_read(lua_State *L) {
  m2_shards *s = check_shards(L, 1);
  int i = shard_index(L, s, 2);
  int64_t pos = m2lua_checkint(L, 3), n = m2lua_checkint(L, 4);
  if (n < 0) return m2lua_argerror(L, 4, "count must be >= 0");
  m2_tensor **slot = m2lua_newtensor(L);
  m2_tensor *t = m2_empty(M2_I64, M2_DEV_CPU, 1, &n);
  if (!t) return m2lua_fail(L);
  if (m2_shards_read(s, i, pos, n, m2_data(t)) != M2_OK) {
    m2_release(t);
    return m2lua_fail(L);
  }
  *slot = t;
  m2lua_account(L, t);
  return 1;
}

/* m2.core.shard_write(path, tokens (integer tensor or list), version = 0) */
static int l_shard_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int64_t version = m2lua_optint(L, 3, 0);
  int64_t n;
  uint32_t *buf;
  if (m2lua_istensor(L, 2)) {
    m2_tensor *t = m2lua_checktensor(L, 2);
    n = m2_numel(t);
    int64_t *tmp = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(n ? n : 1), 0);
    if (m2_to_host(t, M2_I64, tmp) != M2_OK) return m2lua_fail(L);
    buf = lua_newuserdatauv(L, sizeof(uint32_t) * (size_t)(n ? n : 1), 0);
    for (int64_t i = 0; i < n; i++) {
      if (tmp[i] < 0 || tmp[i] > (int64_t)UINT32_MAX)
        return m2lua_error(L, "%s: token %lld at position %lld is not a token id (0 .. 2^32 - 1)", path,
                           (long long)tmp[i], (long long)i);
      buf[i] = (uint32_t)tmp[i];
    }
  } else {
    luaL_checktype(L, 2, LUA_TTABLE);
    n = luaL_len(L, 2);
    buf = lua_newuserdatauv(L, sizeof(uint32_t) * (size_t)(n ? n : 1), 0);
    for (int64_t i = 0; i < n; i++) {
      lua_geti(L, 2, i + 1);
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      lua_pop(L, 1);
      if (!isint || v < 0 || v > (lua_Integer)UINT32_MAX)
        return m2lua_error(L, "%s: entry %lld of the token list is not a token id (an integer 0 .. 2^32 - 1)", path,
                           (long long)i + 1);
      buf[i] = (uint32_t)v;
    }
  }
  M2LUA_CHECK(L, m2_shard_write(path, buf, n, (int)version));
  return 0;
}

void m2lua_open_data(lua_State *L) {
  static const luaL_Reg fns[] = {{"group", l_group}, {"shards", l_shards}, {"shard_write", l_shard_write}, {NULL, NULL}};
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
  static const luaL_Reg smethods[] = {
      {"count", s_count}, {"tokens", s_tokens}, {"path", s_path}, {"shard_tokens", s_shard_tokens},
      {"width", s_width}, {"windows", s_windows}, {"batch", s_batch}, {"window", s_window}, {"read", s_read},
      {"close", s_gc}, {NULL, NULL},
  };
  luaL_newmetatable(L, M2LUA_SHARDS);
  lua_pushcfunction(L, s_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, s_gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  luaL_setfuncs(L, smethods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
