--[==[ m2.safetensors — weights in and out in the safetensors format (DESIGN 9), the one the field shares
(Hugging Face's `safetensors` package reads and writes it; notebooks/check_safetensors.py does so in the tests).

  local st = m2.safetensors
  st.save("w.safetensors", model [, {metadata = {key = "text"}}])   -- names = module paths ("blocks.1.mlp.up.weight")
  st.save("w.safetensors", {{name = "a", tensor = t}, ...})         -- or any list of named tensors (or {name = t})
  st.load_into(model, "w.safetensors") -> model   -- every parameter by its module path; see "Import" below
  st.load("w.safetensors") -> {name = tensor}     -- every tensor, on the CPU
  st.header("w.safetensors") -> {path, size, data_start, metadata = {k = v}, names = {...} (file order),
                                 tensors = {name = {dtype = "f32", st_dtype = "F32", shape = {...},
                                                    data_offsets = {a, b}, offset = data_start + a}}}
  Run files: m2.runs.export_safetensors(run, out [, step]) (and `m2lab export RUN.h5 OUT.safetensors [step=N]`)
  writes a checkpoint's parameters; m2.runs.load_model(run [, step]) rebuilds a model to import into.

The format. A file is
  bytes 0-7      N, the header's length: unsigned 64-bit little-endian
  bytes 8-8+N    the header: UTF-8 JSON, one object: for every tensor
                   "name": {"dtype": "F32", "shape": [d1, ...], "data_offsets": [begin, end]}
                 plus an optional "__metadata__": {"key": "text", ...} (string values only); m2lab pads it with
                 spaces so the data starts 8-byte aligned
  the rest       the tensors' bytes, row-major, little-endian; offsets are relative to the end of the header, and
                 the tensors tile the data exactly (no gap, no overlap, nothing after the last one)
dtypes: F32, F64, BF16, I32, I64 (m2lab's f32, f64, bf16, i32, i64); a file with another dtype (F16, U8, ...) is
refused naming the tensor. Scalars have shape [].

Export (st.save): tensors are written in the order given (a module: model:parameters() order) to "<path>.partial",
which is renamed over path only when complete: an existing file is never left half-written. Metadata values are
written as strings; m2lab's own exports record producer, source run, step and the run's config_json.

Import (st.load_into) is strict and atomic: every parameter of the model must be in the file with the same shape
and the same dtype, and every tensor of the file must be a parameter of the model; the file's header is checked
whole (valid JSON, known dtypes, offsets that tile the data, a file as long as the header says) and every tensor
is read before the first parameter changes. Any failure is an error naming the file and the tensor (missing,
extra, wrong shape, wrong dtype, truncated file, bad JSON) and leaves the model as it was.
]==]

local m2 = require "m2"
local core = m2.core
local runs = require "m2.runs"

local st = {}

-- safetensors dtype <-> m2lab dtype, and element sizes
local TO_ST = { f32 = "F32", f64 = "F64", bf16 = "BF16", i32 = "I32", i64 = "I64" }
local FROM_ST = { F32 = "f32", F64 = "f64", BF16 = "bf16", I32 = "i32", I64 = "i64" }
local SIZE = { F32 = 4, F64 = 8, BF16 = 2, I32 = 4, I64 = 8 }
local MAX_HEADER = 100 * 1000 * 1000 -- the reference implementation's limit
local MAX_DIMS = 6                   -- m2lab tensors (M2_MAX_DIMS)

local function fail(msg) m2.error("m2.safetensors: " .. msg) end

local function shape_text(s) return "(" .. table.concat(s, ", ") .. ")" end

local function is_module(x) return type(x) == "table" and type(x.parameters) == "function" end

-- ---------------------------------------------------------------------------------------
-- export
-- ---------------------------------------------------------------------------------------

-- what -> list of {name, dtype, shape, tensor | read = function() -> tensor}
local function entries_of(what)
  local out = {}
  if is_module(what) then
    for _, p in ipairs(what:parameters()) do out[#out + 1] = { name = p.name, tensor = p.tensor } end
  elseif type(what) == "table" and what[1] ~= nil then
    for i, e in ipairs(what) do
      local ok = type(e) == "table" and type(e.name) == "string" and
        (m2.is_tensor(e.tensor) or type(e.read) == "function")
      if not ok then
        fail(string.format("save: entry %d is not a {name = string, tensor = tensor} record", i))
      end
      out[#out + 1] = e
    end
  elseif type(what) == "table" then
    local names = {}
    for k, v in pairs(what) do
      if type(k) ~= "string" or not m2.is_tensor(v) then
        fail("save: expected a module, a list of {name =, tensor =} records or a table {name = tensor}; key " ..
          tostring(k) .. " holds a " .. type(v))
      end
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do out[#out + 1] = { name = k, tensor = what[k] } end
  else
    fail("save: expected a module, a list of {name =, tensor =} records or a table {name = tensor}, got " .. type(what))
  end
  local seen = {}
  for _, e in ipairs(out) do
    if e.name == "" or e.name == "__metadata__" then fail(string.format("save: invalid tensor name %q", e.name)) end
    if seen[e.name] then fail(string.format("save: tensor name '%s' appears twice", e.name)) end
    seen[e.name] = true
    if e.tensor then e.dtype, e.shape = e.tensor:dtype(), e.tensor:shape() end
    if not TO_ST[e.dtype] then fail(string.format("save: tensor '%s' has dtype %s, which has no safetensors name",
      e.name, tostring(e.dtype))) end
  end
  return out
end

local function json_string(s) return runs.json_encode(tostring(s)) end

-- the header text (padded to 8-byte alignment of the data) for entries with .data_offsets set
local function header_text(entries, metadata)
  local parts = {}
  if metadata and next(metadata) ~= nil then
    local keys, kv = {}, {}
    for k in pairs(metadata) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for i, k in ipairs(keys) do
      local v = metadata[k]
      if v == nil then v = metadata[tonumber(k)] end
      kv[i] = json_string(k) .. ":" .. json_string(v)
    end
    parts[1] = '"__metadata__":{' .. table.concat(kv, ",") .. "}"
  end
  for _, e in ipairs(entries) do
    parts[#parts + 1] = string.format('%s:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', json_string(e.name),
      TO_ST[e.dtype], table.concat(e.shape, ","), e.data_offsets[1], e.data_offsets[2])
  end
  local text = "{" .. table.concat(parts, ",") .. "}"
  return text .. string.rep(" ", (8 - (8 + #text) % 8) % 8)
end

-- st.save(path, what [, {metadata = {k = v}}]) -> {path, tensors = n, bytes = file size}
function st.save(path, what, opts)
  if type(path) ~= "string" or path == "" then fail("save: path must be a non-empty string") end
  opts = opts or {}
  if type(opts) ~= "table" then fail("save: options must be a table {metadata = {...}}") end
  for k in pairs(opts) do
    if k ~= "metadata" then fail("save: unknown option '" .. tostring(k) .. "' (known: metadata)") end
  end
  if opts.metadata ~= nil and type(opts.metadata) ~= "table" then
    fail("save: metadata must be a table {key = text}")
  end
  local entries = entries_of(what)
  local pos = 0
  for _, e in ipairs(entries) do
    local n = SIZE[TO_ST[e.dtype]]
    for _, d in ipairs(e.shape) do n = n * d end
    e.data_offsets = { pos, pos + n }
    pos = pos + n
  end
  local hdr = header_text(entries, opts.metadata)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local ok, err = pcall(core.mkdir_p, dir)
    if not ok then fail(string.format("%s: cannot create its directory: %s", path, err)) end
  end
  local w <close> = core.binfile_create(path)
  w:write(string.pack("<I8", #hdr))
  w:write(hdr)
  local start = w:tell()
  for _, e in ipairs(entries) do
    local t = e.tensor or e.read()
    local shape = t:shape()
    if t:dtype() ~= e.dtype or table.concat(shape, ",") ~= table.concat(e.shape, ",") then
      fail(string.format("%s: tensor '%s' is %s %s, but %s %s was announced", path, e.name, t:dtype(),
        shape_text(shape), e.dtype, shape_text(e.shape)))
    end
    w:write(t)
    if not e.tensor and t.release then t:release() end
    if w:tell() - start ~= e.data_offsets[2] then
      fail(string.format("%s: tensor '%s': wrote %d bytes of data in all, expected %d", path, e.name, w:tell() - start,
        e.data_offsets[2]))
    end
  end
  local bytes = w:tell()
  w:commit()
  return { path = path, tensors = #entries, bytes = bytes }
end

-- ---------------------------------------------------------------------------------------
-- import
-- ---------------------------------------------------------------------------------------

local function is_int(x) return math.type(x) == "integer" end

-- st.header(path) -> the checked header (see the top of the file); errors name the file and the tensor
function st.header(path)
  if type(path) ~= "string" then fail("header: path must be a string") end
  local f <close> = core.binfile_open(path)
  local size = f:size()
  if size < 8 then
    fail(string.format("%s: truncated: %d bytes, not even the 8-byte header length of a safetensors file", path, size))
  end
  local n = string.unpack("<i8", f:read(0, 8))
  if n < 2 or n > MAX_HEADER then
    fail(string.format("%s: not a safetensors file: header length %s (expected 2 .. %d bytes)", path,
      n < 0 and "above 2^63" or tostring(n), MAX_HEADER))
  end
  if n > size - 8 then
    fail(string.format("%s: truncated: the header is %d bytes long but the file has only %d bytes after the length",
      path, n, size - 8))
  end
  local text = f:read(8, n)
  local ok, hdr = pcall(runs.json_decode, text)
  if not ok then
    fail(string.format("%s: the header is not valid JSON (%s)", path, tostring(hdr):match("json_decode: (.*)$") or hdr))
  end
  if type(hdr) ~= "table" or hdr == runs.null or (hdr[1] ~= nil) then
    fail(string.format("%s: the header is not a JSON object", path))
  end
  local out = { path = path, size = size, data_start = 8 + n, metadata = {}, tensors = {}, names = {} }
  local list = {}
  for name, e in pairs(hdr) do
    if name == "__metadata__" then
      if type(e) ~= "table" or e == runs.null then
        fail(string.format("%s: __metadata__ is not a JSON object", path))
      end
      for k, v in pairs(e) do
        if type(v) ~= "string" then
          fail(string.format("%s: __metadata__ entry '%s' is not a string", path, tostring(k)))
        end
        out.metadata[k] = v
      end
    else
      local function bad(what) fail(string.format("%s: tensor '%s': %s", path, name, what)) end
      if type(e) ~= "table" or e == runs.null then bad("its header entry is not an object") end
      if type(e.dtype) ~= "string" then bad("no dtype") end
      if not SIZE[e.dtype] then
        bad(string.format("dtype %s is not supported (m2lab reads F32, F64, BF16, I32, I64)", e.dtype))
      end
      if type(e.shape) ~= "table" or e.shape == runs.null then bad("no shape list") end
      if #e.shape > MAX_DIMS then bad(string.format("%d dims; m2lab tensors have at most %d", #e.shape, MAX_DIMS)) end
      local numel = 1
      for i, d in ipairs(e.shape) do
        if not is_int(d) or d < 0 then bad(string.format("shape entry %d is %s, not a size", i, tostring(d))) end
        numel = numel * d
      end
      for k in pairs(e.shape) do if not is_int(k) or k < 1 or k > #e.shape then bad("shape is not a list") end end
      local o = e.data_offsets
      if type(o) ~= "table" or #o ~= 2 or not is_int(o[1]) or not is_int(o[2]) or o[1] < 0 or o[2] < o[1] then
        bad("data_offsets must be [begin, end] with 0 <= begin <= end")
      end
      local want = numel * SIZE[e.dtype]
      if o[2] - o[1] ~= want then
        bad(string.format("data_offsets [%d, %d] span %d bytes, but %s %s needs %d", o[1], o[2], o[2] - o[1], e.dtype,
          shape_text(e.shape), want))
      end
      local t = { name = name, dtype = FROM_ST[e.dtype], st_dtype = e.dtype, shape = e.shape,
                  data_offsets = { o[1], o[2] }, offset = out.data_start + o[1] }
      out.tensors[name] = t
      list[#list + 1] = t
    end
  end
  table.sort(list, function(a, b)
    if a.data_offsets[1] ~= b.data_offsets[1] then return a.data_offsets[1] < b.data_offsets[1] end
    return a.data_offsets[2] < b.data_offsets[2]
  end)
  local pos, prev = 0, nil
  for _, t in ipairs(list) do
    if t.data_offsets[1] ~= pos then
      fail(string.format("%s: tensor '%s': data_offsets [%d, %d] %s %s (the tensors must tile the data exactly)", path,
        t.name, t.data_offsets[1], t.data_offsets[2], t.data_offsets[1] < pos and "overlap" or "leave a gap after",
        prev and ("tensor '" .. prev .. "'") or "the header"))
    end
    pos, prev = t.data_offsets[2], t.name
    out.names[#out.names + 1] = t.name
  end
  local have = size - out.data_start
  if pos > have then
    fail(string.format("%s: truncated: the header describes %d bytes of tensor data (tensor '%s' ends at %d), " ..
      "but the file has %d", path, pos, prev, pos, have))
  end
  if pos < have then
    fail(string.format("%s: %d bytes after the last tensor's data (the header describes %d bytes, the file has " ..
      "%d): a damaged file", path, have - pos, pos, have))
  end
  return out
end

-- read the tensors `names` (default: all) of a checked header -> {name = tensor} on the CPU
local function read_all(h, names)
  local f <close> = core.binfile_open(h.path)
  if f:size() ~= h.size then fail(string.format("%s: the file changed while it was read", h.path)) end
  local out = {}
  for _, name in ipairs(names or h.names) do
    local e = h.tensors[name]
    out[name] = f:read_tensor(e.offset, e.dtype, e.shape)
  end
  return out
end

-- st.load(path) -> {name = tensor} (CPU), metadata
function st.load(path)
  local h = st.header(path)
  return read_all(h), h.metadata
end

local function list_text(names, limit)
  limit = limit or 5
  local parts = {}
  for i = 1, math.min(#names, limit) do parts[i] = "'" .. names[i] .. "'" end
  if #names > limit then parts[#parts + 1] = string.format("and %d more", #names - limit) end
  return table.concat(parts, ", ")
end

-- st.load_into(model, path) -> model, metadata: strict and atomic (see the top of the file)
function st.load_into(model, path)
  if not is_module(model) then fail("load_into: the first argument must be an m2.nn module") end
  local h = st.header(path)
  local params = model:parameters()
  local missing, known = {}, {}
  for _, p in ipairs(params) do
    known[p.name] = true
    local e = h.tensors[p.name]
    if not e then
      missing[#missing + 1] = p.name
    else
      local mine = p.tensor:shape()
      if table.concat(mine, ",") ~= table.concat(e.shape, ",") then
        fail(string.format("%s: tensor '%s' has shape %s in the file but %s in the model", path, p.name,
          shape_text(e.shape), shape_text(mine)))
      end
      if p.tensor:dtype() ~= e.dtype then
        fail(string.format("%s: tensor '%s' has dtype %s (%s) in the file but %s in the model", path, p.name,
          e.st_dtype, e.dtype, p.tensor:dtype()))
      end
    end
  end
  if #missing > 0 then
    fail(string.format("%s: the model's parameter %s is missing from the file (%d of %d missing%s)", path,
      "'" .. missing[1] .. "'", #missing, #params, #missing > 1 and (": " .. list_text(missing)) or ""))
  end
  local extra = {}
  for _, name in ipairs(h.names) do if not known[name] then extra[#extra + 1] = name end end
  if #extra > 0 then
    fail(string.format("%s: tensor '%s' in the file is not a parameter of the model (%d extra%s)", path, extra[1],
      #extra, #extra > 1 and (": " .. list_text(extra)) or ""))
  end
  local loaded = read_all(h)
  for _, p in ipairs(params) do p.tensor:copy_(loaded[p.name]) end
  return model, h.metadata
end

return st
