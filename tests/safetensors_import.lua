-- safetensors_import.lua — m2lab imports a safetensors file that the reference implementation wrote
-- (tests/safetensors_python.sh makes it: every parameter of checkpoint `step` of `run`, negated, written by
-- safetensors.numpy.save_file). Run: m2lab test tests/safetensors_import.lua run=RUN.h5 file=F.safetensors step=N
local m2 = require "m2"
local T = m2.test
local run, file, step = m2.args.run, m2.args.file, m2.args.step

T.case("a file written by the reference implementation imports into the rebuilt model", function()
  T.ok(type(run) == "string" and type(file) == "string" and math.type(step) == "integer", "run=, file=, step= given")
  local model = m2.runs.load_model(run, step)
  local _, meta = m2.safetensors.load_into(model, file)
  T.ok(meta.negated_from ~= nil, "the file's metadata came through")
  local r <close> = m2.runs.open(run)
  local n = 0
  for _, p in ipairs(model:parameters()) do
    local want = r:ckpt_read(step, "params/" .. p.name)
    T.eq(p.tensor, -want, p.name .. " is the negated checkpoint")
    n = n + 1
  end
  T.ok(n > 20, string.format("%d parameters compared", n))
end)
