-- test_runfile_full_disk.lua — a disk that fills up (issue 17 item 2), injected: M2_RUNFILE_ENOSPC_AFTER=N makes the
-- run-file writer's writes fail with ENOSPC once N bytes are written (core/runfile/runfile_vfd.c). At every budget a
-- resume and a new run end with a clean error that names the file and "No space left on device" (never a crash,
-- also not at exit in HDF5's close), and the existing run file stays as its last complete flush left it: it opens,
-- its status reads, and it resumes to the end once there is space again.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote = T.sh_quote
-- run m2lab with the writes of its run files limited to `budget` bytes (nil: no limit) -> exit code (the signal
-- number when it died of one), output
local function m2lab(budget, ...)
  return T.m2lab_env(budget and { "M2_RUNFILE_ENOSPC_AFTER=" .. budget } or {}, ...)
end
local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end

local experiment = m2.source_dir .. "/experiments/tiny_lm.lua"
local good = dir .. "/good.h5"
local code, out = m2lab(nil, "run", experiment, "steps=20", "checkpoint_every=10", "eval_every=0", "d=16",
  "out=" .. good)
assert(code == 0, out)
local bytes = read(good)

-- budgets from nothing at all to enough for part of the resumed run's checkpoints
local budgets = { 0, 100, 4096, 20000, 60000, 150000, 300000, 600000 }

T.case("a resume on a full disk: a clean error naming ENOSPC and the file; the run file stays resumable", function()
  local failed = 0
  for _, n in ipairs(budgets) do
    local p = dir .. "/r.h5"
    write(p, bytes)
    local c, o = m2lab(n, "resume", p, "steps=40", "checkpoint_every=5")
    T.ok(c == 0 or c == 1, string.format("budget %d: exit %d, not a signal: %s", n, c, o))
    if c == 1 then
      failed = failed + 1
      T.ok(o:find(p, 1, true) and o:find("No space left on device", 1, true),
        string.format("budget %d: names the file and ENOSPC: %s", n, o))
    end
    local ci, oi = m2lab(nil, "inspect", p)
    T.eq(ci, 0, string.format("budget %d: the file reads whole after the failure: %s", n, oi))
    local info = runs.info(p)
    T.ok(info.status == "done" or info.status == "running" or info.status:match("^failed") ~= nil,
      "status attribute intact: " .. tostring(info.status))
    c, o = m2lab(nil, "resume", p, "steps=40")
    T.eq(c, 0, string.format("budget %d: resumes once there is space: %s", n, o))
    T.eq(runs.info(p).status, "done")
    T.eq(runs.info(p).latest, 40)
  end
  T.ok(failed >= 6, failed .. " of " .. #budgets .. " budgets ran out")
end)

T.case("a new run on a full disk: a clean error naming ENOSPC and the file, never a crash", function()
  for _, n in ipairs(budgets) do
    local p = dir .. "/new.h5"
    os.remove(p)
    local c, o = m2lab(n, "run", experiment, "steps=30", "checkpoint_every=5", "eval_every=0",
      "d=16", "out=" .. p)
    T.eq(c, 1, string.format("budget %d: exit 1: %s", n, o))
    T.ok(o:find(p, 1, true) and o:find("No space left on device", 1, true),
      string.format("budget %d: names the file and ENOSPC: %s", n, o))
    local f = io.open(p, "rb")
    if f then -- what is there is empty (killed before its first flush) or a file that reads
      local size = f:seek("end")
      f:close()
      if size > 0 then
        local ci, oi = m2lab(nil, "inspect", p)
        T.eq(ci, 0, string.format("budget %d: the partial run file reads: %s", n, oi))
      end
    end
  end
end)

os.execute("rm -rf " .. sh_quote(dir))
