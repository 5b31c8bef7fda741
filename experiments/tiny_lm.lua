-- tiny_lm.lua — a small real experiment with m2.train, quick enough for tests and the notebooks'
-- CI (a few seconds on one CPU core): a pre-norm LM (m2.models.lm) of one layer pattern on
--   task = "markov": a synthetic language: a second-order Markov chain over `vocab` tokens
--          (next = table[prev2][prev1] with probability 1 - noise, else uniform); eval: held-out
--          loss and next-token accuracy;
--   task = "groups": the group word problem (m2.data.state_tracking; DESIGN 5) on `group`,
--          trained at length `len` (random lengths 1..len); eval: per-position accuracy at
--          lengths len * eval_mults, logged as /eval/acc_len<L> (the eval-vs-length notebook).
--
--   m2lab run experiments/tiny_lm.lua                          (runs/tiny_lm.h5)
--   m2lab run experiments/tiny_lm.lua arch=A lr=1e-3 steps=200 out=runs/attn.h5
--   m2lab run experiments/tiny_lm.lua task=groups arch=M eval_mults=1,2,4
--   m2lab run experiments/tiny_lm.lua arch=MA moe_experts=8 moe_top_k=2   (MoE MLPs: /arrays/moe_load_*)
-- arch: layer pattern, one letter per block: M = M2RNN, G = Gated DeltaNet, S = Mamba-2,
-- A = attention ("MA" = two blocks). Batches are deterministic in (seed, batch index), so a
-- killed run resumed with `m2lab resume` is bit-identical to one that never stopped.
-- throttle: seconds to sleep per batch (only for tests that kill a run while it trains);
-- flush_interval: seconds between metric flushes (live readers see new values that often).
local m2 = require "m2"

local cfg = m2.config {
  task = "markov", arch = "M", vocab = 32, d = 32, heads = 2, k = 8, v = 8, mlp = false,
  batch = 8, len = 32, noise = 0.2, group = "S3", eval_mults = { 1, 2, 4 }, eval_batches = 2,
  steps = 60, grad_accum = 1, lr = 3e-3, min_lr = 3e-4, warmup = 10, weight_decay = 0.0, clip = 1.0,
  seed = 0, checkpoint_every = 20, eval_every = 20, log_every = 1, keep_checkpoints = 3,
  out = "runs/tiny_lm.h5", throttle = 0.0, flush_interval = 5.0,
  moe_experts = 0, moe_top_k = 2, -- moe_experts > 0: a MoE MLP (experts of hidden 2 d, a shared expert of d)
}

m2.seed(cfg.seed)

-- ---- data ----

-- a small deterministic generator (64-bit LCG + xorshift output) keyed by integers
local function rng(...)
  local s = 0x9E3779B97F4A7C15
  for _, k in ipairs { ... } do s = (s ~ k) * 0x5851F42D4C957F2D + 0x14057B7EF767814F end
  return function(n) -- uniform integer in [0, n)
    s = s * 0x5851F42D4C957F2D + 0x14057B7EF767814F
    local x = s ~ (s >> 29)
    return (x >> 11) % n
  end
end

local Markov = {}
Markov.__index = Markov
local function markov(c)
  local self = setmetatable({ V = c.vocab, B = c.batch, T = c.len, noise = c.noise, seed = c.seed }, Markov)
  local r = rng(c.seed, 7)
  self.next = {}
  for a = 0, self.V - 1 do
    self.next[a] = {}
    for b = 0, self.V - 1 do self.next[a][b] = r(self.V) end
  end
  self.vocab = self.V
  return self
end

-- batch(index) -> x, y (B, T) int64: y is x shifted by one
function Markov:batch(index, stream)
  local xs, ys = {}, {}
  local p_noise = math.floor(self.noise * 1000 + 0.5)
  for b = 1, self.B do
    local r = rng(self.seed, stream or 1, index, b)
    local seq = { r(self.V), r(self.V) }
    for t = 3, self.T + 1 do
      if r(1000) < p_noise then seq[t] = r(self.V)
      else seq[t] = self.next[seq[t - 2]][seq[t - 1]] end
    end
    xs[b], ys[b] = {}, {}
    for t = 1, self.T do xs[b][t], ys[b][t] = seq[t], seq[t + 1] end
  end
  if cfg.throttle > 0 then m2.core.sleep(cfg.throttle) end
  return m2.tensor(xs, { dtype = "i64" }), m2.tensor(ys, { dtype = "i64" })
