/* dist_nccl.cu — the "nccl" collective backend (core/dist.h) on CUDA memory, registered by m2_cuda_register() when
 * the CUDA library is built with NCCL (M2_HAVE_NCCL). One process per GPU: rank r uses device local_rank % the
 * devices it sees. NCCL's unique id goes from rank 0 to the others through m2_dist_exchange (MPI under mpirun /
 * srun, else the TCP rendezvous at MASTER_ADDR:MASTER_PORT).
 *
 * The communicator is non-blocking (ncclConfig_t.blocking = 0) and every collective runs on the device's m2 stream
 * (ordered after the kernels that produced its input) and is then waited for by polling the stream and
 * ncclCommGetAsyncError, with the group's timeout and cancel flag: a dead peer aborts the communicator and fails the
 * call instead of hanging (alltoallv, the token exchange of expert parallelism: grouped ncclSend / ncclRecv, the
 * same wait). Waiting after each collective keeps the interface simple; overlapping the gradient
 * buckets with the backward (a side stream and events) is the optimisation still to come. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_backend.h"
#include "cuda_check.h"
#include "dist.h"

extern "C" cudaStream_t m2_cuda_stream(int index); /* backend.cu */

typedef struct nccl_state {
  ncclComm_t comm;
  int dev;
  void *scratch; /* device bytes for host all-gathers and the barrier */
  size_t scratch_cap;
} nccl_state;

static m2_status nccl_fail(ncclResult_t r, const char *what) {
  return m2_fail(M2_ERR_CUDA, "dist %s: NCCL error: %s", what, ncclGetErrorString(r));
}

/* Wait for the collective just issued on the stream (or, stream NULL, for the communicator to leave "in progress"). */
static m2_status nccl_wait(m2_dist *g, const char *what, bool on_stream) {
  nccl_state *s = (nccl_state *)g->state;
  cudaStream_t st = m2_cuda_stream(s->dev);
  double t0 = m2_dist_now(), sig_at = 0;
  for (int n = 0;; n++) {
    ncclResult_t ar = ncclSuccess;
    ncclCommGetAsyncError(s->comm, &ar);
    if (ar != ncclSuccess && ar != ncclInProgress) {
      m2_status e = nccl_fail(ar, what);
      ncclCommAbort(s->comm);
      s->comm = NULL;
      return m2_dist_break(g, e);
    }
    if (on_stream) {
      cudaError_t q = cudaStreamQuery(st);
      if (q == cudaSuccess) return M2_OK;
      if (q != cudaErrorNotReady) {
        m2_fail(M2_ERR_CUDA, "dist %s: %s", what, cudaGetErrorString(q));
        return m2_dist_break(g, M2_ERR_CUDA);
      }
    } else if (ar == ncclSuccess) {
      return M2_OK;
    }
    bool cancel = m2_dist_cancelled(g, &sig_at);
    double waited = m2_dist_now() - t0;
    if (cancel || waited > g->timeout_s) {
      ncclCommAbort(s->comm);
      s->comm = NULL;
      if (!cancel) return m2_dist_timeout(g, what, waited);
      m2_fail(M2_ERR_INTERRUPTED, "dist %s: interrupted (rank %d of %d) while waiting for the other ranks", what,
              g->env.rank, g->env.world);
      return m2_dist_break(g, M2_ERR_INTERRUPTED);
    }
    m2_dist_backoff(n);
  }
}

#define NCCL_ISSUE(g, what, call)                                   \
  do {                                                              \
    ncclResult_t r_ = (call);                                       \
    if (r_ != ncclSuccess && r_ != ncclInProgress)                  \
      return m2_dist_break((g), nccl_fail(r_, (what)));             \
  } while (0)

static m2_status ensure_scratch(nccl_state *s, size_t n) {
  if (n <= s->scratch_cap) return M2_OK;
  if (s->scratch) cudaFree(s->scratch);
  s->scratch = NULL;
  s->scratch_cap = 0;
  M2_CUDA_TRY(cudaMalloc(&s->scratch, n));
  s->scratch_cap = n;
  return M2_OK;
}

