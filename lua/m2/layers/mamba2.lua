--[==[ m2.layers.mamba2 — the Mamba-2 (SSD) mixer layer (DESIGN 3.3), one B/C group.

  local Mamba2 = require "m2.layers.mamba2"
  local mix = Mamba2(d, { heads = 64, inner = 1216, state = 216 }, { layers = 24 })

Settings: heads (H) = 8, inner (H * P; default 2 d) or head_dim (P), state (N) = 64,
groups (G, B/C groups; divides H) = 1, conv = 4 (with bias; 0 turns it off), chunked = false
(m2.ssd recurrent; true: m2.ssd_chunked with `chunk`), chunk = 256, A_range = {1, 16},
dt_min/dt_max/dt_floor = 1e-3/0.1/1e-4, norm_eps = 1e-5.

Forward, x (B, T, d):
  [z | xBC | dt_raw] = in_proj(x)            (B,T,inner), (B,T,inner + 2 G N), (B,T,H)
  xBC = SiLU(conv1d_causal(xBC, w, bias));  [xs | Bm | Cm] = xBC
  dt = softplus(dt_raw + dt_bias);  A = -exp(A_log)
  y  = ssd(xs, dt, A, Bm, Cm) + D * xs       (B, T, H, P)
  out = out_proj(RMSNorm(y * SiLU(z)))
opts (third argument): layers (L) and init_std = 0.02: projections N(0, init_std), the output
projection N(0, init_std / sqrt(2 L)).
The step form (DESIGN 9): forward(x, {cache = t}) continues the positions t has seen (t = {} at the start), carrying
conv (B, conv - 1, C_xbc) and state (B, H, P, N): the same memory and time for every token.
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local Mamba2 = nn.class("Mamba2")

local DEFAULTS = {
  heads = 8, inner = false, head_dim = false, state = 64, groups = 1, conv = 4, chunked = false, chunk = 256,
  A_range = { 1, 16 }, dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4, norm_eps = 1e-5,
}

function Mamba2.resolve(d, cfg)
  local ctor = "Mamba2"
  C.pos_int(d, "d (model width)", ctor)
  local c = C.resolve(cfg, DEFAULTS, ctor)
  C.pos_int(c.heads, "heads", ctor)
  C.pos_int(c.state, "state (N)", ctor)
  C.pos_int(c.groups, "groups", ctor)
  C.pos_int(c.chunk, "chunk", ctor)
  if c.inner and c.head_dim and c.inner ~= c.heads * c.head_dim then
    m2.error(string.format("Mamba2: inner = %d but heads * head_dim = %d", c.inner, c.heads * c.head_dim))
  end
  c.inner = c.inner or (c.head_dim and c.heads * c.head_dim) or 2 * d
  C.pos_int(c.inner, "inner", ctor)
  if c.inner % c.heads ~= 0 then
    m2.error(string.format("Mamba2: heads = %d does not divide inner = %d", c.heads, c.inner))
  end
  c.P = c.inner // c.heads
  if c.heads % c.groups ~= 0 then
    m2.error(string.format("Mamba2: groups = %d does not divide heads = %d", c.groups, c.heads))
  end
  if math.type(c.conv) ~= "integer" or c.conv < 0 then m2.error("Mamba2: conv must be a kernel size >= 0") end
  c.C_xbc = c.inner + 2 * c.groups * c.state
  c.C_in = c.inner + c.C_xbc + c.heads
  c.state_size = c.heads * c.P * c.state
  return c
end

-- the parameters, once (in the order of the RNG draws) -> list, resolved cfg
function Mamba2.params(d, cfg, opts)
  local c = Mamba2.resolve(d, cfg)
  local L, std = C.scale(opts)
  local conv = c.conv > 0
  return {
    nn.child("in_proj", nn.Linear, d, c.C_in, { bias = false, init_std = std }),
    conv and { "conv_weight", { c.C_xbc, c.conv }, C.init_conv(c.conv), decay = true },
    conv and { "conv_bias", { c.C_xbc }, C.init_conv(c.conv), decay = false },
    { "A_log", { c.heads }, C.init_A_log(c.A_range[1], c.A_range[2]), decay = false },
    { "dt_bias", { c.heads }, C.init_dt_bias(c.dt_min, c.dt_max, c.dt_floor), decay = false },
    { "D", { c.heads }, nn.init.ones, decay = false },
    nn.child("norm", nn.RMSNorm, c.inner, { eps = c.norm_eps }),
    nn.child("out_proj", nn.Linear, c.inner, d, { bias = false, init_std = std / math.sqrt(2 * L) }),
  }, c
end

function Mamba2:__init(d, cfg, opts)
  local list, c = Mamba2.params(d, cfg, opts)
  self.cfg, self.d = c, d
  self:build(list)
end

-- forward(x [, {state = h0 (B,H,P,N), return_state = false, cache = table}]) -> y (B,T,d) [, hT]
-- With a cache (the step form, DESIGN 9), x continues the positions the cache has seen and the cache is updated in
-- place: conv (B, conv - 1, C_xbc) the short conv's last inputs, state (B, H, P, N); state is then ignored. Steps
-- shorter than a chunk run the recurrent form.
function Mamba2:forward(x, o)
  local c = self.cfg
  local s = x:shape()
  local B, T = s[1], s[2]
  local cache = o and o.cache
  local parts = m2.split(self.in_proj(x), 3, { c.inner, c.C_xbc, c.heads })
  local z, xbc, dt_raw = parts[1], parts[2], parts[3]
  if c.conv > 0 then
    if cache then xbc = C.conv_step(xbc, self.conv_weight, self.conv_bias, cache, "conv")
    else xbc = m2.conv1d_causal(xbc, self.conv_weight, self.conv_bias) end
  end
  xbc = m2.silu(xbc)
  local p = m2.split(xbc, 3, { c.inner, c.groups * c.state, c.groups * c.state })
  local xs = p[1]:reshape(B, T, c.heads, c.P)
  local Bm = p[2]:reshape(B, T, c.groups, c.state)
  local Cm = p[3]:reshape(B, T, c.groups, c.state)
  local dt = m2.softplus(dt_raw + self.dt_bias)                       -- (B, T, H)
  local A = -m2.exp(self.A_log)                                       -- (H)
  local run = (c.chunked and not (cache and T < c.chunk)) and m2.ssd_chunked or m2.ssd
  local h0 = cache and cache.state or (not cache and o and o.state) or nil
  local y, hT = run(xs, dt, A, Bm, Cm, h0, { chunk = c.chunk })
  if cache then C.cache_set(cache, "state", hT) end
  y = y + self.D:reshape(c.heads, 1) * xs                             -- (B, T, H, P)
  y = m2.swiglu(z, y:reshape(B, T, c.inner))                          -- y * silu(z), one op
  local out = self.out_proj(self.norm(y))
  if o and o.return_state then return out, hT end
  return out
end

function Mamba2:extra_repr()
  local c = self.cfg
  return string.format("d=%d, H=%d, P=%d, N=%d, G=%d%s, state %d", self.d, c.heads, c.P, c.state, c.groups,
    c.chunked and (", chunked " .. c.chunk) or "", c.state_size)
end

return Mamba2
