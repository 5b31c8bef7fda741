-- test_runfile_arrays.lua — array series from Lua (r:log_array / r:read_array / r:list_arrays; /arrays/<name>,
-- core/runfile/runfile_array_series.c): round trip, bad rows named at the caller's line, and a MoE run resumed after
-- rows were logged past its last checkpoint: m2.train's resume truncates the arrays as it does the metric series.
local m2 = require "m2"
local T = m2.test
local core = m2.core

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)

T.case("round trip and bad rows", function()
  local path = dir .. "/a.h5"
  local r <close> = core.run_open(path, { mode = "create" })
  for s = 1, 30 do r:log_array("load", s, { s, s + 0.5, -s }) end
  r:log_array("other", 7, { 1 })
  T.raises(function() r:log_array("load", 31, { 1, 2 }) end, "test_runfile_arrays.lua:%d+: .*has width 3, got a row of 2")
  T.raises(function() r:log_array("load", 31, { 1, "x", 3 }) end, "test_runfile_arrays.lua:%d+: .*value 2 is a string")
  T.raises(function() r:log_array("load", 31, {}) end, "test_runfile_arrays.lua:%d+: .*the row is empty")
  T.raises(function() r:log_array("load", 31, 5) end, "test_runfile_arrays.lua:%d+: .*table of numbers expected")
  T.raises(function() r:log_array("a/b", 31, { 1 }) end, "bad array series name 'a/b'")
  r:close()
  local rr <close> = core.run_open(path)
  T.eq(table.concat(rr:list_arrays(), ","), "load,other")
  local steps, rows, times = rr:read_array("load")
  T.eq(#steps, 30)
  T.eq(#times, 30)
  T.eq(rows[30][1], 30)
  T.eq(rows[30][2], 30.5)
  T.eq(rows[30][3], -30)
  T.raises(function() rr:read_array("nope") end, "no array series /arrays/nope")
  local s2, rows2 = m2.runs.array(path, "other")
  T.eq(s2[1], 7)
  T.eq(rows2[1][1], 1)
end)

T.case("a MoE run resumed after rows past its checkpoint: the arrays are truncated and continue", function()
  local out = dir .. "/moe.h5"
  local code, text = T.m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "arch=MA", "moe_experts=4",
    "moe_top_k=2", "d=16", "steps=20", "checkpoint_every=20", "eval_every=0", "out=" .. out)
  T.eq(code, 0, text)
  do -- what a run killed after step 25 would have flushed beyond its checkpoint
    local r <close> = core.run_open(out, { mode = "resume" })
    for s = 21, 25 do r:log_array("moe_load_01", s, { 1, 0, 0, 0 }) end
    r:set_status("interrupted")
  end
  code, text = T.m2lab("resume", out, "steps=30")
  T.eq(code, 0, text)
  local r <close> = core.run_open(out)
  local steps, rows = r:read_array("moe_load_01")
  T.eq(#steps, 30)
  for i = 1, 30 do T.eq(steps[i], i) end
  T.ok(rows[22][1] < 1, "row 22 is the resumed run's, not the stale one: " .. rows[22][1])
  local sum = 0
  for e = 1, 4 do sum = sum + rows[30][e] end
  T.close(sum, 1, 1e-9)
end)
