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

  local data = m2.data.tokens{ path = "data/pydoc-byte", length = 256, batch = 16, split = "train", seed = 0,
                               rank = 0, world = 1 }
  local x, y = data:batch(step)                  -- (B, T) int64: windows of T + 1 tokens, y = x shifted by one
  local r = data:evaluate(model [, {device, loss, batches}])  -- {val_loss = nats/token, val_bpb = bits/byte}
  data.vocab, data.eot, data.bytes_per_token, data.meta       -- from the sidecar meta.json (when there is one)

tokens: language-model token shards (llm.c's .bin format, datasets/shards.h; datasets/prepare.py writes them).
path: a directory holding *_train*.bin / *_val*.bin shards and meta.json (what datasets/prepare.py and
datasets/corpus.sh write), a glob pattern, one file, or a list of files (then split only names the set).
Batch `index` is a pure function of (seed, index): tiles of T tokens in an order drawn per epoch (split "train";
split "val" reads the tiles in file order), rank r of world R takes every R-th window. Settings: length (T, 256),
batch (B, 16), split ("train"), seed (0), rank (0), world (1), vocab (default: the sidecar's; ids are checked
< vocab when the shards open), shuffle (default: split == "train"), eval_batches (8), eval_batch (B: the batch of
the validation windows), bytes_per_token (default: the sidecar's val bytes / val tokens; 1 for byte-level),
val_path (the val split when path is a pattern or a list, e.g. llm.c's "dev/data/x/x_val.bin").
m2.train evaluates such a dataset by itself (its evaluate method): /eval/val_loss and /eval/val_bpb at every
eval_every steps and after the last, over the first eval_batches batches of the val split (the same windows every
time; with world > 1 each rank's own).
]==]

local m2 = require "m2"

local data = {}

-- ---------------------------------------------------------------------------------------
-- token shards (language modelling)
-- ---------------------------------------------------------------------------------------

local TK = {}
TK.__index = TK
local TOKENS_KNOWN = { path = true, length = true, batch = true, split = true, seed = true, rank = true, world = true,
                       vocab = true, shuffle = true, eval_batches = true, eval_batch = true, bytes_per_token = true,
                       val_path = true }

local function tk_fail(msg) m2.error("m2.data.tokens: " .. msg) end

-- "dir" when path is a directory, "file" when it is readable, nil otherwise
local function path_kind(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local _, err = f:read(0)
  f:close()
  if err and err:find("Is a directory", 1, true) then return "dir" end
  return "file"
end

local function read_meta(file)
  local f = io.open(file, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local ok, meta = pcall(require("m2.runs").json_decode, text)
  if not ok or type(meta) ~= "table" then
    tk_fail(string.format("%s: the shards' sidecar does not parse as a JSON object (%s)", file,
      tostring(meta):gsub("^[^:]*:%d+: ", "")))
  end
  return meta
end

function data.tokens(o)
  if type(o) ~= "table" then tk_fail("expected a table of settings") end
  for k in pairs(o) do
    if not TOKENS_KNOWN[k] then
      local names = {}
      for n in pairs(TOKENS_KNOWN) do names[#names + 1] = n end
      table.sort(names)
      tk_fail(string.format("unknown setting '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
  end
  if not m2.core.shards then tk_fail("this m2lab has no token-shard binding (lua/bind_data.c)") end
  local self = setmetatable({}, TK)
  self.path, self.split = o.path, o.split or "train"
  self.length, self.batch_size = o.length or 256, o.batch or 16
  self.seed, self.rank, self.world = o.seed or 0, o.rank or 0, o.world or 1
  self.eval_batches = o.eval_batches or 8
  self.eval_batch = o.eval_batch or self.batch_size
  if self.split ~= "train" and self.split ~= "val" then
    tk_fail("split must be \"train\" or \"val\", got " .. tostring(self.split))
  end
  self.shuffle = o.shuffle
  if self.shuffle == nil then self.shuffle = self.split == "train" end
  for _, k in ipairs { "length", "batch_size", "world", "eval_batch" } do
    if math.type(self[k]) ~= "integer" or self[k] <= 0 then
      tk_fail(string.format("%s must be a positive integer, got %s", k == "batch_size" and "batch" or k,
        tostring(self[k])))
    end
  end
  for _, k in ipairs { "seed", "rank", "eval_batches" } do
    if math.type(self[k]) ~= "integer" then tk_fail(k .. " must be an integer, got " .. tostring(self[k])) end
  end
  if self.rank < 0 or self.rank >= self.world then
    tk_fail(string.format("rank %d is not in 0 .. world - 1 = %d", self.rank, self.world - 1))
  end
  -- the files: a directory of splits, a pattern / file, or a list
  local files, dir
  if type(o.path) == "table" then
    files = o.path
    dir = tostring(files[1] or ""):match("^(.*)/[^/]*$") or "."
  elseif type(o.path) == "string" then
    if path_kind(o.path) == "dir" then
      dir = o.path:gsub("/+$", "")
      files = dir .. "/*_" .. self.split .. "*.bin"
    else
      files = o.path
      dir = o.path:match("^(.*)/[^/]*$") or "."
    end
  else
    tk_fail("path must be a directory of shards, a glob pattern, a file or a list of files")
  end
  self.meta = read_meta(dir .. "/meta.json")
  local tok = self.meta and self.meta.tokenizer or {}
  self.vocab = o.vocab or tok.vocab
  self.eot = tok.eot
  self.tokenizer = tok.kind
  if self.vocab ~= nil and (math.type(self.vocab) ~= "integer" or self.vocab <= 0) then
    tk_fail("vocab must be a positive integer, got " .. tostring(self.vocab))
  end
  self.shards = m2.core.shards(files, { vocab = self.vocab })
  -- bytes per token (for bits per byte): given, or the sidecar's val split, or 1 for byte-level tokens
  self.bytes_per_token, self.bytes_per_token_opt, self.val_path = o.bytes_per_token, o.bytes_per_token, o.val_path
  local sv = self.meta and self.meta.splits and self.meta.splits[self.split]
  if self.bytes_per_token == nil and sv and (sv.tokens or 0) > 0 and sv.bytes then
    self.bytes_per_token = sv.bytes / sv.tokens
  elseif self.bytes_per_token == nil and self.tokenizer == "byte" then
    self.bytes_per_token = 1
  end
  self.windows = self.shards:windows(self.length)
  if self.windows == 0 then
    tk_fail(string.format("%s: no window of %d tokens fits in the %s split (%d tokens in %d shard(s))",
      self.shards:path(1), self.length + 1, self.split, self.shards:tokens(), self.shards:count()))
  end
  self.opts = { seed = self.seed, batch = self.batch_size, length = self.length, rank = self.rank,
                world = self.world, shuffle = self.shuffle }
  return self
end

-- training batch number `index` (0, 1, 2, ...) -> x, y (B, T) int64
function TK:batch(index)
  if math.type(index) ~= "integer" or index < 0 then m2.error("tokens:batch: index must be an integer >= 0") end
  self.opts.index = index
  return self.shards:batch(self.opts)
end

-- the validation split of the same shards (read in file order), made once
function TK:val()
  if self.split == "val" then return self end
  if not self.val_data then
    local vpath = self.val_path or self.path
    if vpath == self.path and path_kind(tostring(self.path)) ~= "dir" then
      tk_fail("path names the files of one split: give the validation shards as val_path (a pattern or a list), or " ..
        "a directory with *_train*.bin and *_val*.bin shards as path")
    end
    self.val_data = data.tokens { path = vpath, bytes_per_token = self.bytes_per_token_opt, length = self.length, batch = self.eval_batch, split = "val",
                                  seed = self.seed, rank = self.rank, world = self.world, vocab = self.vocab,
                                  eval_batches = self.eval_batches }
  end
  return self.val_data
end

-- mean validation loss (nats/token) over the first eval_batches batches of the val split, and bits per byte
-- opts: device (where the model is), loss (function(model, x, y) -> scalar; default: the model's), batches
function TK:evaluate(model, opts)
  opts = opts or {}
  local v = self:val()
  local n = math.min(opts.batches or self.eval_batches, v.windows // (v.batch_size * v.world))
  if n < 1 then
    tk_fail(string.format("the val split has %d windows of %d tokens: fewer than one batch of %d per rank", v.windows,
      v.length, v.batch_size))
  end
  local loss = opts.loss or function(m, x, y)
    if type(m.loss) == "function" then return (m:loss(x, y)) end
    return m2.cross_entropy(m(x), y, -100)
  end
  local total = 0.0
  m2.no_grad(function()
    for i = 0, n - 1 do
      local x, y = v:batch(i)
      if opts.device and opts.device ~= "cpu" then x, y = x:to(opts.device), y:to(opts.device) end
      total = total + loss(model, x, y):item()
    end
  end)
  local out = { val_loss = total / n }
  if v.bytes_per_token then out.val_bpb = out.val_loss / math.log(2) / v.bytes_per_token end
  return out
end

function TK:__tostring()
  return string.format("tokens(%s, %s, %d shard(s), %d tokens, T %d, B %d, seed %d%s)", tostring(self.path),
    self.split, self.shards:count(), self.shards:tokens(), self.length, self.batch_size, self.seed,
    self.world > 1 and string.format(", rank %d of %d", self.rank, self.world) or "")
end

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
