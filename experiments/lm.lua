-- lm.lua — a small language model on real text: the paper's layer patterns (DESIGN 4) at a small width, trained on
-- token shards (m2.data.tokens; the corpus of datasets/corpus.sh), validation loss and bits per byte in the run file.
--
--   bash datasets/corpus.sh                                    -- once: data/docs-byte/ (Debian packages -> shards)
--   m2lab run experiments/lm.lua arch=hybrid-m2rnn             -- runs/lm-hybrid-m2rnn.h5
--   m2lab run experiments/lm.lua arch=attention steps=2000 data=data/docs-bpe4096
--   m2lab run experiments/lm.lua moe_experts=16 moe_top_k=4   -- MoE MLPs (DESIGN 3.5) at this width; moe_aux=0
--                                                               -- trains without the balancing loss
--
-- arch (the pattern for `layers` blocks; a hybrid puts attention at block layers // 2, as the 400M model has one
-- attention block in eight):
--   m2rnn          M2RNN in every block                 hybrid-m2rnn   M2RNN, one attention block (NoPE)
--   gdn            Gated DeltaNet in every block        hybrid-gdn     GDN, one attention block (NoPE)
--   gdn+m2rnn-1l   hybrid-gdn with M2RNN in block 0     attention      attention in every block, with RoPE
--   mamba2         Mamba-2 in every block               hybrid-mamba2  Mamba-2, one attention block (NoPE)
-- Every architecture gets the same recipe and the same tokens (steps x batch x length). The mixers are scaled from
-- the 400M model (d = 1024) by d / 1024 where the paper's recurrent states keep their ratio (M2RNN's about half
-- of GDN's here). /eval/val_loss (nats/token) and /eval/val_bpb (bits per byte) every eval_every steps, over the
-- first eval_batches batches of the val split (the same windows every time).
local m2 = require "m2"

local cfg = m2.config {
  arch = "hybrid-m2rnn", data = "data/docs-byte", -- a directory of shards with meta.json (datasets/corpus.sh)
  d = 128, layers = 4, length = 128, batch = 16, steps = 300, seed = 0,
  lr = 3e-3, min_lr = 3e-4, warmup = 50, weight_decay = 0.1, clip = 1.0, init_std = 0.05,
  eval_every = 100, eval_batches = 8, log_every = 10, checkpoint_every = 0,
  out = "", -- the run file; default runs/lm-<arch>.h5
  -- moe_experts > 0: MoE MLPs, scaled from the 7B layer (d 1536: expert hidden 256 = d / 6, shared 1024 = 2 d / 3)
  -- to d / 4 and d / 2 here; moe_aux = the aux loss coefficient (the paper's 0.001; 0: no balancing loss)
  moe_experts = 0, moe_top_k = 4, moe_aux = 0.001,
  overwrite = false,
}

local PATTERNS = { -- letter per block; "hybrid" puts one attention block in the middle
  m2rnn = { base = "M" }, gdn = { base = "G" }, mamba2 = { base = "S" }, attention = { base = "A" },
  ["hybrid-m2rnn"] = { base = "M", hybrid = true }, ["hybrid-gdn"] = { base = "G", hybrid = true },
  ["hybrid-mamba2"] = { base = "S", hybrid = true }, ["gdn+m2rnn-1l"] = { base = "G", hybrid = true, first = "M" },
}
local P = PATTERNS[cfg.arch]
if not P then
  local names = {}
  for n in pairs(PATTERNS) do names[#names + 1] = n end
  table.sort(names)
  m2.error("lm: unknown arch '" .. cfg.arch .. "' (known: " .. table.concat(names, ", ") .. ")")
end
local letters = {}
for i = 1, cfg.layers do letters[i] = P.base end
if P.hybrid and cfg.layers >= 2 then letters[cfg.layers // 2 + 1] = "A" end
if P.first then letters[1] = P.first end
local pattern = table.concat(letters)
if cfg.out == "" then cfg.out = "runs/lm-" .. cfg.arch .. ".h5" end

-- the shards: relative to the working directory, else to the repository
local function has_meta(dir)
  local f = io.open(dir .. "/meta.json", "rb")
  if f then f:close() end
  return f ~= nil
end
local path = cfg.data
if not has_meta(path) and m2.source_dir and path:sub(1, 1) ~= "/" and has_meta(m2.source_dir .. "/" .. path) then
  path = m2.source_dir .. "/" .. path
end
if not has_meta(path) then
  m2.error(string.format("lm: no token shards at %s (no meta.json): make them with `bash datasets/corpus.sh` " ..
    "(the default corpus, byte-level) or datasets/prepare.py, or name another directory with data=", cfg.data))
end

m2.seed(cfg.seed)
local data = m2.data.tokens { path = path, length = cfg.length, batch = cfg.batch, seed = cfg.seed,
                              eval_batches = cfg.eval_batches }
local d = cfg.d
local model = m2.models.lm {
  name = "lm-" .. cfg.arch, vocab = data.vocab, d = d, layers = pattern, init_std = cfg.init_std,
  mlp = cfg.moe_experts > 0 and { kind = "moe", experts = cfg.moe_experts, top_k = cfg.moe_top_k,
                                  expert_hidden = math.max(16, d // 4), shared_hidden = math.max(16, d // 2),
                                  aux_loss_coef = cfg.moe_aux } or { kind = "swiglu" },
  -- 400M: M2RNN K 64, V 16, 84 heads; GDN 2 heads of 256 x 512; attention 16 x 64; Mamba-2 64 heads, state 216
  m2rnn = pattern:find("M") and { heads = math.max(1, d // 16), k = 16, v = 16 } or nil,
  gdn = pattern:find("G") and { heads = 2, k = d // 4, v = d // 2 } or nil,
  mamba2 = pattern:find("S") and { heads = math.max(1, d // 16), head_dim = 32, state = 32 } or nil,
  attention = pattern:find("A") and { heads = math.max(1, d // 64), head_dim = 64, rope = P.base == "A" } or nil,
}

print(string.format("lm: %s (%s), d %d, %s: %d steps x %d x %d = %.2f M tokens, vocab %d (%s)", cfg.arch, pattern,
  d, tostring(data), cfg.steps, cfg.batch, cfg.length, cfg.steps * cfg.batch * cfg.length / 1e6, data.vocab,
  data.tokenizer or "?"))
m2.models.summary(model)

local summary = m2.train {
  model = model, data = data, steps = cfg.steps,
  optim = m2.optim.adamw { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-10, weight_decay = cfg.weight_decay },
  schedule = { kind = "cosine", warmup = cfg.warmup, min_lr = cfg.min_lr },
  clip = cfg.clip, eval_every = cfg.eval_every, log_every = cfg.log_every, checkpoint_every = cfg.checkpoint_every,
  out = cfg.out, config = cfg,
}
local ev = summary.eval or {}
print(string.format("lm %s: %d steps, %.2f M tokens, %.0fs: train loss %.4f, val loss %.4f nats/token, %.4f bits/byte%s",
  cfg.arch, summary.step, summary.tokens / 1e6, summary.time, summary.final_loss or 0 / 0, ev.val_loss or 0 / 0,
  ev.val_bpb or 0 / 0, summary.out and (", run file " .. summary.out) or ""))
