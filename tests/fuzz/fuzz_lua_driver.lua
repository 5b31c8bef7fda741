-- fuzz_lua_driver.lua — the script fuzz_lua.c has the host (lua/host.c) run for every input: it builds a sandbox
-- around the m2 library and hands the input's Lua text to FUZZ.run, which runs it under the instruction and memory
-- limits. The sandbox keeps a snippet inside the fuzzer's temporary directory (its working directory): no os, io,
-- debug, package, require, load or dofile; none of the library's process, sleep or script-executing functions; and
-- a string argument that looks like a path outside it ('/' or '..') is refused before a function sees it. What a
-- snippet may still do is whatever m2 does with tensors, ops, models, data sets, training and run files.
local m2 = require "m2"
local FUZZ = FUZZ -- set by fuzz_lua.c's prepare function: run(src, env), verbose

-- names refused at any depth of the m2 tables: processes, signals, sleeping, directories, multi-process training,
-- scripts stored in run files (executed with the host's full rights), subcommand modules and the test framework
local BLOCKED = {
  spawn = true, wait = true, kill = true, sleep = true, mkdir_p = true, dist = true, dist_init = true, dp_new = true,
  dist_env = true, load_model = true, exec_script = true, stored_script = true, sweep = true, resume = true,
  test = true, generate_main = true, export = true, main = true, profile_enable = true, sys = true,
}

-- a string that names something outside the working directory
local function outside(s)
  return s:find("/", 1, true) or s:find("..", 1, true) or s:sub(1, 1) == "~"
end

local function check_args(seen, depth, ...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" and outside(v) then
      error("fuzz sandbox: path-like string refused: " .. string.format("%q", v:sub(1, 40)), 3)
    elseif type(v) == "table" and depth < 3 and not seen[v] and not getmetatable(v) then
      seen[v] = true
      for k, x in next, v do check_args(seen, depth + 1, k, x) end
    end
  end
end

local wrap
local cache = setmetatable({}, { __mode = "k" })
-- a function whose arguments are checked, or a read-only view of a table whose fields are wrapped
function wrap(v)
  local tv = type(v)
  if tv ~= "function" and tv ~= "table" then return v end
  if tv == "table" and getmetatable(v) then
    -- a module table may have a lazy-loading metatable (m2 itself): still wrap it; other tables with metatables
    -- (models, data sets, classes) pass through
    local mt = getmetatable(v)
    if type(mt) ~= "table" or type(mt.__index) ~= "function" then return v end
  end
  if cache[v] then return cache[v] end
  local w
  if tv == "function" then
    w = function(...)
      check_args({}, 0, ...)
      return v(...)
    end
  else
    w = setmetatable({}, {
      __index = function(_, k)
        if BLOCKED[k] then return nil end
        return wrap(v[k])
      end,
      __newindex = function() error("fuzz sandbox: the m2 tables are read-only", 2) end,
      __call = function(_, ...)
        check_args({}, 0, ...)
        return v(...)
      end,
      __pairs = function() return function(_, k)
        local nk, nv = next(v, k)
        while nk ~= nil and BLOCKED[nk] do nk, nv = next(v, nk) end
        return nk, wrap(nv)
      end, nil, nil end,
    })
  end
  cache[v] = w
  return w
end

local function quiet_print(...)
  if FUZZ.verbose then print(...) end
end

local env = {
  m2 = wrap(m2),
  assert = assert, error = error, ipairs = ipairs, pairs = pairs, next = next, pcall = pcall, xpcall = xpcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, rawequal = rawequal, rawget = rawget,
  rawlen = rawlen, rawset = rawset, setmetatable = setmetatable, getmetatable = getmetatable,
  collectgarbage = function() return collectgarbage("collect") end,
  print = quiet_print, math = math, table = table, utf8 = utf8, coroutine = coroutine,
  string = { format = string.format, rep = string.rep, sub = string.sub, len = string.len, byte = string.byte,
             char = string.char, upper = string.upper, lower = string.lower, reverse = string.reverse },
}
env._G = env
FUZZ.run(FUZZ.src, env)
