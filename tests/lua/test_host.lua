-- test_host.lua — the m2lab executable seen from outside (run through io.popen with m2.exe):
-- exit codes, "m2lab: FILE:LINE: message" + traceback on script errors, overrides, help,
-- version, test mode, and Ctrl-C / SIGTERM handling (exit 130, polling m2.interrupted()).
local m2 = require "m2"
local T = m2.test

local run, temp = T.run_m2lab, T.write_temp
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

T.ok(type(m2.exe) == "string" and io.open(m2.exe) ~= nil, "m2.exe names the running executable")

T.case("a script error exits 1 with FILE:LINE and a traceback", function()
  local path = temp("local m2 = require 'm2'\nlocal x = 1\nerror('kaboom')\n")
  local code, out = run("run " .. q(path))
  T.eq(code, 1)
  local name = path:match("[^/]+$"):gsub("%p", "%%%0")
  T.ok(out:find("m2lab: [^\n]*" .. name .. ":3: kaboom") ~= nil, out)
  T.ok(out:find("stack traceback:", 1, true) ~= nil, out)
  os.remove(path)
  -- a core failure in the script: the line of the failing call
  path = temp("local m2 = require 'm2'\n\nlocal y = m2.zeros(2) + m2.zeros(3)\n")
  code, out = run("run " .. q(path))
  T.eq(code, 1)
  T.ok(out:find("m2lab: [^\n]*" .. path:match("[^/]+$"):gsub("%p", "%%%0") .. ":3: add: shapes") ~= nil, out)
  os.remove(path)
  -- a failure inside nn.lua points at the script's line
  path = temp("local m2 = require 'm2'\nlocal lin = m2.nn.Linear(3, 4)\nlocal y = lin(m2.zeros(2, 7))\n")
  code, out = run("run " .. q(path))
  T.eq(code, 1)
  T.ok(out:find("m2lab: [^\n]*" .. path:match("[^/]+$"):gsub("%p", "%%%0") .. ":3: linear") ~= nil, out)
  os.remove(path)
  -- a syntax error
  path = temp("local m2 = require 'm2'\nlocal = 3\n")
  code, out = run("run " .. q(path))
  T.eq(code, 1)
  T.ok(out:find(":2: ", 1, true) ~= nil, out)
  os.remove(path)
end)

T.case("usage errors exit 2", function()
  local code, out = run("run /nonexistent/dir/nothing.lua")
  T.eq(code, 2)
  T.ok(out:find("cannot open script '/nonexistent/dir/nothing.lua'", 1, true) ~= nil, out)
  local path = temp("local m2 = require 'm2'\nprint('ran')\n")
  code, out = run("run " .. q(path) .. " lr")
  T.eq(code, 2)
  T.ok(out:find("malformed override 'lr'", 1, true) ~= nil, out)
  T.ok(out:find("ran", 1, true) == nil, "the script does not run")
  code, out = run("run " .. q(path) .. " =3")
  T.eq(code, 2)
  T.ok(out:find("key before '=' is empty", 1, true) ~= nil, out)
  code, out = run("run")
  T.eq(code, 2)
  T.ok(out:find("missing script", 1, true) ~= nil, out)
  code, out = run("frobnicate")
  T.eq(code, 2)
  T.ok(out:find("unknown command 'frobnicate'", 1, true) ~= nil, out)
  code = run("")
  T.eq(code, 2)
  -- short form: m2lab script.lua
  code, out = run(q(path))
  T.eq(code, 0)
  T.ok(out:find("ran", 1, true) ~= nil, out)
  os.remove(path)
end)

T.case("M2LAB_LUA_DIR overrides the library directory", function()
  local dir = os.tmpname()
  os.remove(dir)
  T.ok(os.execute("mkdir -p " .. q(dir .. "/m2")), "mkdir")
  local f = assert(io.open(dir .. "/m2/init.lua", "w"))
  f:write("return { fake = true, core = require 'm2.core' }\n")
  f:close()
  local path = temp("local m2 = require 'm2'\nprint('fake=' .. tostring(m2.fake), m2.core.lua_dir)\n")
  local code, out = run("run " .. q(path), nil)
  T.eq(code, 0)
  T.ok(out:find("fake=nil", 1, true) ~= nil, out)
  local p = io.popen("M2LAB_LUA_DIR=" .. q(dir) .. " " .. q(m2.exe) .. " run " .. q(path) .. " 2>&1")
  out = p:read("a")
  local _, _, rc = p:close()
  T.eq(rc, 0)
  T.ok(out:find("fake=true\t" .. dir, 1, true) ~= nil, out)
  os.remove(path)
  os.remove(dir .. "/m2/init.lua")
  os.remove(dir .. "/m2")
  os.remove(dir)
end)

T.case("help and version", function()
  local code, out = run("--help")
  T.eq(code, 0)
  T.ok(out:find("run SCRIPT.lua", 1, true) ~= nil and out:find("test SCRIPT.lua", 1, true) ~= nil, out)
  code, out = run("version")
  T.eq(code, 0)
  T.ok(out:find("m2lab " .. m2.version, 1, true) ~= nil and out:find("Lua 5.4", 1, true) ~= nil, out)
end)

