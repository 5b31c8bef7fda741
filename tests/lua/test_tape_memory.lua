-- test_tape_memory.lua — m2.profile.tape / tape_report: what the live autograd tape holds, each buffer once, by op,
-- role and dtype, on a graph whose bytes are worked out by hand; nothing after the backward.
local m2 = require "m2"
local T = m2.test

local function row(rows, op, role, dtype)
  for _, r in ipairs(rows) do
    if r.op == op and r.role == role and r.dtype == dtype then return r end
  end
end

-- drop: the nodes keep only the metadata of the inputs their backward never reads (the default) or everything
local function tiny(drop)
  local was = m2.core.tape_drop_unread(drop)
  collectgarbage("collect")
  local rows0, tot0 = m2.profile.tape()
  T.eq(#rows0, 0, "nothing held before")
  T.eq(tot0.bytes, 0)
  local w = m2.full({ 8, 5 }, 0.1, { requires_grad = true }) -- parameter, 160 bytes
  local x = m2.full({ 4, 8 }, 0.5)                           -- 128 bytes, no grad
  local y = m2.matmul(x, w)                                  -- (4, 5): 80 bytes, tanh's input (its backward reads
                                                             -- only the output: dropped)
  local t = m2.tanh(y)                                       -- tanh keeps its output: 80 bytes
  local l = m2.sum_all(t)                                    -- holds t (dropped; else the buffer tanh keeps)
  local rows, tot = m2.profile.tape()
  local function expect(op, role, dtype, bytes, buffers, refs)
    local r = row(rows, op, role, dtype)
    T.ok(r, string.format("a row %s / %s / %s", op, role, dtype))
    if r then
      T.eq(r.bytes, bytes, op .. " / " .. role .. " bytes")
      T.eq(r.buffers, buffers, op .. " / " .. role .. " buffers")
      T.eq(r.refs, refs, op .. " / " .. role .. " refs")
    end
  end
  expect("matmul", "param", "f32", 160, 1, 1)
  expect("matmul", "input", "f32", 128, 1, 1)
  expect("tanh", "output", "f32", 80, 1, 1)
  T.eq(tot.nodes, 3, "three live nodes")
  T.eq(tot.param_bytes, 160, "of which the parameter")
  if drop then
    T.eq(#rows, 3, "tanh's and sum_all's inputs hold no data")
    T.eq(tot.bytes, 160 + 128 + 80, "each buffer once")
    T.eq(tot.buffers, 3)
  else
    expect("tanh", "input", "f32", 80, 1, 1)
    expect("sum_all", "input", "f32", 0, 0, 1)
    T.eq(tot.bytes, 160 + 128 + 80 + 80, "each buffer once")
    T.eq(tot.buffers, 4)
  end
  local rep = m2.profile.tape_report { title = "tape" }
  T.ok(rep:find("| tanh | output | f32 | 0.00 | 1 | 1 |", 1, true), "the report has the rows")
  T.ok(rep:find("| all (3 nodes) |", 1, true), "and the totals")
  T.raises(function() m2.profile.tape_report { top = -1 } end, "top must be a number >= 0")
  l:backward()
  rows, tot = m2.profile.tape()
  T.eq(#rows, 0, "the backward released what the nodes held")
  T.eq(tot.bytes, 0)
  local g = w.grad:clone()
  w:release(); x:release(); y:release(); t:release(); l:release()
  m2.core.tape_drop_unread(was)
  return g
end

T.case("a tiny graph's tape, by hand, inputs kept whole", function() tiny(false) end)
T.case("the same graph with the unread inputs dropped: the same gradient", function()
  T.eq(m2.core.tape_drop_unread(), true, "on by default")
  local g0, g1 = tiny(false), tiny(true)
  T.eq(m2.max_all(m2.square(g0 - g1)):item(), 0, "gradients identical")
end)

-- a tiny hybrid LM (M2RNN, attention and GDN layers, SwiGLU MLPs): one forward and backward with the nodes keeping
-- every input whole, then dropping the unread ones: the tape holds less after the forward, the gradients are the
-- same bit for bit (the same arithmetic: only what the nodes hold differs)
local SPEC = { vocab = 16, d = 32, layers = "MAG", m2rnn = { k = 8, v = 4, heads = 2 },
               gdn = { heads = 2, k = 8, v = 8 }, attention = { heads = 2, head_dim = 16 },
               mlp = { kind = "swiglu", hidden = 48 } }

local function lm_step(drop, activations)
  local was = m2.core.tape_drop_unread(drop)
  local p0, a0 = m2.matmul_precision(activations == "bf16" and "bf16" or "f32"), m2.activations(activations)
  m2.seed(5)
  local model = m2.models.lm(SPEC)
  local x = m2.randint(SPEC.vocab, 2, 12)
  local y = m2.randint(SPEC.vocab, 2, 12)
  collectgarbage("collect")
  local l = model:loss(x, y)
  local _, tot = m2.profile.tape()
  l:backward()
  local _, after = m2.profile.tape()
  T.eq(after.bytes, 0, "nothing held after the backward")
  local grads = {}
  for _, p in ipairs(model:parameters()) do grads[p.name] = p.tensor.grad:to("f32") end
  m2.activations(a0)
  m2.matmul_precision(p0)
  m2.core.tape_drop_unread(was)
  return tot, grads, l:item()
end

for _, act in ipairs { "f32", "bf16" } do
  T.case("a tiny hybrid LM with " .. act .. " activations: less held, the same gradients", function()
    local whole, g0, l0 = lm_step(false, act)
    local lean, g1, l1 = lm_step(true, act)
    print(string.format("  tape after the forward, %s activations: %d bytes in %d buffers (inputs kept whole), " ..
      "%d bytes in %d buffers (unread inputs dropped)", act, whole.bytes, whole.buffers, lean.bytes, lean.buffers))
    T.eq(whole.nodes, lean.nodes, "the same nodes")
    T.ok(lean.bytes < whole.bytes, "less held: " .. lean.bytes .. " < " .. whole.bytes)
    T.ok(lean.bytes - lean.param_bytes < 0.85 * (whole.bytes - whole.param_bytes),
      "at least 15% less held beside the parameters")
    T.eq(l1, l0, "the same loss")
    local n = 0
    for name, g in pairs(g0) do
      n = n + 1
      T.eq(m2.max_all(m2.square(g - g1[name])):item(), 0, "the same gradient for " .. name)
    end
    T.ok(n > 10, "gradients of every parameter compared")
  end)
end

T.finish()
