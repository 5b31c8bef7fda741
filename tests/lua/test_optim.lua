-- test_optim.lua — m2.optim from Lua: AdamW and SGD updates against references written here,
-- no_decay parameters, clipping, schedules, parameter lists, optimizer state access, errors.
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

m2.seed(5)

-- a leaf with a fixed gradient
local function param_with_grad(values, grad)
  local p = m2.tensor(values, { dtype = "f64", requires_grad = true })
  p.grad = m2.tensor(grad, { dtype = "f64" })
  return p
end

T.case("adamw matches the reference update", function()
  local p0, g1, g2 = { 0.5, -1.0, 2.0 }, { 0.1, -0.3, 0.05 }, { -0.2, 0.4, 0.0 }
  local p = param_with_grad(p0, g1)
  local opt = m2.optim.adamw { params = { p }, lr = 0.01, betas = { 0.9, 0.95 }, eps = 1e-8, weight_decay = 0.1 }
  T.eq(opt:nparams(), 1)
  -- reference
  local ref, m, v = { table.unpack(p0) }, { 0, 0, 0 }, { 0, 0, 0 }
  local function ref_step(g, t)
    for i = 1, 3 do
      ref[i] = ref[i] - 0.01 * 0.1 * ref[i]
      m[i] = 0.9 * m[i] + 0.1 * g[i]
      v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i]
      local mh, vh = m[i] / (1 - 0.9 ^ t), v[i] / (1 - 0.95 ^ t)
      ref[i] = ref[i] - 0.01 * mh / (math.sqrt(vh) + 1e-8)
    end
  end
  opt:step()
  ref_step(g1, 1)
  T.close(p:totable(), ref, 1e-12)
  p.grad = m2.tensor(g2, { dtype = "f64" })
  T.eq(opt:step(), 0.01, "step returns the lr used")
  ref_step(g2, 2)
  T.close(p:totable(), ref, 1e-12)
  T.eq(opt:steps(), 2)
  T.eq(opt:state_names(), { "exp_avg", "exp_avg_sq" })
  T.close(opt:state(1, 1):totable(), m, 1e-12)
  T.close(opt:state(1, 2):totable(), v, 1e-12)
  opt:zero_grad()
  T.eq(p.grad:totable(), { 0, 0, 0 })
  opt:clear_grads()
  T.eq(p.grad, nil, "clear_grads drops the grad")
  local l = m2.sum_all(p * p) -- backward after clear_grads: the fresh gradient, not added to an old one
  l:backward()
  T.close(p.grad:totable(), { 2 * p:get(1), 2 * p:get(2), 2 * p:get(3) }, 1e-12)
  l = m2.sum_all(p * p) -- a second backward accumulates, as always
  l:backward()
  T.close(p.grad:totable(), { 4 * p:get(1), 4 * p:get(2), 4 * p:get(3) }, 1e-12)
end)

T.case("no_decay parameters get no weight decay", function()
  local lin = nn.Linear(2, 3)
  local params = lin:parameters()
  T.eq(params[1].name, "weight")
  T.eq(params[2].name, "bias")
  T.eq(params[2].no_decay, true)
  lin.bias:fill_(1)
  local w0 = lin.weight:totable()
  lin.weight.grad = m2.zeros(3, 2)
  lin.bias.grad = m2.zeros(3)
  local opt = m2.optim.adamw { params = lin, lr = 0.1, weight_decay = 0.5 }
  opt:step()
  -- zero grads: only decoupled decay moves the weights, by the factor (1 - lr wd)
  local w1 = lin.weight:totable()
  T.close(w1, { { w0[1][1] * 0.95, w0[1][2] * 0.95 }, { w0[2][1] * 0.95, w0[2][2] * 0.95 },
    { w0[3][1] * 0.95, w0[3][2] * 0.95 } }, 1e-6)
  T.eq(lin.bias:totable(), { 1, 1, 1 }, "bias (no_decay) untouched")
end)

T.case("sgd with momentum matches the reference", function()
  local p = param_with_grad({ 1.0, -2.0 }, { 0.5, 0.25 })
  local opt = m2.optim.sgd { params = { { name = "p", tensor = p } }, lr = 0.1, momentum = 0.9, weight_decay = 0.01 }
  local ref, buf = { 1.0, -2.0 }, { 0, 0 }
  for _ = 1, 3 do
    opt:step()
    for i = 1, 2 do
      local g = ({ 0.5, 0.25 })[i] + 0.01 * ref[i]
      buf[i] = 0.9 * buf[i] + g
      ref[i] = ref[i] - 0.1 * buf[i]
    end
  end
  T.close(p:totable(), ref, 1e-12)
  T.eq(opt:state_names(), { "momentum" })
  -- plain sgd with an explicit lr
  local q = param_with_grad({ 1.0 }, { 2.0 })
  local plain = m2.optim.sgd { params = q }
  plain:step(0.25)
  T.close(q:item(), 0.5, 1e-12)
end)

