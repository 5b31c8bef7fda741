--[==[ m2.layers.moe — the MoE MLP (DESIGN 3.5): a router, E SwiGLU experts and a shared SwiGLU expert.

  local MoE = require "m2.layers.moe"
  local mlp = MoE(d, { experts = 8, top_k = 2, expert_hidden = 64, shared_hidden = 64 }, { layers = L })
  local y = mlp(x)            -- x (..., d) -> (..., d)
  mlp:aux_loss()              -- the last training forward's auxiliary loss (0-d), nil in eval mode

Settings: experts (E) = 128, top_k = 8, expert_hidden = 256 (each expert a SwiGLU d -> h -> d),
shared_hidden = 1024 (a shared SwiGLU expert; 0: none), aux_loss_coef = 0.001, log_load = true (m2.train
logs the per-expert load of each layer as metric series; false: only each layer's imbalance).
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
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local MoE = nn.class("MoE")

local DEFAULTS = { experts = 128, top_k = 8, expert_hidden = 256, shared_hidden = 1024, aux_loss_coef = 0.001,
                   log_load = true }
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
  if c.top_k > c.experts then
    m2.error(string.format("MoE: top_k = %d is larger than experts = %d", c.top_k, c.experts))
  end
  return c
end

-- the E experts' weights, stacked
local Experts = nn.class("Experts")
MoE.Experts = Experts
function Experts.params(d, E, h, opts)
  local L, std = C.scale(opts)
  return {
    { "gate", { E, h, d }, nn.init.normal(std), decay = true },
    { "up", { E, h, d }, nn.init.normal(std), decay = true },
    { "down", { E, d, h }, nn.init.normal(std / math.sqrt(2 * L)), decay = true },
  }
end

function Experts:__init(d, E, h, opts)
  self.shape = { E, h, d }
  self:build(Experts.params(d, E, h, opts))
end
function Experts:extra_repr() return string.format("%d x (%d -> %d -> %d)", self.shape[1], self.shape[3], self.shape[2],
  self.shape[3]) end

-- the parameters, once -> list, resolved cfg
function MoE.params(d, cfg, opts)
  local c = MoE.resolve(d, cfg)
  local L, std = C.scale(opts)
  return {
    nn.child("router", nn.Linear, d, c.experts, { bias = false, init_std = std }),
    nn.child("experts", Experts, d, c.experts, c.expert_hidden, opts),
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
  rawset(self, "_load", nil)  -- (E) slots per expert since the last take_load(), a Lua array
  rawset(self, "_load_n", 0)  -- forwards in that window
end

-- forward(x (..., d) [, o]) -> (..., d); o (the step form's {cache = ...}) is ignored: the MLP is per token
function MoE:forward(x, o)
  local c, d = self.cfg, self.d
  local shape = x:shape()
  local x2 = x:reshape(-1, d)
  local weights, indices, aux, counts = m2.moe_route(self.router(x2), c.top_k)
  local xp, pos, offsets = m2.moe_permute(x2, indices, c.experts)
  local e = self.experts
  local h = m2.swiglu(m2.moe_grouped_matmul(xp, e.gate, offsets), m2.moe_grouped_matmul(xp, e.up, offsets))
  local y = m2.moe_unpermute(m2.moe_grouped_matmul(h, e.down, offsets), weights, pos)
  if self.shared then y = y + self.shared(x2) end
  if self.training then
    local w = m2.tensor({ c.aux_loss_coef, c.aux_loss_coef * MoE.Z_LOSS_WEIGHT }, { dtype = aux:dtype(),
      device = aux:device() })
    rawset(self, "_aux", (aux * w):sum())
    rawset(self, "_aux_parts", aux:detach())
    local n, load = counts:totable(), self._load or {}
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
  return string.format("%d, experts=%d, top_k=%d, expert_hidden=%d, shared_hidden=%d", self.d, c.experts, c.top_k,
    c.expert_hidden, c.shared_hidden)
end

return MoE
