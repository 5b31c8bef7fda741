--[==[ m2.sweep — run an experiment script over many configurations, each member a separate
`m2lab run` process, and index the member run files in one HDF5 file (core/runfile/runfile_sweep.h).

  -- experiments/example_sweep.lua; run it with `m2lab sweep experiments/example_sweep.lua [parallel=4]`
  local m2 = require "m2"
  m2.sweep {
    name = "lr-arch",                       -- default: the sweep script's file name
    script = "experiments/tiny_lm.lua",     -- the members' experiment (relative to the working directory,
                                            --   else to the sweep script's directory, else to the source tree)
    set = { steps = 200 },                  -- overrides every member gets
    grid = { lr = { 1e-3, 3e-3 }, arch = { "M", "A" } },        -- the cartesian product
    random = { n = 4, seed = 0, space = { lr = { "log", 1e-4, 1e-2 }, d = { "int", 16, 64 },
               arch = { "choice", { "M", "G" } }, wd = { "uniform", 0, 0.1 } } },  -- crossed with grid
    list = { { arch = "S", lr = 1e-3 }, { arch = "MA" } },      -- explicit members (not crossed)
    seeds = { 1, 2, 3 },                    -- every member above once per seed (override seed=)
    out = "runs/lr-arch/",                  -- member run files, logs and index.h5 go here
    parallel = 2,                           -- members at a time (command line: parallel=N)
  }
  -> { members = {{name, status, file, hparams}, ...}, done = n, failed = n, skipped = n, index = path }

Members: (grid x random samples) followed by list, each repeated for every seed; a member is the
set of overrides `key=value` passed to `m2lab run SCRIPT ... out=DIR/NAME.h5` (stdout and stderr
in DIR/NAME.log). Names join the overrides that vary across members ("arch-M_lr-0.001_seed-1").
The index DIR/index.h5 links every member's run file (HDF5 external links /members/NAME) and
records its hyper-parameters and status ("pending", "running", "done", "failed: <error>",
"interrupted") under /info/NAME; it is rewritten (atomically) whenever a member starts or ends.
A failing member is recorded and the sweep goes on. Re-running the sweep goes by each member's
own run file, never by the index alone (a sweep parent killed with SIGKILL leaves "running" there
while its orphaned members finish): it skips members whose run file says done (and records them
done), leaves alone a member whose run file an m2lab writer still holds (says so, records it
"running"), resumes (`m2lab resume`) members that were killed or interrupted after a checkpoint,
moves an unreadable run file aside (NAME.h5.unreadable) and re-runs the others from scratch.
The sweep's exit status is 1 when a member failed.
Command line: parallel=N, dry=true (list the members and exit). `m2lab inspect DIR/index.h5`
prints the members' table; notebooks/ load sweeps into pandas.
]==]

local m2 = require "m2"
local core = m2.core
local runs = require "m2.runs"

local sweep = {}

local KNOWN = { name = true, script = true, set = true, grid = true, random = true, list = true, seeds = true,
                out = true, parallel = true, keys = true }

local function fail(msg) m2.error("m2.sweep: " .. msg) end

