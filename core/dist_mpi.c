/* dist_mpi.c — the "mpi" collective backend (dist.h) on host memory: Open MPI (or any MPI-3) moves the bytes, this
 * file fixes the order of the sums. Compiled when CMake finds MPI (M2_HAVE_MPI).
 *
 * Every collective is non-blocking (MPI_I*) and polled until done, the group's timeout, or a cancel request (Ctrl-C,
 * SIGTERM from the launcher), so a dead rank turns into an error on the others instead of a hang.
 *
 * Sums in rank order: reduce-scatter is an all-to-all of chunks (rank r receives chunk r of every rank) followed by
 * out = ((x0 + x1) + x2) + ... computed by the chunk's owner; all-reduce is that reduce-scatter followed by an
 * all-gather. The bytes moved are those of a ring (2 (R-1)/R of the buffer for an all-reduce) and every rank gets
 * the same bits, whatever algorithm the MPI library picks. */
#define _GNU_SOURCE
#include "dist.h"
#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mpi_state {
  MPI_Comm comm;
  float *tmp; /* all-to-all receive buffer */
  size_t tmp_cap;
  int *counts, *displs, *rcounts, *rdispls; /* (world) each */
} mpi_state;

static bool g_we_inited; /* MPI_Init was ours: ours to finalize */
static int g_users;      /* open groups and bootstraps that use MPI */

static m2_status mpi_fail(int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return m2_fail(M2_ERR_IO, "dist %s: MPI error: %s", what, msg);
}

static m2_status ensure_init(void) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (finalized) return m2_fail(M2_ERR_VALUE, "dist: MPI was already finalized in this process");
  if (!inited) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Init");
    g_we_inited = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_users++;
  return M2_OK;
}

static void release(bool abort) {
  if (g_users > 0) g_users--;
  if (abort) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
    return;
  }
  if (g_users == 0 && g_we_inited) {
    MPI_Finalize();
    g_we_inited = false;
  }
}

/* Poll a request to completion, or until the timeout / a cancel request (g NULL: the bootstrap, timeout only). */
static m2_status wait_req(m2_dist *g, double timeout_s, MPI_Request *req, const char *what) {
  double t0 = m2_dist_now(), sig_at = 0;
  for (int n = 0;; n++) {
    int done = 0;
    int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      m2_status s = mpi_fail(rc, what);
      return g ? m2_dist_break(g, s) : s;
    }
    if (done) return M2_OK;
    if (m2_dist_cancelled(g, &sig_at)) {
      m2_fail(M2_ERR_INTERRUPTED, "dist %s: interrupted (rank %d of %d) while waiting for the other ranks", what,
              g->env.rank, g->env.world);
      return m2_dist_break(g, M2_ERR_INTERRUPTED);
    }
    double waited = m2_dist_now() - t0;
    if (waited > timeout_s) {
      if (g) return m2_dist_timeout(g, what, waited);
      return m2_fail(M2_ERR_IO, "dist %s: waited %.0f s (the timeout) for the other ranks", what, waited);
    }
    if (n < 200) sched_yield(); /* the first polls back to back: most collectives finish in microseconds */
    else m2_dist_backoff(n - 200);
  }
}

static m2_status check_count(int64_t n, const char *what) {
  if (n > INT_MAX)
    return m2_fail(M2_ERR_UNSUPPORTED, "dist %s: %lld elements in one call (MPI counts are int): use smaller buckets",
                   what, (long long)n);
  return M2_OK;
}

static m2_status ensure_tmp(mpi_state *s, size_t nfloats) {
  if (nfloats <= s->tmp_cap) return M2_OK;
  float *t = realloc(s->tmp, nfloats * sizeof *t);
  if (!t) return m2_fail(M2_ERR_OOM, "dist: out of host memory for a %zu-float receive buffer", nfloats);
  s->tmp = t;
  s->tmp_cap = nfloats;
  return M2_OK;
}

/* ---------------- the backend ---------------- */

