-- test_safetensors.lua — weights in and out (lua/m2/safetensors.lua, m2.runs.load_model / export_safetensors,
-- `m2lab export`): a model round trip is bit-identical; the file layout is the format's (read back by hand and
-- a hand-packed file read by m2lab); a checkpoint rebuilt from its run file equals the checkpoint; every bad input
-- (missing, extra, wrong shape / dtype, truncated file, bad JSON, bad offsets, ...) is an error naming the file
-- and the tensor and leaves the model as it was; an export that fails leaves no file. Fresh random seeds each run.
-- (The reference implementation's check: tests/safetensors_python.sh.)
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs
local st = m2.safetensors

local seed = math.random(1, 1000000)
print("seed " .. seed)
m2.seed(seed)

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)

local SPEC = { vocab = 13, d = 16, layers = "MGSA", m2rnn = { k = 4, v = 2, heads = 2 },
               gdn = { heads = 2, k = 4, v = 4 }, mamba2 = { heads = 2, head_dim = 4, state = 4 },
               attention = { heads = 2, head_dim = 8 }, mlp = { kind = "swiglu", hidden = 24 } }

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- every parameter's values (a snapshot to compare with)
local function snapshot(model)
  local out = {}
  for _, p in ipairs(model:parameters()) do out[p.name] = p.tensor:clone() end
  return out
end

-- true when every parameter equals the snapshot's, else false and the first that differs
local function unchanged(model, snap)
  for _, p in ipairs(model:parameters()) do
    if m2.eq(p.tensor, snap[p.name]):sum_all():item() ~= p.tensor:numel() then return false, p.name end
  end
  return true
end

