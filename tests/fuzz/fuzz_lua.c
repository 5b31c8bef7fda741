/* fuzz_lua.c — libFuzzer target for the Lua API: every input becomes one Lua snippet that the m2lab host
 * (lua/host.c, m2host_run) runs in a fresh Lua state, sandboxed by tests/fuzz/fuzz_lua_driver.lua, inside a private
 * temporary working directory (emptied before each input).
 *
 * Two kinds of input:
 *   text   (first byte < 0x80): the input is the snippet's Lua source (tests/fuzz/corpus_lua/, text files; lua.dict gives the mutator
 *          the m2 calls and odd numbers to splice in);
 *   binary (first byte >= 0x80): the bytes after it pick statements from a table of m2 calls (g_stmts below) and
 *          fill their holes from pools of odd values (sizes 0, -1, 2^32, NaN, bad dtypes, bad paths, layer patterns
 *          ...); each statement runs under its own pcall, so later ones see what earlier ones built.
 * Limits per input, so one cannot hang or exhaust memory: 5 M Lua instructions (a count hook; M2_FUZZ_INSTR), 256 MB
 * of Lua memory (the state's allocator) and 256 MB of live tensors (m2_mem_current, checked by the hook); tests/fuzz
 * /fuzz.sh also caps a single allocation (ASAN_OPTIONS max_allocation_size_mb). Hitting a limit is a Lua error.
 * Findings: a crash, a sanitizer report, or state that outlives the input (after the Lua state is closed no tensor
 * or tape node may be live and grad mode must be on): these abort() with a message. The process-wide settings a
 * script may change on purpose (the default RNG, the matmul precision) are reset before each input. M2_FUZZ_PRINT=1 prints each snippet before it runs (to turn a crash file into a test), M2_FUZZ_VERBOSE=1
 * also keeps stdout and prints the snippet's errors.
 * Run it through tests/fuzz/fuzz.sh (CTest fuzz_lua). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "host.h"
#include "m2.h"

#define FZ_LUA_MEM ((size_t)256 << 20)
#define FZ_TENSOR_MEM ((size_t)256 << 20)
#define FZ_HOOK_EVERY 1000

static char g_dir[64];          /* the working directory of every input */
static char g_cwd[4096];        /* libFuzzer's (its corpus and artifact paths may be relative) */
static long g_instr_limit = 5000000;
static int g_print, g_verbose;

/* ---------------- limits ---------------- */

typedef struct fz_state {
  const char *src;
  size_t len;
  long used;        /* instructions counted by the hook */
  int armed;        /* limits raise only while the snippet (or its finalizers) run */
  size_t lua_bytes; /* Lua memory in use (from the switch to fz_alloc on) */
  lua_Alloc base;
  void *base_ud;
} fz_state;

static void fz_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_getfield(L, LUA_REGISTRYINDEX, "m2.fuzz");
  fz_state *s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!s || !s->armed) return;
  s->used += FZ_HOOK_EVERY;
  if (s->used > g_instr_limit) luaL_error(L, "fuzz: instruction limit (%ld) reached", g_instr_limit);
  if (m2_mem_current(M2_CPU) > FZ_TENSOR_MEM)
    luaL_error(L, "fuzz: tensor memory limit reached (%zu bytes live)", m2_mem_current(M2_CPU));
}

static void *fz_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  fz_state *s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize > old && s->lua_bytes + (nsize - old) > FZ_LUA_MEM) return NULL;
  void *p = s->base(s->base_ud, ptr, osize, nsize);
  if (p || nsize == 0) s->lua_bytes = s->lua_bytes - old + nsize;
  return p;
}

/* FUZZ.run(src, env): load src as text with _ENV = env and run it with the limits armed. Errors are the snippet's
 * business: printed with M2_FUZZ_VERBOSE, else dropped. The limits stay armed (with a fresh allowance for the
 * finalizers that lua_close runs) so that nothing the snippet left behind can loop for ever. */
