/* dist.c — process groups: the launcher's environment, the backend registry, the "self" backend (one process) and
 * the checked entry points of the collectives (dist.h). */
#define _GNU_SOURCE
#include "dist.h"
#include "backend.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef M2_HAVE_MPI
extern const m2_dist_backend m2_dist_mpi_backend;                              /* dist_mpi.c */
m2_status m2_dist_mpi_exchange(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out);
void m2_dist_mpi_release(bool abort);
#endif
static bool g_boot_mpi; /* m2_dist_exchange went through MPI: finalize it with the group */

static const char *m2_devtype_name(m2_devtype t) { return t == M2_CUDA ? "cuda" : "cpu"; }

/* ---------------- environment ---------------- */

static const char *sys_getenv(void *ctx, const char *name) {
  (void)ctx;
  return getenv(name);
}

/* A non-negative decimal integer (no sign, no spaces, no trailing text) < 2^31 */
static bool parse_count(const char *s, int *out) {
  if (!s || !*s) return false;
  long long v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    v = v * 10 + (*p - '0');
    if (v > 0x7fffffff) return false;
  }
  *out = (int)v;
  return true;
}

typedef struct env_set {
  const char *source;
  const char *rank, *world, *local; /* variable names; local may be absent (-> 0) */
} env_set;

static m2_status read_var(m2_getenv_fn get, void *ctx, const char *source, const char *name, int *out) {
  const char *v = get(ctx, name);
  if (!parse_count(v, out))
    return m2_fail(M2_ERR_VALUE, "dist: %s=%s%s%s is not a non-negative integer (%s environment)", name, v ? "\"" : "",
                   v ? v : "(unset)", v ? "\"" : "", source);
  return M2_OK;
}

/* The first host of a Slurm host list: "gpu[03-05,09],cpu1" -> "gpu03" */
static void first_host(const char *list, char *out, size_t n) {
  size_t k = 0;
  const char *p = list;
  while (*p && *p != ',' && *p != '[' && k + 1 < n) out[k++] = *p++;
  if (*p == '[') {
    p++;
    while (*p && *p != '-' && *p != ',' && *p != ']' && k + 1 < n) out[k++] = *p++;
  }
  out[k] = 0;
}

