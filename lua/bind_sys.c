/* bind_sys.c — what the training loop, resume and sweeps need from the operating system:
 * clocks, sleep, terminal detection, host name, SHA-256 of a string, child processes
 * (spawn / wait / kill, used by sweeps and by the crash tests) and the core's memory counters.
 *
 *   m2.core.clock() -> monotonic seconds        m2.core.time() -> wall clock, seconds since 1970
 *   m2.core.sleep(seconds)                      m2.core.isatty([fd = 1]) -> bool
 *   m2.core.hostname() -> string                m2.core.getpid() -> integer
 *   m2.core.sha256(s) -> 64 hex digits          m2.core.mkdir_p(path) (creates parents; ok if it exists)
 *   m2.core.spawn({exe, arg1, ...}, {stdout = path, append = false}) -> pid
 *        (stdout and stderr of the child go to `path` when given; the child gets no stdin)
 *   m2.core.wait(pid | -1 [, nohang]) -> pid, exit_code, signal   (pid = nil: still running with
 *        nohang, or the wait was interrupted by a signal; exit_code nil when it was killed)
 *   m2.core.kill(pid, sig)   sig: a number or "KILL" / "TERM" / "INT"
 *   m2.core.mem_current(dev) / mem_peak(dev) / mem_reset_peak(dev)   dev: "cpu" | "cuda" (bytes)
 *   m2.core.profile_enable([on]) -> the setting before   m2.core.profile_reset()
 *   m2.core.profile_mode([mode]) -> the mode before   0 off, 1 sync (as profile_enable(true)), 2 timeline
 *   m2.core.profile_rows() -> {{op, fwd_calls, fwd_s, bwd_calls, bwd_s, fwd_gpu_s, bwd_gpu_s, gap_s, mem_peak_b,
 *     mem_rise_b}, ...} largest total
 *        first (core/profile.h; the *_gpu_s columns: timeline mode's spans on the device's stream)
 *   m2.core.profile_timeline() -> {device, calls, flushes, window_s, spans_s, gaps_s, host_s} timeline mode's
 *        totals (m2_profile_timeline, core/profile.h; resolving them waits for the device)
 *   m2.core.profile_cast_rows() -> {{op, fwd_calls, fwd_bytes, bwd_calls, bwd_bytes}, ...} the dispatcher's bf16
 *                                  conversions by the op that caused them, most first (core/profile.h)
 *   m2.core.tape_rows() -> {{op, role, dtype, bytes, buffers, refs}, ...} most bytes first,
 *        {nodes, bytes, param_bytes, buffers, refs}   what the live tape nodes hold (core/autograd.h)
 *   m2.core.tape_drop_unread([on]) -> the setting before   nodes recorded from now on drop the data of the inputs
 *        their op's backward never reads (m2_tape_drop_unread, core/autograd.h; on by default)
 *   m2.core.cast_keep_bf16([on]) -> the setting before   a call run on f32 copies of its bf16 inputs records one
 *        node that keeps the bf16 inputs (m2_cast_keep_bf16, core/op.h; off by default, env M2_CAST_KEEP_BF16=1)
 *   m2.core.mixed_kernels([on]) -> the setting before   bf16 / f32 calls of conv1d_causal, add, sub, mul and swiglu
 *        go to the device's mixed kernels instead of f32 copies (m2_mixed_kernels, core/op.h; on by default, env
 *        M2_MIXED_KERNELS=0 off; the CPU always converts) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "bind.h"
#include "autograd.h"
#include "profile.h"

extern char **environ;

static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
  return 1;
}

static int l_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec);
  return 1;
}

/* Sleeps the whole time unless a signal arrives (then returns early so the caller can poll). */
static int l_sleep(lua_State *L) {
  double s = m2lua_checknum(L, 1);
  if (s <= 0) return 0;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
  return 0;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)m2lua_optint(L, 1, 1)));
  return 1;
}

