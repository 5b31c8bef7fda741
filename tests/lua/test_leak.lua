-- test_leak.lua — ~300 training steps from Lua must not grow the number of live tensors or tape
-- nodes: everything a step allocates (activations, grads' temporaries, saved tensors, Lua
-- wrappers) is released once the Lua GC has run.
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

m2.seed(31)
local V, d = 12, 16
local Net = nn.class("Net")
function Net:__init()
  self.embed = nn.Embedding(V, d)
  self.norm = nn.RMSNorm(d)
  self.mlp = nn.SwiGLU(d, 32)
  self.head = nn.Linear(d, V)
end
function Net:forward(ids) return self.head(self.norm(self.embed(ids) + self.mlp(self.embed(ids)))) end

local model = Net()
local opt = m2.optim.adamw { params = model, lr = 3e-3 }
local x = m2.randint(V, 4, 8)
local y = m2.randint(V, 4, 8)

local function step()
  opt:zero_grad()
  local logits = model(x)
  local loss = m2.cross_entropy(logits:reshape(-1, V), y:reshape(-1))
  loss:backward()
  m2.optim.clip_grad_norm(model, 1.0)
  opt:step()
  -- also exercise views, no_grad and indexing every step
  m2.no_grad(function() return logits[1]:softmax():argmax(1) end)
  return loss:item()
end

local function live()
  collectgarbage()
  collectgarbage()
  return m2.live_tensors(), m2.live_nodes()
end

T.case("live tensors stay flat over 300 steps", function()
  for _ = 1, 20 do step() end -- optimizer state and grads now exist
  local t0, n0 = live()
  local samples = {}
  local first, last
  for i = 1, 280 do
    last = step()
    first = first or last
    if i % 70 == 0 then samples[#samples + 1] = { live() } end
  end
  for k, s in ipairs(samples) do
    T.eq(s[1], t0, "live tensors at sample " .. k .. " (after " .. 70 * k .. " more steps)")
    T.eq(s[2], n0, "live nodes at sample " .. k)
  end
  T.eq(n0, 0, "no tape node survives a step once its tensors are collected")
  T.ok(last < first, string.format("the loss went down (%.4f -> %.4f)", first, last))
  io.stdout:write(string.format("  live tensors %d, live nodes %d after 300 steps\n", t0, n0))
end)

T.case("everything is released when the Lua objects go", function()
  local base = select(1, live())
  do
    local m = Net()
    local o = m2.optim.sgd { params = m, lr = 0.1, momentum = 0.9 }
    for _ = 1, 3 do
      o:zero_grad()
      m(x):sum():backward()
      o:step()
    end
  end
  T.eq(select(1, live()), base, "a model, its grads and its optimizer state are freed by the GC")
end)

T.case("the Lua GC is charged for tensor memory", function()
  -- 300 unreferenced 1 MB tensors and no explicit collectgarbage(): without charging the C memory
  -- to the collector, all of them would stay alive (about 300 MB)
  local base = select(1, live())
  local peak = 0
  for _ = 1, 300 do
    local t = m2.zeros(512, 512)
    peak = math.max(peak, m2.live_tensors() - base)
  end
  T.ok(peak < 40, "at most a few dozen 1 MB tensors alive at once, saw " .. peak)
  -- results that autograd also keeps for backward (tanh saves its output) are charged too
  local w = m2.randn(512, 512, { requires_grad = true })
  base = select(1, live())
  peak = 0
  for _ = 1, 120 do
    local y = w:tanh()
    peak = math.max(peak, m2.live_tensors() - base)
  end
  T.ok(peak < 60, "recorded results are collected as well, saw " .. peak .. " live tensors")
end)
