--[==[ m2.layers.moe — the MoE MLP (DESIGN 3.5): a router, E SwiGLU experts and a shared SwiGLU expert.

  local MoE = require "m2.layers.moe"
  local mlp = MoE(d, { experts = 8, top_k = 2, expert_hidden = 64, shared_hidden = 64 }, { layers = L })
  local y = mlp(x)            -- x (..., d) -> (..., d)
  mlp:aux_loss()              -- the last training forward's auxiliary loss (0-d), nil in eval mode

Settings: experts (E) = 128, top_k = 8, expert_hidden = 256 (each expert a SwiGLU d -> h -> d),
shared_hidden = 1024 (a shared SwiGLU expert; 0: none), aux_loss_coef = 0.001, log_load = true (m2.train
logs the per-expert load of each layer as metric series; false: only each layer's imbalance),
expert_parallel = false (true: on R ranks, see below).
Parameters (MoE.params): router (E, d); experts.gate / experts.up (E, h, d), experts.down (E, d, h) (each expert's
weights in a Linear's (out, in) layout); shared.{gate,up,down} as nn.SwiGLU. Active per token: router + top_k
experts + shared. Inits N(0, init_std); the down projections N(0, init_std / sqrt(2 L)), as the dense MLP's.

Forward, for the N = B T tokens as rows (the ops of core/ops_moe.c):
  logits = x W_r^T (N, E); weights, indices, aux, counts = m2.moe_route(logits, top_k)  (softmax over the chosen k)
  xp, pos, offsets = m2.moe_permute(x, indices, E)        (N k rows sorted by expert: dropless, no capacity)
  h = swiglu(grouped(xp, gate), grouped(xp, up)); yp = grouped(h, down)   (one GEMM per expert's rows)
  y = m2.moe_unpermute(yp, weights, pos) + shared(x)       (each token's k rows, weighted, in a fixed order)
Auxiliary loss (training only): aux_loss_coef * (E sum_i f_i P_i + 0.1 mean_n logsumexp(logits_n)^2), f_i the
fraction of routed slots of expert i, P_i its mean router probability (softmax over all E); m2.models.lm's loss()
adds every layer's. While training, each forward adds counts (slots per expert) to the layer's load window, which
take_load() reads and resets (m2.train's metric series, through the model's log_metrics()).

Expert parallelism (expert_parallel = true, started as R > 1 ranks; DISTRIBUTED.md): rank r holds only experts
[r E/R, (r+1) E/R) (E % R == 0, else an error on every rank): experts.gate / up / down are (E/R, ...) slices of what
one process would initialise (every rank draws the whole tensors from the same seed and keeps its slice). The router
and the shared expert stay whole on every rank (data parallel). Each rank routes its own tokens; between permute and
unpermute the rows travel to the ranks of their experts and back (m2.dist's group: g:moe_dispatch, counts then rows,
and g:moe_combine; their backwards are the reverse exchanges). The load-balance loss uses the global f_i (from the
exchanged counts) with the rank's own P_i, so the ranks' losses add up to the one-process loss of the global batch;
the logged load is the global one. m2.train does not sum these experts' gradients over the ranks, and checkpoints
hold the whole (E, ...) tensors (gathered at save, each rank's slice taken at resume, at any world size). With one
process the setting changes nothing.
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local MoE = nn.class("MoE")

local DEFAULTS = { experts = 128, top_k = 8, expert_hidden = 256, shared_hidden = 1024, aux_loss_coef = 0.001,
                   log_load = true, expert_parallel = false }
MoE.Z_LOSS_WEIGHT = 0.1 -- the z-loss's weight beside the load-balance loss (DESIGN 3.5)

function MoE.resolve(d, cfg)
  local ctor = "MoE"
  C.pos_int(d, "d (model width)", ctor)
  local c = C.resolve(cfg, DEFAULTS, ctor)
  C.pos_int(c.experts, "experts", ctor)
  C.pos_int(c.top_k, "top_k", ctor)
  C.pos_int(c.expert_hidden, "expert_hidden", ctor)
  if math.type(c.shared_hidden) ~= "integer" or c.shared_hidden < 0 then
    m2.error("MoE: shared_hidden must be an integer >= 0 (0: no shared expert)")
  end
  if type(c.aux_loss_coef) ~= "number" or c.aux_loss_coef < 0 then
    m2.error("MoE: aux_loss_coef must be a number >= 0, got " .. tostring(c.aux_loss_coef))
  end
  if type(c.log_load) ~= "boolean" then m2.error("MoE: log_load must be true or false, got " .. tostring(c.log_load)) end
  if type(c.expert_parallel) ~= "boolean" then
    m2.error("MoE: expert_parallel must be true or false, got " .. tostring(c.expert_parallel))
  end
  local R = c.expert_parallel and m2.dist.world() or 1
  if c.experts % R ~= 0 then
    m2.error(string.format("MoE: expert_parallel: experts = %d is not a multiple of the world size %d (rank %d): each " ..
      "rank holds experts / world of them; choose a world size that divides %d", c.experts, R, m2.dist.rank(),
      c.experts, c.experts))
  end
  if c.top_k > c.experts then
    m2.error(string.format("MoE: top_k = %d is larger than experts = %d", c.top_k, c.experts))
  end
  return c
end

-- the E experts' weights, stacked; shard = {index = r, parts = R}: this rank's E/R of them (expert parallelism)
local Experts = nn.class("Experts")
MoE.Experts = Experts

-- init drawing the whole (E, ...) tensor (the random stream one process uses) and keeping rows [r El, (r+1) El)
local function slice_init(init, shard)
  if not shard then return init end
  return function(shape)
    local full = { shape[1] * shard.parts, table.unpack(shape, 2) }
    return init(full):narrow(1, shard.index * shape[1] + 1, shape[1]):contiguous()
  end
end

function Experts.params(d, E, h, opts, shard)
  local L, std = C.scale(opts)
  local El = shard and E // shard.parts or E
  return {
    { "gate", { El, h, d }, slice_init(nn.init.normal(std), shard), decay = true },
    { "up", { El, h, d }, slice_init(nn.init.normal(std), shard), decay = true },
    { "down", { El, d, h }, slice_init(nn.init.normal(std / math.sqrt(2 * L)), shard), decay = true },
  }
end

function Experts:__init(d, E, h, opts, shard)
  self.shape = { E, h, d }
  self:build(Experts.params(d, E, h, opts, shard))
  rawset(self, "_shard", shard) -- m2.dist.shards(model) finds the sliced parameters by it
end
function Experts:extra_repr()
  local sh = rawget(self, "_shard")
  return string.format("%d x (%d -> %d -> %d)%s", self.shape[1], self.shape[3], self.shape[2], self.shape[3],
    sh and string.format(", experts %d .. %d on this rank", sh.index * self.shape[1] // sh.parts,
      (sh.index + 1) * self.shape[1] // sh.parts - 1) or "")
end

-- the slice of the experts this rank holds: {index = rank, parts = world}, or nil (all of them)
local function ep_shard(c)
  if not c.expert_parallel or m2.dist.world() == 1 then return nil end
  return { index = m2.dist.rank(), parts = m2.dist.world() }
end

-- the parameters, once -> list, resolved cfg
function MoE.params(d, cfg, opts)
  local c = MoE.resolve(d, cfg)
  local L, std = C.scale(opts)
  return {
    nn.child("router", nn.Linear, d, c.experts, { bias = false, init_std = std }),
    nn.child("experts", Experts, d, c.experts, c.expert_hidden, opts, ep_shard(c)),
    c.shared_hidden > 0 and nn.child("shared", nn.SwiGLU, d, c.shared_hidden,
      { init_std = std, down_init = nn.init.normal(std / math.sqrt(2 * L)) }),
  }, c
end

-- parameters one token uses: the router, top_k experts and the shared expert
function MoE.active_params(d, cfg)
  local c = MoE.resolve(d, cfg)
  return c.experts * d + c.top_k * 3 * d * c.expert_hidden + 3 * d * c.shared_hidden
end

function MoE:__init(d, cfg, opts)
  local list, c = MoE.params(d, cfg, opts)
  self.cfg, self.d = c, d
  self:build(list)
  rawset(self, "_ep", ep_shard(c) ~= nil)
  rawset(self, "_load", nil)  -- (E) slots per expert since the last take_load(), a Lua array
  rawset(self, "_load_n", 0)  -- forwards in that window
end

-- forward(x (..., d) [, o]) -> (..., d); o (the step form's {cache = ...}) is ignored: the MLP is per token
function MoE:forward(x, o)
  local c, d = self.cfg, self.d
  local shape = x:shape()
  local x2 = x:reshape(-1, d)
  local logits = self.router(x2)
  local weights, indices, aux, counts = m2.moe_route(logits, c.top_k)
  local xp, pos, offsets = m2.moe_permute(x2, indices, c.experts)
  local e = self.experts
  local g, xe, oe, cm -- expert parallelism: the rows of this rank's experts from every rank, their offsets, counts
  if self._ep then
    g = m2.dist.group { device = x:device() }
    xe, oe, cm = g:moe_dispatch(xp, offsets, c.experts)
  else
    xe, oe = xp, offsets
  end
  local h = m2.swiglu(m2.moe_grouped_matmul(xe, e.gate, oe), m2.moe_grouped_matmul(xe, e.up, oe))
  local ye = m2.moe_grouped_matmul(h, e.down, oe)
  local y = m2.moe_unpermute(g and g:moe_combine(ye, cm) or ye, weights, pos)
  if self.shared then y = y + self.shared(x2) end
  if self.training then
    local w = m2.tensor({ c.aux_loss_coef, c.aux_loss_coef * MoE.Z_LOSS_WEIGHT }, { dtype = aux:dtype(),
      device = aux:device() })
    local n = counts:totable()
    if g then -- the global f (slots per expert over all ranks) with this rank's P: the ranks' losses add up
      n = {}
      for _, row in ipairs(cm:totable()) do for i, v in ipairs(row) do n[i] = (n[i] or 0) + v end end
      local slots = 0
      for i = 1, c.experts do slots = slots + n[i] end
      local f = {}
      for i = 1, c.experts do f[i] = slots > 0 and n[i] / slots or 0 end
      local P = m2.softmax(logits:to("f64"), -1):mean(1) -- (in f64, as moe_route computes it)
      local lb = ((P * m2.tensor(f, { dtype = "f64", device = P:device() })):sum() * c.experts):to(aux:dtype())
      local wz = m2.tensor({ 0, c.aux_loss_coef * MoE.Z_LOSS_WEIGHT }, { dtype = aux:dtype(), device = aux:device() })
      rawset(self, "_aux", lb * c.aux_loss_coef + (aux * wz):sum())
      rawset(self, "_aux_parts", m2.tensor({ lb:item(), aux:totable()[2] }))
    else
      rawset(self, "_aux", (aux * w):sum())
      rawset(self, "_aux_parts", aux:detach())
    end
    local load = self._load or {}
    for i = 1, c.experts do load[i] = (load[i] or 0) + n[i] end
    rawset(self, "_load", load)
    rawset(self, "_load_n", self._load_n + 1)
  else
    rawset(self, "_aux", nil)
    rawset(self, "_aux_parts", nil)
  end
  return y:reshape(shape)
end

-- the last training forward's auxiliary loss (0-d, differentiable), nil after an eval-mode forward or none
function MoE:aux_loss() return self._aux end

-- the last training forward's unweighted load-balance and z-loss (numbers), or nil
function MoE:aux_parts()
  if not self._aux_parts then return nil end
  local t = self._aux_parts:totable()
  return t[1], t[2]
end

-- take_load() -> slots per expert (Lua array of E integers) routed by the training forwards since the last call
-- (nil if none), and resets the window
function MoE:take_load()
  local load = self._load
  rawset(self, "_load", nil)
  rawset(self, "_load_n", 0)
  return load
end

function MoE:extra_repr()
  local c = self.cfg
  return string.format("%d, experts=%d, top_k=%d, expert_hidden=%d, shared_hidden=%d%s", self.d, c.experts, c.top_k,
    c.expert_hidden, c.shared_hidden, self._ep and ", expert_parallel" or "")
end

return MoE
