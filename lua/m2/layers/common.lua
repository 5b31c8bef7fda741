--[==[ m2.layers.common — pieces shared by the mixer layers (lua/m2/layers/*.lua).

  C.resolve(cfg, defaults, ctor)   copy of cfg with defaults filled in; unknown keys are errors
  C.pos_int(v, what, ctor)         check a positive integer (error at the caller's script line)
  C.divides(a, n, what, ctor)      check that the head count a divides n
  C.scale(opts)                    L, std from a layer's opts {layers = 1, init_std = 0.02}
  C.repeat_heads(x, n)             (B, T, Nx, E) -> (B, T, n, E), head i reads head i // (n / Nx)
  C.numel(shape)                   product of a shape list
  C.check_shapes(module, shapes)   compare module:parameters() with a {name, shape, no_decay} list
                                   (returns ok, message) -- used by the tests
The step form (DESIGN 9; forward(x, {cache = t}) of every mixer, m2.models LM:step):
  C.conv_step(x, w, bias, cache, key)  the causal conv of x (B, T, C) continuing the inputs before it: cache[key]
                                   holds the last W - 1 inputs (B, W - 1, C) (zeros before the first) and is
                                   replaced; without cache[key], m2.conv1d_causal itself (a fresh sequence)
  C.cache_set(cache, key, t)       cache[key] = t, releasing the tensor it replaces (the cache owns its tensors)
Inits of the mixer parameters (init(shape) -> f32 tensor, drawn from the default RNG; see nn.init):
  C.init_A_log(lo, hi)             log(A), A ~ U(lo, hi)                                      (n)
  C.init_dt_bias(min, max, floor)  dt = exp(U(log min, log max)) clamped >= floor;
                                   dt + log(-expm1(-dt)) so that softplus(dt_bias) = dt     (n)
  C.init_conv(w)                   depthwise conv weight (c, w) or bias (c), U(-1/sqrt(w), 1/sqrt(w))
  C.init_eye                       the identity in every head                              (n, V, V)

Every layer class declares each parameter once, as {name, shape, init, decay = bool} (lua/m2/nn.lua,
"Declaring parameters once"): LayerClass.params(d, cfg, opts) -> the declaration list and the resolved cfg.
Its constructor builds that list; nn.param_shapes(LayerClass, d, cfg) counts it without allocating
(m2.models.summary of a 7B model).
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

-- the init scale of a layer: opts.layers (L, scales the output projection by 1/sqrt(2 L)) and opts.init_std
function C.scale(opts)
  return opts and opts.layers or 1, opts and opts.init_std or 0.02
end

-- log(A), A ~ U(lo, hi) (n)
function C.init_A_log(lo, hi)
  return function(shape)
    local n = C.numel(shape)
    local u = m2.rand(shape, { lo = lo, hi = hi }):totable()
    for i = 1, n do u[i] = math.log(math.max(u[i], 1e-4)) end
    return m2.tensor(u)
  end
end

-- inverse-softplus of dt, dt = exp(U(log dt_min, log dt_max)) clamped >= floor (n)
function C.init_dt_bias(dt_min, dt_max, floor)
  return function(shape)
    local n = C.numel(shape)
    local u = m2.rand(shape, { lo = math.log(dt_min), hi = math.log(dt_max) }):totable()
    for i = 1, n do
      local dt = math.max(math.exp(u[i]), floor)
      u[i] = dt + math.log(1 - math.exp(-dt)) -- dt + log(-expm1(-dt))
    end
    return m2.tensor(u)
  end
end

-- depthwise conv weight (c, w) or bias (c) of a kernel of width w: U(-1/sqrt(w), 1/sqrt(w))
function C.init_conv(w)
  local b = 1 / math.sqrt(w)
  return function(shape) return m2.rand(shape, { lo = -b, hi = b }) end
end

-- the identity in every head (n, V, V)
function C.init_eye(shape)
  local eye = {}
  for n = 1, shape[1] do
    eye[n] = {}
    for i = 1, shape[2] do
      eye[n][i] = {}
      for j = 1, shape[3] do eye[n][i][j] = i == j and 1 or 0 end
    end
  end
  return m2.tensor(eye)
end

-- (B, T, Nx, E) -> (B, T, n, E): head i of the result is head floor(i / (n / Nx)) of x
function C.repeat_heads(x, n)
  local s = x:shape()
  local nx = s[3]
  if nx == n then return x end
  local r = n // nx
  return x:reshape(s[1], s[2], nx, 1, s[4]):expand(-1, -1, -1, r, -1):reshape(s[1], s[2], n, s[4])
end

-- cache[key] = t; the tensor it replaces is released at once (caches are owned by the step form: nothing else
-- holds their tensors), so a long decode does not wait for the garbage collector
function C.cache_set(cache, key, t)
  local old = cache[key]
  cache[key] = t
  if old ~= nil and old ~= t then old:release() end
end

-- the causal depthwise conv of x (B, T, C) with w (C, W) [and bias (C)] after the inputs the cache has seen:
-- cache[key] holds the last W - 1 inputs (B, W - 1, C) and is replaced by the new last W - 1 -> y (B, T, C).
-- Without cache[key] (a fresh sequence) y is m2.conv1d_causal(x, w, bias) itself, zeros before the first input.
function C.conv_step(x, w, bias, cache, key)
  local s = x:shape()
  local B, T, Ch = s[1], s[2], s[3]
  local W = w:size(2)
  local prev, y, full = cache[key], nil, x
  if prev then
    full = m2.concat({ prev, x }, 2)                                       -- (B, W - 1 + T, C)
    y = m2.conv1d_causal(full, w, bias):narrow(2, W, T)
  else
    y = m2.conv1d_causal(x, w, bias)
    if T < W - 1 then
      full = m2.concat({ m2.zeros({ B, W - 1 - T, Ch }, { dtype = x:dtype(), device = x:device() }), x }, 2)
    end
  end
  if W > 1 then
    local n = full:size(2)
    C.cache_set(cache, key, full:narrow(2, n - W + 2, W - 1):clone()) -- a copy: the window alone stays alive
  end
  return y
end

-- compare a module's parameters with a {name, shape, no_decay} list (as sets, by name) -> ok, message
function C.check_shapes(module, shapes)
  local ps = module:parameters()
  local byname = function(a, b) return a.name < b.name end
  local sorted = {}
  for i, s in ipairs(shapes) do sorted[i] = s end
  table.sort(ps, byname)
  table.sort(sorted, byname)
  shapes = sorted
  if #ps ~= #shapes then
    return false, string.format("%d parameters, the list has %d", #ps, #shapes)
  end
  for i, p in ipairs(ps) do
    local want = shapes[i]
    local got = table.concat(p.tensor:shape(), ",")
    if p.name ~= want.name or got ~= table.concat(want.shape, ",") or p.no_decay ~= (want.no_decay or false) then
      return false, string.format("parameter %d: module has %s (%s)%s, the list says %s (%s)%s", i, p.name, got,
        p.no_decay and " no_decay" or "", want.name, table.concat(want.shape, ","), want.no_decay and " no_decay" or "")
    end
  end
  return true
end

return C
