-- test_train_run.lua — m2.train and its run file: metrics, eval, checkpoints (keep-last pruning),
-- root attributes, gradient accumulation, log windows, NaN/inf skipping and stopping, progress
-- lines, the common command-line overrides, and a reader process that opens the file while the
-- run writes it and sees consistent, growing metrics.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs
local nn = m2.nn

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote = T.sh_quote

-- a tiny next-token model and a deterministic data object: x[b][t] = (index + 3b + t) % V, y = x + 1
local V, D, B, L = 12, 16, 4, 8
local Tiny = nn.class("Tiny")
function Tiny:__init()
  self.embed = nn.Embedding(V, D)
  self.head = nn.Linear(D, V, { bias = false })
end
function Tiny:forward(x) return self.head(m2.tanh(self.embed(x))) end

local data = { calls = {} }
function data:batch(index)
  self.calls[#self.calls + 1] = index
  local xs, ys = {}, {}
  for b = 1, B do
    xs[b], ys[b] = {}, {}
    for t = 1, L do
      xs[b][t] = (index + 3 * b + t) % V
      ys[b][t] = (xs[b][t] + 1) % V
    end
  end
  return m2.tensor(xs, { dtype = "i64" }), m2.tensor(ys, { dtype = "i64" })
end

T.case("m2.train without a run file learns and reports", function()
  m2.seed(1)
  data.calls = {}
  local s = m2.train { model = Tiny(), data = data, steps = 30, optim = m2.optim.adamw { lr = 3e-2 }, out = false,
                       quiet = true }
  T.eq(s.step, 30)
  T.eq(s.status, "done")
  T.ok(s.final_loss < 0.5 * math.log(V), "loss fell from ln V: " .. s.final_loss)
  T.eq(#data.calls, 30, "one batch per step")
  T.eq(data.calls[1], 0)
  T.eq(data.calls[30], 29, "batch indices are the data cursor 0, 1, ...")
  T.eq(s.tokens, 30 * B * L)
  T.raises(function() m2.train { model = Tiny(), data = data, steps = 0, out = false } end, "steps must be a positive")
  T.raises(function() m2.train { model = Tiny(), data = {}, steps = 1, out = false } end, "batch(index)")
  T.raises(function() m2.train { model = Tiny(), data = data, steps = 1, lr = 1 } end, "unknown setting 'lr'")
end)

T.case("trial = true: the command line's run-control overrides and a resume are not the trial's", function()
  local saved = { steps = m2.args.steps, out = m2.args.out, eval_every = m2.args.eval_every, resuming = m2.resuming }
  local trial_out = dir .. "/trial.h5"
  m2.args.steps, m2.args.out, m2.args.eval_every = 7, trial_out, 2
  m2.resuming = { path = dir .. "/not-this-one.h5" }
  local ok, err = pcall(function()
    m2.seed(1)
    data.calls = {}
    local s = m2.train { model = Tiny(), data = data, steps = 3, out = false, quiet = true, trial = true }
    T.eq(s.step, 3, "steps from the script, not steps=7")
    T.eq(#data.calls, 3)
    T.ok(not s.out, "no run file")
    T.ok(io.open(trial_out) == nil, "out= of the command line not written")
    T.raises(function() m2.train { model = Tiny(), data = data, steps = 1, out = trial_out, trial = true } end,
      "pass out = false")
    T.raises(function() m2.train { model = Tiny(), data = data, steps = 1, out = false, trial = 1 } end,
      "trial must be true or false")
  end)
  m2.args.steps, m2.args.out, m2.args.eval_every, m2.resuming = saved.steps, saved.out, saved.eval_every, saved.resuming
  if not ok then error(err, 0) end
  -- without trial the same overrides apply (the contrast)
  m2.args.steps = 5
  local s = m2.train { model = Tiny(), data = data, steps = 3, out = false, quiet = true }
  m2.args.steps = saved.steps
  T.eq(s.step, 5, "steps=5 of the command line applies to a run that is not a trial")
end)

T.case("run file: metrics, eval, checkpoints, attributes, grad_accum, log windows", function()
  m2.seed(2)
  data.calls = {}
  local out = dir .. "/r1.h5"
  local evals = {}
  local cfg = { lr = 0.03, width = D, nested = { a = 1, b = "x" }, list = { 1, 2 } }
  local s = m2.train {
    model = Tiny(), data = data, steps = 20, grad_accum = 2, log_every = 3, clip = 0.5,
    optim = m2.optim.adamw { lr = 0.03 }, schedule = { kind = "cosine", warmup = 4, min_lr = 0.003 },
    eval_every = 8, eval = function(model, step)
      evals[#evals + 1] = step
      T.ok(not m2.grad_enabled(), "eval runs without grad")
      T.ok(model.training == false, "eval runs in eval mode")
      local x, y = data:batch(1000)
      return { loss = m2.cross_entropy(model(x), y):item(), one = 1 }
    end,
    checkpoint_every = 5, keep_checkpoints = 2, out = out, config = cfg, quiet = true,
  }
  T.eq(s.status, "done")
  T.eq(evals, { 8, 16, 20 }, "eval at every eval_every steps and after the last")
  T.eq(#data.calls, 40 + 3, "grad_accum 2: two batches per step (+ 3 eval batches)")
  local r <close> = runs.open(out)
  T.eq(r:get_attr("status"), "done")
  local names = r:list_series("metrics")
  T.eq(names, { "grad_norm", "loss", "lr", "nan_skips", "peak_mem_mb", "tokens_per_s" })
  for _, n in ipairs(names) do
    local st, v = r:read_series("metrics", n)
    T.eq(st, { 3, 6, 9, 12, 15, 18, 20 }, n .. ": logged every 3 steps and at the last")
    T.eq(#v, #st)
  end
  local _, lr = r:read_series("metrics", "lr")
  local sched = m2.optim.schedule { kind = "cosine", lr = 0.03, min_lr = 0.003, warmup = 4, decay = 16 }
  T.eq(lr[7], sched:lr(19), "lr of update 20 is the schedule at step index 19")
  T.eq(lr[1], sched:lr(2))
  local _, gn = r:read_series("metrics", "grad_norm")
  T.ok(gn[1] > 0, "grad norm logged (before clipping)")
  local _, tps = r:read_series("metrics", "tokens_per_s")
  T.ok(tps[1] > 0, "tokens/s")
  local _, mem = r:read_series("metrics", "peak_mem_mb")
  T.ok(mem[1] > 0, "peak memory")
  local es, ev = r:read_series("eval", "loss")
  T.eq(es, { 8, 16, 20 })
  T.ok(ev[3] < ev[1], "eval loss falls")
  T.eq(r:ckpt_list(), { 15, 20 }, "keep_checkpoints = 2 keeps the last two of 5, 10, 15, 20")
  T.eq(r:ckpt_get(20, "data_cursor"), 40, "data cursor: the next batch index")
  T.eq(r:ckpt_get(20, "optim_steps"), 20)
  local tensors = r:ckpt_tensors(20)
  T.eq(tensors, { "optim/exp_avg/embed.weight", "optim/exp_avg/head.weight", "optim/exp_avg_sq/embed.weight",
                  "optim/exp_avg_sq/head.weight", "params/embed.weight", "params/head.weight" })
  -- root attributes: script text and hash, config keys, config_json
  local script = r:get_attr("script")
  T.eq(script, assert(io.open(m2.script, "rb")):read("a"), "the script's source text is stored")
  T.eq(r:get_attr("script_sha256"), core.sha256(script))
  T.eq(r:get_attr("lr"), 0.03)
  T.eq(r:get_attr("nested.b"), "x")
  T.eq(r:get_attr("list"), "[1,2]")
  T.eq(r:get_attr("num_params"), 2 * V * D)
  local cj = runs.json_decode(r:get_attr("config_json"))
  T.eq(cj.config.nested.a, 1)
  T.eq(cj.train.grad_accum, 2)
  T.eq(cj.train.decay, 16, "cosine decay defaults to steps - warmup")
  T.ok(r:get_attr("host") ~= "" and r:get_attr("start_time"):match("^%d%d%d%d%-") ~= nil, "host and start time")
  -- an existing file is not overwritten
  T.raises(function() m2.train { model = Tiny(), data = data, steps = 1, out = out } end,
    "already exists: choose another out=, pass overwrite=true")
end)

T.case("overwrite=true: a bad learning rate, data set, model or loss leaves the old run file as it was", function()
  m2.seed(9)
  local out = dir .. "/keep.h5"
  m2.train { model = Tiny(), data = data, steps = 2, out = out, quiet = true }
  local function bytes()
    local f = assert(io.open(out, "rb"))
    local b = f:read("a")
    f:close()
    return b
  end
  local before = bytes()
  local bad_opt = m2.optim.adamw { lr = 1e-3 }
  bad_opt.lr = -1 -- changed after it was made
  for _, c in ipairs {
    { { optim = { kind = "adamw", lr = -1 } }, "adamw: lr must be a finite number >= 0, got %-1" },
    { { optim = { kind = "sgd", lr = 0 / 0 } }, "sgd: lr must be a finite number >= 0" },
    { { schedule = { kind = "cosine", min_lr = -1 } }, "schedule: min_lr must be a finite number >= 0" },
    { { optim = bad_opt }, "m2.train: the optimizer's lr must be a finite number >= 0, got %-1" },
  } do
    local spec = { model = Tiny(), data = data, steps = 2, out = out, quiet = true, overwrite = true }
    for k, v in pairs(c[1]) do spec[k] = v end
    T.raises(function() m2.train(spec) end, c[2])
    T.ok(bytes() == before, "the old run file is still there, intact: " .. c[2])
  end
  -- what only the first step finds out: a data set whose batch fails, a model whose forward fails (a token id past
  -- its vocabulary), a loss that does not return a tensor. The new run is written beside the old file and deleted.
  local bad_data = { batch = function() error("bad data spec: no such shard") end }
  local Small = nn.class("Small")
  function Small:__init() self.embed = nn.Embedding(4, D); self.head = nn.Linear(D, V, { bias = false }) end
  function Small:forward(x) return self.head(self.embed(x)) end
  for _, c in ipairs {
    { { data = bad_data }, "bad data spec: no such shard" },
    { { model = Small() }, "out of range" },
    { { loss = function() return 1 end }, "loss must return a tensor" },
  } do
    local spec = { model = Tiny(), data = data, steps = 2, out = out, quiet = true, overwrite = true }
    for k, v in pairs(c[1]) do spec[k] = v end
    local err = T.raises(function() m2.train(spec) end, c[2])
    T.ok(err and err:find(out .. " was not replaced; the old run file is as it was", 1, true), tostring(err))
    T.ok(bytes() == before, "the old run file is still there, intact: " .. c[2])
    T.ok(io.open(out .. ".new", "rb") == nil, "the new run's file is gone: " .. c[2])
  end
  local r <close> = runs.open(out)
  T.eq(r:get_attr("status"), "done")
  r:close()
  -- a good overwrite replaces it (the first step went through) and leaves nothing beside it
  local s = m2.train { model = Tiny(), data = data, steps = 3, out = out, quiet = true, overwrite = true,
                       checkpoint_every = 1, keep_checkpoints = 2 }
  T.eq(s.status, "done")
  T.ok(io.open(out .. ".new", "rb") == nil, "no <out>.new left")
  T.eq(runs.info(out).checkpoints, { 2, 3 })
  T.eq(#runs.series(out, "metrics", "loss"), 3)
  T.raises(function() m2.optim.schedule { lr = -3e-4 } end, "schedule: lr must be a finite number >= 0")
  T.raises(function() m2.optim.adamw { lr = math.huge } end, "adamw: lr must be a finite number >= 0")
end)

T.case("NaN/inf steps are skipped and counted; repeated ones stop the run", function()
  m2.seed(3)
  local out = dir .. "/nan.h5"
  local calls = 0
  local bad = { [4] = true, [5] = true }
  local function loss(model, x, y)
    calls = calls + 1
    local l = m2.cross_entropy(model(x), y)
    if bad[calls] then return l * (0 / 0) end
    return l
  end
  local model = Tiny()
  local s = m2.train { model = model, data = data, loss = loss, steps = 10, out = out, quiet = true,
                       optim = m2.optim.adamw { lr = 1e-2 } }
  T.eq(s.status, "done")
  T.eq(s.nan_skips, 2)
  local st, v = runs.series(out, "metrics", "nan_skips")
  T.eq(v[3], 0.0)
  T.eq(v[5], 2.0, "running count")
  local _, losses = runs.series(out, "metrics", "loss")
  for i, x in ipairs(losses) do
    if bad[st[i]] then T.ok(x ~= x, "the skipped step's NaN loss is logged at step " .. st[i])
    else T.ok(x == x, "loss at step " .. st[i] .. " is a number") end
  end
  for _, p in ipairs(model:parameters()) do
    T.eq(m2.eq(p.tensor, p.tensor):sum_all():item(), p.tensor:numel(), "parameters stay free of NaN: " .. p.name)
  end
  -- every step from the 3rd on is NaN: stops after max_nan_skips
  local out2 = dir .. "/nan2.h5"
  calls = 0
  bad = setmetatable({}, { __index = function(_, k) return k >= 3 end })
  local err = T.raises(function()
    m2.train { model = Tiny(), data = data, loss = loss, steps = 50, max_nan_skips = 4, checkpoint_every = 2,
               out = out2, quiet = true }
  end, "4 consecutive steps with a non%-finite loss or gradient %(last at step 6")
  T.ok(err and err:find("last good checkpoint is step 4 in " .. out2, 1, true), err)
  local r <close> = runs.open(out2)
  T.ok(r:get_attr("status"):match("^failed: 4 consecutive steps") ~= nil, r:get_attr("status"))
  T.eq(r:ckpt_list(), { 2, 4 }, "the checkpoints before the failure stay")
  local ls, lv = r:read_series("metrics", "loss")
  T.eq(ls[#ls], 6, "the step that stopped the run is logged")
  T.ok(lv[#lv] ~= lv[#lv], "as NaN")
  local ns, nv = r:read_series("metrics", "nan_skips")
  T.eq({ ns[#ns], nv[#nv] }, { 6, 4.0 })
  -- an empty batch (a batch size or sequence length of 0) is refused at the first step, saying which
  local function empty(b, t)
    return { batch = function() return m2.zeros({ b, t }, { dtype = "i64" }), m2.zeros({ b, t }, { dtype = "i64" }) end }
  end
  T.raises(function() m2.train { model = Tiny(), data = empty(0, L), steps = 2, out = false, quiet = true } end,
    "data:batch%(0%) returned an empty batch: x has shape %(0, 8%): a batch size of 0 %(check the data's batch setting")
  T.raises(function() m2.train { model = Tiny(), data = empty(B, 0), steps = 2, out = false, quiet = true } end,
    "data:batch%(0%) returned an empty batch: x has shape %(4, 0%): a sequence length of 0")
end)

T.case("progress lines, common overrides on any script, and a script error sets status failed", function()
  local script = dir .. "/plain.lua"
  local f = assert(io.open(script, "w"))
  f:write([[
local m2 = require "m2"
local cfg = m2.config { width = 8, crash = false }   -- lists none of the common overrides
print("rng seed", m2.rng_state().seed)
local nn = m2.nn
local model = nn.Sequential(nn.Embedding(10, cfg.width), nn.Linear(cfg.width, 10))
local data = { batch = function(_, i)
  if cfg.crash and i == 3 then error("boom at batch 3") end
  local x = m2.tensor({ { i % 10, (i + 1) % 10 } }, { dtype = "i64" })
  return x, m2.tensor({ { (i + 1) % 10, (i + 2) % 10 } }, { dtype = "i64" })
end }
local s = m2.train { model = model, data = data, steps = 100, out = "unused.h5", print_every = 2 }
print("cfg.steps", cfg.steps, "cfg.out", cfg.out, "done", s.step)
]])
  f:close()
  local out = dir .. "/plain.h5"
  local code, text = T.run_m2lab(sh_quote(script) .. " steps=6 seed=7 checkpoint_every=3 eval_every=0 out=" ..
    sh_quote(out))
  T.eq(code, 0, text)
  T.ok(text:find("rng seed\t7", 1, true), "seed= seeds the default RNG: " .. text)
  T.ok(text:find("cfg.steps\t6\tcfg.out\t" .. out .. "\tdone\t6", 1, true), "overrides in the config and in m2.train")
  T.ok(text:find("step 2/6  loss", 1, true) and text:find("step 6/6  loss", 1, true), "plain progress lines")
  T.ok(not text:find("\r", 1, true), "no carriage returns when stdout is not a terminal")
  T.ok(text:find("tok/s  ETA", 1, true), "tokens/s and ETA")
  local r <close> = runs.open(out)
  T.eq(r:ckpt_list(), { 3, 6 })
  T.eq(runs.json_decode(r:get_attr("overrides_json")),
    { "steps=6", "seed=7", "checkpoint_every=3", "eval_every=0", "out=" .. out })
  -- a failing script: status "failed: <message>", exit status 1
  local out2 = dir .. "/crash.h5"
  code, text = T.run_m2lab(sh_quote(script) .. " crash=true steps=6 out=" .. sh_quote(out2))
  T.eq(code, 1, text)
  T.ok(text:find("boom at batch 3", 1, true), text)
  local r2 <close> = runs.open(out2)
  local status = r2:get_attr("status")
  T.ok(status:match("^failed: .*boom at batch 3") ~= nil, status)
end)

T.case("out=false on the command line trains without a run file (not a file named false)", function()
  local sub = dir .. "/outfalse"
  core.mkdir_p(sub)
  local script = sub .. "/s.lua"
  local f = assert(io.open(script, "w"))
  f:write([[
local m2 = require "m2"
local cfg = m2.config { out = "runs/default-out.h5" }
local model = m2.nn.Sequential(m2.nn.Embedding(4, 4), m2.nn.Linear(4, 4))
local data = { batch = function(_, i) return m2.tensor({ { i % 4 } }, { dtype = "i64" }), m2.tensor({ { 0 } }, { dtype = "i64" }) end }
local s = m2.train { model = model, data = data, steps = 2, out = cfg.out, checkpoint_every = 1 }
print("summary.out", tostring(s.out))
]])
  f:close()
  for _, word in ipairs { "out=false", "out=" } do
    local code, text = T.run_m2lab("run " .. sh_quote(script) .. " " .. word)
    T.eq(code, 0, text)
    T.ok(text:find("summary.out\tnil", 1, true), word .. ": no run file in the summary: " .. text)
  end
  T.ok(io.open("false", "r") == nil and io.open(sub .. "/false", "r") == nil, "no file named false")
  T.ok(io.open("runs/default-out.h5", "r") == nil, "nor the script's default")
  -- a path spelled otherwise (./false, DIR/false) names a file
  local code, text = T.run_m2lab("run " .. sh_quote(script) .. " out=" .. sh_quote(sub .. "/false"))
  T.eq(code, 0, text)
  T.eq(runs.info(sub .. "/false").latest, 2)
end)

T.case("a reader process sees consistent, growing metrics while the run writes", function()
  local out = dir .. "/live.h5"
  local pid = core.spawn({ m2.exe, "run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=120", "throttle=0.02",
                           "checkpoint_every=40", "eval_every=0", "d=16", "flush_interval=0.3", "out=" .. out },
                         { stdout = dir .. "/live.log" })
  local prev_steps, prev_values = {}, {}
  local sizes, reads, bad = {}, 0, nil
  local t0 = core.clock()
  local finished = false
  while core.clock() - t0 < 60 do
    if core.wait(pid, true) then finished = true end
    local ok, steps, values = pcall(function()
      local r <close> = runs.open(out, { open_timeout = 1 })
      return r:read_series("metrics", "loss")
    end)
    if ok then
      reads = reads + 1
      if #steps ~= #values then bad = bad or "steps and values differ in length" end
      if #steps < #prev_steps then bad = bad or "a series shrank" end
      for i = 1, #steps do
        if steps[i] ~= i then bad = bad or ("step " .. i .. " is " .. tostring(steps[i])) end
        if values[i] ~= values[i] then bad = bad or ("NaN at " .. i) end
        if i <= #prev_values and values[i] ~= prev_values[i] then bad = bad or ("value " .. i .. " changed") end
      end
      if #steps ~= sizes[#sizes] then sizes[#sizes + 1] = #steps end
      prev_steps, prev_values = steps, values
    elseif reads > 0 and not tostring(steps):find("open for write", 1, true) then
      -- before the first successful read the file may not exist or be half-created; after it,
      -- the only acceptable failure is the writer being EXCLUSIVE (checkpoint, new series)
      bad = bad or ("unexpected reader error: " .. tostring(steps))
    end
    if finished then break end
    core.sleep(0.05)
  end
  io.stdout:write(string.format("  reader: %d opens during the run, series lengths seen: %s\n", reads,
    table.concat(sizes, " ")))
  T.ok(finished, "the run finished")
  T.eq(bad, nil, "every read was consistent")
  T.ok(reads >= 5, "the reader opened the file " .. reads .. " times during the run")
  T.ok(#sizes >= 3, "the reader saw the series grow: " .. table.concat(sizes, ", "))
  T.eq(prev_steps[#prev_steps], 120, "and finally all 120 steps")
end)

T.case("precision = bf16: bf16 products while training, the setting restored and recorded", function()
  -- m2.matmul_precision itself: f32 products of these operands differ from their bf16 products
  m2.seed(5)
  local a, b = m2.randn(8, 40), m2.randn(40, 6)
  T.eq(m2.matmul_precision(), "f32", "the default is f32 products")
  local c32 = m2.matmul(a, b)
  T.eq(m2.matmul_precision("bf16"), "f32", "setting returns the previous value")
  local c16 = m2.matmul(a, b)
  T.eq(m2.matmul_precision("f32"), "bf16")
  local ar, br = a:to("bf16"):to("f32"), b:to("bf16"):to("f32")
  T.ok(m2.square(c16 - m2.matmul(ar, br)):max_all():item() < 1e-10, "bf16 products = f32 products of the rounded operands")
  T.ok(m2.square(c16 - c32):max_all():item() > 1e-8, "and differ from the f32 products")
  T.raises(function() m2.matmul_precision("fp8") end, "invalid option")
  -- m2.train{precision = "bf16"}: trains, restores f32 afterwards, records the setting in the run file
  local out = dir .. "/bf16.h5"
  m2.seed(3)
  local s = m2.train { model = Tiny(), data = data, steps = 30, optim = m2.optim.adamw { lr = 3e-2 }, out = out,
                       precision = "bf16", quiet = true }
  T.eq(s.status, "done")
  T.ok(s.final_loss < 1.0, "learns with bf16 products: loss " .. tostring(s.final_loss))
  T.eq(m2.matmul_precision(), "f32", "the previous setting is back after the run")
  local r <close> = runs.open(out)
  T.eq(runs.json_decode(r:get_attr("config_json")).train.precision, "bf16", "the run file records the precision")
  T.raises(function() m2.train { model = Tiny(), data = data, steps = 1, out = false, precision = "fp8" } end,
    'precision must be "f32" or "bf16"')
end)

os.execute("rm -rf " .. sh_quote(dir))
