/* host.c — one Lua state per run: paths, the m2.core preload, overrides, signals, protected
 * execution with a traceback, test-mode summary and exit codes. */
#define _GNU_SOURCE
#include "host.h"
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bind.h"

/* ---------------- interrupts ---------------- */

static lua_State *volatile g_L;
static m2lua_interrupt g_intr; /* signals received, and whether the script polls; lent to m2.interrupted() */

/* Raises "FILE:LINE: interrupted" at the Lua function that is running (level 0 inside a hook). */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  lua_sethook(L, NULL, 0, 0);
  if (lua_getstack(L, 0, ar) && lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    lua_pushfstring(L, "%s:%d: interrupted", ar->short_src, ar->currentline);
  else
    lua_pushliteral(L, "interrupted");
  lua_error(L);
}

/* First signal: if the script polls m2.interrupted(), only set the flag (it saves and stops
 * by itself); otherwise stop the script at the next Lua instruction. Second signal: stop now.
 * Third: the default action (kills the process, e.g. when stuck inside one long C call). */
static void on_signal(int sig) {
  g_intr.signals++;
  if (g_L && (!g_intr.polling || g_intr.signals >= 2))
    lua_sethook(g_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  if (g_intr.signals >= 2) signal(sig, SIG_DFL);
}

/* Installs the handlers and hands the binding their state (the registry entry bind.h describes). */
static void install_signals(lua_State *L) {
  g_L = L;
  g_intr.signals = 0;
  g_intr.polling = 0;
  lua_pushlightuserdata(L, &g_intr);
  lua_setfield(L, LUA_REGISTRYINDEX, M2LUA_INTERRUPT_KEY);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

static void remove_signals(void) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  g_L = NULL;
}

/* ---------------- paths ---------------- */

static char g_exe[PATH_MAX];

void m2host_set_exe(const char *argv0) {
  ssize_t n = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
  if (n > 0) { g_exe[n] = 0; return; }
  if (!realpath(argv0, g_exe)) snprintf(g_exe, sizeof g_exe, "%s", argv0);
}

static const char *lua_dir(char *buf, size_t n) {
  const char *d = getenv("M2LAB_LUA_DIR");
  if (!d || !d[0]) d = M2_LUA_DIR;
  snprintf(buf, n, "%s", d);
  size_t k = strlen(buf);
  while (k > 1 && buf[k - 1] == '/') buf[--k] = 0;
  return buf;
}

/* package.path = LUADIR/?.lua;LUADIR/?/init.lua;SCRIPTDIR/?.lua;<default> and the preload. */
static void setup_package(lua_State *L, const char *dir, const char *script) {
  lua_getglobal(L, "package");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, dir);
  luaL_addstring(&b, "/?.lua;");
  luaL_addstring(&b, dir);
  luaL_addstring(&b, "/?/init.lua;");
  if (script) {
    const char *slash = strrchr(script, '/');
    if (slash) luaL_addlstring(&b, script, (size_t)(slash - script) + 1);
    else luaL_addstring(&b, "./");
    luaL_addstring(&b, "?.lua;");
  }
  lua_getfield(L, -2, "path");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_m2_core);
  lua_setfield(L, -2, "m2.core");
  lua_pop(L, 2);
}

/* ---------------- overrides ---------------- */

/* Check every key=value word; prints the problem and returns false on a malformed one. */
static bool check_overrides(int n, char **args) {
  for (int i = 0; i < n; i++) {
    const char *eq = strchr(args[i], '=');
    if (!eq) {
      fprintf(stderr, "m2lab: malformed override '%s': expected key=value (e.g. lr=3e-4)\n", args[i]);
      return false;
    }
    if (eq == args[i]) {
      fprintf(stderr, "m2lab: malformed override '%s': the key before '=' is empty\n", args[i]);
      return false;
    }
  }
  return true;
}

/* Push a value parsed from override text: true/false, a number, or the string itself. */
static void push_override_value(lua_State *L, const char *v) {
  if (strcmp(v, "true") == 0) lua_pushboolean(L, 1);
  else if (strcmp(v, "false") == 0) lua_pushboolean(L, 0);
  else if (v[0] == 0 || lua_stringtonumber(L, v) == 0) lua_pushstring(L, v);
}

/* Fields the host gives the m2.core module: args, args_raw, args_order, exe, script, mode,
 * lua_dir, source_dir, positional (for subcommand modules). */
