/* dist.h — process groups for training on several processes (one per GPU, or CPU ranks in CI): rank, world size and
 * local rank read from the launcher's environment, and collectives over f32 buffers behind one interface whose
 * backends register like the device backends of backend.h:
 *   "self"  one process (world 1): every collective is a copy or nothing; the default
 *   "mpi"   Open MPI on host memory (core/dist_mpi.c, compiled when CMake finds MPI; M2_HAVE_MPI)
 *   "nccl"  NCCL on CUDA memory (dist_nccl.cu of the CUDA library, registered by m2_cuda_register() with NCCL)
 *
 * Environment (m2_dist_env_parse; the first set that is present wins, a partial set is an error):
 *   torchrun-style  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT   (also what `m2lab launch` sets)
 *   Open MPI        OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK   (mpirun)
 *   Slurm           SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID, inside `srun` only
 *                   (SLURM_STEP_ID set: a batch script's own shell is one process); MASTER_ADDR defaults to the first
 *                   host of SLURM_STEP_NODELIST
 *   none            rank 0 of 1
 *
 * Collectives (every rank calls the same ones in the same order; each waits at most the group's timeout, then fails
 * with a message naming the collective, the rank and the time waited; after a failure the group is broken and every
 * later call fails at once). Sums are deterministic: the MPI backend adds the ranks' values in rank order,
 * ((x0 + x1) + x2) + ..., whatever algorithm moves the data, so every rank gets the same bits and a run of R ranks
 * adds gradients exactly as one process accumulating R micro-batches does. */
#ifndef M2_DIST_H
#define M2_DIST_H
#include "tensor.h"
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_dist_env {
  int rank, world, local_rank;
  char master_addr[256]; /* "" when not given */
  int master_port;       /* 0 when not given */
  const char *source;    /* "single", "torchrun", "openmpi", "slurm" */
  bool under_mpi;        /* started by mpirun (OMPI_COMM_WORLD_*) or srun with PMI: MPI_Init can wire the ranks */
} m2_dist_env;

/* A getenv: name -> value or NULL. */
typedef const char *(*m2_getenv_fn)(void *ctx, const char *name);

/* Read rank, world and local rank from the environment (get NULL: the process's own, getenv). Bad values (not an
 * integer, rank >= world, world < 1, a variable of a set missing, MASTER_PORT out of range) fail with a message
 * naming the variables and their values. */
m2_status m2_dist_env_parse(m2_getenv_fn get, void *ctx, m2_dist_env *out);

typedef struct m2_dist m2_dist;

/* A backend: buffers of collectives live in memory of device type `devtype` (tensors are checked before the call:
 * contiguous, F32 where the collective sums or gathers floats, on that device type). */
typedef struct m2_dist_backend {
  const char *name;
  m2_devtype devtype;
  m2_status (*init)(m2_dist *g);            /* g->env, g->timeout_s set; sets g->state */
  void (*finalize)(m2_dist *g, bool abort); /* abort: a failed job; take the other ranks down rather than wait */
  m2_status (*allreduce_sum)(m2_dist *g, m2_tensor *t);                          /* t (n) in place */
  m2_status (*reduce_scatter_sum)(m2_dist *g, const m2_tensor *send, m2_tensor *recv); /* (world*n) -> (n) */
  m2_status (*allgather)(m2_dist *g, const m2_tensor *send, m2_tensor *recv);          /* (n) -> (world*n) */
  m2_status (*broadcast)(m2_dist *g, m2_tensor *t, int root);                    /* any dtype, in place */
  m2_status (*allgather_host)(m2_dist *g, const void *send, void *recv, size_t nbytes); /* host bytes, small */
  m2_status (*barrier)(m2_dist *g);
  /* any dtype: send_counts[q] elements to rank q, packed in rank order; recv_counts[q] from rank q, likewise */
  m2_status (*alltoallv)(m2_dist *g, const m2_tensor *send, const int64_t *send_counts, m2_tensor *recv,
                         const int64_t *recv_counts);
} m2_dist_backend;

struct m2_dist {
  m2_dist_env env;
  const m2_dist_backend *backend;
  void *state;       /* the backend's */
  double timeout_s;  /* each collective and the rendezvous */
  bool broken;       /* a collective failed: the group is unusable */
  char broken_msg[512];
  /* Signals received (SIGINT / SIGTERM; the host's counter), or NULL. A wait stops with M2_ERR_INTERRUPTED at the
   * second signal, or M2_DIST_SIGNAL_GRACE seconds after the first: the other ranks got the same signal and reach the
   * collective soon unless one of them is gone (a launcher's SIGTERM after a rank died). */
  volatile const int *cancel;
};