static int l_hostname(lua_State *L) {
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
  lua_pushstring(L, host);
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

/* ---------------- SHA-256 (FIPS 180-4) ---------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static int l_sha256(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  size_t full = n / 64 * 64;
  for (size_t i = 0; i < full; i += 64) sha256_block(h, s + i);
  unsigned char tail[128] = {0};
  size_t rest = n - full;
  memcpy(tail, s + full, rest);
  tail[rest] = 0x80;
  size_t tl = rest + 9 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)n * 8;
  for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (unsigned char)(bits >> (8 * i));
  for (size_t i = 0; i < tl; i += 64) sha256_block(h, tail + i);
  char hex[65];
  for (int i = 0; i < 8; i++) snprintf(hex + 8 * i, 9, "%08x", h[i]);
  lua_pushlstring(L, hex, 64);
  return 1;
}

/* ---------------- files ---------------- */

static int l_mkdir_p(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[4096];
  if (strlen(path) >= sizeof buf) return m2lua_error(L, "mkdir_p: path too long: %s", path);
  strcpy(buf, path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return m2lua_error(L, "%s: cannot create directory: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return m2lua_error(L, "%s: cannot create directory: %s", buf, strerror(errno));
  struct stat sb;
  if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode)) return m2lua_error(L, "%s: exists and is not a directory", buf);
  return 0;
}

/* ---------------- processes ---------------- */

static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  m2lua_checkopts(L, 2);
  int n = (int)luaL_len(L, 1);
  if (n < 1) return m2lua_argerror(L, 1, "empty argument list");
  luaL_checkstack(L, n + 4, "spawn: too many arguments");
  const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0); /* freed by the GC */
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 1, i); /* stays on the stack (alive) until we return */
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      return m2lua_argerror(L, 1, "arguments must be strings");
    argv[i - 1] = lua_tostring(L, -1);
  }
  argv[n] = NULL;
  const char *out = NULL;
  bool append = m2lua_optfield_bool(L, 2, "append", false);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "stdout");
    out = lua_tostring(L, -1);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out) {
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
  }
  /* the child starts with default signal handling (the host's handlers are not inherited) */
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGINT);
  sigaddset(&def, SIGTERM);
  posix_spawnattr_setsigdefault(&at, &def);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF);
  pid_t pid;
  int e = posix_spawn(&pid, argv[0], &fa, &at, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (e != 0) return m2lua_error(L, "spawn %s: %s", argv[0], strerror(e));
  lua_pushinteger(L, pid);
  return 1;
}

static int l_wait(lua_State *L) {
  pid_t pid = (pid_t)m2lua_checkint(L, 1);
  bool nohang = m2lua_optbool(L, 2, false);
  int status = 0;
  pid_t r = waitpid(pid, &status, nohang ? WNOHANG : 0);
  if (r == 0 || (r < 0 && errno == EINTR)) {
    lua_pushnil(L);
    return 1;
  }
  if (r < 0) return m2lua_error(L, "wait %d: %s", (int)pid, strerror(errno));
  lua_pushinteger(L, r);
  if (WIFEXITED(status)) {
    lua_pushinteger(L, WEXITSTATUS(status));
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushinteger(L, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  }
  return 3;
}

static int l_kill(lua_State *L) {
  pid_t pid = (pid_t)m2lua_checkint(L, 1);
  int sig;
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *s = lua_tostring(L, 2);
    if (strcmp(s, "KILL") == 0) sig = SIGKILL;
    else if (strcmp(s, "TERM") == 0) sig = SIGTERM;
    else if (strcmp(s, "INT") == 0) sig = SIGINT;
    else return m2lua_argerror(L, 2, "signal must be a number, \"KILL\", \"TERM\" or \"INT\"");
  } else {
    sig = (int)m2lua_checkint(L, 2);
  }
  if (pid <= 0) return m2lua_argerror(L, 1, "pid must be positive");
  lua_pushboolean(L, kill(pid, sig) == 0);
  return 1;
}

/* ---------------- memory ---------------- */

static m2_devtype check_devtype(lua_State *L, int arg) {
  const char *d = luaL_optstring(L, arg, "cpu");
  if (strncmp(d, "cpu", 3) == 0) return M2_CPU;
  if (strncmp(d, "cuda", 4) == 0) return M2_CUDA;
  m2lua_argerror(L, arg, "device must be \"cpu\" or \"cuda\"");
  return M2_CPU;
}