static m2_status mpi_init(m2_dist *g) {
  M2_TRY(ensure_init());
  mpi_state *s = calloc(1, sizeof *s);
  int R = g->env.world;
  if (s) {
    s->counts = calloc((size_t)R, sizeof(int));
    s->displs = calloc((size_t)R, sizeof(int));
    s->rcounts = calloc((size_t)R, sizeof(int));
    s->rdispls = calloc((size_t)R, sizeof(int));
  }
  if (!s || !s->counts || !s->displs || !s->rcounts || !s->rdispls) {
    if (s) free(s->counts), free(s->displs), free(s->rcounts), free(s->rdispls);
    free(s);
    release(false);
    return m2_fail(M2_ERR_OOM, "dist: out of host memory");
  }
  int size = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (size != g->env.world || rank != g->env.rank) {
    free(s->counts), free(s->displs), free(s->rcounts), free(s->rdispls);
    free(s);
    release(false);
    return m2_fail(M2_ERR_VALUE, "dist: the environment says rank %d of %d (%s) but MPI sees rank %d of %d: CPU ranks "
                   "talk through MPI, so start them with mpirun (or `m2lab launch`, which does)", g->env.rank,
                   g->env.world, g->env.source, rank, size);
  }
  MPI_Comm_dup(MPI_COMM_WORLD, &s->comm);
  MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
  g->state = s;
  return M2_OK;
}

static void mpi_finalize(m2_dist *g, bool abort) {
  mpi_state *s = g->state;
  if (s) {
    if (!abort) MPI_Comm_free(&s->comm);
    free(s->tmp), free(s->counts), free(s->displs), free(s->rcounts), free(s->rdispls);
    free(s);
    g->state = NULL;
  }
  release(abort);
}

/* tmp holds R chunks of c floats (chunk j from rank j); out = their sum in rank order */
static void sum_in_rank_order(const float *tmp, int R, int64_t c, float *out) {
  for (int64_t i = 0; i < c; i++) out[i] = tmp[i];
  for (int j = 1; j < R; j++) {
    const float *x = tmp + (size_t)j * (size_t)c;
    for (int64_t i = 0; i < c; i++) out[i] += x[i];
  }
}

static m2_status mpi_reduce_scatter(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  mpi_state *s = g->state;
  int R = g->env.world;
  int64_t c = m2_numel(recv);
  M2_TRY(check_count(c, "reduce_scatter_sum"));
  M2_TRY(ensure_tmp(s, (size_t)R * (size_t)c));
  MPI_Request req;
  int rc = MPI_Ialltoall(m2_data(send), (int)c, MPI_FLOAT, s->tmp, (int)c, MPI_FLOAT, s->comm, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "reduce_scatter_sum");
  M2_TRY(wait_req(g, g->timeout_s, &req, "reduce_scatter_sum"));
  sum_in_rank_order(s->tmp, R, c, m2_data(recv));
  return M2_OK;
}

static m2_status mpi_allreduce(m2_dist *g, m2_tensor *t) {
  mpi_state *s = g->state;
  int R = g->env.world, me = g->env.rank;
  int64_t n = m2_numel(t);
  M2_TRY(check_count(n, "allreduce_sum"));
  for (int j = 0; j < R; j++) { /* chunk j = [n j / R, n (j+1) / R) */
    int64_t lo = n * j / R, hi = n * (j + 1) / R;
    s->counts[j] = (int)(hi - lo);
    s->displs[j] = (int)lo;
  }
  int c = s->counts[me];
  for (int j = 0; j < R; j++) {
    s->rcounts[j] = c;
    s->rdispls[j] = j * c;
  }
  M2_TRY(ensure_tmp(s, (size_t)R * (size_t)(c ? c : 1)));
  float *buf = m2_data(t);
  MPI_Request req;
  int rc = MPI_Ialltoallv(buf, s->counts, s->displs, MPI_FLOAT, s->tmp, s->rcounts, s->rdispls, MPI_FLOAT, s->comm,
                          &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "allreduce_sum");
  M2_TRY(wait_req(g, g->timeout_s, &req, "allreduce_sum (reduce-scatter)"));
  sum_in_rank_order(s->tmp, R, c, buf + s->displs[me]);
  rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, s->counts, s->displs, MPI_FLOAT, s->comm, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "allreduce_sum");
  return wait_req(g, g->timeout_s, &req, "allreduce_sum (all-gather)");
}

static m2_status mpi_allgather(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  mpi_state *s = g->state;
  int64_t c = m2_numel(send);
  M2_TRY(check_count(c, "allgather"));
  MPI_Request req;
  int rc = MPI_Iallgather(m2_data(send), (int)c, MPI_FLOAT, m2_data(recv), (int)c, MPI_FLOAT, s->comm, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "allgather");
  return wait_req(g, g->timeout_s, &req, "allgather");
}

