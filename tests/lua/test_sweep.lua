-- test_sweep.lua — m2.sweep / `m2lab sweep`: member expansion (grid x random, list, seeds), two
-- members at a time as separate processes, a deliberately failing member (an unknown layer letter)
-- recorded without stopping the sweep, the index (hyper-parameters, status, links, inspect table),
-- a re-run that skips the finished members, and a killed member that the re-run resumes.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote = T.sh_quote
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end
local function mtime_key(path) -- size and the loss series: changes if the member ran again
  local r <close> = runs.open(path)
  return r:get_attr("start_time") .. "/" .. tostring(r:get_attr("resume_count"))
end

local sweep_script = dir .. "/s.lua"
write(sweep_script, string.format([[
local m2 = require "m2"
m2.sweep {
  name = "t",
  script = %q,
  set = { steps = 8, checkpoint_every = 4, eval_every = 4, d = 16 },
  grid = { lr = { 1e-3, 1e-2 } },
  random = { n = 1, seed = 3, space = { arch = { "choice", { "M", "A" } } } },
  list = { { arch = "Q", lr = 1e-3 } },   -- fails: Q is no layer kind
  seeds = { 1, 2 },
  out = %q,
  parallel = 2,
}
]], m2.source_dir .. "/experiments/tiny_lm.lua", dir .. "/out/"))

local first_index
T.case("members expand and a failing member does not stop the sweep", function()
  local code, out = T.run_m2lab("sweep " .. sh_quote(sweep_script) .. " dry=true")
  T.eq(code, 0, out)
  T.ok(out:find("6 members", 1, true), out)
  code, out = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 1, "exit status 1: a member failed\n" .. out)
  T.ok(out:find("6 members: 4 done (0 skipped), 2 failed", 1, true), out)
  local ix = core.sweep_index_read(dir .. "/out/index.h5")
  first_index = ix
  T.eq(ix.name, "t")
  T.eq(ix.keys, { "arch", "lr", "seed" }, "the varying hyper-parameters")
  T.eq(#ix.members, 6, "every member is indexed")
  local done, failed = 0, 0
  local arch_of_random
  for _, m in ipairs(ix.members) do
    T.eq(m.hparams.steps, 8, m.name .. ": fixed overrides recorded")
    T.ok(m.file == m.name .. ".h5", "file relative to the index: " .. m.file)
    if m.hparams.arch == "Q" then
      T.ok(m.status:match("^failed: .*unknown layer letter 'Q'") ~= nil, m.status)
      T.eq(m.exit_code, 1)
      failed = failed + 1
    else
      T.eq(m.status, "done", m.name)
      T.eq(m.exit_code, 0)
      arch_of_random = arch_of_random or m.hparams.arch
      T.eq(m.hparams.arch, arch_of_random, "one random sample, crossed with the grid")
      local info = runs.info(dir .. "/out/" .. m.file)
      T.eq(info.status, "done")
      T.eq(info.config.config.lr, m.hparams.lr, "the member ran with its hyper-parameters")
      T.eq(info.config.config.seed, m.hparams.seed)
      done = done + 1
    end
  end
  T.eq({ done, failed }, { 4, 2 })
  T.ok(ix.sweep_source:find("m2.sweep", 1, true), "the sweep script's text is stored")
  -- inspect: the table of members
  code, out = T.run_m2lab("inspect " .. sh_quote(dir .. "/out/index.h5"))
  T.eq(code, 0, out)
  T.ok(out:find("sweep t: 6 members (4 done, 2 failed, 0 other)", 1, true), out)
  T.ok(out:find("member%s+status%s+arch%s+lr%s+seed%s+step%s+loss%s+eval.acc%s+eval.loss") ~= nil, out)
  T.ok(out:find("arch%-Q_lr%-0.001_seed%-1%s+failed: ") ~= nil, out)
  T.ok(out:find("lr%-0.01_seed%-2%s+done%s+%u%s+0.01%s+2%s+8%s+%d") ~= nil, out)
end)

T.case("re-running skips finished members; a killed member is resumed", function()
  -- kill one finished member's run state back to "killed after its checkpoint at 4"
  local victim
  for _, m in ipairs(first_index.members) do
    if m.status == "done" and not victim then victim = m end
  end
  local vpath = dir .. "/out/" .. victim.file
  local keep = {}
  for _, m in ipairs(first_index.members) do
    if m.status == "done" and m ~= victim then keep[m.name] = mtime_key(dir .. "/out/" .. m.file) end
  end
  -- run the victim again, slowly, and SIGKILL it after its checkpoint at step 4
  os.remove(vpath)
  local argv = { m2.exe, "run", m2.source_dir .. "/experiments/tiny_lm.lua" }
  for k, v in pairs(victim.hparams) do argv[#argv + 1] = k .. "=" .. tostring(v) end
  argv[#argv + 1] = "throttle=0.1"
  argv[#argv + 1] = "out=" .. vpath
  local pid = core.spawn(argv, { stdout = dir .. "/victim.log" })
  local t0, latest = core.clock(), nil
  while core.clock() - t0 < 30 and not (latest and latest >= 4) do
    core.sleep(0.02)
    local ok, l = pcall(function()
      local r <close> = runs.open(vpath, { open_timeout = 0.5 })
      return r:ckpt_latest()
    end)
    if ok then latest = l end
  end
  core.kill(pid, "KILL")
  local _, _, sig = core.wait(pid)
  T.eq(sig, 9, "the victim was killed")
  local before = runs.info(vpath)
  T.eq(before.status, "running")
  T.ok(before.latest == 4, "killed after its checkpoint at 4: " .. tostring(before.latest))
  local code, out = T.run_m2lab("sweep " .. sh_quote(sweep_script))
  T.eq(code, 1, out)
  T.ok(out:find("6 members (3 already done)", 1, true), out)
  T.ok(out:find("start  " .. victim.name .. " (resuming its checkpoint)", 1, true), out)
  T.ok(out:find("6 members: 4 done (3 skipped), 2 failed", 1, true), out)
  for name, key in pairs(keep) do T.eq(mtime_key(dir .. "/out/" .. name .. ".h5"), key, name .. " was not run again") end
  local info = runs.info(vpath)
  T.eq(info.status, "done")
  T.eq(info.resume_count, 1, "the victim was resumed")
  local steps = runs.series(vpath, "metrics", "loss")
  T.eq(#steps, 8)
end)

os.execute("rm -rf " .. sh_quote(dir))
