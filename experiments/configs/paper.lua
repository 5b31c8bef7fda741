-- paper.lua — shared settings of the paper's models (M2RNN, arXiv 2603.14360; DESIGN section 4),
-- used by the other files in this folder. Not a config itself.
--
--   local paper = dofile(dir .. "paper.lua")
--   return paper.dense400m{ name = "400m-hybrid-m2rnn", layers = paper.pattern(24, "M", { A = paper.ATTN_400M }) }
--
-- Layer numbers in patterns are the paper's, counting from 0 (layer 0 is the first block).
local paper = {}

paper.ATTN_400M = { 4, 12, 20 }         -- attention layers of the 400M hybrids
paper.ATTN_7B = { 4, 12, 20, 28, 36 }   -- attention layers of the 7B MoE hybrids

-- pattern(n, fill, {letter = {layer numbers from 0}, ...}) -> "MMMMAMMM..."
function paper.pattern(n, fill, places)
  local t = {}
  for i = 1, n do t[i] = fill end
  for letter, layers in pairs(places or {}) do
    for _, l in ipairs(layers) do
      assert(l >= 0 and l < n, "layer number out of range")
      t[l + 1] = letter
    end
  end
  return table.concat(t)
end

-- the AdamW / schedule settings shared by all LM runs (for the training scripts)
paper.training = {
  seq_len = 4096, lr = 3e-4, betas = { 0.9, 0.95 }, eps = 1e-10, weight_decay = 0.1,
  schedule = { kind = "cosine", warmup = 2500, decay = 22500 }, grad_clip = 1.0, dtype = "bf16",
}

local function merge(base, over)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over or {}) do out[k] = v end
  return out
end

-- 400M dense: 24 layers, d 1024, SwiGLU 2752, untied embeddings, vocab 100352
function paper.dense400m(o)
  return merge({
    vocab = 100352, d = 1024, tie = false,
    m2rnn = { k = 64, v = 16, q_heads = 1, k_heads = 1, heads = 84 },  -- state 84 * 64 * 16 = 86,016
    gdn = { heads = 2, k = 256, v = 512 },                               -- state 262,144
    mamba2 = { heads = 64, inner = 1216, state = 216, chunk = 256 },
    attention = { heads = 16, head_dim = 64, rope = false },             -- NoPE except the pure baseline
    mlp = { kind = "swiglu", hidden = 2752 },
  }, o)
end

-- 7B MoE: 40 layers, d 1536, 128 experts top-8 (expert SwiGLU 256) + shared expert 1024
function paper.moe7b(o)
  return merge({
    vocab = 100352, d = 1536, tie = false,
    m2rnn = { k = 64, v = 16, q_heads = 1, k_heads = 1, heads = 132 },  -- state 135,168
    gdn = { heads = 3, k = 256, v = 512 },                               -- state 393,216
    mamba2 = { heads = 32, inner = 2048, state = 192, chunk = 256 },
    attention = { heads = 24, head_dim = 64, rope = false },
    mlp = { kind = "moe", experts = 128, top_k = 8, expert_hidden = 256, shared_hidden = 1024 },
  }, o)
end

-- finish(spec): return the spec; when the config file (named spec.name .. ".lua") is run as a script
-- (`m2lab run experiments/configs/400m-m2rnn.lua`), print its dry-run summary first.
function paper.finish(spec)
  local m2 = require "m2"
  if m2.script and spec.name and m2.script:match("[^/]+$") == spec.name .. ".lua" then
    m2.models.summary(spec)
  end
  return spec
end

return paper
