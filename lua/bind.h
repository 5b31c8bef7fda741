/* bind.h — shared pieces of the Lua binding module "m2.core": the tensor userdata, argument
 * checks, error reporting, and one register function per binding area.
 *
 * Conventions (see lua/m2/init.lua for the user-facing summary):
 *  - dims, positions and element indices are 1-based in Lua; negative ones count from the
 *    end (-1 = last). Tensor *contents* (token ids, class ids, argmax results, gather/index
 *    tensors) stay 0-based: they are data, not Lua positions.
 *  - every core failure (NULL / m2_status != M2_OK) becomes a Lua error carrying
 *    "FILE:LINE: " of the first stack frame outside the m2 Lua library (lua/m2/ *.lua files), so the
 *    researcher sees the line of their own script.
 *  - new userdata are created first and filled afterwards (M2LUA_RETURN), so an allocation
 *    error in Lua can never leak a tensor.
 *
 * Adding a binding area: write lua/bind_<area>.c with `void m2lua_open_<area>(lua_State *L)`
 * that sets its functions into the module table on top of the stack (use m2lua_setfuncs),
 * declare it below, and call it from luaopen_m2_core (lua/bind_module.c). */
#ifndef M2_LUA_BIND_H
#define M2_LUA_BIND_H
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdbool.h>
#include "m2.h"

#define M2LUA_TENSOR "m2.Tensor" /* registry name of the tensor metatable */

/* ---- the module: luaopen (bind_module.c) + one register function per area ---- */
int luaopen_m2_core(lua_State *L);
void m2lua_open_core(lua_State *L);     /* bind_core.c: error, where, interrupted, cuda_available, version */
void m2lua_open_tensor(lua_State *L);   /* bind_tensor.c: constructors, tensor methods, metamethods */
void m2lua_open_ops(lua_State *L);      /* bind_ops.c: ops.h and ops_mixers.h */
void m2lua_open_autograd(lua_State *L); /* bind_autograd.c: no_grad, gradcheck, leak counters, RNG */
void m2lua_open_optim(lua_State *L);    /* bind_optim.c: optimizers, clipping, schedules */
void m2lua_open_sample(lua_State *L);   /* bind_sample.c: the token sampler (core/sample.h) */
void m2lua_open_recompute(lua_State *L); /* bind_recompute.c: m2.checkpoint (core/recompute.h) */
/* Areas written by other people are declared weak so that m2.core still links while their
 * file is being written; luaopen_m2_core calls each one that is linked in. */
void m2lua_open_data(lua_State *L) __attribute__((weak)); /* bind_data.c: group word problem */
void m2lua_open_runfile(lua_State *L) __attribute__((weak)); /* bind_runfile.c: run files, sweep index */
void m2lua_open_sys(lua_State *L) __attribute__((weak));     /* bind_sys.c: clocks, processes, memory */
void m2lua_open_binfile(lua_State *L) __attribute__((weak)); /* bind_binfile.c: raw tensor-byte files (safetensors) */
void m2lua_open_dist(lua_State *L) __attribute__((weak));    /* bind_dist.c: process groups, data parallelism */

/* Functions of an area go both into the module table (at `mod`) and, when `methods` is
 * non-zero, into the tensor method table (at `methods`) under the same name. */
void m2lua_setfuncs(lua_State *L, int mod, const luaL_Reg *fns);
/* Push the tensor method table (methods are looked up there by __index). */
void m2lua_push_methods(lua_State *L);

/* The directory of the m2 Lua library (".../lua/m2/"): frames inside it are skipped when an
 * error is located. Set by the host; NULL keeps the built-in guess ("/lua/m2/" in the path). */
void m2lua_set_library_dir(const char *dir);

/* ---- errors (all raise; declared int so a C function can `return m2lua_...(L, ...)`) ---- */
/* Push "FILE:LINE: " of the first frame outside the m2 library ("" if there is none). */
void m2lua_where(lua_State *L);
/* Raise the current core message m2_errmsg(), located. */
int m2lua_fail(lua_State *L);
/* Raise a located message; fmt is a printf format (the message itself is never a format). */
int m2lua_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "bad argument #N to 'f' (extramsg)", located. */
int m2lua_argerror(lua_State *L, int arg, const char *extramsg);
/* "bad argument #N to 'f' (TNAME expected, got TYPE)", located. */
int m2lua_typeerror(lua_State *L, int arg, const char *tname);

