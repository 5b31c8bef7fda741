-- dist_launch_probe.lua — a rank that reports what the launcher gave it (tests/dist_mpi.sh, `m2lab launch --no-mpi`):
-- prints its rank, world size and local rank; rank fail_rank exits with status `code` after a moment, the others
-- sleep `sleep` seconds (the launcher must stop them).
local m2 = require "m2"
local cfg = m2.config { fail_rank = 1, code = 3, sleep = 60.0 }
local r = m2.dist.rank()
print(string.format("probe: rank %d of %d, local rank %d, %s", r, m2.dist.world(), m2.dist.local_rank(),
  m2.dist.env().source))
io.stdout:flush()
if r == cfg.fail_rank then
  m2.core.sleep(0.5)
  os.exit(cfg.code)
end
m2.core.sleep(cfg.sleep)
