-- example_sweep.lua — a small sweep over learning rate and architecture with two seeds, plus one
-- explicit member, each a short tiny_lm run (about a second each on one CPU core).
--
--   m2lab sweep experiments/example_sweep.lua parallel=2     (members and index in runs/example_sweep/)
--   m2lab inspect runs/example_sweep/index.h5                 (the table of members)
--   m2lab sweep experiments/example_sweep.lua                 (again: skips the finished members)
-- notebooks/sweep_comparison.ipynb plots final loss against lr per architecture from the index.
local m2 = require "m2"

m2.sweep {
  name = "example_sweep",
  script = "experiments/tiny_lm.lua",
  set = { steps = 40, checkpoint_every = 20, eval_every = 20 },
  grid = { arch = { "M", "A" }, lr = { 1e-3, 3e-3, 1e-2 } },
  list = { { arch = "G", lr = 3e-3 } },
  seeds = { 0, 1 },
  out = "runs/example_sweep/",
  parallel = 2,
}
