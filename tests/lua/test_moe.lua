-- test_moe.lua — the MoE MLP (lua/m2/layers/moe.lua) in Lua: its parameters as declared, the forward against the
-- ops composed by hand, the aux loss (training only) in m2.models.lm's loss, the step form, bad settings named at
-- the script's line, a tiny MoE LM that learns with m2.train (experiments/tiny_lm.lua) and logs the per-expert load
-- to its run file (and m2lab inspect shows it), and a 7B config cut to two layers of reduced width that builds and
-- trains a step.
local m2 = require "m2"
local T = m2.test
local C = require "m2.layers.common"
local MoE = require "m2.layers.moe"

local function small_lm(mlp, layers)
  return m2.models.lm { vocab = 16, d = 16, layers = layers or "MA", m2rnn = { heads = 2, k = 4, v = 4 },
                        attention = { heads = 2, head_dim = 8 }, mlp = mlp }
end

T.case("parameters as declared, forward = the ops composed by hand", function()
  m2.seed(3)
  local moe = MoE(8, { experts = 4, top_k = 2, expert_hidden = 6, shared_hidden = 5 })
  local shapes = m2.nn.param_shapes(MoE, 8, { experts = 4, top_k = 2, expert_hidden = 6, shared_hidden = 5 })
  local ok, msg = C.check_shapes(moe, shapes)
  T.ok(ok, msg)
  T.eq(moe.experts.gate:shape(), { 4, 6, 8 })
  T.eq(moe.experts.down:shape(), { 4, 8, 6 })
  local x = m2.randn(2, 3, 8)
  local y = moe(x)
  T.eq(y:shape(), { 2, 3, 8 })
  -- by hand: per token, its two experts' SwiGLU weighted by the softmax of their two logits, plus the shared expert
  local x2 = x:reshape(6, 8)
  local logits = m2.linear(x2, moe.router.weight):totable()
  local want = moe.shared(x2):totable()
  local xs = x2:totable()
  for n = 1, 6 do
    local order = { 1, 2, 3, 4 }
    table.sort(order, function(a, b) return logits[n][a] > logits[n][b] or (logits[n][a] == logits[n][b] and a < b) end)
    local e1, e2 = order[1], order[2]
    local w1 = 1 / (1 + math.exp(logits[n][e2] - logits[n][e1]))
    for j, e in ipairs { e1, e2 } do
      local w = j == 1 and w1 or 1 - w1
      local xe = m2.tensor({ xs[n] })
      local g = m2.linear(xe, moe.experts.gate[e]) -- (1, h)
      local u = m2.linear(xe, moe.experts.up[e])
      local o = m2.linear(m2.silu(g) * u, moe.experts.down[e]):totable()[1]
      for i = 1, 8 do want[n][i] = want[n][i] + w * o[i] end
    end
  end
  local got = y:reshape(6, 8):totable()
  local err = 0
  for n = 1, 6 do for i = 1, 8 do err = math.max(err, math.abs(got[n][i] - want[n][i])) end end
  T.ok(err < 1e-5, "MoE forward vs by hand: " .. err)
end)

