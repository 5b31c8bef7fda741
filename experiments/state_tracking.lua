-- state_tracking.lua — the group word problem (DESIGN 5): train a small model of one mixer kind at
-- length train_len, evaluate per-position and whole-sequence accuracy at 1x, 2x, 4x, 8x train_len.
--
--   m2lab run experiments/state_tracking.lua arch=m2rnn seed=0
--   m2lab run experiments/state_tracking.lua arch=gdn_neg steps=2000 train_len=64
--
-- arch: m2rnn | gdn | gdn_neg (GDN with beta in (0, 2)) | mamba2 | attention (RoPE).
-- Model: embedding (|G| ids) -> `layers` pre-norm blocks of that mixer (+ SwiGLU MLP when mlp=true)
-- -> final RMSNorm -> per-position classifier over the |G| elements (m2.models.lm with vocab |G|).
-- heads / k / v = 0 take the architecture's defaults below (what each number means per arch is
-- listed there). Training is m2.train (AdamW, cosine schedule, grad clipping); the run file holds
-- the metrics and /eval/acc_len<L>, /eval/seqacc_len<L> (and /eval/wall_time_s) at every eval and
-- after the last step; the final table is printed.
local m2 = require "m2"

-- The defaults are the setup tuned (experiments/RESULTS.md) so that M2RNN learns S3 within ~6 CPU
-- minutes: 2 small blocks (M2RNN: 8 heads, K 2, V 16), lengths 1..16 then 1..32 (curriculum), AdamW lr 1e-2
-- with weight decay 0.1, batch 16, 8000 steps; 4 initialisations trained 3000 steps each, the best at 2x the
-- training length on held-out batches kept and trained in full (whether one run finds the exact solution is a draw,
-- p ~ 0.4). Every architecture gets the same recipe, budget and state size.
local cfg = m2.config {
  arch = "m2rnn", group = "S3", seed = 0,
  train_len = 32, random_length = true, -- train on lengths uniform in 1..train_len
  curriculum = 2000, curriculum_start = 16, -- > 0: train_len starts at curriculum_start and doubles
                                            -- every `curriculum` steps until it reaches train_len
  steps = 8000, batch = 16, lr = 1e-2, min_lr = 1e-4, warmup = 50, weight_decay = 0.1, clip = 1.0,
  d = 32, layers = 2, mlp = true, init_std = 0.18, -- init_std ~ 1/sqrt(d) (the paper's 0.02 is for d = 1024)
  heads = 0, k = 0, v = 0, -- 0: the architecture's default below
  grad_clip = 1.0,         -- M2RNN state-gradient clipping (the paper's 1)
  dt_min = 0.5, dt_max = 2.0, -- M2RNN gate init range: f = exp(-A softplus(f_raw + dt_bias)) starts mostly
                              -- small (0: the paper's 1e-3 .. 0.1); GDN / Mamba-2 keep the paper's init
  conv = 0,                   -- short causal conv kernel of m2rnn, gdn, mamba2 (0: none; the paper's 4)
  eval_mults = { 1, 2, 4, 8 }, eval_batches = 4, eval_batch = 64, eval_every = 1000, log_every = 50,
  candidates = 4,          -- > 1: train this many initialisations for candidate_steps steps each (the same data
  candidate_steps = 0,     -- and the same lr schedule as the full run; 0: 3/8 of steps, 3000 of 8000), keep the one
  candidate_mult = 2,      -- with the best held-out accuracy at candidate_mult x train_len, and train it in full:
                           -- model selection on a validation length shorter than the longest test length (issue 18;
                           -- experiments/RESULTS.md). 1: no selection, one run of the seed's initialisation
  init_seed = -1,          -- >= 0: the parameters' seed (the data keep `seed`); the run file records the one used
  candidate_accs = "",     -- written by the selection: each candidate's accuracy (recorded in the run file)
  out = "",     -- the run file; default runs/state_tracking-<arch>-<seed>.h5
  overwrite = false,
}

-- M2RNN: the gate init range and the conv
local function m2rnn_opts(t)
  if cfg.dt_min > 0 then t.dt_min = cfg.dt_min end
  if cfg.dt_max > 0 then t.dt_max = cfg.dt_max end
  t.conv = cfg.conv
  return t
end
-- GDN / Mamba-2: the conv only
local function with_conv(t)
  t.conv = cfg.conv
  return t
end

-- per-architecture mixer settings: heads / k / v of the config map to these fields; the defaults
-- give every recurrent layer a state of 256 numbers in 8 heads, attention 8 heads of 8. M2RNN had 4 heads
-- (state 128) until issue 18: 8 heads find the exact S3 solution on more seeds, 16 did not do better
-- (experiments/RESULTS.md, "State tracking over ten seeds")
local ARCH = {
  m2rnn = { letter = "M", heads = 8, k = 2, v = 16,                 -- N heads, K, V; Nq = Nk = 1
            make = function(c) return { m2rnn = m2rnn_opts { heads = c.heads, k = c.k, v = c.v,
                                                             grad_clip = c.grad_clip } } end },
  gdn = { letter = "G", heads = 8, k = 4, v = 8,                    -- H heads, dk, dv
          make = function(c) return { gdn = with_conv { heads = c.heads, k = c.k, v = c.v } } end },
  gdn_neg = { letter = "G", heads = 8, k = 4, v = 8,
              make = function(c) return { gdn = with_conv { heads = c.heads, k = c.k, v = c.v,
                                                            allow_neg_eigval = true } } end },
  mamba2 = { letter = "S", heads = 8, k = 4, v = 8,                 -- H heads, state N = k, head dim P = v
             make = function(c) return { mamba2 = with_conv { heads = c.heads, state = c.k, head_dim = c.v } } end },
  attention = { letter = "A", heads = 8, k = 8, v = 8,              -- H heads of dim k (v unused), RoPE
                make = function(c) return { attention = { heads = c.heads, head_dim = c.k, rope = true } } end },
}

local A = ARCH[cfg.arch]
if not A then
  local names = {}
  for n in pairs(ARCH) do names[#names + 1] = n end
  table.sort(names)
  m2.error("state_tracking: unknown arch '" .. cfg.arch .. "' (known: " .. table.concat(names, ", ") .. ")")
end
for _, key in ipairs { "heads", "k", "v" } do
  if cfg[key] == 0 then cfg[key] = A[key] end
end
if cfg.out == "" then cfg.out = string.format("runs/state_tracking-%s-%d.h5", cfg.arch, cfg.seed) end

m2.seed(cfg.seed)
local data = m2.data.state_tracking { group = cfg.group, length = cfg.train_len, batch = cfg.batch, seed = cfg.seed,
                                      random_length = cfg.random_length }
-- the training batches: a length curriculum when asked (batch(index) stays deterministic in index)
local train_data = data
if cfg.curriculum > 0 and cfg.curriculum_start < cfg.train_len then
  local stages, L = {}, cfg.curriculum_start
  while L < cfg.train_len do
    stages[#stages + 1] = m2.data.state_tracking { group = cfg.group, length = L, batch = cfg.batch,
                                                   seed = cfg.seed, random_length = cfg.random_length }
    L = L * 2
  end
  stages[#stages + 1] = data
  train_data = { batch = function(_, index) return stages[math.min(index // cfg.curriculum + 1, #stages)]:batch(index) end }
end
local spec = { name = "state_tracking-" .. cfg.arch, vocab = data.order, d = cfg.d, init_std = cfg.init_std,
               layers = string.rep(A.letter, cfg.layers), mlp = { kind = cfg.mlp and "swiglu" or "none" } }
for k, v in pairs(A.make(cfg)) do spec[k] = v end
-- the initialisation: candidate i draws its parameters after m2.seed(init_seed(i)); candidate 0 is the plain run
local function init_seed(i)
  local s0 = cfg.init_seed >= 0 and cfg.init_seed or cfg.seed
  return i == 0 and s0 or s0 + 1000 * i
end
if cfg.init_seed >= 0 then m2.seed(cfg.init_seed) end
local model = m2.models.lm(spec)

-- accuracy at one length over cfg.eval_batches held-out batches -> per-position acc, sequence acc
local device = m2.args.device or "cpu" -- the common override m2.train reads too
-- first: the index of the first held-out batch (selection among candidates reads batches the reported numbers do not)
local function evaluate(length, first)
  first = first or 0
  local correct, total, seq_ok, seqs, by_pos = 0, 0, 0, 0, {}
  for t = 1, length do by_pos[t] = 0 end
  model:eval()
  m2.no_grad(function()
    for i = 0, cfg.eval_batches - 1 do
      local x, y = data:eval_batch(length, first + i, cfg.eval_batch)
      if device ~= "cpu" then x, y = x:to(device), y:to(device) end -- the model's device (device=cuda)
      local hit = m2.eq(m2.argmax(model(x), -1), y)     -- (B, T) 0/1
      correct = correct + hit:sum_all():item()
      total = total + hit:numel()
      local per_seq = hit:sum(2):totable()                -- (B) correct positions per sequence
      for _, c in ipairs(per_seq) do
        if c == length then seq_ok = seq_ok + 1 end
      end
      seqs = seqs + #per_seq
      for t, c in ipairs(hit:sum(1):totable()) do by_pos[t] = by_pos[t] + c end
    end
  end)
  model:train()
  for t = 1, length do by_pos[t] = by_pos[t] / seqs end
  return correct / total, seq_ok / seqs, by_pos
end

-- "acc by position" in a few numbers: positions 1, 2, 3, 4, 8, 16, ... and the last
local function pos_summary(by_pos)
  local parts, t = {}, 1
  while t <= #by_pos do
    parts[#parts + 1] = string.format("%d:%.2f", t, by_pos[t])
    t = t < 4 and t + 1 or t * 2
  end
  if parts[#parts]:match("^(%d+)") ~= tostring(#by_pos) then
    parts[#parts + 1] = string.format("%d:%.2f", #by_pos, by_pos[#by_pos])
  end
  local first = nil
  for i, a in ipairs(by_pos) do
    if a < 0.99 then first = i; break end
  end
  return table.concat(parts, " ") .. (first and string.format("  (first < 0.99 at %d)", first) or "  (all >= 0.99)")
end

-- accuracy against position at the longest eval length, in windows: /eval/acc_pos<t> is the mean
-- per-position accuracy over the positions (s, t], s the previous window's end. Windows: positions 1, 2, 3,
-- 4 alone, then train_len / 4 wide up to 2 train_len, then train_len wide (train_len 32, 8x: 1 2 3 4 8 16 ...
-- 64 96 128 ... 256, 18 windows). notebooks/state_tracking_seeds.ipynb plots them.
local function pos_windows(by_pos)
  local out, ends, L, n = {}, {}, cfg.train_len, #by_pos
  for t = 1, math.min(4, n) do ends[#ends + 1] = t end
  local t, w = 4, math.max(1, L // 4)
  while t < n do
    t = math.min(n, (t < 2 * L) and (t // w + 1) * w or (t // L + 1) * L)
    ends[#ends + 1] = t
  end
  local s = 0
  for _, e in ipairs(ends) do
    local sum = 0
    for i = s + 1, e do sum = sum + by_pos[i] end
    out["acc_pos" .. e] = sum / (e - s)
    s = e
  end
  return out
end

-- eval for m2.train: per-position and whole-sequence accuracy at every eval length, accuracy against
-- position at the longest -> /eval/acc_len<L>, /eval/seqacc_len<L>, /eval/acc_pos<t>, /eval/wall_time_s
-- (seconds since the start)
local t_start = m2.core.clock()
local last_by_pos = nil
local function eval_fn(_, step)
  local out, longest = {}, nil
  for _, mult in ipairs(cfg.eval_mults) do
    local L = mult * cfg.train_len
    local acc, seqacc, by_pos = evaluate(L)
    out["acc_len" .. L], out["seqacc_len" .. L] = acc, seqacc
    if not longest or #by_pos > #longest then longest = by_pos end
  end
  last_by_pos = longest
  for k, v in pairs(pos_windows(longest)) do out[k] = v end
  out.wall_time_s = m2.core.clock() - t_start
  return out
end

print(string.format("state tracking: %s, %s, train_len %d%s, %d steps x batch %d, seed %d", cfg.arch, data.group_name,
  cfg.train_len, cfg.random_length and " (random 1..L)" or "", cfg.steps, cfg.batch, cfg.seed))
m2.models.summary(model)

local function optimizer() return m2.optim.adamw { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-10,
                                                   weight_decay = cfg.weight_decay } end
-- the full run's schedule; a candidate's steps are its first candidate_steps (its decay set to the full run's)
local schedule = { kind = "cosine", warmup = cfg.warmup, min_lr = cfg.min_lr }
local candidate_schedule = { kind = "cosine", warmup = cfg.warmup, min_lr = cfg.min_lr,
                             decay = math.max(cfg.steps - cfg.warmup, 0) }

if m2.resuming then
  -- a resume continues the kept candidate from its checkpoint: the selection's record is the run file's (the
  -- parameters built below are replaced by the checkpoint's)
  local r <close> = require("m2.runs").open(m2.resuming.path)
  for _, k in ipairs { "candidates", "candidate_steps", "init_seed", "candidate_accs" } do
    local v = r:get_attr(k)
    if v ~= nil then cfg[k] = v end
  end
  if cfg.init_seed >= 0 then
    m2.seed(cfg.init_seed)
    model = m2.models.lm(spec)
  end
else
  if cfg.candidate_steps == 0 then cfg.candidate_steps = cfg.steps * 3 // 8 end
  if cfg.candidates > 1 and cfg.candidate_steps < 1 then cfg.candidates = 1 end -- too few steps to select on
end
if cfg.candidates > 1 and not m2.resuming then
  if math.type(cfg.candidates) ~= "integer" or cfg.candidate_steps < 1 or cfg.candidate_steps >= cfg.steps then
    m2.error(string.format("state_tracking: candidates = %s needs an integer count and 1 <= candidate_steps (%s) < " ..
      "steps (%d)", tostring(cfg.candidates), tostring(cfg.candidate_steps), cfg.steps))
  end
  local L = cfg.candidate_mult * cfg.train_len
  local best, best_acc, accs = 0, -1, {}
  for i = 0, cfg.candidates - 1 do
    m2.seed(init_seed(i))
    model = m2.models.lm(spec)
    -- trial: the command line's steps= / out= / a resume belong to the full run below, not to a candidate
    m2.train { model = model, data = train_data, steps = cfg.candidate_steps, optim = optimizer(),
               schedule = candidate_schedule, clip = cfg.clip, out = false, quiet = true, trial = true, config = cfg }
    local acc = evaluate(L, 1000)
    accs[#accs + 1] = string.format("%.4f", acc)
    print(string.format("candidate %d (init seed %d): accuracy %.4f at length %d after %d steps", i, init_seed(i),
      acc, L, cfg.candidate_steps))
    if acc > best_acc then best, best_acc = i, acc end
  end
  local kept = init_seed(best)
  print(string.format("kept candidate %d (init seed %d); training it for %d steps", best, kept, cfg.steps))
  cfg.init_seed, cfg.candidate_accs = kept, table.concat(accs, ",") -- recorded in the run file
  m2.seed(kept)
  model = m2.models.lm(spec) -- the same parameters and the same first candidate_steps steps again
end

local summary = m2.train {
  model = model, data = train_data, steps = cfg.steps,
  optim = optimizer(), schedule = schedule,
  clip = cfg.clip, eval_every = cfg.eval_every, eval = eval_fn, out = cfg.out, config = cfg,
  log_every = cfg.log_every,
}

local ev = summary.eval or {}
print(string.format("\n%s seed %d: %d steps, %.1fs (training and evals)", cfg.arch, cfg.seed, summary.step,
  ev.wall_time_s or summary.time))
print(string.format("  %-6s %-7s %-10s %-10s", "mult", "length", "acc", "seq acc"))
for _, mult in ipairs(cfg.eval_mults) do
  local L = mult * cfg.train_len
  print(string.format("  %-6s %-7d %-10.4f %-10.4f", mult .. "x", L, ev["acc_len" .. L] or 0 / 0,
    ev["seqacc_len" .. L] or 0 / 0))
end
if last_by_pos then
  print("  by position at " .. #last_by_pos .. ": " .. pos_summary(last_by_pos))
end
if summary.out then print("run file: " .. summary.out) end
