--[==[ m2.layers.moe — the MoE MLP (DESIGN 3.5), DECLARED ONLY: its parameters can be counted
(m2.models.summary of the 7B configs) but an instance cannot be built yet.

Settings: experts (E) = 128, top_k = 8, expert_hidden = 256 (each expert a SwiGLU d -> h -> d),
shared_hidden = 1024 (a shared SwiGLU expert; 0: none), aux_loss_coef = 0.001.
Parameters (MoE.params): router (E, d); experts.gate / experts.up (E, h, d), experts.down (E, d, h);
shared.{gate,up,down} as nn.SwiGLU. Active per token: router + top_k experts + shared. The inits declared
here (N(0, init_std); the down projections N(0, init_std / sqrt(2 L)), as the dense MLP's) are provisional:
nothing builds them until the MoE issue.
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local MoE = nn.class("MoE")

local DEFAULTS = { experts = 128, top_k = 8, expert_hidden = 256, shared_hidden = 1024, aux_loss_coef = 0.001 }

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
  if c.top_k > c.experts then
    m2.error(string.format("MoE: top_k = %d is larger than experts = %d", c.top_k, c.experts))
  end
  return c
end

-- the E experts' weights, stacked (declared only, like MoE)
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

function MoE:__init(d, cfg)
  MoE.resolve(d, cfg)
  m2.error("MoE MLP not implemented yet (issue: MoE); m2.models.summary can still count its parameters")
end

return MoE
