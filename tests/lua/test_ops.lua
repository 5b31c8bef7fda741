-- test_ops.lua — every bound op from Lua against naive references written here, gradient checks
-- (m2.gradcheck, f64) of ops and of the nn modules, and the sequence mixers.
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

m2.seed(1234)
local F64 = { dtype = "f64" }

-- nested-table helpers
local function map(t, f)
  if type(t) ~= "table" then return f(t) end
  local out = {}
  for i, x in ipairs(t) do out[i] = map(x, f) end
  return out
end
local function map2(a, b, f)
  if type(a) ~= "table" then return f(a, b) end
  local out = {}
  for i = 1, #a do out[i] = map2(a[i], b[i], f) end
  return out
end
local function randn(...) return m2.randn({ ... }, F64) end

T.case("unary maps", function()
  local x = randn(3, 4)
  local xt = x:totable()
  local function sig(v) return 1 / (1 + math.exp(-v)) end
  T.close(x:exp():totable(), map(xt, math.exp), 1e-12)
  T.close((x:square() + 0.5):log():totable(), map(xt, function(v) return math.log(v * v + 0.5) end), 1e-12)
  T.close(x:tanh():totable(), map(xt, function(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end), 1e-12)
  T.close(x:sigmoid():totable(), map(xt, sig), 1e-12)
  T.close(x:silu():totable(), map(xt, function(v) return v * sig(v) end), 1e-12)
  T.close(x:softplus():totable(), map(xt, function(v) return math.log(1 + math.exp(v)) end), 1e-12)
  T.close(x:relu():totable(), map(xt, function(v) return math.max(v, 0) end), 0)
  T.close(x:square():totable(), map(xt, function(v) return v * v end), 1e-12)
  T.close(x:square():sqrt():totable(), map(xt, math.abs), 1e-12)
  T.close(x:neg():totable(), map(xt, function(v) return -v end), 0)
  T.close(m2.neg(x):totable(), map(xt, function(v) return -v end), 0)
  T.close(x:clamp(-0.5, 0.5):totable(), map(xt, function(v) return math.min(0.5, math.max(-0.5, v)) end), 0)
  T.close(x:clamp(nil, 0):totable(), map(xt, function(v) return math.min(0, v) end), 0)
  T.close(x:scale(3):totable(), map(xt, function(v) return 3 * v end), 1e-12)
  T.close(x:add_scalar(-2):totable(), map(xt, function(v) return v - 2 end), 1e-12)
  T.raises(function() m2.exp() end, "bad argument #1 to 'exp' %(m2.Tensor expected, got no value%)")
end)

T.case("binary ops with broadcasting", function()
  local a, b = randn(2, 3), randn(3)
  local at, bt = a:totable(), b:totable()
  local function bc(f)
    local out = {}
    for i = 1, 2 do
      out[i] = {}
      for j = 1, 3 do out[i][j] = f(at[i][j], bt[j]) end
    end
    return out
  end
  T.close(m2.add(a, b):totable(), bc(function(x, y) return x + y end), 1e-12)
  T.close(m2.sub(a, b):totable(), bc(function(x, y) return x - y end), 1e-12)
  T.close(a:mul(b):totable(), bc(function(x, y) return x * y end), 1e-12)
  T.close(a:div(b):totable(), bc(function(x, y) return x / y end), 1e-12)
  T.close(m2.add(a, 1):totable(), map(at, function(v) return v + 1 end), 1e-12)
  T.raises(function() m2.add(a, m2.zeros(4, F64)) end, "broadcast")
  T.raises(function() m2.add(a, m2.zeros(3)) end, "dtype")
end)

T.case("reductions, softmax, cumsum", function()
  local x = randn(2, 3, 4)
  local xt = x:totable()
  -- sum over dim 2 (1-based) -> (2, 4)
  local ref = {}
  for i = 1, 2 do
    ref[i] = {}
    for k = 1, 4 do
      local s = 0
      for j = 1, 3 do s = s + xt[i][j][k] end
      ref[i][k] = s
    end
  end
  T.close(x:sum(2):totable(), ref, 1e-12)
  T.eq(x:sum(2, true):shape(), { 2, 1, 4 })
  T.close(x:mean(2):totable(), map(ref, function(v) return v / 3 end), 1e-12)
  local last = {} -- sum over the last dim -> (2, 3)
  for i = 1, 2 do
    last[i] = {}
    for j = 1, 3 do
      local s = 0
      for k = 1, 4 do s = s + xt[i][j][k] end
      last[i][j] = s
    end
  end
  T.close(x:sum(-1):totable(), last, 1e-12)
  local total = 0
  local mx, amx = -math.huge, -1
  local flat = x:reshape(-1):totable()
  for i, v in ipairs(flat) do
    total = total + v
    if v > mx then mx, amx = v, i - 1 end
  end
  T.close(x:sum():item(), total, 1e-12)
  T.close(x:sum_all():item(), total, 1e-12)
  T.close(x:mean_all():item(), total / 24, 1e-12)
  T.close(x:max_all():item(), mx, 0)
  T.close(x:max():item(), mx, 0)
  T.eq(x:argmax():item(), amx, "argmax over everything is a 0-based flat position")
  -- max / argmax along the last dim
  local m = randn(3, 5)
  local mt = m:totable()
  local vals, idx = {}, {}
  for i = 1, 3 do
    local best, bi = -math.huge, -1
    for j = 1, 5 do
      if mt[i][j] > best then best, bi = mt[i][j], j - 1 end
    end
    vals[i], idx[i] = best, bi
  end
  T.close(m:max(2):totable(), vals, 0)
  T.eq(m:argmax(2):totable(), idx)
  T.eq(m:argmax(-1, true):shape(), { 3, 1 })
  -- softmax / log_softmax over the last dim
  local sm, lsm = {}, {}
  for i = 1, 3 do
    local z = 0
    for j = 1, 5 do z = z + math.exp(mt[i][j]) end
    sm[i], lsm[i] = {}, {}
    for j = 1, 5 do
      sm[i][j] = math.exp(mt[i][j]) / z
      lsm[i][j] = mt[i][j] - math.log(z)
    end
  end
  T.close(m:softmax():totable(), sm, 1e-12)
  T.close(m:softmax(2):totable(), sm, 1e-12)
  T.close(m2.log_softmax(m, -1):totable(), lsm, 1e-12)
  T.close(m:softmax(1):sum(1):totable(), { 1, 1, 1, 1, 1 }, 1e-12)
  -- cumsum along dim 2
  local cs = {}
  for i = 1, 3 do
    cs[i] = {}
    local s = 0
    for j = 1, 5 do
      s = s + mt[i][j]
      cs[i][j] = s
    end
  end
  T.close(m:cumsum(2):totable(), cs, 1e-12)
  -- eq
  T.eq(m2.eq(m2.tensor { 1, 2, 3 }, m2.tensor { 1, 0, 3 }):totable(), { 1, 0, 1 })
  T.eq(m2.tensor({ 1, 2, 3 }):eq(2):totable(), { 0, 1, 0 })
  T.raises(function() m:sum(3) end, "dim 3 out of range for a 2%-d tensor")
end)

local function matmul_ref(a, b)
  local n, k, mcols = #a, #b, #b[1]
  local out = {}
  for i = 1, n do
    out[i] = {}
    for j = 1, mcols do
      local s = 0
      for l = 1, k do s = s + a[i][l] * b[l][j] end
      out[i][j] = s
    end
  end
  return out
end
local function transpose_ref(a)
  local out = {}
  for i = 1, #a[1] do
    out[i] = {}
    for j = 1, #a do out[i][j] = a[j][i] end
  end
  return out
end

T.case("matmul and linear", function()
  local a, b = randn(3, 4), randn(4, 5)
  local ref = matmul_ref(a:totable(), b:totable())
  T.close(m2.matmul(a, b):totable(), ref, 1e-12)
  T.close(a:matmul(b):totable(), ref, 1e-12)
  T.close(m2.matmul(a:t():contiguous(), b, true, false):totable(), ref, 1e-12)
  T.close(m2.matmul(a, b:t():contiguous(), { tb = true }):totable(), ref, 1e-12)
  -- batched
  local ba = randn(2, 3, 4)
  local out = m2.matmul(ba, b)
  T.eq(out:shape(), { 2, 3, 5 })
  T.close(out[2]:totable(), matmul_ref(ba[2]:totable(), b:totable()), 1e-12)
  -- linear: x (2, 4) W (5, 4) b (5)
  local x, w, bias = randn(2, 4), randn(5, 4), randn(5)
  local lr = matmul_ref(x:totable(), transpose_ref(w:totable()))
  local bt = bias:totable()
  for i = 1, 2 do for j = 1, 5 do lr[i][j] = lr[i][j] + bt[j] end end
  T.close(m2.linear(x, w, bias):totable(), lr, 1e-12)
  T.close(x:linear(w):totable(), matmul_ref(x:totable(), transpose_ref(w:totable())), 1e-12)
  T.raises(function() m2.matmul(a, a) end, "")
end)

T.case("nn ops: embedding, cross_entropy, rmsnorm, l2norm", function()
  local W = randn(6, 3)
  local ids = m2.tensor({ { 0, 5 }, { 2, 2 } }, { dtype = "i64" })
  local e = m2.embedding(W, ids)
  T.eq(e:shape(), { 2, 2, 3 })
  local Wt = W:totable()
  T.close(e:totable(), { { Wt[1], Wt[6] }, { Wt[3], Wt[3] } }, 0)
  T.raises(function() m2.embedding(W, m2.tensor({ 6 }, { dtype = "i64" })) end, "")
  -- cross entropy with an ignored target
  local logits = randn(4, 5)
  local tg = m2.tensor({ 1, 4, -100, 0 }, { dtype = "i64" })
  local lt, tt = logits:totable(), tg:totable()
  local sum, n = 0, 0
  for r = 1, 4 do
    if tt[r] ~= -100 then
      local z = 0
      for j = 1, 5 do z = z + math.exp(lt[r][j]) end
      sum = sum + math.log(z) - lt[r][tt[r] + 1]
      n = n + 1
    end
  end
  T.close(m2.cross_entropy(logits, tg):item(), sum / n, 1e-12)
  T.close(logits:cross_entropy(tg, -100):item(), sum / n, 1e-12)
  -- rmsnorm and l2norm over the last dim
  local x, w = randn(3, 4), randn(4)
  local xt, wt = x:totable(), w:totable()
  local rms, l2 = {}, {}
  for i = 1, 3 do
    local ss = 0
    for j = 1, 4 do ss = ss + xt[i][j] ^ 2 end
    rms[i], l2[i] = {}, {}
    for j = 1, 4 do
      rms[i][j] = xt[i][j] / math.sqrt(ss / 4 + 1e-5) * wt[j]
      l2[i][j] = xt[i][j] / math.sqrt(ss + 1e-6)
    end
  end
  T.close(m2.rmsnorm(x, w):totable(), rms, 1e-12)
  T.close(x:rmsnorm(w, 1e-5):totable(), rms, 1e-12)
  T.close(m2.rmsnorm(x, nil):totable(), map2(rms, { wt, wt, wt }, function(r, ww) return r / ww end), 1e-10)
  T.close(x:l2norm():totable(), l2, 1e-12)
end)

T.case("indexing and joining", function()
  local a, b = randn(2, 3), randn(2, 1)
  local c = m2.concat({ a, b }, 2)
  T.eq(c:shape(), { 2, 4 })
  T.close(c:narrow(2, 4, 1):totable(), b:totable(), 0)
  T.close(c:narrow(2, 1, 3):totable(), a:totable(), 0)
  T.raises(function() m2.concat({ a, 5 }, 1) end, "entry 2 of the list is not a tensor")
  local parts = m2.split(c, 2, { 3, 1 })
  T.eq(#parts, 2)
  T.close(parts[1]:totable(), a:totable(), 0)
  T.close(parts[2]:totable(), b:totable(), 0)
  local chunks = c:split(-1, 3)
  T.eq(#chunks, 2)
  T.eq(chunks[1]:shape(), { 2, 3 })
  T.eq(chunks[2]:shape(), { 2, 1 })
  -- a chunk near 2^63 is one piece (the count's total + chunk - 1 overflowed; UBSan, found by fuzz_lua)
  local one = c:split(-1, math.maxinteger)
  T.eq(#one, 1)
  T.eq(one[1]:shape(), { 2, 4 })
  T.raises(function() m2.split(c, 2, { 2, 1 }) end, "")
  -- gather along dim 2 with 0-based positions
  local x = m2.tensor({ { 10, 11, 12 }, { 20, 21, 22 } }, F64)
  local idx = m2.tensor({ { 2, 0 }, { 1, 1 } }, { dtype = "i64" })
  T.eq(m2.gather(x, 2, idx):totable(), { { 12, 10 }, { 21, 21 } })
  T.eq(x:index_select(1, m2.tensor({ 1, 0, 1 }, { dtype = "i64" })):totable(),
    { { 20, 21, 22 }, { 10, 11, 12 }, { 20, 21, 22 } })
  T.eq(x:index_select(2, m2.tensor({ 2 }, { dtype = "i64" })):totable(), { { 12 }, { 22 } })
end)

T.case("gradcheck of ops", function()
  local function check(name, fn, inputs, opts)
    local ok, err, msg = m2.gradcheck(fn, inputs, opts)
    T.ok(ok, name .. ": " .. tostring(msg) .. " (max err " .. tostring(err) .. ")")
    T.ok(err <= 1, name .. " max err")
  end
  local function leaf(...) return m2.randn({ ... }, { dtype = "f64", requires_grad = true }) end
  check("softmax", function(x) return x:softmax(2) end, { leaf(3, 4) })
  check("log_softmax", function(x) return x:log_softmax(-1) end, { leaf(2, 5) })
  check("matmul", function(a, b) return m2.matmul(a, b) end, { leaf(3, 4), leaf(4, 2) })
  check("linear", function(x, w, b) return m2.linear(x, w, b) end, { leaf(2, 3), leaf(4, 3), leaf(4) })
  local tg = m2.tensor({ 1, 0, 3 }, { dtype = "i64" })
  check("cross_entropy", function(x) return m2.cross_entropy(x, tg) end, { leaf(3, 4) })
  check("rmsnorm", function(x, w) return m2.rmsnorm(x, w) end, { leaf(3, 4), leaf(4) })
  check("swiglu", function(a, b) return m2.swiglu(a, b) end, { leaf(3, 5), leaf(3, 5) })
  local bconst = m2.randn({ 2, 3 }, { dtype = "f64" })
  check("swiglu (a only)", function(a) return m2.swiglu(a, bconst) end, { leaf(2, 3) })
  check("arith", function(a, b) return (a * b - a / (b:square() + 1)) * 2 + 1 end, { leaf(2, 3), leaf(3) })
  check("index", function(x) return x[2]:sum(1) end, { leaf(3, 4) })
  check("views", function(x) return x:t():reshape(-1):narrow(1, 2, 5) * 3 end, { leaf(2, 4) })
  -- a wrong gradient is caught: x * detach(x) has analytic x, numeric 2x
  local ok, err, msg = m2.gradcheck(function(x) return x * x:detach() end, { leaf(4) })
  T.eq(ok, false, "gradcheck must fail on a wrong gradient")
  T.ok(err > 1)
  T.ok(msg and msg:find("analytic") ~= nil, tostring(msg))
  -- errors inside fn are re-raised
  T.raises(function() m2.gradcheck(function(x) error("inside fn") end, { leaf(2) }) end, "inside fn")
  T.raises(function() m2.gradcheck(function(x) return 3 end, { leaf(2) }) end, "must return a tensor")
end)

T.case("gradcheck of nn modules (f64)", function()
  local function check(name, mod, x, extra)
    mod:double()
    local inputs = { x }
    for _, p in ipairs(mod:parameters()) do inputs[#inputs + 1] = p.tensor end
    local ok, err, msg = m2.gradcheck(function() return mod(x) end, inputs)
    T.ok(ok, name .. ": " .. tostring(msg))
    T.ok(#inputs > 1 and inputs[2]:dtype() == "f64", name .. " parameters are f64")
  end
  local function leaf(...) return m2.randn({ ... }, { dtype = "f64", requires_grad = true }) end
  check("Linear", nn.Linear(3, 4), leaf(2, 3))
  check("Linear without bias", nn.Linear(3, 2, { bias = false, init_std = 0.5 }), leaf(5, 3))
  local norm = nn.RMSNorm(4)
  check("RMSNorm", norm, leaf(3, 4))
  check("SwiGLU", nn.SwiGLU(3, 5, { init_std = 0.5 }), leaf(2, 3))
  check("Sequential MLP", nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)), leaf(4, 3))
  local emb = nn.Embedding(5, 3):double()
  local ids = m2.tensor({ 0, 4, 4, 1 }, { dtype = "i64" })
  local ok, _, msg = m2.gradcheck(function() return emb(ids) end, { emb.weight })
  T.ok(ok, "Embedding: " .. tostring(msg))
end)

T.case("mixers: conv1d_causal, m2rnn, attention, rope", function()
  -- conv1d: y[b,t,c] = bias[c] + sum_j w[c,j] x[b, t-(W-1)+j, c]
  local B, Tn, C, W = 1, 5, 2, 3
  local x, w, bias = randn(B, Tn, C), randn(C, W), randn(C)
  local xt, wt, bt = x:totable(), w:totable(), bias:totable()
  local ref = { {} }
  for t = 1, Tn do
    ref[1][t] = {}
    for c = 1, C do
      local s = bt[c]
      for j = 1, W do
        local src = t - (W - 1) + (j - 1)
        if src >= 1 then s = s + wt[c][j] * xt[1][src][c] end
      end
      ref[1][t][c] = s
    end
  end
  T.close(m2.conv1d_causal(x, w, bias):totable(), ref, 1e-12)

  -- m2rnn with one head: H_t = f H + (1 - f) tanh(H W + k v^T), y = q^T H
  local K, V = 2, 3
  Tn = 4
  local q, k, v = randn(1, Tn, 1, K), randn(1, Tn, 1, K), randn(1, Tn, 1, V)
  local Wm = randn(1, V, V) * 0.5
  local f = m2.rand(1, Tn, 1, F64)
  local y, hT = m2.m2rnn(q, k, v, Wm, f)
  T.eq(y:shape(), { 1, Tn, 1, V })
  T.eq(hT:shape(), { 1, 1, K, V })
  local qt, kt, vt, Wt, ft = q:totable(), k:totable(), v:totable(), Wm:totable()[1], f:totable()
  local H = {}
  for a = 1, K do
    H[a] = {}
    for b = 1, V do H[a][b] = 0 end
  end
  local yref = { {} }
  for t = 1, Tn do
    local ff = ft[1][t][1]
    local Hn = {}
    for a = 1, K do
      Hn[a] = {}
      for b = 1, V do
        local hw = 0
        for c = 1, V do hw = hw + H[a][c] * Wt[c][b] end
        local z = math.tanh(hw + kt[1][t][1][a] * vt[1][t][1][b])
        Hn[a][b] = ff * H[a][b] + (1 - ff) * z
      end
    end
    H = Hn
    yref[1][t] = { {} }
    for b = 1, V do
      local s = 0
      for a = 1, K do s = s + qt[1][t][1][a] * H[a][b] end
      yref[1][t][1][b] = s
    end
  end
  T.close(y:totable(), yref, 1e-12)
  T.close(hT:totable(), { { H } }, 1e-12)
  -- continuing from hT equals running the whole sequence
  local y1, h1 = m2.m2rnn(q:narrow(2, 1, 2), k:narrow(2, 1, 2), v:narrow(2, 1, 2), Wm, f:narrow(2, 1, 2))
  local y2 = m2.m2rnn(q:narrow(2, 3, 2), k:narrow(2, 3, 2), v:narrow(2, 3, 2), Wm, f:narrow(2, 3, 2), h1,
    { grad_clip = 1 })
  T.close(y2:totable(), y:narrow(2, 3, 2):totable(), 1e-12)
  -- ckpt_every only says how often the CUDA forward keeps a state: the CPU result is the same; < 0 is refused
  T.close(m2.m2rnn(q, k, v, Wm, f, { ckpt_every = 64 }):totable(), yref, 1e-12)
  T.raises(function() m2.m2rnn(q, k, v, Wm, f, { ckpt_every = -8 }) end, "ckpt_every = %-8 must be >= 0")
  -- gradient check of the recurrence
  local function leaf(t) return t:detach():requires_grad(true) end
  local gi = { leaf(q), leaf(k), leaf(v), leaf(Wm), leaf(f) }
  local ok, _, msg = m2.gradcheck(function(a, b, c, d, e)
    local yy = m2.m2rnn(a, b, c, d, e)
    return yy
  end, gi)
  T.ok(ok, "m2rnn gradcheck: " .. tostring(msg))

  -- causal attention, one head: o_t = softmax_s<=t(q_t . k_s * scale) v_s
  local D = 4
  Tn = 3
  local qa, ka, va = randn(1, Tn, 1, D), randn(1, Tn, 1, D), randn(1, Tn, 1, D)
  local o = m2.attention(qa, ka, va)
  local Q, Kt, Vt = qa:totable(), ka:totable(), va:totable()
  local oref = { {} }
  for t = 1, Tn do
    local wts, z = {}, 0
    for s = 1, t do
      local dot = 0
      for d = 1, D do dot = dot + Q[1][t][1][d] * Kt[1][s][1][d] end
      wts[s] = math.exp(dot / math.sqrt(D))
      z = z + wts[s]
    end
    oref[1][t] = { {} }
    for d = 1, D do
      local acc = 0
      for s = 1, t do acc = acc + wts[s] / z * Vt[1][s][1][d] end
      oref[1][t][1][d] = acc
    end
  end
  T.close(o:totable(), oref, 1e-12)
  T.ok(m2.attention(qa, ka, va, { causal = false }):totable()[1][1][1][1] ~= oref[1][1][1][1], "non-causal differs")

  -- rope: pairs (i, i + D/2) rotated by (t + offset) theta^(-2i/D)
  local xr = randn(1, 2, 1, 4)
  local r = m2.rope(xr, 100, 3):totable()
  local X = xr:totable()
  local rref = { {} }
  for t = 1, 2 do
    rref[1][t] = { {} }
    for i = 0, 1 do
      local ang = (t - 1 + 3) * 100 ^ (-2 * i / 4)
      local x1, x2 = X[1][t][1][i + 1], X[1][t][1][i + 3]
      rref[1][t][1][i + 1] = x1 * math.cos(ang) - x2 * math.sin(ang)
      rref[1][t][1][i + 3] = x1 * math.sin(ang) + x2 * math.cos(ang)
    end
  end
  T.close(r, rref, 1e-12)
end)

T.case("mixers: gdn and ssd, recurrent vs chunked", function()
  local B, Tn, H, K, V = 1, 6, 2, 4, 3
  local q = randn(B, Tn, H, K):l2norm()
  local k = randn(B, Tn, H, K):l2norm()
  local v = randn(B, Tn, H, V)
  local g = m2.rand(B, Tn, H, { dtype = "f64", lo = -0.5, hi = -0.01 })
  local beta = m2.rand(B, Tn, H, F64)
  local o1, h1 = m2.gdn(q, k, v, g, beta)
  local o2, h2 = m2.gdn_chunked(q, k, v, g, beta, nil, { chunk = 4 })
  T.eq(o1:shape(), { B, Tn, H, V })
  T.eq(h1:shape(), { B, H, K, V })
  T.close(o2:totable(), o1:totable(), 1e-10)
  T.close(h2:totable(), h1:totable(), 1e-10)
  -- ssd: x (B,T,H,P), dt (B,T,H), A (H), Bm/Cm (B,T,G,N)
  local P, N, G = 3, 2, 1
  local x = randn(B, Tn, H, P)
  local dt = m2.rand(B, Tn, H, { dtype = "f64", lo = 0.1, hi = 0.5 })
  local A = m2.rand(H, { dtype = "f64", lo = -1, hi = -0.1 })
  local Bm, Cm = randn(B, Tn, G, N), randn(B, Tn, G, N)
  local y1, s1 = m2.ssd(x, dt, A, Bm, Cm)
  local y2, s2 = m2.ssd_chunked(x, dt, A, Bm, Cm, { chunk = 4 })
  T.eq(y1:shape(), { B, Tn, H, P })
  T.eq(s1:shape(), { B, H, P, N })
  T.close(y2:totable(), y1:totable(), 1e-10)
  T.close(s2:totable(), s1:totable(), 1e-10)
  T.raises(function() m2.ssd(x, dt, A, Bm) end, "bad argument #5 to 'ssd'")
end)

T.case("swiglu is silu(a) * b in one op", function()
  m2.seed(5)
  for _, dt in ipairs { "f64", "f32" } do
    local a, b = m2.randn(4, 7, { dtype = dt }) * 3, m2.randn(4, 7, { dtype = dt })
    local d = m2.max_all(m2.square(m2.swiglu(a, b) - m2.silu(a) * b)):item()
    T.ok(d <= (dt == "f64" and 1e-28 or 1e-12), dt .. ": swiglu agrees with silu(a) * b (" .. d .. ")")
    T.eq(a:swiglu(b):size(2), 7, "also a method")
  end
  local strided = m2.randn(5, 4):t() -- a non-contiguous input is made contiguous by the dispatcher
  T.close(m2.swiglu(strided, strided):totable(), (m2.silu(strided) * strided):totable(), 1e-6)
  T.raises(function() m2.swiglu(m2.randn(3, 4), m2.randn(4, 3)) end, "must have the same shape")
  T.raises(function() m2.swiglu(m2.randn(3, 4), m2.randn(3, 4, { dtype = "f64" })) end, "dtype")
  T.raises(function() m2.swiglu(m2.randint(3, 4), m2.randint(3, 4)) end, "swiglu")
end)

T.case("linear_cross_entropy is cross_entropy(linear(h, W)) without the full logits", function()
  m2.seed(9)
  local F64 = { dtype = "f64", requires_grad = true }
  local h, w = m2.randn({ 2, 13, 6 }, F64), m2.randn({ 17, 6 }, F64)
  local t = m2.randint(17, 2, 13)
  for i = 1, 5 do t:set(-100, 1, i) end -- the first chunk of 5 rows is all ignored
  t:set(-100, 2, 7)
  local ref = m2.cross_entropy(m2.linear(h, w), t, -100)
  ref:backward()
  local rh, rw = h.grad:clone(), w.grad:clone()
  for _, ch in ipairs { 0, 1, 4, 5, 26, 100 } do
    h:zero_grad(); w:zero_grad()
    local l = m2.linear_cross_entropy(h, w, t, -100, ch)
    T.close(l:item(), ref:item(), 1e-12, "loss, chunk " .. ch)
    l:backward()
    T.close(h.grad:totable(), rh:totable(), 1e-12, "dh, chunk " .. ch)
    T.close(w.grad:totable(), rw:totable(), 1e-12, "dW, chunk " .. ch)
  end
  -- the forward computes dh and dW when the call is recorded; backward scales them by the incoming gradient
  h:zero_grad(); w:zero_grad()
  m2.mul(m2.linear_cross_entropy(h, w, t, -100, 4), 3):backward()
  T.close(h.grad:totable(), (rh * 3):totable(), 1e-12, "dh of 3 * loss")
  T.close(w.grad:totable(), (rw * 3):totable(), 1e-12, "dW of 3 * loss")
  m2.no_grad(function()
    T.close(m2.linear_cross_entropy(h, w, t, -100, 4):item(), ref:item(), 1e-12, "loss without gradients")
  end)
  local hw = m2.randn({ 2, 13, 6 }, { dtype = "f64", requires_grad = true })
  local l1 = m2.linear_cross_entropy(hw, w:detach(), t, -100, 4) -- only h wants a gradient
  l1:backward()
  T.close(l1:item(), m2.cross_entropy(m2.linear(hw, w), t, -100):item(), 1e-12, "loss, W not differentiated")
  T.ok(hw.grad ~= nil, "dh without dW")
  local ts = m2.randint(7, 2, 5)
  ts:set(-100, 1, 2)
  local ok, err, msg = m2.gradcheck(function(a, b) return m2.linear_cross_entropy(a, b, ts, -100, 4) end,
    { m2.randn({ 2, 5, 3 }, F64), m2.randn({ 7, 3 }, F64) })
  T.ok(ok, "gradcheck: " .. tostring(msg) .. " " .. tostring(err))
  local t32 = m2.randint(17, 2, 13):to("i32")
  T.close(m2.linear_cross_entropy(h, w, t32):item(), m2.cross_entropy(m2.linear(h, w), t32):item(), 1e-12, "i32")
  local all = m2.full({ 2, 13 }, -100, { dtype = "i64" })
  T.eq(m2.linear_cross_entropy(h, w, all):item(), 0, "every row ignored: 0")
  T.raises(function() m2.linear_cross_entropy(h, m2.randn({ 17, 5 }, F64), t) end, "must be %(%.%.%., d%), %(V, d%)")
  T.raises(function() m2.linear_cross_entropy(h, w, m2.randint(17, 2, 12)) end, "must be")
  T.raises(function() m2.linear_cross_entropy(h, w, t, -100, -1) end, "chunk rows must be >= 0")
  T.raises(function() m2.linear_cross_entropy(h, w, h) end, "targets must be an integer tensor")
  local bad = m2.randint(17, 2, 13); bad:set(40, 2, 2)
  T.raises(function() m2.linear_cross_entropy(h, w, bad) end, "out of range")
end)
