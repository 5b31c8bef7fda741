/* bind_dist.c — core/dist.h and core/dist_dp.h for Lua: the process group (m2.Dist) and data parallelism (m2.DP).
 * lua/m2/dist.lua wraps them (m2.dist) and lua/m2/train.lua calls that.
 *
 *   m2.core.dist_env() -> {rank, world, local_rank, source, master_addr, master_port, under_mpi}
 *   m2.core.dist_backends() -> "self, mpi, ..."     m2.core.dist_cuda_count() -> CUDA devices visible
 *   m2.core.dist_init{backend = "auto", device = "cpu", timeout = 300} -> m2.Dist
 *     g:rank() g:world() g:local_rank() g:backend() g:source()
 *     g:allreduce_sum(t) g:reduce_scatter_sum(send, recv) g:allgather(send, recv) g:broadcast(t, root) g:barrier()
 *     g:check_same(what, text)                 -- error on every rank unless every rank passed the same text
 *     g:allgather_numbers({x1, ..., xk}) -> {{rank 0's k numbers}, {rank 1's}, ...}   (doubles)
 *     g:broadcast_string(s, root) -> the root's string (s ignored on other ranks)
 *     g:alltoallv(send, send_counts, recv, recv_counts)  -- counts: Lua lists of world element counts (dist.h)
 *     g:moe_dispatch(xp, offsets, experts) -> xl, loff, counts   g:moe_combine(yl, counts) -> yp
 *                                              -- expert parallelism's token exchange (core/ops_moe_ep.h), autograd ops
 *     g:close([abort])                         -- also at garbage collection; abort takes the other ranks down
 *     g:abort_at_exit()                        -- a failed rank: close() will abort instead of waiting for the others
 *   m2.core.dp_new(g, optimizer, {bucket = 2^24, zero = false, rank_local = {i, ...}}) -> m2.DP
 *     (rank_local: 1-based indices of the optimizer's parameters that each rank holds alone: expert parallelism)
 *     dp:sync_grads() dp:clip(max_norm) -> norm dp:step(lr) dp:broadcast_params(root)
 *     dp:full_state(i, j) -> tensor | nil   dp:load_state(i, j, t)   dp:nbuckets()  dp:elems()   (i, j 1-based) */
#include <string.h>
#include "bind.h"

#define M2LUA_DIST "m2.Dist"
#define M2LUA_DP "m2.DP"

typedef struct dist_ud {
  m2_dist *g; /* NULL once closed */
  bool abort_at_exit;
} dist_ud;

typedef struct dp_ud {
  m2_dp *dp; /* NULL once closed; user values 1 and 2 keep the group and the optimizer alive */
} dp_ud;

static dist_ud *check_dist_ud(lua_State *L, int arg) {
  dist_ud *u = luaL_testudata(L, arg, M2LUA_DIST);
  if (!u) m2lua_typeerror(L, arg, M2LUA_DIST);
  return u;
}

static m2_dist *check_dist(lua_State *L, int arg) {
  dist_ud *u = check_dist_ud(L, arg);
  if (!u->g) m2lua_argerror(L, arg, "the process group was already closed");
  return u->g;
}

static m2_dp *check_dp(lua_State *L, int arg) {
  dp_ud *u = luaL_testudata(L, arg, M2LUA_DP);
  if (!u) m2lua_typeerror(L, arg, M2LUA_DP);
  if (!u->dp) m2lua_argerror(L, arg, "the data-parallel state was already closed");
  return u->dp;
}

static void push_env(lua_State *L, const m2_dist_env *e) {
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, e->rank), lua_setfield(L, -2, "rank");
  lua_pushinteger(L, e->world), lua_setfield(L, -2, "world");
  lua_pushinteger(L, e->local_rank), lua_setfield(L, -2, "local_rank");
  lua_pushstring(L, e->source), lua_setfield(L, -2, "source");
  lua_pushstring(L, e->master_addr), lua_setfield(L, -2, "master_addr");
  lua_pushinteger(L, e->master_port), lua_setfield(L, -2, "master_port");
  lua_pushboolean(L, e->under_mpi), lua_setfield(L, -2, "under_mpi");
}

static int l_dist_env(lua_State *L) {
  m2_dist_env e;
  M2LUA_CHECK(L, m2_dist_env_parse(NULL, NULL, &e));
  push_env(L, &e);
  return 1;
}

/* m2.core.dist_cuda_count() -> the CUDA devices this process sees (0 without the CUDA backend or a GPU) */
static int l_dist_cuda_count(lua_State *L) {
  lua_pushinteger(L, m2_device_count(M2_CUDA));
  return 1;
}

static int l_dist_backends(lua_State *L) {
  lua_pushstring(L, m2_dist_backend_names());
  return 1;
}