static int fz_run(lua_State *L) {
  fz_state *s = lua_touserdata(L, lua_upvalueindex(1));
  size_t n;
  const char *src = luaL_checklstring(L, 1, &n);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (luaL_loadbufferx(L, src, n, "=fuzz", "t") != LUA_OK) {
    if (g_verbose) fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
    return 0;
  }
  lua_pushvalue(L, 2);
  lua_setupvalue(L, -2, 1); /* _ENV */
  s->used = 0;
  s->armed = 1;
  int rc = lua_pcall(L, 0, 0, 0);
  s->used = 0;
  if (rc != LUA_OK && g_verbose) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(a non-string error)";
    fprintf(stderr, "fuzz: %s\n", msg);
  }
  return 0;
}

/* The host's prepare hook: the allocator with its cap, the count hook and the FUZZ table the driver reads. */
static int fz_prepare(lua_State *L) {
  fz_state *s = lua_touserdata(L, 1);
  s->base = lua_getallocf(L, &s->base_ud);
  s->lua_bytes = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
  lua_setallocf(L, fz_alloc, s);
  lua_pushlightuserdata(L, s);
  lua_setfield(L, LUA_REGISTRYINDEX, "m2.fuzz");
  lua_sethook(L, fz_hook, LUA_MASKCOUNT, FZ_HOOK_EVERY);
  lua_newtable(L);
  lua_pushlstring(L, s->src, s->len);
  lua_setfield(L, -2, "src");
  lua_pushboolean(L, g_verbose);
  lua_setfield(L, -2, "verbose");
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, fz_run, 1);
  lua_setfield(L, -2, "run");
  lua_setglobal(L, "FUZZ");
  return 0;
}

/* ---------------- binary inputs: statements from a table ---------------- */

/* Holes: $t a tensor variable, $n an odd integer, $s a small size, $d a dim, $f a number, $y a dtype, $b a boolean,
 * $p a file to read or train into, $P a file for the run-file writer, $L a layer pattern, $q a name, $o an optimizer,
 * $g a group, $u a tensor function, $k an MLP kind, $m a matmul precision, $h a schedule, $j JSON text, $r a run-file
 * mode, $G a series group. */
static const char *const P_t[] = {"a", "b", "c", "d", "e"};
static const char *const P_n[] = {"0", "1", "2", "3", "5", "7", "-1", "-2", "-3", "2^31", "2^32", "2^40", "2^53",
                                  "math.maxinteger", "math.mininteger", "1e308", "0/0", "1.5", "-0.0", "'3'", "nil",
                                  "4096", "64", "-2^31", "2^32 + 1", "65"};
static const char *const P_s[] = {"1", "2", "3", "4", "0", "5", "1", "2", "7", "8"};
static const char *const P_d[] = {"1", "2", "3", "-1", "-2", "0", "4", "-5", "9", "1", "2"};
static const char *const P_f[] = {"0", "1", "-1", "0.5", "2", "1e-3", "1e38", "-1e38", "0/0", "1/0", "-1/0", "3",
                                  "1e-45", "-0.0", "0.9", "1e300"};
static const char *const P_y[] = {"'f32'", "'f64'", "'i64'", "'bf16'", "'i32'", "'u8'", "'bogus'", "'float64'", "nil"};
static const char *const P_b[] = {"true", "false", "nil"};
static const char *const P_p[] = {"'f1.h5'", "'f2.h5'", "'w.safetensors'", "'f1.h5.new'", "''", "'f1.h5-journal'",
                                  "'tok'", "'f1.h5'"};
static const char *const P_P[] = {"'w1.h5'", "'w2.h5'", "'w1.h5'", "'f1.h5'"};
static const char *const P_L[] = {"'M'", "'G'", "'S'", "'A'", "'MA'", "''", "'X'", "'MGSA'", "'m'", "'AM'"};
static const char *const P_q[] = {"'loss'", "'a/b'", "''", "'x'", "'.h'", "'params/w'", "string.rep('y', 300)",
                                  "'\\0'", "'step'", "'complete'", "'status'", "'format_version'", "'params/embed.weight'"};
static const char *const P_o[] = {"'adamw'", "'sgd'", "'adam'", "''", "nil"};
static const char *const P_g[] = {"'S3'", "'S5'", "'Z2'", "'Z1000'", "'A5'", "'Z1'", "'Q8'", "''", "'Z0'", "'S2'",
                                  "'Z99999999999'"};
