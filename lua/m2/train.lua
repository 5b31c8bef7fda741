--[==[ m2.train — the training loop: steps, gradient accumulation, LR schedule, clipping,
NaN/inf skipping, metrics, eval, checkpoints and exact resume, all recorded in one HDF5 run
file (core/runfile/runfile.h; DESIGN section 6).

  local summary = m2.train {
    model = model,                      -- an m2.nn module
    data = data,                        -- any object with data:batch(index) -> x, y; deterministic in index
    loss = nil,                         -- function(model, x, y) -> scalar tensor; default: cross-entropy of
                                        --   model(x) logits against y, targets -100 ignored
    steps = 1000, grad_accum = 1,       -- optimizer steps; micro-batches per step (batch index = cursor)
    optim = m2.optim.adamw{ lr = 3e-4, weight_decay = 0.1 },  -- params are filled from model; or a table
                                        --   {kind = "adamw" | "sgd", lr = ..., ...}; default adamw lr 1e-3
    schedule = { kind = "cosine", warmup = 100, decay = nil, min_lr = 3e-5 },  -- lr from optim;
                                        --   decay defaults to steps - warmup; kind constant | cosine | wsd
    clip = 1.0,                         -- global grad-norm clip (false: none; the norm is still logged)
    eval_every = 0, eval = function(model, step) return { acc = ... } end,   -- -> /eval/<name>; run with
                                        --   model:eval() and no grad; also after the last step. Default for
                                        --   a dataset with an evaluate method (m2.data.tokens): /eval/val_loss, val_bpb
    checkpoint_every = 0, keep_checkpoints = 3,   -- 0: only at the end (and on Ctrl-C / SIGTERM)
    out = "runs/x.h5",                  -- the run file (default runs/<script>-<time>.h5; false: none)
    overwrite = false,                  -- replace an existing out file: the new run is written to <out>.new
                                        --   and renamed over it once its first step went through
    config = cfg,                       -- the resolved config (default: what m2.config returned last)
    log_every = 1,                      -- metrics are means over log_every steps
    print_every = nil,                  -- progress lines when stdout is not a terminal (default ~20 per run)
    max_nan_skips = 5,                  -- stop after this many consecutive non-finite steps
    flush_interval = 5, device = "cpu", quiet = false,
    precision = nil,                    -- "bf16": matmul/linear products in bf16 with fp32 accumulation
                                        --   (m2.matmul_precision) while training and evaluating; nil/"f32": fp32
    trial = false,                      -- true: a throwaway run inside a script (e.g. one of several candidates):
                                        --   needs out = false; the command line's steps=, out=, eval_every=,
                                        --   checkpoint_every=, overwrite= and a resume (m2lab resume) are the
                                        --   script's main run's and do not apply to it (device=, precision= do)
    activations = nil,                  -- "bf16" (needs precision = "bf16"): bf16 activations, as bf16 autocast:
                                        --   matmul/linear outputs in bf16 (m2.activations), ops on them compute
                                        --   in fp32 and round; parameters, optimizer state, loss and recurrent
                                        --   states stay fp32; nil/"f32": off (the default)
  }
  -> { steps, step, final_loss, out, status, resumed_from, nan_skips, tokens, time }

Command-line overrides read here whatever the script passes (every experiment accepts them):
  steps=  out=  device=  checkpoint_every=  eval_every=  overwrite=  precision=  activations=
  (seed= is applied by m2.config)
  reschedule=true   (m2lab resume only) re-derive the lr schedule from the new steps= (see Resume)
  out=false (or out=) trains without a run file, like out = false in the script (a file named false: out=./false)

Per step: zero grads; for each micro-batch: x, y = data:batch(cursor), cursor += 1, loss, backward
(scaled by 1/grad_accum); clip (grad_norm = the norm before clipping); when the loss or the norm is
NaN/inf the update is skipped and counted (metric nan_skips) -- after max_nan_skips in a row the run
stops with status "failed: ..."; else optimizer step with lr = schedule(step - 1). Step numbers
count updates from 1; metrics at step s describe update s.

Metrics (/metrics/<name>): loss, lr, grad_norm, tokens_per_s, peak_mem_mb (peak core memory during
the step, MiB), nan_skips (running count), and what the model's log_metrics() returns, if it has one ({name,
value} pairs: an m2.models.lm with MoE MLPs logs its aux losses; a value that is a Lua array of numbers goes to the
array series /arrays/<name>, one row per log step: the MoE per-expert load, moe_load_<block> (steps, experts)).
Root attributes: the standard ones (core/runfile/runfile.h) with the script's text, plus script_path, script_sha256, overrides_json, num_params, model_spec_json (an m2.models.lm
model's spec, for `m2lab generate`) and every config key;
status ends "done", "failed: <message>" or "interrupted".

Checkpoints (/checkpoints/<step>): params/<module path>, optim/<state>/<module path>, attributes
data_cursor, optim_steps, rng_seed/rng_stream/rng_offset (the default generator), nan_skips,
nan_streak, tokens, train_time, the partial log window, config_json. Written every
checkpoint_every steps, after the last step, and when SIGINT/SIGTERM arrives (m2.interrupted() is
polled each step; the run then stops with status "interrupted" and exit status 130).

