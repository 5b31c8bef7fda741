/* dist_rendezvous.c — the small TCP rendezvous of processes started without MPI (torchrun-style environment,
 * `m2lab launch` on GPUs): every rank hands rank 0 a few bytes (NCCL's unique id, ...) at MASTER_ADDR:MASTER_PORT
 * and gets back every rank's. Only bootstrap data goes through it; collectives run on NCCL or MPI.
 *
 * Wire format (little-endian as the host is; the ranks of one job run the same binary):
 *   peer -> rank 0:  u32 magic 'M2RV', u32 rank, u32 world, u32 0, u64 n, then n bytes
 *   rank 0 -> peer:  u32 status (0 ok, 1 error), u32 0, u64 len, then the world * n table or an error message
 * Rank 0 checks that every peer has its world size and blob size and a distinct rank; on a mismatch it answers every
 * peer that reached it with the same message, so they fail alike. Every wait is bounded by the timeout. */
#define _GNU_SOURCE
#include "dist.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RV_MAGIC 0x5652324du /* "M2RV" */

typedef struct rv_hello {
  uint32_t magic, rank, world, pad;
  uint64_t n;
} rv_hello;

typedef struct rv_reply {
  uint32_t status, pad;
  uint64_t len;
} rv_reply;

static int remaining_ms(double deadline) {
  double left = deadline - m2_dist_now();
  return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

/* Read exactly n bytes before the deadline: 0 ok, -1 error / closed, -2 timed out */
static int read_all(int fd, void *buf, size_t n, double deadline) {
  char *p = buf;
  while (n) {
    struct pollfd pf = {fd, POLLIN, 0};
    int ms = remaining_ms(deadline);
    if (ms == 0) return -2;
    int k = poll(&pf, 1, ms);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return -1;
    if (k == 0) return -2;
    ssize_t got = recv(fd, p, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    p += got;
    n -= (size_t)got;
  }
  return 0;
}

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n) {
    ssize_t put = send(fd, p, n, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return -1;
    p += put;
    n -= (size_t)put;
  }
  return 0;
}

static void reply(int fd, uint32_t status, const void *data, uint64_t len) {
  rv_reply r = {status, 0, len};
  if (write_all(fd, &r, sizeof r) == 0 && len) write_all(fd, data, (size_t)len);
}

/* rank 0: accept world - 1 peers, check them, answer each with the table (or the error) */
static m2_status rv_root(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, unsigned char *out) {
  int R = env->world;
  double deadline = m2_dist_now() + timeout_s;
  int ls = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool v6 = ls >= 0;
  if (!v6) ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0) return m2_fail(M2_ERR_IO, "dist rendezvous: rank 0 cannot open a socket: %s", strerror(errno));
  int one = 1, zero = 0;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc;
  if (v6) {
    setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {0};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons((uint16_t)env->master_port);
    rc = bind(ls, (struct sockaddr *)&a, sizeof a);
  } else {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)env->master_port);
    rc = bind(ls, (struct sockaddr *)&a, sizeof a);
  }
  if (rc != 0 || listen(ls, R) != 0) {
    int e = errno;
    close(ls);
    return m2_fail(M2_ERR_IO, "dist rendezvous: rank 0 cannot listen on port %d (MASTER_PORT): %s%s", env->master_port,
                   strerror(e), e == EADDRINUSE ? " (another job uses it: choose another MASTER_PORT)" : "");
  }
  int *fds = calloc((size_t)R, sizeof *fds);
  if (!fds) { close(ls); return m2_fail(M2_ERR_OOM, "dist rendezvous: out of host memory"); }
  memcpy(out, mine, n);
  char err[400] = "";
  int joined = 1;
  while (joined < R && !err[0]) {
    struct pollfd pf = {ls, POLLIN, 0};
    int ms = remaining_ms(deadline);
    int k = ms ? poll(&pf, 1, ms) : 0;
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break; /* timed out */
    int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) continue;
    rv_hello h;
    if (read_all(fd, &h, sizeof h, deadline) != 0 || h.magic != RV_MAGIC) { close(fd); continue; } /* not ours */
    if (h.world != (uint32_t)R)
      snprintf(err, sizeof err, "rank %u has world size %u but rank 0 has %d: the ranks were started with different "
               "WORLD_SIZE", h.rank, h.world, R);
    else if (h.rank == 0 || h.rank >= (uint32_t)R || fds[h.rank])
      snprintf(err, sizeof err, "two processes claim rank %u (or a rank outside 1 .. %d): check RANK of each process",
               h.rank, R - 1);
    else if (h.n != n)
      snprintf(err, sizeof err, "rank %u sent %llu bytes, rank 0 expected %zu: the ranks run different m2lab builds",
               h.rank, (unsigned long long)h.n, n);
    if (err[0]) {
      reply(fd, 1, err, strlen(err) + 1);
      close(fd);
      break;
    }
    if (read_all(fd, out + (size_t)h.rank * n, n, deadline) != 0) { close(fd); continue; }
    fds[h.rank] = fd;
    joined++;
  }
  close(ls);
  if (!err[0] && joined < R) {
    char missing[200] = "";
    for (int r = 1, k = 0; r < R && k < 20; r++)
      if (!fds[r]) {
        size_t l = strlen(missing);
        snprintf(missing + l, sizeof missing - l, "%s%d", k++ ? ", " : "", r);
      }
    snprintf(err, sizeof err, "rank 0 waited %.0f s at port %d for %d ranks, %d arrived (missing: %s): they were not "
             "started, died, or were given another MASTER_ADDR / MASTER_PORT", timeout_s, env->master_port, R - 1,
             joined - 1, missing);
  }
  for (int r = 1; r < R; r++) {
    if (!fds[r]) continue;
    if (err[0]) reply(fds[r], 1, err, strlen(err) + 1);
    else reply(fds[r], 0, out, (uint64_t)R * n);
    close(fds[r]);
  }
  free(fds);
  if (err[0]) return m2_fail(M2_ERR_IO, "dist rendezvous: %s", err);
  return M2_OK;
}

