-- sweep_lm.lua — the language-model comparison (issue 16): the paper's architectures of experiments/lm.lua at its
-- small width on the docs corpus, the same tokens (steps x batch x length) for every run, a few seeds each, two runs
-- at a time (the CPU kernels are single-threaded per op; two processes use both cores); then the comparison table
-- (arch: validation loss in nats/token and bits per byte, mean and [min-max] over seeds; parameters; wall time per
-- run; machine), printed and written to <out>/summary.md. notebooks/lm_comparison.ipynb plots validation loss
-- against tokens seen from the same runs.
--
--   bash datasets/corpus.sh                                    -- once: data/docs-byte/
--   m2lab run experiments/sweep_lm.lua                         -- default: 5 archs x 3 seeds x 300 steps, ~20-25 min
--                                                                 on 2 cores (parallel=2)
--   m2lab run experiments/sweep_lm.lua steps=100 seeds=0       -- a quick look (~3 min)
--   m2lab run experiments/sweep_lm.lua archs=m2rnn,attention seeds=0,1,2,3,4 steps=1000 parallel=4
--
-- Members run through m2.sweep (one run file each under <out>, index.h5 links them; re-running skips finished
-- members, so a stopped sweep can be continued). The overrides below that are 0 / "" keep experiments/lm.lua's
-- defaults (d 128, 4 blocks, T 128, B 16, 300 steps, lr 3e-3); the others go to every member.
local m2 = require "m2"
local runs = require "m2.runs"