static int d_close(lua_State *L) {
  dist_ud *u = luaL_checkudata(L, 1, M2LUA_DIST);
  bool abort = lua_toboolean(L, 2) || u->abort_at_exit;
  if (u->g) m2_dist_free(u->g, abort);
  u->g = NULL;
  return 0;
}

static int d_gc(lua_State *L) {
  lua_settop(L, 1);
  return d_close(L);
}

static const char *const DIST_KEYS[] = {"backend", "device", "timeout", NULL};

/* m2.core.dist_init{backend, device, timeout} */
static int l_dist_init(lua_State *L) {
  m2lua_checkopts(L, 1);
  m2lua_checkkeys(L, 1, "dist_init", DIST_KEYS);
  m2_dist_opts o = {0};
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "backend");
    o.backend = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_getfield(L, 1, "device");
    const char *dev = lua_isnil(L, -1) ? "cpu" : luaL_checkstring(L, -1);
    o.devtype = strncmp(dev, "cuda", 4) == 0 ? M2_CUDA : M2_CPU;
    lua_pop(L, 2);
    o.timeout_s = m2lua_optfield_num(L, 1, "timeout", 0);
  }
  dist_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->g = NULL;
  u->abort_at_exit = false;
  luaL_setmetatable(L, M2LUA_DIST);
  u->g = m2_dist_init(&o);
  if (!u->g) return m2lua_fail(L);
  /* the host's signal counter (bind.h): a wait gives up after a second Ctrl-C, or a while after the first */
  lua_getfield(L, LUA_REGISTRYINDEX, M2LUA_INTERRUPT_KEY);
  m2lua_interrupt *intr = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (intr) u->g->cancel = (volatile const int *)&intr->signals;
  return 1;
}

static int d_rank(lua_State *L) { lua_pushinteger(L, check_dist(L, 1)->env.rank); return 1; }
static int d_world(lua_State *L) { lua_pushinteger(L, check_dist(L, 1)->env.world); return 1; }
static int d_local_rank(lua_State *L) { lua_pushinteger(L, check_dist(L, 1)->env.local_rank); return 1; }
static int d_backend(lua_State *L) { lua_pushstring(L, check_dist(L, 1)->backend->name); return 1; }
static int d_source(lua_State *L) { lua_pushstring(L, check_dist(L, 1)->env.source); return 1; }

static int d_allreduce_sum(lua_State *L) {
  M2LUA_CHECK(L, m2_dist_allreduce_sum(check_dist(L, 1), m2lua_checktensor(L, 2)));
  return 0;
}

static int d_reduce_scatter_sum(lua_State *L) {
  M2LUA_CHECK(L, m2_dist_reduce_scatter_sum(check_dist(L, 1), m2lua_checktensor(L, 2), m2lua_checktensor(L, 3)));
  return 0;
}

static int d_allgather(lua_State *L) {
  M2LUA_CHECK(L, m2_dist_allgather(check_dist(L, 1), m2lua_checktensor(L, 2), m2lua_checktensor(L, 3)));
  return 0;
}

static int d_broadcast(lua_State *L) {
  M2LUA_CHECK(L, m2_dist_broadcast(check_dist(L, 1), m2lua_checktensor(L, 2), (int)m2lua_optint(L, 3, 0)));
  return 0;
}

static int d_barrier(lua_State *L) {
  M2LUA_CHECK(L, m2_dist_barrier(check_dist(L, 1)));
  return 0;
}

static int d_check_same(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  const char *what = luaL_checkstring(L, 2);
  size_t n;
  const char *text = luaL_checklstring(L, 3, &n);
  M2LUA_CHECK(L, m2_dist_check_same(g, what, text, n));
  return 0;
}

/* g:allgather_numbers({x1..xk}) -> {{...}, ...}: every rank passes k numbers (the same k) */
static int d_allgather_numbers(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int k = (int)luaL_len(L, 2), R = g->env.world;
  if (k < 1 || k > 4096) return m2lua_error(L, "allgather_numbers: expected 1 to 4096 numbers, got %d", k);
  double *buf = lua_newuserdatauv(L, sizeof(double) * (size_t)k * (size_t)(R + 1), 0);
  for (int i = 0; i < k; i++) {
    lua_geti(L, 2, i + 1);
    int ok = 0;
    buf[i] = lua_tonumberx(L, -1, &ok);
    if (!ok) return m2lua_error(L, "allgather_numbers: entry %d is not a number", i + 1);
    lua_pop(L, 1);
  }
  /* every rank sends k too, so that a rank with another count is an error, not garbage */
  double *all = buf + k;
  M2LUA_CHECK(L, m2_dist_allgather_host(g, buf, all, sizeof(double) * (size_t)k));
  lua_createtable(L, R, 0);
  for (int r = 0; r < R; r++) {
    lua_createtable(L, k, 0);
    for (int i = 0; i < k; i++) {
      lua_pushnumber(L, all[(size_t)r * (size_t)k + (size_t)i]);
      lua_rawseti(L, -2, i + 1);
    }
    lua_rawseti(L, -2, r + 1);
  }
  return 1;
}