static m2_status mpi_broadcast(m2_dist *g, m2_tensor *t, int root) {
  mpi_state *s = g->state;
  char *p = m2_data(t);
  size_t left = (size_t)m2_numel(t) * m2_elsize(t);
  while (left) { /* pieces of at most 1 GiB (MPI counts are int) */
    int k = left > (1u << 30) ? (1 << 30) : (int)left;
    MPI_Request req;
    int rc = MPI_Ibcast(p, k, MPI_BYTE, root, s->comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "broadcast");
    M2_TRY(wait_req(g, g->timeout_s, &req, "broadcast"));
    p += k;
    left -= (size_t)k;
  }
  return M2_OK;
}

static m2_status mpi_allgather_host(m2_dist *g, const void *send, void *recv, size_t nbytes) {
  mpi_state *s = g->state;
  M2_TRY(check_count((int64_t)nbytes, "allgather_host"));
  MPI_Request req;
  int rc = MPI_Iallgather(send, (int)nbytes, MPI_BYTE, recv, (int)nbytes, MPI_BYTE, s->comm, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "allgather_host");
  return wait_req(g, g->timeout_s, &req, "allgather_host");
}

static m2_status mpi_barrier(m2_dist *g) {
  mpi_state *s = g->state;
  MPI_Request req;
  int rc = MPI_Ibarrier(s->comm, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "barrier");
  return wait_req(g, g->timeout_s, &req, "barrier");
}

/* MPI_Ialltoallv in units of one element (a contiguous type of elsize bytes: any dtype); counts and displacements
 * are int, so a call moves fewer than 2^31 elements each way */
static m2_status mpi_alltoallv(m2_dist *g, const m2_tensor *send, const int64_t *sc, m2_tensor *recv,
                               const int64_t *rc) {
  mpi_state *s = g->state;
  int R = g->env.world;
  M2_TRY(check_count(m2_numel(send), "alltoallv (send)"));
  M2_TRY(check_count(m2_numel(recv), "alltoallv (recv)"));
  for (int q = 0, so = 0, ro = 0; q < R; q++) { /* packed: displacements are the prefix sums */
    s->counts[q] = (int)sc[q], s->displs[q] = so, so += (int)sc[q];
    s->rcounts[q] = (int)rc[q], s->rdispls[q] = ro, ro += (int)rc[q];
  }
  MPI_Datatype el;
  int rc0 = MPI_Type_contiguous((int)m2_elsize(send), MPI_BYTE, &el);
  if (rc0 == MPI_SUCCESS) rc0 = MPI_Type_commit(&el);
  if (rc0 != MPI_SUCCESS) return mpi_fail(rc0, "alltoallv");
  MPI_Request req;
  int r = MPI_Ialltoallv(m2_data(send), s->counts, s->displs, el, m2_data(recv), s->rcounts, s->rdispls, el, s->comm,
                         &req);
  m2_status st = r == MPI_SUCCESS ? wait_req(g, g->timeout_s, &req, "alltoallv") : mpi_fail(r, "alltoallv");
  MPI_Type_free(&el); /* (legal with the call pending: MPI frees it once nothing uses it) */
  return st;
}

const m2_dist_backend m2_dist_mpi_backend = {
    "mpi", M2_CPU, mpi_init, mpi_finalize, mpi_allreduce, mpi_reduce_scatter, mpi_allgather, mpi_broadcast,
    mpi_allgather_host, mpi_barrier, mpi_alltoallv,
};

/* The bootstrap exchange of dist.h (NCCL's unique id under mpirun): one all-gather on MPI_COMM_WORLD. MPI stays
 * initialised for the group's lifetime; m2_dist_mpi_release() (dist.c, when the group ends) finalizes it. */
m2_status m2_dist_mpi_exchange(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out) {
  M2_TRY(ensure_init());
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != env->world) {
    release(false);
    return m2_fail(M2_ERR_VALUE, "dist: the environment says %d processes but MPI sees %d", env->world, size);
  }
  MPI_Request req;
  int rc = MPI_Iallgather(mine, (int)n, MPI_BYTE, out, (int)n, MPI_BYTE, MPI_COMM_WORLD, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "bootstrap exchange");
  return wait_req(NULL, timeout_s > 0 ? timeout_s : M2_DIST_DEFAULT_TIMEOUT, &req, "bootstrap exchange");
}

void m2_dist_mpi_release(bool abort) { release(abort); }
