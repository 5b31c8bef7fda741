--[==[ m2.layers.attention — causal multi-head softmax attention (DESIGN 3.4).

  local Attention = require "m2.layers.attention"
  local mix = Attention(d, { heads = 16, head_dim = 64, rope = false }, { layers = 24 })

Settings: heads (H) = 8, head_dim (D) = 64, kv_heads (divides H; default H), rope = false for the
layer on its own (m2.models.lm fills it by pattern: RoPE in a pure-attention model, NoPE in hybrids,
DESIGN 3.4), theta = 10000.
Forward, x (B, T, d): q, k, v projections (no bias) -> (B,T,H|Hkv,D), optional RoPE on q and k,
m2.attention(q, k, v, {causal = true}) with scale 1/sqrt(D), o_proj (H D -> d, no bias).
opts (third argument): layers (L) and init_std = 0.02: projections N(0, init_std), the output
projection N(0, init_std / sqrt(2 L)).
The step form (DESIGN 9): forward(x, {cache = t}) continues the positions t has seen (t = {} at the start) with a
KV cache t.k, t.v (B, S, Hkv, D) and t.pos = S (RoPE positions start there).
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local Attention = nn.class("Attention")

local DEFAULTS = { heads = 8, head_dim = 64, kv_heads = false, rope = false, theta = 10000 }

function Attention.resolve(d, cfg)
  local ctor = "Attention"
  C.pos_int(d, "d (model width)", ctor)
  local c = C.resolve(cfg, DEFAULTS, ctor)
  C.pos_int(c.heads, "heads", ctor)
  C.pos_int(c.head_dim, "head_dim", ctor)
  c.kv_heads = C.pos_int(c.kv_heads or c.heads, "kv_heads", ctor)
  if c.heads % c.kv_heads ~= 0 then
    m2.error(string.format("Attention: kv_heads = %d does not divide heads = %d", c.kv_heads, c.heads))
  end
  return c
end

-- the parameters, once: q, k, v projections N(0, init_std), o_proj N(0, init_std / sqrt(2 L)) -> list, cfg
function Attention.params(d, cfg, opts)
  local c = Attention.resolve(d, cfg)
  local L, std = C.scale(opts)
  local lin = { bias = false, init_std = std }
  return {
    nn.child("q_proj", nn.Linear, d, c.heads * c.head_dim, lin),
    nn.child("k_proj", nn.Linear, d, c.kv_heads * c.head_dim, lin),
    nn.child("v_proj", nn.Linear, d, c.kv_heads * c.head_dim, lin),
    nn.child("o_proj", nn.Linear, c.heads * c.head_dim, d, { bias = false, init_std = std / math.sqrt(2 * L) }),
  }, c
end

function Attention:__init(d, cfg, opts)
  local list, c = Attention.params(d, cfg, opts)
  self.cfg, self.d = c, d
  self:build(list)
end

-- forward(x (B, T, d) [, {cache = table}]) -> (B, T, d)
-- With a cache (the step form, DESIGN 9), x continues the positions the cache has seen: the KV cache k, v
-- (B, S, Hkv, D) of every earlier position grows by T (a new tensor each call: O(S) copying per step, as the
-- attention itself reads all S keys), pos (S) offsets RoPE; queries attend to s <= t + S (m2.attention's causal
-- offset). The cache is updated in place.
function Attention:forward(x, opts)
  local c = self.cfg
  local s = x:shape()
  local B, T = s[1], s[2]
  local cache = opts and opts.cache
  local pos = cache and cache.pos or 0
  local q = self.q_proj(x):reshape(B, T, c.heads, c.head_dim)
  local k = self.k_proj(x):reshape(B, T, c.kv_heads, c.head_dim)
  local v = self.v_proj(x):reshape(B, T, c.kv_heads, c.head_dim)
  if c.rope then q, k = m2.rope(q, c.theta, pos), m2.rope(k, c.theta, pos) end
  if cache then
    if cache.k then k, v = m2.concat({ cache.k, k }, 2), m2.concat({ cache.v, v }, 2) end
    C.cache_set(cache, "k", k)
    C.cache_set(cache, "v", v)
    cache.pos = pos + T
  end
  local o = m2.attention(q, k, v, { causal = true })
  return self.o_proj(o:reshape(B, T, c.heads * c.head_dim))
end

function Attention:extra_repr()
  local c = self.cfg
  return string.format("d=%d, heads=%d x %d%s%s", self.d, c.heads, c.head_dim,
    c.kv_heads ~= c.heads and (", kv_heads " .. c.kv_heads) or "", c.rope and ", RoPE" or ", NoPE")
end

return Attention
