/* test_dist.c — core/dist.h without MPI: the launchers' environment (torchrun-style, Open MPI, Slurm) and its
 * errors, the "self" backend, the TCP rendezvous between forked processes (and its errors, each within its timeout),
 * and data parallelism (dist_dp.h) on one rank, where it must equal the plain optimizer bit for bit. The MPI backend
 * and multi-rank training are tested by tests/dist_mpi.sh under mpirun. */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"

/* ---- environments as tables ---- */
typedef struct kv {
  const char *k, *v;
} kv;

static const char *table_get(void *ctx, const char *name) {
  for (const kv *e = ctx; e->k; e++)
    if (strcmp(e->k, name) == 0) return e->v;
  return NULL;
}

static bool parse(const kv *env, m2_dist_env *out) { return m2_dist_env_parse(table_get, (void *)env, out) == M2_OK; }

static void test_env(void) {
  m2_dist_env e;
  kv none[] = {{NULL, NULL}};
  CHECK(parse(none, &e) && e.rank == 0 && e.world == 1 && e.local_rank == 0 && strcmp(e.source, "single") == 0,
        "no variables: rank 0 of 1");
  kv tr[] = {{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.2"},
             {"MASTER_PORT", "29501"}, {NULL, NULL}};
  CHECK(parse(tr, &e) && e.rank == 3 && e.world == 8 && e.local_rank == 1 && e.master_port == 29501 &&
            strcmp(e.master_addr, "10.0.0.2") == 0 && strcmp(e.source, "torchrun") == 0 && !e.under_mpi,
        "torchrun-style");
  kv om[] = {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
             {NULL, NULL}};
  CHECK(parse(om, &e) && e.rank == 1 && e.world == 4 && e.local_rank == 1 && e.under_mpi &&
            strcmp(e.source, "openmpi") == 0, "Open MPI");
  kv sl[] = {{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_STEP_NUM_TASKS", "8"}, {"SLURM_LOCALID", "1"},
             {"SLURM_STEP_ID", "0"}, {"SLURM_STEP_NODELIST", "gpu[07-08,11],cpu1"}, {NULL, NULL}};
  CHECK(parse(sl, &e) && e.rank == 5 && e.world == 8 && e.local_rank == 1 && strcmp(e.master_addr, "gpu07") == 0 &&
            e.master_port == 29500 && strcmp(e.source, "slurm") == 0, "Slurm (srun): %d of %d at %s", e.rank, e.world,
        e.master_addr);
  kv batch[] = {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {NULL, NULL}};
  CHECK(parse(batch, &e) && e.world == 1, "a Slurm batch script's own shell (no SLURM_STEP_ID) is one process");
  kv both[] = {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_STEP_ID", "0"},
               {NULL, NULL}};
  CHECK(parse(both, &e) && e.rank == 1 && e.world == 2 && e.local_rank == 1, "torchrun inside Slurm: RANK wins");
  /* errors, each naming the variables */
  kv big[] = {{"RANK", "2"}, {"WORLD_SIZE", "2"}, {NULL, NULL}};
  CHECK_FAILS(!parse(big, &e), M2_ERR_VALUE, "RANK=2 is not below WORLD_SIZE=2");
  kv half[] = {{"WORLD_SIZE", "2"}, {NULL, NULL}};
  CHECK_FAILS(!parse(half, &e), M2_ERR_VALUE, "WORLD_SIZE is set but RANK is not");
  kv word[] = {{"RANK", "one"}, {"WORLD_SIZE", "2"}, {NULL, NULL}};
  CHECK_FAILS(!parse(word, &e), M2_ERR_VALUE, "RANK=\"one\" is not a non-negative integer");
  kv neg[] = {{"RANK", "0"}, {"WORLD_SIZE", "-2"}, {NULL, NULL}};
  CHECK_FAILS(!parse(neg, &e), M2_ERR_VALUE, "WORLD_SIZE=\"-2\"");
  kv zero[] = {{"RANK", "0"}, {"WORLD_SIZE", "0"}, {NULL, NULL}};
  CHECK_FAILS(!parse(zero, &e), M2_ERR_VALUE, "world size must be at least 1");
  kv port[] = {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}, {NULL, NULL}};
  CHECK_FAILS(!parse(port, &e), M2_ERR_VALUE, "MASTER_PORT=\"70000\" is not a port number");
  kv mix[] = {{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "0"},
              {NULL, NULL}};
  CHECK_FAILS(!parse(mix, &e), M2_ERR_VALUE, "WORLD_SIZE=4 but mpirun started 2 processes");
  kv om_bad[] = {{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {NULL, NULL}};
  CHECK_FAILS(!parse(om_bad, &e), M2_ERR_VALUE, "OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4");
}

/* ---- the self backend and the checks of the entry points ---- */
static void test_self(void) {
  m2_dist_env env = {0};
  env.world = 1;
  env.source = "single";
  m2_dist_opts o = {.env = &env};
  m2_dist *g = m2_dist_init(&o);
  CHECK_NOTNULL(g);
  if (!g) return;
  CHECK(strcmp(g->backend->name, "self") == 0, "world 1 -> self, got %s", g->backend->name);
  m2_tensor *a = m2_full(M2_F32, M2_DEV_CPU, 1, (int64_t[]){5}, 2.5), *b = m2_zeros_v(M2_F32, M2_DEV_CPU, 1, 5);
  CHECK_OK(m2_dist_allreduce_sum(g, a));
  CHECK_OK(m2_dist_allgather(g, a, b));
  double v = 0;
  m2_get(b, (int64_t[]){4}, &v);
  CHECK(v == 2.5, "allgather on one rank copies");
  CHECK_OK(m2_dist_reduce_scatter_sum(g, a, b));
  CHECK_OK(m2_dist_broadcast(g, a, 0));
  CHECK_FAILS(m2_dist_broadcast(g, a, 1) != M2_OK, M2_ERR_INDEX, "root 1 is not a rank");
  m2_tensor *d = m2_zeros_v(M2_F64, M2_DEV_CPU, 1, 5), *s3 = m2_zeros_v(M2_F32, M2_DEV_CPU, 1, 3);
  CHECK_FAILS(m2_dist_allreduce_sum(g, d) != M2_OK, M2_ERR_DTYPE, "collectives sum and gather f32");
  CHECK_FAILS(m2_dist_allgather(g, a, s3) != M2_OK, M2_ERR_SHAPE, "not world (1) x send's 5");
  CHECK_OK(m2_dist_check_same(g, "config", "abc", 3));
  CHECK_OK(m2_dist_barrier(g));
  m2_release(a), m2_release(b), m2_release(d), m2_release(s3);
  m2_dist_free(g, false);
  env.world = 2;
  o.backend = "nosuch";
  CHECK_FAILS(m2_dist_init(&o) == NULL, M2_ERR_UNSUPPORTED, "need the \"nosuch\" backend, which is not in this build");
}

/* ---- the TCP rendezvous between forked ranks ---- */

/* Fork world ranks (rank r gets addr/port, world_of[r] as its world size, its own timeout); each exchanges 8 bytes
 * (its rank * 11) and exits 0 when the table is right, 1 on a wrong table, 2 + the error code class on failure,
 * writing its message to msgs[r] through a pipe. Returns the number of ranks that exited 0. */
static int run_ranks(int world, const int *world_of, int port, double timeout, int skip_rank, char msgs[][400]) {
  pid_t pids[8];
  int pipes[8][2];
  for (int r = 0; r < world; r++) {
    msgs[r][0] = 0;
    pids[r] = -1;
    if (r == skip_rank) continue;
    if (pipe(pipes[r]) != 0) return -1;
    pids[r] = fork();
    if (pids[r] == 0) {
      close(pipes[r][0]);
      m2_dist_env e = {0};
      e.rank = r;
      e.world = world_of[r];
      e.source = "torchrun";
      snprintf(e.master_addr, sizeof e.master_addr, "127.0.0.1");
      e.master_port = port;
      long long mine = r * 11, all[8] = {0};
      m2_status s = m2_dist_rendezvous(&e, timeout, &mine, sizeof mine, all);
      int code = 0;
      if (s != M2_OK) code = 2;
      for (int q = 0; s == M2_OK && q < world; q++)
        if (all[q] != q * 11) code = 1;
      const char *m = m2_errmsg();
      if (write(pipes[r][1], m, strlen(m)) < 0) code = 3;
      _exit(code);
    }
    close(pipes[r][1]);
  }
  int ok = 0;
  for (int r = 0; r < world; r++) {
    if (pids[r] < 0) continue;
    ssize_t n = read(pipes[r][0], msgs[r], 399);
    msgs[r][n > 0 ? n : 0] = 0;
    close(pipes[r][0]);
    int st = 0;
    waitpid(pids[r], &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++;
  }
  return ok;
}

static void test_rendezvous(void) {
  int port = 20000 + (int)(getpid() % 20000);
  char msgs[8][400];
  int w4[] = {4, 4, 4, 4};
  CHECK(run_ranks(4, w4, port, 20, -1, msgs) == 4, "4 ranks exchange their bytes: %s | %s", msgs[0], msgs[1]);
  /* a rank with another world size: every rank that reached rank 0 fails with the same message */
  int wbad[] = {3, 3, 4};
  double t0 = m2_dist_now();
  CHECK(run_ranks(3, wbad, port + 1, 5, -1, msgs) == 0, "mismatched world sizes fail");
  CHECK(strstr(msgs[0], "has world size 4 but rank 0 has 3") != NULL, "rank 0 names the mismatch: %s", msgs[0]);
  CHECK(strstr(msgs[1], "world size") != NULL || strstr(msgs[1], "could not reach") != NULL ||
            strstr(msgs[1], "lost the connection") != NULL, "rank 1 fails: %s", msgs[1]);
  CHECK(m2_dist_now() - t0 < 15, "within the timeout: %.1f s", m2_dist_now() - t0);
  /* a rank that never starts: rank 0 says which one is missing, within its timeout */
  t0 = m2_dist_now();
  CHECK(run_ranks(3, w4, port + 2, 1.5, 2, msgs) == 0, "a missing rank fails the others");
  CHECK(strstr(msgs[0], "missing: 2") != NULL, "rank 0 names the missing rank: %s", msgs[0]);
  CHECK(m2_dist_now() - t0 < 10, "bounded: %.1f s", m2_dist_now() - t0);
  /* no rank 0: the others cannot reach it, within their timeout */
  t0 = m2_dist_now();
  CHECK(run_ranks(2, w4, port + 3, 1.0, 0, msgs) == 0, "no rank 0");
  CHECK(strstr(msgs[1], "could not reach rank 0 at 127.0.0.1") != NULL, "rank 1: %s", msgs[1]);
  CHECK(m2_dist_now() - t0 < 10, "bounded: %.1f s", m2_dist_now() - t0);
  /* no MASTER_ADDR */
  m2_dist_env e = {0};
  e.rank = 1, e.world = 2, e.source = "torchrun";
  long long mine = 0, all[2];
  CHECK_FAILS(m2_dist_rendezvous(&e, 1, &mine, sizeof mine, all) != M2_OK, M2_ERR_VALUE,
              "need MASTER_ADDR and MASTER_PORT (MASTER_ADDR and MASTER_PORT is not set)");
}

/* ---- data parallelism on one rank equals the plain optimizer, bit for bit (ZeRO-1 too) ---- */
static void fill_grads(m2_tensor **ps, int n, int step) {
  for (int i = 0; i < n; i++) {
    m2_release(ps[i]->grad);
    ps[i]->grad = m2_zeros_like(ps[i]);
    float *g = m2_data(ps[i]->grad);
    for (int64_t j = 0; j < m2_numel(ps[i]); j++) g[j] = (float)sin(0.37 * (double)(j + 1) * (i + 1) + step) * 3.0f;
  }
}

static void test_dp_one_rank(void) {
  m2_dist_env env = {0};
  env.world = 1, env.source = "single";
  m2_dist_opts o = {.env = &env};
  m2_dist *g = m2_dist_init(&o);
  int64_t shapes[3] = {7, 30, 5};
  m2_tensor *a[3], *b[3];
  m2_adamw_opts ao = {0.9, 0.95, 1e-8, 0.1};
  m2_optim *oa = m2_adamw_new(&ao), *ob = m2_adamw_new(&ao);
  for (int i = 0; i < 3; i++) {
    a[i] = m2_full(M2_F32, M2_DEV_CPU, 1, &shapes[i], 0.5 + i);
    b[i] = m2_full(M2_F32, M2_DEV_CPU, 1, &shapes[i], 0.5 + i);
    a[i]->requires_grad = b[i]->requires_grad = true;
    m2_optim_add(oa, a[i], NULL, false);
    m2_optim_add(ob, b[i], NULL, false);
  }
  m2_dp_opts dpo = {.bucket_elems = 32, .zero = true}; /* buckets {7}, {30}, {5}: a parameter is never split */
  m2_dp *dp = m2_dp_new(g, ob, &dpo);
  CHECK_NOTNULL(dp);
  if (!dp) return;
  CHECK(m2_dp_nbuckets(dp) == 3 && m2_dp_elems(dp) == 42, "%d buckets", m2_dp_nbuckets(dp));
  for (int step = 0; step < 3; step++) {
    fill_grads(a, 3, step);
    fill_grads(b, 3, step);
    double na = 0, nb = 0;
    CHECK_OK(m2_clip_grad_norm(a, 3, 1.0, &na));
    CHECK_OK(m2_optim_step(oa, 1e-2));
    CHECK_OK(m2_dp_sync_grads(dp));
    CHECK_OK(m2_dp_clip_grad_norm(dp, 1.0, &nb));
    CHECK_OK(m2_dp_step(dp, 1e-2));
    CHECK_CLOSE(nb, na, 0, 1e-14, "grad norm");
  }
  for (int i = 0; i < 3; i++) {
    CHECK(memcmp(m2_data(a[i]), m2_data(b[i]), (size_t)shapes[i] * 4) == 0, "param %d bit for bit", i);
    m2_tensor *s = m2_dp_full_state(dp, i, 1);
    CHECK(s && memcmp(m2_data(s), m2_data(m2_optim_state(oa, i, 1)), (size_t)shapes[i] * 4) == 0, "state %d", i);
    CHECK_OK(m2_dp_load_state(dp, i, 1, s));
    m2_release(s);
  }
  m2_dp_free(dp);
  m2_optim_free(oa), m2_optim_free(ob);
  for (int i = 0; i < 3; i++) m2_release(a[i]), m2_release(b[i]);
  m2_dist_free(g, false);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  test_env();
  test_self();
  test_rendezvous();
  test_dp_one_rank();
  return check_finish("test_dist");
}
