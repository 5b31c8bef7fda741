-- test_generate.lua — generation with recurrent state (DESIGN 9, lua/m2/generate.lua): the step form of every mixer
-- gives the full-sequence forward's logits (one token at a time, after prefills of 1, 2 and 5 tokens, and in chunks;
-- f64 to 1e-10 and f32 to 1e-5 relative) for m2rnn, gdn, mamba2 (recurrent and chunked), attention (NoPE, RoPE, fewer
-- kv heads) and hybrids; model:generate against the O(T^2) way (the whole sequence re-run for every token);
-- determinism by seed and across batch sizes; no leaks; the sampler's filters through Lua; every bad input;
-- `m2lab generate` on a run file written by m2.train.
local m2 = require "m2"
local T = m2.test
local runs = m2.runs

local SETTINGS = {
  m2rnn = { heads = 4, k = 8, v = 4, q_heads = 1, k_heads = 2 },
  gdn = { heads = 2, k = 8, v = 8 },
  mamba2 = { heads = 4, state = 8 },
  attention = { heads = 4, head_dim = 8, kv_heads = 2 },
}

local function build(layers, extra, dtype)
  local spec = { vocab = 23, d = 32, layers = layers, mlp = { hidden = 64 }, init_std = 0.2 }
  for k, v in pairs(SETTINGS) do spec[k] = v end
  for k, v in pairs(extra or {}) do spec[k] = v end
  local model = m2.models.lm(spec)
  if dtype == "f64" then model:double() end
  return model
end

-- max |a - b| / max |b|
local function rel(a, b)
  local d = m2.max_all(m2.sqrt((a - b) * (a - b))):item()
  return d / math.max(m2.max_all(m2.sqrt(b * b)):item(), 1e-30)
end

-- step through ids (B, T) in pieces of the given lengths; -> the worst relative difference to the full forward
local function decode_worst(model, ids, pieces)
  return m2.no_grad(function()
    local full = model(ids)
    local cache, t, worst = {}, 1, 0
    for _, n in ipairs(pieces) do
      local l = model:step(ids:narrow(2, t, n), cache)
      worst = math.max(worst, rel(l, full:narrow(2, t, n)))
      t = t + n
    end
    return worst, cache
  end)
end

local CASES = {
  { "m2rnn", "M" }, { "gdn", "G" }, { "mamba2", "S" }, { "attention (NoPE)", "A" },
  { "attention (RoPE)", "A", { attention = { heads = 4, head_dim = 8, kv_heads = 2, rope = true } } },
  { "gdn chunked", "G", { gdn = { heads = 2, k = 8, v = 8, chunked = true, chunk = 4 } } },
  { "mamba2 chunked", "S", { mamba2 = { heads = 4, state = 8, chunked = true, chunk = 4 } } },
  { "m2rnn conv 2, gdn without conv", "MG", { m2rnn = { heads = 2, k = 4, v = 4, conv = 2 },
                                             gdn = { heads = 2, k = 8, v = 8, conv = 0 } } },
  { "hybrid MAGS", "MAGS" }, { "hybrid-m2rnn pattern MMAM, tied", "MMAM", { tie = true } },
}

