-- test_cast_keep.lua — m2.core.cast_keep_bf16 (core/op_cast.c): a tiny hybrid LM (M2RNN, attention and GDN layers,
-- SwiGLU MLPs) with bf16 activations on the CPU, where every op on bf16 inputs runs on f32 copies of them: with the
-- switch on, each such call records one node that keeps the bf16 inputs instead of the copies. The tape holds less
-- after the forward; the loss and every parameter's gradient are the same bit for bit; nothing is left after the
-- backward.
local m2 = require "m2"
local T = m2.test

local SPEC = { vocab = 16, d = 32, layers = "MAG", m2rnn = { k = 8, v = 4, heads = 2 },
               gdn = { heads = 2, k = 8, v = 8 }, attention = { heads = 2, head_dim = 16 },
               mlp = { kind = "swiglu", hidden = 48 } }

local function lm_step(keep)
  local was = m2.core.cast_keep_bf16(keep)
  local p0, a0 = m2.matmul_precision("bf16"), m2.activations("bf16")
  m2.seed(5)
  local model = m2.models.lm(SPEC)
  local x = m2.randint(SPEC.vocab, 2, 12)
  local y = m2.randint(SPEC.vocab, 2, 12)
  collectgarbage("collect")
  local n0 = m2.live_nodes()
  local l = model:loss(x, y)
  local rows, tot = m2.profile.tape()
  local bf16_inputs = 0 -- bytes of bf16 activations held as inputs (the f32 copies' without the switch)
  for _, r in ipairs(rows) do if r.role == "input" and r.dtype == "bf16" then bf16_inputs = bf16_inputs + r.bytes end end
  l:backward()
  local _, after = m2.profile.tape()
  T.eq(after.bytes, 0, "nothing held after the backward")
  local grads = {}
  for _, p in ipairs(model:parameters()) do grads[p.name] = p.tensor.grad:to("f32") end
  local loss = l:item()
  l = nil
  collectgarbage("collect")
  T.eq(m2.live_nodes(), n0, "no node left after the backward")
  m2.activations(a0)
  m2.matmul_precision(p0)
  m2.core.cast_keep_bf16(was)
  return tot, grads, loss, bf16_inputs
end

T.case("the switch: off by default, the setter returns the setting before", function()
  local was = m2.core.cast_keep_bf16()
  T.eq(m2.core.cast_keep_bf16(true), was)
  T.eq(m2.core.cast_keep_bf16(), true)
  T.eq(m2.core.cast_keep_bf16(was), true)
  T.eq(m2.core.cast_keep_bf16(), was)
end)

T.case("a tiny hybrid LM with bf16 activations: less held with the switch on, the same loss and gradients", function()
  local t0 = m2.live_tensors()
  local copies, g0, l0, r0 = lm_step(false)
  local kept, g1, l1, r1 = lm_step(true)
  print(string.format("  tape after the forward, bf16 activations: %d bytes (%d of parameters) in %d buffers, %d " ..
    "nodes (f32 copies kept), %d bytes (%d of parameters) in %d buffers, %d nodes (bf16 inputs kept)",
    copies.bytes, copies.param_bytes, copies.buffers, copies.nodes, kept.bytes, kept.param_bytes, kept.buffers,
    kept.nodes))
  T.ok(r1 > r0, "more bf16 inputs held with the switch on (instead of f32 copies): " .. r1 .. " > " .. r0)
  T.ok(kept.nodes < copies.nodes, "fewer nodes: " .. kept.nodes .. " < " .. copies.nodes)
  T.ok(kept.bytes - kept.param_bytes < 0.85 * (copies.bytes - copies.param_bytes),
    "at least 15% less held beside the parameters: " .. (kept.bytes - kept.param_bytes) .. " vs " ..
    (copies.bytes - copies.param_bytes))
  T.eq(l1, l0, "the same loss")
  local n = 0
  for name, g in pairs(g0) do
    n = n + 1
    local h = g1[name]
    T.ok(h ~= nil, "a gradient for " .. name)
    T.eq(m2.max_all(g - h):item(), 0, "the same gradient for " .. name .. " (above)")
    T.eq(m2.max_all(h - g):item(), 0, "the same gradient for " .. name .. " (below)")
  end
  T.ok(n > 10, "gradients of every parameter compared")
  g0, g1 = nil, nil
  collectgarbage("collect")
  T.eq(m2.live_tensors(), t0, "no tensor left")
end)

T.finish()