typedef struct m2_dist_opts {
  const char *backend;   /* NULL or "auto": world 1 -> "self"; CUDA buffers -> "nccl"; host buffers -> "mpi" */
  m2_devtype devtype;    /* where the training tensors live */
  double timeout_s;      /* <= 0: M2_DIST_DEFAULT_TIMEOUT */
  const m2_dist_env *env; /* NULL: parse the process's environment */
} m2_dist_opts;

#define M2_DIST_DEFAULT_TIMEOUT 300.0

/* Register a backend (by name; a later one of the same name replaces it). "self" and, when built, "mpi" are there
 * from the start. */
void m2_dist_register(const m2_dist_backend *b);
const m2_dist_backend *m2_dist_backend_get(const char *name); /* NULL: not registered */
/* The names registered, comma-separated (for messages). */
const char *m2_dist_backend_names(void);

/* Start the process group (rendezvous with the other ranks). NULL on failure (message set). */
m2_dist *m2_dist_init(const m2_dist_opts *o);
/* Finish: abort = true takes the other ranks down (MPI_Abort) instead of waiting for them in a clean finalize. */
void m2_dist_free(m2_dist *g, bool abort);

/* Collectives (tensor checks in the messages name the collective and the tensor's shape / dtype / device). */
m2_status m2_dist_allreduce_sum(m2_dist *g, m2_tensor *t);
m2_status m2_dist_reduce_scatter_sum(m2_dist *g, const m2_tensor *send, m2_tensor *recv);
m2_status m2_dist_allgather(m2_dist *g, const m2_tensor *send, m2_tensor *recv);
m2_status m2_dist_broadcast(m2_dist *g, m2_tensor *t, int root);
m2_status m2_dist_allgather_host(m2_dist *g, const void *send, void *recv, size_t nbytes);
m2_status m2_dist_barrier(m2_dist *g);
/* All-to-all with counts (the token exchange of expert parallelism): rank r sends send_counts[q] elements of `send`
 * to rank q and receives recv_counts[q] elements from rank q; both buffers are packed in rank order (the block for
 * rank q starts after the blocks for ranks 0 .. q-1), so sum(send_counts) = numel(send) and sum(recv_counts) =
 * numel(recv). send and recv: contiguous, one dtype (any: the bytes travel), on one device, not the same tensor.
 * recv_counts[q] must equal rank q's send_counts[r]: exchange the counts first (m2_dist_allgather_host); a mismatch
 * is caught by the MPI library on CPU ranks, not by every backend. Counts are host arrays of world entries. */
m2_status m2_dist_alltoallv(m2_dist *g, const m2_tensor *send, const int64_t *send_counts, m2_tensor *recv,
                            const int64_t *recv_counts);
/* Every rank passes its text (e.g. the model spec and options as JSON); fails on every rank, naming the first rank
 * whose text's hash differs from rank 0's, unless all are equal. `what` names the text in the message. */
m2_status m2_dist_check_same(m2_dist *g, const char *what, const char *text, size_t len);

/* ---- for backends ---- */
/* Deadline bookkeeping of one wait: m2_dist_waited(g, t0) -> seconds since t0 (monotonic clock). */
double m2_dist_now(void);
/* Should a wait stop now (see m2_dist.cancel)? *sig_at: 0 at the start of the wait, then when the first signal was seen. */
bool m2_dist_cancelled(const m2_dist *g, double *sig_at);
#define M2_DIST_SIGNAL_GRACE 5.0
/* Sleep a little between polls (the n-th poll of a wait: from 20 us up to 2 ms). */
void m2_dist_backoff(int n);
/* The message of a collective that ran out of time, and the group marked broken. */
m2_status m2_dist_timeout(m2_dist *g, const char *what, double waited);
/* Mark the group broken with the current message (after a backend failure); returns `code`. */
m2_status m2_dist_break(m2_dist *g, m2_status code);
/* Exchange `n` bytes per rank with every rank before any backend runs (NCCL's unique id): over MPI when the
 * process was started by mpirun / srun and MPI is built in, else over the TCP rendezvous at MASTER_ADDR:MASTER_PORT
 * (core/dist_rendezvous.c). out: (world * n) bytes, rank r's at r * n. */
m2_status m2_dist_exchange(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out);
/* The TCP rendezvous itself: rank 0 listens at MASTER_ADDR:MASTER_PORT, the others connect (retrying until the
 * timeout), rank 0 checks every rank's world size and blob size and answers each with the whole table (or with the
 * error, so that every rank fails with the same message). */
m2_status m2_dist_rendezvous(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out);

#ifdef __cplusplus
}
#endif
#endif
