-- test_state_tracking.lua — the group word problem from Lua (lua/bind_data.c, m2.data.state_tracking)
-- against a Lua reference, and a very short run of experiments/state_tracking.lua.
local m2 = require "m2"
local T = m2.test

-- S3 in Lua: permutations of {0,1,2} in lexicographic order, (p*q)[i] = q[p[i]]
local PERMS = { { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 } }
local function s3_mul(a, b)
  local p, q = PERMS[a + 1], PERMS[b + 1]
  local r = { q[p[1] + 1], q[p[2] + 1], q[p[3] + 1] }
  for e, s in ipairs(PERMS) do
    if s[1] == r[1] and s[2] == r[2] and s[3] == r[3] then return e - 1 end
  end
end

T.case("group binding: S3 table, Z5, errors, close", function()
  local g <close> = m2.core.group("s3")
  T.eq(g:order(), 6)
  T.eq(g:name(), "S3")
  local ok = true
  for a = 0, 5 do
    for b = 0, 5 do if g:mul(a, b) ~= s3_mul(a, b) then ok = false end end
  end
  T.ok(ok, "S3 multiplication table matches the Lua reference")
  T.ok(g:mul(1, 2) ~= g:mul(2, 1), "S3 is not abelian")
  local z <close> = m2.core.group("Z5")
  T.eq({ z:order(), z:mul(3, 4), z:mul(0, 2) }, { 5, 2, 2 })
  T.eq(m2.core.group("A5"):order(), 60)
  T.raises(function() m2.core.group("Q8") end, "unknown group 'Q8'")
  T.raises(function() g:mul(6, 0) end, "element id out of range")
  T.raises(function() g:batch { batch = 0, length = 4 } end, "must be positive")
  local h = m2.core.group("S3")
  h:close()
  T.raises(function() h:order() end, "already closed")
end)

T.case("state_tracking batches: running product, determinism, random lengths", function()
  local data = m2.data.state_tracking { group = "S3", length = 12, batch = 5, seed = 3 }
  T.eq({ data.order, data.vocab, data.classes }, { 6, 6, 6 })
  local x, y = data:batch(0)
  T.eq(x:shape(), { 5, 12 })
  T.eq({ x:dtype(), y:dtype() }, { "i64", "i64" })
  local xt, yt = x:totable(), y:totable()
  local all_ok, seen = true, {}
  for b = 1, 5 do
    local acc
    for t = 1, 12 do
      acc = t == 1 and xt[b][t] or s3_mul(acc, xt[b][t])
      if yt[b][t] ~= acc then all_ok = false end
      seen[xt[b][t]] = true
    end
  end
  T.ok(all_ok, "y is the running product x_1 * ... * x_t")
  T.eq(data:running_product(xt[1]), yt[1])
  local n = 0
  for _ in pairs(seen) do n = n + 1 end
  T.ok(n >= 5, "inputs cover the group")
  -- deterministic in (seed, index); other indices and seeds differ
  local x2 = data:batch(0)
  T.eq(x2:totable(), xt)
  local function same(a, b) return m2.eq(a, b):sum_all():item() == a:numel() end
  T.ok(not same(data:batch(1), x), "batch 1 differs from batch 0")
  local other = m2.data.state_tracking { group = "S3", length = 12, batch = 5, seed = 4 }
  T.ok(not same(other:batch(0), x), "another seed gives other data")
  -- evaluation batches: another stream, any length, full length
  local ex, ey = data:eval_batch(40, 0)
  T.eq(ex:shape(), { 5, 40 })
  T.ok(not same(ex:narrow(2, 1, 12), x), "eval batches are not the training batches")
  T.eq(m2.eq(ey, m2.full({ 5, 40 }, -100, { dtype = "i64" })):sum_all():item(), 0, "no padding in eval")
  T.eq(data:eval_batch(40, 0, 2):shape(), { 2, 40 })
  -- random lengths: a prefix of valid targets, then -100 with input 0
  local rl = m2.data.state_tracking { group = "S3", length = 16, batch = 64, seed = 1, random_length = true }
  local rx, ry = rl:batch(0)
  local rxt, ryt = rx:totable(), ry:totable()
  local prefix_ok, lengths = true, {}
  for b = 1, 64 do
    local len = 0
    while len < 16 and ryt[b][len + 1] ~= -100 do len = len + 1 end
    lengths[len] = true
    for t = len + 1, 16 do
      if ryt[b][t] ~= -100 or rxt[b][t] ~= 0 then prefix_ok = false end
    end
    local ref = rl:running_product({ table.unpack(rxt[b], 1, len) })
    for t = 1, len do if ref[t] ~= ryt[b][t] then prefix_ok = false end end
    if len < 1 then prefix_ok = false end
  end
  T.ok(prefix_ok, "valid prefix (running product), then input 0 / target -100")
  local distinct = 0
  for _ in pairs(lengths) do distinct = distinct + 1 end
  T.ok(distinct >= 8, "lengths vary over 1..16 (" .. distinct .. " distinct)")
  -- errors at the caller's line
  T.raises(function() m2.data.state_tracking { group = "S9" } end, "unknown group 'S9'")
  T.raises(function() m2.data.state_tracking { length = 0 } end, "length must be a positive integer")
  T.raises(function() m2.data.state_tracking { lenght = 3 } end, "unknown setting 'lenght'")
  T.raises(function() data:batch(-1) end, "index must be an integer >= 0")
  T.raises(function() data:eval_batch(0) end, "length must be a positive integer")
end)