/* g:broadcast_string(s, root) -> root's s: its length first, then the bytes */
static int d_broadcast_string(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  int root = (int)m2lua_optint(L, 3, 0);
  size_t n = 0;
  const char *s = g->env.rank == root ? luaL_checklstring(L, 2, &n) : "";
  int64_t len = (int64_t)n;
  m2_tensor *lt = m2_from_data(M2_I64, M2_DEV_CPU, 1, (int64_t[]){1}, &len);
  if (!lt) return m2lua_fail(L);
  m2_status st = m2_dist_broadcast(g, lt, root);
  len = st == M2_OK ? *(int64_t *)m2_data(lt) : 0;
  m2_release(lt);
  if (st != M2_OK) return m2lua_fail(L);
  int64_t words = len > 0 ? (len + 3) / 4 : 1; /* the bytes travel in an i32 tensor */
  m2_tensor *bt = m2_zeros(M2_I32, M2_DEV_CPU, 1, &words);
  if (!bt) return m2lua_fail(L);
  if (g->env.rank == root) memcpy(m2_data(bt), s, n);
  if (len > 0) st = m2_dist_broadcast(g, bt, root);
  if (st == M2_OK) lua_pushlstring(L, m2_data(bt), (size_t)len);
  m2_release(bt);
  if (st != M2_OK) return m2lua_fail(L);
  return 1;
}

/* a Lua list of world non-negative integers (argument arg) into out */
static void check_counts(lua_State *L, int arg, int world, int64_t *out) {
  luaL_checktype(L, arg, LUA_TTABLE);
  if ((int)luaL_len(L, arg) != world)
    m2lua_argerror(L, arg, "expected a list of one element count per rank");
  for (int q = 0; q < world; q++) {
    lua_geti(L, arg, q + 1);
    int ok = 0;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    lua_pop(L, 1);
    if (!ok || v < 0) m2lua_argerror(L, arg, "counts must be integers >= 0");
    out[q] = (int64_t)v;
  }
}

static int d_alltoallv(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  m2_tensor *send = m2lua_checktensor(L, 2), *recv = m2lua_checktensor(L, 4);
  int64_t *c = lua_newuserdatauv(L, sizeof(int64_t) * 2 * (size_t)g->env.world, 0);
  check_counts(L, 3, g->env.world, c);
  check_counts(L, 5, g->env.world, c + g->env.world);
  M2LUA_CHECK(L, m2_dist_alltoallv(g, send, c, recv, c + g->env.world));
  return 0;
}

/* g:moe_dispatch(xp (M, d), offsets (E + 1) i64, E) -> xl (Ml, d), loff (E/R + 1) i64, counts (R, E) i64 */
static int d_moe_dispatch(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  m2_tensor *xp = m2lua_checktensor(L, 2), *off = m2lua_checktensor(L, 3);
  int64_t E = m2lua_checkint(L, 4);
  m2_tensor **s[3], *o[3] = {0};
  for (int i = 0; i < 3; i++) s[i] = m2lua_newtensor(L);
  M2LUA_CHECK(L, m2_moe_dispatch(g, xp, off, E, &o[0], &o[1], &o[2]));
  for (int i = 0; i < 3; i++) {
    *s[i] = o[i];
    m2lua_account(L, o[i]);
  }
  return 3;
}

/* g:moe_combine(yl (Ml, d), counts (R, E)) -> yp (M, d) */
static int d_moe_combine(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  m2_tensor *yl = m2lua_checktensor(L, 2), *cnt = m2lua_checktensor(L, 3);
  M2LUA_RETURN(L, m2_moe_combine(g, yl, cnt));
}

static int d_abort_at_exit(lua_State *L) {
  check_dist_ud(L, 1)->abort_at_exit = lua_isnone(L, 2) ? true : lua_toboolean(L, 2);
  return 0;
}

/* ---------------- data parallelism ---------------- */

static const char *const DP_KEYS[] = {"bucket", "zero", "rank_local", NULL};