static const char *const P_u[] = {"exp", "log", "tanh", "sigmoid", "silu", "relu", "square", "sqrt", "neg",
                                  "softplus", "softmax", "log_softmax", "sum_all", "mean_all", "max_all", "contiguous",
                                  "l2norm", "detach", "clone", "argmax", "sum", "mean", "max", "float", "double",
                                  "long"};
static const char *const P_k[] = {"'swiglu'", "'none'", "'moe'", "'relu'", "nil"};
static const char *const P_m[] = {"'f32'", "'bf16'", "'x'", "nil"};
static const char *const P_h[] = {"'cosine'", "'constant'", "'wsd'", "'linear'", "nil"};
static const char *const P_j[] = {"'{\"a\": [1, 2.5, null, true]}'", "'[[[['", "'1e999'", "'\"\\\\ud800\"'", "''",
                                  "'{\"a\":'", "'[1,2,]'", "'\"\\\\u0000\"'", "string.rep('[', 300)", "'-'"};
static const char *const P_r[] = {"'create'", "'resume'", "'read'", "'x'", "nil"};
static const char *const P_G[] = {"'metrics'", "'eval'", "'x'", "''"};
#define POOL(p) {p, sizeof p / sizeof p[0]}
typedef struct pool { const char *const *v; int n; } pool;

