--[==[ m2.runs — helpers around run files (the HDF5 files m2.train writes; core/runfile/runfile.h):
JSON for configs, reading a run back into Lua, and the pieces `m2lab resume` needs.

  local runs = m2.runs
  local r <close> = runs.open("runs/a.h5")          -- read-only (m2.core.run_open, see lua/bind_runfile.c)
  local steps, losses = r:read_series("metrics", "loss")
  local info = runs.info("runs/a.h5")               -- {status, script_path, script_sha256, overrides, config,
                                                    --  checkpoints = {steps}, latest = step | nil}
  runs.json_encode(v) -> text (keys sorted; floats keep a ".0"; NaN/inf -> null)
  runs.json_encode_list(array) -> text ("[]" when empty)
  runs.json_decode(text) -> value (JSON null -> runs.null)

The stored script (m2lab resume):
  runs.stored_script(path, purpose) -> info (runs.info plus sha256), the stored script checked against its hash
  runs.parse_overrides(words) -> order, raw, typed   runs.exec_script(info, order, raw, typed)
      -- the pieces of `m2lab resume`: run the stored script with the given command line

Root attributes written by m2.train besides the standard ones (core/runfile/runfile.h): script_path,
script_sha256 (of the stored script text), overrides_json (the command line's key=value words,
a JSON array), num_params, and every top-level config key (nested tables as "a.b").
]==]

local m2 = require "m2"
local core = m2.core

local runs = {}
runs.null = setmetatable({}, { __tostring = function() return "null" end })

-- ---------------------------------------------------------------------------------------
-- JSON
-- ---------------------------------------------------------------------------------------

local function is_array(t)
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
                  ["\t"] = "\\t" }