T.case("experiments/state_tracking.lua runs (Z2, a few steps)", function()
  local out_path = os.tmpname()
  os.remove(out_path)
  out_path = out_path .. ".h5"
  local script = (m2.source_dir or ".") .. "/experiments/state_tracking.lua"
  local code, out = T.run_m2lab(string.format("run %s group=Z2 steps=300 train_len=8 batch=16 d=16 layers=1 " ..
    "heads=1 k=2 v=4 conv=0 lr=3e-2 init_std=0.25 log_every=100 eval_every=150 eval_batches=1 eval_batch=16 out=%s",
    script, out_path))
  T.eq(code, 0, out)
  T.ok(out:find("8x", 1, true) ~= nil and out:find("seq acc", 1, true) ~= nil, out)
  -- the run file: /eval/acc_len<L> and /eval/seqacc_len<L> at steps 150 and 300
  local runs = m2.runs
  local ok = true
  for _, L in ipairs { 8, 16, 32, 64 } do
    local steps, acc = runs.series(out_path, "eval", "acc_len" .. L)
    local _, seqacc = runs.series(out_path, "eval", "seqacc_len" .. L)
    T.eq(steps, { 150, 300 }, "eval steps at length " .. L)
    for i = 1, #acc do
      if not (acc[i] >= 0 and acc[i] <= 1 and seqacc[i] >= 0 and seqacc[i] <= acc[i] + 1e-9) then ok = false end
    end
  end
  T.ok(ok, "accuracies in [0, 1], sequence accuracy <= per-position accuracy")
  local _, acc8 = runs.series(out_path, "eval", "acc_len8")
  -- parity is learned in a few hundred steps by one small M2RNN layer
  T.ok(acc8[2] > 0.8, "Z2 accuracy at the training length (chance 0.5): " .. acc8[2])
  -- accuracy against position at the longest length (64) in windows: 1, 2, 3, 4 alone, then 2 wide up to 16,
  -- then 8 wide; weighted by their widths they average to acc_len64
  local ends = { 1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 24, 32, 40, 48, 56, 64 }
  local names
  do
    local r <close> = runs.open(out_path)
    names = {}
    for _, n in ipairs(r:list_series("eval")) do
      if n:match("^acc_pos%d+$") then names[#names + 1] = tonumber(n:match("%d+")) end
    end
    table.sort(names)
  end
  T.eq(names, ends, "the position windows")
  local sum, prev = 0, 0
  for _, e in ipairs(ends) do
    local steps, acc = runs.series(out_path, "eval", "acc_pos" .. e)
    T.eq(steps, { 150, 300 })
    sum, prev = sum + acc[2] * (e - prev), e
  end
  local _, acc64 = runs.series(out_path, "eval", "acc_len64")
  T.close(sum / 64, acc64[2], 1e-9, "the windows' weighted mean is the accuracy at length 64")
  local info = runs.info(out_path)
  T.eq(info.status, "done")
  do
    local r <close> = runs.open(out_path)
    T.eq(r:get_attr("group"), "Z2", "the config is stored with the run")
  end
  os.remove(out_path)
  -- an unknown architecture is an error located in the script
  code, out = T.run_m2lab(string.format("run %s arch=lstm", script))
  T.ok(code ~= 0 and out:find("unknown arch 'lstm'", 1, true) ~= nil, out)
end)

T.case("experiments/state_tracking.lua candidates: the kept initialisation, trained in full, is a plain run of it", function()
  local base = os.tmpname()
  os.remove(base)
  local a, b = base .. "-a.h5", base .. "-b.h5"
  local script = (m2.source_dir or ".") .. "/experiments/state_tracking.lua"
  local common = "group=Z2 steps=40 train_len=8 batch=8 d=16 layers=1 heads=1 k=2 v=4 conv=0 lr=3e-2 init_std=0.25 " ..
    "log_every=1 eval_every=0 eval_batches=1 eval_batch=16"
  local code, out = T.run_m2lab(string.format("run %s %s candidates=3 candidate_steps=10 seed=4 out=%s", script, common, a))
  T.eq(code, 0, out)
  T.ok(out:find("kept candidate", 1, true) ~= nil, out)
  local kept, accs
  do
    local r <close> = m2.runs.open(a)
    kept, accs = r:get_attr("init_seed"), r:get_attr("candidate_accs")
  end
  T.ok(kept == 4 or kept == 1004 or kept == 2004, "the kept init seed: " .. tostring(kept))
  local n = 0
  for v in tostring(accs):gmatch("[^,]+") do
    n = n + 1
    T.ok(tonumber(v) >= 0 and tonumber(v) <= 1, "a candidate's accuracy: " .. v)
  end
  T.eq(n, 3, "three candidates' accuracies recorded: " .. tostring(accs))
  code, out = T.run_m2lab(string.format("run %s %s seed=4 init_seed=%d candidates=1 out=%s", script, common, kept, b))
  T.eq(code, 0, out)
  local sa, la = m2.runs.series(a, "metrics", "loss")
  local sb, lb = m2.runs.series(b, "metrics", "loss")
  T.eq(sa, sb, "the same steps")
  T.eq(la, lb, "the same losses, bit for bit (the kept candidate's first steps are the full run's)")
  code, out = T.run_m2lab(string.format("run %s %s candidates=2 candidate_steps=40 out=%s", script, common, base .. "-c.h5"))
  T.ok(code ~= 0 and out:find("candidate_steps", 1, true) ~= nil, "candidate_steps >= steps is refused: " .. out)
  -- a resume continues the kept candidate from its checkpoint: no candidate trains again, the record is kept
  code, out = T.run_m2lab(string.format("resume %s steps=50", a))
  T.eq(code, 0, out)
  T.ok(out:find("candidate %d+ %(init seed") == nil, "no candidate trained on resume: " .. out)
  local sr = m2.runs.series(a, "metrics", "loss")
  T.eq(sr[#sr], 50, "the resumed run reached step 50")
  do
    local r <close> = m2.runs.open(a)
    T.eq(r:get_attr("init_seed"), kept, "the kept init seed stays recorded")
  end
  os.remove(a); os.remove(b); os.remove(base .. "-c.h5")
end)

T.case("no leaks", function()
  collectgarbage()
  collectgarbage()
  T.ok(m2.live_nodes() == 0, "live nodes " .. m2.live_nodes())
end)
