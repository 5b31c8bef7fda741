--[==[ m2.test — a small assertion library for tests/lua/*.lua, run with `m2lab test FILE`.

  local m2 = require "m2"
  local T = m2.test
  T.case("addition", function()
    T.eq((m2.tensor{1, 2} + 1):totable(), {2, 3})
    T.close(m2.tensor{0.1}:exp():item(), math.exp(0.1), 1e-6)
    T.raises(function() m2.zeros(2) + m2.zeros(3) end, "broadcast")
  end)

Checks never stop the test: a failing one prints "FAIL FILE:LINE: ..." (the line of the check
in the test script) and the run goes on. A Lua error inside a case fails that case and moves on
to the next one. At the end the host calls T.finish(), which prints "N passed, M failed" and
makes m2lab exit 1 if anything failed (or, for `m2lab test`, if no check ran at all).
]==]

local m2 = require "m2"

local T = { passed = 0, failed = 0, cases = 0, failed_cases = 0, finished = false }

local function where()
  return (m2.core.where():gsub(": $", ""))
end

local function report(ok, what, detail, msg)
  if ok then
    T.passed = T.passed + 1
    return true
  end
  T.failed = T.failed + 1
  io.stdout:write(string.format("FAIL %s: %s%s%s\n", where(), what, detail and (": " .. detail) or "",
    msg and (" (" .. tostring(msg) .. ")") or ""))
  io.stdout:flush()
  return false
end

-- value printing for messages
local function show(v, depth)
  depth = depth or 0
  if m2.is_tensor(v) then return tostring(v) end
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  if depth > 3 then return "{...}" end
  local parts, n = {}, 0
  for i, x in ipairs(v) do
    n = n + 1
    if n > 16 then parts[#parts + 1] = "..."; break end
    parts[i] = show(x, depth + 1)
  end
  for k, x in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then
      n = n + 1
      if n > 16 then parts[#parts + 1] = "..."; break end
      parts[#parts + 1] = tostring(k) .. "=" .. show(x, depth + 1)
    end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
T.show = show

local function plain(v)
  if m2.is_tensor(v) then return v:totable() end
  return v
end

-- deep equality; returns ok, path-of-first-difference
local function deep_eq(a, b, path, seen)
  if rawequal(a, b) then return true, path end
  if type(a) == "number" and type(b) == "number" then return a == b, path end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b, path end
  seen = seen or {}
  if seen[a] == b then return true, path end -- a cycle already being compared
  seen[a] = b
  for k, x in pairs(a) do
    local ok, p = deep_eq(x, b[k], path .. "[" .. tostring(k) .. "]", seen)
    if not ok then return false, p end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "[" .. tostring(k) .. "]" end
  end
  return true, path
end

-- T.ok(cond [, msg])
function T.ok(cond, msg) return report(cond and true or false, "ok", "condition is " .. tostring(cond), msg) end

-- T.eq(got, want [, msg]): deep equality of numbers, strings, tables; tensors compare by value
function T.eq(got, want, msg)
  local a, b = plain(got), plain(want)
  local ok, path = deep_eq(a, b, "")
  return report(ok, "eq", ok and nil or string.format("got %s, want %s%s", show(a), show(b),
    path ~= "" and (" (first difference at " .. path .. ")") or ""), msg)
end

-- T.close(got, want [, tol] [, msg]): |got - want| <= atol + rtol |want| elementwise, for
-- numbers, tensors and nested tables; tol is a number (atol = rtol = tol) or {atol=, rtol=}
-- (default atol 1e-6, rtol 1e-5). NaN never passes.
function T.close(got, want, tol, msg)
  local atol, rtol = 1e-6, 1e-5
  if type(tol) == "number" then atol, rtol = tol, tol
  elseif type(tol) == "table" then atol, rtol = tol.atol or atol, tol.rtol or rtol
  elseif type(tol) == "string" and msg == nil then msg = tol end
  local worst, wpath, wa, wb = nil, "", nil, nil
  local function cmp(a, b, path)
    if type(a) == "number" and type(b) == "number" then
      local ok = math.abs(a - b) <= atol + rtol * math.abs(b)
      if not ok and worst == nil then worst, wpath, wa, wb = true, path, a, b end
      return
    end
    if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then
      if worst == nil then worst, wpath, wa, wb = true, path, a, b end
      return
    end
    for i = 1, #a do cmp(a[i], b[i], path .. "[" .. i .. "]") end
  end
  cmp(plain(got), plain(want), "")
  if worst == nil then return report(true) end
  return report(false, "close", string.format("got %s, want %s%s (atol %g, rtol %g)", show(wa), show(wb),
    wpath ~= "" and (" at " .. wpath) or "", atol, rtol), msg)
end

-- T.raises(fn, pattern [, msg]) -> the error message: fn must raise an error whose message
-- matches the Lua pattern (plain substring match when the pattern has no magic characters)
function T.raises(fn, pattern, msg)
  local ok, err = pcall(fn)
  if ok then
    report(false, "raises", "no error was raised" .. (pattern and (", expected one matching '" .. pattern .. "'") or ""), msg)
    return nil
  end
  err = tostring(err)
  if pattern and not err:find(pattern) and not err:find(pattern, 1, true) then
    report(false, "raises", string.format("error %q does not match '%s'", err, pattern), msg)
    return err
  end
  report(true)
  return err
end

-- T.case(name, fn): run fn; a Lua error inside fails the case (with a traceback)
function T.case(name, fn)
  T.cases = T.cases + 1
  local before = T.failed
  local t0 = os.clock()
  local ok, err = xpcall(fn, debug.traceback)
  if not ok then
    T.failed = T.failed + 1
    io.stdout:write(string.format("FAIL case '%s' raised an error: %s\n", name, tostring(err)))
  end
  local failed = T.failed > before
  if failed then T.failed_cases = T.failed_cases + 1 end
  io.stdout:write(string.format("%s %s (%.2fs)\n", failed and "FAIL" or "ok  ", name, os.clock() - t0))
  io.stdout:flush()
  return not failed
end

-- T.finish([test_mode]) -> exit code; prints the summary once (the host calls it at the end)
function T.finish(test_mode)
  if T.finished then return T.failed > 0 and 1 or 0 end
  T.finished = true
  local script = m2.script and m2.script:match("[^/]+$") or "test"
  io.stdout:write(string.format("%s: %d passed, %d failed (%d cases, %d failed)\n", script, T.passed, T.failed,
    T.cases, T.failed_cases))
  io.stdout:flush()
  if T.failed > 0 then return 1 end
  if test_mode and T.passed == 0 then
    io.stdout:write("no checks ran\n")
    return 1
  end
  return 0
end

-- helpers for tests
-- T.run_m2lab(args) -> exit code, combined output: runs this m2lab executable (m2.exe)
function T.run_m2lab(args)
  local cmd = "'" .. m2.exe:gsub("'", "'\\''") .. "' " .. args .. " 2>&1"
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

-- T.sh_quote(s) -> s quoted for the shell; T.m2lab(arg, ...) -> exit code, output: m2lab with each argument quoted
function T.sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
function T.m2lab(...)
  local words = {}
  for i, a in ipairs { ... } do words[i] = T.sh_quote(a) end
  return T.run_m2lab(table.concat(words, " "))
end
-- T.m2lab_env(env, arg, ...) -> exit code, output: T.m2lab with environment variables set, env = {"NAME=value", ...}
function T.m2lab_env(env, ...)
  local words = { "env" }
  for _, kv in ipairs(env) do words[#words + 1] = T.sh_quote(kv) end
  words[#words + 1] = T.sh_quote(m2.exe)
  for _, a in ipairs { ... } do words[#words + 1] = T.sh_quote(a) end
  local p = assert(io.popen(table.concat(words, " ") .. " 2>&1", "r"))
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

-- T.temp_path([suffix]) -> a fresh temporary path ending in suffix (".h5" unless given); nothing is there yet
function T.temp_path(suffix)
  local base = os.tmpname()
  os.remove(base)
  return base .. (suffix or ".h5")
end

-- T.write_temp(text [, suffix]) -> path of a new temporary file holding text
function T.write_temp(text, suffix)
  local path = T.temp_path(suffix or ".lua")
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

return T