end

local data, vocab
if cfg.task == "markov" then
  data = markov(cfg)
  vocab = cfg.vocab
elseif cfg.task == "groups" then
  data = m2.data.state_tracking { group = cfg.group, length = cfg.len, batch = cfg.batch, seed = cfg.seed,
                                  random_length = true }
  vocab = data.order
  if cfg.throttle > 0 then
    local batch = data.batch
    data.batch = function(self, i)
      m2.core.sleep(cfg.throttle)
      return batch(self, i)
    end
  end
else
  m2.error("tiny_lm: task must be \"markov\" or \"groups\", got \"" .. cfg.task .. "\"")
end

-- ---- model ----

local spec = { name = "tiny_lm-" .. cfg.arch, vocab = vocab, d = cfg.d, layers = cfg.arch,
               mlp = cfg.moe_experts > 0 and { kind = "moe", experts = cfg.moe_experts, top_k = cfg.moe_top_k,
                                               expert_hidden = 2 * cfg.d, shared_hidden = cfg.d }
                     or { kind = cfg.mlp and "swiglu" or "none" },
               m2rnn = { heads = cfg.heads, k = cfg.k, v = cfg.v },
               gdn = { heads = cfg.heads, k = cfg.k, v = cfg.v },
               mamba2 = { heads = cfg.heads, state = cfg.k, head_dim = cfg.v },
               attention = { heads = cfg.heads, head_dim = cfg.k, rope = true } }
for letter, key in pairs { M = "m2rnn", G = "gdn", S = "mamba2", A = "attention" } do
  if not cfg.arch:find(letter, 1, true) then spec[key] = nil end
end
local model = m2.models.lm(spec)

-- ---- eval ----

local device = m2.args.device or "cpu" -- the common override m2.train reads (it moves the model and training batches)
local function on_device(x, y) -- eval batches go to the model's device too (m2.train moves only the training ones)
  if device ~= "cpu" then return x:to(device), y:to(device) end
  return x, y
end
local function accuracy(x, y) -- x, y on the model's device
  local logits = model(x)
  local opts = { dtype = "i64", device = device }
  local valid = m2.eq(m2.eq(y, m2.full(y:shape(), -100, opts)), m2.zeros(y:shape(), opts))
  local hit = m2.eq(m2.argmax(logits, -1), y) * valid
  return hit:sum_all():item(), valid:sum_all():item(), logits
end

local function evaluate(mdl, step)
  local out = {}
  if cfg.task == "markov" then
    local loss, correct, total = 0, 0, 0
    for i = 0, cfg.eval_batches - 1 do
      local x, y = on_device(data:batch(i, 2)) -- stream 2: never used for training
      local c, n, logits = accuracy(x, y)
      loss = loss + m2.cross_entropy(logits, y, -100):item()
      correct, total = correct + c, total + n
    end
    out.loss = loss / cfg.eval_batches
    out.acc = correct / math.max(total, 1)
  else
    for _, mult in ipairs(cfg.eval_mults) do
      local L, correct, total = mult * cfg.len, 0, 0
      for i = 0, cfg.eval_batches - 1 do
        local x, y = on_device(data:eval_batch(L, i))
        local c, n = accuracy(x, y)
        correct, total = correct + c, total + n
      end
      out["acc_len" .. L] = correct / math.max(total, 1)
    end
  end
  return out
end

-- ---- train ----

local summary = m2.train {
  model = model, data = data, steps = cfg.steps, grad_accum = cfg.grad_accum,
  optim = m2.optim.adamw { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-10, weight_decay = cfg.weight_decay },
  schedule = { kind = "cosine", warmup = cfg.warmup, min_lr = cfg.min_lr },
  clip = cfg.clip, eval_every = cfg.eval_every, eval = evaluate, checkpoint_every = cfg.checkpoint_every,
  keep_checkpoints = cfg.keep_checkpoints, log_every = cfg.log_every, out = cfg.out, config = cfg,
  flush_interval = cfg.flush_interval,
}
print(string.format("tiny_lm %s/%s: final loss %.4f after %d steps (%.1fs)%s", cfg.task, cfg.arch, summary.final_loss,
  summary.step, summary.time, summary.out and (", run file " .. summary.out) or ""))
