-- test_sweep_stale.lua — a sweep re-run with a stale index (its parent killed with SIGKILL: the index
-- still says "running", or "failed" for an orphan that lost the writer lock) keeps every finished
-- member's run file byte for byte and says why, and leaves a member whose run file is still being
-- written alone instead of deleting it or starting it a second time, and moves an unreadable one aside;
-- last the issue's reproduction itself: SIGKILL the sweep parent while its members train.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local out = dir .. "/out/"
local sh_quote = T.sh_quote
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end
local function bytes(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end
local function plain(s, sub) return s:find(sub, 1, true) ~= nil end

local script = m2.source_dir .. "/experiments/tiny_lm.lua"
local sweep_script = dir .. "/s.lua"
write(sweep_script, string.format([[
local m2 = require "m2"
m2.sweep {
  name = "stale",
  script = %q,
  set = { steps = 8, checkpoint_every = 4, eval_every = 4, d = 16, arch = "M", seed = 1 },
  grid = { lr = { 1e-3, 1e-2 } },
  out = %q,
  parallel = 2,
}
]], script, out))
local A, B = "lr-0.001", "lr-0.01"

-- rewrite the index as a sweep parent killed with SIGKILL would have left it
local function stale_index(status_of)
  local ix = core.sweep_index_read(out .. "index.h5")
  for _, m in ipairs(ix.members) do
    if status_of[m.name] then m.status, m.exit_code = status_of[m.name], -1 end
  end
  core.sweep_index_write(out .. "index.h5", ix)
end

local function index_status_of(d)
  local st = {}
  for _, m in ipairs(core.sweep_index_read(d .. "index.h5").members) do st[m.name] = m.status end
  return st
end
local function index_status() return index_status_of(out) end

T.case("a stale index never makes a finished member deletable", function()
  local code, o = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 0, o)
  T.ok(plain(o, "2 members: 2 done (0 skipped), 0 failed"), o)
  local before = { [A] = bytes(out .. A .. ".h5"), [B] = bytes(out .. B .. ".h5") }
  -- the parent died: one member still "running" in the index, the other recorded "failed" on the
  -- writer lock by a second sweep while its orphan was finishing it
  stale_index { [A] = "running", [B] = "failed: " .. out .. B .. ".h5: another m2lab process is writing it" }
  code, o = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 0, o)
  T.ok(plain(o, "2 members (2 already done)"), o)
  T.ok(plain(o, "keep   " .. A .. ": its run file says done (the index said 'running')"), o)
  T.ok(plain(o, "keep   " .. B .. ": its run file says done (the index said 'failed: "), o)
  T.ok(not plain(o, "start  "), "no member ran again\n" .. o)
  for name, b in pairs(before) do
    T.ok(bytes(out .. name .. ".h5") == b, name .. ": the finished run file is untouched")
  end
  T.eq(index_status(), { [A] = "done", [B] = "done" }, "the index is repaired from the run files")
end)

T.case("a member whose run file is still being written is left alone", function()
  -- an orphan of a killed sweep, still training member A
  local path = out .. A .. ".h5"
  os.remove(path)
  local argv = { m2.exe, "run", script, "steps=8", "checkpoint_every=4", "eval_every=4", "d=16", "arch=M", "seed=1",
                 "lr=0.001", "throttle=0.25", "out=" .. path }
  local pid = core.spawn(argv, { stdout = dir .. "/orphan.log" })
  local t0 = core.clock()
  while core.clock() - t0 < 30 and not core.run_writer_alive(path) do core.sleep(0.02) end
  T.ok(core.run_writer_alive(path), "the orphan holds its run file")
  stale_index { [A] = "running" }
  local b_before = bytes(out .. B .. ".h5")
  local code, o = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  local still = core.run_writer_alive(path)
  T.eq(code, 0, o)
  T.ok(plain(o, "skip   " .. A .. ": its run file " .. path .. " is still being written by another process"), o)
  T.ok(plain(o, "2 members (1 already done, 1 still running elsewhere)"), o)
  T.ok(not plain(o, "start  "), "nothing started a second writer\n" .. o)
  T.ok(still, "the orphan was still training when the sweep ended (else the test proves nothing)")
  T.eq(index_status()[A], "running")
  T.ok(bytes(out .. B .. ".h5") == b_before, B .. ": untouched")
  local _, rc = core.wait(pid)
  T.eq(rc, 0, "the orphan finished: " .. bytes(dir .. "/orphan.log"))
  local info = runs.info(path)
  T.eq(info.status, "done")
  T.eq(info.resume_count, 0, "trained once, by the orphan")
  T.eq(#runs.series(path, "metrics", "loss"), 8)
  local a_done = bytes(path)
  -- the next sweep records it as done and keeps it
  code, o = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 0, o)
  T.ok(plain(o, "2 members (2 already done)"), o)
  T.ok(plain(o, "keep   " .. A .. ": its run file says done (the index said 'running')"), o)
  T.ok(bytes(path) == a_done, A .. ": the orphan's finished run file is untouched")
  T.eq(index_status(), { [A] = "done", [B] = "done" })
end)

