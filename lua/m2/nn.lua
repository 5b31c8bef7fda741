--[==[ m2.nn — small torch-like modules.

  local nn = m2.nn
  local mlp = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 2))
  local y = mlp(x)                          -- __call -> forward
  for name, t in mlp:named_parameters() do print(name, t:shape()[1]) end  -- "1.weight", ...

Module basics
  * Fields assigned in __init are recorded in assignment order. Parameters are registered with
    self:param(name, tensor [, {no_decay = true}]); modules (or lists of modules) assigned to
    fields become children. Parameter names are module paths: "blocks.1.mlp.up.weight".
  * model:parameters() -> ordered array of {name = path, tensor = t, no_decay = bool} (a module's
    own parameters first, then its children's, depth-first); model:named_parameters() iterates
    name, tensor in the same deterministic order.
  * Parameters are f32 leaves with requires_grad, initialised N(0, 0.02) from the default RNG
    (m2.seed(n) first for reproducible inits); biases and norm weights are no_decay.
  * model:train() / model:eval() set .training on the whole tree; model:to("f64") converts
    every parameter (e.g. for m2.gradcheck); state_dict / load_state_dict by path.

Declaring parameters once
  A module class lists its parameters and children once, in the order they are made (the order of
  the RNG draws), with the constructor's arguments: Class.params(args...) -> list of entries
    { name, shape, init, decay = bool }   a parameter: init(shape) -> f32 tensor (nn.init.*);
                                          decay = false: no weight decay (no_decay in parameters())
    nn.child(name, Class, args...)        a child module, declared by Class.params(args...)
    nn.child_list(name, {nn.child(1, ...), ...})   a list of child modules ("blocks.1", ...)
    false                                 nothing (an entry the settings leave out: `cond and {...}`)
  self:build(list) in __init makes them in that order; nn.param_shapes(Class, args...) -> the
  {name, shape, no_decay} of every parameter, in model:parameters() order, with nothing allocated
  (m2.models counts a 7B model that way). Inits: nn.init.normal(std), uniform(lo, hi), zeros, ones,
  after_discard(first, init); the mixer layers add theirs (lua/m2/layers/common.lua).

Defining a module
  local Block = nn.class("Block")
  function Block.params(d) return { nn.child("norm", nn.RMSNorm, d), nn.child("mlp", nn.SwiGLU, d, 4 * d) } end
  function Block:__init(d) self:build(Block.params(d)) end
  function Block:forward(x) return x + self.mlp(self.norm(x)) end
]==]

local m2 = require "m2"

local nn = {}

local function fail(msg) m2.error(msg) end

-- ---------------------------------------------------------------------------------------
-- classes
-- ---------------------------------------------------------------------------------------

local Module = { __name = "Module" }
Module.__index = Module
nn.Module = Module

local function is_module(v)
  local mt = type(v) == "table" and getmetatable(v)
  return mt and rawget(mt, "__m2module") == true or false
end
nn.is_module = is_module

