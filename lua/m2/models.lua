--[==[ m2.models — model builders: the pre-norm language model over a layer pattern, and a
parameter / state summary that works on a spec without allocating it (for the 400M and
7B configs in experiments/configs/).

  local model = m2.models.lm{ vocab = 256, d = 256, layers = "MMAM",
    m2rnn = { k = 64, v = 16, heads = 8 }, attention = { heads = 4 },
    mlp = { kind = "swiglu", hidden = 688 } }
  local logits = model(ids)                   -- ids (B, T) int64 -> (B, T, vocab)
  local cache = {}                            -- the step form (DESIGN 9): every mixer carries its state
  local l1 = model:step(ids1, cache)          -- (B, T1, vocab): prefill ...
  local l2 = model:step(ids2, cache)          -- ... then more positions: the last T2 rows of model(ids1 ++ ids2)
  local out = model:generate({72, 105}, { max_tokens = 50, temperature = 0.8, top_p = 0.9, seed = 1 })
                                              -- lua/m2/generate.lua: prefill, then decode token by token
  local loss = model:loss(ids, targets)       -- mean cross-entropy, targets -100 ignored
  print(model:param_count())
  m2.models.summary(model)                    -- or m2.models.summary(spec): nothing allocated
  local spec = m2.models.load("400m-hybrid-m2rnn")   -- experiments/configs/400m-hybrid-m2rnn.lua

Spec fields:
  vocab, d            sizes (vocab is both the input and the output vocabulary)
  layers              pattern string, one letter per block, first block first:
                        M = M2RNN, G = Gated DeltaNet, S = Mamba-2 (SSD), A = softmax attention
  m2rnn, gdn, mamba2, attention   settings of each mixer kind (see lua/m2/layers/*.lua)
                      attention.rope defaults by pattern: true (RoPE) when every layer is attention, false
                      (NoPE) in hybrids, whose recurrent layers carry position (DESIGN 3.4); set it to choose
  mlp                 { kind = "swiglu" (default) | "moe" | "none", hidden = 8/3 d rounded up to 64,
                        experts, top_k, expert_hidden, shared_hidden, aux_loss_coef, log_load, expert_parallel
                        (moe: lua/m2/layers/moe.lua; loss() adds the aux loss while training, log_metrics() the
                        load; expert_parallel spreads the experts over the ranks, DISTRIBUTED.md) }
  tie = false         true shares the embedding with the LM head (the paper's models are untied)
  norm_eps = 1e-5     RMSNorm eps
  init_std = 0.02     std of the embedding and projection inits (the paper's value at d = 1024;
                      small models learn faster with about 1/sqrt(d))
  name                optional label (printed by summary)
  context = nil       the longest sequence the model is meant for (e.g. its training length): generate refuses a
                      prompt (plus max_tokens) longer than it; nil: no limit (the mixers themselves have none)
  fused_loss = true   loss() (and so m2.train) runs the head and the cross-entropy as one op
                      (m2.linear_cross_entropy), never holding the (B, T, vocab) logits: -13 GB at B = 8, T = 4096,
                      100 k vocab, at the same speed; the same loss and gradients as false (the logits in full)
  loss_chunk = 0      rows of logits the fused loss holds at a time (0: as many as make 2^29 logits, 2 GiB of fp32;
                      fewer rows lower the step's peak memory when the loss holds it, see m2.profile's memory line)
  checkpoint = false  activation checkpointing of the blocks (m2.checkpoint): true every block, an integer n the
                      first n blocks (0 = false). A checkpointed block keeps only its input for the backward, which
                      runs its forward again: a training step costs about one more forward of those blocks, and the
                      activations they held (the norms', mixers' and MLPs' saved tensors) are not held; the same
                      loss and gradients. Only the training forward uses it (model:step and generation never do).
                      Not with MoE MLPs (their auxiliary loss and load counts are kept beside the forward).
Block i: x = x + Mixer(RMSNorm(x)); x = x + MLP(RMSNorm(x)); then a final RMSNorm and the LM
head (Linear d -> vocab, no bias). Inits: embedding and projections N(0, init_std); the output
projection of each mixer and the MLP's down projection N(0, init_std / sqrt(2 L)).
Parameter paths: embed.weight, blocks.<i>.{norm1, mixer, norm2, mlp}..., norm.weight, lm_head.weight.
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local models = {}

-- the mixer kinds by pattern letter
local KINDS = {
  M = { key = "m2rnn", module = "m2.layers.m2rnn", label = "M2RNN" },
  G = { key = "gdn", module = "m2.layers.gdn", label = "GDN" },
  S = { key = "mamba2", module = "m2.layers.mamba2", label = "Mamba2" },
  A = { key = "attention", module = "m2.layers.attention", label = "Attention" },
}
models.KINDS = KINDS

local SPEC_KEYS = { vocab = true, d = true, layers = true, m2rnn = true, gdn = true, mamba2 = true, attention = true,
                    mlp = true, tie = true, norm_eps = true, name = true, init_std = true, fused_loss = true,
                    context = true, checkpoint = true, loss_chunk = true }

local function kind_class(letter) return require(KINDS[letter].module) end

-- the number of blocks a (resolved) spec checkpoints: the first n
function models.checkpointed(s)
  if s.checkpoint == true then return #s.layers end
  return s.checkpoint or 0
end

-- check a spec and fill defaults -> a new table; errors are located at the caller's script line
function models.resolve(spec)
  if type(spec) ~= "table" then m2.error("m2.models.lm: expected a table of settings, got " .. type(spec)) end
  for k in pairs(spec) do
    if not SPEC_KEYS[k] then
      local names = {}
      for n in pairs(SPEC_KEYS) do names[#names + 1] = n end
      table.sort(names)
      m2.error(string.format("m2.models.lm: unknown setting '%s' (known: %s)", tostring(k), table.concat(names, ", ")))
    end
  end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  C.pos_int(s.vocab, "vocab", "m2.models.lm")
  C.pos_int(s.d, "d", "m2.models.lm")
  if type(s.layers) ~= "string" or #s.layers == 0 then
    m2.error("m2.models.lm: layers must be a non-empty pattern string such as \"MMAM\" (M = M2RNN, G = GDN, " ..
      "S = Mamba-2, A = attention), got " .. tostring(s.layers))
  end
  for i = 1, #s.layers do
    local ch = s.layers:sub(i, i)
    if not KINDS[ch] then
      m2.error(string.format("m2.models.lm: unknown layer letter '%s' at position %d of \"%s\" (M = M2RNN, " ..
        "G = GDN, S = Mamba-2, A = attention)", ch, i, s.layers))
    end
  end
  s.tie = s.tie or false
  if s.context ~= nil then C.pos_int(s.context, "context (the longest sequence)", "m2.models.lm") end
  if s.fused_loss == nil then s.fused_loss = true end
  if type(s.fused_loss) ~= "boolean" then m2.error("m2.models.lm: fused_loss must be a boolean") end
  s.loss_chunk = s.loss_chunk or 0
  if math.type(s.loss_chunk) ~= "integer" or s.loss_chunk < 0 then
    m2.error("m2.models.lm: loss_chunk must be an integer >= 0 (rows of logits at a time; 0: automatic), got " ..
      tostring(s.loss_chunk))
  end
  if s.checkpoint == nil then s.checkpoint = false end
  if type(s.checkpoint) ~= "boolean" and (math.type(s.checkpoint) ~= "integer" or s.checkpoint < 0 or
      s.checkpoint > #s.layers) then
    m2.error(string.format("m2.models.lm: checkpoint must be false, true or an integer 0 .. %d (the first n " ..
      "blocks), got %s", #s.layers, tostring(s.checkpoint)))
  end
  s.norm_eps = s.norm_eps or 1e-5
  s.init_std = s.init_std or 0.02
  if type(s.init_std) ~= "number" or s.init_std <= 0 then m2.error("m2.models.lm: init_std must be a positive number") end
  local mlp = {}
  for k, v in pairs(s.mlp or {}) do mlp[k] = v end
  mlp.kind = mlp.kind or "swiglu"
  if mlp.kind == "swiglu" then
    for k in pairs(mlp) do
      if k ~= "kind" and k ~= "hidden" then
        m2.error("m2.models.lm: mlp setting '" .. tostring(k) .. "' is not one of a swiglu MLP (kind, hidden)")
      end
    end
    mlp.hidden = mlp.hidden or 64 * math.ceil(8 * s.d / 3 / 64)
    C.pos_int(mlp.hidden, "mlp.hidden", "m2.models.lm")
  elseif mlp.kind == "moe" then
    local moe = {}
    for k, v in pairs(mlp) do if k ~= "kind" then moe[k] = v end end
    require("m2.layers.moe").resolve(s.d, moe) -- validates
  elseif mlp.kind ~= "none" then
    m2.error("m2.models.lm: mlp.kind must be \"swiglu\", \"moe\" or \"none\", got " .. tostring(mlp.kind))
  end
  s.mlp = mlp
  if mlp.kind == "moe" and models.checkpointed(s) > 0 then
    m2.error("m2.models.lm: checkpoint is not supported with MoE MLPs (mlp.kind = \"moe\"): the MoE layer keeps " ..
      "its auxiliary loss and load counts beside the forward, which a recompute would lose or count twice")
  end
  -- the positional encoding: RoPE in a pure-attention model (without it attention is blind to token order),
  -- NoPE in hybrids as in the paper; an explicit attention.rope wins. A copy: the caller's table stays as it was.
  if s.layers:find("A", 1, true) and (s.attention == nil or type(s.attention) == "table") then
    local a = {}
    for k, v in pairs(s.attention or {}) do a[k] = v end
    if a.rope == nil then a.rope = not s.layers:find("[^A]") end
    s.attention = a
  end
  -- validate the settings of every mixer kind the pattern uses (and only those)
  for letter, k in pairs(KINDS) do
    if s.layers:find(letter, 1, true) then kind_class(letter).resolve(s.d, s[k.key]) end
  end
  return s
end

local function moe_cfg(mlp)
  local c = {}
  for k, v in pairs(mlp) do if k ~= "kind" then c[k] = v end end
  return c
end

-- ---------------------------------------------------------------------------------------
-- modules
-- ---------------------------------------------------------------------------------------

local Block = nn.class("Block")
models.Block = Block

-- the parameters of block (d, letter, spec (resolved), L), once: norm1, mixer, norm2, mlp
function Block.params(d, letter, s, L)
  local mlp = false
  if s.mlp.kind == "swiglu" then
    -- down projection N(0, init_std / sqrt(2 L)); its init first draws (and drops) one N(0, init_std) of its size,
    -- as the MLP used to be built at init_std and then redrawn: the same seed keeps giving the same model
    local down = nn.init.normal(s.init_std / math.sqrt(2 * L))
    mlp = nn.child("mlp", nn.SwiGLU, d, s.mlp.hidden,
      { init_std = s.init_std, down_init = nn.init.after_discard(nn.init.normal(s.init_std), down) })
  elseif s.mlp.kind == "moe" then
    mlp = nn.child("mlp", require("m2.layers.moe"), d, moe_cfg(s.mlp), { layers = L, init_std = s.init_std })
  end
  return {
    nn.child("norm1", nn.RMSNorm, d, { eps = s.norm_eps }),
    nn.child("mixer", kind_class(letter), d, s[KINDS[letter].key], { layers = L, init_std = s.init_std }),
    mlp and nn.child("norm2", nn.RMSNorm, d, { eps = s.norm_eps }),
    mlp,
  }
end

-- Block(d, letter, spec (resolved), L)
function Block:__init(d, letter, s, L)
  self.kind = letter
  self:build(Block.params(d, letter, s, L))
end

-- forward(x (B, T, d) [, cache]) -> (B, T, d); a cache table makes the mixer's step form continue it (DESIGN 9)
function Block:forward(x, cache)
  x = x + self.mixer(self.norm1(x), cache and { cache = cache } or nil)
  if self.mlp then x = x + self.mlp(self.norm2(x)) end
  return x
end

local LM = nn.class("LM")
models.LM = LM

-- the parameters of the model a spec describes, once: embed, blocks.1 .. blocks.L, norm, lm_head (untied)
-- -> list, resolved spec
function LM.params(spec)
  local s = models.resolve(spec)
  local L = #s.layers
  local blocks = {}
  for i = 1, L do blocks[i] = nn.child(i, Block, s.d, s.layers:sub(i, i), s, L) end
  return {
    nn.child("embed", nn.Embedding, s.vocab, s.d, { init_std = s.init_std }),
    nn.child_list("blocks", blocks),
    nn.child("norm", nn.RMSNorm, s.d, { eps = s.norm_eps }),
    not s.tie and nn.child("lm_head", nn.Linear, s.d, s.vocab, { bias = false, init_std = s.init_std }),
  }, s
end

function LM:__init(spec)
  local list, s = LM.params(spec)
  rawset(self, "spec", s)
  self:build(list)
end

-- hidden(ids (B, T)) -> final normed hidden states (B, T, d)
-- (spec.checkpoint: the first blocks through m2.checkpoint, which keeps only their inputs for the backward)
function LM:hidden(ids)
  local x = self.embed(ids)
  local n = models.checkpointed(self.spec)
  for i, b in ipairs(self.blocks) do
    if i <= n then x = m2.checkpoint(b, x) else x = b(x) end
  end
  return self.norm(x)
end

-- head(h (B, T, d)) -> logits (B, T, vocab): the LM head (or the tied embedding)
function LM:head(h)
  if self.lm_head then return self.lm_head(h) end
  return m2.linear(h, self.embed.weight)
end

-- forward(ids (B, T) int64, 0-based) -> logits (B, T, vocab)
function LM:forward(ids)
  return self:head(self:hidden(ids))
end

-- step_hidden(ids (B, T), cache) -> final normed hidden states (B, T, d) of T positions that continue those the
-- cache has seen ({} for a fresh sequence): cache[i] is block i's mixer cache (conv windows and recurrent state, or
-- the KV cache), cache.pos the positions seen; updated in place. Equal to the last T rows of hidden(all ids so far).
function LM:step_hidden(ids, cache)
  if type(cache) ~= "table" then
    m2.error("LM:step: expected a cache table ({} for a fresh sequence), got " .. type(cache))
  end
  local x = self.embed(ids)
  for i, b in ipairs(self.blocks) do
    cache[i] = cache[i] or {}
    x = b(x, cache[i])
  end
  cache.pos = (cache.pos or 0) + ids:size(2)
  return self.norm(x)
end

-- step(ids (B, T), cache) -> logits (B, T, vocab): the step form of forward (see step_hidden)
function LM:step(ids, cache) return self:head(self:step_hidden(ids, cache)) end

-- generate(prompt_ids, {max_tokens, temperature, top_k, top_p, seed, ...}) -> ids, stats (lua/m2/generate.lua)
function LM:generate(prompt, opts) return require("m2.generate").generate(self, prompt, opts) end

-- loss(ids, targets (B, T) int64, -100 ignored) -> 0-d mean cross-entropy; m2.train uses it. With spec.fused_loss
-- the head and the loss are one op (m2.linear_cross_entropy): the (B, T, vocab) logits are never held (13 GB in
-- fp32 at B = 8, T = 4096, 100 k vocab), only chunks of them.
-- A model with MoE MLPs adds their auxiliary losses (load balance and z-loss) while training (not in eval mode, so
-- validation losses stay the pure cross-entropy).
function LM:loss(ids, targets)
  local loss
  if not self.spec.fused_loss then
    loss = m2.cross_entropy(self:forward(ids), targets, -100)
  else
    local h = self:hidden(ids)
    loss = m2.linear_cross_entropy(h, self.lm_head and self.lm_head.weight or self.embed.weight, targets, -100,
      self.spec.loss_chunk)
  end
  local aux = self:aux_loss()
  return aux and loss + aux or loss
end

-- ---- MoE: the auxiliary loss and the per-expert load (nothing for a model without MoE MLPs) ----

-- the sum of the MoE layers' auxiliary losses of the last training forward (0-d), or nil
function LM:aux_loss()
  local sum
  for _, b in ipairs(self.blocks) do
    local a = b.mlp and b.mlp.aux_loss and b.mlp:aux_loss()
    if a then sum = sum and sum + a or a end
  end
  return sum
end

-- log_metrics() -> list of {name, value}: what m2.train logs beside its own metrics at each log step (means over the
-- window since the last call); a value that is a Lua array of numbers is an array series (/arrays/<name>, one row
-- per log step), a number a metric series. With MoE MLPs: moe_aux_loss (the weighted sum over layers, last forward),
-- moe_balance and moe_zloss (unweighted, summed over layers), per block i (2 digits) moe_imbalance_<i> (the most
-- loaded expert's slots over the mean: 1 is perfect balance) and, with log_load, moe_load_<i>: an array of E
-- values, the fraction of the block's routed slots each expert took (1/E when balanced). Empty without MoE MLPs.
function LM:log_metrics()
  local out, bal, z = {}, 0, 0
  local aux = self:aux_loss()
  for i, b in ipairs(self.blocks) do
    local m = b.mlp
    if m and m.take_load then
      local lb, zl = m:aux_parts()
      bal, z = bal + (lb or 0), z + (zl or 0)
      local load = m:take_load()
      if load then
        local total, mx = 0, 0
        for _, n in ipairs(load) do total, mx = total + n, math.max(mx, n) end
        out[#out + 1] = { string.format("moe_imbalance_%02d", i), total > 0 and mx * #load / total or 0 }
        if m.cfg.log_load then
          local shares = {}
          for e, n in ipairs(load) do shares[e] = total > 0 and n / total or 0 end
          out[#out + 1] = { string.format("moe_load_%02d", i), shares }
        end
      end
    end
  end
  if aux then
    table.insert(out, 1, { "moe_zloss", z })
    table.insert(out, 1, { "moe_balance", bal })
    table.insert(out, 1, { "moe_aux_loss", aux:item() })
  end
  return out
end

function LM:param_count() return self:num_parameters() end

function LM:extra_repr()
  local s = self.spec
  return string.format("%svocab=%d, d=%d, layers=\"%s\", mlp=%s%s", s.name and (s.name .. ": ") or "", s.vocab, s.d,
    s.layers, s.mlp.kind, s.tie and ", tied" or "")
end

function models.lm(spec) return LM(spec) end

-- load(name_or_path) -> spec: a config file returning a spec table; a bare name is looked up
-- in experiments/configs/ of the source tree ("400m-hybrid-m2rnn", "7b-gdn+m2rnn-5l", ...), a relative path that is
-- not found from here is looked up from the source tree's root ("experiments/configs/400m-gdn.lua")
function models.load(name)
  if type(name) ~= "string" then m2.error("m2.models.load: expected a config name or path") end
  local path = name
  if not name:find("/", 1, true) and not name:match("%.lua$") then
    path = (m2.source_dir or ".") .. "/experiments/configs/" .. name .. ".lua"
  elseif name:sub(1, 1) ~= "/" and m2.source_dir then
    local f = io.open(name)
    if f then f:close() else path = m2.source_dir .. "/" .. name end
  end
  local chunk, err = loadfile(path)
  if not chunk then m2.error("m2.models.load: cannot load config '" .. name .. "': " .. tostring(err)) end
  local ok, spec = pcall(chunk)
  if not ok then m2.error("m2.models.load: config '" .. name .. "' failed: " .. tostring(spec)) end
  if type(spec) ~= "table" then m2.error("m2.models.load: config '" .. name .. "' did not return a table") end
  return spec
end

-- ---------------------------------------------------------------------------------------
-- counting without allocating
-- ---------------------------------------------------------------------------------------

-- every parameter of the model a spec describes, in {name, shape, no_decay} records: the same names,
-- shapes and order as model:parameters(), from the same declarations (LM.params); nothing is allocated
function models.param_shapes(spec)
  return nn.param_shapes(LM, spec)
end

-- the numbers summary prints, for a spec or a model
function models.count(model_or_spec)
  local s = model_or_spec.spec and models.resolve(model_or_spec.spec) or models.resolve(model_or_spec)
  local shapes = models.param_shapes(s)
  local by = {}
  local total = 0
  for _, p in ipairs(shapes) do
    local n = C.numel(p.shape)
    total = total + n
    local blk, part = p.name:match("^blocks%.(%d+)%.(%w+)")
    local key = blk and (blk .. "." .. part) or p.name:match("^([%w_]+)")
    by[key] = (by[key] or 0) + n
  end
  local out = { spec = s, total = total, layers = {}, embedding = by.embed or 0, lm_head = by.lm_head or 0,
                state = 0 }
  out.active = total
  local moe_active = s.mlp.kind == "moe" and require("m2.layers.moe").active_params(s.d, moe_cfg(s.mlp)) or nil
  for i = 1, #s.layers do
    local letter = s.layers:sub(i, i)
    local cls = kind_class(letter)
    local c = cls.resolve(s.d, s[KINDS[letter].key])
    local state = letter == "S" and c.state_size or (letter == "A" and 0 or c.state)
    local row = { index = i, letter = letter, label = KINDS[letter].label, mixer = by[i .. ".mixer"] or 0,
                  mlp = by[i .. ".mlp"] or 0, norms = (by[i .. ".norm1"] or 0) + (by[i .. ".norm2"] or 0),
                  state = state }
    row.mlp_active = moe_active or row.mlp
    out.active = out.active - row.mlp + row.mlp_active
    out.state = out.state + state
    out.layers[i] = row
  end
  if s.layers:find("A", 1, true) then
    local a = kind_class("A").resolve(s.d, s.attention)
    out.pos_encoding = a.rope and string.format("RoPE (theta %g)", a.theta) or "NoPE"
  end
  if model_or_spec.spec and model_or_spec.param_count then
    out.allocated = model_or_spec:param_count()
  end
  return out
end

function models.param_count(model_or_spec)
  if model_or_spec.param_count then return model_or_spec:param_count() end
  return models.count(model_or_spec).total
end

local function human(n)
  if n >= 1e9 then return string.format("%.3fB", n / 1e9) end
  if n >= 1e6 then return string.format("%.2fM", n / 1e6) end
  if n >= 1e3 then return string.format("%.1fK", n / 1e3) end
  return tostring(n)
end
models.human = human

-- summary(model_or_spec [, {quiet = false}]) -> the count table (pos_encoding: "RoPE (theta N)", "NoPE", or nil
-- without attention layers); prints a dry-run table
function models.summary(model_or_spec, opts)
  local c = models.count(model_or_spec)
  if opts and opts.quiet then return c end
  local s = c.spec
  local w = io.stdout
  w:write(string.format("%s  vocab %d, d %d, %d layers \"%s\", mlp %s%s\n", s.name or "model", s.vocab, s.d,
    #s.layers, s.layers, s.mlp.kind, s.tie and ", tied embeddings" or ", untied embeddings"))
  -- blocks count from 1 here; the paper numbers layers from 0
  w:write(string.format("  %-6s %-10s %12s %12s %12s %12s\n", "block", "mixer", "mixer", "mlp", "mlp active", "state"))
  -- consecutive identical rows are folded into one line "i-j"
  local i = 1
  while i <= #c.layers do
    local r, j = c.layers[i], i
    while j < #c.layers and c.layers[j + 1].letter == r.letter and c.layers[j + 1].mixer == r.mixer do j = j + 1 end
    local idx = i == j and tostring(i) or (i .. "-" .. j)
    w:write(string.format("  %-6s %-10s %12s %12s %12s %12s\n", idx, r.label, human(r.mixer), human(r.mlp),
      human(r.mlp_active), r.state > 0 and tostring(r.state) or "-"))
    i = j + 1
  end
  w:write(string.format("  embedding %s, lm head %s%s\n", human(c.embedding), human(c.lm_head),
    s.tie and " (tied)" or ""))
  w:write(string.format("  params: total %s (%d); without the LM head %s; active per token %s\n", human(c.total),
    c.total, human(c.total - c.lm_head), human(c.active)))
  w:write(string.format("  recurrent state per sequence: %d numbers (%s) over all layers\n", c.state, human(c.state)))
  if c.pos_encoding == nil then
    w:write("  positional encoding: none (recurrent mixers only)\n")
  elseif c.pos_encoding == "NoPE" then
    w:write("  positional encoding: NoPE in the attention layers (the recurrent layers carry position; " ..
      "attention.rope = true for RoPE)\n")
  else
    w:write(string.format("  positional encoding: %s in the attention layers\n", c.pos_encoding))
  end
  if c.allocated then w:write(string.format("  allocated: %d parameters\n", c.allocated)) end
  w:flush()
  return c
end

return models
