/* autograd.c — the tape's nodes: grad mode, recording a node for an op call (m2_record, called by the dispatcher
 * in op.c), node lifetime. It sits below the ops and calls none of them; the reverse walk that runs their
 * backward kernels is m2_backward in backward.c. */
#include "autograd.h"
#include <stdlib.h>
#include <string.h>

static _Thread_local int g_no_grad;
static uint64_t g_seq;
static long g_live_nodes;
static m2_node *g_first, *g_last; /* the live nodes, oldest first */

static void list_add(m2_node *n) {
  n->prev = g_last;
  n->next = NULL;
  if (g_last) g_last->next = n;
  else g_first = n;
  g_last = n;
}

static void list_remove(m2_node *n) {
  if (n->prev) n->prev->next = n->next;
  else g_first = n->next;
  if (n->next) n->next->prev = n->prev;
  else g_last = n->prev;
  n->prev = n->next = NULL;
}

static bool g_drop_unread = true;

bool m2_tape_drop_unread(bool on) {
  bool old = g_drop_unread;
  g_drop_unread = on;
  return old;
}

bool m2_grad_enabled(void) { return g_no_grad == 0; }
void m2_no_grad_push(void) { g_no_grad++; }
void m2_no_grad_pop(void) { if (g_no_grad > 0) g_no_grad--; }
long m2_live_nodes(void) { return g_live_nodes; }

m2_status m2_requires_grad_(m2_tensor *t, bool on) {
  if (t->grad_fn)
    return m2_fail(M2_ERR_AUTOGRAD, "requires_grad can only be set on leaf tensors (this one was made by '%s'); "
                                    "use detach() first", t->grad_fn->call.op->name);
  if (on && !m2_dtype_is_float(t->dtype))
    return m2_fail(M2_ERR_DTYPE, "only float tensors can require grad, this one is %s", m2_dtype_name(t->dtype));
  t->requires_grad = on;
  return M2_OK;
}

m2_tensor *m2_detach(m2_tensor *t) { return m2_alias(t); }

void m2_node_retain(m2_node *n) { n->refcount++; }

void m2_node_drop_call(m2_node *n) {
  if (n->call.op->drop) n->call.op->drop(&n->call);
  for (int i = 0; i < n->call.n_in; i++) { m2_release(n->call.in[i]); n->call.in[i] = NULL; }
  for (int i = 0; i < M2_MAX_SAVED; i++) { m2_release(n->call.saved[i]); n->call.saved[i] = NULL; }
  for (int i = 0; i < M2_MAX_OUT; i++) {
    m2_release(n->call.out[i]); n->call.out[i] = NULL;
    m2_release(n->gout[i]); n->gout[i] = NULL;
  }
}

void m2_node_release(m2_node *n) {
  if (!n || --n->refcount > 0) return;
  m2_node_drop_call(n);
  list_remove(n);
  g_live_nodes--;
  free(n);
}

m2_status m2_record(m2_opcall *c, m2_tensor **outs) {
  m2_node *n = calloc(1, sizeof *n);
  if (!n) return m2_fail(M2_ERR_OOM, "out of host memory for a tape node");
  g_live_nodes++;
  n->head.release = m2_node_release;
  n->seq = ++g_seq;
  n->call = *c;
  n->n_out = c->n_out;
  const unsigned unread = c->op->bwd_unread_of ? c->op->bwd_unread_of(c) : c->op->bwd_unread;
  for (int i = 0; i < c->n_in; i++) {
    m2_tensor *in = c->in[i];
    n->call.needs_din[i] = in && in->requires_grad;
    if (!in) continue;
    const bool param = !in->grad_fn && in->requires_grad; /* held by the model anyway; its .grad is on it */
    if (!(unread & M2_IN(i)) || !g_drop_unread || param) {
      m2_retain(in);
      continue;
    }
    /* the backward reads only in's metadata: keep that, with what routes its gradient, and not its data */
    m2_tensor *m = m2_meta_raw(in);
    if (!m) { m2_retain(in); continue; } /* out of host memory for a header: keep the input whole */
    m->requires_grad = in->requires_grad;
    if (in->grad_fn) {
      m->grad_fn = in->grad_fn;
      m->grad_fn_out = in->grad_fn_out;
      m2_node_retain(in->grad_fn);
    }
    n->call.in[i] = m;
  }
  for (int i = 0; i < c->n_out; i++) {
    m2_tensor *o = c->out[i];
    n->out_ndim[i] = o->ndim;
    memcpy(n->out_shape[i], o->shape, sizeof o->shape);
    n->out_dtype[i] = o->dtype;
    n->out_device = o->device;
    n->call.out[i] = (c->op->flags & M2_OP_KEEP_OUTPUTS) ? m2_alias(o) : NULL;
    o->requires_grad = m2_dtype_is_float(o->dtype);
    if (o->requires_grad) {
      o->grad_fn = n;
      o->grad_fn_out = i;
      n->refcount++;
    }
    outs[i] = o;
    c->out[i] = NULL;
  }
  for (int i = 0; i < c->n_saved; i++) c->saved[i] = NULL; /* moved into the node */
  if (n->refcount == 0) { m2_node_drop_call(n); g_live_nodes--; free(n); }
  else list_add(n);
  return M2_OK;
}

