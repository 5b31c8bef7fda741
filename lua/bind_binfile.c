/* bind_binfile.c — raw binary files of tensor bytes for Lua: the writer and reader under lua/m2/safetensors.lua
 * (the format itself, its JSON header and every check of it live there; this file only moves bytes).
 *
 *   local w <close> = m2.core.binfile_create(path)  -- writes "<path>.partial"; path is untouched until commit
 *   w:write(s)              a Lua string, verbatim
 *   w:write(tensor)         its elements in row-major order as little-endian bytes of its dtype (any device,
 *                           any strides: a CUDA or strided tensor is copied to a contiguous host one first)
 *   w:tell() -> bytes written so far
 *   w:commit()              flush, fsync, close and rename over path (a complete file or none)
 *   w:close()               (or __close / __gc) without commit: the partial file is removed
 *
 *   local f <close> = m2.core.binfile_open(path)    -- read-only
 *   f:size() -> bytes       f:path() -> path
 *   f:read(offset, n) -> a string of exactly n bytes (0-based byte offset)
 *   f:read_tensor(offset, dtype, {shape}) -> a new contiguous CPU tensor filled with numel * elsize bytes
 *   f:close()
 * A read past the end is an error naming the file, the offset and the file's size; nothing is partly returned.
 * Byte order: tensors are stored as the host holds them; the functions refuse to run on a big-endian host. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "bind.h"

#define M2LUA_BINWRITER "m2.BinWriter"
#define M2LUA_BINREADER "m2.BinReader"

typedef struct binwriter_ud {
  FILE *f;     /* NULL once committed or closed */
  char *path;  /* the final path */
  char *tmp;   /* "<path>.partial" */
  int64_t pos; /* bytes written */
} binwriter_ud;

typedef struct binreader_ud {
  FILE *f; /* NULL once closed */
  char *path;
  int64_t size;
} binreader_ud;

static int check_little_endian(lua_State *L) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  if (b != 1) return m2lua_error(L, "binary tensor files are little-endian; this host is big-endian (not supported)");
  return 0;
}

/* ---------------- writer ---------------- */

static binwriter_ud *check_writer(lua_State *L, int arg) {
  binwriter_ud *u = luaL_testudata(L, arg, M2LUA_BINWRITER);
  if (!u) m2lua_typeerror(L, arg, M2LUA_BINWRITER);
  if (!u->f) m2lua_argerror(L, arg, "file was already committed or closed");
  return u;
}

/* drop the partial file and every resource (idempotent) */
static void writer_discard(binwriter_ud *u) {
  if (u->f) {
    fclose(u->f);
    u->f = NULL;
    if (u->tmp) unlink(u->tmp);
  }
  free(u->path);
  free(u->tmp);
  u->path = u->tmp = NULL;
}

static int w_gc(lua_State *L) {
  writer_discard(luaL_checkudata(L, 1, M2LUA_BINWRITER));
  return 0;
}

/* m2.core.binfile_create(path) -> writer */
static int l_binfile_create(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  check_little_endian(L);
  binwriter_ud *u = lua_newuserdatauv(L, sizeof *u, 0); /* created first, filled after */
  memset(u, 0, sizeof *u);
  luaL_setmetatable(L, M2LUA_BINWRITER);
  size_t n = strlen(path);
  u->path = strdup(path);
  u->tmp = malloc(n + sizeof ".partial");
  if (!u->path || !u->tmp) return m2lua_error(L, "%s: out of memory", path);
  memcpy(u->tmp, path, n);
  memcpy(u->tmp + n, ".partial", sizeof ".partial");
  u->f = fopen(u->tmp, "wb");
  if (!u->f) return m2lua_error(L, "%s: cannot create (%s)", u->tmp, strerror(errno));
  return 1;
}

static int write_bytes(lua_State *L, binwriter_ud *u, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, u->f) != n) {
    int e = errno;
    char msg[512];
    snprintf(msg, sizeof msg, "%s: write failed after %lld bytes (%s)", u->tmp, (long long)u->pos, strerror(e));
    writer_discard(u);
    return m2lua_error(L, "%s", msg);
  }
  u->pos += (int64_t)n;
  return 0;
}

/* w:write(string | tensor) */
static int w_write(lua_State *L) {
  binwriter_ud *u = check_writer(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, 2, &n);
    write_bytes(L, u, s, n);
    return 0;
  }
  m2_tensor *t = m2lua_checktensor(L, 2);
  if (t->device.type == M2_CPU && m2_is_contiguous(t)) {
    write_bytes(L, u, m2_data(t), (size_t)m2_numel(t) * m2_elsize(t));
    return 0;
  }
  m2_tensor **slot = m2lua_newtensor(L); /* the host copy is owned by Lua, so an error cannot leak it */
  *slot = m2_clone_raw(t, t->dtype, M2_DEV_CPU);
  if (!*slot) return m2lua_fail(L);
  write_bytes(L, u, m2_data(*slot), (size_t)m2_numel(*slot) * m2_elsize(*slot));
  m2_release(*slot);
  *slot = NULL;
  return 0;
}

static int w_tell(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_writer(L, 1)->pos);
  return 1;
}