T.case("clip_grad_norm", function()
  local a = param_with_grad({ 3.0, 0.0 }, { 3.0, 0.0 })
  local b = param_with_grad({ 1.0 }, { 4.0 })
  local norm = m2.optim.clip_grad_norm({ a, b }, 1.0)
  T.close(norm, 5.0, 1e-12)
  T.close(a.grad:totable(), { 3 / (5 + 1e-6), 0 }, 1e-12)
  T.close(b.grad:totable(), { 4 / (5 + 1e-6) }, 1e-12)
  -- below the limit: untouched
  norm = m2.optim.clip_grad_norm({ a, b }, 10)
  T.close(norm, 1.0, 1e-5)
  T.close(b.grad:item(), 4 / (5 + 1e-6), 1e-12)
  -- a module works as the parameter list
  local lin = nn.Linear(2, 2)
  lin.weight.grad = m2.ones(2, 2)
  T.close(m2.optim.clip_grad_norm(lin, 0), 2.0, 1e-6, "params without grad are skipped")
end)

T.case("schedules", function()
  local cos = m2.optim.schedule { kind = "cosine", lr = 1.0, min_lr = 0.1, warmup = 10, decay = 100 }
  T.close(cos:lr(0), 0.1, 1e-12)
  T.close(cos:lr(9), 1.0, 1e-12)
  T.close(cos:lr(10), 1.0, 1e-12)
  T.close(cos:lr(60), 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)), 1e-12)
  T.close(cos:lr(110), 0.1, 1e-12)
  T.close(cos:lr(5000), 0.1, 1e-12)
  local wsd = m2.optim.schedule { kind = "wsd", lr = 2.0, min_lr = 0.0, warmup = 0, stable = 5, decay = 4 }
  T.close(wsd:lr(4), 2.0, 1e-12)
  T.close(wsd:lr(7), 1.0, 1e-12)
  T.close(wsd:lr(9), 0.0, 1e-12)
  local const = m2.optim.schedule { lr = 0.5, warmup = 2 }
  T.close(const:lr(0), 0.25, 1e-12)
  T.close(const:lr(100), 0.5, 1e-12)
  T.raises(function() m2.optim.schedule { kind = "linear", lr = 1 } end, "unknown kind 'linear'")
  T.raises(function() m2.optim.schedule { kind = "cosine" } end, "lr must be a number")
  T.raises(function() cos:lr(1.5) end, "integer")
  -- an optimizer driven by a schedule uses its own step count
  local p = param_with_grad({ 0.0 }, { 1.0 })
  local opt = m2.optim.sgd { params = p, schedule = const }
  T.close(opt:step(), 0.25, 1e-12)
  T.close(opt:step(), 0.5, 1e-12)
  T.close(p:item(), -0.75, 1e-12)
end)

T.case("parameter lists and errors", function()
  local mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1, { bias = false }))
  local opt = m2.optim.adamw { lr = 1e-3 }
  T.eq(opt:nparams(), 0)
  opt:add_params(mlp)
  T.eq(opt:nparams(), 3)
  T.eq(opt.params[3].name, "3.weight")
  T.raises(function() opt:add_params(mlp) end, "already added")
  T.raises(function() m2.optim.adamw { params = { m2.zeros(2) } } end, "does not require grad")
  T.raises(function() m2.optim.adamw { params = { 5 } } end, "entry 1")
  T.raises(function() m2.optim.sgd { lr = 1, momentun = 0.9 } end, "unknown option 'momentun'")
  -- the PyTorch habit: parameters first, options second
  T.raises(function() m2.optim.adamw(mlp:parameters(), { lr = 1e-3 }) end, "takes one options table")
  T.raises(function() m2.optim.adamw(mlp:parameters()) end, "options are named %(key = value%), got a positional entry %[1%]")
  T.raises(function() m2.optim.schedule({ kind = "cosine" }, 5) end, "got a second argument %(number%)")
  T.raises(function() m2.optim.sgd { momentum = 1.5 } end, "momentum must be in")
  T.raises(function() m2.optim.adamw { betas = { 0.9 } } end, "betas must be a pair")
  T.raises(function() opt:step("fast") end, "learning rate must be a number, got string")
end)
