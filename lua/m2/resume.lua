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
  local info = runs.info(path) -- raises a clean error for a damaged or foreign file
  if info.script == "" then
    m2.error(path .. ": the run file stores no experiment script (root attribute 'script' is empty): it was not " ..
      "written by an m2lab script run, so it cannot be resumed")
  end
  local sha = core.sha256(info.script)
  if info.script_sha256 and info.script_sha256 ~= sha then
    m2.error(string.format("%s: the stored script does not match its stored hash (script_sha256 %s, computed %s): the " ..
      "file is damaged", path, info.script_sha256, sha))
  end
  local steps = math.tointeger(m2.args.steps)
  if info.status == "done" and (m2.args.steps == nil or (steps and info.latest and steps <= info.latest)) then
    io.stdout:write(string.format("m2lab resume: %s: the run is already done (step %s); pass steps=N%s to extend it\n",
      path, tostring(info.latest), steps and (" larger than " .. tostring(info.latest)) or ""))
    return 0
  end
  -- overrides: the stored ones, then the command line's, with out= forced to this file
  local order, raw = {}, {}
  local function add(word)
    local k, v = word:match("^([^=]+)=(.*)$")
    if not k then return end
    if raw[k] == nil then order[#order + 1] = k end
    raw[k] = v
  end
  for _, w in ipairs(info.overrides) do
    if not w:match("^reschedule=") then add(w) end
  end
  for _, k in ipairs(core.args_order or {}) do add(k .. "=" .. m2.args_raw[k]) end
  raw.out = nil
  local words, typed = {}, {}
  for _, k in ipairs(order) do
    if raw[k] ~= nil then
      words[#words + 1] = k .. "=" .. raw[k]
      local v = raw[k]
      if v == "true" then typed[k] = true
      elseif v == "false" then typed[k] = false
      else typed[k] = math.tointeger(tonumber(v)) or tonumber(v) or v end
    end
  end
  words[#words + 1] = "out=" .. path
  typed.out, raw.out = path, path
  local script_path = info.script_path or "(unknown script)"
  io.stdout:write(string.format("m2lab resume: %s: executing the experiment script stored in the run file\n" ..
    "  script    %s (%d bytes, sha256 %s)\n  overrides %s\n  from      %s\n", path, script_path, #info.script, sha,
    table.concat(words, " "), info.latest and ("checkpoint at step " .. info.latest) or
    "the start (the run has no complete checkpoint)"))
  io.stdout:flush()
  -- the environment the script sees
  m2.args, m2.args_raw = typed, raw
  core.args, core.args_raw, core.args_order = typed, raw, order
  m2.script, core.script = script_path, script_path
  m2.script_source = info.script
  m2.resuming = { path = path, overrides = words, from = info.latest }
  local dir = script_path:match("^(.*)/[^/]*$")
  if dir then package.path = dir .. "/?.lua;" .. package.path end
  local chunk, err = load(info.script, "@" .. script_path, "t")
  if not chunk then m2.error(path .. ": the stored script does not compile: " .. err) end
  chunk()
  if not m2.resuming.used then
    m2.error(string.format("%s: the stored script %s finished without calling m2.train: nothing was resumed", path,
      script_path))
  end
  return 0
end

return resume