local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return escapes[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function number_text(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  local s = string.format("%.17g", v)
  if tonumber(string.format("%.15g", v)) == v then s = string.format("%.15g", v) end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local function encode(v, out, depth)
  if depth > 64 then m2.error("json_encode: nesting deeper than 64 (a cycle?)") end
  local tv = type(v)
  if v == nil or v == runs.null then out[#out + 1] = "null"
  elseif tv == "boolean" then out[#out + 1] = tostring(v)
  elseif tv == "number" then out[#out + 1] = number_text(v)
  elseif tv == "string" then out[#out + 1] = quote(v)
  elseif tv == "table" and not m2.is_tensor(v) then
    if is_array(v) then
      out[#out + 1] = "["
      for i, x in ipairs(v) do
        if i > 1 then out[#out + 1] = "," end
        encode(x, out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = quote(k) .. ":"
        local x = v[k]
        if x == nil then x = v[tonumber(k)] end
        encode(x, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    out[#out + 1] = quote(tostring(v)) -- tensors, functions, modules: their description
  end
end

function runs.json_encode(v)
  local out = {}
  encode(v, out, 0)
  return table.concat(out)
end

-- a Lua array as a JSON array, "[]" when empty (json_encode writes {} for an empty table)
function runs.json_encode_list(t)
  if #t == 0 then return "[]" end
  return runs.json_encode(t)
end

function runs.json_decode(s)
  if type(s) ~= "string" then m2.error("json_decode: expected a string") end
  local pos = 1
  local function fail(what) m2.error(string.format("json_decode: %s at byte %d", what, pos)) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
        if map[e] then out[#out + 1] = map[e]; pos = pos + 2
        elseif e == "u" then
          local code = tonumber(s:sub(pos + 2, pos + 5), 16)
          if not code then fail("bad \\u escape") end
          out[#out + 1] = utf8.char(code)
          pos = pos + 6
        else fail("bad escape") end
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return t end
      while true do
        t[#t + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return runs.null
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character '" .. c .. "'") end
      pos = pos + #num
      if num:find("[%.eE]") then return tonumber(num) + 0.0 end
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing characters") end
  return v
end

-- ---------------------------------------------------------------------------------------
-- config flattening: {a = 1, m = {k = 2}} -> {a = 1, ["m.k"] = 2}; lists -> JSON text
-- ---------------------------------------------------------------------------------------

function runs.flatten(cfg, prefix, out)
  out, prefix = out or {}, prefix or ""
  for k, v in pairs(cfg) do
    local key = prefix .. tostring(k)
    local tv = type(v)
    if tv == "table" and not m2.is_tensor(v) and not getmetatable(v) and not is_array(v) and next(v) ~= nil then
      runs.flatten(v, key .. ".", out)
    elseif tv == "table" then
      out[key] = runs.json_encode(v)
    elseif tv == "number" or tv == "string" or tv == "boolean" then
      out[key] = v
    else
      out[key] = tostring(v)
    end
  end
  return out
end

-- ---------------------------------------------------------------------------------------
-- reading runs
-- ---------------------------------------------------------------------------------------

function runs.open(path, opts)
  local o = { mode = "read" }
  for k, v in pairs(opts or {}) do o[k] = v end
  return core.run_open(path, o)
end

-- Everything resume and the tests need to know about a run, read-only.
function runs.info(path)
  local r <close> = runs.open(path)
  local function attr(k)
    local v = r:get_attr(k)
    return v
  end
  local info = { path = path, status = attr("status"), script = attr("script") or "", script_path = attr("script_path"),
                 script_sha256 = attr("script_sha256"), device = attr("device"),
                 resume_count = attr("resume_count") }
  local ov = attr("overrides_json")
  info.overrides = ov and runs.json_decode(ov) or {}
  local cj = attr("config_json")
  info.config = cj and runs.json_decode(cj) or {}
  info.checkpoints = r:ckpt_list()
  info.latest = info.checkpoints[#info.checkpoints]
  return info
end

-- read one series of a run: steps, values (Lua arrays)
function runs.series(path, group, name)
  local r <close> = runs.open(path)
  return r:read_series(group, name)
end

-- ---------------------------------------------------------------------------------------
-- the stored script (m2lab resume)
-- ---------------------------------------------------------------------------------------

-- runs.info(path) plus sha256, after checking that the run stores a script and that it matches its stored hash;
-- purpose ("resumed", "rebuilt") completes the message when it stores none
function runs.stored_script(path, purpose)
  local info = runs.info(path) -- raises a clean error for a damaged or foreign file
  if info.script == "" then
    m2.error(path .. ": the run file stores no experiment script (root attribute 'script' is empty): it was not " ..
      "written by an m2lab script run, so it cannot be " .. (purpose or "resumed"))
  end
  local sha = core.sha256(info.script)
  if info.script_sha256 and info.script_sha256 ~= sha then
    m2.error(string.format("%s: the stored script does not match its stored hash (script_sha256 %s, computed %s): " ..
      "the file is damaged", path, info.script_sha256, sha))
  end
  info.sha256 = sha
  return info
end

-- key=value words (a later word for a key wins) -> order (keys, first-seen order), raw {k = text},
-- typed {k = true | false | integer | number | text}, as the host parses a command line
function runs.parse_overrides(words)
  local order, raw, typed = {}, {}, {}
  for _, word in ipairs(words) do
    local k, v = word:match("^([^=]+)=(.*)$")
    if k then
      if raw[k] == nil then order[#order + 1] = k end
      raw[k] = v
    end
  end
  for k, v in pairs(raw) do
    if v == "true" then typed[k] = true
    elseif v == "false" then typed[k] = false
    else typed[k] = math.tointeger(tonumber(v)) or tonumber(v) or v end
  end
  return order, raw, typed
end

-- Run the stored script of info (runs.stored_script) with order / raw / typed as its command line: m2.args,
-- m2.script, m2.script_source and package.path are set as `m2lab run` sets them, and stay set afterwards.
function runs.exec_script(info, order, raw, typed)
  local script_path = info.script_path or "(unknown script)"
  m2.args, m2.args_raw = typed, raw
  core.args, core.args_raw, core.args_order = typed, raw, order
  m2.script, core.script = script_path, script_path
  m2.script_source = info.script
  local dir = script_path:match("^(.*)/[^/]*$")
  if dir then package.path = dir .. "/?.lua;" .. package.path end
  local chunk, err = load(info.script, "@" .. script_path, "t")
  if not chunk then m2.error(info.path .. ": the stored script does not compile: " .. err) end
  return chunk()
end

return runs
