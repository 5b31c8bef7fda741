-- decode_speed.lua — what generation costs on this machine (DESIGN 9, lua/m2/generate.lua): model:generate with
-- random weights and random prompts; per batch size, the prefill time and the decode tokens/s and latency per token.
-- The weights do not matter for the time (sampling from flat distributions is the sampler's slowest case only with
-- top_p; the default draws with temperature 1, no top-k / top-p).
--
--   m2lab run experiments/decode_speed.lua device=cuda           (the 400M hybrid, batch 1 and 64, bf16 products)
--   m2lab run experiments/decode_speed.lua device=cuda config=experiments/configs/400m-gdn.lua batch=1,8
--   m2lab run experiments/decode_speed.lua layers=MMAM d=64 vocab=256 tokens=32 precision=f32   (a CPU check)
-- layers / d / vocab override the config's (empty / 0: keep it); prompt = prompt tokens, tokens = tokens drawn per
-- row; warmup: tokens of an untimed first call (the CUDA memory pool and the kernels' first launches);
-- profile=1: per batch size, one more call with m2.profile on (each op synchronised: read the op counts and shares),
-- and a table of the ops per drawn token (prefill included: use many tokens to make it small).
local m2 = require "m2"

local cfg = m2.config {
  config = "experiments/configs/400m-hybrid-m2rnn.lua", batch = { 1, 64 }, prompt = 128, tokens = 128, warmup = 4,
  layers = "", d = 0, vocab = 0, seed = 0, precision = "bf16", temperature = 1.0, top_k = 0, top_p = 1.0,
  profile = 0,
}
m2.seed(cfg.seed)

local spec = m2.models.load(cfg.config) -- as given, else from the repository root
if type(spec) ~= "table" or not spec.layers then
  m2.error("decode_speed: " .. cfg.config .. " returned no model spec")
end
if cfg.layers ~= "" then spec.layers = cfg.layers end
if cfg.d > 0 then spec.d = cfg.d end
if cfg.vocab > 0 then spec.vocab = cfg.vocab end
local device = m2.args.device or "cpu"
local model = m2.models.lm(spec)
if device ~= "cpu" then model:to(device) end
m2.matmul_precision(cfg.precision)

print(string.format("decode_speed: %s (%s, d %d, vocab %d, %s parameters) on %s, prompt %d tokens, %d drawn, %s " ..
  "products, temperature %g, top_k %d, top_p %g", spec.name or cfg.config, spec.layers, spec.d, spec.vocab,
  m2.models.human(m2.models.param_count(model)), device, cfg.prompt, cfg.tokens, cfg.precision, cfg.temperature,
  cfg.top_k, cfg.top_p))
local opts = { temperature = cfg.temperature, top_k = cfg.top_k, top_p = cfg.top_p, seed = cfg.seed }
print(string.format("%6s %12s %14s %14s %16s", "batch", "prefill ms", "decode tok/s", "ms per token",
  "ms per token/row"))
for _, B in ipairs(cfg.batch) do
  local prompt = m2.randint(spec.vocab, B, cfg.prompt)
  if cfg.warmup > 0 then
    opts.max_tokens = cfg.warmup
    model:generate(prompt, opts)
  end
  opts.max_tokens = cfg.tokens
  local _, s = model:generate(prompt, opts)
  print(string.format("%6d %12.1f %14.1f %14.2f %16.3f", B, 1000 * s.prefill_s, s.tokens_per_s, s.ms_per_token,
    s.ms_per_token / B))
  if cfg.profile == 1 then
    m2.profile.start()
    model:generate(prompt, opts)
    m2.profile.stop()
    print(m2.profile.report { per = cfg.tokens, top = 20,
      title = string.format("ops per drawn token, batch %d (%d tokens, the prompt's prefill included)", B, cfg.tokens) })
  end
  collectgarbage()
end
