-- dist_compare.lua — compare two run files of tests/lua/dist_train.lua (tests/dist_mpi.sh): the loss and grad-norm
-- series (each value relative to itself) and the last checkpoint's parameters and optimizer state (each tensor's
-- largest difference relative to its largest value), bit for bit (tol=0) or within that relative tolerance.
--   m2lab run tests/lua/dist_compare.lua a=RUN.h5 b=RUN.h5 tol=0 what="2 ranks vs split=2"
-- Prints the largest differences; exits 1 (an error) when they exceed tol.
local m2 = require "m2"
local cfg = m2.config { a = "", b = "", tol = 0.0, norm_tol = -1.0, what = "", state = true }
if cfg.norm_tol < 0 then cfg.norm_tol = cfg.tol end

local function open(path) return m2.core.run_open(path, { mode = "read" }) end
local ra, rb = open(cfg.a), open(cfg.b)
local worst, where = 0.0, "nothing"
local nworst, nwhere = 0.0, "nothing" -- the grad norm has its own tolerance (norm_tol: ZeRO-1 adds it per rank)
local function diff(x, y, name, is_norm)
  local d = y == 0 and math.abs(x) or math.abs(x - y) / math.max(math.abs(y), 1e-30)
  if x ~= y and (x ~= x or y ~= y) then d = math.huge end
  if is_norm then
    if d > nworst then nworst, nwhere = d, name end
  elseif d > worst then worst, where = d, name end
end

local nser = 0
for _, series in ipairs { "loss", "grad_norm", "lr" } do
  local sa, va = ra:read_series("metrics", series)
  local sb, vb = rb:read_series("metrics", series)
  if #va ~= #vb or #va == 0 then m2.error(string.format("%s: %d values in a, %d in b", series, #va, #vb)) end
  for i = 1, #va do
    if sa[i] ~= sb[i] then m2.error(series .. ": steps differ") end
    diff(va[i], vb[i], string.format("%s at step %d", series, sa[i]), series == "grad_norm")
  end
  nser = nser + #va
end
local step = ra:ckpt_latest()
if step ~= rb:ckpt_latest() then m2.error(string.format("last checkpoints differ: %s and %s", step, rb:ckpt_latest())) end
local ntens, nel = 0, 0
for _, path in ipairs(ra:ckpt_tensors(step)) do
  if cfg.state or path:sub(1, 7) == "params/" then
    local ta, tb = ra:ckpt_read(step, path), rb:ckpt_read(step, path)
    local xa, xb = ta:reshape(-1):totable(), tb:reshape(-1):totable()
    if #xa ~= #xb then m2.error(path .. ": sizes differ") end
    local num, den = 0.0, 0.0 -- a tensor's largest difference relative to its largest value
    for i = 1, #xa do
      local d = math.abs(xa[i] - xb[i])
      if d ~= d then d = math.huge end
      num, den = math.max(num, d), math.max(den, math.abs(xb[i]))
    end
    diff(num / math.max(den, 1e-30), 0, path)
    ntens, nel = ntens + 1, nel + #xa
  end
end
print(string.format("dist_compare %s: %d metric values, %d tensors (%d elements) of checkpoint %d: largest relative " ..
  "difference %.3g (%s), tolerance %.3g; grad norm %.3g (%s), tolerance %.3g", cfg.what, nser, ntens, nel, step, worst,
  where, cfg.tol, nworst, nwhere, cfg.norm_tol))
if worst > cfg.tol then m2.error(string.format("%s: difference %.3g at %s exceeds %.3g", cfg.what, worst, where, cfg.tol)) end
if nworst > cfg.norm_tol then
  m2.error(string.format("%s: difference %.3g at %s exceeds %.3g", cfg.what, nworst, nwhere, cfg.norm_tol))
end