static int l_mem_current(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)m2_mem_current(check_devtype(L, 1)));
  return 1;
}

static int l_mem_peak(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)m2_mem_peak(check_devtype(L, 1)));
  return 1;
}

static int l_mem_reset_peak(lua_State *L) {
  m2_mem_reset_peak(check_devtype(L, 1));
  return 0;
}

static int l_profile(lua_State *L) {
  bool old = m2_profile_on();
  if (!lua_isnoneornil(L, 1)) m2_profile_enable(lua_toboolean(L, 1));
  lua_pushboolean(L, old);
  return 1;
}

static int l_profile_mode(lua_State *L) {
  int old = m2_profile_mode();
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer m = luaL_checkinteger(L, 1);
    if (m < M2_PROFILE_OFF || m > M2_PROFILE_TIMELINE || m2_profile_set_mode((int)m) < 0)
      return luaL_error(L, "m2.core.profile_mode: mode must be 0 (off), 1 (sync) or 2 (timeline)%s",
                        m == M2_PROFILE_TIMELINE ? ", and the timeline's buffer could not be allocated" : "");
  }
  lua_pushinteger(L, old);
  return 1;
}

static int l_profile_timeline(lua_State *L) {
  m2_profile_totals t;
  m2_profile_timeline(&t);
  char dev[32];
  m2_device_name(t.dev, dev, sizeof dev);
  lua_createtable(L, 0, 7);
  lua_pushstring(L, dev), lua_setfield(L, -2, "device");
  lua_pushinteger(L, t.calls), lua_setfield(L, -2, "calls");
  lua_pushinteger(L, t.flushes), lua_setfield(L, -2, "flushes");
  lua_pushnumber(L, t.window_s), lua_setfield(L, -2, "window_s");
  lua_pushnumber(L, t.spans_s), lua_setfield(L, -2, "spans_s");
  lua_pushnumber(L, t.gaps_s), lua_setfield(L, -2, "gaps_s");
  lua_pushnumber(L, t.host_s), lua_setfield(L, -2, "host_s");
  return 1;
}

static int l_profile_reset(lua_State *L) {
  (void)L;
  m2_profile_reset();
  return 0;
}

