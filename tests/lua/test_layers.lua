-- test_layers.lua — the mixer layers (lua/m2/layers/*.lua): shapes, the parameters built against
-- their declarations (params, counted by nn.param_shapes), the paper inits, the M2RNN layer against a
-- plain-Lua reference, causality, gradient checks in f64 at tiny sizes, and errors located at the caller's line.
local m2 = require "m2"
local T = m2.test
local C = require "m2.layers.common"
local M2RNN = require "m2.layers.m2rnn"
local GDN = require "m2.layers.gdn"
local Mamba2 = require "m2.layers.mamba2"
local Attention = require "m2.layers.attention"
local MoE = require "m2.layers.moe"

m2.seed(20260314)

-- tiny configurations of each layer, d = 6
local D = 6
local LAYERS = {
  { "M2RNN", M2RNN, { k = 3, v = 2, heads = 2 } },
  { "M2RNN shared heads", M2RNN, { k = 3, v = 2, heads = 4, v_heads = 2, g_heads = 2, w_heads = 1 } },
  { "GDN", GDN, { heads = 2, k = 3, v = 2 } },
  { "GDN neg eigval chunked", GDN, { heads = 2, k = 3, v = 2, allow_neg_eigval = true, chunked = true, chunk = 2 } },
  { "Mamba2", Mamba2, { heads = 2, head_dim = 2, state = 3 } },
  { "Mamba2 chunked, 2 groups", Mamba2, { heads = 2, head_dim = 2, state = 3, groups = 2, chunked = true, chunk = 2 } },
  { "Attention", Attention, { heads = 2, head_dim = 4 } },
  { "Attention RoPE GQA", Attention, { heads = 2, head_dim = 4, kv_heads = 1, rope = true } },
}

local function shape_str(t) return table.concat(t:shape(), ",") end

-- add noise to every parameter so that the checks do not run at a special point (W = I, D = 1)
local function perturb(mod, std)
  m2.no_grad(function()
    for _, p in ipairs(mod:parameters()) do
      p.tensor:copy_(p.tensor + m2.randn(p.tensor:shape(), { std = std, dtype = p.tensor:dtype() }))
    end
  end)
end

T.case("shapes and parameter lists", function()
  for _, L in ipairs(LAYERS) do
    local name, cls, cfg = L[1], L[2], L[3]
    local mod = cls(D, cfg)
    local x = m2.randn(2, 5, D)
    local y = mod(x)
    T.eq(y:shape(), { 2, 5, D }, name .. " output shape")
    T.eq(y:dtype(), "f32", name .. " dtype")
    local ok, msg = C.check_shapes(mod, m2.nn.param_shapes(cls, D, cfg))
    T.ok(ok, name .. ": " .. tostring(msg))
    -- the declaration also gives the order of model:parameters()
    local got, want = {}, {}
    for i, p in ipairs(mod:parameters()) do got[i] = p.name end
    for i, p in ipairs(m2.nn.param_shapes(cls, D, cfg)) do want[i] = p.name end
    T.eq(got, want, name .. ": parameter order")
    -- batch rows are independent: row 2 alone gives the same output as inside the batch
    local y2 = mod(x:narrow(1, 2, 1):contiguous())
    T.close(y2, y:narrow(1, 2, 1), 1e-5, name .. " batch independence")
  end
  -- check_shapes itself detects a wrong list
  local mod = M2RNN(D, { k = 3, v = 2, heads = 2 })
  local wrong = m2.nn.param_shapes(M2RNN, D, { k = 3, v = 2, heads = 4 })
  T.eq((C.check_shapes(mod, wrong)), false, "check_shapes must notice a different head count")
end)

T.case("declarations: one list builds the module and counts it", function()
  local nn = m2.nn
  -- a module declared with every kind of entry
  local Toy = nn.class("Toy")
  function Toy.params(d, with_bias)
    return {
      { "w", { d, 2 }, nn.init.normal(0.5), decay = true },
      with_bias and { "b", { d }, nn.init.zeros, decay = false },
      nn.child("norm", nn.RMSNorm, d),
      nn.child_list("layers", { nn.child(1, nn.Linear, d, 3), nn.child(2, nn.Linear, 3, d, { bias = false }) }),
      { "eye", { 2, 3, 3 }, C.init_eye, decay = true },
    }
  end
  function Toy:__init(d, with_bias) self:build(Toy.params(d, with_bias)) end
  for _, with_bias in ipairs { true, false } do
    local t = Toy(4, with_bias)
    local names, want = {}, {}
    for i, p in ipairs(t:parameters()) do names[i] = p.name end
    for i, p in ipairs(m2.nn.param_shapes(Toy, 4, with_bias)) do want[i] = p.name end
    T.eq(names, want, "order, bias " .. tostring(with_bias))
    T.ok((C.check_shapes(t, m2.nn.param_shapes(Toy, 4, with_bias))))
    T.eq(t.b ~= nil, with_bias)
    T.eq(t.layers[2].bias, nil)
  end
  T.eq(Toy(4, true).eye:totable()[2], { { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } }, "identity per head")
  -- the same seed gives the same values, drawn in the list's order
  m2.seed(5)
  local a = Toy(4, true)
  m2.seed(5)
  local w = m2.randn({ 4, 2 }, { std = 0.5 })
  T.close(a.w, w, 0, "the first entry draws first")
  -- bad entries are named
  local Bad = nn.class("Bad")
  function Bad:__init(e) self:build({ e }) end
  T.raises(function() Bad({ "w", { 2 }, nn.init.zeros }) end, "give decay = true or decay = false")
  T.raises(function() Bad({ "w", { 2 }, 3, decay = true }) end, "init must be a function")
  T.raises(function() Bad({ "a.w", { 2 }, nn.init.zeros, decay = true }) end, "declare a child instead")
  T.raises(function() m2.nn.param_shapes(Bad) end, "Bad declares no params")
  local Outer = nn.class("Outer")
  function Outer.params() return { nn.child("c", Bad) } end
  T.raises(function() m2.nn.param_shapes(Outer) end, "child 'c': its class declares no params")
end)

T.case("return_state gives the recurrent state", function()
  local m = M2RNN(D, { k = 3, v = 2, heads = 2 })
  local _, hT = m:forward(m2.randn(2, 5, D), { return_state = true })
  T.eq(hT:shape(), { 2, 2, 3, 2 })
  local g = GDN(D, { heads = 2, k = 3, v = 2 })
  _, hT = g:forward(m2.randn(2, 5, D), { return_state = true })
  T.eq(hT:shape(), { 2, 2, 3, 2 })
  local s = Mamba2(D, { heads = 2, head_dim = 2, state = 3 })
  _, hT = s:forward(m2.randn(2, 5, D), { return_state = true })
  T.eq(hT:shape(), { 2, 2, 2, 3 })
end)

T.case("causality: outputs before t do not depend on inputs at t", function()
  for _, L in ipairs(LAYERS) do
    local name, cls, cfg = L[1], L[2], L[3]
    local mod = cls(D, cfg)
    perturb(mod, 0.2)
    local x = m2.randn(1, 7, D)
    local y = mod(x)
    local x2 = x:clone()
    m2.no_grad(function() x2[1][5]:copy_(m2.randn(D)) end) -- change position 5
    local y2 = mod(x2)
    T.close(y2:narrow(2, 1, 4), y:narrow(2, 1, 4), 1e-6, name .. ": positions 1-4 unchanged")
    local diff = (y2:narrow(2, 5, 3) - y:narrow(2, 5, 3)):square():sum_all():item()
    T.ok(diff > 1e-10, name .. ": position 5 on changes (diff " .. diff .. ")")
  end
end)

T.case("paper inits (DESIGN 3.1)", function()
  local m = M2RNN(64, { k = 8, v = 4, heads = 64 }, { layers = 24 })
  -- W = identity per head
  local W = m.W:totable()
  local okW = true
  for n = 1, 64 do
    for i = 1, 4 do
      for j = 1, 4 do if W[n][i][j] ~= (i == j and 1 or 0) then okW = false end end
    end
  end
  T.ok(okW, "W is the identity in every head")
  T.eq(m.D:totable()[3], { 1, 1, 1, 1 }, "D = 1")
  -- A = exp(A_log) in (0, 16); softplus(dt_bias) = dt in [1e-3, 0.1]
  local A = m.A_log:exp():totable()
  local dt = m.dt_bias:softplus():totable()
  local okA, okdt = true, true
  for i = 1, 64 do
    if not (A[i] > 0 and A[i] < 16) then okA = false end
    if not (dt[i] >= 1e-3 * (1 - 1e-5) and dt[i] <= 0.1 * (1 + 1e-5)) then okdt = false end
  end
  T.ok(okA, "A in (0, 16)")
  T.ok(okdt, "softplus(dt_bias) in [1e-3, 0.1]")
  -- log-uniform dt: the median sits near sqrt(1e-3 * 0.1) = 0.01
  table.sort(dt)
  T.ok(dt[32] > 0.003 and dt[33] < 0.03, "dt median near 0.01, got " .. dt[32])
  -- projection std 0.02, out_proj 0.02 / sqrt(48)
  local function std(t) return t:square():mean_all():sqrt():item() end
  T.close(std(m.in_proj.weight), 0.02, { atol = 0.002, rtol = 0 }, "in_proj std")
  T.close(std(m.out_proj.weight), 0.02 / math.sqrt(48), { atol = 0.0005, rtol = 0 }, "out_proj std")
  -- no weight decay on D, A_log, dt_bias (and the norm); decay on W, conv and projections
  local nd = {}
  for _, p in ipairs(m:parameters()) do nd[p.name] = p.no_decay end
  T.eq(nd, { D = true, A_log = true, dt_bias = true, ["norm.weight"] = true, W = false, conv_weight = false,
             ["in_proj.weight"] = false, ["out_proj.weight"] = false })
  T.eq(m.in_proj.bias, nil, "in_proj has no bias")
end)

-- ---------------------------------------------------------------------------------------
-- the M2RNN layer in plain Lua (f64), straight from DESIGN 3.1
-- ---------------------------------------------------------------------------------------
local function silu(v) return v / (1 + math.exp(-v)) end
local function softplus(v) return v > 20 and v or math.log(1 + math.exp(v)) end

local function m2rnn_reference(mod, x)
  local c = mod.cfg
  local P = {}
  for _, p in ipairs(mod:parameters()) do P[p.name] = p.tensor:totable() end
  local X = x:totable()
  local B, Tn = #X, #X[1]
  local Win, Wout = P["in_proj.weight"], P["out_proj.weight"]
  local out = {}
  for b = 1, B do
    out[b] = {}
    -- in_proj
    local h = {}
    for t = 1, Tn do
      h[t] = {}
      for o = 1, c.C_in do
        local s = 0
        for i = 1, D do s = s + Win[o][i] * X[b][t][i] end
        h[t][o] = s
      end
    end
    -- causal conv + silu on the qkv channels
    local qkv = {}
    for t = 1, Tn do
      qkv[t] = {}
      for ch = 1, c.C_qkv do
        local s = 0
        for j = 1, c.conv do
          local tt = t - c.conv + j
          if tt >= 1 then s = s + P.conv_weight[ch][j] * h[tt][ch] end
        end
        qkv[t][ch] = silu(s)
      end
    end
    -- states per head
    local H = {}
    for n = 1, c.N do
      H[n] = {}
      for i = 1, c.k do
        H[n][i] = {}
        for j = 1, c.v do H[n][i][j] = 0 end
      end
    end
    for t = 1, Tn do
      local y = {}
      for n = 1, c.N do
        local function head(count, off, dim, idx)
          local hh = (n - 1) // (c.N // count)
          return qkv[t][off + hh * dim + idx]
        end
        local nf = (n - 1) // (c.N // c.Nf) + 1
        local fr = h[t][c.C_qkv + nf]
        local f = math.exp(-math.exp(P.A_log[nf]) * softplus(fr + P.dt_bias[nf]))
        local nw = (n - 1) // (c.N // c.Nw) + 1
        local Wn = P.W[nw]
        local Hn, Hnew = H[n], {}
        for i = 1, c.k do
          Hnew[i] = {}
          local kk = head(c.Nk, c.Nq * c.k, c.k, i)
          for j = 1, c.v do
            local s = 0
            for l = 1, c.v do s = s + Hn[i][l] * Wn[l][j] end
            local vv = head(c.Nv, c.Nq * c.k + c.Nk * c.k, c.v, j)
            local z = math.tanh(s + kk * vv)
            Hnew[i][j] = f * Hn[i][j] + (1 - f) * z
          end
        end
        H[n] = Hnew
        for j = 1, c.v do
          local s = 0
          for i = 1, c.k do s = s + head(c.Nq, 0, c.k, i) * Hnew[i][j] end
          local vv = head(c.Nv, c.Nq * c.k + c.Nk * c.k, c.v, j)
          s = s + P.D[n][j] * vv
          local ng = (n - 1) // (c.N // c.Ng)
          local g = h[t][c.C_qkv + c.Nf + ng * c.v + j]
          y[(n - 1) * c.v + j] = s * silu(g)
        end
      end
      -- RMSNorm over N V, out_proj
      local ms = 0
      for _, v in ipairs(y) do ms = ms + v * v end
      local r = 1 / math.sqrt(ms / #y + c.norm_eps)
      out[b][t] = {}
      for o = 1, D do
        local s = 0
        for i = 1, #y do s = s + Wout[o][i] * y[i] * r * P["norm.weight"][i] end
        out[b][t][o] = s
      end
    end
  end
  return out
end

T.case("M2RNN layer matches a plain-Lua reference", function()
  for _, cfg in ipairs { { k = 3, v = 2, heads = 2 }, { k = 3, v = 2, heads = 4, v_heads = 2, g_heads = 2, w_heads = 1,
                                                        f_heads = 2, q_heads = 2 } } do
    local mod = M2RNN(D, cfg):double()
    perturb(mod, 0.3)
    local x = m2.randn({ 2, 5, D }, { dtype = "f64" })
    T.close(mod(x), m2rnn_reference(mod, x), 1e-10, "heads " .. cfg.heads)
  end
end)

T.case("gradcheck of every layer (f64)", function()
  for _, L in ipairs(LAYERS) do
    local name, cls, cfg = L[1], L[2], L[3]
    local c = {}
    for k, v in pairs(cfg) do c[k] = v end
    if cls == M2RNN then c.grad_clip = 0 end -- clipping changes the gradient on purpose
    local mod = cls(D, c):double()
    perturb(mod, 0.2)
    local x = m2.randn({ 2, 4, D }, { dtype = "f64", requires_grad = true })
    local inputs = { x }
    for _, p in ipairs(mod:parameters()) do inputs[#inputs + 1] = p.tensor end
    local ok, err, msg = m2.gradcheck(function() return mod(x) end, inputs)
    T.ok(ok, name .. ": " .. tostring(msg) .. " (max err " .. tostring(err) .. ")")
  end
  -- with the default grad_clip = 1 a layer still trains: every parameter gets a gradient
  local mod = M2RNN(D, { k = 3, v = 2, heads = 2 })
  mod(m2.randn(2, 4, D)):square():sum_all():backward()
  local missing = {}
  for _, p in ipairs(mod:parameters()) do
    if not p.tensor.grad then missing[#missing + 1] = p.name end
  end
  T.eq(missing, {}, "parameters without a gradient")
end)

T.case("errors name the problem and the script line", function()
  local line = debug.getinfo(1, "l").currentline
  local err = T.raises(function() M2RNN(D, { k = 0, v = 2 }) end, "k %(key dim K%) must be a positive integer")
  T.ok(err and err:find("test_layers.lua:" .. (line + 1), 1, true), "located at the test line: " .. tostring(err))
  T.raises(function() M2RNN(D, { k = 2, v = 0 }) end, "v (value dim V) must be a positive integer")
  T.raises(function() M2RNN(D, { k = 2, v = 2, heads = 6, v_heads = 4 }) end, "v_heads = 4 does not divide")
  T.raises(function() M2RNN(D, { k = 2, v = 2, heads = 4, q_heads = 3 }) end, "q_heads = 3 does not divide")
  T.raises(function() M2RNN(D, { k = 2, v = 2, kk = 1 }) end, "unknown setting 'kk'")
  T.raises(function() M2RNN(D, { k = 2, v = 2, ckpt = 0 }) end, "ckpt %(steps between kept states%) must be a positive")
  T.raises(function() M2RNN(D, { k = 2, v = 2, ckpt = 12 }) end, "ckpt = 12 is not a multiple of 8")
  T.raises(function() GDN(D, { heads = 0 }) end, "heads must be a positive integer")
  T.raises(function() Mamba2(D, { heads = 3, inner = 8 }) end, "heads = 3 does not divide inner = 8")
  T.raises(function() Mamba2(D, { heads = 4, groups = 3 }) end, "groups = 3 does not divide heads = 4")
  T.raises(function() Attention(D, { heads = 4, kv_heads = 3 }) end, "kv_heads = 3 does not divide heads = 4")
  T.raises(function() MoE(D, { experts = 2, top_k = 3 }) end, "top_k = 3 is larger than experts = 2")
  -- MoE counts without building: router + experts + shared expert
  local n = 0
  for _, s in ipairs(m2.nn.param_shapes(MoE, 8, { experts = 4, top_k = 2, expert_hidden = 3, shared_hidden = 5 })) do
    n = n + C.numel(s.shape)
  end
  T.eq(n, 4 * 8 + 4 * 3 * 8 * 3 + 3 * 8 * 5)
  T.eq(MoE.active_params(8, { experts = 4, top_k = 2, expert_hidden = 3, shared_hidden = 5 }),
    4 * 8 + 2 * 3 * 8 * 3 + 3 * 8 * 5)
end)

T.case("no leaks", function()
  collectgarbage()
  collectgarbage()
  T.ok(m2.live_nodes() == 0, "live nodes " .. m2.live_nodes())
end)