/* w:commit(): the file appears at path complete, or the call fails and path is as it was */
static int w_commit(lua_State *L) {
  binwriter_ud *u = check_writer(L, 1);
  const char *what = NULL;
  int e = 0;
  if (fflush(u->f) != 0) what = "flush", e = errno;
  else if (fsync(fileno(u->f)) != 0 && errno != EINVAL && errno != EROFS) what = "fsync", e = errno;
  if (fclose(u->f) != 0 && !what) what = "close", e = errno;
  u->f = NULL;
  if (!what && rename(u->tmp, u->path) != 0) what = "rename", e = errno;
  if (what) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s: %s of %s failed (%s); the file was not written", u->path, what, u->tmp,
             strerror(e));
    unlink(u->tmp);
    free(u->path);
    free(u->tmp);
    u->path = u->tmp = NULL;
    return m2lua_error(L, "%s", msg);
  }
  free(u->path);
  free(u->tmp);
  u->path = u->tmp = NULL;
  return 0;
}

/* ---------------- reader ---------------- */

static binreader_ud *check_reader(lua_State *L, int arg) {
  binreader_ud *u = luaL_testudata(L, arg, M2LUA_BINREADER);
  if (!u) m2lua_typeerror(L, arg, M2LUA_BINREADER);
  if (!u->f) m2lua_argerror(L, arg, "file was already closed");
  return u;
}

static int r_gc(lua_State *L) {
  binreader_ud *u = luaL_checkudata(L, 1, M2LUA_BINREADER);
  if (u->f) fclose(u->f);
  u->f = NULL;
  free(u->path);
  u->path = NULL;
  return 0;
}

/* m2.core.binfile_open(path) -> reader */
static int l_binfile_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  check_little_endian(L);
  binreader_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  memset(u, 0, sizeof *u);
  luaL_setmetatable(L, M2LUA_BINREADER);
  u->path = strdup(path);
  if (!u->path) return m2lua_error(L, "%s: out of memory", path);
  u->f = fopen(path, "rb");
  if (!u->f) return m2lua_error(L, "%s: cannot open (%s)", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(u->f), &sb) != 0) return m2lua_error(L, "%s: cannot stat (%s)", path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return m2lua_error(L, "%s: not a regular file", path);
  u->size = (int64_t)sb.st_size;
  return 1;
}

static int rd_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_reader(L, 1)->size);
  return 1;
}

static int rd_path(lua_State *L) {
  lua_pushstring(L, check_reader(L, 1)->path);
  return 1;
}

/* seek to offset and read exactly n bytes into p, or raise naming the file */
static int read_at(lua_State *L, binreader_ud *u, int64_t offset, int64_t n, void *p) {
  if (offset < 0 || n < 0 || offset > u->size || n > u->size - offset)
    return m2lua_error(L, "%s: truncated: %lld bytes wanted at offset %lld, but the file has %lld bytes", u->path,
                       (long long)n, (long long)offset, (long long)u->size);
  if (fseeko(u->f, (off_t)offset, SEEK_SET) != 0)
    return m2lua_error(L, "%s: seek to %lld failed (%s)", u->path, (long long)offset, strerror(errno));
  if (n && fread(p, 1, (size_t)n, u->f) != (size_t)n)
    return m2lua_error(L, "%s: read of %lld bytes at offset %lld failed (%s)", u->path, (long long)n,
                       (long long)offset, ferror(u->f) ? strerror(errno) : "unexpected end of file");
  return 0;
}

/* f:read(offset, n) -> string */
static int rd_read(lua_State *L) {
  binreader_ud *u = check_reader(L, 1);
  int64_t offset = m2lua_checkint(L, 2), n = m2lua_checkint(L, 3);
  if (n < 0) return m2lua_argerror(L, 3, "byte count must be >= 0");
  if (offset < 0) return m2lua_argerror(L, 2, "offset must be >= 0");
  if (n > u->size) read_at(L, u, offset, n, NULL); /* raises "truncated" before allocating */
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)n);
  read_at(L, u, offset, n, p);
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* f:read_tensor(offset, dtype, {shape}) -> tensor */
static int rd_read_tensor(lua_State *L) {
  binreader_ud *u = check_reader(L, 1);
  int64_t offset = m2lua_checkint(L, 2);
  if (offset < 0) return m2lua_argerror(L, 2, "offset must be >= 0");
  m2_dtype dt = m2lua_checkdtype(L, 3);
  int ndim;
  int64_t shape[M2_MAX_DIMS];
  m2lua_checkshape(L, 4, &ndim, shape, false);
  int64_t n = (int64_t)m2_dtype_size(dt);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && n > INT64_MAX / shape[i])) return m2lua_argerror(L, 4, "bad shape");
    n *= shape[i];
  }
  if (offset > u->size || n > u->size - offset) read_at(L, u, offset, n, NULL); /* raises before allocating */
  m2_tensor **slot = m2lua_newtensor(L);
  *slot = m2_empty(dt, M2_DEV_CPU, ndim, shape);
  if (!*slot) return m2lua_fail(L);
  m2lua_account(L, *slot);
  read_at(L, u, offset, n, m2_data(*slot));
  return 1;
}

void m2lua_open_binfile(lua_State *L) {
  static const luaL_Reg fns[] = {{"binfile_create", l_binfile_create}, {"binfile_open", l_binfile_open}, {NULL, NULL}};
  static const luaL_Reg wmethods[] = {
      {"write", w_write}, {"tell", w_tell}, {"commit", w_commit}, {"close", w_gc}, {NULL, NULL},
  };
  static const luaL_Reg rmethods[] = {
      {"size", rd_size}, {"path", rd_path}, {"read", rd_read}, {"read_tensor", rd_read_tensor}, {"close", r_gc},
      {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
  luaL_newmetatable(L, M2LUA_BINWRITER);
  lua_pushcfunction(L, w_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, w_gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  luaL_setfuncs(L, wmethods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, M2LUA_BINREADER);
  lua_pushcfunction(L, r_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, r_gc);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  luaL_setfuncs(L, rmethods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
