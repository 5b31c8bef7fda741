-- cuda_generate.lua — generation on the GPU (DESIGN 9): the step form of every mixer on CUDA against the same
-- model's full forward on CUDA and against the CPU reference (same weights), including the fused M2RNN kernels at
-- T = 1 with a carried state (k = 64, v = 16), and model:generate on CUDA drawing the CPU's tokens under greedy
-- decoding. fp32 products on both sides (m2.matmul_precision "f32"); the fused M2RNN kernels compute in bf16, so
-- those cases get a bf16 tolerance. Label cuda; without a GPU it exits 77 (skipped).
local m2 = require "m2"
local T = m2.test

if not pcall(function() return m2.zeros({ 1 }, { device = "cuda" }) end) then
  print("cuda_generate: no CUDA device, skipped")
  io.stdout:flush()
  os.exit(77)
end

local SETTINGS = {
  m2rnn = { heads = 4, k = 8, v = 4, q_heads = 1, k_heads = 2 },
  gdn = { heads = 2, k = 8, v = 8 },
  mamba2 = { heads = 4, state = 8 },
  attention = { heads = 4, head_dim = 8, kv_heads = 2 },
}

local function build(layers, extra, seed)
  m2.seed(seed)
  local spec = { vocab = 37, d = 64, layers = layers, mlp = { hidden = 128 }, init_std = 0.2 }
  for k, v in pairs(SETTINGS) do spec[k] = v end
  for k, v in pairs(extra or {}) do spec[k] = v end
  return m2.models.lm(spec)
end

-- max |a - b| / max |b| (a, b on any device)
local function rel(a, b)
  a, b = a:to("cpu"), b:to("cpu")
  local d = m2.max_all(m2.sqrt((a - b) * (a - b))):item()
  return d / math.max(m2.max_all(m2.sqrt(b * b)):item(), 1e-30)
end

-- prefill `prefill` tokens then one at a time; -> the step logits concatenated per piece (a list)
local function step_logits(model, ids, prefill)
  local cache, t, out = {}, 1, {}
  local L = ids:size(2)
  local n = prefill
  while t <= L do
    out[#out + 1] = model:step(ids:narrow(2, t, n), cache)
    t = t + n
    n = 1
  end
  return out
end

local CASES = {
  { "m2rnn (general kernel)", "M", nil, 1e-4 },
  { "m2rnn fused (k 64, v 16)", "M", { m2rnn = { heads = 2, k = 64, v = 16 } }, 3e-2 },
  { "gdn", "G", nil, 1e-4 }, { "mamba2", "S", nil, 1e-4 },
  { "attention (RoPE)", "A", { attention = { heads = 4, head_dim = 8, kv_heads = 2, rope = true } }, 1e-4 },
  { "gdn chunked", "G", { gdn = { heads = 2, k = 8, v = 8, chunked = true, chunk = 4 } }, 1e-4 },
  { "hybrid MAGS", "MAGS", nil, 1e-4 },
  { "hybrid-m2rnn pattern MMAM, fused m2rnn", "MMAM", { m2rnn = { heads = 2, k = 64, v = 16 } }, 3e-2 },
}

T.case("CUDA step form = CUDA full forward = CPU full forward (every mixer, prefill 1 and 5)", function()
  local old = m2.matmul_precision("f32")
  local B, L = 3, 11
  for i, c in ipairs(CASES) do
    local cpu = build(c[2], c[3], 100 + i)
    local gpu = build(c[2], c[3], 100 + i):to("cuda")
    local ids = m2.randint(37, B, L)
    local gids = ids:to("cuda")
    m2.no_grad(function()
      local full_cpu = cpu(ids)
      local full_gpu = gpu(gids)
      local r = rel(full_gpu, full_cpu)
      T.ok(r == r and r <= c[4], string.format("%s: CUDA forward vs CPU %.3g > %g", c[1], r, c[4]))
      for _, prefill in ipairs { 1, 5 } do
        local t = 1
        for _, l in ipairs(step_logits(gpu, gids, prefill)) do
          local n = l:size(2)
          local r1 = rel(l, full_gpu:narrow(2, t, n))
          local r2 = rel(l, full_cpu:narrow(2, t, n))
          T.ok(r1 == r1 and r1 <= c[4], string.format("%s prefill %d, position %d: CUDA step vs CUDA forward %.3g > %g",
            c[1], prefill, t, r1, c[4]))
          T.ok(r2 == r2 and r2 <= c[4], string.format("%s prefill %d, position %d: CUDA step vs CPU forward %.3g > %g",
            c[1], prefill, t, r2, c[4]))
          t = t + n
        end
      end
    end)
  end
  m2.matmul_precision(old)
end)

T.case("model:generate on CUDA: greedy tokens equal the CPU's; sampled draws reproducible by seed", function()
  local old = m2.matmul_precision("f32")
  local cpu = build("MGSA", nil, 7)
  local gpu = build("MGSA", nil, 7):to("cuda")
  local prompt = { { 1, 2, 3, 4, 5 }, { 9, 8, 7, 6, 5 } } -- B lists: a batch
  local a = cpu:generate(prompt, { max_tokens = 24, temperature = 0, seed = 3 })
  local b = gpu:generate(prompt, { max_tokens = 24, temperature = 0, seed = 3 })
  T.eq(b, a, "greedy (temperature 0) tokens, CUDA vs CPU")
  local s1 = gpu:generate(prompt, { max_tokens = 24, temperature = 1.0, seed = 5 })
  local s2 = gpu:generate(prompt, { max_tokens = 24, temperature = 1.0, seed = 5 })
  T.eq(s1, s2, "same seed, same draws on CUDA")
  m2.matmul_precision(old)
end)

