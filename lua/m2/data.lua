--[==[ m2.data — datasets for m2lab scripts.

  local data = m2.data.state_tracking{ group = "S3", length = 32, batch = 64, seed = 0,
                                       random_length = false }
  local x, y = data:batch(step)                  -- (B, T) int64 each; step = 0, 1, 2, ...
  local x, y = data:eval_batch(256, i [, B])     -- held-out batch i (0, 1, ...) at length 256
  data.order, data.vocab, data.classes            -- |G| (inputs and targets are element ids 0 .. |G|-1)

state_tracking: the group word problem (DESIGN 5, datasets/groups.c). x_t are i.i.d. uniform
group elements, y_t = x_1 * ... * x_t (the running product). Batches are deterministic in
(seed, index) and independent of each other, so a resumed run sees the same data.
random_length: each training sequence gets a length uniform in 1..length; later positions have
input 0 and target -100 (ignored by the loss). Evaluation batches always have the full length
and come from a separate stream (seed xor a constant), disjoint from the training batches.
Groups: "S3" (default), "S4", "S5", "A4", "A5", "Z2" .. "Z1000".
]==]

local m2 = require "m2"

local data = {}

local EVAL_STREAM = 0x5DEECE66D -- xor-ed into the seed for evaluation batches

local ST = {}
ST.__index = ST

local KNOWN = { group = true, length = true, batch = true, seed = true, random_length = true }

function data.state_tracking(o)
  o = o or {}
  if type(o) ~= "table" then m2.error("m2.data.state_tracking: expected a table of settings") end
  for k in pairs(o) do
    if not KNOWN[k] then
      m2.error("m2.data.state_tracking: unknown setting '" .. tostring(k) ..
        "' (known: batch, group, length, random_length, seed)")
    end
  end
  if not m2.core.group then
    m2.error("m2.data.state_tracking: this m2lab has no group binding (m2.core.group); lua/bind_data.c must be " ..
      "registered from luaopen_m2_core (lua/bind_module.c: m2lua_open_data)")
  end
  local self = setmetatable({}, ST)
  self.group_name = o.group or "S3"
  self.length = o.length or 32
  self.batch_size = o.batch or 64
  self.seed = o.seed or 0
  self.random_length = o.random_length or false
  for _, k in ipairs { "length", "batch_size" } do
    if math.type(self[k]) ~= "integer" or self[k] <= 0 then
      m2.error(string.format("m2.data.state_tracking: %s must be a positive integer, got %s",
        k == "batch_size" and "batch" or k, tostring(self[k])))
    end
  end
  if math.type(self.seed) ~= "integer" then m2.error("m2.data.state_tracking: seed must be an integer") end
  self.group = m2.core.group(self.group_name) -- raises (at the script line) for an unknown group
  self.order = self.group:order()
  self.vocab, self.classes = self.order, self.order
  return self
end

-- training batch number `index` (0, 1, 2, ...) -> x, y (B, T) int64
function ST:batch(index)
  if math.type(index) ~= "integer" or index < 0 then m2.error("state_tracking:batch: index must be an integer >= 0") end
  return self.group:batch { seed = self.seed, index = index, batch = self.batch_size, length = self.length,
                            random_length = self.random_length }
end

-- held-out batch `index` at `length` (full length) -> x, y (B, T) int64; B defaults to the training batch
function ST:eval_batch(length, index, batch)
  if math.type(length) ~= "integer" or length <= 0 then
    m2.error("state_tracking:eval_batch: length must be a positive integer")
  end
  index = index or 0
  if math.type(index) ~= "integer" or index < 0 then
    m2.error("state_tracking:eval_batch: index must be an integer >= 0")
  end
  return self.group:batch { seed = self.seed ~ EVAL_STREAM, index = index, batch = batch or self.batch_size,
                            length = length, random_length = false }
end

-- a Lua reference: the running product of a list of element ids (for tests)
function ST:running_product(xs)
  local out, acc = {}, nil
  for t, e in ipairs(xs) do
    acc = t == 1 and e or self.group:mul(acc, e)
    out[t] = acc
  end
  return out
end

function ST:__tostring()
  return string.format("state_tracking(%s, length %d%s, batch %d, seed %d)", self.group_name, self.length,
    self.random_length and " (random 1..L)" or "", self.batch_size, self.seed)
end

return data