static const char *const g_stmts[] = {
    /* constructors */
    "$t = m2.zeros($n, $n)", "$t = m2.randn($s, $s, $s)", "$t = m2.randn($s, $s, $s, $s, {dtype = $y})",
    "$t = m2.ones($n)", "$t = m2.empty($n, $n, $n)", "$t = m2.full({$s, $s}, $f)", "$t = m2.arange($n)",
    "$t = m2.arange($f, $f, $f)", "$t = m2.randint($n, $s, $s)", "$t = m2.tensor({{$f, $f}, {$f, $f}}, {dtype = $y})",
    "$t = m2.tensor({$f, {$f}})", "$t = m2.scalar($f)", "$t = m2.rand($s, $s, {lo = $f, hi = $f})",
    "$t = m2.zeros({$s, $s}, {requires_grad = $b, dtype = $y})", "$t = m2.randn($s, $s, {requires_grad = true})",
    /* views and element access */
    "$t = $t:reshape($n, $n)", "$t = $t:view($n)", "$t = $t:reshape($s, -1)", "$t = $t:expand($n, $n, $n)",
    "$t = $t:expand($s, -1)", "$t = $t:narrow($d, $n, $n)", "$t = $t:transpose($d, $d)", "$t = $t:permute($d, $d, $d)",
    "$t = $t:contiguous()", "$t = $t[$n]", "$t[$n] = $f", "$t:set($f, $n, $n)", "x = $t:get($n, $n)",
    "x = $t:totable()", "x = tostring($t)", "$t = $t:to($y)", "x = $t:item()", "$t = $t:clone()", "$t:fill_($f)",
    "$t:copy_($t)", "$t:release()", "$t:requires_grad($b)", "x = #$t + $t:numel() + $t:dim()", "x = $t:size($d)",
    "x = $t:stride()", "$t:name($q)", "x = $t:shape()",
    /* ops */
    "$t = $t + $t", "$t = $t - $f", "$t = $t * $t", "$t = $t / $f", "$t = $t ^ $f", "$t = -$t", "$t = m2.$u($t)",
    "$t = $t:$u($d)", "$t = m2.sum($t, $d, $b)", "$t = m2.max($t, $d, $b)", "$t = m2.cumsum($t, $d)",
    "$t = m2.eq($t, $t)", "$t = m2.matmul($t, $t, $b, $b)", "$t = m2.linear($t, $t, $t)", "$t = m2.embedding($t, $t)",
    "$t = m2.cross_entropy($t, $t, $n)", "$t = m2.rmsnorm($t, $t, $f)", "$t = m2.concat({$t, $t}, $d)",
    "$t = m2.split($t, $d, $n)[1]", "$t = m2.split($t, $d, {$n, $n})[2]", "$t = m2.gather($t, $d, $t)",
    "$t = m2.index_select($t, $d, $t)", "$t = m2.clamp($t, $f, $f)", "$t = m2.swiglu($t, $t)",
    "$t = m2.rope($t, $f, $n)", "$t = m2.conv1d_causal($t, $t, $t)", "$t = m2.scale($t, $f)",
    "$t = m2.add_scalar($t, $f)", "$t = m2.attention($t, $t, $t, {causal = $b, scale = $f})",
    "$t, $t = m2.m2rnn($t, $t, $t, $t, $t, nil, {grad_clip = $f, ckpt_every = $n})",
    "$t, $t = m2.gdn($t, $t, $t, $t, $t, $t, {chunk = $n})", "$t, $t = m2.gdn_chunked($t, $t, $t, $t, $t, nil, {chunk = $n})",
    "$t, $t = m2.ssd($t, $t, $t, $t, $t)", "$t, $t = m2.ssd_chunked($t, $t, $t, $t, $t, nil, {chunk = $n})",
    "$t = m2.sample($t, {temperature = $f, top_k = $n, top_p = $f, seed = $n})", "$t = m2.sample_probs($t, {top_k = $n})",
    "$t = m2.linear_cross_entropy($t, $t, $t, $n, $n)", "$t = m2.l2norm($t, $f)",
    /* autograd */
    "$t:sum_all():backward()", "$t:backward($t)", "$t = $t.grad", "$t:zero_grad()", "$t = $t:detach()",
    "x = m2.gradcheck(function(v) return v:tanh():sum_all() end, {$t}, {max_checks = 3})",
    "m2.no_grad(function() $t = $t * $f end)", "m2.no_grad(function() error('x') end)",
    "m2.matmul_precision($m)", "m2.seed($n)", "m2.set_rng_state({seed = $n, stream = $n, offset = $n})",
    /* mixers with consistent shapes (odd sizes), forward and backward */
    "local B, T, N, K, V = $s, $s, $s, $s, $s; local q = m2.randn(B, T, N, K, {requires_grad = true}); "
    "$t, $t = m2.m2rnn(q, m2.randn(B, T, N, K), m2.randn(B, T, N, V), m2.randn(N, V, V), m2.rand(B, T, N), nil, "
    "{grad_clip = $f}); a:sum_all():backward(); c = q.grad",
    "local B, T, H, K, V = $s, $s, $s, $s, $s; local q = m2.randn(B, T, H, K, {requires_grad = true}); "
    "$t, $t = m2.gdn_chunked(q:l2norm(), m2.randn(B, T, H, K):l2norm(), m2.randn(B, T, H, V), -m2.rand(B, T, H), "
    "m2.rand(B, T, H), nil, {chunk = $s}); a:sum_all():backward(); c = q.grad",
    "local B, T, H, P, G, N = $s, $s, $s, $s, 1, $s; local x0 = m2.randn(B, T, H, P, {requires_grad = true}); "
    "$t, $t = m2.ssd_chunked(x0, m2.rand(B, T, H), -m2.rand(H), m2.randn(B, T, G, N), m2.randn(B, T, G, N), nil, "
    "{chunk = $s}); a:sum_all():backward(); c = x0.grad",
    "local B, T, S, H, D = $s, $s, $s, $s, $s; local q = m2.randn(B, T, H, D, {requires_grad = true}); "
    "$t = m2.attention(q, m2.randn(B, S, H, D), m2.randn(B, S, H, D), {causal = $b}); a:sum_all():backward(); c = q.grad",
    "local B, T, C, W = $s, $s, $s, $s; local x0 = m2.randn(B, T, C, {requires_grad = true}); "
    "$t = m2.conv1d_causal(x0, m2.randn(C, W), m2.randn(C)); a:sum_all():backward(); c = x0.grad",
    "local R, V = $s, $s; local h = m2.randn(R, $s, {requires_grad = true}); "
    "$t = m2.linear_cross_entropy(h, m2.randn(V, h:size(2)), m2.randint(V, R), -100, $n); a:backward()",
    /* models */
    "m = m2.models.lm{vocab = $s + 1, d = $s * 2, layers = $L, m2rnn = {heads = $s, k = $s, v = $s}, "
    "attention = {heads = $s}, gdn = {heads = $s}, mamba2 = {heads = $s}, mlp = {kind = $k, hidden = $s}, "
    "context = $n, tie = $b}",
    "m = m2.models.lm{vocab = 6, d = 8, layers = $L, m2rnn = {heads = 2, k = 2, v = 4}, attention = {heads = 2}, "
    "gdn = {heads = 2}, mamba2 = {heads = 2}, mlp = {kind = 'swiglu', hidden = 8}}",
    "x = m(m2.randint($s + 1, $s, $s))", "x = m:loss(m2.randint(2, $s, $s), m2.randint(2, $s, $s))",
    "x = m:generate({$s, $s}, {max_tokens = $s, temperature = $f, top_k = $n, top_p = $f, seed = $n})",
    "local cache = {}; x = m:step(m2.randint(2, $s, $s), cache); x = m:step(m2.randint(2, $s, 1), cache)",
    "x = m:param_count()", "m2.models.summary(m)",
    /* data, config, training */
    "dt = m2.data.state_tracking{group = $g, length = $n, batch = $n, seed = $n, random_length = $b}",
    "dt = m2.data.state_tracking{group = 'S3', length = $s, batch = $s}", "x, y = dt:batch($n)",
    "x, y = dt:eval_batch($n, $n)",
    "cfg = m2.config({lr = $f, steps = $n, name = $q, list = {1, 2}, nested = {a = $b}})",
    "x = m2.train{model = m, data = dt, steps = $s, out = $p, overwrite = $b, checkpoint_every = $s, "
    "eval_every = $s, keep_checkpoints = $s, optim = {kind = $o, lr = $f}, schedule = {kind = $h, warmup = $n, "
    "decay = $n}, clip = $f, quiet = true, precision = $m}",
    "x = m2.train{model = m, data = dt, steps = $s, out = $p, overwrite = true, checkpoint_every = 1, "
    "optim = {kind = 'adamw', lr = 1e-2}, quiet = true}",
    /* run files */
    "r = m2.runs.open($p)", "x = m2.runs.info($p)", "x = r:read_series($G, $q)", "x = r:ckpt_list()",
    "x = r:ckpt_tensors($n)", "$t = r:ckpt_read($n, $q)", "x = r:ckpt_verify($n)", "x = r:ckpt_damaged()",
    "x = r:attr_names()", "x = r:get_attr($q)", "x = r:list_series($G)", "x = r:series_stats($G, $q)",
    "r:ckpt_read_into($n, $q, $t)", "x = r:ckpt_get($n, $q)", "x = r:ckpt_attr_names($n)", "r:close()",
    "x = m2.runs.checkpoint_step($p, $n)", "x = m2.inspect($p)",
    "w = m2.core.run_open($P, {mode = $r, overwrite = $b, keep_last = $n, staged = $b, no_fsync = true})",
    "w:log($G, $q, $n, $f)", "w:set_attr($q, $f)", "w:set_attr($q, $q)", "w:ckpt_begin($n)", "w:ckpt_put($q, $t)",
    "w:ckpt_set($q, $f)", "w:ckpt_commit()", "w:ckpt_abort()", "w:flush()", "w:truncate($n)", "w:set_status($q)",
    "w:close()", "w:replace()", "w:set_goal($G, $q, $q)",
    "x = m2.runs.json_decode($j)", "x = m2.runs.json_encode({a = $f, b = {$f, $q}})",
    "m2.safetensors.save($p, {w = $t})", "x = m2.safetensors.load($p)", "m2.safetensors.load_into(m, $p)",
    "x = m2.safetensors.header($p)", "m2.safetensors.save($p, m)",
    /* odds and ends */
    "collectgarbage()", "$t = nil", "x = nil; y = nil",
};
#define NSTMTS (int)(sizeof g_stmts / sizeof g_stmts[0])