-- Record new fields in order (strings not starting with "_", and integer keys).
local function module_newindex(self, k, v)
  rawset(self, k, v)
  if (type(k) == "string" and k:sub(1, 1) ~= "_") or math.type(k) == "integer" then
    local order = rawget(self, "_order")
    order[#order + 1] = k
  end
end

local function module_call(self, ...) return self:forward(...) end

local function module_tostring(self) return self:__repr("") end

-- nn.class(name [, parent]) -> a new module class; instances are made by calling it.
function nn.class(name, parent)
  parent = parent or Module
  local cls = {
    __name = name,
    __m2module = true,
    __newindex = module_newindex,
    __call = module_call,
    __tostring = module_tostring,
  }
  cls.__index = cls
  return setmetatable(cls, {
    __index = parent,
    __call = function(c, ...)
      local self = setmetatable({ _order = {}, _pmeta = {} }, c)
      rawset(self, "training", true)
      self:__init(...)
      return self
    end,
  })
end

function Module:__init() end

function Module:forward()
  fail(string.format("%s has no forward method", getmetatable(self).__name or "module"))
end

-- self:param(name, tensor [, {no_decay = false}]) -> tensor: register a parameter
function Module:param(name, t, opts)
  if type(name) ~= "string" then fail("param: name must be a string") end
  if not m2.is_tensor(t) then fail("param '" .. name .. "': expected a tensor, got " .. type(t)) end
  if not t:requires_grad() then t:requires_grad(true) end
  self._pmeta[name] = { no_decay = opts and opts.no_decay or false }
  self[name] = t
  return t
end

-- ---------------------------------------------------------------------------------------
-- parameters declared once: Class.params(args...) -> entries; self:build(entries)
-- ---------------------------------------------------------------------------------------

-- nn.child(name, Class, args...): a child module entry (Class(args...) when built)
function nn.child(name, cls, ...)
  return { child = name, class = cls, args = table.pack(...) }
end

-- nn.child_list(name, {nn.child(1, Class, args...), ...}): a field holding a list of modules
function nn.child_list(name, items)
  return { child_list = name, items = items }
end

local function entry_error(e, i, what)
  fail(string.format("parameter list entry %d (%s): %s", i, tostring(type(e) == "table" and (e[1] or e.child or
    e.child_list) or e), what))
end

-- check a parameter entry {name, shape, init, decay = bool}
local function check_param_entry(e, i)
  if type(e[1]) ~= "string" then entry_error(e, i, "expected {name, shape, init, decay = bool}") end
  if type(e[2]) ~= "table" then entry_error(e, i, "shape must be a list of sizes") end
  if type(e[3]) ~= "function" then entry_error(e, i, "init must be a function(shape) -> tensor (nn.init.*)") end
  if type(e.decay) ~= "boolean" then entry_error(e, i, "give decay = true or decay = false (weight decay or not)") end
end

-- self:build(list): make every entry in list order (parameters through self:param, children by calling
-- their class) -> self
function Module:build(list)
  for i, e in ipairs(list) do
    if e == false then -- left out by the settings
    elseif type(e) ~= "table" then entry_error(e, i, "expected a table or false")
    elseif e.child ~= nil then
      self[e.child] = e.class(table.unpack(e.args, 1, e.args.n))
    elseif e.child_list ~= nil then
      local ms = {}
      for j, c in ipairs(e.items) do ms[j] = c.class(table.unpack(c.args, 1, c.args.n)) end
      self[e.child_list] = ms
    else
      check_param_entry(e, i)
      if e[1]:find(".", 1, true) then entry_error(e, i, "a parameter name has no '.'; declare a child instead") end
      self:param(e[1], e[3](e[2]), { no_decay = not e.decay })
    end
  end
  return self
end

-- every parameter a declaration list makes, {name = path, shape, no_decay}, in the order of
-- model:parameters(): the module's own parameters first, then each child's in field order
local function declared(list, prefix, out)
  local function path(name) return prefix == "" and tostring(name) or prefix .. "." .. tostring(name) end
  for i, e in ipairs(list) do
    if e ~= false and e.child == nil and e.child_list == nil then
      check_param_entry(e, i)
      out[#out + 1] = { name = path(e[1]), shape = e[2], no_decay = not e.decay }
    end
  end
  local function sub(name, c)
    if type(c.class) ~= "table" or type(c.class.params) ~= "function" then
      fail(string.format("child '%s': its class declares no params(...)", path(name)))
    end
    declared(c.class.params(table.unpack(c.args, 1, c.args.n)), path(name), out)
  end
  for _, e in ipairs(list) do
    if e and e.child ~= nil then sub(e.child, e) end
    if e and e.child_list ~= nil then
      for j, c in ipairs(e.items) do sub(e.child_list .. "." .. j, c) end
    end
  end
  return out
end

-- nn.param_shapes(Class, args...) -> {name, shape, no_decay} of every parameter Class(args...) would
-- make, nothing allocated
function nn.param_shapes(cls, ...)
  if type(cls) ~= "table" or type(cls.params) ~= "function" then
    fail("nn.param_shapes: " .. tostring(type(cls) == "table" and cls.__name or cls) .. " declares no params(...)")
  end
  return declared(cls.params(...), "", {})
end

-- iterate (key, value) of recorded fields in order
local function fields(self)
  local order, i = rawget(self, "_order"), 0
  return function()
    while true do
      i = i + 1
      local k = order[i]
      if k == nil then return nil end
      local v = rawget(self, k)
      if v ~= nil then return k, v end
    end
  end
end

-- children: (name, module) for module fields and modules in list fields ("blocks.1")
function Module:children()
  local out = {}
  for k, v in fields(self) do
    if not self._pmeta[k] then
      if is_module(v) then
        out[#out + 1] = { tostring(k), v }
      elseif type(v) == "table" and not getmetatable(v) and is_module(v[1]) then
        for i, m in ipairs(v) do
          if is_module(m) then out[#out + 1] = { tostring(k) .. "." .. i, m } end
        end
      end
    end
  end
  local i = 0
  return function()
    i = i + 1
    if out[i] then return out[i][1], out[i][2] end
  end
end

-- all modules of the tree, depth-first: (path, module), the root with path ""
function Module:modules()
  local out = {}
  local function walk(m, path)
    out[#out + 1] = { path, m }
    for name, c in m:children() do walk(c, path == "" and name or path .. "." .. name) end
  end
  walk(self, "")
  local i = 0
  return function()
    i = i + 1
    if out[i] then return out[i][1], out[i][2] end
  end
end

-- ordered array of {name = path, tensor = t, no_decay = bool}; a tensor shared by two
-- modules appears once (under its first path)
function Module:parameters()
  local out, seen = {}, {}
  for path, m in self:modules() do
    for k, v in fields(m) do
      local meta = m._pmeta[k]
      if meta and m2.is_tensor(v) and not seen[v] then
        seen[v] = true
        out[#out + 1] = { name = path == "" and tostring(k) or path .. "." .. tostring(k), tensor = v,
                          no_decay = meta.no_decay }
      end
    end
  end
  return out
end

function Module:named_parameters()
  local ps, i = self:parameters(), 0
  return function()
    i = i + 1
    if ps[i] then return ps[i].name, ps[i].tensor end
  end
end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p.tensor:numel() end
  return n
end

function Module:train(mode)
  if mode == nil then mode = true end
  for _, m in self:modules() do rawset(m, "training", mode) end
  return self
end

function Module:eval() return self:train(false) end

function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.tensor.grad = nil end
  return self
end

-- model:to(dtype | device): replace every parameter by a converted leaf (returns self)
function Module:to(what)
  for _, m in self:modules() do
    for k, v in fields(m) do
      if m._pmeta[k] and m2.is_tensor(v) then
        local t = m2.no_grad(function() return v:to(what) end)
        if t ~= v then
          t = t:detach():contiguous()
          t:requires_grad(true)
          rawset(m, k, t)
        end
      end
    end
  end
  return self
end
function Module:float() return self:to("f32") end
function Module:double() return self:to("f64") end

-- {path = tensor} of every parameter
function Module:state_dict()
  local sd = {}
  for _, p in ipairs(self:parameters()) do sd[p.name] = p.tensor end
  return sd
end

-- copy tensors from {path = tensor} into the parameters (shapes must match). strict (default
-- true) also fails on missing or unexpected names.
function Module:load_state_dict(sd, opts)
  local strict = not (opts and opts.strict == false)
  local have = {}
  for _, p in ipairs(self:parameters()) do
    have[p.name] = true
    local src = sd[p.name]
    if src == nil then
      if strict then fail("load_state_dict: missing parameter '" .. p.name .. "'") end
    else
      local a, b = p.tensor:shape(), src:shape()
      if table.concat(a, ",") ~= table.concat(b, ",") then
        fail(string.format("load_state_dict: '%s' has shape (%s), the state dict has (%s)", p.name,
          table.concat(a, ", "), table.concat(b, ", ")))
      end
      p.tensor:copy_(src)
    end
  end
  if strict then
    for name in pairs(sd) do
      if not have[name] then fail("load_state_dict: unexpected parameter '" .. name .. "'") end
    end
  end
  return self
end

-- printing: Name(extra) with children indented
function Module:extra_repr() return "" end

function Module:__repr(indent)
  local name = getmetatable(self).__name or "Module"
  local head = name .. "(" .. self:extra_repr()
  local lines = {}
  for cname, c in self:children() do
    lines[#lines + 1] = indent .. "  (" .. cname .. "): " .. c:__repr(indent .. "  ")
  end
  if #lines == 0 then return head .. ")" end
  if self:extra_repr() ~= "" then head = head .. "," end
  return head .. "\n" .. table.concat(lines, "\n") .. "\n" .. indent .. ")"
end

-- ---------------------------------------------------------------------------------------
-- argument checks (located at the caller's line)
-- ---------------------------------------------------------------------------------------

local function check_pos_int(v, what, ctor)
  if math.type(v) ~= "integer" or v <= 0 then
    fail(string.format("%s: %s must be a positive integer, got %s", ctor, what, tostring(v)))
  end
  return v
end

local check_opts = require("m2.opts").check

-- ---------------------------------------------------------------------------------------
-- inits: init(shape) -> a new f32 tensor, drawn from the default RNG
-- ---------------------------------------------------------------------------------------

local init = {}
nn.init = init
function init.normal(std) return function(shape) return m2.randn(shape, { std = std }) end end
function init.uniform(lo, hi) return function(shape) return m2.rand(shape, { lo = lo, hi = hi }) end end
function init.zeros(shape) return m2.zeros(shape) end
function init.ones(shape) return m2.ones(shape) end
-- draw `first` and drop it, then draw `then_init`: keeps later draws where they were when a parameter's init
-- changed after a first draw (a seed then still gives the models it gave before)
function init.after_discard(first, then_init)
  return function(shape)
    first(shape)
    return then_init(shape)
  end
end

-- ---------------------------------------------------------------------------------------
-- layers
-- ---------------------------------------------------------------------------------------

-- Linear(in, out [, {bias = true, init_std = 0.02, init}]): y = x W^T + b, W (out, in)
-- init: the weight's init (default nn.init.normal(init_std)); the bias starts at 0
local Linear = nn.class("Linear")
nn.Linear = Linear
function Linear.params(din, dout, opts)
  check_pos_int(din, "in_features", "Linear")
  check_pos_int(dout, "out_features", "Linear")
  opts = check_opts(opts, "Linear", { bias = true, init_std = true, init = true })
  return {
    { "weight", { dout, din }, opts.init or init.normal(opts.init_std or 0.02), decay = true },
    opts.bias ~= false and { "bias", { dout }, init.zeros, decay = false },
  }
end
function Linear:__init(din, dout, opts)
  local list = Linear.params(din, dout, opts)
  self.in_features, self.out_features = din, dout
  self:build(list)
end
function Linear:forward(x) return m2.linear(x, self.weight, self.bias) end
function Linear:extra_repr()
  return string.format("%d -> %d%s", self.in_features, self.out_features, self.bias and ", bias" or "")
end

-- Embedding(V, d [, {init_std = 0.02}]): ids (...) int, 0-based -> (..., d)
local Embedding = nn.class("Embedding")
nn.Embedding = Embedding
function Embedding.params(V, d, opts)
  check_pos_int(V, "num_embeddings", "Embedding")
  check_pos_int(d, "dim", "Embedding")
  opts = check_opts(opts, "Embedding", { init_std = true })
  return { { "weight", { V, d }, init.normal(opts.init_std or 0.02), decay = true } }
end
function Embedding:__init(V, d, opts)
  local list = Embedding.params(V, d, opts)
  self.num_embeddings, self.dim = V, d
  self:build(list)
end
function Embedding:forward(ids) return m2.embedding(self.weight, ids) end
function Embedding:extra_repr() return string.format("%d, %d", self.num_embeddings, self.dim) end

-- RMSNorm(d [, {eps = 1e-5}]): x / rms(x) * weight over the last dim; weight starts at 1
local RMSNorm = nn.class("RMSNorm")
nn.RMSNorm = RMSNorm
function RMSNorm.params(d, opts)
  check_pos_int(d, "dim", "RMSNorm")
  check_opts(opts, "RMSNorm", { eps = true })
  return { { "weight", { d }, init.ones, decay = false } }
end
function RMSNorm:__init(d, opts)
  local list = RMSNorm.params(d, opts)
  self.dim, self.eps = d, opts and opts.eps or 1e-5
  self:build(list)
end
function RMSNorm:forward(x) return m2.rmsnorm(x, self.weight, self.eps) end
function RMSNorm:extra_repr() return string.format("%d, eps=%g", self.dim, self.eps) end

-- SwiGLU(d, hidden [, {init_std = 0.02, bias = false, down_init}]): down(silu(gate(x)) * up(x))
-- down_init: the init of down.weight (default nn.init.normal(init_std), as gate and up)
local SwiGLU = nn.class("SwiGLU")
nn.SwiGLU = SwiGLU
function SwiGLU.params(d, hidden, opts)
  check_pos_int(d, "dim", "SwiGLU")
  check_pos_int(hidden, "hidden", "SwiGLU")
  opts = check_opts(opts, "SwiGLU", { init_std = true, bias = true, down_init = true })
  local lo = { bias = opts.bias or false, init_std = opts.init_std }
  return {
    nn.child("gate", Linear, d, hidden, lo),
    nn.child("up", Linear, d, hidden, lo),
    nn.child("down", Linear, hidden, d, { bias = lo.bias, init_std = lo.init_std, init = opts.down_init }),
  }
end
function SwiGLU:__init(d, hidden, opts) self:build(SwiGLU.params(d, hidden, opts)) end
function SwiGLU:forward(x) return self.down(m2.swiglu(self.gate(x), self.up(x))) end -- silu(gate) * up, one op

-- Sequential(m1, m2, ...): children "1", "2", ...; forward chains them
local Sequential = nn.class("Sequential")
nn.Sequential = Sequential
function Sequential:__init(...)
  for i = 1, select("#", ...) do self:add((select(i, ...))) end
end
function Sequential:add(m)
  if not is_module(m) then fail("Sequential: entry " .. (#self + 1) .. " is not a module") end
  self[#self + 1] = m
  return self
end
function Sequential:forward(x)
  for i = 1, #self do x = self[i](x) end
  return x
end
function Sequential:children()
  local i = 0
  return function()
    i = i + 1
    if self[i] then return tostring(i), self[i] end
  end
end

-- parameter-free activations
local function activation(name, fn)
  local cls = nn.class(name)
  cls.forward = function(_, x) return fn(x) end
  nn[name] = cls
end
activation("ReLU", m2.relu)
activation("SiLU", m2.silu)
activation("Tanh", m2.tanh)
activation("Sigmoid", m2.sigmoid)
activation("Identity", function(x) return x end)

return nn
