--[==[ m2.resume — `m2lab resume RUN.h5 [key=value ...]`: continue a run from its last checkpoint.

It EXECUTES THE EXPERIMENT SCRIPT STORED IN THE RUN FILE (root attribute `script`), not the file
on disk, with the overrides stored in the run (overrides_json) and then the key=value words
given here (e.g. steps=2000 to extend a run); out= is always the run file itself. The lr schedule
stays the one the checkpoint ran with unless reschedule=true is given (lua/m2/train.lua, "The lr
schedule on resume"); reschedule= is never taken from the stored overrides (it belongs to one
resume). Before running it prints the script's path, size and SHA-256 and the checkpoint it will
continue from, and checks the stored script against its stored hash. The script then calls m2.train as usual;
m2.train sees m2.resuming, loads the checkpoint and continues (lua/m2/train.lua). A script that
never calls m2.train is an error. Only resume files you trust: the script is Lua code.
`m2lab inspect RUN.h5` shows the same information without executing anything.
]==]

local m2 = require "m2"
local core = m2.core
local runs = require "m2.runs"

local resume = {}

local function usage(msg)
  io.stderr:write("m2lab resume: ", msg, "\n(usage: m2lab resume RUN.h5 [key=value ...])\n")
  return 2
end

function resume.main(args)
  if #args ~= 1 then return usage(#args == 0 and "missing run file" or "expected one run file") end
  local path = args[1]
  local f = io.open(path, "rb")
  if not f then return usage(path .. ": no such file") end
  f:close()
  if core.run_writer_alive(path) then -- another m2lab process writes it (a run, or a resume of it)
    local pid = core.run_writer_pid(path)
    io.stderr:write(string.format("m2lab resume: %s: the run file is being written by %s: wait for it to finish (or " ..
      "stop it) and resume then\n", path, pid and ("pid " .. pid) or "another m2lab process"))
    return 1
  end
  local info = runs.stored_script(path, "resumed") -- a clean error for a damaged or foreign file, or no script
  local sha = info.sha256
  local steps = math.tointeger(m2.args.steps)
  if info.status == "done" and (m2.args.steps == nil or (steps and info.latest and steps <= info.latest)) then
    io.stdout:write(string.format("m2lab resume: %s: the run is already done (step %s); pass steps=N%s to extend it\n",
      path, tostring(info.latest), steps and (" larger than " .. tostring(info.latest)) or ""))
    return 0
  end
  -- overrides: the stored ones, then the command line's, with out= forced to this file
  local given = {}
  for _, w in ipairs(info.overrides) do
    if not w:match("^reschedule=") then given[#given + 1] = w end -- reschedule= belongs to one resume
  end
  for _, k in ipairs(core.args_order or {}) do given[#given + 1] = k .. "=" .. m2.args_raw[k] end
  local order, raw = runs.parse_overrides(given)
  local words = {} -- one word per key, its last value, in first-seen order
  for _, k in ipairs(order) do
    if k ~= "out" then words[#words + 1] = k .. "=" .. raw[k] end
  end
  words[#words + 1] = "out=" .. path
  local typed
  order, raw, typed = runs.parse_overrides(words)
  -- the step the resumed run would go to: steps= (given now or stored), else the run's recorded setting
  local target = math.tointeger(typed.steps) or math.tointeger((info.config.train or {}).steps)
  if info.latest and target and target <= info.latest then -- nothing to train: the file is left as it is
    io.stdout:write(string.format("m2lab resume: %s: nothing to do: run already at step %d (steps=%d); pass steps=N " ..
      "larger than %d to continue it\n", path, info.latest, target, info.latest))
    return 0
  end
  local script_path = info.script_path or "(unknown script)"
  io.stdout:write(string.format("m2lab resume: %s: executing the experiment script stored in the run file\n" ..
    "  script    %s (%d bytes, sha256 %s)\n  overrides %s\n  from      %s\n", path, script_path, #info.script, sha,
    table.concat(words, " "), info.latest and ("checkpoint at step " .. info.latest) or
    "the start (the run has no complete checkpoint)"))
  io.stdout:flush()
  m2.resuming = { path = path, overrides = words, from = info.latest }
  runs.exec_script(info, order, raw, typed)
  if not m2.resuming.used then
    m2.error(string.format("%s: the stored script %s finished without calling m2.train: nothing was resumed", path,
      script_path))
  end
  return 0
end

return resume
