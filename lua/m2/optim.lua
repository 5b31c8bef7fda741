--[==[ m2.optim — optimizers, gradient clipping and learning-rate schedules (core/optim.c).

  local opt = m2.optim.adamw{ params = model, lr = 3e-4, betas = {0.9, 0.95}, eps = 1e-10,
                              weight_decay = 0.1 }
  local sched = m2.optim.schedule{ kind = "cosine", lr = 3e-4, min_lr = 3e-5, warmup = 100, decay = 900 }
  for step = 0, 999 do
    opt:zero_grad()
    local loss = ...; loss:backward()
    local norm = m2.optim.clip_grad_norm(model, 1.0)
    opt:step(sched:lr(step))
  end

params may be a module (its :parameters()), the array model:parameters() returns
({name =, tensor =, no_decay =} records), or a list of tensors. Parameters marked no_decay
(biases, norm weights) get no weight decay. An optimizer made without params can get them
later with opt:add_params(...). opt:step() without an lr uses opts.schedule (by step count)
or opts.lr.
]==]

local m2 = require "m2"
local core = m2.core

local optim = {}

local function fail(msg) m2.error(msg) end

local O = require "m2.opts"
local check_opts = O.check

-- Normalise params to an array of {name, tensor, no_decay}.
function optim.param_list(params)
  if params == nil then return {} end
  if type(params) == "table" and type(params.parameters) == "function" then params = params:parameters() end
  if m2.is_tensor(params) then params = { params } end
  if type(params) ~= "table" then fail("params must be a module, a list of tensors or model:parameters()") end
  local out = {}
  for i, p in ipairs(params) do
    if m2.is_tensor(p) then
      out[#out + 1] = { name = p:name() or ("param" .. i), tensor = p, no_decay = false }
    elseif type(p) == "table" and m2.is_tensor(p.tensor) then
      out[#out + 1] = { name = p.name or ("param" .. i), tensor = p.tensor, no_decay = p.no_decay or false }
    else
      fail("params entry " .. i .. " is neither a tensor nor a {name=, tensor=} record")
    end
  end
  return out
end

local function tensors_of(params)
  local ts = {}
  for i, p in ipairs(optim.param_list(params)) do ts[i] = p.tensor end
  return ts
end

-- ---------------------------------------------------------------------------------------
-- the optimizer object (wraps the m2.Optim userdata in ._c)
-- ---------------------------------------------------------------------------------------

-- optim.check_lr(where, name, v): a learning rate is a finite number >= 0 (what opt:step accepts), checked where
-- it is given rather than at the first step (m2.train checks its optimizer and schedule before touching a run file)
function optim.check_lr(where, name, v)
  if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge then
    fail(string.format("%s: %s must be a finite number >= 0, got %s", where, name, tostring(v)))
  end
  return v
end

local Optimizer = {}
Optimizer.__index = Optimizer
optim.Optimizer = Optimizer

local function new_optimizer(kind, c, opts)
  local self = setmetatable({ _c = c, kind = kind, lr = opts.lr, schedule = opts.schedule, params = {} }, Optimizer)
  if opts.params ~= nil then self:add_params(opts.params) end
  return self
end

function Optimizer:add_params(params)
  for _, p in ipairs(optim.param_list(params)) do
    if not p.tensor:requires_grad() then
      fail("optimizer: parameter '" .. p.name .. "' does not require grad")
    end
    self._c:add(p.tensor, p.name, p.no_decay)
    self.params[#self.params + 1] = p
  end
  return self
end

-- opt:step([lr]) -> the lr used
function Optimizer:step(lr)
  if lr == nil then
    if self.schedule then lr = self.schedule:lr(self._c:steps()) else lr = self.lr end
  end
  if type(lr) ~= "number" then fail("optimizer:step: the learning rate must be a number, got " .. type(lr)) end
  self._c:step(lr)
  return lr
end

function Optimizer:zero_grad() self._c:zero_grad() end
-- opt:clear_grads(): drop the parameters' .grad (set to none) so that the next backward adopts fresh gradients
-- instead of adding them into zeroed buffers; parameters that then get no gradient are skipped by opt:step()
function Optimizer:clear_grads() self._c:clear_grads() end
function Optimizer:steps() return self._c:steps() end
function Optimizer:set_steps(n) self._c:set_steps(n) end
function Optimizer:nparams() return self._c:nparams() end
-- checkpoint access: state names ({"exp_avg", "exp_avg_sq"}), state tensor j of param i
function Optimizer:state_names() return self._c:state_names() end
function Optimizer:state(i, j) return self._c:state(i, j) end
function Optimizer:init_state() self._c:init_state() end

-- m2.optim.adamw{params, lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0.01, schedule}
function optim.adamw(opts, extra)
  O.one_table(extra, "m2.optim.adamw", "m2.optim.adamw{params = model:parameters(), lr = 3e-4}")
  opts = check_opts(opts, "adamw",
    { params = true, lr = true, betas = true, eps = true, weight_decay = true, schedule = true })
  local betas = opts.betas or { 0.9, 0.999 }
  if type(betas) ~= "table" or type(betas[1]) ~= "number" or type(betas[2]) ~= "number" then
    fail("adamw: betas must be a pair of numbers {b1, b2}")
  end
  if opts.lr ~= nil then optim.check_lr("adamw", "lr", opts.lr) end
  local c = core.optim_adamw { beta1 = betas[1], beta2 = betas[2], eps = opts.eps or 1e-8,
                               weight_decay = opts.weight_decay or 0.01 }
  return new_optimizer("adamw", c, { params = opts.params, lr = opts.lr or 1e-3, schedule = opts.schedule })
end

-- m2.optim.sgd{params, lr = 1e-2, momentum = 0, weight_decay = 0, nesterov = false, schedule}
function optim.sgd(opts, extra)
  O.one_table(extra, "m2.optim.sgd", "m2.optim.sgd{params = model:parameters(), lr = 0.1}")
  opts = check_opts(opts, "sgd",
    { params = true, lr = true, momentum = true, weight_decay = true, nesterov = true, schedule = true })
  if opts.lr ~= nil then optim.check_lr("sgd", "lr", opts.lr) end
  local c = core.optim_sgd { momentum = opts.momentum or 0, weight_decay = opts.weight_decay or 0,
                             nesterov = opts.nesterov or false }
  return new_optimizer("sgd", c, { params = opts.params, lr = opts.lr or 1e-2, schedule = opts.schedule })
end

-- m2.optim.clip_grad_norm(params, max_norm) -> global L2 norm of the grads (before clipping)
function optim.clip_grad_norm(params, max_norm)
  if type(max_norm) ~= "number" then fail("clip_grad_norm: max_norm must be a number") end
  return core.clip_grad_norm(tensors_of(params), max_norm)
end

-- m2.optim.schedule{kind = "cosine" | "constant" | "wsd", lr, min_lr = 0, warmup = 0, stable = 0, decay = 0}
-- :lr(step) with step counting from 0
local Schedule = {}
Schedule.__index = Schedule
function Schedule:lr(step)
  if math.type(step) ~= "integer" then fail("schedule:lr: step must be an integer") end
  return core.schedule_lr(self.spec, step)
end

function optim.schedule(opts, extra)
  O.one_table(extra, "m2.optim.schedule", "m2.optim.schedule{kind = \"cosine\", lr = 3e-4, warmup = 100, decay = 1000}")
  opts = check_opts(opts, "schedule",
    { kind = true, lr = true, min_lr = true, warmup = true, stable = true, decay = true })
  local kind = opts.kind or "constant"
  if kind ~= "constant" and kind ~= "cosine" and kind ~= "wsd" then
    fail("schedule: unknown kind '" .. tostring(kind) .. "' (constant, cosine, wsd)")
  end
  if type(opts.lr) ~= "number" then fail("schedule: lr must be a number") end
  optim.check_lr("schedule", "lr", opts.lr)
  if opts.min_lr ~= nil then optim.check_lr("schedule", "min_lr", opts.min_lr) end
  for _, k in ipairs { "warmup", "stable", "decay" } do
    if opts[k] ~= nil and (math.type(opts[k]) ~= "integer" or opts[k] < 0) then
      fail("schedule: " .. k .. " must be a non-negative integer")
    end
  end
  local spec = { kind = kind, lr = opts.lr, min_lr = opts.min_lr or 0, warmup = opts.warmup or 0,
                 stable = opts.stable or 0, decay = opts.decay or 0 }
  return setmetatable({ kind = kind, spec = spec }, Schedule)
end

return optim
