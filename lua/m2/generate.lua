--[==[ m2.generate — text generation with recurrent state (DESIGN 9): model:generate and `m2lab generate`.

  local ids, stats = model:generate({72, 101, 108}, { max_tokens = 100, temperature = 0.8, top_k = 50, top_p = 0.95,
                                                      seed = 1 })
  -- ids: the new token ids (a Lua list; 0-based ids); stats: prompt_tokens, new_tokens, prefill_s, decode_s,
  -- tokens_per_s, ms_per_token
  local rows = model:generate(m2.tensor({{1, 2}, {3, 4}}, {dtype = "i64"}), { max_tokens = 8 })  -- B rows: B lists

How: one forward over the prompt that leaves every mixer's state in a cache (LM:step_hidden: M2RNN, GDN and Mamba-2
carry their (B, N, K, V) states and the short convs their last inputs, attention a KV cache), the LM head on the last
position only, then one token at a time: draw, feed it back, one step of every layer. The recurrent layers take the
same memory and time for every token; attention grows with the positions it attends.

Options (an unknown one is an error):
  max_tokens = 64     tokens to draw per row
  temperature = 1     0: greedy (the first largest logit)
  top_k = 0           keep the k most likely tokens (0: off)
  top_p = 1           then the smallest set of them holding top_p of their probability (1: off)
  seed = 0            the draws: token j of row b uses Philox (seed, row b, counter = its position in the sequence),
                      so a seed gives the same text on any device and at any batch size (core/sample.h)
  stop = nil          a token id (or a list of them) that ends a row; it is not returned; decoding stops when every
                      row has stopped
  on_token = nil      function(id, i) called as each token is drawn (B = 1: id a number; else a list of B ids)
Sampling (m2.sample, core/sample.c) runs on the host: on a GPU the (B, vocab) logits of each step are copied to the
host (0.4 MB at vocab 100352 for B = 1; 26 MB at B = 64), and the drawn ids copied back.
Checks: a prompt must be non-empty integer ids in [0, vocab); a model with spec.context refuses a prompt, or a prompt
plus max_tokens, longer than its context.

`m2lab generate RUN.h5 prompt="..." [step=N] [max_tokens=64] [temperature=1] [top_k=0] [top_p=1] [seed=0]
[prompt_ids=1,2,3] [stop=ID] [device=cpu|cuda] [precision=f32|bf16]` loads the model of a run (its spec recorded
by m2.train as the root attribute model_spec_json, and the parameters of checkpoint `step`, the latest by default)
and prints the prompt and its continuation. A byte-level model (vocab 256) reads the prompt's bytes and prints bytes;
for any other vocabulary no tokenizer is known here: give prompt_ids= and the ids are printed. Nothing stored in the
run file is executed. The timing goes to stderr.

  generate.generate(model, prompt, opts) -> ids, stats        (what LM:generate calls)
  generate.load_model(path [, step [, {device}]]) -> model, {step, spec}
      through m2.runs.load_model (the run's stored script rebuilds the model; the checkpoint's parameters)
]==]

local m2 = require "m2"
local runs = require "m2.runs"

local generate = {}

local OPTS = { max_tokens = 64, temperature = 1.0, top_k = 0, top_p = 1.0, seed = 0, stop = false, on_token = false }

local function fail(msg) m2.error("generate: " .. msg) end

