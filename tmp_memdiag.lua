local m2 = require "m2"
local core = m2.core
local B = tonumber(m2.args.batch or 2)
local spec = dofile("experiments/configs/400m-hybrid-m2rnn.lua")
local dev = m2.args.dev or "cuda"
if m2.args.small then spec.d, spec.vocab, spec.layers = 64, 256, "MA" end
local model = m2.models.lm(spec)
model:to(dev)
local opt = m2.optim.adamw { params = model, lr = 3e-4 }
local function gib(x) return string.format("%.2f", x / 2 ^ 30) end
print("after model:to: current " .. gib(core.mem_current(dev)))
local prev = m2.matmul_precision("bf16")
for step = 1, 3 do
  core.mem_reset_peak(dev)
  opt:zero_grad()
  local x = m2.randint(spec.vocab, B, 4096):to(dev)
  local y = m2.randint(spec.vocab, B, 4096):to(dev)
  local l = m2.cross_entropy(model(x), y, -100)
  local a = core.mem_current(dev)
  l:backward()
  local b = core.mem_current(dev)
  opt:step()
  local c = core.mem_current(dev)
  l, x, y = nil, nil, nil
  collectgarbage("collect")
  local d = core.mem_current(dev)
  print(string.format("step %d: after forward %s, after backward %s, after step %s, after full GC %s, peak %s GiB", step,
    gib(a), gib(b), gib(c), gib(d), gib(core.mem_peak(dev))))
end
