--[==[ m2.export — `m2lab export RUN.h5 [OUT.safetensors] [step=N]`: a checkpoint's parameters as a safetensors file.

Names are module paths ("blocks.1.mixer.in_proj.weight", as in the run file's /checkpoints/<step>/params/);
dtypes and shapes as stored; metadata producer, run, step, script_path and config_json. OUT defaults to the run
file's name with "-step<N>.safetensors" for ".h5". Executes nothing from the run file (unlike resume), reads one
tensor at a time, and writes OUT whole or not at all (lua/m2/safetensors.lua). Import the file into a model with
m2.safetensors.load_into(model, OUT); rebuild the run's model with m2.runs.load_model(RUN.h5).
]==]

local m2 = require "m2"
local runs = require "m2.runs"

local export = {}

local function usage(msg)
  io.stderr:write("m2lab export: ", msg, "\n(usage: m2lab export RUN.h5 [OUT.safetensors] [step=N])\n")
  return 2
end

function export.main(args)
  if #args < 1 then return usage("missing run file") end
  if #args > 2 then return usage("expected a run file and at most one output file") end
  for k in pairs(m2.args) do
    if k ~= "step" then return usage("unknown option '" .. tostring(k) .. "=' (known: step=)") end
  end
  local step = m2.args.step
  if step ~= nil and math.type(step) ~= "integer" then
    return usage("step=" .. tostring(m2.args_raw.step or step) .. ": expected an integer")
  end
  local path = args[1]
  local f = io.open(path, "rb")
  if not f then return usage(path .. ": no such file") end
  f:close()
  if step == nil then step = runs.checkpoint_step(path, nil) end
  local out = args[2] or ((path:gsub("%.h5$", "")) .. "-step" .. step .. ".safetensors")
  local res = runs.export_safetensors(path, out, step)
  io.stdout:write(string.format("m2lab export: %s step %d -> %s (%d tensors, %d bytes)\n", path, res.step, res.path,
    res.tensors, res.bytes))
  return 0
end

return export