/* other ranks: connect to rank 0 (retrying until the deadline), send, read the table */
static m2_status rv_peer(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, unsigned char *out) {
  double deadline = m2_dist_now() + timeout_s;
  char port[16];
  snprintf(port, sizeof port, "%d", env->master_port);
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int gai = getaddrinfo(env->master_addr, port, &hints, &ai);
  if (gai != 0)
    return m2_fail(M2_ERR_IO, "dist rendezvous: MASTER_ADDR=%s: %s", env->master_addr, gai_strerror(gai));
  int fd = -1, last = 0;
  while (fd < 0 && m2_dist_now() < deadline) {
    for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next) {
      int s = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
      if (s < 0) { last = errno; continue; }
      if (connect(s, p->ai_addr, p->ai_addrlen) == 0) fd = s;
      else { last = errno; close(s); }
    }
    if (fd < 0) {
      struct timespec ts = {0, 100 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  freeaddrinfo(ai);
  if (fd < 0)
    return m2_fail(M2_ERR_IO, "dist rendezvous: rank %d could not reach rank 0 at %s:%d within %.0f s (%s): rank 0 "
                   "was not started, stopped on an error, or MASTER_ADDR / MASTER_PORT differ between ranks",
                   env->rank, env->master_addr, env->master_port, timeout_s, strerror(last));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  rv_hello h = {RV_MAGIC, (uint32_t)env->rank, (uint32_t)env->world, 0, n};
  rv_reply r;
  int rc = write_all(fd, &h, sizeof h) || write_all(fd, mine, n) ? -1 : read_all(fd, &r, sizeof r, deadline);
  m2_status st = M2_OK;
  if (rc == -2)
    st = m2_fail(M2_ERR_IO, "dist rendezvous: rank %d reached rank 0 at %s:%d but got no answer within %.0f s (other "
                 "ranks missing?)", env->rank, env->master_addr, env->master_port, timeout_s);
  else if (rc != 0)
    st = m2_fail(M2_ERR_IO, "dist rendezvous: rank %d lost the connection to rank 0 at %s:%d", env->rank,
                 env->master_addr, env->master_port);
  else if (r.status != 0) {
    char msg[512] = "";
    size_t len = r.len < sizeof msg - 1 ? (size_t)r.len : sizeof msg - 1;
    read_all(fd, msg, len, deadline);
    msg[len] = 0;
    st = m2_fail(M2_ERR_VALUE, "dist rendezvous (rank %d): %s", env->rank, msg);
  } else if (r.len != (uint64_t)env->world * n || read_all(fd, out, (size_t)r.len, deadline) != 0)
    st = m2_fail(M2_ERR_IO, "dist rendezvous: rank %d got a damaged answer from rank 0", env->rank);
  close(fd);
  return st;
}

m2_status m2_dist_rendezvous(const m2_dist_env *env, double timeout_s, const void *mine, size_t n, void *out) {
  if (!env || (!mine && n) || !out) return m2_fail(M2_ERR_VALUE, "dist rendezvous: NULL argument");
  if (env->world == 1) { memmove(out, mine, n); return M2_OK; }
  if (!env->master_addr[0] || !env->master_port)
    return m2_fail(M2_ERR_VALUE, "dist: %d processes (rank %d, %s environment) without MPI need MASTER_ADDR and "
                   "MASTER_PORT (%s%s%s is not set): the address where rank 0 meets the others; `m2lab launch` sets "
                   "them, or start the job with mpirun", env->world, env->rank, env->source,
                   env->master_addr[0] ? "" : "MASTER_ADDR", !env->master_addr[0] && !env->master_port ? " and " : "",
                   env->master_port ? "" : "MASTER_PORT");
  if (timeout_s <= 0) timeout_s = M2_DIST_DEFAULT_TIMEOUT;
  return env->rank == 0 ? rv_root(env, timeout_s, mine, n, out) : rv_peer(env, timeout_s, mine, n, out);
}
