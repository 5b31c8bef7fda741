--[==[ m2.layers.moe — the MoE MLP (DESIGN 3.5), DECLARED ONLY: its parameters can be counted
(m2.models.summary of the 7B configs) but an instance cannot be built yet.

Settings: experts (E) = 128, top_k = 8, expert_hidden = 256 (each expert a SwiGLU d -> h -> d),
shared_hidden = 1024 (a shared SwiGLU expert; 0: none), aux_loss_coef = 0.001.
Parameters: router (E, d); experts.gate / experts.up (E, h, d), experts.down (E, d, h);
shared.{gate,up,down} as nn.SwiGLU. Active per token: router + top_k experts + shared.
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

function MoE.param_shapes(d, cfg)
  local c = MoE.resolve(d, cfg)
  local E, h = c.experts, c.expert_hidden
  local S = C.shapes():add("router.weight", { E, d })
  S:add("experts.gate", { E, h, d }):add("experts.up", { E, h, d }):add("experts.down", { E, d, h })
  if c.shared_hidden > 0 then S:swiglu("shared", d, c.shared_hidden) end
  return S.list
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