/* ---- argument checks (raise through m2lua_argerror) ---- */
int64_t m2lua_checkint(lua_State *L, int arg);
int64_t m2lua_optint(lua_State *L, int arg, int64_t def);
double m2lua_checknum(lua_State *L, int arg);
double m2lua_optnum(lua_State *L, int arg, double def);
bool m2lua_optbool(lua_State *L, int arg, bool def);
/* A Lua dim (1-based, negative from the end) of a tensor with `ndim` dims -> 0-based C dim. */
int m2lua_checkdim(lua_State *L, int arg, int ndim);
int m2lua_todim(lua_State *L, int arg, int64_t d, int ndim); /* same for a value already read */
/* A shape given as a table {2, 3} at `arg` or as integers from `arg` on. Returns the index of
 * the first argument after the shape. allow_neg permits -1 entries (reshape, expand). */
int m2lua_checkshape(lua_State *L, int arg, int *ndim, int64_t *shape, bool allow_neg);
/* Integer / number / boolean field of an options table (absent or nil -> def). */
int64_t m2lua_optfield_int(lua_State *L, int tbl, const char *key, int64_t def);
double m2lua_optfield_num(lua_State *L, int tbl, const char *key, double def);
/* The same integer field for a C int: a value outside int's range is an error naming it (never truncated). */
int m2lua_optfield_cint(lua_State *L, int tbl, const char *key, int def);
bool m2lua_optfield_bool(lua_State *L, int tbl, const char *key, bool def);
/* Check that `tbl` is a table of options or nil (for option-table arguments). */
void m2lua_checkopts(lua_State *L, int tbl);
/* Refuse a key of the options table `tbl` (when it is a table) that is not in `known` (NULL-terminated): a misspelt
 * option is an error naming it, `what` (the function) and the known ones, not a silent default. */
void m2lua_checkkeys(lua_State *L, int tbl, const char *what, const char *const *known);

/* The optimizer of an m2.Optim userdata at `arg` (bind_optim.c; raises unless it is an open one). */
struct m2_optim *m2lua_checkoptim(lua_State *L, int arg);

/* ---- tensors ---- */
typedef struct m2lua_tensor {
  m2_tensor *t; /* one reference, NULL once closed */
} m2lua_tensor;

bool m2lua_istensor(lua_State *L, int idx);
m2_tensor *m2lua_checktensor(lua_State *L, int arg);
m2_tensor *m2lua_opttensor(lua_State *L, int arg); /* none/nil -> NULL */
/* Push an empty tensor userdata and return its slot; fill it with a NEW reference. */
m2_tensor **m2lua_newtensor(lua_State *L);
/* After filling a slot: tell the Lua GC how much memory the tensor owns. */
void m2lua_account(lua_State *L, const m2_tensor *t);
/* Push a tensor wrapper holding one more reference to t (borrowed). */
void m2lua_pushref(lua_State *L, m2_tensor *t);
/* Parse {dtype=, device=, requires_grad=} at `tbl` (nil allowed); fields not given are left. */
void m2lua_tensor_opts(lua_State *L, int tbl, m2_dtype *dt, m2_device *dev, bool *requires_grad);
/* A dtype name ("f32", "float64", ...) at `arg`. */
m2_dtype m2lua_checkdtype(lua_State *L, int arg);

/* Return the result of a core call that yields a new tensor (or NULL with m2_errmsg set). */
#define M2LUA_RETURN(L, expr)                      \
  do {                                             \
    m2_tensor **m2lua_slot_ = m2lua_newtensor(L);  \
    *m2lua_slot_ = (expr);                         \
    if (!*m2lua_slot_) return m2lua_fail(L);       \
    m2lua_account(L, *m2lua_slot_);                \
    return 1;                                      \
  } while (0)

/* Raise unless a core call returning m2_status succeeded. */
#define M2LUA_CHECK(L, expr)                           \
  do {                                                 \
    if ((expr) != M2_OK) return m2lua_fail(L);         \
  } while (0)

/* ---- what the host hands the binding ----
 * The host (lua/host.c) owns the signal handlers and their state. Before a script runs, it stores a pointer to its
 * m2lua_interrupt in the Lua registry under M2LUA_INTERRUPT_KEY (a light userdata); m2.interrupted() reads the
 * signal count there and sets `polling`, so the binding never calls into the host. In a Lua state the host did
 * not set up, m2.interrupted() is always false. */
#define M2LUA_INTERRUPT_KEY "m2.host.interrupt"
typedef struct m2lua_interrupt {
  volatile sig_atomic_t signals; /* SIGINT / SIGTERM received during this run */
  volatile sig_atomic_t polling; /* set by m2.interrupted(): the script stops by itself at the first signal */
} m2lua_interrupt;

#endif
