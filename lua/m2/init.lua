--[==[ m2 — the m2lab Lua library: `local m2 = require "m2"`.

CONVENTIONS
  * Dims, positions and element indices are 1-BASED, like torch7 and Lua itself:
      t:size(1) is the first dim, t:sum(2) reduces the second, t:narrow(1, 3, 2) takes
      positions 3 and 4 of dim 1, t:get(1, 1) is the first element, t[1] the first slice.
    Negative dims/indices count from the end: t:sum(-1) reduces the last dim, t[-1] is the
    last slice. Dim 0 is an error.
  * Tensor CONTENTS stay 0-based: token ids, class targets, m2.argmax results and the index
    tensors of gather / index_select are data (ids 0 .. V-1), not Lua positions.
  * Every op returns a new tensor; tensors are freed by the GC, or at once with `<close>`
    (`local t <close> = m2.zeros(1000, 1000)`) or t:release().
  * Errors from the core become Lua errors that start with the FILE:LINE of your script
    (the first stack frame outside lua/m2/), even when the failing call is inside a module.
  * Default dtype f32 on cpu; options tables take {dtype = "f64", device = "cpu", requires_grad = true}.

CONSTRUCTORS
  m2.tensor(nested_table | number [, opts])     m2.scalar(v [, opts])
  m2.zeros / ones / empty(shape... | {shape} [, opts])   m2.full({shape}, v [, opts])
  m2.randn(shape... [, {mean=0, std=1, ...}])   m2.rand(shape... [, {lo=0, hi=1, ...}])
  m2.randint(n, shape... [, opts]) (i64 in [0, n))   m2.arange(n) / m2.arange(a, b [, step])
  m2.seed(n)   m2.rng_state()   m2.set_rng_state(s)   m2.is_tensor(x)

TENSOR METHODS
  :shape() :size([d]) :dim() :numel() :dtype() :device() :stride() :is_contiguous()
  :item() :get(i, ...) :set(v, i, ...) :totable() :name([s])
  :clone() :to(dtype|device|tensor) :float() :double() :long() :contiguous()
  :reshape(...) (alias :view, one -1 allowed) :narrow(dim, start, len) :transpose([d0, d1])
  :permute(...) :expand(...) (-1 keeps a dim)
  :requires_grad() -> bool, :requires_grad(bool) -> self   .grad (nil if none)
  :backward([grad]) :detach() :zero_grad() :fill_(v) :copy_(src) :is_leaf() :grad_fn()
  ops as methods: :exp() :sum([dim [, keepdim]]) :matmul(b) :softmax([dim]) ... (see below)
  metamethods: + - * / with tensors or numbers, unary -, ^ (2, 0.5, 1, -1), #t (size of
  dim 1), t[i] (slice along dim 1, a number for 1-D), t[i] = v, tostring(t), a == b (same tensor)

OPS  (m2.<op>(...); those marked * are also methods)
  add* sub* mul* div* scale* add_scalar* neg* exp* log* tanh* sigmoid* silu* swiglu*(a, b) softplus* relu*
  square* sqrt* clamp*(x, lo, hi)
  sum* mean* max*(x [, dim [, keepdim]]) sum_all* mean_all* max_all* argmax*(x [, dim [, keepdim]])
  eq*(a, b) softmax* log_softmax*(x [, dim=-1]) cumsum*(x, dim)
  matmul*(a, b [, ta, tb]) linear*(x, w [, bias]) embedding(w, ids)
  matmul_precision(["f32"|"bf16"]) -> the previous setting: "bf16" rounds the operands of f32 matmul/linear
    to bf16 (fp32 accumulation and result; tensor cores on CUDA, like bf16 autocast); m2.train{precision=}
  activations(["f32"|"bf16"]) -> the previous setting: "bf16" makes matmul/linear return bf16 (f32 operands
    rounded to bf16; ops given bf16 inputs compute in fp32 and round their outputs); m2.train{activations=}
  cross_entropy*(logits, targets [, ignore_index=-100]) rmsnorm*(x, w|nil [, eps]) l2norm*(x [, eps])
  linear_cross_entropy(h, W, targets [, ignore_index=-100 [, chunk_rows=0]]) = cross_entropy(linear(h, W), targets)
    without holding all the logits (rows in chunks, recomputed in backward)
  concat({xs}, dim) split*(x, dim, sizes|chunk) gather*(x, dim, idx) index_select*(x, dim, idx)
  conv1d_causal(x, w [, b]) m2rnn(q, k, v, W, f [, h0] [, {grad_clip, ckpt_every}]) -> y, hT
  gdn / gdn_chunked(q, k, v, g, beta [, h0] [, {scale, chunk}]) -> o, hT
  ssd / ssd_chunked(x, dt, A, B, C [, h0] [, {chunk}]) -> y, hT
  attention(q, k, v [, {scale, causal=true}]) rope*(x [, theta=10000 [, offset=0]])
  moe_route(logits (N, E), top_k) -> weights (N, k), indices (N, k) i64, aux (2) = (E sum f P, mean lse^2), counts (E)
  moe_permute(x (N, d), indices, E) -> xp (N k, d) sorted by expert, pos (N, k), offsets (E + 1)
  moe_grouped_matmul(x (M, in), w (E, out, in), offsets) -> (M, out)   moe_unpermute(yp, weights, pos) -> (N, d)
    (core/ops_moe.c; lua/m2/layers/moe.lua composes them into the MoE MLP)
  sample(logits (..., V) [, {temperature=1, top_k=0, top_p=1, seed=0, offset=0}]) -> ids (...) i64: one token per
    row, drawn from Philox (seed, row, offset) (core/sample.h; on the host, any device); sample_probs(logits, opts)
    -> the filtered distribution (..., V) f64
  views as functions: m2.reshape(t, ...) narrow transpose permute expand contiguous to clone detach

AUTOGRAD
  m2.no_grad(fn, ...) -> fn(...) with recording off (restored even on error)   m2.grad_enabled()
  m2.gradcheck(fn, {inputs}, {eps, atol, rtol, seed, max_checks}) -> ok, max_err, message
  m2.checkpoint(fn, ...) -> fn(...)'s results (1 to 4 tensors), without keeping fn's intermediate tensors for the
    backward (activation checkpointing, like torch.utils.checkpoint): one tape node holds the tensor arguments (at
    most 8); its backward runs fn again with grad on and backpropagates through it (parameters' .grad accumulate).
    fn must compute the same thing both times: the default RNG state, matmul precision and activation dtype of the
    first call are replayed; no other state may change in between. A plain call under no_grad (core/recompute.h)
  m2.live_tensors() m2.live_nodes()   (leak tests; call collectgarbage() first)

RUNS
  m2.args (key=value overrides, typed)   m2.config(defaults) -> defaults with overrides applied
    (every script also accepts steps= seed= device= out= checkpoint_every= eval_every= overwrite= precision=,
    and on m2lab resume reschedule=true: re-derive the lr schedule from a new steps= instead of keeping it)
  model:step(ids, cache) / model:generate(prompt_ids, {max_tokens, temperature, top_k, top_p, seed, stop}) -> ids:
    generation with recurrent state (lua/m2/models.lua, lua/m2/generate.lua; `m2lab generate RUN.h5 prompt=...`)
  m2.train{model, data, steps, optim, ...} -> summary: the training loop writing an HDF5 run file
    (lua/m2/train.lua); m2.sweep{...} (lua/m2/sweep.lua); m2.runs (reading run files)
  m2.interrupted() (Ctrl-C seen; polling it lets a loop save a checkpoint before stopping)
  m2.exe  m2.script  m2.mode ("run" / "test" / subcommand)  m2.lua_dir  m2.source_dir  m2.version
  m2.error(msg) raises msg located at the caller's script line (for library code)

WEIGHTS IN AND OUT
  m2.runs.load_model(run [, step] [, {device = "cpu", quiet = true}]) -> model, {path, step, script_path, config,
    overrides}: the model of a run file, in one call: its stored script rebuilds the model (as `m2lab resume` runs
    it, its output dropped unless quiet = false; its m2.train call hands the model over and trains nothing), then
    checkpoint `step` (default the latest) is loaded; eval mode. The script is Lua code: trust the file
  m2.runs.export_safetensors(run, out [, step]) -> {path, step, tensors, bytes}
    (the command line: `m2lab export RUN.h5 [OUT.safetensors] [step=N]`)
  m2.safetensors.save(path, model | {{name =, tensor =}, ...} | {name = tensor} [, {metadata = {k = "v"}}])
  m2.safetensors.load_into(model, path) -> model, metadata: strict (names = module paths, shapes, dtypes) and
    atomic: any mismatch or damage is an error naming the file and the tensor, and the model is left as it was
  m2.safetensors.load(path) -> {name = tensor}, metadata   m2.safetensors.header(path)   (lua/m2/safetensors.lua)

SUBMODULES (loaded on first use): m2.nn  m2.optim  m2.test  m2.profile (per-op time, tape memory)  m2.runs  m2.safetensors
  (and m2.<name> for any lua/m2/<name>.lua)
]==]

