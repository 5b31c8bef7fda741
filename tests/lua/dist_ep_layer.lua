-- dist_ep_layer.lua — the expert-parallel MoE layer against the plain one, on every rank (tests/dist_ep.sh runs it
-- under mpirun with 1, 2 and 4 ranks). Not a test by itself (no test_ prefix).
-- Every rank builds the plain layer (all experts) and the expert-parallel one from the same seed (so its experts are
-- slices of the plain layer's), runs the plain one on the whole global batch and the parallel one on its rows, and
-- compares: the output rows, the gradients of its input rows, of its experts (its slice of the plain gradient), of
-- the router and the shared expert (summed over the ranks), and the auxiliary loss (the mean over the ranks). Loss:
-- sum(y * c) + aux (the plain layer); sum(y_r * c_r) + aux_r / R on rank r, so that the ranks' add up to it.
--   case=random   random routing
--   case=empty    no token anywhere picks the last two experts (with 4 ranks of 8 experts: rank 3 receives no row),
--                 and rank 0's tokens never pick expert 2 (the others' do)
local m2 = require "m2"
local MoE = require "m2.layers.moe"
local cfg = m2.config { case = "random", experts = 8, tol = 1e-5 }

local R, me = m2.dist.world(), m2.dist.rank()
local g = m2.dist.group {}
local B, d, E = 8, 6, cfg.experts -- B rows per rank
local spec = { experts = E, top_k = 2, expert_hidden = 5, shared_hidden = 4, aux_loss_coef = 0.1 }
m2.seed(7)
local plain = MoE(d, spec)
m2.seed(7)
spec.expert_parallel = true
local ep = MoE(d, spec)
plain:train()
ep:train()

-- the global batch (R B, d), entries in [0, 1); the last feature marks rank 0's rows (case=empty)
m2.seed(11)
local x = m2.rand({ R * B, d })
local c = m2.randn({ R * B, d })
if cfg.case == "empty" then
  local xt = x:totable()
  for n = 1, R * B do xt[n][d] = n <= B and 10 or 0 end
  x = m2.tensor(xt)
  m2.no_grad(function()
    for _, layer in ipairs { plain, ep } do
      local w = layer.router.weight:totable()
      for e = 1, E do
        for i = 1, d - 1 do w[e][i] = math.abs(w[e][i]) end
        w[e][d] = 0
      end
      for _, e in ipairs { E - 1, E } do for i = 1, d do w[e][i] = -5 end end
      w[3][d] = -100 -- rank 0's rows never choose expert 2 (0-based)
      layer.router.weight:copy_(m2.tensor(w))
    end
  end)
end
x:requires_grad(true)
local mine = x:narrow(1, me * B + 1, B):detach():contiguous()
mine:requires_grad(true)

local y0 = plain(x)
local l0 = (y0 * c):sum() + plain:aux_loss()
l0:backward()
local y1 = ep(mine)
local l1 = (y1 * c:narrow(1, me * B + 1, B)):sum() + ep:aux_loss() * (1 / R)
l1:backward()

local worst, where = 0.0, "nothing"
local function cmp(a, b, what) -- largest difference relative to b's largest value
  local ta, tb = a:reshape(-1):totable(), b:reshape(-1):totable()
  if #ta ~= #tb then m2.error(what .. ": sizes differ") end
  local num, den = 0.0, 0.0
  for i = 1, #ta do
    local dd = math.abs(ta[i] - tb[i])
    if dd ~= dd then dd = math.huge end
    num, den = math.max(num, dd), math.max(den, math.abs(tb[i]))
  end
  local rel = num / math.max(den, 1e-30)
  if rel > worst then worst, where = rel, what end
end
local function rows(t) return t:narrow(1, me * B + 1, B) end
local function summed(t) -- over the ranks
  local s = t:contiguous():clone()
  g:allreduce_sum(s)
  return s
end
local El = E // R
cmp(y1, rows(y0), "output rows")
cmp(mine.grad, rows(x.grad), "input gradient rows")
for _, k in ipairs { "gate", "up", "down" } do
  T = ep.experts[k]
  if T:size(1) ~= El then m2.error("experts." .. k .. " holds " .. T:size(1) .. " experts, not " .. El) end
  cmp(T.grad, plain.experts[k].grad:narrow(1, me * El + 1, El), "experts." .. k .. " gradient")
  cmp(T, plain.experts[k]:narrow(1, me * El + 1, El), "experts." .. k .. " (the slice)")
end
cmp(summed(ep.router.weight.grad), plain.router.weight.grad, "router gradient, summed over the ranks")
cmp(summed(ep.shared.down.weight.grad), plain.shared.down.weight.grad, "shared expert gradient, summed")
local auxes = g:allgather_numbers { ep:aux_loss():item() }
local mean = 0
for r = 1, R do mean = mean + auxes[r][1] / R end
cmp(m2.tensor { mean }, m2.tensor { plain:aux_loss():item() }, "aux loss, mean over the ranks")

-- the load each rank logs is the global one
local lp, le = plain:take_load(), ep:take_load()
for e = 1, E do
  if lp[e] ~= le[e] then m2.error(string.format("load of expert %d: %s vs %s", e - 1, le[e], lp[e])) end
end
if cfg.case == "empty" then
  if lp[E] ~= 0 or lp[E - 1] ~= 0 then m2.error("the last two experts should get no token") end
end
print(string.format("dist_ep_layer %s: rank %d of %d (%d experts here, %d rows received): largest relative " ..
  "difference %.3g (%s), tolerance %.3g", cfg.case, me, R, El, (function()
    local n = 0
    for e = me * El + 1, (me + 1) * El do n = n + lp[e] end
    return n
  end)(), worst, where, cfg.tol))
if worst > cfg.tol then m2.error(string.format("difference %.3g at %s exceeds %.3g", worst, where, cfg.tol)) end
