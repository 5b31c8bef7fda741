-- test_config.lua — m2.config(defaults [, args]): override coercion and its errors (in-process;
-- test_host.lua checks the same through a real command line), and the lazy submodules of m2.
local m2 = require "m2"
local T = m2.test

local defaults = { lr = 3e-4, steps = 100, name = "run", cuda = false, betas = { 0.9, 0.95 },
                   model = { d = 64, layers = "MMAM" } }

T.case("coercion to the default's type", function()
  local c = m2.config(defaults, { lr = 1, steps = 2e3, name = 5, cuda = "yes", betas = "0.8,0.9", ["model.d"] = 128,
                                  ["model.layers"] = "MAMA" })
  T.eq(c.lr, 1.0)
  T.eq(math.type(c.lr), "float")
  T.eq(c.steps, 2000)
  T.eq(math.type(c.steps), "integer")
  T.eq(c.name, "5")
  T.eq(c.cuda, true)
  T.eq(c.betas, { 0.8, 0.9 })
  T.eq(c.model, { d = 128, layers = "MAMA" })
  T.eq(defaults.model.d, 64, "defaults are not modified")
  T.eq(m2.config_used, c, "the resolved config is kept for the run file")
  for _, v in ipairs { "true", "1", "on", "yes" } do T.eq(m2.config({ f = false }, { f = v }).f, true, v) end
  for _, v in ipairs { "false", "0", "off", "no" } do T.eq(m2.config({ f = true }, { f = v }).f, false, v) end
  T.eq(m2.config({ f = true }, { f = false }).f, false)
  -- no overrides: a deep copy of the defaults
  local d = m2.config(defaults, {})
  T.eq(d, defaults)
  T.ok(d.model ~= defaults.model)
  -- m2.args from the command line (none here) is the default source
  T.eq(m2.config(defaults), defaults)
  T.eq(type(m2.args), "table")
end)

T.case("errors", function()
  T.raises(function() m2.config(defaults, { lrr = 1 }) end,
    "unknown override 'lrr' %(known keys: betas, cuda, lr, model.d, model.layers, name, steps%)")
  T.raises(function() m2.config(defaults, { ["model.width"] = 1 }) end, "unknown override 'model.width'")
  T.raises(function() m2.config(defaults, { ["x.y"] = 1 }) end, "unknown override 'x.y'")
  T.raises(function() m2.config(defaults, { steps = 2.5 }) end, "override steps=2.5: expected an integer")
  T.raises(function() m2.config(defaults, { lr = "fast" }) end, "override lr=fast: expected a number")
  T.raises(function() m2.config(defaults, { cuda = "maybe" }) end, "override cuda=maybe: expected a boolean")
  T.raises(function() m2.config(defaults, { betas = "0.9,x" }) end, "override betas=x: expected a number")
  T.raises(function() m2.config(defaults, { model = 3 }) end, "'model' is a table of settings")
  T.raises(function() m2.config(defaults, { ["betas.1"] = 3 }) end, "unknown override 'betas.1'")
  T.raises(function() m2.config(5) end, "defaults must be a table")
end)

T.case("host info and submodules", function()
  T.eq(m2.mode, "test")
  T.ok(type(m2.script) == "string" and m2.script:find("test_config.lua", 1, true) ~= nil)
  T.ok(type(m2.lua_dir) == "string" and type(m2.source_dir) == "string")
  T.eq(type(m2.version), "string")
  T.eq(m2.nn, require "m2.nn")
  T.eq(m2.optim, require "m2.optim")
  T.eq(m2.test, T)
  T.eq(m2.no_such_module, nil)
  T.eq(require "m2", m2)
  T.eq(type(m2.interrupted()), "boolean")
  T.eq(m2.interrupted(), false)
end)

T.case("precision= is a common override: accepted by any script's m2.config and reaching m2.train", function()
  -- in process: accepted though the defaults do not list it, checked against the two settings
  local c = m2.config({ width = 8 }, { precision = "bf16" })
  T.eq(c.precision, "bf16")
  T.eq(m2.config({ width = 8 }, { precision = "f32" }).precision, "f32")
  T.raises(function() m2.config({ width = 8 }, { precision = "fp8" }) end,
    'override precision=fp8: expected "f32" or "bf16"')
  -- a script whose defaults list it keeps its own default and takes the override
  T.eq(m2.config({ precision = "f32" }, { precision = "bf16" }).precision, "bf16")
  -- through the host, as the README shows: the run trains with bf16 products and records them
  local dir = os.tmpname()
  os.remove(dir)
  m2.core.mkdir_p(dir)
  local script = dir .. "/plain.lua"
  local f = assert(io.open(script, "w"))
  f:write([[
local m2 = require "m2"
local cfg = m2.config { width = 8 }   -- lists none of the common overrides
local nn = m2.nn
m2.seed(3)
local model = nn.Sequential(nn.Embedding(10, cfg.width), nn.Linear(cfg.width, 10))
local data = { batch = function(_, i)
  local x = m2.randint(10, 2, 5)
  return x, x
end }
local used
local inner = model.forward
model.forward = function(self, x) used = m2.matmul_precision(); return inner(self, x) end
m2.train { model = model, data = data, steps = 2, out = "unused.h5" }
print("precision in the config", cfg.precision, "products while training", used)
]])
  f:close()
  local out = dir .. "/bf16.h5"
  local code, text = T.run_m2lab("run '" .. script .. "' precision=bf16 out='" .. out .. "'")
  T.eq(code, 0, text)
  T.ok(text:find("precision in the config\tbf16\tproducts while training\tbf16", 1, true), text)
  T.ok(text:find("bf16 products", 1, true), "the start line says so: " .. text)
  local ok, err = pcall(function()
    local r <close> = m2.runs.open(out)
    T.eq(m2.runs.json_decode(r:get_attr("config_json")).train.precision, "bf16", "the run file records it")
  end)
  T.ok(ok, err)
  -- a wrong value is refused by m2.config before anything runs, naming the override
  code, text = T.run_m2lab("run '" .. script .. "' precision=half out='" .. dir .. "/half.h5'")
  T.eq(code, 1, text)
  T.ok(text:find('override precision=half: expected "f32" or "bf16"', 1, true), text)
  T.ok(io.open(dir .. "/half.h5", "rb") == nil, "no run file was created")
  os.execute("rm -rf '" .. dir .. "'")
end)
