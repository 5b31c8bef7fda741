-- sweep_state_tracking.lua — the state-tracking comparison (DESIGN 5): every architecture of
-- experiments/state_tracking.lua on the same task and budget, M2RNN over 10 seeds and the others over 3, two runs
-- at a time (the CPU kernels are single-threaded per op; two processes use both cores); then the
-- comparison table (arch x length: per-position and whole-sequence accuracy; seeds; wall time;
-- machine), printed and written to <out>/summary.md.
--
--   m2lab run experiments/sweep_state_tracking.lua                 (default: 22 runs, each the best of 4
--                                                                  initialisations: ~1 h on 2 idle cores; candidates=1:
--                                                                  one run each, ~25 min)
--   m2lab run experiments/sweep_state_tracking.lua other_seeds=0,1,2 parallel=4
--   m2lab run experiments/sweep_state_tracking.lua archs=m2rnn,gdn_neg steps=2000
--
-- Members run through m2.sweep (one run file each under <out>, index.h5 links them; re-running
-- skips finished members, so a sweep that was stopped can be continued). Every override that
-- experiments/state_tracking.lua knows can be given here too (group=, train_len=, steps=, lr=, ...)
-- and goes to every member.
local m2 = require "m2"
local runs = require "m2.runs"

local cfg = m2.config {
  archs = { "m2rnn", "gdn", "gdn_neg", "mamba2", "attention" },
  m2rnn_seeds = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }, -- M2RNN runs over these seeds (issue 18: >= 0.99 at 8x on 9 of 10)
  other_seeds = { 0, 1, 2 },                      -- every other architecture over these
  parallel = 2,
  out = "runs/sweep_state_tracking",
  -- settings passed to every member (experiments/state_tracking.lua's defaults when 0 / "")
  group = "", train_len = 0, steps = 0, batch = 0, lr = 0.0, d = 0, layers = 0,
  eval_batches = 0,
  -- -1: the member's default (0 is a setting for these)
  curriculum = -1, curriculum_start = -1, weight_decay = -1.0, warmup = -1, dt_min = -1.0, dt_max = -1.0,
  init_std = -1.0, grad_clip = -1.0, heads = -1, k = -1, v = -1, candidates = -1, candidate_steps = -1,
  candidate_mult = -1,
}

-- the member overrides shared by all
local set = {}
for _, k in ipairs { "group", "train_len", "steps", "batch", "lr", "d", "layers", "eval_batches" } do
  local v = cfg[k]
  if v ~= 0 and v ~= "" then set[k] = v end
end
for _, k in ipairs { "curriculum", "curriculum_start", "weight_decay", "warmup", "dt_min", "dt_max", "init_std",
                    "grad_clip", "heads", "k", "v", "candidates", "candidate_steps", "candidate_mult" } do
  if cfg[k] >= 0 then set[k] = cfg[k] end
end
set.eval_every = 0 -- only the final evaluation (after the last step)

