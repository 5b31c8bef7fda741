-- test_resume.lua — exact resume: a run of 2N steps equals (bit for bit, every logged loss,
-- grad norm, lr and eval value, and every final parameter and optimizer state) a run that was
--   1. SIGKILLed after its checkpoint at step N appeared (polled with the reader API) and
--      resumed with `m2lab resume` — from a copy of the script that was then overwritten on disk,
--      so the resume must run the script stored in the run file;
--   2. stopped by SIGTERM (it checkpoints at the step it was on, status "interrupted", exit 130)
--      and resumed;
-- and a resume with a changed config fails naming the file and the key; steps=... extends a run.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local N = 10
local exe = m2.exe
local experiment = m2.source_dir .. "/experiments/tiny_lm.lua"
local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)

local sh_quote = T.sh_quote
local function m2lab(args) return T.m2lab(table.unpack(args)) end

-- the settings of every run here (throttle keeps a run slow enough to be killed mid-way)
local function settings(out)
  return { "steps=" .. 2 * N, "checkpoint_every=" .. N, "eval_every=5", "throttle=0.08", "d=16", "out=" .. out }
end

local function read_all(path)
  local r <close> = runs.open(path)
  local out = { metrics = {}, eval = {}, tensors = {} }
  for _, g in ipairs { "metrics", "eval" } do
    for _, name in ipairs(r:list_series(g)) do
      local steps, values = r:read_series(g, name)
      out[g][name] = { steps = steps, values = values }
    end
  end
  local last = r:ckpt_latest()
  out.latest = last
  if last then
    for _, p in ipairs(r:ckpt_tensors(last)) do out.tensors[p] = r:ckpt_read(last, p):totable() end
    out.cursor = r:ckpt_get(last, "data_cursor")
    out.rng = r:ckpt_get(last, "rng_offset")
  end
  out.status = r:get_attr("status")
  out.resume_count = r:get_attr("resume_count")
  return out
end

-- every series entry and every tensor bit for bit
local function same_run(a, b, what)
  for _, g in ipairs { "metrics", "eval" } do
    for name, s in pairs(a[g]) do
      if name ~= "tokens_per_s" and name ~= "peak_mem_mb" then
        local o = b[g][name]
        T.ok(o ~= nil, what .. ": series " .. g .. "/" .. name .. " exists")
        if o then
          T.eq(o.steps, s.steps, what .. ": " .. g .. "/" .. name .. " steps")
          T.eq(o.values, s.values, what .. ": " .. g .. "/" .. name .. " values, bit for bit")
        end
      end
    end
  end
  local n = 0
  for p, t in pairs(a.tensors) do
    n = n + 1
    T.eq(b.tensors[p], t, what .. ": final " .. p)
  end
  T.ok(n > 10, what .. ": the final checkpoint has parameters and optimizer state (" .. n .. " tensors)")
  T.eq(b.cursor, a.cursor, what .. ": data cursor")
  T.eq(b.rng, a.rng, what .. ": rng offset")
end

-- wait until the run file at path has a checkpoint at >= step (the reader API); false on timeout
local function wait_checkpoint(path, step, pid, timeout)
  local t0 = core.clock()
  while core.clock() - t0 < timeout do
    local ok, latest = pcall(function()
      local r <close> = runs.open(path, { open_timeout = 0.5 })
      return r:ckpt_latest()
    end)
    if ok and latest and latest >= step then return true end
    if core.wait(pid, true) then return false end -- it ended by itself
    core.sleep(0.02)
  end
  return false
end