local function check_opts(opts)
  if opts ~= nil and type(opts) ~= "table" then fail("options must be a table, got " .. type(opts)) end
  local o = {}
  for k, v in pairs(OPTS) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if OPTS[k] == nil then
      local names = {}
      for n in pairs(OPTS) do names[#names + 1] = n end
      table.sort(names)
      fail(string.format("unknown option '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
    o[k] = v
  end
  if math.type(o.max_tokens) ~= "integer" or o.max_tokens < 1 then
    fail("max_tokens must be an integer >= 1, got " .. tostring(o.max_tokens))
  end
  if math.type(o.top_k) ~= "integer" or o.top_k < 0 then
    fail("top_k must be an integer >= 0 (0: off), got " .. tostring(o.top_k))
  end
  if math.type(o.seed) ~= "integer" then fail("seed must be an integer, got " .. tostring(o.seed)) end
  local tp = o.temperature
  if type(tp) ~= "number" or not (tp >= 0) or tp == math.huge then
    fail("temperature must be a finite number >= 0 (0: greedy), got " .. tostring(tp))
  end
  if type(o.top_p) ~= "number" or not (o.top_p > 0 and o.top_p <= 1) then
    fail("top_p must be in (0, 1] (1: off), got " .. tostring(o.top_p))
  end
  local stop = {}
  if o.stop then
    for _, s in ipairs(type(o.stop) == "table" and o.stop or { o.stop }) do
      if math.type(s) ~= "integer" then fail("stop must be a token id or a list of them, got " .. tostring(s)) end
      stop[s] = true
    end
  end
  o.stop = stop
  if o.on_token and type(o.on_token) ~= "function" then fail("on_token must be a function") end
  return o
end

-- the prompt as rows of ids: a list of integers, B equally long lists, or an integer tensor (T) or (B, T) -> rows, batched
local function prompt_rows(prompt, vocab)
  local rows, batched
  if m2.is_tensor(prompt) then
    local dt = prompt:dtype()
    if dt ~= "i64" and dt ~= "i32" then fail("the prompt must hold integer token ids, got a tensor of " .. dt) end
    if prompt:dim() == 1 then rows, batched = { prompt:totable() }, false
    elseif prompt:dim() == 2 then rows, batched = prompt:totable(), true
    else fail(string.format("the prompt must be (T) or (B, T) token ids, got %d dims", prompt:dim())) end
  elseif type(prompt) == "table" and type(prompt[1]) == "table" then -- B lists of ids: a batch
    rows, batched = prompt, true
    for b = 2, #rows do
      if type(rows[b]) ~= "table" or #rows[b] ~= #rows[1] then
        fail(string.format("batched prompt: row %d has %s tokens, row 1 has %d (rows must be equally long)", b,
          type(rows[b]) == "table" and tostring(#rows[b]) or ("no list but a " .. type(rows[b]) .. " and no"), #rows[1]))
      end
    end
  elseif type(prompt) == "table" then
    rows, batched = { prompt }, false
  else
    fail("the prompt must be token ids (a list of integers or an integer tensor), got " .. type(prompt) ..
      (type(prompt) == "string" and " (text goes through a tokenizer first; `m2lab generate` reads bytes)" or ""))
  end
  local T = #rows[1]
  if T == 0 then fail("the prompt is empty: give at least one token id") end
  for b, r in ipairs(rows) do
    for t = 1, T do
      local id = r[t]
      if math.type(id) ~= "integer" then
        fail(string.format("prompt token %d%s is %s, not an integer id", t, batched and (" of row " .. b) or "",
          tostring(id)))
      end
      if id < 0 or id >= vocab then
        fail(string.format("prompt token %d%s is %d, outside the model's vocabulary [0, %d)", t,
          batched and (" of row " .. b) or "", id, vocab))
      end
    end
  end
  return rows, batched
end

-- generate(model, prompt, opts) -> ids (a list; B lists for a (B, T) prompt), stats
function generate.generate(model, prompt, opts)
  if type(model) ~= "table" or type(model.step_hidden) ~= "function" or not model.spec then
    fail("expected an m2.models.lm model (one with the step form, LM:step_hidden)")
  end
  local o = check_opts(opts)
  local spec = model.spec
  local rows, batched = prompt_rows(prompt, spec.vocab)
  local B, T, V = #rows, #rows[1], spec.vocab
  if spec.context then
    if T > spec.context then
      fail(string.format("the prompt has %d tokens, longer than the model supports (context = %d, its spec's " ..
        "context)", T, spec.context))
    end
    if T + o.max_tokens > spec.context then
      fail(string.format("the prompt (%d tokens) plus max_tokens (%d) is %d tokens, longer than the model supports " ..
        "(context = %d): at most max_tokens = %d fit", T, o.max_tokens, T + o.max_tokens, spec.context,
        spec.context - T))
    end
  end
  local device = model.embed.weight:device()
  local out, done, ndone, steps = {}, {}, 0, 0
  for b = 1, B do out[b] = {} end
  local stats = { prompt_tokens = T, batch = B }
  m2.no_grad(function()
    local clock = m2.core.clock
    local t0 = clock()
    local cache = {}
    local ids = m2.tensor(rows, { dtype = "i64", device = device })
    local h = model:step_hidden(ids, cache)                                   -- (B, T, d)
    local logits = model:head(h:narrow(2, T, 1)):reshape(B, V)                -- the last position only
    h = nil
    local sopts = { temperature = o.temperature, top_k = o.top_k, top_p = o.top_p, seed = o.seed, offset = 0 }
    local t1
    for i = 1, o.max_tokens do
      sopts.offset = T + i - 1 -- the position of the token drawn
      local next_ids = m2.sample(logits, sopts)                               -- (B) on the model's device
      local drawn = next_ids:totable()
      t1 = t1 or clock() -- prefill ends when its first token is drawn
      steps = i
      for b = 1, B do
        if not done[b] then
          if o.stop[drawn[b]] then done[b], ndone = true, ndone + 1
          else out[b][#out[b] + 1] = drawn[b] end
        end
      end
      if o.on_token then o.on_token(batched and drawn or drawn[1], i) end
      if i == o.max_tokens or ndone == B then break end
      logits:release()
      logits = model:step(next_ids:reshape(B, 1), cache):reshape(B, V)
    end
    local t2 = clock()
    stats.prefill_s, stats.decode_s = t1 - t0, t2 - t1
  end)
  stats.new_tokens = steps
  stats.tokens_per_s = stats.decode_s > 0 and B * (steps - 1) / stats.decode_s or 0 -- the first came with prefill
  stats.ms_per_token = steps > 1 and 1000 * stats.decode_s / (steps - 1) or 0
  return batched and out or out[1], stats
end

-- ---------------------------------------------------------------------------------------
-- loading a run's model
-- ---------------------------------------------------------------------------------------


-- load_model(path [, step [, {device = "cpu"}]]) -> model, {step, spec}
function generate.load_model(path, step, opts)
  if type(path) ~= "string" then m2.error("load_model: expected a run file path") end
  if step ~= nil and math.type(step) ~= "integer" then m2.error("load_model: step must be an integer") end
  local f = io.open(path, "rb")
  if not f then m2.error(path .. ": no such file") end
  f:close()
  local model, info = runs.load_model(path, step, { device = opts and opts.device or "cpu" })
  info.spec = model.spec
  return model, info
end

-- ---------------------------------------------------------------------------------------
-- m2lab generate
-- ---------------------------------------------------------------------------------------

local USAGE = "m2lab generate RUN.h5 prompt=\"...\" [step=N] [max_tokens=64] [temperature=1] [top_k=0] [top_p=1] " ..
  "[seed=0] [prompt_ids=1,2,3] [stop=ID] [device=cpu] [precision=f32]"
local KEYS = { prompt = true, prompt_ids = true, step = true, max_tokens = true, temperature = true, top_k = true,
               top_p = true, seed = true, stop = true, device = true, precision = true }

local function usage(msg)
  io.stderr:write("m2lab generate: ", msg, "\n(usage: ", USAGE, ")\n")
  return 2
end

local function int_list(text, what)
  local ids = {}
  for item in (text .. ","):gmatch("([^,]*),") do
    local v = math.tointeger(tonumber(item))
    if not v then return nil, string.format("%s=%s: '%s' is not an integer id", what, text, item) end
    ids[#ids + 1] = v
  end
  return ids
end

function generate.main(args)
  if #args ~= 1 then return usage(#args == 0 and "missing run file" or "expected one run file") end
  local path = args[1]
  local raw, typed = m2.args_raw, m2.args
  for k in pairs(raw) do
    if not KEYS[k] then
      local names = {}
      for n in pairs(KEYS) do names[#names + 1] = n end
      table.sort(names)
      return usage(string.format("unknown setting '%s' (known: %s)", k, table.concat(names, ", ")))
    end
  end
  if raw.prompt and raw.prompt_ids then return usage("give prompt= or prompt_ids=, not both") end
  if not raw.prompt and not raw.prompt_ids then return usage("missing prompt=\"...\" (or prompt_ids=...)") end
  local function int(k, def)
    if raw[k] == nil then return def end
    local v = math.tointeger(typed[k])
    if not v then m2.error(string.format("m2lab generate: %s=%s: expected an integer", k, raw[k])) end
    return v
  end
  local function num(k, def)
    if raw[k] == nil then return def end
    if type(typed[k]) ~= "number" then
      m2.error(string.format("m2lab generate: %s=%s: expected a number", k, raw[k]))
    end
    return typed[k] + 0.0
  end
  local precision = raw.precision or "f32"
  if precision ~= "f32" and precision ~= "bf16" then
    return usage("precision must be f32 or bf16, got " .. precision)
  end
  local f = io.open(path, "rb")
  if not f then return usage(path .. ": no such file") end
  f:close()
  local model, info = generate.load_model(path, int("step", nil), { device = raw.device })
  local bytes = model.spec.vocab == 256 -- the byte-level vocabulary: text in, text out
  local prompt
  if raw.prompt_ids then
    local ids, err = int_list(raw.prompt_ids, "prompt_ids")
    if not ids then m2.error("m2lab generate: " .. err) end
    prompt = ids
  elseif bytes then
    prompt = { raw.prompt:byte(1, -1) }
  else
    m2.error(string.format("m2lab generate: %s: the model's vocabulary has %d tokens and no tokenizer for it is " ..
      "known here (text works for the byte-level vocabulary, 256): give the prompt as prompt_ids=1,2,3", path,
      model.spec.vocab))
  end
  local opts = { max_tokens = int("max_tokens", 64), temperature = num("temperature", 1.0), top_k = int("top_k", 0),
                 top_p = num("top_p", 1.0), seed = int("seed", 0), stop = int("stop", nil) }
  prompt_rows(prompt, model.spec.vocab) -- its ids are checked before any is printed
  local out = io.stdout
  if bytes then out:write(string.char(table.unpack(prompt)))
  else out:write(table.concat(prompt, " "), " |") end
  out:flush()
  opts.on_token = function(id)
    if opts.stop == id then return end
    if bytes then out:write(string.char(id)) else out:write(" ", id) end
    out:flush()
  end
  local prev = m2.matmul_precision(precision)
  local ok, ids, stats = pcall(generate.generate, model, prompt, opts)
  m2.matmul_precision(prev)
  if not ok then error(ids, 0) end
  out:write("\n")
  out:flush()
  io.stderr:write(string.format("m2lab generate: %s step %d, %s: %d prompt tokens, %d new; prefill %.1f ms, decode " ..
    "%.1f tokens/s (%.2f ms a token)\n", path, info.step or -1, model.embed.weight:device(), stats.prompt_tokens,
    #ids, 1000 * stats.prefill_s, stats.tokens_per_s, stats.ms_per_token))
  return 0
end

return generate