m2_status m2_dist_env_parse(m2_getenv_fn get, void *ctx, m2_dist_env *out) {
  if (!out) return m2_fail(M2_ERR_VALUE, "dist_env_parse: NULL output");
  if (!get) get = sys_getenv;
  memset(out, 0, sizeof *out);
  out->world = 1;
  out->source = "single";
  const env_set sets[] = {
      {"torchrun-style", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
      {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"Slurm", "SLURM_PROCID", NULL, "SLURM_LOCALID"},
  };
  const char *slurm_world = get(ctx, "SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
  int chosen = -1;
  for (int i = 0; i < 3 && chosen < 0; i++) {
    const char *wname = sets[i].world ? sets[i].world : slurm_world;
    bool has_rank = get(ctx, sets[i].rank) != NULL, has_world = get(ctx, wname) != NULL;
    if (i == 2 && !get(ctx, "SLURM_STEP_ID")) continue; /* a batch script's shell, not a task of srun */
    if (!has_rank && !has_world) continue;
    if (!has_rank || !has_world)
      return m2_fail(M2_ERR_VALUE, "dist: %s is set but %s is not (%s environment): set both, or neither for one "
                                   "process", has_rank ? sets[i].rank : wname, has_rank ? wname : sets[i].rank,
                     sets[i].source);
    chosen = i;
    const char *src = sets[i].source;
    M2_TRY(read_var(get, ctx, src, sets[i].rank, &out->rank));
    M2_TRY(read_var(get, ctx, src, wname, &out->world));
    if (out->world < 1) return m2_fail(M2_ERR_VALUE, "dist: %s=0: the world size must be at least 1 (%s environment)",
                                       wname, src);
    if (out->rank >= out->world)
      return m2_fail(M2_ERR_VALUE, "dist: %s=%d is not below %s=%d: ranks count 0 .. world size - 1 (%s environment)",
                     sets[i].rank, out->rank, wname, out->world, src);
    if (get(ctx, sets[i].local)) M2_TRY(read_var(get, ctx, src, sets[i].local, &out->local_rank));
    else out->local_rank = i == 0 ? out->rank : 0;
    if (out->local_rank >= out->world)
      return m2_fail(M2_ERR_VALUE, "dist: %s=%d is not below the world size %d (%s environment)", sets[i].local,
                     out->local_rank, out->world, src);
    out->source = i == 0 ? "torchrun" : i == 1 ? "openmpi" : "slurm";
  }
  out->under_mpi = get(ctx, "OMPI_COMM_WORLD_SIZE") != NULL || get(ctx, "PMIX_RANK") != NULL ||
                   get(ctx, "PMI_RANK") != NULL;
  /* an inner launcher's set wins, but two sets that disagree on the world size are a mistake worth naming */
  if (chosen == 0 && get(ctx, "OMPI_COMM_WORLD_SIZE")) {
    int w = 0;
    if (parse_count(get(ctx, "OMPI_COMM_WORLD_SIZE"), &w) && w != out->world && w != 1)
      return m2_fail(M2_ERR_VALUE, "dist: WORLD_SIZE=%d but mpirun started %d processes (OMPI_COMM_WORLD_SIZE=%d): "
                                   "unset RANK / WORLD_SIZE under mpirun, or start one process per launcher",
                     out->world, w, w);
  }
  const char *addr = get(ctx, "MASTER_ADDR");
  if (addr && *addr) {
    if (strlen(addr) >= sizeof out->master_addr)
      return m2_fail(M2_ERR_VALUE, "dist: MASTER_ADDR is %zu characters long (at most %zu)", strlen(addr),
                     sizeof out->master_addr - 1);
    snprintf(out->master_addr, sizeof out->master_addr, "%s", addr);
  } else if (chosen == 2 && get(ctx, "SLURM_STEP_NODELIST")) {
    first_host(get(ctx, "SLURM_STEP_NODELIST"), out->master_addr, sizeof out->master_addr);
  }
  const char *port = get(ctx, "MASTER_PORT");
  if (port && *port) {
    int p = 0;
    if (!parse_count(port, &p) || p < 1 || p > 65535)
      return m2_fail(M2_ERR_VALUE, "dist: MASTER_PORT=\"%s\" is not a port number (1 .. 65535)", port);
    out->master_port = p;
  } else if (chosen == 2) {
    out->master_port = 29500;
  }
  return M2_OK;
}

/* ---------------- backend registry ---------------- */

#define MAX_BACKENDS 8

static m2_status self_init(m2_dist *g) {
  if (g->env.world != 1)
    return m2_fail(M2_ERR_VALUE, "dist: the \"self\" backend is one process, but the world size is %d", g->env.world);
  return M2_OK;
}
static void self_finalize(m2_dist *g, bool abort) { (void)g, (void)abort; }
static m2_status self_allreduce(m2_dist *g, m2_tensor *t) { (void)g, (void)t; return M2_OK; }
static m2_status self_copy(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  (void)g;
  if (send == recv) return M2_OK;
  return m2_memcpy(recv->device, m2_data(recv), send->device, m2_data(send), (size_t)m2_numel(send) * m2_elsize(send));
}
static m2_status self_broadcast(m2_dist *g, m2_tensor *t, int root) { (void)g, (void)t, (void)root; return M2_OK; }
static m2_status self_allgather_host(m2_dist *g, const void *send, void *recv, size_t n) {
  (void)g;
  if (send != recv) memmove(recv, send, n);
  return M2_OK;
}
static m2_status self_barrier(m2_dist *g) { (void)g; return M2_OK; }
static m2_status self_alltoallv(m2_dist *g, const m2_tensor *send, const int64_t *sc, m2_tensor *recv,
                                const int64_t *rc) {
  (void)sc, (void)rc; /* one rank: the entry point checked that both counts are the whole buffers */
  return self_copy(g, send, recv);
}

static const m2_dist_backend self_backend = {
    "self", M2_CPU, self_init, self_finalize, self_allreduce, self_copy, self_copy, self_broadcast,
    self_allgather_host, self_barrier, self_alltoallv,
};

static const m2_dist_backend *g_backends[MAX_BACKENDS];
static int g_nbackends;

static void ensure_builtin(void) {
  if (g_nbackends) return;
  g_backends[g_nbackends++] = &self_backend;
#ifdef M2_HAVE_MPI
  g_backends[g_nbackends++] = &m2_dist_mpi_backend;
#endif
}

void m2_dist_register(const m2_dist_backend *b) {
  ensure_builtin();
  if (!b) return;
  for (int i = 0; i < g_nbackends; i++)
    if (strcmp(g_backends[i]->name, b->name) == 0) { g_backends[i] = b; return; }
  if (g_nbackends < MAX_BACKENDS) g_backends[g_nbackends++] = b;
}

const m2_dist_backend *m2_dist_backend_get(const char *name) {
  ensure_builtin();
  for (int i = 0; name && i < g_nbackends; i++)
    if (strcmp(g_backends[i]->name, name) == 0) return g_backends[i];
  return NULL;
}

const char *m2_dist_backend_names(void) {
  static char buf[128];
  ensure_builtin();
  buf[0] = 0;
  for (int i = 0; i < g_nbackends; i++) {
    size_t k = strlen(buf);
    snprintf(buf + k, sizeof buf - k, "%s%s", i ? ", " : "", g_backends[i]->name);
  }
  return buf;
}

/* ---------------- the group ---------------- */

m2_dist *m2_dist_init(const m2_dist_opts *o) {
  m2_dist_opts opts = o ? *o : (m2_dist_opts){0};
  m2_dist_env env;
  if (opts.env) env = *opts.env;
  else if (m2_dist_env_parse(NULL, NULL, &env) != M2_OK) return NULL;
  const char *name = opts.backend && strcmp(opts.backend, "auto") != 0 ? opts.backend : NULL;
  if (!name) {
    if (env.world == 1) name = "self";
    else if (opts.devtype == M2_CUDA) name = "nccl";
    else name = "mpi";
  }
  const m2_dist_backend *b = m2_dist_backend_get(name);
  if (!b) {
    const char *hint = strcmp(name, "mpi") == 0
                           ? " (this m2lab was built without MPI: install libopenmpi-dev and rebuild; or train on "
                             "CUDA, where NCCL carries the collectives)"
                       : strcmp(name, "nccl") == 0 ? " (this m2lab was built without CUDA or without NCCL)" : "";
    m2_fail(M2_ERR_UNSUPPORTED, "dist: %d processes (rank %d, %s environment) need the \"%s\" backend, which is not "
                                "in this build%s; backends here: %s", env.world, env.rank, env.source, name, hint,
            m2_dist_backend_names());
    return NULL;
  }
  if (env.world > 1 && b->devtype != opts.devtype && strcmp(b->name, "self") != 0) {
    m2_fail(M2_ERR_DEVICE, "dist: the \"%s\" backend works on %s memory, but the training tensors are on %s", b->name,
            m2_devtype_name(b->devtype), m2_devtype_name(opts.devtype));
    return NULL;
  }
  m2_dist *g = calloc(1, sizeof *g);
  if (!g) { m2_fail(M2_ERR_OOM, "dist: out of host memory"); return NULL; }
  g->env = env;
  g->backend = b;
  g->timeout_s = opts.timeout_s > 0 ? opts.timeout_s : M2_DIST_DEFAULT_TIMEOUT;
  if (b->init(g) != M2_OK) {
    m2_fail_context(m2_errcode(), "rank %d of %d (%s backend)", env.rank, env.world, b->name);
    free(g);
    return NULL;
  }
  return g;
}

void m2_dist_free(m2_dist *g, bool abort) {
  if (!g) return;
  g->backend->finalize(g, abort || g->broken);
#ifdef M2_HAVE_MPI
  if (g_boot_mpi) m2_dist_mpi_release(abort || g->broken);
  g_boot_mpi = false;
#endif
  free(g);
}

/* ---------------- checked collectives ---------------- */

static m2_status usable(m2_dist *g, const char *what) {
  if (!g) return m2_fail(M2_ERR_VALUE, "dist %s: no process group", what);
  if (g->broken)
    return m2_fail(M2_ERR_IO, "dist %s: the process group stopped working at an earlier failure (%s)", what,
                   g->broken_msg);
  return M2_OK;
}

static m2_status check_buf(m2_dist *g, const char *what, const char *name, const m2_tensor *t, bool f32) {
  if (!t) return m2_fail(M2_ERR_VALUE, "dist %s: %s is NULL", what, name);
  char sh[96];
  if (f32 && t->dtype != M2_F32)
    return m2_fail(M2_ERR_DTYPE, "dist %s: %s %s is %s; collectives sum and gather f32", what, name,
                   m2_shape_str(t, sh, sizeof sh), m2_dtype_name(t->dtype));
  if (!m2_is_contiguous(t))
    return m2_fail(M2_ERR_UNSUPPORTED, "dist %s: %s %s is not contiguous", what, name, m2_shape_str(t, sh, sizeof sh));
  bool self = strcmp(g->backend->name, "self") == 0;
  if (!self && t->device.type != g->backend->devtype)
    return m2_fail(M2_ERR_DEVICE, "dist %s: %s is on %s but the %s backend works on %s memory", what, name,
                   m2_devtype_name(t->device.type), g->backend->name, m2_devtype_name(g->backend->devtype));
  return M2_OK;
}

static m2_status after(m2_dist *g, m2_status s) {
  if (s != M2_OK && !g->broken) m2_dist_break(g, s);
  return s;
}

m2_status m2_dist_allreduce_sum(m2_dist *g, m2_tensor *t) {
  M2_TRY(usable(g, "allreduce_sum"));
  M2_TRY(check_buf(g, "allreduce_sum", "the buffer", t, true));
  return after(g, g->backend->allreduce_sum(g, t));
}

m2_status m2_dist_reduce_scatter_sum(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  M2_TRY(usable(g, "reduce_scatter_sum"));
  M2_TRY(check_buf(g, "reduce_scatter_sum", "send", send, true));
  M2_TRY(check_buf(g, "reduce_scatter_sum", "recv", recv, true));
  if (m2_numel(send) != (int64_t)g->env.world * m2_numel(recv))
    return m2_fail(M2_ERR_SHAPE, "dist reduce_scatter_sum: send has %lld elements, not world (%d) x recv's %lld",
                   (long long)m2_numel(send), g->env.world, (long long)m2_numel(recv));
  if (!m2_device_eq(send->device, recv->device))
    return m2_fail(M2_ERR_DEVICE, "dist reduce_scatter_sum: send and recv are on different devices");
  return after(g, g->backend->reduce_scatter_sum(g, send, recv));
}

m2_status m2_dist_allgather(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  M2_TRY(usable(g, "allgather"));
  M2_TRY(check_buf(g, "allgather", "send", send, true));
  M2_TRY(check_buf(g, "allgather", "recv", recv, true));
  if (m2_numel(recv) != (int64_t)g->env.world * m2_numel(send))
    return m2_fail(M2_ERR_SHAPE, "dist allgather: recv has %lld elements, not world (%d) x send's %lld",
                   (long long)m2_numel(recv), g->env.world, (long long)m2_numel(send));
  if (!m2_device_eq(send->device, recv->device))
    return m2_fail(M2_ERR_DEVICE, "dist allgather: send and recv are on different devices");
  return after(g, g->backend->allgather(g, send, recv));
}

m2_status m2_dist_broadcast(m2_dist *g, m2_tensor *t, int root) {
  M2_TRY(usable(g, "broadcast"));
  M2_TRY(check_buf(g, "broadcast", "the buffer", t, false));
  if (root < 0 || root >= g->env.world)
    return m2_fail(M2_ERR_INDEX, "dist broadcast: root %d is not a rank (world size %d)", root, g->env.world);
  return after(g, g->backend->broadcast(g, t, root));
}

m2_status m2_dist_allgather_host(m2_dist *g, const void *send, void *recv, size_t nbytes) {
  M2_TRY(usable(g, "allgather_host"));
  if ((!send || !recv) && nbytes) return m2_fail(M2_ERR_VALUE, "dist allgather_host: NULL buffer");
  return after(g, g->backend->allgather_host(g, send, recv, nbytes));
}

m2_status m2_dist_barrier(m2_dist *g) {
  M2_TRY(usable(g, "barrier"));
  return after(g, g->backend->barrier(g));
}

/* counts: world entries >= 0 adding up to numel(t) */
static m2_status check_counts(m2_dist *g, const char *name, const int64_t *counts, const m2_tensor *t) {
  if (!counts) return m2_fail(M2_ERR_VALUE, "dist alltoallv: %s is NULL", name);
  int64_t sum = 0;
  for (int q = 0; q < g->env.world; q++) {
    if (counts[q] < 0)
      return m2_fail(M2_ERR_VALUE, "dist alltoallv: %s[%d] = %lld is negative", name, q, (long long)counts[q]);
    sum += counts[q];
  }
  if (sum != m2_numel(t)) {
    char sh[96];
    return m2_fail(M2_ERR_SHAPE, "dist alltoallv: %s add up to %lld elements but the buffer %s has %lld", name,
                   (long long)sum, m2_shape_str(t, sh, sizeof sh), (long long)m2_numel(t));
  }
  return M2_OK;
}

m2_status m2_dist_alltoallv(m2_dist *g, const m2_tensor *send, const int64_t *send_counts, m2_tensor *recv,
                            const int64_t *recv_counts) {
  M2_TRY(usable(g, "alltoallv"));
  M2_TRY(check_buf(g, "alltoallv", "send", send, false));
  M2_TRY(check_buf(g, "alltoallv", "recv", recv, false));
  if (send->dtype != recv->dtype)
    return m2_fail(M2_ERR_DTYPE, "dist alltoallv: send is %s but recv is %s", m2_dtype_name(send->dtype),
                   m2_dtype_name(recv->dtype));
  if (!m2_device_eq(send->device, recv->device))
    return m2_fail(M2_ERR_DEVICE, "dist alltoallv: send and recv are on different devices");
  if (m2_numel(send) > 0 && m2_data(send) == m2_data(recv))
    return m2_fail(M2_ERR_VALUE, "dist alltoallv: send and recv are the same buffer (not in place)");
  M2_TRY(check_counts(g, "send_counts", send_counts, send));
  M2_TRY(check_counts(g, "recv_counts", recv_counts, recv));
  if (!g->backend->alltoallv)
    return m2_fail(M2_ERR_UNSUPPORTED, "dist alltoallv: the %s backend has no all-to-all", g->backend->name);
  return after(g, g->backend->alltoallv(g, send, send_counts, recv, recv_counts));
}

/* FNV-1a, 64 bits */
static uint64_t hash_text(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

m2_status m2_dist_check_same(m2_dist *g, const char *what, const char *text, size_t len) {
  M2_TRY(usable(g, "check_same"));
  int R = g->env.world;
  uint64_t mine = hash_text(text ? text : "", text ? len : 0), *all = calloc((size_t)R, sizeof *all);
  if (!all) return m2_fail(M2_ERR_OOM, "dist check_same: out of host memory");
  m2_status s = m2_dist_allgather_host(g, &mine, all, sizeof mine);
  for (int r = 1; s == M2_OK && r < R; r++)
    if (all[r] != all[0]) {
      s = m2_fail(M2_ERR_VALUE, "dist: the %s differs between ranks: rank %d's hash is %016llx, rank 0's %016llx "
                                "(every rank must run the same script with the same options; this is rank %d)",
                  what, r, (unsigned long long)all[r], (unsigned long long)all[0], g->env.rank);
    }
  free(all);
  return s;
}

/* ---------------- helpers for backends ---------------- */

double m2_dist_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bool m2_dist_cancelled(const m2_dist *g, double *sig_at) {
  if (!g || !g->cancel || *g->cancel == 0) return false;
  if (*g->cancel >= 2) return true;
  if (*sig_at == 0) *sig_at = m2_dist_now();
  return m2_dist_now() - *sig_at > M2_DIST_SIGNAL_GRACE;
}

void m2_dist_backoff(int n) {
  long us = n < 7 ? 20L << n : 2000; /* 20, 40, ..., 1280 us, then 2 ms */
  if (us > 2000) us = 2000;
  struct timespec ts = {0, us * 1000L};
  nanosleep(&ts, NULL);
}

m2_status m2_dist_break(m2_dist *g, m2_status code) {
  if (g && !g->broken) {
    g->broken = true;
    snprintf(g->broken_msg, sizeof g->broken_msg, "%s", m2_errmsg());
  }
  return code;
}

m2_status m2_dist_timeout(m2_dist *g, const char *what, double waited) {
  m2_fail(M2_ERR_IO, "dist %s: rank %d of %d waited %.0f s (the timeout) for the other ranks: one of them died, is "
                     "stuck, or reached a different point of the script (see the other ranks' output)", what,
          g->env.rank, g->env.world, waited);
  return m2_dist_break(g, M2_ERR_IO);
}

m2_status m2_dist_exchange(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out) {
  if (!env) return m2_fail(M2_ERR_VALUE, "dist exchange: NULL environment");
  if (env->world == 1) { memmove(out, mine, n); return M2_OK; }
#ifdef M2_HAVE_MPI
  if (env->under_mpi && !env->master_addr[0]) {
    m2_status s = m2_dist_mpi_exchange(env, timeout_s, mine, n, out);
    g_boot_mpi = true;
    return s;
  }
#endif
  return m2_dist_rendezvous(env, timeout_s, mine, n, out);
}