-- a safetensors file put together by hand: tensors = {{name, dtype ("F32", ...), shape, bytes}}; hdr_edit(text)
-- may change the header text; offsets as the format says unless given
local function pack(path, tensors, hdr_edit, metadata)
  local parts, data, pos = {}, {}, 0
  for _, t in ipairs(tensors) do
    local o = t.offsets or { pos, pos + #t.bytes }
    parts[#parts + 1] = string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', t.name, t.dtype,
      table.concat(t.shape, ","), o[1], o[2])
    data[#data + 1] = t.bytes
    pos = pos + #t.bytes
  end
  if metadata then table.insert(parts, 1, '"__metadata__":' .. metadata) end
  local hdr = "{" .. table.concat(parts, ",") .. "}"
  if hdr_edit then hdr = hdr_edit(hdr) end
  write_file(path, string.pack("<I8", #hdr) .. hdr .. table.concat(data))
end

local function f32_bytes(values)
  local out = {}
  for i, v in ipairs(values) do out[i] = string.pack("<f", v) end
  return table.concat(out)
end

T.case("a model round trip is bit-identical, and the file is laid out as the format says", function()
  local a = m2.models.lm(SPEC)
  local path = dir .. "/a.safetensors"
  local res = st.save(path, a, { metadata = { note = "round trip", n = 3 } })
  T.eq(res.tensors, #a:parameters())
  T.ok(not exists(path .. ".partial"), "no partial file is left")
  local b = m2.models.lm(SPEC) -- other random values
  T.ok(not unchanged(b, snapshot(a)), "the fresh model differs before the import")
  local _, meta = st.load_into(b, path)
  T.eq(meta, { note = "round trip", n = "3" }, "metadata comes back, values as strings")
  local pb = b:parameters()
  for i, p in ipairs(a:parameters()) do
    T.eq(pb[i].name, p.name)
    T.eq(pb[i].tensor, p.tensor, p.name .. " after the round trip")
  end
  -- bit for bit: writing the imported model again gives the same bytes
  local path2 = dir .. "/b.safetensors"
  st.save(path2, b, { metadata = { note = "round trip", n = 3 } })
  T.ok(read_file(path) == read_file(path2), "the re-exported file is byte-identical")
  -- the layout, read by hand: u64 LE header length, JSON, 8-byte aligned data, tensors tiling the data in order
  local bytes = read_file(path)
  local n = string.unpack("<I8", bytes)
  T.eq((8 + n) % 8, 0, "the data starts 8-byte aligned")
  local hdr = runs.json_decode(bytes:sub(9, 8 + n))
  local pos, total = 0, 0
  for _, p in ipairs(a:parameters()) do
    local e = hdr[p.name]
    T.ok(e ~= nil, p.name .. " is in the header under its module path")
    T.eq(e.dtype, "F32")
    T.eq(e.shape, p.tensor:shape())
    T.eq(e.data_offsets, { pos, pos + 4 * p.tensor:numel() }, p.name .. " offsets in parameter order")
    -- the values, unpacked by hand
    local first = string.unpack("<f", bytes, 8 + n + pos + 1)
    T.eq(first, p.tensor:reshape(-1):get(1), p.name .. " first value, little-endian f32")
    pos = e.data_offsets[2]
    total = total + 1
  end
  T.eq(#bytes, 8 + n + pos, "nothing after the last tensor")
  T.eq(hdr.__metadata__.note, "round trip")
end)

T.case("every dtype, scalars and empty tensors; a list or a map of named tensors", function()
  local x = m2.randn(3, 5)
  local tensors = {
    { name = "f32", tensor = x },
    { name = "f64", tensor = m2.randn(2, 3, { dtype = "f64" }) },
    { name = "bf16", tensor = m2.randn(7):to("bf16") },
    { name = "i32", tensor = m2.randint(1000, 4, { dtype = "i32" }) },
    { name = "i64", tensor = m2.tensor({ -3, 2 ^ 40, 9 }, { dtype = "i64" }) },
    { name = "scalar", tensor = m2.scalar(2.5) },
    { name = "empty", tensor = m2.zeros(0, 4) },
    { name = "strided", tensor = x:transpose(1, 2) }, -- written in its logical (row-major) order
    { name = "odd name/with.dots \"quoted\"", tensor = m2.randn(1) },
  }
  local path = dir .. "/dtypes.safetensors"
  st.save(path, tensors)
  local got = st.load(path)
  for _, e in ipairs(tensors) do
    local g = got[e.name]
    T.ok(g ~= nil, e.name .. " read back")
    if g then
      T.eq(g:dtype(), e.tensor:dtype(), e.name .. " dtype")
      T.eq(g:shape(), e.tensor:shape(), e.name .. " shape")
      T.eq(g, e.tensor:contiguous(), e.name .. " values")
    end
  end
  local h = st.header(path)
  T.eq(h.tensors.bf16.st_dtype, "BF16")
  T.eq(h.tensors.scalar.shape, {})
  T.eq(h.tensors.empty.data_offsets[1], h.tensors.empty.data_offsets[2], "an empty tensor spans no bytes")
  -- a map {name = tensor} is written in name order
  local path2 = dir .. "/map.safetensors"
  st.save(path2, { b = m2.randn(2), a = m2.randn(3) })
  T.eq(st.header(path2).names, { "a", "b" })
end)

T.case("a hand-packed file (the format, not m2lab's writer) reads back", function()
  local path = dir .. "/hand.safetensors"
  local w = { 1.5, -2.25, 3.0, 0.125, 1e-3, -7.0 }
  pack(path, { { name = "b", dtype = "I64", shape = { 2 }, bytes = string.pack("<i8<i8", -5, 1 << 50) },
               { name = "w", dtype = "F32", shape = { 2, 3 }, bytes = f32_bytes(w) } }, nil, '{"k":"v"}')
  local got, meta = st.load(path)
  T.eq(got.w:totable(), { { 1.5, -2.25, 3.0 }, { 0.125, got.w:get(2, 2), -7.0 } })
  T.close(got.w:get(2, 2), 1e-3, 1e-9)
  T.eq(got.b:totable(), { -5, 1 << 50 })
  T.eq(meta, { k = "v" })
  -- and one whose tensors are listed out of order in the header (only the offsets count)
  local path2 = dir .. "/hand2.safetensors"
  pack(path2, { { name = "late", dtype = "F32", shape = { 1 }, bytes = f32_bytes { 9 }, offsets = { 4, 8 } },
                { name = "early", dtype = "F32", shape = { 1 }, bytes = f32_bytes { 4 }, offsets = { 0, 4 } } })
  -- pack wrote the bytes in list order (9 then 4): with these offsets "early" is the 9
  got = st.load(path2)
  T.eq(got.early:item(), 9.0)
  T.eq(got.late:item(), 4.0)
end)

T.case("bad files: an error naming the file and the tensor; the model is left as it was", function()
  local model = m2.models.lm(SPEC)
  local before = snapshot(model)
  local good = dir .. "/good.safetensors"
  st.save(good, model)
  local params = model:parameters()
  local first, last = params[1], params[#params]
  local function check(path, pattern, what)
    local err = T.raises(function() st.load_into(model, path) end, pattern, what)
    if err then
      T.ok(err:find(path, 1, true), what .. ": the message names the file (" .. err .. ")")
      T.ok(err:find("test_safetensors.lua:%d+"), what .. ": the message is located at the script line")
    end
    local same, differs = unchanged(model, before)
    T.ok(same, what .. ": the model is unchanged (" .. tostring(differs) .. " changed)")
  end
  local other = m2.models.lm(SPEC) -- a source of other values, so a partial import would show
  local function list_without(skip, extra)
    local out = {}
    for _, p in ipairs(other:parameters()) do
      if p.name ~= skip then out[#out + 1] = { name = p.name, tensor = p.tensor } end
    end
    for _, e in ipairs(extra or {}) do out[#out + 1] = e end
    return out
  end
  local p = dir .. "/missing.safetensors"
  st.save(p, list_without(last.name))
  check(p, "the model's parameter '" .. last.name .. "' is missing from the file", "missing tensor")
  p = dir .. "/extra.safetensors"
  st.save(p, list_without(nil, { { name = "blocks.9.surplus", tensor = m2.randn(3) } }))
  check(p, "tensor 'blocks.9.surplus' in the file is not a parameter of the model", "extra tensor")
  p = dir .. "/shape.safetensors"
  local l = list_without(first.name)
  table.insert(l, 1, { name = first.name, tensor = m2.randn(first.tensor:size(1) + 1, first.tensor:size(2)) })
  st.save(p, l)
  check(p, string.format("tensor '%s' has shape %%(%d, %d%%) in the file", first.name:gsub("%.", "%%."),
    first.tensor:size(1) + 1, first.tensor:size(2)), "wrong shape")
  p = dir .. "/dtype.safetensors"
  l = list_without(first.name)
  table.insert(l, 1, { name = first.name, tensor = m2.randn(first.tensor:shape(), { dtype = "f64" }) })
  st.save(p, l)
  check(p, "has dtype F64 (f64) in the file but f32 in the model", "wrong dtype")
  -- damaged copies of the good file
  local bytes = read_file(good)
  local n = string.unpack("<I8", bytes)
  p = dir .. "/truncated.safetensors"
  write_file(p, bytes:sub(1, #bytes - 5))
  check(p, "truncated: the header describes", "truncated data")
  p = dir .. "/trailing.safetensors"
  write_file(p, bytes .. "xyz")
  check(p, "3 bytes after the last tensor's data", "trailing bytes")
  p = dir .. "/short_header.safetensors"
  write_file(p, bytes:sub(1, 8 + n // 2))
  check(p, "truncated: the header is " .. n .. " bytes long", "truncated header")
  p = dir .. "/tiny.safetensors"
  write_file(p, "abc")
  check(p, "truncated: 3 bytes", "shorter than the length field")
  p = dir .. "/empty.safetensors"
  write_file(p, "")
  check(p, "truncated: 0 bytes", "empty file")
  p = dir .. "/huge_len.safetensors"
  write_file(p, string.pack("<I8", 1 << 40) .. bytes:sub(9))
  check(p, "not a safetensors file: header length", "absurd header length")
  p = dir .. "/badjson.safetensors"
  local hdr = bytes:sub(9, 8 + n)
  local cut = hdr:find(":", 1, true)
  write_file(p, bytes:sub(1, 8) .. hdr:sub(1, cut - 1) .. ";" .. hdr:sub(cut + 1) .. bytes:sub(9 + n))
  check(p, "the header is not valid JSON", "bad JSON")
  p = dir .. "/array.safetensors"
  write_file(p, string.pack("<I8", 7) .. "[1,2,3]")
  check(p, "the header is not a JSON object", "header not an object")
  -- hand-packed files with bad entries
  local ok4 = { name = first.name, dtype = "F32", shape = first.tensor:shape(),
                bytes = f32_bytes(first.tensor:reshape(-1):totable()) }
  p = dir .. "/f16.safetensors"
  pack(p, { { name = first.name, dtype = "F16", shape = { 2 }, bytes = "\0\0\0\0" } })
  check(p, "tensor '" .. first.name .. "': dtype F16 is not supported", "unsupported dtype")
  p = dir .. "/span.safetensors"
  pack(p, { { name = "x", dtype = "F32", shape = { 3 }, bytes = f32_bytes { 1, 2 } } })
  check(p, "tensor 'x': data_offsets [0, 8] span 8 bytes, but F32 (3) needs 12", "offsets of the wrong size")
  p = dir .. "/gap.safetensors"
  pack(p, { ok4, { name = "y", dtype = "F32", shape = { 1 }, bytes = f32_bytes { 1 },
                   offsets = { #ok4.bytes + 4, #ok4.bytes + 8 } } })
  check(p, "tensor 'y': data_offsets", "a gap between tensors")
  p = dir .. "/overlap.safetensors"
  pack(p, { ok4, { name = "y", dtype = "F32", shape = { 1 }, bytes = f32_bytes { 1 }, offsets = { 0, 4 } } })
  check(p, "overlap", "overlapping tensors")
  p = dir .. "/negshape.safetensors"
  pack(p, { { name = "z", dtype = "F32", shape = { -1 }, bytes = "", offsets = { 0, 0 } } })
  check(p, "tensor 'z': shape entry 1 is -1", "a negative size")
  p = dir .. "/badmeta.safetensors"
  pack(p, { ok4 }, nil, '{"k":1}')
  check(p, "__metadata__ entry 'k' is not a string", "metadata that is not text")
  p = dir .. "/nodtype.safetensors"
  pack(p, { ok4 }, function(h) return h:gsub('"dtype":"F32",', "") end)
  check(p, "no dtype", "an entry without dtype")
  check(dir .. "/does-not-exist.safetensors", "cannot open", "a missing file")
  -- after all that, the good file still imports
  st.load_into(other, good)
  T.ok(unchanged(other, before), "the good file imports")
end)

T.case("an export that fails leaves no file, and an existing file as it was", function()
  local path = dir .. "/keep.safetensors"
  st.save(path, { { name = "a", tensor = m2.randn(4) } })
  local old = read_file(path)
  local calls = 0
  local ok, err = pcall(st.save, path, {
    { name = "a", dtype = "f32", shape = { 4 }, read = function() calls = calls + 1; return m2.randn(4) end },
    { name = "b", dtype = "f32", shape = { 4 }, read = function() error("source failed mid-export") end },
  })
  T.ok(not ok and tostring(err):find("source failed mid-export", 1, true), tostring(err))
  T.eq(calls, 1, "the first tensor was written before the failure")
  collectgarbage()
  T.ok(read_file(path) == old, "the existing file is untouched")
  T.ok(not exists(path .. ".partial"), "the partial file was removed")
  -- a tensor that is not what was announced
  T.raises(function()
    st.save(dir .. "/liar.safetensors",
      { { name = "a", dtype = "f32", shape = { 4 }, read = function() return m2.randn(5) end } })
  end, "tensor 'a' is f32 %(5%), but f32 %(4%) was announced")
  T.ok(not exists(dir .. "/liar.safetensors"), "no file after a failed export")
  T.raises(function()
    st.save(dir .. "/dup.safetensors", { { name = "a", tensor = m2.randn(1) }, { name = "a", tensor = m2.randn(1) } })
  end, "tensor name 'a' appears twice")
  T.raises(function() st.save("/proc/no-such-dir/x.safetensors", { a = m2.randn(1) }) end, "/proc/no-such-dir")
  T.raises(function() st.save(dir .. "/x.safetensors", { a = 3 }) end, "key a holds a number")
end)

-- a short real run to rebuild models from
local run = dir .. "/run.h5"
local run_seed = math.random(1, 1000000)
local code, out = T.run_m2lab(string.format("run '%s/experiments/tiny_lm.lua' arch=MA mlp=true steps=4 " ..
  "checkpoint_every=2 eval_every=0 seed=%d out='%s'", m2.source_dir, run_seed, run))

T.case("runs.load_model rebuilds the run's model with a checkpoint's parameters", function()
  T.eq(code, 0, out)
  local args_before, rng_before = m2.args, m2.rng_state()
  local model, about = runs.load_model(run)
  T.eq(about.step, 4, "the latest checkpoint by default")
  T.ok(m2.args == args_before, "the caller's m2.args are back")
  T.eq(m2.rng_state(), rng_before, "the caller's RNG state is back")
  T.eq(m2.resuming, nil)
  T.eq(m2.loading, nil)
  T.ok(not model.training, "the model comes back in eval mode")
  local r <close> = runs.open(run)
  local n = 0
  for _, p in ipairs(model:parameters()) do
    T.eq(p.tensor, r:ckpt_read(4, "params/" .. p.name), p.name .. " = checkpoint 4")
    n = n + 1
  end
  T.eq(n, #r:ckpt_tensors(4) // 3, "every parameter (params, and AdamW's two states each)")
  local m2s = runs.load_model(run, 2)
  local p1 = m2s:parameters()[1]
  T.eq(p1.tensor, r:ckpt_read(2, "params/" .. p1.name), "step 2 on request")
  T.ok(not T.show(p1.tensor:totable()):find(T.show(model:parameters()[1].tensor:totable()), 1, true),
    "step 2 differs from step 4")
  -- the model works: the loss on a batch is finite and the same for the same weights
  local ids = m2.randint(32, 2, 9)
  local y = m2.randint(32, 2, 9)
  local l1 = model:loss(ids, y):item()
  local again = runs.load_model(run, { device = "cpu" })
  T.eq(again:loss(ids, y):item(), l1, "a second load computes the same loss")
  T.ok(l1 == l1 and l1 < 10, "finite loss " .. l1)
  T.raises(function() runs.load_model(run, 3) end, "no checkpoint at step 3 (the file has: 2, 4)")
  T.raises(function() runs.load_model(dir .. "/nope.h5") end, "nope.h5: no such file")
  T.raises(function() runs.load_model(run, { colour = 1 }) end, "unknown option 'colour'")
end)

T.case("export a checkpoint, import it into the rebuilt model; `m2lab export`", function()
  T.eq(code, 0, out)
  local path = dir .. "/step2.safetensors"
  local res = runs.export_safetensors(run, path, 2)
  T.eq(res.step, 2)
  local h = st.header(path)
  T.eq(h.metadata.step, "2")
  T.eq(h.metadata.run, run)
  T.ok(runs.json_decode(h.metadata.config_json).config ~= nil, "the run's config travels in the metadata")
  local model = runs.load_model(run, 4)
  st.load_into(model, path)
  local r <close> = runs.open(run)
  for _, p in ipairs(model:parameters()) do
    T.eq(p.tensor, r:ckpt_read(2, "params/" .. p.name), p.name .. " = checkpoint 2 after the import")
  end
  -- the command line: default output name, step=, errors
  local c, o = T.run_m2lab(string.format("export '%s'", run))
  T.eq(c, 0, o)
  T.ok(exists(dir .. "/run-step4.safetensors"), "default name RUN-step<N>.safetensors: " .. o)
  T.ok(read_file(dir .. "/run-step4.safetensors") ~= read_file(path), "the latest checkpoint differs from step 2")
  c, o = T.run_m2lab(string.format("export '%s' '%s/cli.safetensors' step=2", run, dir))
  T.eq(c, 0, o)
  T.ok(read_file(dir .. "/cli.safetensors") == read_file(path), "the CLI writes the same bytes as the function")
  c, o = T.run_m2lab(string.format("export '%s' '%s/x.safetensors' step=3", run, dir))
  T.eq(c, 1, o)
  T.ok(o:find("no checkpoint at step 3 (the file has: 2, 4)", 1, true), o)
  c, o = T.run_m2lab(string.format("export '%s' colour=red", run))
  T.eq(c, 2, o)
  T.ok(o:find("unknown option 'colour='", 1, true), o)
  c, o = T.run_m2lab(string.format("export '%s/missing.h5'", dir))
  T.eq(c, 2, o)
  T.ok(o:find("missing.h5: no such file", 1, true), o)
  c, o = T.run_m2lab("export")
  T.eq(c, 2, o)
end)

T.case("load_model: runs without a script, scripts that fail, never train or print", function()
  local noscript = dir .. "/noscript.h5"
  local r = core.run_open(noscript, { mode = "create" })
  r:set_status("done")
  r:close()
  T.raises(function() runs.load_model(noscript) end, "stores no experiment script")
  -- a script that stops before m2.train, and one that never calls it
  local function scripted(name, body)
    local script = T.write_temp(body)
    local path = dir .. "/" .. name .. ".h5"
    local c, o = T.run_m2lab(string.format("run '%s' out='%s'", script, path))
    T.eq(c, 0, o)
    return path
  end
  local fails = scripted("fails", [[
local m2 = require "m2"
local cfg = m2.config { fail = false, out = "" }
local model = m2.nn.Linear(2, 2)
if cfg.fail or m2.loading then error("data shards not found") end
local data = { batch = function() return m2.randn(1, 2), m2.randn(1, 2) end }
m2.train { model = model, data = data, steps = 2, loss = function(m, x, y) return (m(x) - y):square():mean_all() end,
           out = cfg.out, quiet = true }
]])
  T.raises(function() runs.load_model(fails) end, "rebuilding the model failed: the stored script")
  local ok, err = pcall(runs.load_model, fails)
  T.ok(not ok and tostring(err):find("data shards not found", 1, true), tostring(err))
  T.eq(m2.loading, nil, "the environment is back after a failure")
  local never = scripted("never", [[
local m2 = require "m2"
local cfg = m2.config { out = "" }
local data = { batch = function() return m2.randn(1, 2), m2.randn(1, 2) end }
if not m2.loading then
  m2.train { model = m2.nn.Linear(2, 2), data = data, steps = 2, out = cfg.out, quiet = true,
             loss = function(m, x, y) return (m(x) - y):square():mean_all() end }
end
]])
  T.raises(function() runs.load_model(never) end, "finished without calling m2.train: no model to load")
  -- what the script prints while it builds the model is dropped (quiet = false keeps it); output works afterwards
  local chatty = scripted("chatty", [[
local m2 = require "m2"
local cfg = m2.config { out = "" }
print("BANNER-print")
io.write("BANNER-io.write\n")
io.stdout:write("BANNER-io.stdout\n")
local data = { batch = function() return m2.randn(1, 2), m2.randn(1, 2) end }
m2.train { model = m2.nn.Linear(2, 2), data = data, steps = 2, out = cfg.out, quiet = true,
           loss = function(m, x, y) return (m(x) - y):square():mean_all() end }
]])
  for _, quiet in ipairs { true, false } do
    local script = T.write_temp(string.format([[
local m2 = require "m2"
local model = m2.runs.load_model(%q, { quiet = %s })
print("AFTER " .. model:num_parameters())
io.write("AFTER-io.write\n")
]], chatty, tostring(quiet)))
    local c, o = T.run_m2lab(string.format("run '%s'", script))
    T.eq(c, 0, o)
    T.ok(o:find("AFTER 6\n", 1, true) and o:find("AFTER-io.write", 1, true), "the caller prints afterwards: " .. o)
    local n = 0
    for _ in o:gmatch("BANNER") do n = n + 1 end
    T.eq(n, quiet and 0 or 3, "quiet = " .. tostring(quiet) .. ": " .. o)
  end
end)

os.execute("rm -rf '" .. dir .. "'")
