-- test_runfile_errors.lua — bad input gets clean errors naming the file (and the dataset or key):
-- a truncated run file, a text file, an HDF5 file that is not a run, a damaged checkpoint tensor
-- (checksum; the older checkpoint stays readable, inspect reports it, resume falls back to it), an unwritable out path, resume of a missing
-- file, resume with a model whose parameters no longer match, and a run file with no script.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs
local nn = m2.nn

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote, m2lab = T.sh_quote, T.m2lab
local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end

-- one good run to damage in several ways
local good = dir .. "/good.h5"
local code, out = m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=20", "checkpoint_every=10",
  "eval_every=0", "d=16", "out=" .. good)
assert(code == 0, out)

T.case("truncated run file", function()
  local bytes = read(good)
  local cut = dir .. "/truncated.h5"
  write(cut, bytes:sub(1, #bytes // 2))
  local c, o = m2lab("inspect", cut)
  T.eq(c, 1, o)
  T.ok(o:find("m2lab inspect: " .. cut, 1, true), "inspect names the file: " .. o)
  c, o = m2lab("resume", cut)
  T.eq(c, 1, o)
  T.ok(o:find("m2lab: " .. cut .. ": cannot open: truncated file", 1, true), "resume: a clean error naming the file: " .. o)
  T.raises(function() runs.open(cut) end, cut)
end)

T.case("not an m2lab run file", function()
  local txt = dir .. "/notes.txt"
  write(txt, "hello, not HDF5\n")
  local c, o = m2lab("inspect", txt)
  T.eq(c, 1)
  T.ok(o:find(txt .. ": not an HDF5 file", 1, true), o)
  c, o = m2lab("resume", txt)
  T.eq(c, 1)
  T.ok(o:find(txt .. ": not an HDF5 file", 1, true), o)
  -- an HDF5 file that is not a run: a sweep index
  local ix = dir .. "/index.h5"
  core.sweep_index_write(ix, { name = "s", keys = {}, members = {} })
  T.raises(function() runs.open(ix) end, ix .. ": not an m2lab run file (no format_version attribute)")
  c, o = m2lab("resume", ix)
  T.eq(c, 1)
  T.ok(o:find(ix .. ": not an m2lab run file", 1, true), o)
  -- and a run file is not a sweep index
  T.raises(function() core.sweep_index_read(good) end, good .. ": not an m2lab sweep index")
end)

T.case("damaged checkpoint tensor: inspect and resume name file and dataset, resume falls back to the one before", function()
  local bad = dir .. "/damaged.h5"
  local bytes = read(good)
  -- find the stored bytes of params/lm_head.weight of the latest checkpoint and flip one
  local r = runs.open(good)
  local t = r:ckpt_read(20, "params/lm_head.weight")
  local older = r:ckpt_read(10, "params/lm_head.weight"):totable()
  r:close()
  local flat = t:reshape(-1):totable()
  local probe = string.pack("<ffff", flat[1], flat[2], flat[3], flat[4])
  local at = bytes:find(probe, 1, true)
  T.ok(at ~= nil, "found the tensor's bytes in the file")
  if not at then return end
  local pos = at + 17
  write(bad, bytes:sub(1, pos - 1) .. string.char(bytes:byte(pos) ~ 0x55) .. bytes:sub(pos + 1))
  local rb <close> = runs.open(bad)
  T.raises(function() rb:ckpt_read(20, "params/lm_head.weight") end, "params/lm_head.weight")
  T.eq(rb:ckpt_read(10, "params/lm_head.weight"):totable(), older, "the older checkpoint is intact")
  rb:close()
  -- inspect reports it (and exits 1), naming the file and the dataset
  local c, o = m2lab("inspect", bad)
  T.eq(c, 1, o)
  T.ok(o:find("damaged: " .. bad .. ": /checkpoints/20/params/lm_head.weight: data error detected by Fletcher32",
    1, true), o)
  T.ok(o:find("latest intact 10", 1, true), o)
  -- resume falls back to the checkpoint before it, saying which and why, and continues bit-exactly from there
  c, o = m2lab("resume", bad, "steps=30")
  T.eq(c, 0, o)
  T.ok(o:find("warning: " .. bad .. ": checkpoint 20 is damaged (" .. bad .. ": /checkpoints/20/params/lm_head.weight",
    1, true), "resume names file, checkpoint and dataset: " .. o)
  T.ok(o:find("resuming from checkpoint 10, the newest intact one", 1, true), o)
  local info = runs.info(bad)
  T.eq(info.status, "done")
  T.eq(info.checkpoints, { 10, 20, 30 }, "checkpoint 20 written again")
  local rr <close> = runs.open(bad)
  T.ok(rr:ckpt_verify(20), "the new checkpoint 20 reads back")
  rr:close()
  local _, want = runs.series(good, "metrics", "loss")
  local st2, got = runs.series(bad, "metrics", "loss")
  T.eq(#got, 30)
  T.eq({ table.unpack(got, 11, 20) }, { table.unpack(want, 11, 20) }, "steps 11..20 again, bit for bit")
  c, o = m2lab("inspect", bad)
  T.eq(c, 0, o)
end)

T.case("unwritable out path and missing files", function()
  local blocker = dir .. "/a_file"
  write(blocker, "x")
  local c, o = m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=2", "out=" .. blocker .. "/run.h5")
  T.eq(c, 1, o)
  T.ok(o:find(blocker .. "/run.h5: cannot create the run file's directory", 1, true), o)
  c, o = m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=2", "out=" .. dir)
  T.eq(c, 1, o)
  T.ok(o:find(dir, 1, true) and o:find("not a regular file", 1, true), o)
  c, o = m2lab("resume", dir .. "/missing.h5")
  T.eq(c, 2, o)
  T.ok(o:find(dir .. "/missing.h5: no such file", 1, true), o)
  c, o = m2lab("inspect", dir .. "/missing.h5")
  T.eq(c, 1, o)
  T.ok(o:find(dir .. "/missing.h5", 1, true), o)
  c, o = m2lab("resume")
  T.eq(c, 2, o)
end)

T.case("resume with parameters that no longer match; a run file without a script", function()
  local function linear_model(dout)
    local m = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, dout))
    return m
  end
  local data = { batch = function(_, i)
    return m2.tensor({ { i % 8 } }, { dtype = "i64" }), m2.tensor({ { (i + 1) % 8 } }, { dtype = "i64" })
  end }
  local p = dir .. "/inproc.h5"
  m2.seed(0)
  m2.train { model = linear_model(8), data = data, steps = 4, out = p, config = { k = 1 }, quiet = true }
  m2.resuming = { path = p }
  local ok, err = pcall(m2.train, { model = linear_model(16), data = data, steps = 6, config = { k = 1 }, quiet = true })
  m2.resuming = nil
  T.ok(not ok, "a model with other shapes is refused")
  T.ok(tostring(err):find(p .. ": checkpoint 4: parameter '2.weight' has shape (8, 4) in the file but (16, 4) in the " ..
    "model", 1, true), tostring(err))
  -- the refused resume left the run as it was
  local steps = runs.series(p, "metrics", "loss")
  T.eq(#steps, 4)
  T.eq(runs.info(p).status, "done")
  T.eq(runs.info(p).resume_count, 0, "refused before the file was opened for writing")
  -- run files written from a test have the test script stored, so resume would re-run it: build
  -- one without a script with the raw API
  local noscript = dir .. "/noscript.h5"
  local r = core.run_open(noscript, { mode = "create" })
  r:set_status("done")
  r:close()
  local c, o = m2lab("resume", noscript)
  T.eq(c, 1, o)
  T.ok(o:find(noscript .. ": the run file stores no experiment script", 1, true), o)
end)

os.execute("rm -rf " .. sh_quote(dir))
