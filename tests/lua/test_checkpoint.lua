-- test_checkpoint.lua — activation checkpointing (m2.checkpoint, core/recompute.c; spec.checkpoint of
-- m2.models.lm): the same gradients as the plain call, bit for bit on the CPU (a small function, nested
-- checkpoints, a tiny hybrid LM of M2RNN, attention, GDN and Mamba-2 blocks trained a few steps by m2.train), fewer
-- live tensors at the end of the forward, nothing left after the backward, no_grad, the RNG replayed, errors.
local m2 = require "m2"
local T = m2.test

m2.seed(11)

-- the largest |a - b| over two lists of tensors (0: equal bit for bit, up to the sign of zero)
local function maxdiff(a, b)
  local worst = 0
  for i = 1, #a do
    local d = m2.max_all(m2.sub(a[i], b[i]):square()):item()
    worst = math.max(worst, d)
  end
  return worst
end

local function counts()
  collectgarbage()
  collectgarbage()
  return m2.live_tensors(), m2.live_nodes()
end

T.case("m2.checkpoint: the plain call's results and gradients, bit for bit", function()
  local w = m2.randn(5, 6, { requires_grad = true })
  local b = m2.randn(6, { requires_grad = true })
  local x0 = m2.randn(3, 5)
  -- two outputs, a non-tensor argument, a parameter read without being an argument, an integer argument
  local function f(x, scale, ids)
    local h = (m2.matmul(x, w) + b):tanh() * scale
    local e = m2.index_select(h, 1, ids)
    return h:sigmoid() * h, e:sum(2)
  end
  local ids = m2.tensor({ 2, 0, 2 }, { dtype = "i64" })
  local function run(ck)
    w.grad, b.grad = nil, nil
    local x = x0:clone():requires_grad(true)
    local y1, y2
    if ck then y1, y2 = m2.checkpoint(f, x, 1.5, ids) else y1, y2 = f(x, 1.5, ids) end
    local loss = (y1 * y1):sum() + (y2 * 3):sum()
    loss:backward()
    return { y1, y2, loss }, { w.grad, b.grad, x.grad }
  end
  local o1, g1 = run(false)
  local o2, g2 = run(true)
  T.eq(maxdiff(o1, o2), 0, "the same outputs")
  T.eq(maxdiff(g1, g2), 0, "the same gradients of the parameters and the input")
  T.ok(g2[3] ~= nil and m2.max_all(g2[3]:square()):item() > 0, "the input got a nonzero gradient")
  -- no tensor argument requires grad: the parameters still get theirs (the node's backward always runs)
  w.grad, b.grad = nil, nil
  m2.checkpoint(f, x0, 2, ids):sum():backward()
  local gw = w.grad:clone()
  w.grad, b.grad = nil, nil
  f(x0, 2, ids):sum():backward()
  T.eq(maxdiff({ gw }, { w.grad }), 0, "parameters' gradients through a node whose inputs need none")
  -- a module (callable table) as the function; an output that is one of the inputs
  local lin = m2.nn.Linear(5, 4)
  local x = x0:clone():requires_grad(true)
  local y, same = m2.checkpoint(function(a) return lin(a), a end, x)
  T.ok(same ~= x, "an input returned as it is comes back as a new tensor")
  T.ok(same:requires_grad(), "that output has the node as its history")
  ;(y:sum() + same:sum() * 2):backward()
  local gx = x.grad:clone()
  x.grad = nil
  for _, p in ipairs(lin:parameters()) do p.tensor.grad = nil end
  ;(lin(x):sum() + x:sum() * 2):backward()
  T.eq(maxdiff({ gx }, { x.grad }), 0, "the input's gradient with an output that is the input")
  T.eq(m2.checkpoint(lin, x):shape(), { 3, 4 }, "a module as fn")
end)

T.case("m2.checkpoint: nested checkpoints and no_grad", function()
  local w = m2.randn(4, 4, { requires_grad = true })
  local x0 = m2.randn(2, 4)
  local function g(x) return m2.matmul(x, w):tanh() end
  local function f(x) return (m2.checkpoint(g, x) * x):sigmoid() + m2.checkpoint(g, x) end
  local function plain(x) return (g(x) * x):sigmoid() + g(x) end
  local grads = {}
  for i, fn in ipairs { plain, function(x) return m2.checkpoint(f, x) end } do
    w.grad = nil
    local x = x0:clone():requires_grad(true)
    fn(x):square():sum():backward()
    grads[i] = { w.grad, x.grad }
  end
  T.eq(maxdiff(grads[1], grads[2]), 0, "a checkpoint inside a checkpoint: the same gradients")
  local t0, n0 = counts()
  local y = m2.no_grad(function() return m2.checkpoint(f, x0:clone():requires_grad(true)) end)
  T.ok(not y:requires_grad(), "under no_grad: no history")
  T.eq(m2.live_nodes(), n0, "under no_grad: no node")
  T.eq(maxdiff({ y }, { m2.no_grad(plain, x0) }), 0, "under no_grad: the plain values")
  T.ok(m2.grad_enabled(), "grad mode restored")
  y = nil
  local t1, n1 = counts()
  T.eq({ t1, n1 }, { t0, n0 }, "nothing left")
  -- recorded, then dropped without a backward: the node lets go of fn and of what fn captured
  do
    local captured = m2.randn(4, 4, { requires_grad = true })
    local z = m2.checkpoint(function(a, k) return m2.matmul(a, captured) * k end, x0, 3)
    T.ok(z:requires_grad() and m2.live_nodes() > n0, "recorded")
  end
  local t2, n2 = counts()
  T.eq({ t2, n2 }, { t0, n0 }, "a node dropped without its backward leaves nothing (fn and its upvalues freed)")
end)

T.case("m2.checkpoint: the RNG is replayed, and left as the plain call leaves it", function()
  local w = m2.randn(3, 3, { requires_grad = true })
  local x0 = m2.randn(2, 3)
  local function f(x) return m2.matmul(x, w) * m2.randn(2, 3) end -- a random mask: deterministic only if replayed
  local res = {}
  for i, ck in ipairs { false, true } do
    m2.seed(5)
    w.grad = nil
    local y = ck and m2.checkpoint(f, x0) or f(x0)
    local after_forward = m2.randn(1):item()
    y:sum():backward()
    res[i] = { g = w.grad, after = after_forward, after_backward = m2.randn(1):item() }
  end
  T.eq(maxdiff({ res[1].g }, { res[2].g }), 0, "the recompute draws the same numbers")
  T.eq(res[2].after, res[1].after, "the stream after the forward as without checkpointing")
  T.eq(res[2].after_backward, res[1].after_backward, "the backward's replay does not move the stream")
end)

T.case("m2.checkpoint: the recompute uses the forward's matmul precision and activation dtype", function()
  local w = m2.randn(8, 8, { requires_grad = true })
  local x0 = m2.randn(4, 8)
  local function f(x) return m2.matmul(x, w):tanh() end
  local res = {}
  for i, ck in ipairs { false, true } do
    w.grad = nil
    local x = x0:clone():requires_grad(true)
    local p, a = m2.matmul_precision("bf16"), m2.activations("bf16")
    local y = ck and m2.checkpoint(f, x) or f(x)
    m2.matmul_precision(p)
    m2.activations(a) -- changed back before the backward: the recorded graph keeps the forward's settings
    T.eq(y:dtype(), "bf16", "bf16 activations")
    y:float():sum():backward()
    res[i] = { w.grad, x.grad }
  end
  T.eq(maxdiff(res[1], res[2]), 0, "the same gradients as the recorded graph's")
  T.eq(m2.matmul_precision(), "f32", "the settings restored after the recompute")
  T.eq(m2.activations(), "f32")
end)

T.case("m2.checkpoint: errors", function()
  local t0, n0 = counts()
  local x = m2.randn(2, 2, { requires_grad = true })
  local err = T.raises(function() m2.checkpoint(function() return 3 end, x) end, "result 1 is number, not a tensor")
  T.ok(err and err:find("test_checkpoint.lua:%d+:"), "located at the caller's line: " .. tostring(err))
  T.raises(function() m2.checkpoint(function() return x * 2, "no" end, x) end, "result 2 is string")
  T.raises(function() m2.checkpoint(function() end, x) end, "returned nothing")
  T.raises(function() m2.checkpoint(function(a) return a, a, a, a, a end, x) end, "5 results")
  T.raises(function() m2.checkpoint(42, x) end, "function expected")
  T.raises(function() m2.checkpoint({}, x) end, "function expected")
  err = T.raises(function() m2.checkpoint(function() error("inside fn") end, x) end, "inside fn")
  T.ok(err and err:find("test_checkpoint.lua:%d+: inside fn"), "fn's own error as raised: " .. tostring(err))
  local many = {}
  for i = 1, 9 do many[i] = x end
  T.raises(function() m2.checkpoint(function() return x end, table.unpack(many)) end, "more than 8 tensor arguments")
  -- a function that changes between the forward and the backward
  local calls = 0
  local y = m2.checkpoint(function(a)
    calls = calls + 1
    if calls == 1 then return a * 2 end
    return (a * 2):sum()
  end, x)
  T.raises(function() y:sum():backward() end, "must compute the same thing")
  calls = 0
  y = m2.checkpoint(function(a)
    calls = calls + 1
    if calls > 1 then error("second call fails") end
    return a:tanh()
  end, x)
  err = T.raises(function() y:sum():backward() end, "second call fails")
  T.ok(err and err:find("backward of recompute"), "the backward names the node: " .. tostring(err))
  T.ok(m2.grad_enabled(), "grad mode on after the failed backward")
  T.ok(not m2.no_grad(m2.grad_enabled), "no_grad still works")
  y, err, x, many = nil, nil, nil, nil
  local t1, n1 = counts()
  T.eq({ t1, n1 }, { t0, n0 }, "no tensor or node left by the errors")
end)

-- a tiny hybrid LM: M2RNN, attention, GDN and Mamba-2 blocks
local SPEC = { vocab = 17, d = 32, layers = "MAGS", m2rnn = { k = 8, v = 4, heads = 2 },
               gdn = { heads = 2, k = 8, v = 8 }, mamba2 = { heads = 2, head_dim = 8, state = 8 },
               attention = { heads = 2, head_dim = 16 }, mlp = { kind = "swiglu", hidden = 64 } }

local function lm(ck)
  local s = {}
  for k, v in pairs(SPEC) do s[k] = v end
  s.checkpoint = ck
  m2.seed(3)
  return m2.models.lm(s)
end

local function params_of(model)
  local out = {}
  for _, p in ipairs(model:parameters()) do out[#out + 1] = p.tensor end
  return out
end

local function grads_of(model)
  local out, missing = {}, 0
  for _, p in ipairs(model:parameters()) do
    if p.tensor.grad then out[#out + 1] = p.tensor.grad:clone() else missing = missing + 1 end
  end
  return out, missing
end

T.case("lm: every parameter's gradient identical with checkpointed blocks (all, the first 2, none)", function()
  local ids, tg = m2.randint(17, 2, 12), m2.randint(17, 2, 12)
  local base = lm(false)
  base:loss(ids, tg):backward()
  local want, missing = grads_of(base)
  T.eq(missing, 0, "every parameter has a gradient")
  for _, ck in ipairs { true, 2, 4 } do
    local model = lm(ck)
    T.eq(maxdiff(params_of(model), params_of(base)), 0, "the same initial weights")
    model:loss(ids, tg):backward()
    local got, miss = grads_of(model)
    T.eq(miss, 0, "checkpoint " .. tostring(ck) .. ": every parameter has a gradient")
    T.eq(maxdiff(got, want), 0, "checkpoint " .. tostring(ck) .. ": the same gradients bit for bit")
  end
  -- the step form (generation) never checkpoints, and gives the forward's values
  local model = lm(true)
  local full = m2.no_grad(function() return model(ids) end)
  local stepped = m2.no_grad(function() return model:step(ids, {}) end)
  T.ok(maxdiff({ full }, { stepped }) < 1e-8, "model:step with a cache as the forward")
  local steps = model:step(ids:narrow(2, 1, 3), {})
  T.ok(steps:requires_grad(), "the step form records the plain graph")
end)

T.case("lm: a few m2.train steps give the same weights with and without checkpointing", function()
  local function data()
    local d = {}
    function d:batch(i)
      m2.seed(100 + i)
      return m2.randint(17, 2, 16), m2.randint(17, 2, 16)
    end
    return d
  end
  local final = {}
  for i, ck in ipairs { false, true } do
    local model = lm(ck)
    local s = m2.train { model = model, data = data(), steps = 4, out = false, clip = 1.0,
                         optim = m2.optim.adamw { lr = 1e-2, weight_decay = 0.1 } }
    final[i] = { params = params_of(model), loss = s.final_loss }
  end
  T.eq(final[2].loss, final[1].loss, "the same final loss")
  T.eq(maxdiff(final[1].params, final[2].params), 0, "the same weights after 4 steps")
end)

T.case("lm: fewer live tensors at the end of the forward, nothing left after the backward", function()
  local ids, tg = m2.randint(17, 2, 12), m2.randint(17, 2, 12)
  local live = {}
  for i, ck in ipairs { false, true } do
    local model = lm(ck)
    model:loss(ids, tg):backward() -- the parameters' .grad buffers exist from here on
    local t0, n0 = counts()
    local loss = model:loss(ids, tg)
    local t1, n1 = counts()
    live[i] = { tensors = t1 - t0, nodes = n1 - n0 }
    loss:backward()
    loss = nil
    local t2, n2 = counts()
    T.eq(n2, n0, "checkpoint " .. tostring(ck) .. ": the nodes freed after the backward")
    T.eq(t2, t0, "checkpoint " .. tostring(ck) .. ": the tensors freed after the backward")
  end
  io.stdout:write(string.format("  after the forward: %d tensors, %d nodes without checkpointing; %d tensors, " ..
    "%d nodes with every block checkpointed\n", live[1].tensors, live[1].nodes, live[2].tensors, live[2].nodes))
  T.ok(live[2].tensors < live[1].tensors / 2, "fewer than half the live tensors")
  T.ok(live[2].nodes < live[1].nodes / 2, "fewer than half the tape nodes")
end)

T.case("lm: checkpoint settings", function()
  for _, bad in ipairs { -1, 1.5, 5, "yes" } do
    local s = {}
    for k, v in pairs(SPEC) do s[k] = v end
    s.checkpoint = bad
    local err = T.raises(function() m2.models.lm(s) end, "checkpoint must be false, true or an integer 0 .. 4")
    T.ok(err and err:find("test_checkpoint.lua:%d+:"), "located: " .. tostring(err))
  end
  local s = {}
  for k, v in pairs(SPEC) do s[k] = v end
  s.checkpoint = true
  s.mlp = { kind = "moe", experts = 4, top_k = 2, expert_hidden = 16, shared_hidden = 0 }
  T.raises(function() m2.models.lm(s) end, "checkpoint is not supported with MoE")
  s.checkpoint = 0
  T.ok(m2.models.lm(s), "MoE without checkpointing")
  T.eq(m2.models.checkpointed(lm(true).spec), 4)
  T.eq(m2.models.checkpointed(lm(2).spec), 2)
  T.eq(m2.models.checkpointed(lm(false).spec), 0)
end)