-- the shortest text that reads back as the same number
local function num_text(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  for _, f in ipairs { "%.6g", "%.10g", "%.17g" } do
    local s = string.format(f, v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end

local function value_text(key, v)
  local t = type(v)
  if t == "number" then return num_text(v) end
  if t == "boolean" then return tostring(v) end
  if t == "string" then
    if v:find("[%c]") then fail(string.format("value of '%s' contains a control character", key)) end
    return v
  end
  if t == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = value_text(key, x) end
    return table.concat(parts, ",")
  end
  fail(string.format("value of '%s' must be a number, string, boolean or list, got %s", key, t))
end

-- value as stored in the index (lists as their text)
local function index_value(v)
  if type(v) == "table" then return value_text("?", v) end
  return v
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- a small deterministic generator for random search: uniform in [0, 1)
local function uniform_gen(seed)
  local s = (0x9E3779B97F4A7C15 ~ seed) * 0x5851F42D4C957F2D + 0x14057B7EF767814F
  return function()
    s = s * 0x5851F42D4C957F2D + 0x14057B7EF767814F
    local x = s ~ (s >> 29)
    return ((x >> 11) & ((1 << 53) - 1)) / 2.0 ^ 53
  end
end

local function sample(key, dist, u)
  if type(dist) ~= "table" then fail("random.space." .. key .. " must be a table such as {\"log\", 1e-4, 1e-2}") end
  local kind = dist[1]
  if kind == "log" or kind == "uniform" then
    local a, b = dist[2], dist[3]
    if type(a) ~= "number" or type(b) ~= "number" or (kind == "log" and (a <= 0 or b <= 0)) then
      fail(string.format("random.space.%s: {\"%s\", lo, hi} needs numbers%s", key, kind, kind == "log" and " > 0" or ""))
    end
    if kind == "log" then return math.exp(math.log(a) + u() * (math.log(b) - math.log(a))) end
    return a + u() * (b - a)
  elseif kind == "int" then
    local a, b = dist[2], dist[3]
    if math.type(a) ~= "integer" or math.type(b) ~= "integer" or b < a then
      fail("random.space." .. key .. ": {\"int\", lo, hi} needs integers lo <= hi")
    end
    return a + math.floor(u() * (b - a + 1))
  elseif kind == "choice" then
    local c = dist[2]
    if type(c) ~= "table" or #c == 0 then fail("random.space." .. key .. ": {\"choice\", {a, b, ...}} needs a list") end
    return c[1 + math.floor(u() * #c)]
  end
  fail(string.format("random.space.%s: unknown distribution '%s' (log, uniform, int, choice)", key, tostring(kind)))
end

-- expand the declaration into member override tables
local function expand(spec)
  local base = { {} }
  if spec.grid then
    if type(spec.grid) ~= "table" then fail("grid must be a table {key = {values...}}") end
    for _, k in ipairs(sorted_keys(spec.grid)) do
      local vals = spec.grid[k]
      if type(vals) ~= "table" or #vals == 0 then fail("grid." .. k .. " must be a non-empty list of values") end
      local nxt = {}
      for _, m in ipairs(base) do
        for _, v in ipairs(vals) do
          local c = {}
          for kk, vv in pairs(m) do c[kk] = vv end
          c[k] = v
          nxt[#nxt + 1] = c
        end
      end
      base = nxt
    end
  end
  if spec.random then
    local r = spec.random
    if type(r) ~= "table" or math.type(r.n) ~= "integer" or r.n < 1 or type(r.space) ~= "table" then
      fail("random must be {n = count, seed = integer, space = {key = {\"log\", lo, hi}, ...}}")
    end
    local u = uniform_gen(r.seed or 0)
    local samples = {}
    for i = 1, r.n do
      local smp = {}
      for _, k in ipairs(sorted_keys(r.space)) do smp[k] = sample(k, r.space[k], u) end
      samples[i] = smp
    end
    local nxt = {}
    for _, m in ipairs(base) do
      for _, smp in ipairs(samples) do
        local c = {}
        for kk, vv in pairs(m) do c[kk] = vv end
        for kk, vv in pairs(smp) do c[kk] = vv end
        nxt[#nxt + 1] = c
      end
    end
    base = nxt
  end
  local members = {}
  if spec.grid or spec.random or not spec.list then
    for _, m in ipairs(base) do members[#members + 1] = m end
  end
  if spec.list then
    if type(spec.list) ~= "table" then fail("list must be a list of override tables") end
    for i, m in ipairs(spec.list) do
      if type(m) ~= "table" then fail("list[" .. i .. "] must be a table of overrides") end
      local c = {}
      for k, v in pairs(m) do c[k] = v end
      members[#members + 1] = c
    end
  end
  if spec.seeds then
    if type(spec.seeds) ~= "table" or #spec.seeds == 0 then fail("seeds must be a non-empty list of integers") end
    local nxt = {}
    for _, m in ipairs(members) do
      for _, s in ipairs(spec.seeds) do
        if math.type(s) ~= "integer" then fail("seeds must be integers") end
        local c = {}
        for k, v in pairs(m) do c[k] = v end
        c.seed = s
        nxt[#nxt + 1] = c
      end
    end
    members = nxt
  end
  return members
end

local function find_script(path, sweep_script)
  local function exists(p)
    local f = io.open(p, "rb")
    if f then f:close() end
    return f ~= nil
  end
  if exists(path) then return path end
  local dir = sweep_script and sweep_script:match("^(.*)/[^/]*$")
  if dir and exists(dir .. "/" .. path) then return dir .. "/" .. path end
  if core.source_dir and exists(core.source_dir .. "/" .. path) then return core.source_dir .. "/" .. path end
  fail(string.format("script '%s' not found (tried it relative to the working directory%s and the source tree)", path,
    dir and (", to " .. dir) or ""))
end

local function sanitize(s) return (s:gsub("[^%w%.%-+]", "_")) end

-- ---------------------------------------------------------------------------------------
-- running
-- ---------------------------------------------------------------------------------------

local function last_error_line(log)
  local f = io.open(log, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local found
  for line in text:gmatch("[^\n]+") do
    if line:match("^m2lab") then found = found or line end
  end
  return found and found:gsub("^m2lab:%s*", "")
end

local function run_status(path)
  local ok, info = pcall(runs.info, path)
  if not ok then return nil end
  return info
end

-- "host: CPU model, N logical cores", for the machine line of a results table.
function sweep.machine()
  local host = m2.core.hostname and m2.core.hostname() or "host"
  local f = io.open("/proc/cpuinfo")
  if not f then return host .. ": unknown CPU" end
  local text = f:read("a")
  f:close()
  local model = text:match("model name%s*:%s*([^\n]+)") or "unknown CPU"
  local n = 0
  for _ in text:gmatch("\nprocessor%s*:") do n = n + 1 end
  if text:match("^processor%s*:") then n = n + 1 end
  return string.format("%s: %s, %d logical cores", host, model, n)
end

function sweep.run(spec)
  if type(spec) ~= "table" then fail("expected a table of settings") end
  for k in pairs(spec) do
    if not KNOWN[k] then
      local names = sorted_keys(KNOWN)
      fail(string.format("unknown setting '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
  end
  m2.interrupted() -- we poll: Ctrl-C lets the running members checkpoint and the index be written
  local sweep_script = m2.script
  local stem = sweep_script and (sweep_script:match("([^/]+)$") or sweep_script):gsub("%.lua$", "") or "sweep"
  local name = spec.name or stem
  if type(spec.script) ~= "string" then fail("script must be the path of the members' experiment script") end
  local script = find_script(spec.script, sweep_script)
  local dir = spec.out or ("runs/" .. sanitize(name) .. "/")
  if type(dir) ~= "string" or dir == "" then fail("out must be a directory path") end
  if dir:sub(-1) ~= "/" then dir = dir .. "/" end
  local parallel = m2.args.parallel or spec.parallel or 1
  if math.type(parallel) ~= "integer" or parallel < 1 then fail("parallel must be a positive integer") end
  local set = spec.set or {}
  local members = expand(spec)
  if #members == 0 then fail("the sweep has no members") end

  -- hyper-parameter keys: those that vary (or spec.keys), in first-seen sorted order
  local keys = spec.keys
  if not keys then
    local allk, first = {}, {}
    for _, m in ipairs(members) do for k in pairs(m) do allk[k] = true end end
    keys = {}
    for _, k in ipairs(sorted_keys(allk)) do
      local varies = false
      for _, m in ipairs(members) do
        if value_text(k, m[k] == nil and "" or m[k]) ~= value_text(k, members[1][k] == nil and "" or members[1][k]) then
          varies = true
        end
      end
      if varies or #members == 1 then keys[#keys + 1] = k end
      first[k] = true
    end
    -- seed last: it reads better as the last column
    table.sort(keys, function(a, b)
      if (a == "seed") ~= (b == "seed") then return b == "seed" end
      return a < b
    end)
  end

  -- names and argument lists
  local used = {}
  for i, m in ipairs(members) do
    local parts = {}
    for _, k in ipairs(keys) do
      if m[k] ~= nil then parts[#parts + 1] = sanitize(k .. "-" .. value_text(k, m[k])) end
    end
    local nm = #parts > 0 and table.concat(parts, "_") or string.format("member%d", i)
    if #nm > 200 then nm = nm:sub(1, 200) end
    local base, n = nm, 2
    while used[nm] do nm = base .. "-" .. n; n = n + 1 end
    used[nm] = true
    local hp, args = {}, {}
    for _, k in ipairs(sorted_keys(set)) do
      if m[k] == nil then args[#args + 1] = k .. "=" .. value_text(k, set[k]); hp[k] = index_value(set[k]) end
    end
    for _, k in ipairs(sorted_keys(m)) do
      args[#args + 1] = k .. "=" .. value_text(k, m[k])
      hp[k] = index_value(m[k])
    end
    members[i] = { name = nm, file = nm .. ".h5", path = dir .. nm .. ".h5", log = dir .. nm .. ".log", args = args,
                   hparams = hp, status = "pending", exit_code = -1 }
  end

  if m2.args.dry then
    print(string.format("sweep %s: %d members of %s -> %s", name, #members, script, dir))
    for _, m in ipairs(members) do print("  " .. m.name .. ": " .. table.concat(m.args, " ")) end
    sweep.last = { members = members, done = 0, failed = 0, skipped = 0, index = dir .. "index.h5" }
    return sweep.last
  end

  core.mkdir_p(dir:sub(1, -2))
  local index_path = dir .. "index.h5"
  local old = {}
  local created
  local fh = io.open(index_path, "rb")
  if fh then
    fh:close()
    local ok, ix = pcall(core.sweep_index_read, index_path)
    if ok then
      created = ix.created
      for _, m in ipairs(ix.members) do old[m.name] = m end
    else
      io.stderr:write("m2.sweep: ignoring the unreadable old index: ", tostring(ix), "\n")
    end
  end
  local sweep_source = m2.script_source
  if not sweep_source and sweep_script then
    local f = io.open(sweep_script, "rb")
    if f then sweep_source = f:read("a"); f:close() end
  end
  local header = { name = name, script = script, sweep_source = sweep_source or "", created = created, keys = keys }
  local function write_index()
    local list = {}
    for i, m in ipairs(members) do
      list[i] = { name = m.name, file = m.file, status = m.status, exit_code = m.exit_code, hparams = m.hparams }
    end
    header.members = list
    core.sweep_index_write(index_path, header)
  end

  -- what to do with each member: the member's own run file decides, never the index alone (a sweep
  -- parent killed with SIGKILL leaves "running" in the index while its orphaned members go on and finish)
  local queue, skipped, busy = {}, 0, 0
  for _, m in ipairs(members) do
    local prev = old[m.name]
    local exists = io.open(m.path, "rb")
    if exists then exists:close() end
    if exists and core.run_writer_alive(m.path) then
      -- a member left running by an earlier sweep (or started by hand): not touched, not started again
      m.status = "running"
      busy = busy + 1
      print(string.format("  skip   %s: its run file %s is still being written by another process (a member " ..
        "left running by an earlier sweep?); not touched; re-run the sweep once it has finished", m.name, m.path))
    else
      local info = exists and run_status(m.path)
      if info and info.status == "done" then
        m.status, m.exit_code = "done", prev and prev.status == "done" and prev.exit_code or 0
        skipped = skipped + 1
        if prev and prev.status ~= "done" then
          print(string.format("  keep   %s: its run file says done (the index said '%s'); recorded as done",
            m.name, prev.status))
        end
      else
        if info and info.latest and (info.status == "running" or info.status == "interrupted") then
          m.resume = true
        elseif info then
          os.remove(m.path) -- failed, or stopped before its first checkpoint: run again from scratch
        elseif exists then
          -- unreadable: kept aside, never deleted (it may be a damaged finished run)
          local aside, n = m.path .. ".unreadable", 2
          while io.open(aside, "rb") do aside = string.format("%s.unreadable.%d", m.path, n); n = n + 1 end
          local ok, err = os.rename(m.path, aside)
          if not ok then fail(string.format("cannot move the unreadable run file %s aside: %s", m.path, err)) end
          print(string.format("  moved  %s: its run file could not be read; kept as %s, the member runs again",
            m.name, aside))
        end
        queue[#queue + 1] = m
      end
    end
  end
  print(string.format("sweep %s: %d members (%d already done%s), %d at a time, script %s -> %s", name, #members,
    skipped, busy > 0 and string.format(", %d still running elsewhere", busy) or "", parallel, script, index_path))
  write_index()

  local exe = m2.exe
  local running, nrun = {}, 0
  local interrupted = false
  local function start(m)
    local argv
    if m.resume then
      argv = { exe, "resume", m.path }
    else
      argv = { exe, "run", script }
      for _, a in ipairs(m.args) do argv[#argv + 1] = a end
      argv[#argv + 1] = "out=" .. m.path
    end
    local pid = core.spawn(argv, { stdout = m.log, append = m.resume })
    running[pid] = m
    nrun = nrun + 1
    m.status = "running"
    print(string.format("  start  %s%s", m.name, m.resume and " (resuming its checkpoint)" or ""))
    write_index()
  end
  local function finish(pid, code, sig)
    local m = running[pid]
    if not m then return end
    running[pid] = nil
    nrun = nrun - 1
    m.exit_code = code or -1
    local info = run_status(m.path)
    if code == 0 and info and info.status == "done" then
      m.status = "done"
    elseif info and info.status == "interrupted" or code == 130 then
      m.status = "interrupted"
    else
      local msg = info and info.status and info.status:match("^failed: (.*)$") or last_error_line(m.log) or
        (sig and ("killed by signal " .. sig) or ("exit status " .. tostring(code)))
      m.status = "failed: " .. msg:sub(1, 400)
    end
    print(string.format("  %-6s %s%s", m.status == "done" and "done" or m.status:match("^%a+"), m.name,
      m.status:match("^failed") and ("  (" .. m.status:sub(9) .. "; log " .. m.log .. ")") or ""))
    write_index()
  end

  local qi = 1
  while qi <= #queue or nrun > 0 do
    while not interrupted and nrun < parallel and qi <= #queue do
      start(queue[qi])
      qi = qi + 1
    end
    if nrun == 0 then break end
    local pid, code, sig = core.wait(-1)
    if pid then finish(pid, code, sig) end
    if m2.interrupted() and not interrupted then
      interrupted = true
      print("sweep: interrupted; waiting for the running members to checkpoint and stop")
      for p in pairs(running) do core.kill(p, "TERM") end
    end
  end

  local done, failed = 0, 0
  for _, m in ipairs(members) do
    if m.status == "done" then done = done + 1 elseif m.status:match("^failed") then failed = failed + 1 end
  end
  print(string.format("sweep %s: %d members: %d done (%d skipped), %d failed, %d other; index %s", name, #members, done,
    skipped, failed, #members - done - failed, index_path))
  local result = { members = members, done = done, failed = failed, skipped = skipped, index = index_path }
  if interrupted then m2.error("m2.sweep: interrupted; re-run the sweep to continue it") end
  sweep.last = result
  return result
end

-- `m2lab sweep SWEEP.lua [parallel=N] [dry=true]`
function sweep.main(args)
  if #args ~= 1 then
    io.stderr:write("m2lab sweep: expected one sweep script (usage: m2lab sweep SWEEP.lua [parallel=N] [dry=true])\n")
    return 2
  end
  local path = args[1]
  local chunk, err = loadfile(path)
  if not chunk then
    io.stderr:write("m2lab sweep: ", err, "\n")
    return 2
  end
  m2.script, core.script = path, path
  local dir = path:match("^(.*)/[^/]*$")
  if dir then package.path = dir .. "/?.lua;" .. package.path end
  sweep.last = nil
  chunk()
  if not sweep.last then
    io.stderr:write("m2lab sweep: " .. path .. " did not call m2.sweep{...}\n")
    return 1
  end
  return sweep.last.failed > 0 and 1 or 0
end

setmetatable(sweep, { __call = function(_, spec) return sweep.run(spec) end })
return sweep