T.case("decoding one token at a time gives the full forward's logits (every mixer, f64 and f32)", function()
  m2.seed(11)
  local B, L = 2, 13
  for _, c in ipairs(CASES) do
    for _, dtype in ipairs { "f64", "f32" } do
      local model = build(c[2], c[3], dtype)
      local ids = m2.randint(23, B, L)
      local tol = dtype == "f64" and 1e-10 or 1e-5
      for _, prefill in ipairs { 1, 2, 5 } do
        local pieces = { prefill }
        for _ = prefill + 1, L do pieces[#pieces + 1] = 1 end
        local worst = decode_worst(model, ids, pieces)
        T.ok(worst <= tol, string.format("%s %s, prefill %d then one at a time: relative difference %.3g > %g", c[1],
          dtype, prefill, worst, tol))
      end
      -- pieces of several tokens (the conv window spans pieces shorter than it)
      local worst = decode_worst(model, ids, { 3, 1, 2, 4, 3 })
      T.ok(worst <= tol, string.format("%s %s in pieces 3,1,2,4,3: %.3g > %g", c[1], dtype, worst, tol))
    end
  end
end)

T.case("the cache: constant size for the recurrent mixers, a growing KV cache for attention", function()
  local model = build("MGSA")
  local ids = m2.randint(23, 2, 9)
  local _, cache = decode_worst(model, ids, { 4 })
  local sizes = {}
  for i = 1, 4 do
    sizes[i] = {}
    for k, t in pairs(cache[i]) do if m2.is_tensor(t) then sizes[i][k] = t:shape() end end
  end
  m2.no_grad(function() for t = 5, 9 do model:step(ids:narrow(2, t, 1), cache) end end)
  -- M2RNN: conv window (B, 3, C_qkv) and state (B, N, K, V); GDN: three windows and (B, H, K, V); Mamba-2: window
  -- and (B, H, P, N); their shapes do not change with the positions seen
  T.eq(sizes[1].state, { 2, 4, 8, 4 })
  T.eq(sizes[1].conv, { 2, 3, 1 * 8 + 2 * 8 + 4 * 4 })
  T.eq(sizes[2].state, { 2, 2, 8, 8 })
  T.eq(sizes[3].state, { 2, 4, 16, 8 })
  for i = 1, 3 do
    for k, t in pairs(cache[i]) do
      if m2.is_tensor(t) then T.eq(t:shape(), sizes[i][k], "block " .. i .. " " .. k) end
    end
  end
  T.eq(sizes[4].k, { 2, 4, 2, 8 })
  T.eq(cache[4].k:shape(), { 2, 9, 2, 8 }, "the KV cache holds every position")
  T.eq(cache[4].pos, 9)
  T.eq(cache.pos, 9)
end)

-- the O(T^2) reference: re-run the whole sequence for every token, draw from its last logits with m2.sample
local function naive_generate(model, prompt, o)
  local seq = {}
  for i, v in ipairs(prompt) do seq[i] = v end
  local out = {}
  m2.no_grad(function()
    for i = 1, o.max_tokens do
      local logits = model(m2.tensor({ seq }, { dtype = "i64" }))
      local last = logits:narrow(2, #seq, 1):reshape(1, model.spec.vocab)
      local id = m2.sample(last, { temperature = o.temperature, top_k = o.top_k, top_p = o.top_p, seed = o.seed,
                                   offset = #seq }):totable()[1]
      out[i] = id
      seq[#seq + 1] = id
    end
  end)
  return out
end

T.case("model:generate equals re-running the whole sequence for every token", function()
  m2.seed(12)
  for _, layers in ipairs { "M", "G", "S", "A", "MAGS" } do
    local model = build(layers, { attention = { heads = 4, head_dim = 8, rope = true } }, "f64")
    local prompt = m2.randint(23, 6):totable()
    for _, o in ipairs {
      { max_tokens = 12, temperature = 0, top_k = 0, top_p = 1, seed = 0 },
      { max_tokens = 12, temperature = 1.0, top_k = 0, top_p = 1, seed = 5 },
      { max_tokens = 12, temperature = 0.8, top_k = 5, top_p = 0.9, seed = 6 },
    } do
      local got, stats = model:generate(prompt, o)
      T.eq(got, naive_generate(model, prompt, o), layers .. " temperature " .. o.temperature)
      T.eq(stats.new_tokens, 12)
      T.eq(stats.prompt_tokens, 6)
      T.ok(stats.tokens_per_s > 0 and stats.prefill_s >= 0)
    end
  end
end)

T.case("sampling is deterministic by seed, and the same at any batch size", function()
  m2.seed(13)
  local model = build("MA")
  local p1, p2 = m2.randint(23, 5):totable(), m2.randint(23, 5):totable()
  local o = { max_tokens = 20, temperature = 1.0, seed = 42 }
  local a, b = model:generate(p1, o), model:generate(p1, o)
  T.eq(a, b, "the same seed gives the same tokens")
  o.seed = 43
  local c = model:generate(p1, o)
  local differ = 0
  for i = 1, 20 do differ = differ + (a[i] ~= c[i] and 1 or 0) end
  T.ok(differ > 5, "another seed gives other tokens (" .. differ .. " of 20 differ)")
  -- a (B, T) prompt: each row as if alone (its own Philox stream, its position as the counter)
  o.seed = 42
  local rows = model:generate(m2.tensor({ p1, p2 }, { dtype = "i64" }), o)
  T.eq(#rows, 2)
  T.eq(rows[1], a, "row 1 of a batch = the same prompt alone")
  o.seed = 42
  local alone2 = model:generate(p2, o)
  local rows2 = model:generate(m2.tensor({ p2, p1 }, { dtype = "i64" }), o)
  T.ok(#rows2[1] == 20 and #alone2 == 20)
  -- on_token sees every token in order; stop ends a row without returning the stop id
  local seen = {}
  model:generate(p1, { max_tokens = 20, temperature = 1.0, seed = 42, on_token = function(id, i) seen[i] = id end })
  T.eq(seen, a)
  local stop = a[4]
  local first = 1
  while a[first] ~= stop do first = first + 1 end
  local cut = model:generate(p1, { max_tokens = 20, temperature = 1.0, seed = 42, stop = stop })
  T.eq(#cut, first - 1, "stops at the first stop token")
  for i = 1, first - 1 do T.eq(cut[i], a[i]) end
end)

T.case("generate leaves no tensor and no tape node behind", function()
  local model = build("MGSA")
  collectgarbage()
  collectgarbage()
  local before = m2.live_tensors()
  for _ = 1, 3 do model:generate({ 1, 2, 3 }, { max_tokens = 10, top_p = 0.9 }) end
  collectgarbage()
  collectgarbage()
  T.eq(m2.live_tensors(), before)
  T.eq(m2.live_nodes(), 0)
end)

T.case("top-k and top-p on a hand-made distribution (m2.sample_probs, m2.sample)", function()
  local p = { 0.05, 0.5, 0.15, 0.2, 0.1 }
  local logits = {}
  for i, v in ipairs(p) do logits[i] = math.log(v) end
  local x = m2.tensor({ logits }, { dtype = "f64" })
  T.close(m2.sample_probs(x):totable()[1], p, 1e-12)
  T.close(m2.sample_probs(x, { top_k = 2 }):totable()[1], { 0, 0.5 / 0.7, 0, 0.2 / 0.7, 0 }, 1e-12)
  T.close(m2.sample_probs(x, { top_p = 0.8 }):totable()[1], { 0, 0.5 / 0.85, 0.15 / 0.85, 0.2 / 0.85, 0 }, 1e-12)
  T.close(m2.sample_probs(x, { top_k = 3, top_p = 0.8 }):totable()[1], { 0, 0.5 / 0.7, 0, 0.2 / 0.7, 0 }, 1e-12)
  T.eq(m2.sample_probs(x, { temperature = 0 }):totable()[1], { 0, 1, 0, 0, 0 })
  -- draws: only kept ids, frequencies near the renormalised probabilities
  local count, N = { 0, 0, 0, 0, 0 }, 4000
  for i = 0, N - 1 do
    local id = m2.sample(x, { top_k = 3, seed = 9, offset = i }):totable()[1]
    count[id + 1] = count[id + 1] + 1
  end
  T.eq({ count[1], count[5] }, { 0, 0 }, "ids outside the top 3 are never drawn")
  for i, want in pairs { [2] = 0.5 / 0.85, [3] = 0.15 / 0.85, [4] = 0.2 / 0.85 } do
    local sd = math.sqrt(want * (1 - want) / N)
    T.ok(math.abs(count[i] / N - want) < 5 * sd, string.format("id %d: %.3f, want %.3f", i - 1, count[i] / N, want))
  end
  T.eq(m2.sample(x, { seed = 3, offset = 7 }):totable(), m2.sample(x, { seed = 3, offset = 7 }):totable())
  T.raises(function() m2.sample(x, { topk = 3 }) end, "sample: unknown option 'topk'")
  T.raises(function() m2.sample(x, { top_p = 0 }) end, "top_p must be in %(0, 1%]")
  T.raises(function() m2.sample(x, { temperature = -1 }) end, "temperature must be a finite number >= 0")
  T.raises(function() m2.sample(m2.tensor({ 0 / 0, 1 }), {}) end, "token 0 is NaN")
end)

T.case("bad input: a clear error", function()
  local model = build("MA", { context = 16 })
  T.raises(function() m2.models.lm { vocab = 4, d = 8, layers = "M", context = 0 } end, "context")
  T.raises(function() model:generate(m2.randint(23, 17):totable(), { max_tokens = 1 }) end,
    "the prompt has 17 tokens, longer than the model supports %(context = 16")
  T.raises(function() model:generate({ 1, 2, 3, 4, 5, 6 }, { max_tokens = 11 }) end,
    "plus max_tokens %(11%) is 17 tokens, longer than the model supports %(context = 16%): at most max_tokens = 10 fit")
  T.eq(#model:generate({ 1, 2, 3, 4, 5, 6 }, { max_tokens = 10 }), 10, "exactly the context fits")
  T.raises(function() model:generate({}, {}) end, "the prompt is empty")
  T.raises(function() model:generate({ 1, 23 }, {}) end,
    "prompt token 2 is 23, outside the model's vocabulary %[0, 23%)")
  T.raises(function() model:generate({ 1, -1 }, {}) end, "outside the model's vocabulary")
  T.raises(function() model:generate({ 1, 2.5 }, {}) end, "prompt token 2 is 2.5, not an integer id")
  T.raises(function() model:generate("hello", {}) end, "text goes through a tokenizer first")
  T.raises(function() model:generate(m2.tensor({ { 1, 40 } }, { dtype = "i64" }), {}) end, "token 2 of row 1 is 40")
  T.raises(function() model:generate(m2.tensor({ 1.0, 2.0 }), {}) end, "integer token ids, got a tensor of f32")
  T.raises(function() model:generate({ { 1, 2 }, { 3 } }, {}) end, "row 2 has 1 tokens, row 1 has 2")
  T.raises(function() model:generate({ { 1, 2 }, 3 }, {}) end, "row 2 has no list but a number")
  local rows = model:generate({ { 1, 2 }, { 3, 4 } }, { max_tokens = 3, seed = 1 })
  T.eq(rows, model:generate(m2.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "i64" }), { max_tokens = 3, seed = 1 }),
    "B lists of ids are a batch, as a (B, T) tensor is")
  T.raises(function() model:generate({ 1 }, { max_token = 3 }) end, "unknown option 'max_token'")
  T.raises(function() model:generate({ 1 }, { max_tokens = 0 }) end, "max_tokens must be an integer >= 1")
  T.raises(function() model:generate({ 1 }, { top_p = 2 }) end, "top_p must be in (0, 1]")
  T.raises(function() model:generate({ 1 }, { temperature = -0.5 }) end, "temperature must be a finite number >= 0")
  T.raises(function() model:generate({ 1 }, { top_k = -1 }) end, "top_k must be an integer >= 0")
  T.raises(function() model:generate({ 1 }, { stop = "x" }) end, "stop must be a token id")
  T.raises(function() model:step(m2.randint(23, 1, 2), nil) end, "expected a cache table")
end)

T.case("m2lab generate: a run file from m2.train, text in and out (byte vocabulary)", function()
  local dir = os.tmpname()
  os.remove(dir)
  m2.core.mkdir_p(dir)
  local out = dir .. "/lm.h5"
  m2.seed(3)
  local model = m2.models.lm { vocab = 256, d = 16, layers = "MA", m2rnn = { heads = 2, k = 4, v = 4 },
                               attention = { heads = 2, head_dim = 8 }, mlp = { hidden = 32 } }
  local text = "the quick brown fox jumps over the lazy dog. "
  local data = { batch = function(_, i)
    local x, y = {}, {}
    for t = 1, 16 do
      local a = (i * 7 + t) % #text
      x[t], y[t] = text:byte(a + 1), text:byte((a + 1) % #text + 1)
    end
    return m2.tensor({ x }, { dtype = "i64" }), m2.tensor({ y }, { dtype = "i64" })
  end }
  m2.train { model = model, data = data, steps = 6, checkpoint_every = 3, out = out, quiet = true,
             optim = { kind = "adamw", lr = 1e-2 } }
  local r <close> = runs.open(out)
  T.ok(r:get_attr("model_spec_json") ~= nil, "m2.train records the model's spec")
  -- the loader rebuilds the model: same parameters as the trained one, at the last and at an earlier checkpoint
  local g = require "m2.generate"
  local loaded, info = g.load_model(out)
  T.eq(info.step, 6)
  for _, p in ipairs(model:parameters()) do
    T.eq(loaded:state_dict()[p.name]:totable(), p.tensor:totable(), p.name)
  end
  local at3 = g.load_model(out, 3)
  T.ok(at3:state_dict()["lm_head.weight"]:totable()[1][1] ~= model.lm_head.weight:totable()[1][1], "step 3 differs")
  T.raises(function() g.load_model(out, 4) end, "no checkpoint at step 4 %(the file has: 3, 6%)")
  -- the command prints the prompt and what model:generate gives for it
  local want = loaded:generate({ ("hello"):byte(1, -1) }, { max_tokens = 12, temperature = 0.7, top_k = 20, seed = 5 })
  local code, printed = T.run_m2lab("generate '" .. out ..
    "' prompt=hello max_tokens=12 temperature=0.7 top_k=20 seed=5")
  T.eq(code, 0, printed)
  T.eq(printed:sub(1, 5 + 12), "hello" .. string.char(table.unpack(want)), "prompt and continuation, as bytes")
  T.ok(printed:find("m2lab generate: [^\n]*step 6, cpu: 5 prompt tokens, 12 new; prefill") ~= nil, printed)
  code, printed = T.run_m2lab("generate '" .. out .. "' prompt_ids=104,105 max_tokens=3 temperature=0 step=3")
  T.eq(code, 0, printed)
  local greedy = at3:generate({ 104, 105 }, { max_tokens = 3, temperature = 0 })
  T.eq(printed:sub(1, 2 + 3), "hi" .. string.char(table.unpack(greedy)))
  -- bad input
  code, printed = T.run_m2lab("generate '" .. out .. "' prompt=x step=4")
  T.eq(code, 1)
  T.ok(printed:find("no checkpoint at step 4", 1, true) ~= nil, printed)
  code, printed = T.run_m2lab("generate '" .. out .. "' prompt=x temp=1")
  T.eq(code, 2)
  T.ok(printed:find("unknown setting 'temp'", 1, true) ~= nil, printed)
  code, printed = T.run_m2lab("generate '" .. out .. "' prompt_ids=1,256")
  T.eq(code, 1)
  T.ok(printed:find("prompt token 2 is 256, outside the model's vocabulary [0, 256)", 1, true) ~= nil, printed)
  code, printed = T.run_m2lab("generate '" .. out .. "' max_tokens=3")
  T.eq(code, 2)
  T.ok(printed:find("missing prompt", 1, true) ~= nil, printed)
  code, printed = T.run_m2lab("generate " .. dir .. "/none.h5 prompt=x")
  T.eq(code, 2)
  T.ok(printed:find("none.h5: no such file", 1, true) ~= nil, printed)
  -- a run whose model has another vocabulary: ids in, ids out; text is refused
  local out2 = dir .. "/ids.h5"
  local small = m2.models.lm { vocab = 10, d = 8, layers = "M", m2rnn = { heads = 1, k = 2, v = 4 },
                               mlp = { kind = "none" } }
  m2.train { model = small, data = { batch = function() return m2.randint(10, 1, 4), m2.randint(10, 1, 4) end },
             steps = 1, out = out2, quiet = true }
  code, printed = T.run_m2lab("generate '" .. out2 .. "' prompt=abc")
  T.eq(code, 1)
  T.ok(printed:find("no tokenizer for it is known here", 1, true) ~= nil, printed)
  code, printed = T.run_m2lab("generate '" .. out2 .. "' prompt_ids=1,2 max_tokens=4 temperature=0")
  T.eq(code, 0, printed)
  local ids = g.load_model(out2):generate({ 1, 2 }, { max_tokens = 4, temperature = 0 })
  T.eq(printed:match("^[^\n]*"), "1 2 | " .. table.concat(ids, " "))
  -- a run file with no recorded spec
  local r3 <close> = m2.core.run_open(dir .. "/bare.h5", { mode = "create" })
  r3:close()
  T.raises(function() g.load_model(dir .. "/bare.h5") end, "stores no experiment script")
  os.execute("rm -rf '" .. dir .. "'")
end)