typedef struct reader { const uint8_t *p; size_t n, i; } reader;
static unsigned next_byte(reader *r) { return r->i < r->n ? r->p[r->i++] : 0; }

static pool hole_pool(char c) {
  switch (c) {
    case 't': return (pool)POOL(P_t); case 'n': return (pool)POOL(P_n); case 's': return (pool)POOL(P_s);
    case 'd': return (pool)POOL(P_d); case 'f': return (pool)POOL(P_f); case 'y': return (pool)POOL(P_y);
    case 'b': return (pool)POOL(P_b); case 'p': return (pool)POOL(P_p); case 'P': return (pool)POOL(P_P);
    case 'L': return (pool)POOL(P_L); case 'q': return (pool)POOL(P_q); case 'o': return (pool)POOL(P_o);
    case 'g': return (pool)POOL(P_g); case 'u': return (pool)POOL(P_u); case 'k': return (pool)POOL(P_k);
    case 'm': return (pool)POOL(P_m); case 'h': return (pool)POOL(P_h); case 'j': return (pool)POOL(P_j);
    case 'r': return (pool)POOL(P_r); case 'G': return (pool)POOL(P_G);
    default: return (pool){NULL, 0};
  }
}

typedef struct sbuf { char *s; size_t n, cap; } sbuf;
static void put(sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    b->cap = (b->n + n + 1) * 2;
    b->s = realloc(b->s, b->cap);
    if (!b->s) abort();
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}
static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* The snippet of a binary input: up to 64 statements, one byte each to choose it and one byte per hole. */
static void build_program(const uint8_t *data, size_t size, sbuf *out) {
  reader r = {data, size, 0};
  puts_(out, "local a, b, c, d, e, x, y, m, dt, r, w, cfg\n"
             "local function S(f) local ok, err = pcall(f); if not ok then print(err) end end\n");
  for (int k = 0; k < 64 && r.i < r.n; k++) {
    const char *t = g_stmts[next_byte(&r) % NSTMTS];
    puts_(out, "S(function() ");
    for (const char *c = t; *c; c++) {
      pool pl = c[0] == '$' ? hole_pool(c[1]) : (pool){NULL, 0};
      if (!pl.n) { put(out, c, 1); continue; }
      puts_(out, pl.v[next_byte(&r) % (unsigned)pl.n]);
      c++;
    }
    puts_(out, " end)\n");
  }
}