local core = require "m2.core"

local m2 = {}
for k, v in pairs(core) do m2[k] = v end
m2.core = core
m2.Tensor = core.Tensor -- the tensor method table: Lua code may add methods to it
m2.args = core.args or {}
m2.args_raw = core.args_raw or {}
m2.mode = core.mode or "run"

-- ---------------------------------------------------------------------------------------
-- m2.config(defaults): a copy of defaults with the command-line overrides applied.
--   Each override must name a key of defaults ("a.b=..." reaches nested tables) and is
--   converted to the default's type: integer, number, boolean (true/false/1/0/yes/no/on/off),
--   string, or a list ("betas=0.9,0.95" for a default {0.9, 0.999}).
--   The common overrides every experiment accepts are allowed even when defaults does not
--   list them: steps, seed, checkpoint_every, eval_every (integers), device, out, precision
--   ("f32" or "bf16"), activations ("f32" or "bf16"; bf16 needs precision=bf16) (strings), overwrite, reschedule (booleans), and for runs on several processes zero (boolean),
--   dist_bucket (integer), dist_timeout (number; lua/m2/dist.lua). They then appear in the
--   returned config; m2.train reads them from the command line itself, and a seed= that
--   defaults does not list seeds the default RNG (m2.seed) at once, before the script builds
--   its model. reschedule=true belongs to `m2lab resume` (lua/m2/train.lua, "The lr schedule
--   on resume").
-- ---------------------------------------------------------------------------------------

-- the common overrides and a value of their type
local COMMON = { steps = 0, seed = 0, checkpoint_every = 0, eval_every = 0, device = "", out = "", overwrite = false,
                 precision = "", activations = "", reschedule = false, zero = false, dist_bucket = 0, dist_timeout = 0 }
m2.COMMON_OVERRIDES = COMMON
-- the values a common override may take, where not any value of its type
local COMMON_VALUES = { precision = { "f32", "bf16" }, activations = { "f32", "bf16" } }

local function common_names()
  local names = {}
  for k in pairs(COMMON) do names[#names + 1] = k end
  table.sort(names)
  return table.concat(names, ", ")
end

local function is_list(t)
  return type(t) == "table" and rawget(t, 1) ~= nil
end

local function deepcopy(v)
  if type(v) ~= "table" or m2.is_tensor(v) or getmetatable(v) then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deepcopy(x) end
  return out
end

local function known_keys(defaults, prefix, out)
  out = out or {}
  for k, v in pairs(defaults) do
    if type(k) == "string" then
      if type(v) == "table" and not is_list(v) and not getmetatable(v) then
        known_keys(v, prefix .. k .. ".", out)
      else
        out[#out + 1] = prefix .. k
      end
    end
  end
  table.sort(out)
  return out
end

local truthy = { ["true"] = true, ["1"] = true, yes = true, on = true }
local falsy = { ["false"] = false, ["0"] = false, no = false, off = false }

-- Convert one override (raw text, parsed value) to the type of def.
local function coerce(key, raw, parsed, def)
  local function bad(want)
    m2.error(string.format("m2.config: override %s=%s: expected %s", key, raw, want))
  end
  local td = type(def)
  if td == "number" then
    local n = tonumber(parsed)
    if type(parsed) ~= "number" or n == nil then bad(math.type(def) == "integer" and "an integer" or "a number") end
    if math.type(def) == "integer" then
      local i = math.tointeger(n)
      if not i then bad("an integer") end
      return i
    end
    return n + 0.0
  elseif td == "boolean" then
    local b = truthy[raw]
    if b == nil then b = falsy[raw] end
    if b == nil then bad("a boolean (true/false)") end
    return b
  elseif td == "string" then
    return raw
  elseif td == "table" and is_list(def) then
    local out = {}
    for item in (raw .. ","):gmatch("([^,]*),") do
      local parsedi = tonumber(item)
      if parsedi == nil then parsedi = item end
      out[#out + 1] = coerce(key, item, parsedi, def[1])
    end
    return out
  elseif td == "table" then
    m2.error(string.format("m2.config: '%s' is a table of settings; override its fields as %s.<name>=...", key, key))
  end
  bad("a value of type " .. td .. " (this setting cannot be overridden)")
end

function m2.config(defaults, args)
  if type(defaults) ~= "table" then m2.error("m2.config: defaults must be a table, got " .. type(defaults)) end
  args = args or m2.args
  local raws = args == m2.args and m2.args_raw or {}
  local out = deepcopy(defaults)
  local keys = {}
  for k in pairs(args) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, key in ipairs(keys) do
    local parsed, raw = args[key], raws[key] or tostring(args[key])
    local node, dnode, last = out, defaults, nil
    local parts = {}
    for part in key:gmatch("[^.]+") do parts[#parts + 1] = part end
    for i = 1, #parts - 1 do
      dnode = type(dnode) == "table" and dnode[parts[i]] or nil
      node = type(node) == "table" and node[parts[i]] or nil
    end
    last = parts[#parts]
    local def = nil
    if type(dnode) == "table" and not is_list(dnode) then def = dnode[last] end
    local common = def == nil and #parts == 1 and COMMON[key] ~= nil
    if common then def = COMMON[key] end
    if def == nil then
      m2.error(string.format("m2.config: unknown override '%s' (known keys: %s); every script also accepts %s", key,
        table.concat(known_keys(defaults, ""), ", "), common_names()))
    end
    node[last] = coerce(key, raw, parsed, def)
    local allowed = #parts == 1 and COMMON_VALUES[key]
    if allowed then
      local ok = false
      for _, a in ipairs(allowed) do ok = ok or node[last] == a end
      if not ok then
        m2.error(string.format("m2.config: override %s=%s: expected \"%s\"", key, raw,
          table.concat(allowed, "\" or \"")))
      end
    end
    if common and key == "seed" then m2.seed(node[last]) end
  end
  m2.config_used = out
  return out
end

-- ---------------------------------------------------------------------------------------
-- submodules, loaded on first use: m2.nn, m2.optim, m2.test, m2.<name> for lua/m2/<name>.lua
-- ---------------------------------------------------------------------------------------
setmetatable(m2, {
  __index = function(t, k)
    if type(k) ~= "string" or not k:match("^[%w_]+$") then return nil end
    local name = "m2." .. k
    if package.loaded[name] == nil and not package.preload[name] and not package.searchpath(name, package.path) then
      return nil
    end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})

package.loaded["m2"] = m2
return m2