/* ---- tape memory accounting (autograd.h) ---- */

const char *m2_tape_role_name(int role) {
  static const char *const names[M2_TAPE_NROLES] = {"input", "param", "saved", "output", "grad"};
  return role >= 0 && role < M2_TAPE_NROLES ? names[role] : "?";
}

/* A set of storages (open addressing on the pointer). */
typedef struct buf_set {
  const m2_storage **slot;
  size_t mask;
} buf_set;

/* Insert s; true when it was not there yet. */
static bool set_add(buf_set *b, const m2_storage *s) {
  size_t h = ((uintptr_t)s >> 4) * 0x9E3779B97F4A7C15ull;
  for (size_t i = h & b->mask;; i = (i + 1) & b->mask) {
    if (b->slot[i] == s) return false;
    if (!b->slot[i]) { b->slot[i] = s; return true; }
  }
}

typedef struct tape_acc {
  buf_set seen;
  m2_tape_row *rows;
  int n, cap;
  m2_tape_totals tot;
  bool oom;
} tape_acc;

/* Count reference t (of node op's role) into its row; its buffer's bytes the first time the buffer is seen. */
static void acc_ref(tape_acc *a, const char *op, int role, const m2_tensor *t) {
  if (!t || !t->storage) return; /* a data-less input kept for its metadata (m2_op.bwd_unread) holds no buffer */
  m2_tape_row *r = NULL;
  for (int i = a->n - 1; i >= 0; i--)
    if (a->rows[i].role == role && a->rows[i].dtype == t->dtype &&
        (a->rows[i].op == op || !strcmp(a->rows[i].op, op))) {
      r = &a->rows[i];
      break;
    }
  if (!r) {
    if (a->n == a->cap) {
      int cap = a->cap ? 2 * a->cap : 64;
      m2_tape_row *nr = realloc(a->rows, (size_t)cap * sizeof *nr);
      if (!nr) { a->oom = true; return; }
      a->rows = nr, a->cap = cap;
    }
    r = &a->rows[a->n++];
    *r = (m2_tape_row){op, role, t->dtype, 0, 0, 0};
  }
  r->refs++;
  a->tot.refs++;
  if (set_add(&a->seen, t->storage)) {
    r->bytes += (long long)t->storage->nbytes;
    r->buffers++;
    a->tot.bytes += (long long)t->storage->nbytes;
    a->tot.buffers++;
    if (role == M2_TAPE_PARAM) a->tot.param_bytes += (long long)t->storage->nbytes;
  }
}

/* the name of a node's rows */
static const char *node_name(const m2_opcall *c) {
  const char *s = c->op->name_of ? c->op->name_of(c) : NULL;
  return s ? s : c->op->name;
}

static bool is_param(const m2_tensor *t) { return t && !t->grad_fn && t->requires_grad; }

static int by_bytes_desc(const void *x, const void *y) {
  const m2_tape_row *a = x, *b = y;
  if (a->bytes != b->bytes) return a->bytes < b->bytes ? 1 : -1;
  int c = strcmp(a->op, b->op);
  if (c) return c;
  return a->role != b->role ? a->role - b->role : (int)a->dtype - (int)b->dtype;
}

int m2_tape_rows(m2_tape_row *rows, int max, m2_tape_totals *tot) {
  tape_acc a = {0};
  size_t refs = 0;
  for (m2_node *n = g_first; n; n = n->next) {
    a.tot.nodes++;
    refs += (size_t)n->call.n_in + M2_MAX_SAVED + 2 * M2_MAX_OUT;
  }
  size_t cap = 64;
  while (cap < 2 * refs) cap *= 2;
  a.seen.slot = calloc(cap, sizeof *a.seen.slot);
  a.seen.mask = cap - 1;
  if (!a.seen.slot) return -1;
  /* parameters first: their buffers are the model's, whichever node holds them first */
  for (m2_node *n = g_first; n; n = n->next)
    for (int i = 0; i < n->call.n_in; i++)
      if (is_param(n->call.in[i])) acc_ref(&a, node_name(&n->call), M2_TAPE_PARAM, n->call.in[i]);
  for (m2_node *n = g_first; n; n = n->next) {
    const m2_opcall *c = &n->call;
    const char *op = node_name(c);
    for (int i = 0; i < c->n_in; i++)
      if (!is_param(c->in[i])) acc_ref(&a, op, M2_TAPE_INPUT, c->in[i]);
    for (int i = 0; i < M2_MAX_SAVED; i++) acc_ref(&a, op, M2_TAPE_SAVED, c->saved[i]);
    for (int i = 0; i < M2_MAX_OUT; i++) acc_ref(&a, op, M2_TAPE_OUTPUT, c->out[i]);
    for (int i = 0; i < M2_MAX_OUT; i++) acc_ref(&a, op, M2_TAPE_GRAD, n->gout[i]);
  }
  free(a.seen.slot);
  if (a.oom) { free(a.rows); return -1; }
  if (a.n > 1) qsort(a.rows, (size_t)a.n, sizeof *a.rows, by_bytes_desc);
  for (int i = 0; i < a.n && i < max; i++) rows[i] = a.rows[i];
  free(a.rows);
  if (tot) *tot = a.tot;
  return a.n;
}

