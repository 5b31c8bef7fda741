/* main.c — the m2lab executable: parses the subcommand and dispatches through one table.
 *
 * Adding a subcommand is one row in g_cmds:
 *   - implemented in Lua:  {"sweep", "SWEEP.lua [key=value ...]", "run every member of a sweep",
 *                           NULL, "m2.sweep"}   -- calls require("m2.sweep").main(positional_args),
 *     with key=value words in m2.args as for `run`; main may return an integer exit code.
 *   - implemented in C:    {"name", "ARGS", "help line", cmd_name, NULL} with
 *                           int cmd_name(const m2host_cmd *c, int argc, char **argv) in its own file. */
#include <lua.h>
#include <stdio.h>
#include <string.h>
#include "host.h"
#ifdef M2_HAVE_CUDA
#include "m2cuda.h"
#endif
#include "dist.h"
#include "runfile/runfile_sweep.h"

static int cmd_run(const m2host_cmd *c, int argc, char **argv);
/* inspect: C only, no Lua state: nothing from the file is executed */
static int cmd_inspect(const m2host_cmd *c, int argc, char **argv) {
  if (argc != 1) {
    fprintf(stderr, "m2lab %s: expected one file (usage: m2lab %s %s)\n", c->name, c->name, c->usage);
    return M2HOST_USAGE;
  }
  m2_status st = m2_inspect_any(argv[0], stdout);
  fflush(stdout);
  if (st != M2_OK) {
    fprintf(stderr, "m2lab inspect: %s\n", m2_errmsg());
    return M2HOST_FAIL;
  }
  return M2HOST_OK;
}

static int cmd_version(const m2host_cmd *c, int argc, char **argv);
static int cmd_help(const m2host_cmd *c, int argc, char **argv);
static int cmd_inspect(const m2host_cmd *c, int argc, char **argv);

static const m2host_cmd g_cmds[] = {
    {"run", "SCRIPT.lua [key=value ...]", "run an experiment script; key=value words override m2.config defaults",
     cmd_run, NULL},
    {"test", "SCRIPT.lua [key=value ...]", "run a test script (m2.test); exit status 1 if any check failed",
     cmd_run, NULL},
    {"resume", "RUN.h5 [key=value ...]",
     "continue a run from its last checkpoint; EXECUTES THE SCRIPT STORED IN RUN.h5",
     NULL, "m2.resume"},
    {"export", "RUN.h5 [OUT.safetensors] [step=N]",
     "a checkpoint's parameters as a safetensors file (names = module paths); executes nothing", NULL, "m2.export"},
    {"inspect", "RUN.h5 | SWEEP/index.h5", "summary of a run, or a table of a sweep's members; executes nothing",
     cmd_inspect, NULL},
    {"generate", "RUN.h5 prompt=TEXT [...]",
     "text from a run's model (step= max_tokens= temperature= top_k= top_p= seed=); executes nothing from the file",
     NULL, "m2.generate"},
    {"sweep", "SWEEP.lua [parallel=N]",
     "run every member of a sweep (m2.sweep), N at a time; re-running skips finished members", NULL, "m2.sweep"},
    {"launch", "-n N SCRIPT.lua [key=value ...]",
     "run a script on N processes of this machine (data parallel; under mpirun when there is one; m2.dist)", NULL,
     "m2.dist"},
    {"version", "", "print the version, git revision, Lua version and backends", cmd_version, NULL},
    {"help", "", "this help (also --help, -h)", cmd_help, NULL},
};
#define NCMDS (int)(sizeof g_cmds / sizeof g_cmds[0])

static void usage(FILE *f) {
  fprintf(f, "usage: m2lab COMMAND [ARGS]\n\ncommands:\n");
  for (int i = 0; i < NCMDS; i++) {
    char head[96];
    snprintf(head, sizeof head, "%s %s", g_cmds[i].name, g_cmds[i].usage);
    fprintf(f, "  %-41s %s\n", head, g_cmds[i].help);
  }
  fprintf(f,
          "\nresume runs Lua code taken from the run file (the experiment script stored when the run\n"
          "started, not the file on disk): resume only run files you trust. inspect shows that script's size\n"
          "and first line without running anything. Every experiment script accepts steps= seed= device=\n"
          "out= checkpoint_every= eval_every= overwrite= precision=f32|bf16 activations=f32|bf16 on the command\n"
          "line (m2.config, m2.train). resume steps=N extends a run keeping its lr schedule; reschedule=true re-derives it.\n");
  fprintf(f,
          "\nScripts load the library with `local m2 = require \"m2\"` (lua/m2/; M2LAB_LUA_DIR overrides it).\n"
          "Exit status: 0 ok, 1 script error or failed checks, 2 usage error, 130 interrupted.\n"
          "Ctrl-C stops the script at its current line; a script that polls m2.interrupted() can first\n"
          "save a checkpoint (a second Ctrl-C stops it at once).\n");
}

static int cmd_run(const m2host_cmd *c, int argc, char **argv) {
  if (argc < 1) {
    fprintf(stderr, "m2lab %s: missing script (usage: m2lab %s %s)\n", c->name, c->name, c->usage);
    return M2HOST_USAGE;
  }
  m2host_opts o = {c->name, argv[0], NULL, argc - 1, argv + 1};
  return m2host_run(&o);
}

static int cmd_version(const m2host_cmd *c, int argc, char **argv) {
  (void)c, (void)argc, (void)argv;
#ifdef M2_HAVE_CUDA
  const char *cuda = "cuda";
#else
  const char *cuda = "no cuda";
#endif
  printf("m2lab %s (git %s), %s, backends: cpu, %s, collectives: %s\n", M2_VERSION,
         M2_GIT_REV[0] ? M2_GIT_REV : "unknown", LUA_RELEASE, cuda, m2_dist_backend_names());
  return M2HOST_OK;
}

static int cmd_help(const m2host_cmd *c, int argc, char **argv) {
  (void)c, (void)argc, (void)argv;
  usage(stdout);
  return M2HOST_OK;
}

int main(int argc, char **argv) {
  m2host_set_exe(argv[0]);
#ifdef M2_HAVE_CUDA
  /* the CUDA library registers its kernels and a device probe into core (no device is touched until asked for) */
  if (m2_cuda_register() != M2_OK) {
    fprintf(stderr, "m2lab: could not register the CUDA backend: %s\n", m2_errmsg());
    return 1;
  }
#endif
  if (argc < 2) {
    usage(stderr);
    return M2HOST_USAGE;
  }
  const char *name = argv[1];
  if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) name = "help";
  if (strcmp(name, "--version") == 0) name = "version";
  for (int i = 0; i < NCMDS; i++) {
    const m2host_cmd *c = &g_cmds[i];
    if (strcmp(c->name, name) != 0) continue;
    if (c->run) return c->run(c, argc - 2, argv + 2);
    m2host_opts o = {c->name, NULL, c->module, argc - 2, argv + 2};
    return m2host_run(&o);
  }
  /* `m2lab script.lua k=v` is short for `m2lab run script.lua k=v` */
  size_t n = strlen(name);
  if (n > 4 && strcmp(name + n - 4, ".lua") == 0) return cmd_run(&g_cmds[0], argc - 1, argv + 1);
  fprintf(stderr, "m2lab: unknown command '%s'\n\n", name);
  usage(stderr);
  return M2HOST_USAGE;
}