/* ---------------- the working directory ---------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag;
  if (ftw->level > 0) remove(path);
  return 0;
}
static void empty_dir(void) { nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }
static void remove_dir(void) {
  empty_dir();
  rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *e = getenv("M2_FUZZ_INSTR");
  if (e && atol(e) > 0) g_instr_limit = atol(e);
  g_print = getenv("M2_FUZZ_PRINT") && getenv("M2_FUZZ_PRINT")[0] == '1';
  g_verbose = getenv("M2_FUZZ_VERBOSE") && getenv("M2_FUZZ_VERBOSE")[0] == '1';
  snprintf(g_dir, sizeof g_dir, "/tmp/m2fuzz-lua-XXXXXX");
  if (!getcwd(g_cwd, sizeof g_cwd) || !mkdtemp(g_dir)) {
    perror("fuzz_lua: temporary directory");
    exit(1);
  }
  atexit(remove_dir);
  m2host_set_exe((*argv)[0]);
  if (!g_verbose) { /* m2.train's progress lines; libFuzzer and the sanitizers write to stderr */
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, 1), close(fd);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 16384) return -1; /* keep inputs short: longer ones only run longer */
  sbuf prog = {0};
  fz_state s = {0};
  if (size > 0 && data[0] >= 0x80) {
    build_program(data + 1, size - 1, &prog);
    s.src = prog.s, s.len = prog.n;
  } else {
    s.src = (const char *)data, s.len = size;
  }
  if (g_print) fprintf(stderr, "---- fuzz_lua snippet ----\n%.*s\n----\n", (int)s.len, s.src ? s.src : "");
  empty_dir();
  m2_set_matmul_precision(M2_MM_F32);
  memset(m2_default_rng(), 0, sizeof(m2_rng)); /* as at start-up */
  m2host_opts o = {.mode = "run", .script = M2_FUZZ_DRIVER, .prepare = fz_prepare, .prepare_ud = &s};
  if (chdir(g_dir) != 0) abort();
  m2host_run(&o);
  if (chdir(g_cwd) != 0) abort();
  free(prog.s);
  /* nothing may outlive the input */
  long nt = m2_live_tensors(), nn = m2_live_nodes();
  if (nt != 0 || nn != 0) {
    fprintf(stderr, "fuzz_lua: %ld tensors and %ld tape nodes outlive the Lua state\n", nt, nn);
    abort();
  }
  if (!m2_grad_enabled()) {
    fprintf(stderr, "fuzz_lua: grad mode is still off after the Lua state closed (a no_grad never popped)\n");
    abort();
  }
  return 0;
}