local cfg = m2.config {
  archs = { "m2rnn", "hybrid-m2rnn", "hybrid-gdn", "gdn+m2rnn-1l", "attention" },
  seeds = { 0, 1, 2 },
  parallel = 2,
  out = "runs/sweep_lm",
  eval_every = 50, -- validation points along the way (the notebook's curves); 0: only after the last step
  -- settings passed to every member (experiments/lm.lua's defaults when 0 / "")
  data = "", d = 0, layers = 0, length = 0, batch = 0, steps = 0, lr = 0.0, min_lr = 0.0, warmup = 0,
  eval_batches = 0, init_std = 0.0,
}
if #cfg.archs == 0 then m2.error("sweep_lm: archs= is empty") end
if #cfg.seeds == 0 then m2.error("sweep_lm: seeds= is empty") end

local set = { eval_every = cfg.eval_every }
for _, k in ipairs { "data", "d", "layers", "length", "batch", "steps", "lr", "min_lr", "warmup", "eval_batches",
                     "init_std" } do
  local v = cfg[k]
  if v ~= 0 and v ~= "" then set[k] = v end
end
set.checkpoint_every = 0 -- the last checkpoint only: the runs are short
-- the device and the precision of the command line go to every member (m2lab run experiments/sweep_lm.lua device=cuda
-- precision=bf16: the members train on the GPU)
for _, k in ipairs { "device", "precision", "activations" } do
  local v = m2.args[k]
  if v ~= nil and v ~= "" then set[k] = v end
end

-- data= relative to the working directory, else to the repository (the members run from here)
if set.data and set.data:sub(1, 1) ~= "/" and m2.source_dir then
  local f = io.open(set.data .. "/meta.json", "rb")
  if f then f:close() else set.data = m2.source_dir .. "/" .. set.data end
end

local list = {} -- seed by seed: a sweep stopped early still compares every architecture on the first seeds
for _, seed in ipairs(cfg.seeds) do
  for _, arch in ipairs(cfg.archs) do list[#list + 1] = { arch = arch, seed = seed } end
end

local t0 = m2.core.clock()
local res = m2.sweep {
  name = "lm", script = "experiments/lm.lua", set = set, list = list,
  out = cfg.out .. "/", parallel = cfg.parallel, keys = { "arch", "seed" },
}
local sweep_time = m2.core.clock() - t0

-- ---------------------------------------------------------------------------------------
-- collect: the /eval series of every member, its settings and size
-- ---------------------------------------------------------------------------------------
local function series(file, name)
  local ok, steps, vals, times = pcall(runs.series, file, "eval", name)
  if not ok or not vals or #vals == 0 then return nil end
  return steps, vals, times
end

local by_arch, info = {}, nil
for _, m in ipairs(res.members) do
  local arch, seed = m.hparams.arch, m.hparams.seed
  local file = m.path
  local r = { seed = seed, status = m.status }
  pcall(function()
    local f <close> = runs.open(file)
    r.params = f:get_attr("num_params")
    r.pattern = nil
    if not info then
      info = {}
      for _, k in ipairs { "d", "layers", "length", "batch", "steps", "lr", "data", "eval_batches" } do
        info[k] = f:get_attr(k)
      end
    end
  end)
  local steps, vals, times = series(file, "val_loss")
  if steps then
    r.step, r.loss, r.time = steps[#steps], vals[#vals], times and times[#times]
    r.curve = {}
    for i = 1, #steps do r.curve[steps[i]] = vals[i] end
  end
  local _, bpb = series(file, "val_bpb")
  r.bpb = bpb and bpb[#bpb]
  by_arch[arch] = by_arch[arch] or {}
  table.insert(by_arch[arch], r)
end
info = info or {}

-- ---------------------------------------------------------------------------------------
-- the table (markdown), best mean validation loss first
-- ---------------------------------------------------------------------------------------
local function stats(rs, key)
  local sum, n, lo, hi = 0, 0, math.huge, -math.huge
  for _, r in ipairs(rs) do
    local v = r[key]
    if v then sum, n, lo, hi = sum + v, n + 1, math.min(lo, v), math.max(hi, v) end
  end
  if n == 0 then return nil end
  return sum / n, lo, hi, n
end

local function cell(rs, key, f)
  local mean, lo, hi, n = stats(rs, key)
  if not mean then return "-" end
  if n == 1 then return string.format(f, mean) end
  return string.format(f .. " [" .. f .. "-" .. f .. "]", mean, lo, hi)
end

local order = {}
for _, arch in ipairs(cfg.archs) do order[#order + 1] = arch end
table.sort(order, function(a, b)
  local ma = stats(by_arch[a] or {}, "loss") or math.huge
  local mb = stats(by_arch[b] or {}, "loss") or math.huge
  if ma ~= mb then return ma < mb end
  return a < b
end)

local ntok = (info.steps or 0) * (info.batch or 0) * (info.length or 0)
local lines = {}
local function add(s) lines[#lines + 1] = s end
add(string.format("LM comparison (experiments/sweep_lm.lua); %s; %s; device %s, %s products%s",
  os.date("!%Y-%m-%d %H:%M UTC"), require("m2.sweep").machine(), set.device or "cpu", set.precision or "f32",
  set.activations and (", " .. set.activations .. " activations") or ""))
add("")
add(string.format("d %s, %s blocks, T %s, B %s, %s steps = %.2f M tokens per run (every architecture the same), " ..
  "lr %s; data %s; validation over %s batches of the val split after the last step.",
  tostring(info.d), tostring(info.layers), tostring(info.length), tostring(info.batch), tostring(info.steps),
  ntok / 1e6, tostring(info.lr), tostring(info.data), tostring(info.eval_batches)))
add("Mean over seeds and [min-max]:")
add("")
add("| arch | seeds | params | val loss (nats/token) | val bits/byte | wall time / run |")
add("|---|---|---|---|---|---|")
for _, arch in ipairs(order) do
  local rs = by_arch[arch] or {}
  local seeds = {}
  for _, r in ipairs(rs) do
    seeds[#seeds + 1] = tostring(r.seed) .. (r.status == "done" and "" or ("(" .. tostring(r.status):match("^%a+") .. ")"))
  end
  local p = rs[1] and rs[1].params
  add(string.format("| %s | %s | %s | %s | %s | %s |", arch, table.concat(seeds, ","),
    p and string.format("%.0f K", p / 1e3) or "-", cell(rs, "loss", "%.3f"), cell(rs, "bpb", "%.3f"),
    cell(rs, "time", "%.1f s")))
end
add("")
add(string.format("Sweep wall time %.0f s (%d runs, %d at a time); members done %d, failed %d, skipped (already done) %d; " ..
  "run files and index: %s/", sweep_time, #res.members, cfg.parallel, res.done or 0, res.failed or 0,
  res.skipped or 0, cfg.out))

local text = table.concat(lines, "\n") .. "\n"
io.stdout:write("\n" .. text)
local f = io.open(cfg.out .. "/summary.md", "w")
if f then
  f:write(text)
  f:close()
  print("table written to " .. cfg.out .. "/summary.md")
end
if (res.failed or 0) > 0 then m2.error(string.format("sweep_lm: %d member(s) failed (see their logs in %s/)",
  res.failed, cfg.out)) end