static m2_status nccl_init(m2_dist *g) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return m2_fail(M2_ERR_DEVICE, "dist nccl: no CUDA device visible to rank %d", g->env.rank);
  }
  nccl_state *s = (nccl_state *)calloc(1, sizeof *s);
  if (!s) return m2_fail(M2_ERR_OOM, "dist nccl: out of host memory");
  s->dev = g->env.local_rank % count;
  g->state = s;
  M2_CUDA_TRY(cudaSetDevice(s->dev));
  if (!m2_cuda_stream(s->dev)) return m2_fail_context(m2_errcode(), "dist nccl: device %d", s->dev);
  ncclUniqueId id, *all = (ncclUniqueId *)calloc((size_t)g->env.world, sizeof(ncclUniqueId));
  if (!all) return m2_fail(M2_ERR_OOM, "dist nccl: out of host memory");
  memset(&id, 0, sizeof id);
  if (g->env.rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) { free(all); return nccl_fail(r, "ncclGetUniqueId"); }
  }
  m2_status st = m2_dist_exchange(&g->env, g->timeout_s, &id, sizeof id, all);
  if (st == M2_OK) id = all[0];
  free(all);
  M2_TRY(st);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&s->comm, g->env.world, id, g->env.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(r, "ncclCommInitRank");
  return nccl_wait(g, "ncclCommInitRank", false);
}

static void nccl_finalize(m2_dist *g, bool abort) {
  nccl_state *s = (nccl_state *)g->state;
  if (!s) return;
  if (s->comm) {
    if (abort) ncclCommAbort(s->comm);
    else {
      ncclCommFinalize(s->comm);
      if (nccl_wait(g, "ncclCommFinalize", false) == M2_OK) ncclCommDestroy(s->comm);
    }
  }
  if (s->scratch) cudaFree(s->scratch);
  free(s);
  g->state = NULL;
}

static m2_status nccl_allreduce(m2_dist *g, m2_tensor *t) {
  nccl_state *s = (nccl_state *)g->state;
  NCCL_ISSUE(g, "allreduce_sum", ncclAllReduce(m2_data(t), m2_data(t), (size_t)m2_numel(t), ncclFloat, ncclSum,
                                               s->comm, m2_cuda_stream(s->dev)));
  return nccl_wait(g, "allreduce_sum", true);
}

static m2_status nccl_reduce_scatter(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  nccl_state *s = (nccl_state *)g->state;
  NCCL_ISSUE(g, "reduce_scatter_sum", ncclReduceScatter(m2_data(send), m2_data(recv), (size_t)m2_numel(recv),
                                                        ncclFloat, ncclSum, s->comm, m2_cuda_stream(s->dev)));
  return nccl_wait(g, "reduce_scatter_sum", true);
}

static m2_status nccl_allgather(m2_dist *g, const m2_tensor *send, m2_tensor *recv) {
  nccl_state *s = (nccl_state *)g->state;
  NCCL_ISSUE(g, "allgather", ncclAllGather(m2_data(send), m2_data(recv), (size_t)m2_numel(send), ncclFloat, s->comm,
                                           m2_cuda_stream(s->dev)));
  return nccl_wait(g, "allgather", true);
}

static m2_status nccl_broadcast(m2_dist *g, m2_tensor *t, int root) {
  nccl_state *s = (nccl_state *)g->state;
  size_t n = (size_t)m2_numel(t) * m2_elsize(t);
  NCCL_ISSUE(g, "broadcast", ncclBroadcast(m2_data(t), m2_data(t), n, ncclUint8, root, s->comm,
                                           m2_cuda_stream(s->dev)));
  return nccl_wait(g, "broadcast", true);
}

