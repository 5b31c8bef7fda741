-- dist_alltoall.lua — the all-to-all with counts of core/dist.h on CPU ranks (tests/dist_ep.sh runs it under mpirun
-- with 1, 3 and 4 ranks). Not a test by itself (no test_ prefix).
--   mode=values   rank r sends (r + 2 q) % 3 elements to rank q (so some blocks are empty; one rank sends itself
--                 nothing), each value naming its source, destination and place; f32, f64 and i64 buffers; every
--                 received value is checked; then the bad calls (counts that do not add up, a wrong number of counts)
--                 fail on every rank with a message naming the cause, and leave the group usable
--   mode=timeout  rank 1 never calls it: the others fail after dist_timeout seconds, naming the collective
local m2 = require "m2"
local cfg = m2.config { mode = "values", timeout = 2.0 }

local g = m2.dist.group { timeout = cfg.timeout }
local R, me = g:world(), g:rank()
local function count(from, to) return (from + 2 * to) % 3 end

if cfg.mode == "timeout" then
  local send, recv = m2.zeros(R), m2.zeros(R)
  local ones = {}
  for q = 1, R do ones[q] = 1 end
  if me == 1 then
    m2.core.sleep(cfg.timeout + 3)
    print("dist_alltoall: rank 1 skipped the call")
    return
  end
  local ok, err = pcall(g.alltoallv, g, send, ones, recv, ones)
  if ok then m2.error("the all-to-all returned although rank 1 never called it") end
  print("dist_alltoall: rank " .. me .. ": " .. tostring(err))
  return
end

for _, dtype in ipairs { "f32", "f64", "i64" } do
  local sc, rc, sv, nrecv = {}, {}, {}, 0
  for q = 0, R - 1 do
    sc[q + 1], rc[q + 1] = count(me, q), count(q, me)
    for i = 1, sc[q + 1] do sv[#sv + 1] = 1000 * me + 100 * q + i end
    nrecv = nrecv + rc[q + 1]
  end
  local send = #sv > 0 and m2.tensor(sv, { dtype = dtype }) or m2.zeros({ 0 }, { dtype = dtype })
  local recv = m2.zeros({ nrecv }, { dtype = dtype })
  g:alltoallv(send, sc, recv, rc)
  local got, k = recv:totable(), 0
  for q = 0, R - 1 do
    for i = 1, rc[q + 1] do
      k = k + 1
      local want = 1000 * q + 100 * me + i
      if got[k] ~= want then
        m2.error(string.format("%s: rank %d got %s at %d (from rank %d), expected %d", dtype, me, tostring(got[k]), k,
          q, want))
      end
    end
  end
  print(string.format("dist_alltoall: rank %d of %d, %s: %d elements sent, %d received, all in place", me, R, dtype,
    #sv, nrecv))
end

-- bad calls: each rank finds them before anything is sent (so the group stays usable)
local x, y = m2.zeros(4), m2.zeros(4)
local four, short = {}, {}
for q = 1, R do four[q], short[q] = q == 1 and 4 or 0, 0 end
local ok, err = pcall(g.alltoallv, g, x, short, y, four)
if ok or not tostring(err):find("send_counts add up to 0 elements but the buffer (4) has 4", 1, true) then
  m2.error("counts that do not add up: " .. tostring(err))
end
ok, err = pcall(g.alltoallv, g, x, { 4, 0, 0, 0, 0, 0 }, y, four)
if ok or not tostring(err):find("one element count per rank", 1, true) then
  m2.error("a wrong number of counts: " .. tostring(err))
end
ok, err = pcall(g.alltoallv, g, x, four, m2.zeros({ 4 }, { dtype = "f64" }), four)
if ok or not tostring(err):find("send is f32 but recv is f64", 1, true) then m2.error("dtypes: " .. tostring(err)) end
g:barrier()
print("dist_alltoall: rank " .. me .. ": bad calls refused")
