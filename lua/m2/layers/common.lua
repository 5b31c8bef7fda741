--[==[ m2.layers.common — pieces shared by the mixer layers (lua/m2/layers/*.lua).

  C.resolve(cfg, defaults, ctor)   copy of cfg with defaults filled in; unknown keys are errors
  C.pos_int(v, what, ctor)         check a positive integer (error at the caller's script line)
  C.divides(a, n, what, ctor)      check that the head count a divides n
  C.A_log(n, lo, hi)               log(A), A ~ U(lo, hi)                        (n)
  C.dt_bias(n)                     dt = exp(U(log 1e-3, log 0.1)) clamped >= 1e-4;
                                   dt + log(-expm1(-dt)) so that softplus(dt_bias) = dt (n)
  C.conv_weight(c, w)              depthwise conv weight (c, w), U(-1/sqrt(w), 1/sqrt(w))
  C.repeat_heads(x, n)             (B, T, Nx, E) -> (B, T, n, E), head i reads head i // (n / Nx)
  C.numel(shape)                   product of a shape list
  C.check_shapes(module, shapes)   compare module:parameters() with a param_shapes list
                                   (returns ok, message) -- used by the tests

Every layer module exposes LayerClass.param_shapes(d, cfg, opts) -> ordered list of
{name = "in_proj.weight", shape = {...}, no_decay = bool} that matches the parameters its
instances allocate, so m2.models.summary can count a 7B model without allocating it.
]==]

local m2 = require "m2"

local C = {}

function C.pos_int(v, what, ctor)
  if math.type(v) ~= "integer" or v <= 0 then
    m2.error(string.format("%s: %s must be a positive integer, got %s", ctor, what, tostring(v)))
  end
  return v
end

function C.divides(a, n, what, ctor)
  if n % a ~= 0 then
    m2.error(string.format("%s: %s = %d does not divide the head count N = %d", ctor, what, a, n))
  end
end

-- copy cfg over defaults; a key of cfg that defaults does not know is an error
function C.resolve(cfg, defaults, ctor)
  if cfg ~= nil and type(cfg) ~= "table" then
    m2.error(string.format("%s: settings must be a table, got %s", ctor, type(cfg)))
  end
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for k, v in pairs(cfg or {}) do
    if defaults[k] == nil then
      local names = {}
      for n in pairs(defaults) do names[#names + 1] = n end
      table.sort(names)
      m2.error(string.format("%s: unknown setting '%s' (known: %s)", ctor, tostring(k), table.concat(names, ", ")))
    end
    out[k] = v
  end
  return out
end

function C.numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

-- log(A), A ~ U(lo, hi), as an f32 tensor (n)
function C.A_log(n, lo, hi)
  local u = m2.rand(n, { lo = lo, hi = hi }):totable()
  for i = 1, n do u[i] = math.log(math.max(u[i], 1e-4)) end
  return m2.tensor(u)
end

-- inverse-softplus of dt, dt = exp(U(log 1e-3, log 0.1)) clamped >= 1e-4 (n)
function C.dt_bias(n, dt_min, dt_max, floor)
  dt_min, dt_max, floor = dt_min or 1e-3, dt_max or 0.1, floor or 1e-4
  local u = m2.rand(n, { lo = math.log(dt_min), hi = math.log(dt_max) }):totable()
  for i = 1, n do
    local dt = math.max(math.exp(u[i]), floor)
    u[i] = dt + math.log(1 - math.exp(-dt)) -- dt + log(-expm1(-dt))
  end
  return m2.tensor(u)
end

function C.conv_weight(c, w)
  local b = 1 / math.sqrt(w)
  return m2.rand({ c, w }, { lo = -b, hi = b })
end

function C.conv_bias(c, w)
  local b = 1 / math.sqrt(w)
  return m2.rand(c, { lo = -b, hi = b })
end

-- (B, T, Nx, E) -> (B, T, n, E): head i of the result is head floor(i / (n / Nx)) of x
function C.repeat_heads(x, n)
  local s = x:shape()
  local nx = s[3]
  if nx == n then return x end
  local r = n // nx
  return x:reshape(s[1], s[2], nx, 1, s[4]):expand(-1, -1, -1, r, -1):reshape(s[1], s[2], n, s[4])
end

-- compare a module's parameters with a param_shapes list (as sets, by name) -> ok, message
function C.check_shapes(module, shapes)
  local ps = module:parameters()
  local byname = function(a, b) return a.name < b.name end
  local sorted = {}
  for i, s in ipairs(shapes) do sorted[i] = s end
  table.sort(ps, byname)
  table.sort(sorted, byname)
  shapes = sorted
  if #ps ~= #shapes then
    return false, string.format("%d parameters, param_shapes lists %d", #ps, #shapes)
  end
  for i, p in ipairs(ps) do
    local want = shapes[i]
    local got = table.concat(p.tensor:shape(), ",")
    if p.name ~= want.name or got ~= table.concat(want.shape, ",") or p.no_decay ~= (want.no_decay or false) then
      return false, string.format("parameter %d: module has %s (%s)%s, param_shapes says %s (%s)%s", i, p.name, got,
        p.no_decay and " no_decay" or "", want.name, table.concat(want.shape, ","), want.no_decay and " no_decay" or "")
    end
  end
  return true
end

-- shape-list builder used by param_shapes: S:add(name, shape [, no_decay]); S:linear(name, din, dout [, bias])
local Shapes = {}
Shapes.__index = Shapes
function C.shapes() return setmetatable({ list = {} }, Shapes) end
function Shapes:add(name, shape, no_decay)
  self.list[#self.list + 1] = { name = name, shape = shape, no_decay = no_decay or false }
  return self
end
function Shapes:linear(name, din, dout, bias)
  self:add(name .. ".weight", { dout, din })
  if bias then self:add(name .. ".bias", { dout }, true) end
  return self
end
function Shapes:rmsnorm(name, d) return self:add(name .. ".weight", { d }, true) end
function Shapes:swiglu(name, d, hidden)
  self:linear(name .. ".gate", d, hidden)
  self:linear(name .. ".up", d, hidden)
  return self:linear(name .. ".down", hidden, d)
end
-- nest another list under a prefix
function Shapes:sub(prefix, list)
  for _, s in ipairs(list) do self:add(prefix .. "." .. s.name, s.shape, s.no_decay) end
  return self
end

return C
