/* host.h — the m2lab host: Lua state setup (package.path, the m2.core preload, overrides,
 * host info), protected script runs with tracebacks, Ctrl-C handling, and exit codes.
 *
 * Exit codes: 0 ok, 1 script error or failed checks, 2 usage error (bad command line,
 * missing script, malformed override), 130 interrupted (SIGINT / SIGTERM). */
#ifndef M2_LUA_HOST_H
#define M2_LUA_HOST_H
#include <lua.h>

enum { M2HOST_OK = 0, M2HOST_FAIL = 1, M2HOST_USAGE = 2, M2HOST_INTERRUPTED = 130 };

/* A subcommand of `m2lab`: either a C function, or a Lua module whose main(args) runs it
 * (args = the positional arguments; key=value arguments go to m2.args as for `run`). */
typedef struct m2host_cmd {
  const char *name;
  const char *usage;  /* its arguments, for --help */
  const char *help;   /* one line, for --help */
  int (*run)(const struct m2host_cmd *cmd, int argc, char **argv); /* argv after the name */
  const char *module; /* for Lua subcommands (run == NULL): e.g. "m2.sweep" */
} m2host_cmd;

typedef struct m2host_opts {
  const char *mode;    /* m2.mode: "run", "test", or the subcommand's name */
  const char *script;  /* script to run (NULL when `module` is set) */
  const char *module;  /* Lua module whose main(args) is called instead of a script */
  int nargs;           /* command-line words after the script / subcommand name */
  char **args;
  /* For a program that embeds the host (tests/fuzz/fuzz_lua.c; m2lab leaves it NULL): called as a Lua C function with
   * prepare_ud as its one (light userdata) argument on the fresh state, after the m2.core preload and the host's
   * fields and before the script runs, to install hooks, limits or globals; an error it raises fails the run. */
  lua_CFunction prepare;
  void *prepare_ud;
} m2host_opts;

/* Run a script or a Lua subcommand module in a fresh Lua state; returns the exit code. */
int m2host_run(const m2host_opts *o);

/* Set by main(): the path of the m2lab executable (exposed as m2.exe). */
void m2host_set_exe(const char *argv0);

#endif
