--[==[ m2.runs — helpers around run files (the HDF5 files m2.train writes; core/runfile/runfile.h):
JSON for configs, reading a run back into Lua, and the pieces `m2lab resume` needs.

  local runs = m2.runs
  local r <close> = runs.open("runs/a.h5")          -- read-only (m2.core.run_open, see lua/bind_runfile.c)
  local steps, losses = r:read_series("metrics", "loss")
  local steps, rows = r:read_array("moe_load_01")   -- an array series (/arrays/<name>): rows[i] = {values}
  local info = runs.info("runs/a.h5")               -- {status, script_path, script_sha256, overrides, config,
                                                    --  checkpoints = {steps}, latest = step | nil}
  runs.json_encode(v) -> text (keys sorted; floats keep a ".0"; NaN/inf -> null)
  runs.json_encode_list(array) -> text ("[]" when empty)
  runs.json_decode(text) -> value (JSON null -> runs.null)

Models and weights out of a run (the weights are the checkpoint's /checkpoints/<step>/params/<module path>):
  local model, about = runs.load_model("runs/a.h5" [, step] [, {device = "cpu", quiet = true}])
      -- rebuilds the model by running the experiment script stored in the run file (as `m2lab resume` does,
      -- with the run's stored overrides, device= replaced by the given device) up to its m2.train call, which
      -- hands over the model instead of training; then loads the parameters of checkpoint `step` (default: the
      -- latest). The model comes back in eval mode; about = {path, step, script_path, config, overrides}.
      -- The script runs as Lua code: load only run files you trust. What it needs before m2.train (its data
      -- files, say) must be there; nothing is trained, and nothing is written to the run file. What the script
      -- prints (print, io.write, io.stdout) is dropped unless quiet = false. The caller's m2.args, RNG state,
      -- package.path and output functions are restored afterwards.
  runs.export_safetensors("runs/a.h5", "a.safetensors" [, step]) -> {path, step, tensors, bytes}
      -- the checkpoint's parameters (latest by default), names = module paths, metadata producer / run / step /
      -- script_path / config_json; reads tensors one at a time and executes nothing (m2lab export uses it)
  runs.checkpoint_step(path, step) -> step (the latest when step is nil; an error naming the file and the
      checkpoints it has otherwise)
  runs.stored_script(path, purpose) -> info (runs.info plus sha256), the stored script checked against its hash
  runs.parse_overrides(words) -> order, raw, typed   runs.exec_script(info, order, raw, typed)
      -- the pieces `m2lab resume` and load_model share: run the stored script with the given command line

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
  -- a damaged file may give any bytes here (an HDF5 global heap has no checksum): name the file and the attribute
  local function json(k)
    local s = attr(k)
    if not s then return {} end
    local ok, v = pcall(runs.json_decode, s)
    if not ok then m2.error(string.format("%s: root attribute '%s' is not valid JSON (a damaged file?): %s", path, k,
      tostring(v):gsub("^.-json_decode", "json_decode"))) end
    return v
  end
  info.overrides = json("overrides_json")
  info.config = json("config_json")
  info.checkpoints = r:ckpt_list()
  info.latest = info.checkpoints[#info.checkpoints]
  return info
end

-- read one series of a run: steps, values (Lua arrays)
function runs.series(path, group, name)
  local r <close> = runs.open(path)
  return r:read_series(group, name)
end

-- read one array series (/arrays/<name>) of a run: steps, rows (a Lua array of Lua arrays)
function runs.array(path, name)
  local r <close> = runs.open(path)
  return r:read_array(name)
end

-- ---------------------------------------------------------------------------------------
-- the stored script (m2lab resume, runs.load_model)
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

-- the checkpoint step to use: step if the run has it, the latest when step is nil
function runs.checkpoint_step(path, step, list)
  if list == nil then
    local r <close> = runs.open(path)
    list = r:ckpt_list()
  end
  if #list == 0 then m2.error(path .. ": the run file has no complete checkpoint") end
  if step == nil then return list[#list] end
  if math.type(step) ~= "integer" then
    m2.error(string.format("%s: step must be an integer, got %s", path, tostring(step)))
  end
  for _, s in ipairs(list) do if s == step then return step end end
  m2.error(string.format("%s: no checkpoint at step %d (the file has: %s)", path, step, table.concat(list, ", ")))
end

-- ---------------------------------------------------------------------------------------
-- models and weights out of a run
-- ---------------------------------------------------------------------------------------

local function shape_text(s) return "(" .. table.concat(s, ", ") .. ")" end

-- copy checkpoint `step` of the open run r into the model's parameters: every name, shape and dtype checked
-- first (missing, extra, wrong shape: an error naming the file and the parameter), then read
local function read_params(r, path, step, model)
  local params = model:parameters()
  local have, known = {}, {}
  for _, name in ipairs(r:ckpt_tensors(step)) do
    if name:sub(1, 7) == "params/" then have[name:sub(8)] = true end
  end
  for _, p in ipairs(params) do
    known[p.name] = true
    if not have[p.name] then
      m2.error(string.format("%s: checkpoint %d has no parameter '%s' (the rebuilt model has it): the stored script " ..
        "no longer builds the model that was trained", path, step, p.name))
    end
    local dtype, shape = r:ckpt_info(step, "params/" .. p.name)
    local mine = p.tensor:shape()
    if table.concat(shape, ",") ~= table.concat(mine, ",") or dtype ~= p.tensor:dtype() then
      m2.error(string.format("%s: checkpoint %d: parameter '%s' is %s %s in the file but %s %s in the rebuilt model",
        path, step, p.name, dtype, shape_text(shape), p.tensor:dtype(), shape_text(mine)))
    end
  end
  for name in pairs(have) do
    if not known[name] then
      m2.error(string.format("%s: checkpoint %d has parameter '%s' that the rebuilt model does not have", path, step,
        name))
    end
  end
  for _, p in ipairs(params) do r:ckpt_read_into(step, "params/" .. p.name, p.tensor) end
end

-- the environment a stored script may change, saved and put back around load_model
local function save_env()
  return { args = m2.args, args_raw = m2.args_raw, core_args = core.args, core_args_raw = core.args_raw,
           order = core.args_order, script = m2.script, core_script = core.script, source = m2.script_source,
           config_used = m2.config_used, resuming = m2.resuming, loading = m2.loading, path = package.path,
           rng = m2.rng_state(), print = print, io_write = io.write, io_stdout = io.stdout }
end

-- stdout output of a stored script that runs only to build its model (its banner, a model summary) goes nowhere
local mute = {}
mute.__index = mute
function mute.write(self) return self end
function mute.flush(self) return self end
function mute.setvbuf() return true end
function mute.seek() return 0 end
function mute.close() return true end
local function silence()
  local sink = setmetatable({}, mute)
  print = function() end
  io.write = function() return sink end
  io.stdout = sink
end

local function restore_env(e)
  m2.args, m2.args_raw, core.args, core.args_raw, core.args_order = e.args, e.args_raw, e.core_args, e.core_args_raw,
    e.order
  m2.script, core.script, m2.script_source = e.script, e.core_script, e.source
  m2.config_used, m2.resuming, m2.loading, package.path = e.config_used, e.resuming, e.loading, e.path
  m2.set_rng_state(e.rng)
  print, io.write, io.stdout = e.print, e.io_write, e.io_stdout
end

function runs.load_model(path, step, opts)
  if type(step) == "table" and opts == nil then step, opts = nil, step end
  opts = opts or {}
  if type(path) ~= "string" then m2.error("runs.load_model: path must be a string, got " .. type(path)) end
  if type(opts) ~= "table" then m2.error("runs.load_model: options must be a table {device = ...}") end
  for k in pairs(opts) do
    if k ~= "device" and k ~= "quiet" then
      m2.error("runs.load_model: unknown option '" .. tostring(k) .. "' (known: device, quiet)")
    end
  end
  local f = io.open(path, "rb")
  if not f then m2.error(path .. ": no such file") end
  f:close()
  -- a model built by m2.models.lm records its spec (model_spec_json, written by m2.train): rebuild it from that,
  -- without running the stored script (which may train several models, or need data that is not here)
  do
    local r <close> = runs.open(path)
    local sj = r:get_attr("model_spec_json")
    if sj then
      local ok, spec = pcall(runs.json_decode, sj)
      if not ok or type(spec) ~= "table" then m2.error(path .. ": model_spec_json does not parse: " .. tostring(spec)) end
      step = runs.checkpoint_step(path, step, r:ckpt_list())
      local rng = m2.rng_state() -- building draws the init; the caller's generator is left as it was
      local built, model = pcall(m2.models.lm, spec)
      m2.set_rng_state(rng)
      if not built then m2.error(path .. ": the recorded model spec does not build: " .. tostring(model)) end
      if (opts.device or "cpu") ~= "cpu" then model:to(opts.device) end
      read_params(r, path, step, model)
      model:eval()
      return model, { path = path, step = step, spec = spec }
    end
  end
  -- any other model: run the stored script up to m2.train, which hands the model over
  local info = runs.stored_script(path, "rebuilt")
  step = runs.checkpoint_step(path, step, info.checkpoints)
  local device = opts.device or "cpu"
  local words = {}
  for _, w in ipairs(info.overrides) do
    if not w:match("^device=") then words[#words + 1] = w end
  end
  words[#words + 1] = "device=" .. device
  local order, raw, typed = runs.parse_overrides(words)
  local env = save_env()
  local captured
  local stop = setmetatable({}, { __tostring = function() return "runs.load_model: model captured" end })
  m2.resuming = nil
  m2.loading = { path = path, capture = function(spec)
    if type(spec) ~= "table" or type(spec.model) ~= "table" or type(spec.model.parameters) ~= "function" then
      m2.error("m2.train: model must be an m2.nn module")
    end
    captured = spec.model
    error(stop, 0)
  end }
  if opts.quiet ~= false then silence() end
  local ok, err = pcall(runs.exec_script, info, order, raw, typed)
  restore_env(env)
  if not captured then
    if not ok then
      m2.error(string.format("%s: rebuilding the model failed: the stored script %s stopped before m2.train: %s", path,
        info.script_path or "?", tostring(err)))
    end
    m2.error(string.format("%s: the stored script %s finished without calling m2.train: no model to load", path,
      info.script_path or "?"))
  end
  local model = captured
  if device ~= "cpu" then model:to(device) end
  do
    local r <close> = runs.open(path)
    read_params(r, path, step, model)
  end
  model:eval()
  return model, { path = path, step = step, script_path = info.script_path, config = info.config,
                  overrides = info.overrides }
end

function runs.export_safetensors(run_path, out_path, step)
  if type(run_path) ~= "string" or type(out_path) ~= "string" then
    m2.error("runs.export_safetensors: expected (run_path, out_path [, step])")
  end
  local r <close> = runs.open(run_path)
  step = runs.checkpoint_step(run_path, step, r:ckpt_list())
  local entries = {}
  local names = {}
  for _, name in ipairs(r:ckpt_tensors(step)) do
    if name:sub(1, 7) == "params/" then names[#names + 1] = name:sub(8) end
  end
  if #names == 0 then m2.error(string.format("%s: checkpoint %d holds no parameters", run_path, step)) end
  table.sort(names)
  for _, name in ipairs(names) do
    local key = "params/" .. name
    local dtype, shape = r:ckpt_info(step, key)
    entries[#entries + 1] = { name = name, dtype = dtype, shape = shape,
                              read = function() return r:ckpt_read(step, key) end }
  end
  local meta = { producer = "m2lab " .. tostring(m2.version or ""), run = run_path, step = tostring(step),
                 script_path = r:get_attr("script_path") or "", config_json = r:get_attr("config_json") or "{}" }
  local res = m2.safetensors.save(out_path, entries, { metadata = meta })
  res.step = step
  return res
end

return runs
