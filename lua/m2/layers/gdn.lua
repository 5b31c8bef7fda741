--[==[ m2.layers.gdn — the Gated DeltaNet mixer layer (DESIGN 3.2).

  local GDN = require "m2.layers.gdn"
  local mix = GDN(d, { heads = 2, k = 256, v = 512, allow_neg_eigval = false }, { layers = 24 })
  local y = mix(x)                 -- x (B, T, d) -> (B, T, d)

Settings: heads (H) = 4, k (K) = 64, v (V) = 64, conv = 4 (0: no short conv), allow_neg_eigval
= false (beta in (0, 2) instead of (0, 1)), chunked = false (m2.gdn, the recurrent form, is
the faster one on CPU; true uses m2.gdn_chunked with `chunk`), chunk = 64, A_range = {0, 16},
dt_min/dt_max/dt_floor as for M2RNN, norm_eps = 1e-5.

Forward, x (B, T, d):
  q, k, v = SiLU(conv(q_proj x)), SiLU(conv(k_proj x)), SiLU(conv(v_proj x))   (B,T,H,K|V)
  q, k    = l2norm(q), l2norm(k)                                               eps 1e-6
  g       = -exp(A_log) * softplus(a_proj x + dt_bias)                         (B, T, H)
  beta    = sigmoid(b_proj x)  (x 2 with allow_neg_eigval)                     (B, T, H)
  o       = gdn(q, k, v, g, beta)                                              (B, T, H, V)
  out     = out_proj(RMSNorm_per_head(o) * SiLU(g_proj x))
opts (third argument): layers (L) and init_std = 0.02: projections N(0, init_std), the output
projection N(0, init_std / sqrt(2 L)).
The step form (DESIGN 9): forward(x, {cache = t}) continues the positions t has seen (t = {} at the start), carrying
q_conv, k_conv, v_conv (B, conv - 1, H K|V) and state (B, H, K, V): the same memory and time for every token.
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local GDN = nn.class("GatedDeltaNet")

local DEFAULTS = {
  heads = 4, k = 64, v = 64, conv = 4, allow_neg_eigval = false, chunked = false, chunk = 64, A_range = { 0, 16 },
  dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4, norm_eps = 1e-5,
}

function GDN.resolve(d, cfg)
  local ctor = "GDN"
  C.pos_int(d, "d (model width)", ctor)
  local c = C.resolve(cfg, DEFAULTS, ctor)
  C.pos_int(c.heads, "heads", ctor)
  C.pos_int(c.k, "k (key dim K)", ctor)
  C.pos_int(c.v, "v (value dim V)", ctor)
  C.pos_int(c.chunk, "chunk", ctor)
  if math.type(c.conv) ~= "integer" or c.conv < 0 then m2.error("GDN: conv must be a kernel size >= 0") end
  c.state = c.heads * c.k * c.v
  return c
end

-- the parameters, once (in the order of the RNG draws) -> list, resolved cfg
function GDN.params(d, cfg, opts)
  local c = GDN.resolve(d, cfg)
  local L, std = C.scale(opts)
  local H, K, V = c.heads, c.k, c.v
  local lin = { bias = false, init_std = std }
  local conv = c.conv > 0
  return {
    nn.child("q_proj", nn.Linear, d, H * K, lin),
    nn.child("k_proj", nn.Linear, d, H * K, lin),
    nn.child("v_proj", nn.Linear, d, H * V, lin),
    nn.child("a_proj", nn.Linear, d, H, lin),
    nn.child("b_proj", nn.Linear, d, H, lin),
    nn.child("g_proj", nn.Linear, d, H * V, lin),
    conv and { "q_conv", { H * K, c.conv }, C.init_conv(c.conv), decay = true },
    conv and { "k_conv", { H * K, c.conv }, C.init_conv(c.conv), decay = true },
    conv and { "v_conv", { H * V, c.conv }, C.init_conv(c.conv), decay = true },
    { "A_log", { H }, C.init_A_log(c.A_range[1], c.A_range[2]), decay = false },
    { "dt_bias", { H }, C.init_dt_bias(c.dt_min, c.dt_max, c.dt_floor), decay = false },
    nn.child("o_norm", nn.RMSNorm, V, { eps = c.norm_eps }),
    nn.child("out_proj", nn.Linear, H * V, d, { bias = false, init_std = std / math.sqrt(2 * L) }),
  }, c
end

function GDN:__init(d, cfg, opts)
  local list, c = GDN.params(d, cfg, opts)
  self.cfg, self.d = c, d
  self:build(list)
end

-- forward(x [, {state = h0 (B,H,K,V), return_state = false, cache = table}]) -> y (B,T,d) [, hT]
-- With a cache (the step form, DESIGN 9), x continues the positions the cache has seen and the cache is updated in
-- place: q_conv, k_conv, v_conv (B, conv - 1, H K|V) the short convs' last inputs, state (B, H, K, V); state is then
-- ignored. Steps shorter than a chunk run the recurrent form.
function GDN:forward(x, o)
  local c = self.cfg
  local s = x:shape()
  local B, T, H = s[1], s[2], c.heads
  local cache = o and o.cache
  local function branch(proj, w, key)
    local t = proj(x)
    if w and cache then t = C.conv_step(t, w, nil, cache, key)
    elseif w then t = m2.conv1d_causal(t, w) end
    return m2.silu(t)
  end
  local q = m2.l2norm(branch(self.q_proj, self.q_conv, "q_conv"):reshape(B, T, H, c.k), 1e-6)
  local k = m2.l2norm(branch(self.k_proj, self.k_conv, "k_conv"):reshape(B, T, H, c.k), 1e-6)
  local v = branch(self.v_proj, self.v_conv, "v_conv"):reshape(B, T, H, c.v)
  local g = -(m2.exp(self.A_log) * m2.softplus(self.a_proj(x) + self.dt_bias))   -- (B, T, H)
  local beta = m2.sigmoid(self.b_proj(x))
  if c.allow_neg_eigval then beta = beta * 2 end
  local run = (c.chunked and not (cache and T < c.chunk)) and m2.gdn_chunked or m2.gdn
  local h0 = cache and cache.state or (not cache and o and o.state) or nil
  local out, hT = run(q, k, v, g, beta, h0, { chunk = c.chunk })
  if cache then C.cache_set(cache, "state", hT) end
  out = m2.swiglu(self.g_proj(x):reshape(B, T, H, c.v), self.o_norm(out))        -- (B, T, H, V): o_norm(out) * silu(g)
  out = self.out_proj(out:reshape(B, T, H * c.v))
  if o and o.return_state then return out, hT end
  return out
end

function GDN:extra_repr()
  local c = self.cfg
  return string.format("d=%d, H=%d, K=%d, V=%d%s%s, state %d", self.d, c.heads, c.k, c.v,
    c.allow_neg_eigval and ", beta in (0,2)" or "", c.chunked and (", chunked " .. c.chunk) or "", c.state)
end

return GDN