Resume (`m2lab resume RUN.h5`, lua/m2/resume.lua): the stored script runs again with the stored
overrides; m2.train sees m2.resuming, opens the file for writing, loads the last complete
checkpoint (parameters, optimizer state, RNG, data cursor, step; a parameter whose name or shape
differs, or a config key other than steps/out/device/checkpoint_every/eval_every/log_every/
print_every/keep_checkpoints/overwrite that changed, is an error naming file and key), drops
logged entries after that step, and continues. On CPU the continued run is bit-identical to an
uninterrupted one.
The lr schedule on resume: a schedule's decay (and a wsd schedule's stable) default to values derived
from steps, so a resume with a larger steps= would re-derive them and the lr would jump (a cosine run
at min_lr going back up). A resume therefore KEEPS THE SCHEDULE THE CHECKPOINT RAN WITH (recorded in
its config_json; a longer run continues at min_lr after the stored decay ends) and prints so;
reschedule=true on the resume's command line takes the schedule derived now instead and prints the lr
before and after. Either way the new checkpoints record the schedule in effect, so a later resume
keeps it; reschedule= applies to the resume it is given to only (m2lab resume does not carry it over).
]==]

local m2 = require "m2"
local core = m2.core
local runs = require "m2.runs"

local train = {}

local KNOWN = {
  model = true, data = true, loss = true, steps = true, grad_accum = true, optim = true, schedule = true, clip = true,
  eval_every = true, eval = true, checkpoint_every = true, keep_checkpoints = true, out = true, overwrite = true,
  config = true, log_every = true, print_every = true, max_nan_skips = true, flush_interval = true, device = true,
  quiet = true, precision = true, activations = true, trial = true, zero = true, dist_bucket = true, dist_timeout = true, -- the last three: m2.dist
}
-- config keys that may differ between a run and its resume
local RUN_CONTROL = { steps = true, out = true, device = true, checkpoint_every = true, eval_every = true,
                      log_every = true, print_every = true, keep_checkpoints = true, overwrite = true,
                      flush_interval = true, quiet = true, reschedule = true,
                      zero = true, dist_bucket = true, dist_timeout = true } -- a resume may change the world size too
-- derived from steps in the recorded training settings (config_json "train")
local DERIVED = { decay = true, stable = true }

local function fail(msg) m2.error("m2.train: " .. msg) end

local function isfinite(x) return x == x and x ~= math.huge and x ~= -math.huge end

local function shape_text(s) return "(" .. table.concat(s, ", ") .. ")" end

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

local function fmt_rate(r)
  if r >= 1e6 then return string.format("%.2fM", r / 1e6) end
  if r >= 1e3 then return string.format("%.1fk", r / 1e3) end
  return string.format("%.0f", r)
end

-- ---------------------------------------------------------------------------------------
-- settings: spec + command-line overrides
-- ---------------------------------------------------------------------------------------

local function arg_int(name, v)
  local a = m2.args[name]
  if a == nil then return v end
  local i = math.tointeger(a)
  if i == nil then fail(string.format("override %s=%s: expected an integer", name, tostring(m2.args_raw[name] or a))) end
  return i
end

local function arg_str(name, v)
  local a = m2.args_raw[name] or m2.args[name]
  if a == nil then return v end
  return tostring(a)
end

local function arg_bool(name, v)
  local a = m2.args[name]
  if a == nil then return v end
  if a == true or a == 1 or a == "yes" or a == "on" then return true end
  if a == false or a == 0 or a == "no" or a == "off" then return false end
  fail(string.format("override %s=%s: expected true or false", name, tostring(a)))
end

local function script_stem()
  local s = m2.script or "run"
  return (s:match("([^/]+)$") or s):gsub("%.lua$", "")
end