static int host_fill(lua_State *L) {
  const m2host_opts *o = lua_touserdata(L, 1);
  const char *dir = lua_tostring(L, 2);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "m2.core");
  lua_call(L, 1, 1);
  int core = lua_gettop(L);
  lua_newtable(L); /* args */
  lua_newtable(L); /* args_raw */
  lua_newtable(L); /* args_order */
  lua_newtable(L); /* positional */
  int nord = 0, npos = 0;
  for (int i = 0; i < o->nargs; i++) {
    const char *a = o->args[i], *eq = strchr(a, '=');
    if (!eq) {
      lua_pushstring(L, a);
      lua_rawseti(L, core + 4, ++npos);
      continue;
    }
    lua_pushlstring(L, a, (size_t)(eq - a));
    int key = lua_gettop(L);
    lua_pushvalue(L, key);
    push_override_value(L, eq + 1);
    lua_rawset(L, core + 1);
    lua_pushvalue(L, key);
    lua_pushstring(L, eq + 1);
    lua_rawset(L, core + 2);
    lua_rawseti(L, core + 3, ++nord);
  }
  lua_setfield(L, core, "positional");
  lua_setfield(L, core, "args_order");
  lua_setfield(L, core, "args_raw");
  lua_setfield(L, core, "args");
  lua_pushstring(L, g_exe);
  lua_setfield(L, core, "exe");
  if (o->script) {
    lua_pushstring(L, o->script);
    lua_setfield(L, core, "script");
  }
  lua_pushstring(L, o->mode);
  lua_setfield(L, core, "mode");
  lua_pushstring(L, dir);
  lua_setfield(L, core, "lua_dir");
  lua_pushstring(L, M2_SOURCE_DIR);
  lua_setfield(L, core, "source_dir");
  /* the global `arg`, as in the stand-alone lua: arg[0] = script, arg[-1] = exe, arg[1..] = words */
  lua_createtable(L, o->nargs, 2);
  lua_pushstring(L, g_exe);
  lua_rawseti(L, -2, -1);
  lua_pushstring(L, o->script ? o->script : o->module);
  lua_rawseti(L, -2, 0);
  for (int i = 0; i < o->nargs; i++) {
    lua_pushstring(L, o->args[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setglobal(L, "arg");
  return 0;
}

/* ---------------- protected runs ---------------- */

/* Message handler: tostring the error and append a traceback. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
    else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the loaded chunk / function on top with nargs arguments under msgh; prints errors. */
static int pcall_report(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fflush(stdout);
    if (g_intr.signals > 0) {
      /* only the first line (where it stopped) */
      const char *nl = msg ? strchr(msg, '\n') : NULL;
      fprintf(stderr, "m2lab: %.*s\n", nl ? (int)(nl - msg) : (int)strlen(msg ? msg : ""), msg ? msg : "");
    } else {
      fprintf(stderr, "m2lab: %s\n", msg ? msg : "(error)");
    }
    lua_pop(L, 1);
  }
  return rc;
}

/* After a successful script: when m2.test was used, print its summary and take its exit code.
 * In test mode, a script that ran no checks fails. */
static int finish_tests(lua_State *L, bool test_mode) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "m2.test");
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    if (test_mode) {
      fprintf(stderr, "m2lab test: the script ran no checks (use m2.test)\n");
      return M2HOST_FAIL;
    }
    return M2HOST_OK;
  }
  lua_getfield(L, -1, "finish");
  lua_remove(L, -2);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return test_mode ? M2HOST_FAIL : M2HOST_OK;
  }
  lua_pushboolean(L, test_mode);
  if (pcall_report(L, 1, 1) != LUA_OK) return M2HOST_FAIL;
  int code = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return code;
}

static int file_readable(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return errno;
  fclose(f);
  return 0;
}

int m2host_run(const m2host_opts *o) {
  if (o->script) {
    int e = file_readable(o->script);
    if (e) {
      fprintf(stderr, "m2lab: cannot open script '%s': %s\n", o->script, strerror(e));
      return M2HOST_USAGE;
    }
    if (!check_overrides(o->nargs, o->args)) return M2HOST_USAGE;
  } else {
    for (int i = 0; i < o->nargs; i++)
      if (o->args[i][0] == '=') {
        fprintf(stderr, "m2lab: malformed override '%s': the key before '=' is empty\n", o->args[i]);
        return M2HOST_USAGE;
      }
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "m2lab: cannot create a Lua state (out of memory)\n");
    return M2HOST_FAIL;
  }
  luaL_openlibs(L);
  char dir[PATH_MAX], libdir[PATH_MAX + 8];
  lua_dir(dir, sizeof dir);
  snprintf(libdir, sizeof libdir, "%s/m2/", dir);
  m2lua_set_library_dir(libdir);
  setup_package(L, dir, o->script);

  int code = M2HOST_OK;
  lua_pushcfunction(L, host_fill);
  lua_pushlightuserdata(L, (void *)o);
  lua_pushstring(L, dir);
  if (pcall_report(L, 2, 0) != LUA_OK) {
    lua_close(L);
    return M2HOST_FAIL;
  }
  install_signals(L);
  if (o->prepare) {
    lua_pushcfunction(L, o->prepare);
    lua_pushlightuserdata(L, o->prepare_ud);
    if (pcall_report(L, 1, 0) != LUA_OK) {
      remove_signals();
      lua_close(L);
      return M2HOST_FAIL;
    }
  }
  if (o->script) {
    if (luaL_loadfile(L, o->script) != LUA_OK) {
      fprintf(stderr, "m2lab: %s\n", lua_tostring(L, -1));
      code = M2HOST_FAIL;
    } else if (pcall_report(L, 0, 0) != LUA_OK) {
      code = M2HOST_FAIL;
    }
  } else {
    /* require(module).main(positional) */
    lua_getglobal(L, "require");
    lua_pushstring(L, o->module);
    if (pcall_report(L, 1, 1) != LUA_OK) {
      code = M2HOST_FAIL;
    } else {
      lua_getfield(L, -1, "main");
      if (!lua_isfunction(L, -1)) {
        fprintf(stderr, "m2lab: module '%s' has no main function\n", o->module);
        code = M2HOST_FAIL;
      } else {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "m2.core");
        lua_call(L, 1, 1);
        lua_getfield(L, -1, "positional");
        lua_remove(L, -2);
        if (pcall_report(L, 1, 1) != LUA_OK) code = M2HOST_FAIL;
        else if (lua_isinteger(L, -1)) code = (int)lua_tointeger(L, -1);
      }
    }
    lua_settop(L, 0);
  }
  if (code == M2HOST_OK) code = finish_tests(L, strcmp(o->mode, "test") == 0);
  remove_signals();
  lua_close(L);
  fflush(stdout);
  if (g_intr.signals > 0) {
    if (code == M2HOST_OK) fprintf(stderr, "m2lab: interrupted\n");
    return M2HOST_INTERRUPTED;
  }
  return code;
}