/* host bytes: through the device scratch (an in-place all-gather) */
static m2_status nccl_allgather_host(m2_dist *g, const void *send, void *recv, size_t nbytes) {
  nccl_state *s = (nccl_state *)g->state;
  size_t total = nbytes * (size_t)g->env.world;
  M2_TRY(ensure_scratch(s, total ? total : 1));
  cudaStream_t st = m2_cuda_stream(s->dev);
  char *mine = (char *)s->scratch + nbytes * (size_t)g->env.rank;
  M2_CUDA_TRY(cudaMemcpyAsync(mine, send, nbytes, cudaMemcpyHostToDevice, st));
  NCCL_ISSUE(g, "allgather_host", ncclAllGather(mine, s->scratch, nbytes, ncclUint8, s->comm, st));
  M2_TRY(nccl_wait(g, "allgather_host", true));
  M2_CUDA_TRY(cudaMemcpyAsync(recv, s->scratch, total, cudaMemcpyDeviceToHost, st));
  M2_CUDA_TRY(cudaStreamSynchronize(st));
  return M2_OK;
}

static m2_status nccl_barrier(m2_dist *g) {
  nccl_state *s = (nccl_state *)g->state;
  M2_TRY(ensure_scratch(s, sizeof(float)));
  NCCL_ISSUE(g, "barrier", ncclAllReduce(s->scratch, s->scratch, 1, ncclFloat, ncclSum, s->comm,
                                         m2_cuda_stream(s->dev)));
  return nccl_wait(g, "barrier", true);
}

/* all-to-all with counts: one NCCL group of a send and a receive per peer with a non-empty block (bytes, so any
 * dtype), the block to and from this rank itself a device copy on the same stream; then the usual wait (timeout,
 * cancel, async errors) */
static m2_status nccl_alltoallv(m2_dist *g, const m2_tensor *send, const int64_t *sc, m2_tensor *recv,
                                const int64_t *rc) {
  nccl_state *s = (nccl_state *)g->state;
  cudaStream_t st = m2_cuda_stream(s->dev);
  const size_t es = m2_elsize(send);
  const char *sp = (const char *)m2_data(send);
  char *rp = (char *)m2_data(recv);
  const int R = g->env.world, me = g->env.rank;
  size_t so = 0, ro = 0;
  NCCL_ISSUE(g, "alltoallv", ncclGroupStart());
  for (int q = 0; q < R; q++) {
    const size_t sn = (size_t)sc[q] * es, rn = (size_t)rc[q] * es;
    if (q == me) {
      if (sn != rn) {
        ncclGroupEnd();
        return m2_fail(M2_ERR_VALUE, "dist alltoallv: rank %d sends itself %zu bytes but expects %zu", me, sn, rn);
      }
      if (sn && cudaMemcpyAsync(rp + ro, sp + so, sn, cudaMemcpyDeviceToDevice, st) != cudaSuccess) {
        ncclGroupEnd();
        m2_fail(M2_ERR_CUDA, "dist alltoallv: %s", cudaGetErrorString(cudaGetLastError()));
        return m2_dist_break(g, M2_ERR_CUDA);
      }
    } else {
      if (sn) NCCL_ISSUE(g, "alltoallv", ncclSend(sp + so, sn, ncclUint8, q, s->comm, st));
      if (rn) NCCL_ISSUE(g, "alltoallv", ncclRecv(rp + ro, rn, ncclUint8, q, s->comm, st));
    }
    so += sn;
    ro += rn;
  }
  NCCL_ISSUE(g, "alltoallv", ncclGroupEnd());
  return nccl_wait(g, "alltoallv", true);
}

static const m2_dist_backend nccl_backend = {
    "nccl", M2_CUDA, nccl_init, nccl_finalize, nccl_allreduce, nccl_reduce_scatter, nccl_allgather, nccl_broadcast,
    nccl_allgather_host, nccl_barrier, nccl_alltoallv,
};

extern "C" void m2_cuda_register_nccl(void) { m2_dist_register(&nccl_backend); }
