-- test_train.lua — end-to-end training from Lua with AdamW: the loss must fall below stated
-- thresholds within a few hundred steps (a few seconds on one CPU core).
--   1. an MLP on a generated classification task: (a + b) mod 10 from the embeddings of a and b;
--   2. a next-token model (Embedding -> pre-norm SwiGLU block -> RMSNorm -> Linear) on a
--      deterministic generated token sequence x[t+1] = perm[x[t]], with clipping and a cosine schedule.
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

T.case("MLP learns (a + b) mod 10", function()
  m2.seed(100)
  local V, d = 10, 16
  local Adder = nn.class("Adder")
  function Adder:__init()
    self.embed = nn.Embedding(V, d)
    self.mlp = nn.Sequential(nn.Linear(2 * d, 64), nn.SiLU(), nn.Linear(64, V))
  end
  function Adder:forward(pairs) -- pairs (B, 2) int -> logits (B, V)
    local e = self.embed(pairs)
    return self.mlp(e:reshape(e:size(1), 2 * d))
  end
  local model = Adder()
  -- the whole task: all 100 pairs
  local xs, ys = {}, {}
  for a = 0, V - 1 do
    for b = 0, V - 1 do
      xs[#xs + 1] = { a, b }
      ys[#ys + 1] = (a + b) % V
    end
  end
  local x = m2.tensor(xs, { dtype = "i64" })
  local y = m2.tensor(ys, { dtype = "i64" })
  local opt = m2.optim.adamw { params = model, lr = 1e-2, weight_decay = 0.0 }
  local first, loss
  local t0 = os.clock()
  for step = 1, 400 do
    opt:zero_grad()
    local l = m2.cross_entropy(model(x), y)
    l:backward()
    opt:step()
    loss = l:item()
    first = first or loss
  end
  io.stdout:write(string.format("  adder: loss %.4f -> %.5f in %.2fs\n", first, loss, os.clock() - t0))
  T.ok(first > 2.0, "initial loss near ln(10): " .. first)
  T.ok(loss < 0.01, "final loss below 0.01: " .. loss)
  local acc = m2.no_grad(function() return m2.eq(model(x):argmax(2), y:float()):mean():item() end)
  T.eq(acc, 1.0, "every pair classified correctly")
end)

T.case("next-token model learns a generated sequence", function()
  m2.seed(200)
  local V, d, B, Tn = 16, 32, 8, 16
  -- a fixed permutation from the default RNG, then the sequence x[t+1] = perm[x[t]]
  local perm = {}
  for i = 0, V - 1 do perm[i] = i end
  for i = V - 1, 1, -1 do
    local j = m2.randint(i + 1, 1):item()
    perm[i], perm[j] = perm[j], perm[i]
  end
  local seq = { 0 }
  for t = 2, 4096 do seq[t] = perm[seq[t - 1]] end
  local LM = nn.class("LM")
  function LM:__init()
    self.embed = nn.Embedding(V, d)
    self.norm1 = nn.RMSNorm(d)
    self.mlp = nn.SwiGLU(d, 4 * d)
    self.norm = nn.RMSNorm(d)
    self.head = nn.Linear(d, V, { bias = false })
  end
  function LM:forward(ids)
    local x = self.embed(ids)
    x = x + self.mlp(self.norm1(x))
    return self.head(self.norm(x))
  end
  local model = LM()
  local steps = 150
  local sched = m2.optim.schedule { kind = "cosine", lr = 1e-2, min_lr = 1e-3, warmup = 10, decay = steps - 10 }
  local opt = m2.optim.adamw { params = model, betas = { 0.9, 0.95 }, weight_decay = 0.1, schedule = sched }
  -- batches of B windows of length Tn + 1 at positions drawn from the default RNG
  local function batch()
    local xs, ys = {}, {}
    for b = 1, B do
      local s = m2.randint(#seq - Tn - 1, 1):item() + 1
      xs[b], ys[b] = {}, {}
      for t = 1, Tn do
        xs[b][t] = seq[s + t - 1]
        ys[b][t] = seq[s + t]
      end
    end
    return m2.tensor(xs, { dtype = "i64" }), m2.tensor(ys, { dtype = "i64" })
  end
  local first, loss, norm
  local t0 = os.clock()
  for step = 1, steps do
    local x, y = batch()
    opt:zero_grad()
    local logits = model(x)
    local l = m2.cross_entropy(logits:reshape(-1, V), y:reshape(-1))
    l:backward()
    norm = m2.optim.clip_grad_norm(model, 1.0)
    opt:step()
    loss = l:item()
    first = first or loss
  end
  io.stdout:write(string.format("  next-token: loss %.4f -> %.5f in %.2fs (last grad norm %.3g)\n", first, loss,
    os.clock() - t0, norm))
  T.ok(first > 2.3, "initial loss near ln(16): " .. first)
  T.ok(loss < 0.01, "final loss below 0.01: " .. loss)
  T.eq(opt:steps(), steps)
  T.close(sched:lr(steps), 1e-3, 1e-12)
end)