local function resolve(spec)
  if type(spec) ~= "table" then fail("expected a table of settings, got " .. type(spec)) end
  for k in pairs(spec) do
    if not KNOWN[k] then
      local names = {}
      for n in pairs(KNOWN) do names[#names + 1] = n end
      table.sort(names)
      fail(string.format("unknown setting '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
  end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  if type(s.model) ~= "table" or type(s.model.parameters) ~= "function" then fail("model must be an m2.nn module") end
  if type(s.data) ~= "table" and type(s.data) ~= "userdata" or type(s.data.batch) ~= "function" then
    fail("data must be an object with a batch(index) method returning x, y")
  end
  if s.loss ~= nil and type(s.loss) ~= "function" then fail("loss must be a function(model, x, y) -> tensor") end
  if s.eval ~= nil and type(s.eval) ~= "function" then fail("eval must be a function(model, step) -> {name = value}") end
  if s.trial ~= nil and type(s.trial) ~= "boolean" then fail("trial must be true or false") end
  if s.trial and s.out ~= false then fail("trial = true is a run without a run file: pass out = false") end
  -- the run-control overrides of the command line, which a trial run does not take
  local function run_arg(get, name, v) if s.trial then return v end return get(name, v) end
  s.steps = run_arg(arg_int, "steps", s.steps)
  s.checkpoint_every = run_arg(arg_int, "checkpoint_every", s.checkpoint_every or 0)
  s.eval_every = run_arg(arg_int, "eval_every", s.eval_every or 0)
  s.device = arg_str("device", s.device or "cpu")
  s.overwrite = run_arg(arg_bool, "overwrite", s.overwrite or false)
  s.reschedule = run_arg(arg_bool, "reschedule", false) -- command line only: an action of one resume, not a setting
  if s.reschedule and not m2.resuming then
    fail("reschedule=true applies to m2lab resume only (it re-derives a resumed run's lr schedule from the new " ..
      "steps=); a new run derives its schedule from steps= anyway")
  end
  if s.trial then
    s.out = false
  elseif m2.resuming then
    s.out = m2.resuming.path
  else
    -- out=false on the command line (the host types it as the boolean) means no run file, not a file "false"
    if m2.args.out == false then s.out = false else s.out = arg_str("out", s.out) end
    if s.out == nil then s.out = string.format("runs/%s-%s.h5", script_stem(), os.date("!%Y%m%d-%H%M%S")) end
  end
  if s.out == "" then s.out = false end
  s.grad_accum = s.grad_accum or 1
  s.log_every = s.log_every or 1
  s.keep_checkpoints = s.keep_checkpoints or 3
  s.max_nan_skips = s.max_nan_skips or 5
  s.flush_interval = s.flush_interval or 5
  for _, k in ipairs { "steps", "grad_accum", "log_every", "max_nan_skips" } do
    if math.type(s[k]) ~= "integer" or s[k] < 1 then
      fail(string.format("%s must be a positive integer, got %s", k, tostring(s[k])))
    end
  end
  for _, k in ipairs { "checkpoint_every", "eval_every", "keep_checkpoints" } do
    if math.type(s[k]) ~= "integer" or s[k] < 0 then
      fail(string.format("%s must be a non-negative integer, got %s", k, tostring(s[k])))
    end
  end
  if s.clip == nil then s.clip = 1.0 end
  if s.clip ~= false and (type(s.clip) ~= "number" or s.clip <= 0) then fail("clip must be a positive number or false") end
  s.print_every = s.print_every or math.max(1, s.steps // 20)
  s.config = s.config or m2.config_used or {}
  if type(s.config) ~= "table" then fail("config must be a table") end
  if s.out and type(s.out) ~= "string" then fail("out must be a path string (or false for no run file)") end
  s.precision = arg_str("precision", s.precision or "f32")
  if s.precision ~= "f32" and s.precision ~= "bf16" then
    fail(string.format("precision must be \"f32\" or \"bf16\", got %s", tostring(s.precision)))
  end
  s.activations = arg_str("activations", s.activations or "f32")
  if s.activations ~= "f32" and s.activations ~= "bf16" then
    fail(string.format("activations must be \"f32\" or \"bf16\", got %s", tostring(s.activations)))
  end
  if s.activations == "bf16" and s.precision ~= "bf16" then
    fail(string.format("activations = \"bf16\" needs precision = \"bf16\" (got precision = \"%s\"): bf16 " ..
      "activations are products in bf16 with bf16 results", s.precision))
  end
  return s
end

-- the optimizer and its schedule
local function make_optim(s)
  local opt = s.optim
  if opt == nil then
    opt = m2.optim.adamw { lr = 1e-3 }
  elseif type(opt) == "table" and getmetatable(opt) ~= m2.optim.Optimizer then
    local o, kind = {}, opt.kind or "adamw"
    for k, v in pairs(opt) do if k ~= "kind" then o[k] = v end end
    if kind ~= "adamw" and kind ~= "sgd" then
      fail("optim.kind must be \"adamw\" or \"sgd\", got " .. tostring(kind))
    end
    opt = m2.optim[kind](o)
  end
  if opt:nparams() == 0 then opt:add_params(s.model) end
  -- the learning rates the steps will use are checked here: one found bad at step 1 would come after an existing
  -- run file was replaced (overwrite=true)
  m2.optim.check_lr("m2.train", "the optimizer's lr", opt.lr)
  local sched = s.schedule
  if sched == nil or (type(sched) == "table" and sched.spec == nil) then
    local o = { kind = "constant", lr = opt.lr }
    for k, v in pairs(sched or {}) do o[k] = v end
    if o.kind ~= "constant" and o.decay == nil then o.decay = math.max(s.steps - (o.warmup or 0) - (o.stable or 0), 0) end
    o.lr = o.lr or opt.lr
    sched = m2.optim.schedule(o)
  end
  if type(sched) ~= "table" or type(sched.spec) ~= "table" then fail("schedule must be a table or an m2.optim.schedule") end
  m2.optim.check_lr("m2.train", "the schedule's lr", sched.spec.lr)
  m2.optim.check_lr("m2.train", "the schedule's min_lr", sched.spec.min_lr)
  return opt, sched
end

-- the model's own loss(x, y) when it has one (m2.models.lm: the head fused with the loss, no full logits), else
-- the mean cross-entropy of its output
local function default_loss(model, x, y)
  if type(model.loss) == "function" then return (model:loss(x, y)) end
  return m2.cross_entropy(model(x), y, -100)
end

-- the resolved training settings recorded in the run file (config_json "train" and attributes)
local function train_record(s, opt, sched)
  local sp = sched.spec
  return { steps = s.steps, grad_accum = s.grad_accum, clip = s.clip or false, optim = opt.kind, lr = sp.lr,
           schedule = sp.kind, warmup = sp.warmup, decay = sp.decay, stable = sp.stable, min_lr = sp.min_lr,
           checkpoint_every = s.checkpoint_every, eval_every = s.eval_every, log_every = s.log_every,
           keep_checkpoints = s.keep_checkpoints, device = s.device,
           precision = s.precision ~= "f32" and s.precision or nil, -- absent = f32 (run files from before the setting)
           activations = s.activations ~= "f32" and s.activations or nil } -- likewise
end

-- ---------------------------------------------------------------------------------------
-- checkpoints
-- ---------------------------------------------------------------------------------------

local function write_checkpoint(st, step)
  local r = st.run -- nil on ranks other than 0, which only help gather a sharded optimizer state (m2.dist)
  if r then
    r:flush() -- every metric up to this step is on disk before the checkpoint exists
    r:ckpt_begin(step)
  end
  for _, p in ipairs(st.params) do -- (a rank-local slice, p.shard: gathered whole, every rank taking part)
    local t = p.shard and st.dp:gather_shard(p.tensor) or p.tensor
    if r then r:ckpt_put("params/" .. p.name, t) end
  end
  local names = st.opt:state_names()
  for j, sname in ipairs(names) do
    for i, p in ipairs(st.params) do
      local t = st.dp and st.dp:state(i, j) or not st.dp and st.opt:state(i, j)
      if t and p.shard then t = st.dp:gather_shard(t) end
      if t and r then r:ckpt_put("optim/" .. sname .. "/" .. p.name, t) end
    end
  end
  if not r then return end
  local rng = m2.rng_state()
  local attrs = {
    data_cursor = st.cursor, optim_steps = st.opt:steps(), optim_kind = st.opt.kind, rng_seed = rng.seed,
    rng_stream = rng.stream, rng_offset = rng.offset, nan_skips = st.nan_skips, nan_streak = st.nan_streak,
    tokens = st.tokens, train_time = st.train_time + (core.clock() - st.session_t0),
    win_n = st.win.n, win_loss = st.win.loss, win_gnorm = st.win.gnorm, win_finite = st.win.finite,
    win_mem = st.win.mem, config_json = st.config_json,
  }
  for k, v in pairs(attrs) do r:ckpt_set(k, v) end
  r:ckpt_commit()
  st.last_ckpt = step
end

-- compare the stored config with the current one (run-control keys may differ)
local function check_config(path, stored, now, train_part)
  local a, b = runs.flatten(stored), runs.flatten(now)
  local keys, seen = {}, {}
  for k in pairs(a) do keys[#keys + 1] = k; seen[k] = true end
  for k in pairs(b) do if not seen[k] then keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if not RUN_CONTROL[k] and not (train_part and DERIVED[k]) then
      local x, y = a[k], b[k]
      local ex, ey = x == nil and "absent" or runs.json_encode(x), y == nil and "absent" or runs.json_encode(y)
      if ex ~= ey then
        fail(string.format("%s: cannot resume: config key '%s' is %s in the run file but %s now (a resume continues " ..
          "the stored configuration; only steps, out, device, checkpoint_every, eval_every, log_every and " ..
          "keep_checkpoints may change)", path, k, ex, ey))
      end
    end
  end
end

-- check that checkpoint `step` of run r fits the model (names and shapes) -> the set of its tensors
local function check_checkpoint(st, r, step)
  local path = r:path()
  local have = {}
  for _, name in ipairs(r:ckpt_tensors(step)) do have[name] = true end
  local want = {}
  for _, p in ipairs(st.params) do
    local key = "params/" .. p.name
    want[key] = true
    if not have[key] then
      fail(string.format("%s: checkpoint %d has no parameter '%s' (the model has it): the script or config no " ..
        "longer matches the run", path, step, p.name))
    end
    local _, shape = r:ckpt_info(step, key)
    local mine = require("m2.dist").full_shape(p) -- (a rank-local slice: the whole across the ranks)
    if #shape ~= #mine or table.concat(shape, ",") ~= table.concat(mine, ",") then
      fail(string.format("%s: checkpoint %d: parameter '%s' has shape %s in the file but %s in the model: the " ..
        "script or config no longer matches the run", path, step, p.name, shape_text(shape), shape_text(mine)))
    end
  end
  for name in pairs(have) do
    if name:sub(1, 7) == "params/" and not want[name] then
      fail(string.format("%s: checkpoint %d has parameter '%s' that the model does not have: the script or config " ..
        "no longer matches the run", path, step, name:sub(8)))
    end
  end
  return have
end

local function warn(text)
  io.stderr:write("m2.train: warning: ", text, "\n")
  io.stderr:flush()
end

-- the checkpoint a resume continues from: the newest one that reads back whole (every tensor against its checksum,
-- before the file is opened for writing; the load reads it again). A damaged one is skipped with a warning naming it;
-- a model that does not match the checkpoint is an error.
local function pick_checkpoint(st, rd)
  local path, list, chosen = rd:path(), rd:ckpt_list(), nil
  for i = #list, 1, -1 do
    local intact, why = rd:ckpt_verify(list[i])
    if intact then
      check_checkpoint(st, rd, list[i])
      chosen = list[i]
      break
    end
    warn(string.format("%s: checkpoint %d is damaged (%s); trying the one before it", path, list[i], why))
  end
  for _, name in ipairs(rd:ckpt_damaged()) do
    local step = math.tointeger(tonumber(name))
    if step and (chosen == nil or step > chosen) then
      warn(string.format("%s: checkpoint %d is damaged (its group or attributes cannot be read); skipped", path, step))
    end
  end
  if chosen and chosen ~= list[#list] then
    warn(string.format("%s: resuming from checkpoint %d, the newest intact one", path, chosen))
  elseif not chosen and #list > 0 then
    fail(string.format("%s: every checkpoint is damaged (%s): nothing to resume from", path, table.concat(list, ", ")))
  end
  return chosen
end

local function load_checkpoint(st, step)
  local r, path = st.run, st.run:path()
  local have = check_checkpoint(st, r, step)
  for _, p in ipairs(st.params) do -- (rank-local slices: DP:sync_start)
    if not p.shard then r:ckpt_read_into(step, "params/" .. p.name, p.tensor) end
  end
  st.opt:init_state()
  for j, sname in ipairs(st.opt:state_names()) do
    for i, p in ipairs(st.params) do
      local key = "optim/" .. sname .. "/" .. p.name
      if not have[key] then fail(string.format("%s: checkpoint %d has no optimizer state '%s'", path, step, key)) end
      if not st.dp then r:ckpt_read_into(step, key, st.opt:state(i, j)) end
    end
  end
  if st.dp then st.dp_state_step = step end -- every rank takes its part (m2.dist, DP:sync_start)
  local function get(k)
    local v, msg = r:ckpt_get(step, k)
    if v == nil then fail(msg) end
    return v
  end
  st.opt:set_steps(get("optim_steps"))
  m2.set_rng_state { seed = get("rng_seed"), stream = get("rng_stream"), offset = get("rng_offset") }
  st.cursor = get("data_cursor")
  st.nan_skips, st.nan_streak, st.tokens = get("nan_skips"), get("nan_streak"), get("tokens")
  st.train_time = get("train_time")
  st.win = { n = get("win_n"), loss = get("win_loss"), gnorm = get("win_gnorm"), finite = get("win_finite"),
             mem = get("win_mem") }
  st.step = step
  st.last_ckpt = step
end

-- ---------------------------------------------------------------------------------------
-- the run file
-- ---------------------------------------------------------------------------------------

local function read_script_source()
  if m2.script_source then return m2.script_source end
  if not m2.script then return "" end
  local f = io.open(m2.script, "rb")
  if not f then return "" end
  local src = f:read("a")
  f:close()
  return src
end

local function overrides_list()
  local out = {}
  local order = core.args_order or {}
  local raw = m2.args_raw or {}
  if m2.resuming and m2.resuming.overrides then return m2.resuming.overrides end
  for _, k in ipairs(order) do
    if raw[k] ~= nil then out[#out + 1] = k .. "=" .. raw[k] end
  end
  return out
end

-- a schedule spec in words: "cosine, warmup 10, decay 50, lr 0.003 -> 0.0003"
local function sched_text(sp)
  local parts = { sp.kind, "warmup " .. sp.warmup }
  if sp.kind == "wsd" then parts[#parts + 1] = "stable " .. sp.stable end
  if sp.kind ~= "constant" then
    parts[#parts + 1] = "decay " .. sp.decay
    parts[#parts + 1] = string.format("lr %.3g -> %.3g", sp.lr, sp.min_lr)
  else
    parts[#parts + 1] = string.format("lr %.3g", sp.lr)
  end
  return table.concat(parts, ", ")
end

-- the schedule of a resumed run: the one checkpoint `latest` ran with (its config_json; else stored_run, the run's
-- record), unless reschedule=true takes the one derived now. Replaces st.sched (and the record new checkpoints get)
-- when the stored one is kept; sets st.schedule_note, the line that says which happened.
local function resume_schedule(st, s, rd, latest, stored_run)
  local stored
  if latest then
    local cj = rd:ckpt_get(latest, "config_json")
    if cj then stored = runs.json_decode(cj).train end
  end
  stored = stored or stored_run
  if type(stored) ~= "table" or math.type(stored.decay) ~= "integer" then return end -- nothing recorded: as derived
  local now = st.sched.spec
  local old = {}
  for k, v in pairs(now) do old[k] = v end -- the other settings are equal (check_config)
  for k in pairs(DERIVED) do if math.type(stored[k]) == "integer" then old[k] = stored[k] end end
  local differ = old.decay ~= now.decay or old.stable ~= now.stable
  local from = latest or 0
  local where = latest and ("checkpoint " .. latest) or "the run file"
  if not differ then
    st.schedule_note = string.format("schedule as stored (%s)", sched_text(old))
    return
  end
  local kept = m2.optim.schedule(old)
  local next_old, next_new = kept:lr(from), st.sched:lr(from)
  if s.reschedule then
    local was = {}
    for _, k in ipairs { "stable", "decay" } do
      if old[k] ~= now[k] and (k == "decay" or now.kind == "wsd") then was[#was + 1] = k .. " " .. old[k] end
    end
    st.schedule_note = string.format("schedule re-derived for steps=%d (reschedule=true): %s (stored: %s): lr %.3g " ..
      "at step %d (the stored schedule: %.3g)", s.steps, sched_text(now), table.concat(was, ", "), next_new, from + 1,
      next_old)
    return
  end
  st.sched = kept
  st.config_json = runs.json_encode { config = s.config, train = train_record(s, st.opt, kept) }
  st.schedule_note = string.format("schedule kept as stored in %s (%s): lr %.3g at step %d; pass reschedule=true to " ..
    "re-derive it for steps=%d (%s: lr %.3g at step %d)", where, sched_text(old), next_old, from + 1, s.steps,
    sched_text(now), next_new, from + 1)
end

local function open_run(st, s)
  local path = s.out
  if m2.resuming then
    -- first read-only: a config or model that no longer matches leaves the file untouched
    local prev_status, latest
    do
      local rd <close> = core.run_open(path, { mode = "read" })
      prev_status = rd:get_attr("status") or "running"
      local cj = rd:get_attr("config_json")
      local stored
      if cj then
        stored = runs.json_decode(cj)
        check_config(path, stored.config or {}, s.config)
        local now = runs.json_decode(st.config_json)
        check_config(path, stored.train or {}, now.train or {}, true)
      end
      latest = pick_checkpoint(st, rd)
      if latest and latest >= s.steps then -- (m2lab resume says so before running the script; a script may differ)
        fail(string.format("%s: nothing to do: run already at step %d (steps=%d); pass steps=N larger than %d to " ..
          "continue it", path, latest, s.steps, latest))
      end
      resume_schedule(st, s, rd, latest, stored and stored.train)
    end
    local r = core.run_open(path, { mode = "resume", flush_interval = s.flush_interval, keep_last = s.keep_checkpoints })
    st.run = r
    local ok, err = pcall(function()
      if latest then
        load_checkpoint(st, latest)
        st.resumed_from = latest
      else
        st.resumed_from = 0
      end
      r:truncate(st.step)
      r:set_attr("overrides_json", runs.json_encode_list(overrides_list()))
    end)
    if not ok then -- e.g. a damaged checkpoint: put the status back and let go of the file
      st.run = nil
      pcall(r.set_status, r, prev_status)
      pcall(r.close, r)
      error(err, 0)
    end
    m2.resuming.used = true
    return
  end
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local ok, err = pcall(core.mkdir_p, dir)
    if not ok then fail(string.format("%s: cannot create the run file's directory: %s", path, err)) end
  end
  local f = io.open(path, "rb")
  if f then
    local _, rerr = f:read(0)
    f:close()
    if rerr then fail(string.format("%s: not a regular file (%s)", path, rerr)) end
    if not s.overwrite then
      fail(string.format("%s already exists: choose another out=, pass overwrite=true to replace it, or continue it " ..
        "with `m2lab resume %s`", path, path))
    end
  end
  local src = read_script_source()
  -- an existing file is replaced only once the new run's first step succeeded: until then the run is written beside
  -- it (<out>.new), so a data set, model or loss that fails at step 1 leaves the old run as it was
  local r = core.run_open(path, { mode = "create", overwrite = s.overwrite, staged = f ~= nil,
                                  flush_interval = s.flush_interval, keep_last = s.keep_checkpoints, device = s.device,
                                  script = src, config_json = st.config_json })
  st.run = r
  st.staged = f ~= nil
  r:set_attr("script_path", m2.script or "")
  r:set_attr("script_sha256", core.sha256(src))
  r:set_attr("overrides_json", runs.json_encode_list(overrides_list()))
  r:set_attr("num_params", st.num_params)
  -- the model's spec (m2.models.lm), so that `m2lab generate` can rebuild it without running the script
  local spec = s.model.step_hidden and rawget(s.model, "spec")
  local spec_ok, spec_json = pcall(runs.json_encode, spec)
  if spec and spec_ok then r:set_attr("model_spec_json", spec_json) end
  -- in key order: pairs' order changes from one process to the next (Lua seeds its string hashes at random), and
  -- with it the file's layout (tests that damage a run at given offsets need the same layout every time)
  local flat, keys = runs.flatten(s.config), {}
  for k in pairs(flat) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    -- a config key named like a standard attribute (device, ...) stays in config_json only
    if not core.run_is_standard_attr(k) then r:set_attr(k, flat[k]) end
  end
  for _, name in ipairs { "loss", "grad_norm", "nan_skips", "peak_mem_mb" } do r:set_goal("metrics", name, "min") end
  r:set_goal("metrics", "tokens_per_s", "max")
end

-- ---------------------------------------------------------------------------------------
-- progress
-- ---------------------------------------------------------------------------------------

local function progress(st, s, step, loss, lr, tps, final)
  if s.quiet then return end
  local now = core.clock()
  local done = step - st.start_step
  local eta = done > 0 and (now - st.session_t0) / done * (s.steps - step) or math.huge
  local line = string.format("step %d/%d  loss %.4f  lr %.2e  %s tok/s  ETA %s", step, s.steps, loss, lr,
    fmt_rate(tps), fmt_time(eta))
  if st.tty then
    if final or now - st.last_print >= 0.1 then
      io.stdout:write("\r", line, string.rep(" ", math.max(0, st.last_len - #line)))
      if final then io.stdout:write("\n") end
      io.stdout:flush()
      st.last_print, st.last_len = now, #line
    end
  elseif step % s.print_every == 0 or final then
    io.stdout:write(line, "\n")
    io.stdout:flush()
  end
end

local function say(st, s, text)
  if s.quiet then return end
  if st.tty and st.last_len > 0 then io.stdout:write("\r", string.rep(" ", st.last_len), "\r") end
  io.stdout:write(text, "\n")
  io.stdout:flush()
  st.last_len = 0
end

-- ---------------------------------------------------------------------------------------
-- the loop
-- ---------------------------------------------------------------------------------------

local function run_eval(st, s, step)
  local model = s.model
  model:eval()
  local ok, res = pcall(m2.no_grad, s.eval, model, step)
  model:train()
  if not ok then error(res, 0) end
  if type(res) ~= "table" then fail("eval must return a table {name = number}, got " .. type(res)) end
  local names = {}
  for k, v in pairs(res) do
    if type(v) ~= "number" then fail(string.format("eval result '%s' is a %s, not a number", tostring(k), type(v))) end
    names[#names + 1] = k
  end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do
    if st.run then st.run:log("eval", k, step, res[k]) end
    parts[#parts + 1] = string.format("%s %.4g", k, res[k])
  end
  say(st, s, string.format("eval @ %d: %s", step, table.concat(parts, "  ")))
  st.last_eval = res
end

local function one_step(st, s, step)
  local opt, model = st.opt, s.model
  local devtype = s.device:match("^cuda") and "cuda" or "cpu"
  core.mem_reset_peak(devtype)
  local t0 = core.clock()
  opt:clear_grads() -- set to none: backward adopts the new gradients (no add into zeroed buffers)
  local lsum, tokens = 0.0, 0
  for _ = 1, s.grad_accum do
    local x, y = s.data:batch(st.cursor)
    for _, t in ipairs { { "x", x }, { "y", y } } do -- (an empty batch would train on nothing and log loss 0)
      if m2.is_tensor(t[2]) and t[2]:numel() == 0 then
        local shape = t[2]:shape()
        fail(string.format("data:batch(%d) returned an empty batch: %s has shape %s: %s", st.cursor, t[1],
          shape_text(shape), (shape[1] or 1) == 0 and "a batch size of 0 (check the data's batch setting: batch=0?)" or
          "a sequence length of 0 (check the data's length setting: len=0, length=0?)"))
      end
    end
    st.cursor = st.cursor + 1
    if st.dp then x, y = st.dp:slice(x, "x"), st.dp:slice(y, "y") end -- this rank's rows of the global batch
    if s.device ~= "cpu" then
      if m2.is_tensor(x) then x = x:to(s.device) end
      if m2.is_tensor(y) then y = y:to(s.device) end
    end
    local l = st.lossfn(model, x, y)
    if not m2.is_tensor(l) then fail("loss must return a tensor, got " .. type(l)) end
    local raw = l
    local parts = s.grad_accum * (st.dp and st.dp.world or 1) -- micro-batches in the global batch
    if parts > 1 then l = l * (1.0 / parts) end
    l:backward()
    -- the loss is read once the backward is queued: on a GPU the host issues the backward while the device still
    -- runs the forward, instead of waiting for the forward to finish first
    lsum = lsum + raw:item()
    if m2.is_tensor(x) then tokens = tokens + x:numel() end
  end
  local loss, gnorm = lsum / s.grad_accum, nil
  if st.dp then -- gradients summed over the ranks; the global loss, tokens and grad norm
    loss, tokens, gnorm = st.dp:reduce(st, s, lsum, tokens, core.clock() - t0, core.mem_peak(devtype) / 2 ^ 20)
  else
    gnorm = m2.optim.clip_grad_norm(st.params, s.clip or math.huge)
  end
  local lr = st.sched:lr(step - 1)
  local finite = isfinite(loss) and isfinite(gnorm)
  if finite then
    if st.dp then st.dp:step(lr) else opt:step(lr) end
    st.nan_streak = 0
  else
    opt:zero_grad()
    st.nan_skips = st.nan_skips + 1
    st.nan_streak = st.nan_streak + 1
  end
  local dt = core.clock() - t0
  local mem = core.mem_peak(devtype) / 2 ^ 20
  st.tokens = st.tokens + tokens
  return loss, gnorm, lr, finite, tokens, dt, mem
end

local function loop(st, s)
  local w = st.win
  for step = st.step + 1, s.steps do
    local loss, gnorm, lr, finite, tokens, dt, mem = one_step(st, s, step)
    if st.staged then -- overwrite=true: the first step went through, the new run now replaces the old file
      st.run:replace()
      st.staged = false
    end
    st.step = step
    w.n = w.n + 1
    if finite then
      w.loss, w.gnorm, w.finite = w.loss + loss, w.gnorm + gnorm, w.finite + 1
    end
    w.mem = math.max(w.mem, mem)
    st.win_tokens, st.win_time = st.win_tokens + tokens, st.win_time + dt
    local tps = st.win_time > 0 and st.win_tokens / st.win_time or 0
    local stop = not finite and st.nan_streak >= s.max_nan_skips
    if not finite then
      say(st, s, string.format("step %d: non-finite %s (loss %s, grad norm %s): update skipped (%d in a row)", step,
        isfinite(loss) and "gradient" or "loss", tostring(loss), tostring(gnorm), st.nan_streak))
    end
    if step % s.log_every == 0 or step == s.steps or stop then -- (the step that stops the run is logged too)
      -- means over the finite steps of the window; a window of skipped steps logs the bad loss
      local mloss = w.finite > 0 and w.loss / w.finite or loss
      local mgn = w.finite > 0 and w.gnorm / w.finite or gnorm
      if st.run then
        local r = st.run
        r:log("metrics", "loss", step, mloss)
        r:log("metrics", "lr", step, lr)
        r:log("metrics", "grad_norm", step, mgn)
        r:log("metrics", "tokens_per_s", step, tps)
        r:log("metrics", "peak_mem_mb", step, w.mem)
        r:log("metrics", "nan_skips", step, st.nan_skips)
        -- the model's own metrics, when it has any (m2.models.lm with MoE MLPs: aux losses, per-expert load)
        if type(s.model.log_metrics) == "function" then
          for _, m in ipairs(s.model:log_metrics()) do
            if type(m[2]) == "table" then r:log_array(m[1], step, m[2]) else r:log("metrics", m[1], step, m[2]) end
          end
        end
      end
      if st.dp then st.dp:log(st.run, step) end
      st.last_loss = mloss
      w.n, w.loss, w.gnorm, w.finite, w.mem = 0, 0.0, 0.0, 0, 0.0
      st.win_tokens, st.win_time = 0, 0.0
    end
    if stop then
      st.run_failed_msg = string.format("%d consecutive steps with a non-finite loss or gradient (last at step %d: " ..
        "loss %s, grad norm %s)", st.nan_streak, step, tostring(loss), tostring(gnorm))
      fail(st.run_failed_msg .. (st.last_ckpt and st.last_ckpt > 0 and string.format("; the last good checkpoint is " ..
        "step %d in %s", st.last_ckpt, s.out) or ""))
    end
    st.shown_loss = finite and loss or st.shown_loss or loss
    progress(st, s, step, st.shown_loss, lr, tps, step == s.steps)
    if s.eval and ((s.eval_every > 0 and step % s.eval_every == 0) or step == s.steps) then run_eval(st, s, step) end
    local interrupted -- with several ranks, what they agreed on in this step
    if st.dp then interrupted = st.dp.stop else interrupted = m2.interrupted() end
    if (st.run or st.dp and st.dp.root_has_run) and ((s.checkpoint_every > 0 and step % s.checkpoint_every == 0) or step == s.steps or interrupted) then
      write_checkpoint(st, step)
    end
    if interrupted then
      st.interrupted = true
      return
    end
  end
end

-- the end of an error message when an overwrite=true run fails before its first step is through: the old file stays
local function kept_note(st, s)
  if not st.staged then return "" end
  return string.format(" (overwrite=true: %s was not replaced; the old run file is as it was)", s.out)
end

function train.train(spec)
  -- m2.runs.load_model runs a stored script only to get its model: hand it over, train nothing
  if m2.loading then return m2.loading.capture(spec) end
  local s = resolve(spec)
  s.device = require("m2.dist").device(s.device) -- several ranks on "cuda": each its own GPU (m2.dist)
  local st = { step = 0, cursor = 0, nan_skips = 0, nan_streak = 0, tokens = 0, train_time = 0.0,
               win = { n = 0, loss = 0.0, gnorm = 0.0, finite = 0, mem = 0.0 }, win_tokens = 0, win_time = 0.0,
               tty = core.isatty(1), last_print = -1, last_len = 0, session_t0 = core.clock() }
  if s.device ~= "cpu" then s.model:to(s.device) end
  st.opt, st.sched = make_optim(s)
  st.params = m2.optim.param_list(s.model)
  st.num_params = 0
  for _, p in ipairs(st.params) do st.num_params = st.num_params + p.tensor:numel() end
  st.lossfn = s.loss or default_loss
  if s.eval == nil and type(s.data.evaluate) == "function" then -- an LM dataset (m2.data.tokens) evaluates itself
    s.eval = function(model) return s.data:evaluate(model, { device = s.device, loss = st.lossfn }) end
  end
  st.config_json = runs.json_encode { config = s.config, train = train_record(s, st.opt, st.sched) }
  if m2.resuming and not s.out and not s.trial then fail("resuming needs a run file") end
  st.dp = require("m2.dist").setup(s, st) -- nil for one process; else data parallelism over the ranks (m2.dist)
  local function open()
    local ok, err = pcall(open_run, st, s)
    if not ok then
      if st.run then -- created, then a later step failed: the file says so (a staged one is deleted)
        pcall(st.run.set_status, st.run, "failed: " .. tostring(err):match("^[^\n]*"):sub(1, 500))
        pcall(st.run.close, st.run)
        st.run = nil
      end
      error(tostring(err) .. kept_note(st, s), 0)
    end
  end
  if st.dp then -- rank 0 opens the run file; all start from its parameters, state and counters
    local ok, err = pcall(function()
      st.dp:open(st, s, open)
      st.dp:sync_start(st)
    end)
    if not ok then
      st.dp:failed()
      error(err, 0)
    end
  elseif s.out then
    open()
  end
  st.start_step = st.step
  if not s.quiet then
    local head = st.resumed_from and string.format("resuming %s at step %d of %d", s.out, st.step, s.steps) or
      string.format("training %d steps%s", s.steps, s.out and (" -> " .. s.out) or "")
    say(st, s, string.format("m2.train: %s (%d parameters, %s, grad_accum %d%s)", head, st.num_params, s.device,
      s.grad_accum, (s.precision == "bf16" and ", bf16 products" or "") ..
      (s.activations == "bf16" and ", bf16 activations" or "")))
    if st.schedule_note then say(st, s, "m2.train: " .. st.schedule_note) end
  end
  st.session_t0 = core.clock()
  local prev_precision = m2.matmul_precision(s.precision) -- for this run's steps and evals only
  local prev_activations = m2.activations(s.activations)
  local ok, err = xpcall(loop, debug.traceback, st, s)
  m2.matmul_precision(prev_precision)
  m2.activations(prev_activations)
  if not ok and st.dp then st.dp:failed() end
  local status
  if not ok then
    local msg = st.run_failed_msg or tostring(err):match("^[^\n]*")
    status = "failed: " .. msg:sub(1, 500)
  elseif st.interrupted then
    status = "interrupted"
  else
    status = "done"
  end
  if st.run then
    local r = st.run
    st.run = nil
    local ok2, err2 = pcall(function()
      r:set_status(status)
      r:close()
    end)
    if not ok2 and ok then error(err2, 0) end
  end
  if not ok then error((tostring(err):match("^(.-)\nstack traceback") or tostring(err)) .. kept_note(st, s), 0) end
  local summary = { steps = s.steps, step = st.step, final_loss = st.last_loss, out = s.out or nil, status = status,
                    resumed_from = st.resumed_from, nan_skips = st.nan_skips, tokens = st.tokens,
                    time = st.train_time + (core.clock() - st.session_t0), eval = st.last_eval }
  if st.interrupted then
    m2.error(string.format("m2.train: interrupted at step %d; checkpoint written%s", st.step,
      s.out and string.format(" to %s (continue with: m2lab resume %s)", s.out, s.out) or ""))
  end
  return summary
end

setmetatable(train, { __call = function(_, spec) return train.train(spec) end })
return train