local reference -- the uninterrupted run
T.case("uninterrupted reference run", function()
  local a = dir .. "/a.h5"
  local args = { "run", experiment }
  for _, w in ipairs(settings(a)) do args[#args + 1] = w end
  local code, out = m2lab(args)
  T.eq(code, 0, out)
  reference = read_all(a)
  T.eq(reference.status, "done")
  T.eq(#reference.metrics.loss.steps, 2 * N)
  T.eq(reference.latest, 2 * N)
end)

T.case("SIGKILL after the checkpoint at step N, then m2lab resume: bit-identical", function()
  -- a private copy of the script: overwritten below, before the resume
  local script = dir .. "/copy_of_tiny_lm.lua"
  local src = assert(io.open(experiment, "rb")):read("a")
  local f = assert(io.open(script, "wb"))
  f:write(src)
  f:close()
  local b = dir .. "/b.h5"
  local argv = { exe, "run", script }
  for _, w in ipairs(settings(b)) do argv[#argv + 1] = w end
  local pid = core.spawn(argv, { stdout = dir .. "/b.log" })
  local reached = wait_checkpoint(b, N, pid, 60)
  T.ok(reached, "the run wrote its checkpoint at step " .. N .. " while still running")
  core.sleep(0.1) -- let it log a few steps past the checkpoint (they must be dropped)
  T.ok(core.kill(pid, "KILL"), "kill -9 sent")
  local wpid, code, sig = core.wait(pid)
  T.eq(sig, 9, "the run died of SIGKILL (exit code " .. tostring(code) .. ")")
  local killed = read_all(b)
  T.eq(killed.status, "running", "a killed run still says running")
  T.ok(killed.latest ~= nil and killed.latest >= N and killed.latest < 2 * N, "latest checkpoint " ..
    tostring(killed.latest) .. " is between N and 2N")
  -- the script on disk changes: resume must not run it
  f = assert(io.open(script, "wb"))
  f:write('error("the script on disk must not run on resume")\n')
  f:close()
  local rcode, out = m2lab { "resume", b }
  T.eq(rcode, 0, out)
  T.ok(out:find("executing the experiment script stored in the run file", 1, true), "resume says what it runs: " .. out)
  T.ok(out:find(core.sha256(src), 1, true), "resume prints the script's sha256")
  T.ok(out:find("copy_of_tiny_lm.lua", 1, true), "resume prints the script's path")
  local resumed = read_all(b)
  T.eq(resumed.status, "done")
  T.eq(resumed.resume_count, 1)
  same_run(reference, resumed, "killed + resumed")
end)

T.case("SIGTERM checkpoints and stops with status interrupted; resume is bit-identical", function()
  local c = dir .. "/c.h5"
  local argv = { exe, "run", experiment }
  for _, w in ipairs(settings(c)) do argv[#argv + 1] = w end
  local pid = core.spawn(argv, { stdout = dir .. "/c.log" })
  T.ok(wait_checkpoint(c, N, pid, 60), "checkpoint at step N while running")
  core.sleep(0.08)
  core.kill(pid, "TERM")
  local _, code = core.wait(pid)
  T.eq(code, 130, "exit status 130 after SIGTERM")
  local log = assert(io.open(dir .. "/c.log", "rb")):read("a")
  T.ok(log:find("interrupted at step", 1, true) and log:find("m2lab resume", 1, true), "says how to continue: " .. log)
  local stopped = read_all(c)
  T.eq(stopped.status, "interrupted")
  T.ok(stopped.latest > N and stopped.latest < 2 * N, "checkpoint written at the step it stopped on: " ..
    tostring(stopped.latest))
  T.eq(#stopped.metrics.loss.steps, stopped.latest, "losses logged up to that step")
  local rcode, out = m2lab { "resume", c }
  T.eq(rcode, 0, out)
  same_run(reference, read_all(c), "terminated + resumed")
end)

T.case("resume refuses a changed config, naming file and key; steps= extends a finished run", function()
  local a = dir .. "/a.h5"
  local code, out = m2lab { "resume", a }
  T.eq(code, 0, out)
  T.ok(out:find("the run is already done (step " .. 2 * N .. "); pass steps=N to extend it", 1, true), out)
  code, out = m2lab { "resume", a, "steps=" .. (2 * N + 4), "d=32" }
  T.eq(code, 1, out)
  T.ok(out:find(a, 1, true) and out:find("config key 'd' is 16 in the run file but 32 now", 1, true), out)
  -- nothing was changed by the refused resume
  local after = read_all(a)
  T.eq(after.metrics.loss.values, reference.metrics.loss.values)
  T.eq(after.status, "done")
  T.eq(after.resume_count, 0)
  code, out = m2lab { "resume", a, "steps=" .. (2 * N + 4) }
  T.eq(code, 0, out)
  local ext = read_all(a)
  T.eq(#ext.metrics.loss.steps, 2 * N + 4, "extended by 4 steps")
  T.eq(ext.latest, 2 * N + 4)
  for i = 1, 2 * N do
    if ext.metrics.loss.values[i] ~= reference.metrics.loss.values[i] then
      T.ok(false, "the first 2N losses are kept unchanged (step " .. i .. ")")
      break
    end
  end
  T.ok(out:find("overrides steps=" .. 2 * N, 1, true) ~= nil or out:find("steps=" .. (2 * N + 4), 1, true) ~= nil, out)
end)

T.case("resume with steps <= the last step has nothing to do; a second resume at once is refused naming the pid",
  function()
  local d = dir .. "/d.h5"
  local argv = { exe, "run", experiment }
  for _, w in ipairs(settings(d)) do argv[#argv + 1] = w end
  local pid = core.spawn(argv, { stdout = dir .. "/d.log" })
  T.ok(wait_checkpoint(d, N, pid, 60), "checkpoint at step N while running")
  core.kill(pid, "TERM")
  core.wait(pid)
  local stopped = read_all(d)
  T.eq(stopped.status, "interrupted")
  local at = stopped.latest
  for _, steps in ipairs { at, N - 1 } do
    local code, out = m2lab { "resume", d, "steps=" .. steps }
    T.eq(code, 0, out)
    T.ok(out:find(string.format("nothing to do: run already at step %d (steps=%d)", at, steps), 1, true), out)
  end
  local after = read_all(d)
  T.eq(after.resume_count, 0, "resume_count not incremented")
  T.eq(after.status, "interrupted", "status kept")
  -- a resume runs (slowly: throttle); a second one finds the file held
  argv = { exe, "resume", d }
  local first = core.spawn(argv, { stdout = dir .. "/d2.log" })
  local t0 = core.clock()
  while not core.run_writer_alive(d) and core.clock() - t0 < 30 and not core.wait(first, true) do core.sleep(0.01) end
  local code, out = m2lab { "resume", d }
  T.eq(code, 1, out)
  T.ok(out:find(d .. ": the run file is being written by pid " .. first, 1, true), out)
  local _, code1 = core.wait(first)
  T.eq(code1, 0, "the first resume finished")
  local done = read_all(d)
  T.eq(done.status, "done")
  T.eq(done.resume_count, 1, "only the resume that ran counts")
  same_run(reference, done, "interrupted + resumed while a second resume was refused")
end)

os.execute("rm -rf " .. sh_quote(dir))