T.case("aux loss: added to the LM loss while training, not in eval mode; load window", function()
  m2.seed(1)
  local model = small_lm { kind = "moe", experts = 4, top_k = 2, expert_hidden = 8, shared_hidden = 0,
                           aux_loss_coef = 0.01 }
  local ids = m2.randint(16, 2, 8)
  local loss = model:loss(ids, ids)
  local aux = model:aux_loss()
  T.ok(aux ~= nil and aux:numel() == 1, "aux loss after a training forward")
  local lb1, z1 = model.blocks[1].mlp:aux_parts()
  local lb2, z2 = model.blocks[2].mlp:aux_parts()
  T.close(aux:item(), 0.01 * (lb1 + 0.1 * z1) + 0.01 * (lb2 + 0.1 * z2), 1e-6)
  T.ok(lb1 >= 1 - 1e-6, "load balance E sum f P >= 1 for top-k of a softmax: " .. lb1)
  loss:backward()
  T.ok(model.blocks[1].mlp.router.weight.grad ~= nil, "the router gets a gradient")
  T.ok(model.blocks[1].mlp.experts.gate.grad ~= nil, "the experts get gradients")
  -- the load window: 2 x 8 tokens x top-2 = 32 slots per layer and forward, fractions summing to 1
  local m = {}
  for _, kv in ipairs(model:log_metrics()) do m[kv[1]] = kv[2] end
  local sum = 0
  T.eq(#m.moe_load_01, 4, "one share per expert")
  for e = 1, 4 do sum = sum + m.moe_load_01[e] end
  T.close(sum, 1, 1e-12)
  T.ok(m.moe_imbalance_02 >= 1 and m.moe_aux_loss > 0, "imbalance and aux logged")
  model:eval()
  local ce = m2.no_grad(function() return model:loss(ids, ids) end)
  T.eq(model:aux_loss(), nil, "no aux loss in eval mode")
  T.close(ce:item() + aux:item(), loss:item(), 1e-5, "the training loss is the cross-entropy plus the aux loss")
  T.eq(model.blocks[1].mlp:take_load(), nil, "the window was reset by log_metrics")
  T.eq(#small_lm({ kind = "swiglu", hidden = 16 }):log_metrics(), 0, "a dense model logs nothing extra")
end)

T.case("the step form (generation) gives the rows of the full forward", function()
  m2.seed(2)
  local model = small_lm({ kind = "moe", experts = 3, top_k = 2, expert_hidden = 8, shared_hidden = 4 })
  model:eval()
  local ids = m2.randint(16, 1, 6)
  m2.no_grad(function()
    local full = model(ids):totable()
    local cache = {}
    local a = model:step(ids:narrow(2, 1, 4), cache):totable()
    local b = model:step(ids:narrow(2, 5, 2), cache):totable()
    local err = 0
    for t = 1, 4 do for v = 1, 16 do err = math.max(err, math.abs(a[1][t][v] - full[1][t][v])) end end
    for t = 1, 2 do for v = 1, 16 do err = math.max(err, math.abs(b[1][t][v] - full[1][t + 4][v])) end end
    T.ok(err < 1e-4, "step vs forward: " .. err)
  end)
end)

T.case("bad settings: named, at the script's line", function()
  local base = { kind = "moe", experts = 4, top_k = 2, expert_hidden = 8, shared_hidden = 0 }
  local function with(k, v)
    local c = {}
    for a, b in pairs(base) do c[a] = b end
    c[k] = v
    return c
  end
  T.raises(function() small_lm(with("top_k", 5)) end, "test_moe.lua:%d+: .*top_k = 5 is larger than experts = 4")
  T.raises(function() small_lm(with("experts", 0)) end, "test_moe.lua:%d+: .*experts must be a positive integer, got 0")
  T.raises(function() small_lm(with("top_k", 0)) end, "test_moe.lua:%d+: .*top_k must be a positive integer, got 0")
  T.raises(function() small_lm(with("aux_loss_coef", -1)) end, "aux_loss_coef must be a number >= 0")
  T.raises(function() small_lm(with("capacity", 2)) end, "unknown setting 'capacity'")
  -- the ops themselves
  T.raises(function() m2.moe_route(m2.zeros(3, 4), 5) end, "test_moe.lua:%d+: .*top_k = 5 must be in %[1, E = 4%]")
  T.raises(function() m2.moe_permute(m2.zeros(2, 3), m2.tensor({ { 0, 7 }, { 1, 2 } }, { dtype = "i64" }), 4) end,
    "indices%[0, 1%] = 7 is not an expert in %[0, 4%)")
end)

T.case("a tiny MoE LM learns with m2.train and logs the per-expert load (m2lab inspect shows it)", function()
  local out = os.tmpname() .. ".h5"
  local code, text = T.run_m2lab(string.format("run '%s/experiments/tiny_lm.lua' arch=MA moe_experts=8 moe_top_k=2 " ..
    "steps=200 eval_every=100 checkpoint_every=100 out='%s'", m2.source_dir, out))
  T.eq(code, 0, text)
  local r <close> = m2.runs.open(out)
  local steps, loss = r:read_series("metrics", "loss")
  T.eq(#steps, 200)
  local first, last = 0, 0
  for i = 1, 10 do first, last = first + loss[i] / 10, last + loss[#loss - 10 + i] / 10 end
  T.ok(last < first - 1.0, string.format("the loss goes down: %.3f -> %.3f", first, last))
  T.eq(#r:list_series("metrics"), 11, "no per-expert scalar series: " .. table.concat(r:list_series("metrics"), " "))
  T.eq(table.concat(r:list_arrays(), " "), "moe_load_01 moe_load_02")
  for layer = 1, 2 do
    local lsteps, rows = r:read_array(string.format("moe_load_%02d", layer))
    T.eq(#rows, 200)
    T.eq(lsteps[200], 200)
    T.eq(#rows[200], 8, "(steps, experts)")
    local sum = 0
    for e = 1, 8 do sum = sum + rows[#rows][e] end
    T.close(sum, 1, 1e-9, "the loads of block " .. layer .. " sum to 1")
    local _, imb = r:read_series("metrics", string.format("moe_imbalance_%02d", layer))
    T.ok(imb[#imb] >= 1 and imb[#imb] < 8, "imbalance " .. imb[#imb])
  end
  local _, aux = r:read_series("metrics", "moe_aux_loss")
  T.ok(aux[#aux] > 0 and aux[#aux] < 0.01, "aux loss " .. aux[#aux])
  local icode, itext = T.run_m2lab("inspect '" .. out .. "'")
  T.eq(icode, 0, itext)
  T.ok(itext:find("arrays (2 series)", 1, true) and itext:find("moe_load_01", 1, true) and
       itext:find("moe_imbalance_02", 1, true), itext)
  os.remove(out)
end)

T.case("a 7B MoE config cut to two layers of reduced width builds and trains a step", function()
  local spec = m2.models.load("7b-hybrid-m2rnn")
  spec.layers, spec.d, spec.vocab = "MA", 64, 256
  m2.seed(0)
  local model = m2.models.lm(spec)
  local c = m2.models.count(spec)
  T.eq(model:param_count(), c.total, "built = counted")
  local moe = model.blocks[1].mlp
  T.eq(moe.experts.gate:shape(), { 128, 256, 64 })
  T.eq(moe.shared.gate.weight:shape(), { 1024, 64 })
  local opt = m2.optim.adamw { params = model:parameters(), lr = 1e-3 }
  local ids = m2.randint(256, 1, 16)
  local l0 = model:loss(ids, ids)
  l0:backward()
  opt:step()
  T.ok(l0:item() > 0 and l0:item() == l0:item(), "a finite loss: " .. l0:item())
  T.ok(moe.experts.down.grad ~= nil, "expert gradients")
end)

T.finish()
