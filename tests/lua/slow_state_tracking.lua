-- slow_state_tracking.lua (label slow) — the paper's first claim as a guard (issue 18): the default experiment
-- (experiments/default.lua: M2RNN on the S3 word problem at training length 32) on seeds 0, 3 and 8 reaches
-- >= 0.99 per-position accuracy at 8x the training length (256). CPU training is bit-reproducible, so a numerics or
-- recipe change that breaks length generalisation on these seeds fails here. Seeds 3 and 8 fail with one
-- initialisation (candidates=1: 0.501 and 0.478 at 8x) and pass with the default's selection among four (0.996, 1.000),
-- so the guard covers the selection too, and is not one that any recipe passes. Two runs at a time;
-- `M2_ST_SEEDS=0,1,...` picks other seeds, `M2_ST_ARGS="steps=50"` adds overrides (to see the guard fail quickly).
-- experiments/RESULTS.md has the cost of a run (CPU seconds).
local m2 = require "m2"
local T = m2.test

local seeds = {}
for s in (os.getenv("M2_ST_SEEDS") or "0,3,8"):gmatch("%d+") do seeds[#seeds + 1] = tonumber(s) end

local dir = os.tmpname()
os.remove(dir)
dir = dir .. ".d"
assert(os.execute("mkdir -p '" .. dir .. "'"))

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

T.case("default recipe: M2RNN >= 0.99 at 8x the training length on seeds " .. table.concat(seeds, ", "), function()
  -- the runs, two at a time (eval only after the last step: the intermediate ones do not change training)
  local cmds = {}
  for _, s in ipairs(seeds) do
    cmds[#cmds + 1] = string.format("%s run %s seed=%d eval_every=0 out=%s > %s 2>&1", q(m2.exe),
      q(m2.source_dir .. "/experiments/default.lua"), s, q(dir .. "/s" .. s .. ".h5"), q(dir .. "/s" .. s .. ".log"))
    cmds[#cmds] = cmds[#cmds]:gsub(" out=", " " .. (os.getenv("M2_ST_ARGS") or "") .. " out=", 1)
  end
  local t0 = m2.core.clock()
  for i = 1, #cmds, 2 do
    local sh = "(" .. cmds[i] .. ") & " .. (cmds[i + 1] and ("(" .. cmds[i + 1] .. "); ") or "") .. "wait"
    os.execute(sh)
  end
  print(string.format("%d runs in %.0f s", #seeds, m2.core.clock() - t0))
  local runs = require "m2.runs"
  for _, s in ipairs(seeds) do
    local f = io.open(dir .. "/s" .. s .. ".log")
    local log = f and f:read("a") or "(no log)"
    if f then f:close() end
    local ok, res = pcall(function()
      local r <close> = runs.open(dir .. "/s" .. s .. ".h5")
      local L = r:get_attr("train_len")
      local out = {}
      for _, mult in ipairs { 1, 2, 4, 8 } do
        local _, vals = r:read_series("eval", "acc_len" .. (mult * L))
        out[mult] = vals[#vals]
      end
      return out
    end)
    if not ok then
      T.ok(false, string.format("seed %d: no result (%s); log:\n%s", s, tostring(res), log:sub(-2000)))
    else
      print(string.format("seed %d: acc 1x %.4f  2x %.4f  4x %.4f  8x %.4f", s, res[1], res[2], res[4], res[8]))
      T.ok(res[8] >= 0.99, string.format("seed %d: per-position accuracy at 8x the training length %.4f >= 0.99 " ..
        "(1x %.4f, 2x %.4f, 4x %.4f)", s, res[8], res[1], res[2], res[4]))
    end
  end
end)
os.execute("rm -rf " .. q(dir))
