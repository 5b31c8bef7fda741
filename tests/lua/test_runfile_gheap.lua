-- test_runfile_gheap.lua — a damaged global heap (issue 17): HDF5 keeps the run file's strings (status, script,
-- json attributes) in global heap collections ("GCOL", no checksum), and HDF5 1.10.8 loops for ever on a collection
-- holding a free-space object of size 0 and copies past its buffer for an object larger than its collection (a
-- crash). Crafted copies of a real run with each damage: `m2lab inspect` and `m2lab resume` give a clean error naming
-- the file and the attribute (core/runfile/runfile_vlen.c reads strings in a child process with a time limit).
-- Without that guard, inspect of the first copy never ends (CTest's timeout) and of the others dies of SIGSEGV.
local m2 = require "m2"
local T = m2.test
local core = m2.core

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote = T.sh_quote
local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end
-- m2lab with a short limit on each string read (a damaged collection loops: the limit is all that ends it; 5 s is
-- far above what an intact read takes)
local function m2lab(...) return T.m2lab_env({ "M2_RUNFILE_STRING_TIMEOUT=5" }, ...) end

local good = dir .. "/good.h5"
local code, out = m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=4", "checkpoint_every=2",
  "eval_every=0", "d=8", "out=" .. good)
assert(code == 0, out)
local bytes = read(good)

-- the collections: "GCOL", version 1, 3 reserved bytes, u64 size; then objects: u16 index, u16 references,
-- 4 reserved, u64 size, the data padded to 8 bytes; index 0 is the free space (its size counts its header)
local gcols = {}
do
  local at = 1
  while true do
    local i = bytes:find("GCOL\1", at, true)
    if not i then break end
    gcols[#gcols + 1] = i
    at = i + 1
  end
end
assert(#gcols >= 2, "a run keeps its strings in global heap collections: found " .. #gcols)
local function objects(g) -- {pos (1-based, of the object header), index, size} of the collection at g
  local size, list, at = string.unpack("<I8", bytes, g + 8), {}, 16
  while at + 16 <= size do
    local idx, osz = string.unpack("<I2", bytes, g + at), string.unpack("<I8", bytes, g + at + 8)
    list[#list + 1] = { pos = g + at, idx = idx, size = osz }
    if idx == 0 then break end
    at = at + 16 + ((osz + 7) & ~7)
  end
  return list
end
local function set_size(obj, n) -- a copy of the run with that object's size field set to n
  local p = obj.pos + 8
  return bytes:sub(1, p - 1) .. string.pack("<I8", n) .. bytes:sub(p + 8)
end

local function check(p, what)
  local c, o = m2lab("inspect", p)
  local inspect = o
  T.eq(c, 1, what .. ": inspect fails cleanly: " .. o)
  T.ok(o:find("damaged: " .. p .. ": /", 1, true) and o:find("(attribute '", 1, true) and
    o:find("global heap", 1, true), what .. ": names the file, the attribute and the cause: " .. o)
  c, o = m2lab("resume", p, "steps=6")
  T.ok(c == 1 or c == 2, what .. ": resume fails cleanly (exit " .. tostring(c) .. "): " .. o)
  T.ok(o:find(p, 1, true) ~= nil, what .. ": resume's error names the file: " .. o)
  return inspect
end

T.case("a free-space object of size 0 (HDF5 loops): a clean error after the time limit", function()
  -- the newest collection holds the final status ("done") and then its free space
  local objs = objects(gcols[#gcols])
  local free = objs[#objs]
  T.eq(free.idx, 0, "the collection ends with its free space")
  local p = dir .. "/loop.h5"
  write(p, set_size(free, 0))
  local o = check(p, "size 0")
  T.ok(o:find("did not finish in 5 s", 1, true), o)
end)

T.case("a string object larger than its collection (HDF5 copies past it): a clean error", function()
  local first = objects(gcols[1])[1]
  T.ok(first.idx == 1 and first.size < 4096, "the first string of the first collection")
  for _, n in ipairs { 1 << 40, 60000 } do
    local p = dir .. "/big.h5"
    write(p, set_size(first, n))
    check(p, "size " .. n)
  end
end)

os.execute("rm -rf " .. sh_quote(dir))