local list = {}
for _, arch in ipairs(cfg.archs) do
  local seeds = arch == "m2rnn" and cfg.m2rnn_seeds or cfg.other_seeds
  for _, seed in ipairs(seeds) do list[#list + 1] = { arch = arch, seed = seed } end
end

local t0 = m2.core.clock()
local res = m2.sweep {
  name = "state_tracking", script = "experiments/state_tracking.lua", set = set, list = list,
  out = cfg.out .. "/", parallel = cfg.parallel, keys = { "arch", "seed" },
}
local sweep_time = m2.core.clock() - t0

-- ---------------------------------------------------------------------------------------
-- collect: the last value of each /eval series of every member
-- ---------------------------------------------------------------------------------------
local function last(file, name)
  local ok, steps, vals = pcall(runs.series, file, "eval", name)
  if not ok or not vals or #vals == 0 then return nil end
  return vals[#vals]
end

local by_arch, lengths, revs = {}, nil, {}
for _, m in ipairs(res.members) do
  local arch, seed = m.hparams.arch, m.hparams.seed
  local file = m.path or m.file
  local L = nil
  pcall(function()
    local r <close> = runs.open(file)
    L = r:get_attr("train_len")
    local rev = r:get_attr("git_rev")
    if rev then revs[rev] = true end
  end)
  local mults = { 1, 2, 4, 8 } -- experiments/state_tracking.lua's eval_mults
  if L and not lengths then
    lengths = {}
    for i, k in ipairs(mults) do lengths[i] = k * L end
  end
  local r = { seed = seed, status = m.status, time = last(file, "wall_time_s"), acc = {}, seqacc = {} }
  for _, len in ipairs(lengths or {}) do
    r.acc[len] = last(file, "acc_len" .. len)
    r.seqacc[len] = last(file, "seqacc_len" .. len)
  end
  by_arch[arch] = by_arch[arch] or {}
  table.insert(by_arch[arch], r)
end
lengths = lengths or {}

-- ---------------------------------------------------------------------------------------
-- the table (markdown)
-- ---------------------------------------------------------------------------------------
local lines = {}
local function add(s) lines[#lines + 1] = s end
local function fmt(v) return v and string.format("%.3f", v) or "-" end

local rev_list = {}
for rev in pairs(revs) do rev_list[#rev_list + 1] = rev end
table.sort(rev_list)
add(string.format("State tracking (%s), train length %s; %s; %s; code %s", set.group or "S3",
  lengths[1] and tostring(lengths[1]) or "?", os.date("%Y-%m-%d %H:%M"),
  require("m2.sweep").machine(), #rev_list > 0 and table.concat(rev_list, ", ") or "?"))
add("")
add("Per-position accuracy (mean over seeds, [min-max]) / whole-sequence accuracy (mean) at each evaluation length.")
add("")
local head = "| arch | seeds |"
local sep = "|---|---|"
for i, len in ipairs(lengths) do
  head = head .. string.format(" acc %dx (%d) | seq %dx |", 2 ^ (i - 1) // 1, len, 2 ^ (i - 1) // 1)
  sep = sep .. "---|---|"
end
head = head .. " >= 0.99 at 4x | >= 0.99 at 8x | wall time / run |"
sep = sep .. "---|---|---|"
add(head)
add(sep)
for _, arch in ipairs(cfg.archs) do
  local rs = by_arch[arch] or {}
  local seeds, times, ok4, ok8 = {}, {}, 0, 0
  for _, r in ipairs(rs) do
    seeds[#seeds + 1] = tostring(r.seed) .. (r.status == "done" and "" or ("(" .. tostring(r.status) .. ")"))
    if r.time then times[#times + 1] = r.time end
    local a4 = lengths[3] and r.acc[lengths[3]]
    if a4 and a4 >= 0.99 then ok4 = ok4 + 1 end
    local a8 = lengths[4] and r.acc[lengths[4]]
    if a8 and a8 >= 0.99 then ok8 = ok8 + 1 end
  end
  local row = string.format("| %s | %s |", arch, table.concat(seeds, ","))
  for _, len in ipairs(lengths) do
    local sum, n, lo, hi, ssum = 0, 0, math.huge, -math.huge, 0
    for _, r in ipairs(rs) do
      local a = r.acc[len]
      if a then
        sum, n, lo, hi = sum + a, n + 1, math.min(lo, a), math.max(hi, a)
        ssum = ssum + (r.seqacc[len] or 0)
      end
    end
    if n == 0 then
      row = row .. " - | - |"
    elseif n == 1 then
      row = row .. string.format(" %s | %s |", fmt(sum), fmt(ssum))
    else
      row = row .. string.format(" %s [%s-%s] | %s |", fmt(sum / n), fmt(lo), fmt(hi), fmt(ssum / n))
    end
  end
  local tsum = 0
  for _, t in ipairs(times) do tsum = tsum + t end
  row = row .. string.format(" %d/%d | %d/%d | %s |", ok4, #rs, ok8, #rs, #times > 0 and string.format("%.0f s", tsum / #times) or "-")
  add(row)
end
add("")
add(string.format("Sweep wall time %.0f s (%d runs, %d at a time); members done %d, failed %d, skipped (already done) %d.",
  sweep_time, #res.members, cfg.parallel, res.done or 0, res.failed or 0, res.skipped or 0))
add("Settings: experiments/state_tracking.lua defaults" ..
  (next(set) and (" with " .. (function()
    local ks = {}
    for k, v in pairs(set) do ks[#ks + 1] = k .. "=" .. tostring(v) end
    table.sort(ks)
    return table.concat(ks, " ")
  end)()) or "") .. "; run files and index: " .. cfg.out .. "/")

local text = table.concat(lines, "\n") .. "\n"
io.stdout:write("\n" .. text)
local f = io.open(cfg.out .. "/summary.md", "w")
if f then
  f:write(text)
  f:close()
  print("table written to " .. cfg.out .. "/summary.md")
end