static int l_dp_new(lua_State *L) {
  m2_dist *g = check_dist(L, 1);
  m2_optim *o = m2lua_checkoptim(L, 2);
  m2lua_checkopts(L, 3);
  m2lua_checkkeys(L, 3, "dp_new", DP_KEYS);
  m2_dp_opts opts = {m2lua_optfield_int(L, 3, "bucket", 0), m2lua_optfield_bool(L, 3, "zero", false), NULL};
  int n = m2_optim_nparams(o);
  bool *local = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *local, 0); /* (collected with the call's stack) */
  memset(local, 0, (size_t)(n ? n : 1) * sizeof *local);
  if (lua_istable(L, 3)) lua_getfield(L, 3, "rank_local");
  else lua_pushnil(L);
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    for (lua_Integer k = 1, len = luaL_len(L, -1); k <= len; k++) {
      lua_geti(L, -1, k);
      lua_Integer i = lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (i < 1 || i > n) return m2lua_error(L, "dp_new: rank_local entry %d is not a parameter index in 1 .. %d", (int)k, n);
      local[i - 1] = true;
    }
    opts.rank_local = local;
  }
  lua_pop(L, 1);
  dp_ud *u = lua_newuserdatauv(L, sizeof *u, 2);
  u->dp = NULL;
  luaL_setmetatable(L, M2LUA_DP);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 2);
  u->dp = m2_dp_new(g, o, &opts);
  if (!u->dp) return m2lua_fail(L);
  return 1;
}

static int p_gc(lua_State *L) {
  dp_ud *u = luaL_checkudata(L, 1, M2LUA_DP);
  if (u->dp) m2_dp_free(u->dp);
  u->dp = NULL;
  return 0;
}

static int p_sync_grads(lua_State *L) {
  M2LUA_CHECK(L, m2_dp_sync_grads(check_dp(L, 1)));
  return 0;
}

static int p_clip(lua_State *L) {
  double norm = 0;
  M2LUA_CHECK(L, m2_dp_clip_grad_norm(check_dp(L, 1), m2lua_checknum(L, 2), &norm));
  lua_pushnumber(L, norm);
  return 1;
}

static int p_step(lua_State *L) {
  M2LUA_CHECK(L, m2_dp_step(check_dp(L, 1), m2lua_checknum(L, 2)));
  return 0;
}

static int p_broadcast_params(lua_State *L) {
  M2LUA_CHECK(L, m2_dp_broadcast_params(check_dp(L, 1), (int)m2lua_optint(L, 2, 0)));
  return 0;
}

static int p_full_state(lua_State *L) {
  m2_dp *dp = check_dp(L, 1);
  int i = (int)m2lua_checkint(L, 2) - 1, j = (int)m2lua_checkint(L, 3) - 1;
  m2_clear_error();
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_dp_full_state(dp, i, j);
  if (!*slot) {
    if (m2_errcode() != M2_OK) return m2lua_fail(L);
    lua_pushnil(L);
    return 1;
  }
  m2lua_account(L, *slot);
  return 1;
}

static int p_load_state(lua_State *L) {
  m2_dp *dp = check_dp(L, 1);
  int i = (int)m2lua_checkint(L, 2) - 1, j = (int)m2lua_checkint(L, 3) - 1;
  M2LUA_CHECK(L, m2_dp_load_state(dp, i, j, m2lua_checktensor(L, 4)));
  return 0;
}

static int p_nbuckets(lua_State *L) { lua_pushinteger(L, m2_dp_nbuckets(check_dp(L, 1))); return 1; }
static int p_elems(lua_State *L) { lua_pushinteger(L, m2_dp_elems(check_dp(L, 1))); return 1; }

static void new_class(lua_State *L, const char *name, lua_CFunction gc, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  m2lua_setfuncs(L, -1, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void m2lua_open_dist(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"dist_env", l_dist_env}, {"dist_backends", l_dist_backends}, {"dist_init", l_dist_init},
      {"dist_cuda_count", l_dist_cuda_count},
      {"dp_new", l_dp_new},     {NULL, NULL},
  };
  static const luaL_Reg dist_methods[] = {
      {"rank", d_rank},
      {"world", d_world},
      {"local_rank", d_local_rank},
      {"backend", d_backend},
      {"source", d_source},
      {"allreduce_sum", d_allreduce_sum},
      {"reduce_scatter_sum", d_reduce_scatter_sum},
      {"allgather", d_allgather},
      {"broadcast", d_broadcast},
      {"barrier", d_barrier},
      {"check_same", d_check_same},
      {"allgather_numbers", d_allgather_numbers},
      {"broadcast_string", d_broadcast_string},
      {"alltoallv", d_alltoallv},
      {"moe_dispatch", d_moe_dispatch},
      {"moe_combine", d_moe_combine},
      {"abort_at_exit", d_abort_at_exit},
      {"close", d_close},
      {NULL, NULL},
  };
  static const luaL_Reg dp_methods[] = {
      {"sync_grads", p_sync_grads}, {"clip", p_clip},         {"step", p_step},
      {"broadcast_params", p_broadcast_params},               {"full_state", p_full_state},
      {"load_state", p_load_state}, {"nbuckets", p_nbuckets}, {"elems", p_elems},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
  new_class(L, M2LUA_DIST, d_gc, dist_methods);
  new_class(L, M2LUA_DP, p_gc, dp_methods);
}