T.case("overrides reach m2.args and m2.config", function()
  local path = temp([[
local m2 = require "m2"
local c = m2.config { lr = 0.1, steps = 10, name = "base", flag = false, betas = { 0.9, 0.999 },
                      optim = { wd = 0.0 } }
print(string.format("lr=%s:%s steps=%s:%s name=%s flag=%s betas=%s,%s wd=%s", c.lr, math.type(c.lr), c.steps,
  math.type(c.steps), c.name, tostring(c.flag), c.betas[1], c.betas[2], c.optim.wd))
print("raw", m2.args.lr, math.type(m2.args.steps), m2.args.name, arg[1])
]])
  local code, out = run("run " .. q(path) .. " lr=3e-4 steps=20 name=007 flag=true betas=0.8,0.95 optim.wd=0.1")
  T.eq(code, 0, out)
  T.ok(out:find("lr=0.0003:float steps=20:integer name=007 flag=true betas=0.8,0.95 wd=0.1", 1, true) ~= nil, out)
  T.ok(out:find("raw\t0.0003\tinteger\t7\tlr=3e-4", 1, true) ~= nil, out)
  code, out = run("run " .. q(path) .. " lrr=1")
  T.eq(code, 1)
  T.ok(out:find("unknown override 'lrr' (known keys: betas, flag, lr, name, optim.wd, steps)", 1, true) ~= nil, out)
  T.ok(out:find(path:match("[^/]+$") .. ":2:", 1, true) ~= nil, "located at the m2.config call: " .. out)
  code, out = run("run " .. q(path) .. " steps=2.5")
  T.eq(code, 1)
  T.ok(out:find("override steps=2.5: expected an integer", 1, true) ~= nil, out)
  code, out = run("run " .. q(path) .. " lr=fast")
  T.eq(code, 1)
  T.ok(out:find("override lr=fast: expected a number", 1, true) ~= nil, out)
  code, out = run("run " .. q(path) .. " flag=maybe")
  T.eq(code, 1)
  T.ok(out:find("expected a boolean", 1, true) ~= nil, out)
  os.remove(path)
end)

T.case("test mode: failed checks and empty tests exit 1", function()
  local path = temp("local T = require('m2').test\nT.eq(1, 2)\nT.eq(3, 3)\n")
  local code, out = run("test " .. q(path))
  T.eq(code, 1)
  T.ok(out:find("1 passed, 1 failed", 1, true) ~= nil, out)
  T.ok(out:find(path:match("[^/]+$") .. ":2: eq: got 1, want 2", 1, true) ~= nil, out)
  os.remove(path)
  path = temp("local m2 = require 'm2'\n")
  code, out = run("test " .. q(path))
  T.eq(code, 1)
  T.ok(out:find("no checks", 1, true) ~= nil, out)
  code = run("run " .. q(path))
  T.eq(code, 0, "run mode does not require checks")
  os.remove(path)
end)

-- run a script in the background, send a signal after it printed "ready", return code, output
local function signal_run(script, sig)
  local path = temp(script)
  local outp = os.tmpname()
  local cmd = string.format(
    "%s run %s > %s 2>&1 & pid=$!; i=0; while ! grep -q ready %s && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; " ..
    "kill -%s $pid; wait $pid; echo \"rc=$?\"", q(m2.exe), q(path), q(outp), q(outp), sig)
  local p = io.popen("sh -c " .. q(cmd), "r")
  local rc = p:read("a")
  p:close()
  local f = io.open(outp)
  local out = f:read("a")
  f:close()
  os.remove(outp)
  os.remove(path)
  return tonumber(rc:match("rc=(%d+)")), out
end

T.case("Ctrl-C stops a script with exit 130", function()
  local code, out = signal_run([[
local m2 = require "m2"
print("ready"); io.stdout:flush()
local x = 0
while true do x = x + 1 end
]], "INT")
  T.eq(code, 130, out)
  T.ok(out:find("interrupted", 1, true) ~= nil, out)
  T.ok(out:find(":4: interrupted", 1, true) ~= nil, "stopped at the loop's line: " .. out)
  code, out = signal_run([[
local m2 = require "m2"
print("ready"); io.stdout:flush()
while true do local t = m2.zeros(10) + 1 end
]], "TERM")
  T.eq(code, 130, out)
end)

T.case("a loop polling m2.interrupted() saves before stopping", function()
  local mark = os.tmpname()
  local code, out = signal_run(string.format([[
local m2 = require "m2"
local steps = 0
print("ready"); io.stdout:flush()
while not m2.interrupted() do steps = steps + 1 end
local f = io.open(%q, "w"); f:write("checkpoint after ", steps, " steps"); f:close()
print("saved")
]], mark), "INT")
  T.eq(code, 130, out)
  T.ok(out:find("saved", 1, true) ~= nil, out)
  local f = io.open(mark)
  local text = f and f:read("a") or ""
  if f then f:close() end
  T.ok(text:find("checkpoint after", 1, true) ~= nil, "the script wrote its checkpoint: " .. text)
  os.remove(mark)
end)
