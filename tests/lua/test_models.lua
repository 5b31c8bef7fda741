-- test_models.lua — m2.models.lm: pattern parsing, block structure, parameter counting without
-- allocation (against the allocated model and against hand counts), the paper's configs
-- (patterns and sizes of DESIGN section 4), errors located at the script line, gradients.
local m2 = require "m2"
local T = m2.test
local C = require "m2.layers.common"

m2.seed(7)

local SMALL = { vocab = 11, d = 16, layers = "MGSA", m2rnn = { k = 4, v = 2, heads = 2 },
                gdn = { heads = 2, k = 4, v = 4 }, mamba2 = { heads = 2, head_dim = 4, state = 4 },
                attention = { heads = 2, head_dim = 8 }, mlp = { kind = "swiglu", hidden = 24 } }

T.case("lm: forward shapes, blocks, loss and gradients", function()
  local model = m2.models.lm(SMALL)
  T.eq(#model.blocks, 4)
  local names = {}
  for i, b in ipairs(model.blocks) do names[i] = getmetatable(b.mixer).__name end
  T.eq(names, { "M2RNN", "GatedDeltaNet", "Mamba2", "Attention" })
  local ids = m2.randint(11, 2, 7)
  local logits = model(ids)
  T.eq(logits:shape(), { 2, 7, 11 })
  T.eq(rawget(model, "spec").fused_loss, true, "the fused loss is the default")
  rawget(model, "spec").fused_loss = false -- the loss from the full logits first
  local loss = model:loss(ids, ids)
  T.ok(math.abs(loss:item() - math.log(11)) < 0.5, "initial loss near log(vocab): " .. loss:item())
  loss:backward()
  -- fused_loss: the same loss and gradients without the full logits (the same weights: spec.fused_loss only
  -- changes LM:loss)
  do
    local grads = {}
    for _, p in ipairs(model:parameters()) do grads[p.name] = p.tensor.grad:clone(); p.tensor:zero_grad() end
    rawget(model, "spec").fused_loss = true
    local fl = model:loss(ids, ids)
    T.close(fl:item(), loss:item(), 1e-6, "fused loss")
    fl:backward()
    local worst = 0
    for _, p in ipairs(model:parameters()) do
      local d = m2.max_all(m2.square(p.tensor.grad - grads[p.name])):item()
      worst = math.max(worst, d)
    end
    T.ok(worst < 1e-12, "fused loss: same gradients (max square diff " .. worst .. ")")
    -- loss_chunk: 3 rows of logits at a time (14 rows: 5 chunks, the last short), the same loss
    rawget(model, "spec").loss_chunk = 3
    T.close(m2.no_grad(function() return model:loss(ids, ids):item() end), loss:item(), 1e-6, "fused loss in chunks")
    rawget(model, "spec").loss_chunk = 0
    rawget(model, "spec").fused_loss = false
    for _, p in ipairs(model:parameters()) do p.tensor:zero_grad() end
    loss = model:loss(ids, ids)
    loss:backward()
  end
  local missing = {}
  for _, p in ipairs(model:parameters()) do if not p.tensor.grad then missing[#missing + 1] = p.name end end
  T.eq(missing, {}, "every parameter gets a gradient")
  -- pre-norm residual blocks: with every mixer and MLP output projection zeroed, the model is
  -- embedding -> final norm -> head
  m2.no_grad(function()
    for _, b in ipairs(model.blocks) do
      local out = b.mixer.out_proj or b.mixer.o_proj
      out.weight:fill_(0)
      b.mlp.down.weight:fill_(0)
    end
  end)
  local want = m2.linear(m2.rmsnorm(m2.embedding(model.embed.weight, ids), model.norm.weight, 1e-5),
    model.lm_head.weight)
  T.close(model(ids), want, 1e-5, "residual structure")
end)

T.case("param_shapes / count without allocating", function()
  local model = m2.models.lm(SMALL)
  local ok, msg = C.check_shapes(model, m2.models.param_shapes(SMALL))
  T.ok(ok, msg)
  -- one declaration (LM.params) drives both: the same names in the same order
  local got, want = {}, {}
  for i, p in ipairs(model:parameters()) do got[i] = p.name end
  for i, p in ipairs(m2.models.param_shapes(SMALL)) do want[i] = p.name end
  T.eq(got, want, "parameter order")
  local c = m2.models.summary(SMALL, { quiet = true })
  T.eq(c.total, model:param_count())
  T.eq(m2.models.param_count(SMALL), model:param_count())
  -- a hand count of the M2RNN block: in_proj 16 x (4 + 4 + 2*2 + 2 + 2*2), conv (12, 4), W (2, 2, 2),
  -- A_log 2, dt_bias 2, D (2, 2), norm 4, out_proj 4 x 16
  local m2rnn = 16 * 18 + 12 * 4 + 8 + 2 + 2 + 4 + 4 + 4 * 16
  T.eq(c.layers[1].mixer, m2rnn)
  T.eq(c.layers[1].mlp, 3 * 16 * 24)
  T.eq(c.layers[1].state, 2 * 4 * 2)
  T.eq(c.layers[4].state, 0)
  T.eq(c.embedding, 11 * 16)
  -- tied: no lm_head
  local tied = {}
  for k, v in pairs(SMALL) do tied[k] = v end
  tied.tie = true
  local mt = m2.models.lm(tied)
  T.eq(mt:param_count(), model:param_count() - 11 * 16)
  T.eq(mt(m2.randint(11, 1, 3)):shape(), { 1, 3, 11 })
  -- mlp none: no norm2, no mlp
  local nomlp = { vocab = 5, d = 8, layers = "MM", m2rnn = { k = 2, v = 2, heads = 1 }, mlp = { kind = "none" } }
  local mn = m2.models.lm(nomlp)
  T.eq(mn.blocks[1].mlp, nil)
  T.ok((C.check_shapes(mn, m2.models.param_shapes(nomlp))))
end)

T.case("the paper's configs (DESIGN section 4)", function()
  local want = {
    ["400m-m2rnn"] = string.rep("M", 24),
    ["400m-gdn"] = string.rep("G", 24),
    ["400m-mamba2"] = string.rep("S", 24),
    ["400m-attention"] = string.rep("A", 24),
    ["400m-hybrid-m2rnn"] = "MMMMAMMMMMMMAMMMMMMMAMMM",
    ["400m-hybrid-gdn"] = "GGGGAGGGGGGGAGGGGGGGAGGG",
    ["400m-hybrid-mamba2"] = "SSSSASSSSSSSASSSSSSSASSS",
    ["400m-gdn+m2rnn-1l"] = "MGGGAGGGGGGGAGGGGGGGAGGG",
    ["400m-gdn+m2rnn-3l"] = "GGGMAGGGGGGMAGGGGGGMAGGG",
    ["7b-hybrid-m2rnn"] = "MMMMAMMMMMMMAMMMMMMMAMMMMMMMAMMMMMMMAMMM",
    ["7b-hybrid-gdn"] = "GGGGAGGGGGGGAGGGGGGGAGGGGGGGAGGGGGGGAGGG",
    ["7b-gdn+m2rnn-1l"] = "MGGGAGGGGGGGAGGGGGGGAGGGGGGGAGGGGGGGAGGG",
    ["7b-gdn+m2rnn-5l"] = "GGGMAGGGGGGMAGGGGGGMAGGGGGGMAGGGGGGMAGGG",
  }
  for name, pattern in pairs(want) do
    local spec = m2.models.load(name)
    T.eq(spec.layers, pattern, name)
    T.eq(spec.name, name)
    local c = m2.models.summary(spec, { quiet = true })
    local no_head = c.total - c.lm_head
    if name:match("^400m") then
      -- ~0.41B with one embedding table, ~0.51B with both
      T.ok(no_head > 0.40e9 and no_head < 0.42e9, name .. " one table: " .. no_head)
      T.ok(c.total > 0.50e9 and c.total < 0.52e9, name .. " total: " .. c.total)
    else
      -- ~6.9B total, ~1.3B active (both tables)
      T.ok(c.total > 6.8e9 and c.total < 7.0e9, name .. " total: " .. c.total)
      T.ok(c.active > 1.2e9 and c.active < 1.35e9, name .. " active: " .. c.active)
    end
  end
  -- recurrent state per layer (DESIGN 4)
  local c = m2.models.summary(m2.models.load("400m-hybrid-m2rnn"), { quiet = true })
  T.eq(c.layers[1].state, 86016)
  c = m2.models.summary(m2.models.load("400m-hybrid-gdn"), { quiet = true })
  T.eq(c.layers[1].state, 262144)
  c = m2.models.summary(m2.models.load("7b-hybrid-m2rnn"), { quiet = true })
  T.eq(c.layers[1].state, 135168)
  c = m2.models.summary(m2.models.load("7b-hybrid-gdn"), { quiet = true })
  T.eq(c.layers[1].state, 393216)
  -- RoPE only in the pure-attention baseline
  T.eq(m2.models.load("400m-attention").attention.rope, true)
  T.eq(m2.models.load("400m-hybrid-m2rnn").attention.rope, false)
  -- (the MoE models build: tests/lua/test_moe.lua builds a 7B config cut to two layers of reduced width)
end)

T.case("summary prints a table", function()
  local path = T.write_temp([[
local m2 = require "m2"
m2.models.summary(m2.models.load("400m-gdn+m2rnn-3l"))
]])
  local code, out = T.run_m2lab("run " .. path)
  os.remove(path)
  T.eq(code, 0, out)
  T.ok(out:find("GGGMAGGGGGGMAGGGGGGMAGGG", 1, true) ~= nil, out)
  T.ok(out:find("M2RNN", 1, true) ~= nil and out:find("86016", 1, true) ~= nil, out)
  T.ok(out:find("without the LM head 407", 1, true) ~= nil, out)
end)

T.case("positional encoding: RoPE by default in pure attention, NoPE in hybrids; the summary says which", function()
  local function spec(layers, attention, init_std)
    return { vocab = 13, d = 16, layers = layers, m2rnn = { k = 4, v = 2, heads = 2 },
             attention = attention or { heads = 2, head_dim = 8 }, mlp = { kind = "none" }, init_std = init_std }
  end
  local function ropes(model)
    local out = {}
    for _, b in ipairs(model.blocks) do
      if b.kind == "A" then out[#out + 1] = b.mixer.cfg.rope end
    end
    return out
  end
  T.eq(ropes(m2.models.lm(spec("AA"))), { true, true }, "pure attention: RoPE")
  T.eq(ropes(m2.models.lm(spec("MAM"))), { false }, "hybrid: NoPE (DESIGN 3.4)")
  T.eq(ropes(m2.models.lm(spec("AA", { heads = 2, head_dim = 8, rope = false }))), { false, false },
    "rope = false kept")
  T.eq(ropes(m2.models.lm(spec("MA", { heads = 2, head_dim = 8, rope = true }))), { true }, "rope = true kept")
  local user = { heads = 2, head_dim = 8 }
  m2.models.lm(spec("A", user))
  T.eq(user.rope, nil, "the caller's settings table is not modified")
  -- behaviour: one causal attention layer without positions gives the last position the same output whatever the
  -- order of the tokens before it; the default pure-attention model must not
  local ids = m2.randint(13, 1, 6)
  if ids:get(1, 1) == ids:get(1, 2) then ids:set((ids:get(1, 1) + 1) % 13, 1, 2) end
  local swapped = ids:clone()
  swapped:set(ids:get(1, 2), 1, 1)
  swapped:set(ids:get(1, 1), 1, 2)
  local function last_diff(model)
    return m2.no_grad(function()
      local a, b = model(ids), model(swapped)
      return m2.max_all(m2.square(a:narrow(2, 6, 1) - b:narrow(2, 6, 1))):item()
    end)
  end
  -- (init_std 0.5: attention far from uniform, so that order shows clearly in the logits)
  local nope = last_diff(m2.models.lm(spec("A", { heads = 2, head_dim = 8, rope = false }, 0.5)))
  T.ok(nope < 1e-10, "NoPE: order-blind at the last position (the check itself works): " .. nope)
  local d = last_diff(m2.models.lm(spec("A", nil, 0.5)))
  T.ok(d > 1e-6, "the default pure-attention model sees token order: max square diff " .. d)
  -- the summary: its count and its printed text
  T.eq(m2.models.summary(spec("AA"), { quiet = true }).pos_encoding, "RoPE (theta 10000)")
  T.eq(m2.models.summary(spec("MAM"), { quiet = true }).pos_encoding, "NoPE")
  local printed = {}
  local real = io.stdout
  io.stdout = { write = function(self, ...) for _, x in ipairs { ... } do printed[#printed + 1] = x end return self end,
                flush = function() end }
  local ok, err = pcall(function()
    m2.models.summary(m2.models.lm(spec("AA")))
    m2.models.summary(spec("MAM"))
    m2.models.summary(spec("MM"))
  end)
  io.stdout = real
  T.ok(ok, err)
  local text = table.concat(printed)
  T.ok(text:find("positional encoding: RoPE (theta 10000) in the attention layers", 1, true), text)
  T.ok(text:find("positional encoding: NoPE in the attention layers", 1, true), text)
  T.ok(text:find("positional encoding: none (recurrent mixers only)", 1, true), text)
end)

T.case("errors are located at the script line", function()
  local line = debug.getinfo(1, "l").currentline
  local err = T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "MXM" } end,
    "unknown layer letter 'X' at position 2")
  T.ok(err and err:find("test_models.lua:" .. (line + 1), 1, true), tostring(err))
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "" } end, "layers must be a non-empty pattern")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", loss_chunk = -2 } end,
    "loss_chunk must be an integer >= 0")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", m2rnn = { k = 0 } } end,
    "k (key dim K) must be a positive integer")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", m2rnn = { v = 0 } } end,
    "v (value dim V) must be a positive integer")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", m2rnn = { heads = 6, f_heads = 4 } } end,
    "f_heads = 4 does not divide the head count N = 6")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "A", attention = { heads = 4, kv_heads = 3 } } end,
    "kv_heads = 3 does not divide heads = 4")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", mlp = { kind = "glu" } } end,
    "mlp.kind must be")
  T.raises(function() m2.models.lm { vocab = 5, d = 8, layers = "M", lyers = 2 } end, "unknown setting 'lyers'")
  T.raises(function() m2.models.lm { vocab = 0, d = 8, layers = "M" } end, "vocab must be a positive integer")
  -- a mixer kind that the pattern does not use is not validated (configs carry all kinds)
  T.ok(pcall(m2.models.summary, { vocab = 5, d = 8, layers = "M", gdn = { heads = 0 } }, { quiet = true }))
  -- the error of a script that builds a bad model names the script's line, through the host
  local path = T.write_temp("local m2 = require 'm2'\n\nm2.models.lm{ vocab = 5, d = 8, layers = 'MQ' }\n")
  local code, out = T.run_m2lab("run " .. path)
  os.remove(path)
  T.ok(code ~= 0, "a failing script exits non-zero")
  T.ok(out:find(path:match("[^/]+$") .. ":3:", 1, true) ~= nil and out:find("unknown layer letter 'Q'", 1, true) ~= nil, out)
end)

T.case("no leaks", function()
  collectgarbage()
  collectgarbage()
  T.ok(m2.live_nodes() == 0, "live nodes " .. m2.live_nodes())
end)