static int l_profile_rows(lua_State *L) {
  m2_profile_row rows[256];
  int n = m2_profile_rows(rows, 256);
  if (n > 256) n = 256;
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 10);
    lua_pushstring(L, rows[i].op), lua_setfield(L, -2, "op");
    lua_pushinteger(L, rows[i].fwd_calls), lua_setfield(L, -2, "fwd_calls");
    lua_pushnumber(L, rows[i].fwd_s), lua_setfield(L, -2, "fwd_s");
    lua_pushinteger(L, rows[i].bwd_calls), lua_setfield(L, -2, "bwd_calls");
    lua_pushnumber(L, rows[i].bwd_s), lua_setfield(L, -2, "bwd_s");
    lua_pushnumber(L, rows[i].fwd_gpu_s), lua_setfield(L, -2, "fwd_gpu_s");
    lua_pushnumber(L, rows[i].bwd_gpu_s), lua_setfield(L, -2, "bwd_gpu_s");
    lua_pushnumber(L, rows[i].gap_s), lua_setfield(L, -2, "gap_s");
    lua_pushnumber(L, rows[i].mem_peak_b), lua_setfield(L, -2, "mem_peak_b");
    lua_pushnumber(L, rows[i].mem_rise_b), lua_setfield(L, -2, "mem_rise_b");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_profile_cast_rows(lua_State *L) {
  m2_profile_cast_row rows[256];
  int n = m2_profile_cast_rows(rows, 256);
  if (n > 256) n = 256;
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 5);
    lua_pushstring(L, rows[i].op), lua_setfield(L, -2, "op");
    lua_pushinteger(L, rows[i].fwd_calls), lua_setfield(L, -2, "fwd_calls");
    lua_pushnumber(L, rows[i].fwd_bytes), lua_setfield(L, -2, "fwd_bytes");
    lua_pushinteger(L, rows[i].bwd_calls), lua_setfield(L, -2, "bwd_calls");
    lua_pushnumber(L, rows[i].bwd_bytes), lua_setfield(L, -2, "bwd_bytes");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_tape_rows(lua_State *L) {
  m2_tape_totals tot;
  int n = m2_tape_rows(NULL, 0, NULL);
  if (n < 0) return luaL_error(L, "tape_rows: out of host memory");
  m2_tape_row *rows = malloc((size_t)(n > 0 ? n : 1) * sizeof *rows);
  if (!rows) return luaL_error(L, "tape_rows: out of host memory");
  int got = m2_tape_rows(rows, n, &tot); /* nothing records in between: the same rows */
  if (got < 0) { free(rows); return luaL_error(L, "tape_rows: out of host memory"); }
  if (got > n) got = n;
  lua_createtable(L, got, 0);
  for (int i = 0; i < got; i++) {
    lua_createtable(L, 0, 6);
    lua_pushstring(L, rows[i].op), lua_setfield(L, -2, "op");
    lua_pushstring(L, m2_tape_role_name(rows[i].role)), lua_setfield(L, -2, "role");
    lua_pushstring(L, m2_dtype_name(rows[i].dtype)), lua_setfield(L, -2, "dtype");
    lua_pushinteger(L, (lua_Integer)rows[i].bytes), lua_setfield(L, -2, "bytes");
    lua_pushinteger(L, (lua_Integer)rows[i].buffers), lua_setfield(L, -2, "buffers");
    lua_pushinteger(L, (lua_Integer)rows[i].refs), lua_setfield(L, -2, "refs");
    lua_rawseti(L, -2, i + 1);
  }
  free(rows);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)tot.nodes), lua_setfield(L, -2, "nodes");
  lua_pushinteger(L, (lua_Integer)tot.bytes), lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)tot.param_bytes), lua_setfield(L, -2, "param_bytes");
  lua_pushinteger(L, (lua_Integer)tot.buffers), lua_setfield(L, -2, "buffers");
  lua_pushinteger(L, (lua_Integer)tot.refs), lua_setfield(L, -2, "refs");
  return 2;
}

static int l_tape_drop_unread(lua_State *L) {
  bool old = m2_tape_drop_unread(true);
  m2_tape_drop_unread(lua_isnoneornil(L, 1) ? old : lua_toboolean(L, 1));
  lua_pushboolean(L, old);
  return 1;
}

static int l_cast_keep_bf16(lua_State *L) {
  bool old = m2_cast_keep_bf16_on();
  if (!lua_isnoneornil(L, 1)) m2_cast_keep_bf16(lua_toboolean(L, 1));
  lua_pushboolean(L, old);
  return 1;
}

static int l_mixed_kernels(lua_State *L) {
  bool old = m2_mixed_kernels_on();
  if (!lua_isnoneornil(L, 1)) m2_mixed_kernels(lua_toboolean(L, 1));
  lua_pushboolean(L, old);
  return 1;
}

void m2lua_open_sys(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"clock", l_clock},         {"time", l_time},         {"sleep", l_sleep},
      {"isatty", l_isatty},       {"hostname", l_hostname}, {"getpid", l_getpid},
      {"sha256", l_sha256},       {"mkdir_p", l_mkdir_p},   {"spawn", l_spawn},
      {"wait", l_wait},           {"kill", l_kill},         {"mem_current", l_mem_current},
      {"mem_peak", l_mem_peak},   {"mem_reset_peak", l_mem_reset_peak}, {"profile_enable", l_profile},
      {"profile_reset", l_profile_reset}, {"profile_rows", l_profile_rows}, {"profile_mode", l_profile_mode},
      {"profile_timeline", l_profile_timeline},
      {"profile_cast_rows", l_profile_cast_rows}, {"mixed_kernels", l_mixed_kernels},
      {"tape_rows", l_tape_rows},         {"tape_drop_unread", l_tape_drop_unread},
      {"cast_keep_bf16", l_cast_keep_bf16}, {NULL, NULL},
  };
  m2lua_setfuncs(L, -1, fns);
}
