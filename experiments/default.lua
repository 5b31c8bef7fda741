-- default.lua — the default experiment (README: `bash experiments/run.sh`): M2RNN learns the S3 word
-- problem (DESIGN 5) at length 32 and is evaluated at 1x, 2x, 4x and 8x that length. A few minutes on
-- 2 CPU cores; the run file is runs/default.h5 (`build/m2lab inspect runs/default.h5`).
-- Every override of experiments/state_tracking.lua works here too, e.g. `steps=2000 device=cuda`.
local m2 = require "m2"
if m2.args.out == nil then m2.args.out = "runs/default.h5" end
if m2.args.overwrite == nil and m2.args.out == "runs/default.h5" then m2.args.overwrite = true end
-- (resume runs this file again: state_tracking.lua is then read from the source tree as it is now)
dofile(m2.source_dir .. "/experiments/state_tracking.lua")