T.case("an unreadable member file is moved aside, never deleted", function()
  local path = out .. A .. ".h5"
  local junk = "not an HDF5 file: perhaps a damaged finished run\n"
  write(path, junk)
  stale_index { [A] = "running" }
  local code, o = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 0, o)
  T.ok(plain(o, "moved  " .. A .. ": its run file could not be read; kept as " .. path .. ".unreadable"), o)
  T.eq(bytes(path .. ".unreadable"), junk, "the unreadable file is kept as it was")
  T.eq(runs.info(path).status, "done", "the member ran again")
end)

T.case("a sweep parent killed with SIGKILL mid-sweep: its orphans finish and nothing is lost", function()
  local out2 = dir .. "/out2/"
  local s2 = dir .. "/s2.lua"
  write(s2, string.format([[
local m2 = require "m2"
m2.sweep {
  name = "killed",
  script = %q,
  set = { steps = 8, checkpoint_every = 4, eval_every = 4, d = 16, arch = "M", seed = 1, throttle = 0.25 },
  grid = { lr = { 1e-3, 1e-2 } },
  out = %q,
  parallel = 2,
}
]], script, out2))
  local parent = core.spawn({ m2.exe, "sweep", s2 }, { stdout = dir .. "/parent.log" })
  local pa, pb = out2 .. A .. ".h5", out2 .. B .. ".h5"
  local t0 = core.clock()
  while core.clock() - t0 < 30 and not (core.run_writer_alive(pa) and core.run_writer_alive(pb)) do
    core.sleep(0.02)
  end
  core.kill(parent, "KILL")
  local _, _, sig = core.wait(parent)
  T.eq(sig, 9, "the sweep parent was killed")
  T.ok(core.run_writer_alive(pa) and core.run_writer_alive(pb), "both members train on as orphans")
  T.eq(index_status_of(out2), { [A] = "running", [B] = "running" }, "the index is stale")
  local code, o = T.run_m2lab("sweep " .. sh_quote(s2))
  T.eq(code, 0, o)
  T.ok(plain(o, "2 members (0 already done, 2 still running elsewhere)"), o)
  T.ok(not plain(o, "start  "), o)
  t0 = core.clock()
  while core.clock() - t0 < 60 and (core.run_writer_alive(pa) or core.run_writer_alive(pb)) do core.sleep(0.05) end
  local before = {}
  for _, p in ipairs { pa, pb } do
    local info = runs.info(p)
    T.eq(info.status, "done", p .. ": the orphan finished")
    T.eq(info.resume_count, 0, p)
    before[p] = bytes(p)
  end
  code, o = T.run_m2lab("sweep " .. sh_quote(s2))
  T.eq(code, 0, o)
  T.ok(plain(o, "2 members (2 already done)"), o)
  T.ok(plain(o, "keep   " .. A .. ": its run file says done (the index said 'running')"), o)
  T.ok(not plain(o, "start  "), o)
  for p, b in pairs(before) do T.ok(bytes(p) == b, p .. ": the finished run file is untouched") end
  T.eq(index_status_of(out2), { [A] = "done", [B] = "done" })
end)

os.execute("rm -rf " .. sh_quote(dir))
