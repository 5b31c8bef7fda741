--[==[ m2.layers.m2rnn — the M2RNN mixer layer (DESIGN 3.1): projections, short conv, gate,
the non-linear matrix-state recurrence m2.m2rnn, D skip, output gate, norm, out_proj.

  local M2RNN = require "m2.layers.m2rnn"
  local mix = M2RNN(d, { k = 64, v = 16, heads = 84, q_heads = 1, k_heads = 1 }, { layers = 24 })
  local y = mix(x)                 -- x (B, T, d) -> y (B, T, d)
  local y, hT = mix:forward(x, { state = h0, return_state = true })   -- hT (B, N, K, V)
  local cache = {}                                                      -- the step form (DESIGN 9):
  local y1 = mix:forward(x1, { cache = cache })   -- x1 (B, T1, d) ...
  local y2 = mix:forward(x2, { cache = cache })   -- ... then x2 continues it: y2 = the last T2 rows of mix(x1 ++ x2)
  -- cache.conv (B, conv - 1, C_qkv) the short conv's last inputs, cache.state (B, N, K, V): constant memory per token

Settings (cfg): k (K) = 64, v (V) = 16, heads = 8 (the default for Nv, Nf, Ng, Nw),
q_heads = 1, k_heads = 1, v_heads, f_heads, g_heads, w_heads (each divides N = max of them),
conv = 4 (kernel; 0 turns the short conv off), grad_clip = 1 (state-gradient clipping; 0 off),
ckpt (CUDA: steps between the states kept for the backward, a multiple of 8; unset: the op's default, 8
(M2_M2RNN_CKPT_EVERY in core/ops_mixers.h); 16 halves the memory for a ~10% slower step (400M hybrid-m2rnn, B 4,
one H100: 311.8 against 283.9 ms); 64 keeps 1/8 of that memory, 1.4 GB -> 176 MB a layer at the 400M shape B=8 T=4096, for a ~25%
slower recurrence backward),
A_range = {0, 16}, dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4, norm_eps = 1e-5.
opts: layers (L) scales the out_proj init N(0, init_std / sqrt(2 L)); init_std = 0.02 (projections).

Forward, x (B, T, d):
  [qkv | f_raw | g] = in_proj(x)                      (B,T,Nq K + Nk K + Nv V), (B,T,Nf), (B,T,Ng V)
  qkv = SiLU(conv1d_causal(qkv, conv_weight))
  f   = exp(-exp(A_log) * softplus(f_raw + dt_bias))  (B, T, Nf)
  y   = m2rnn(q, k, v, W, f) + D * v                  (B, T, N, V)
  out = out_proj(RMSNorm(y * SiLU(g)))                norm over N V
]==]

local m2 = require "m2"
local nn = m2.nn
local C = require "m2.layers.common"

local M2RNN = nn.class("M2RNN")

local DEFAULTS = {
  k = 64, v = 16, heads = 8, q_heads = 1, k_heads = 1, v_heads = false, f_heads = false, g_heads = false,
  w_heads = false, conv = 4, grad_clip = 1.0, ckpt = false, A_range = { 0, 16 }, dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4,
  norm_eps = 1e-5,
}

-- resolve and check the settings -> cfg with Nq, Nk, Nv, Nf, Ng, Nw, N filled in
function M2RNN.resolve(d, cfg)
  local ctor = "M2RNN"
  C.pos_int(d, "d (model width)", ctor)
  local c = C.resolve(cfg, DEFAULTS, ctor)
  C.pos_int(c.k, "k (key dim K)", ctor)
  C.pos_int(c.v, "v (value dim V)", ctor)
  C.pos_int(c.heads, "heads", ctor)
  c.Nq, c.Nk = C.pos_int(c.q_heads, "q_heads", ctor), C.pos_int(c.k_heads, "k_heads", ctor)
  c.Nv = C.pos_int(c.v_heads or c.heads, "v_heads", ctor)
  c.Nf = C.pos_int(c.f_heads or c.heads, "f_heads", ctor)
  c.Ng = C.pos_int(c.g_heads or c.heads, "g_heads", ctor)
  c.Nw = C.pos_int(c.w_heads or c.heads, "w_heads", ctor)
  c.N = math.max(c.Nq, c.Nk, c.Nv, c.Nf, c.Ng, c.Nw)
  for _, h in ipairs { { c.Nq, "q_heads" }, { c.Nk, "k_heads" }, { c.Nv, "v_heads" }, { c.Nf, "f_heads" },
                       { c.Ng, "g_heads" }, { c.Nw, "w_heads" } } do
    C.divides(h[1], c.N, h[2], ctor)
  end
  if math.type(c.conv) ~= "integer" or c.conv < 0 then m2.error("M2RNN: conv must be a kernel size >= 0") end
  if c.ckpt ~= false then -- false: the op's default
    C.pos_int(c.ckpt, "ckpt (steps between kept states)", ctor)
    if c.ckpt % 8 ~= 0 then -- the fast CUDA kernels replay sub-chunks of 8 steps (M2R_BWD_SC, cuda/m2rnn_dev.cuh)
      m2.error(string.format("%s: ckpt = %d is not a multiple of 8: the fast CUDA kernels keep a state every 8, 16, "
        .. "24, ... steps; any other spacing runs the general kernels, ~7x slower a step (ckpt = 12 on the 400M "
        .. "hybrid-m2rnn, one H100: 1958 ms against 292 ms)", ctor, c.ckpt))
    end
  end
  c.C_qkv = c.Nq * c.k + c.Nk * c.k + c.Nv * c.v
  c.C_in = c.C_qkv + c.Nf + c.Ng * c.v
  c.state = c.N * c.k * c.v
  return c
end

-- the parameters, once: in_proj, the short conv, W = identity per head, A_log, dt_bias, D = 1, norm, out_proj
-- (in the order of the RNG draws) -> list, resolved cfg
function M2RNN.params(d, cfg, opts)
  local c = M2RNN.resolve(d, cfg)
  local L, std = C.scale(opts)
  return {
    nn.child("in_proj", nn.Linear, d, c.C_in, { bias = false, init_std = std }),
    c.conv > 0 and { "conv_weight", { c.C_qkv, c.conv }, C.init_conv(c.conv), decay = true },
    { "W", { c.Nw, c.v, c.v }, C.init_eye, decay = true },
    { "A_log", { c.Nf }, C.init_A_log(c.A_range[1], c.A_range[2]), decay = false },
    { "dt_bias", { c.Nf }, C.init_dt_bias(c.dt_min, c.dt_max, c.dt_floor), decay = false },
    { "D", { c.N, c.v }, nn.init.ones, decay = false },
    nn.child("norm", nn.RMSNorm, c.N * c.v, { eps = c.norm_eps }),
    nn.child("out_proj", nn.Linear, c.N * c.v, d, { bias = false, init_std = std / math.sqrt(2 * L) }),
  }, c
end

function M2RNN:__init(d, cfg, opts)
  local list, c = M2RNN.params(d, cfg, opts)
  self.cfg, self.d = c, d
  self:build(list)
end

-- forward(x [, {state = h0 (B,N,K,V), return_state = false, cache = table}]) -> y (B,T,d) [, hT]
-- With a cache, x continues the positions the cache has seen (its conv window and state, {} for a fresh sequence),
-- and the cache is updated in place; state is then ignored (the cache's state is used).
function M2RNN:forward(x, o)
  local c = self.cfg
  local s = x:shape()
  local B, T = s[1], s[2]
  local cache = o and o.cache
  local parts = m2.split(self.in_proj(x), 3, { c.C_qkv, c.Nf, c.Ng * c.v })
  local qkv, f_raw, g = parts[1], parts[2], parts[3]
  if c.conv > 0 then
    if cache then qkv = C.conv_step(qkv, self.conv_weight, nil, cache, "conv")
    else qkv = m2.conv1d_causal(qkv, self.conv_weight) end
  end
  qkv = m2.silu(qkv)
  local p = m2.split(qkv, 3, { c.Nq * c.k, c.Nk * c.k, c.Nv * c.v })
  local q = p[1]:reshape(B, T, c.Nq, c.k)
  local k = p[2]:reshape(B, T, c.Nk, c.k)
  local v = p[3]:reshape(B, T, c.Nv, c.v)
  -- f = exp(-exp(A_log) * softplus(f_raw + dt_bias))   (B, T, Nf)
  local f = m2.exp(-(m2.exp(self.A_log) * m2.softplus(f_raw + self.dt_bias)))
  local h0 = cache and cache.state or (not cache and o and o.state) or nil
  local y, hT = m2.m2rnn(q, k, v, self.W, f, h0, { grad_clip = c.grad_clip, ckpt_every = c.ckpt or nil })
  if cache then C.cache_set(cache, "state", hT) end
  y = y + self.D * C.repeat_heads(v, c.N)                                     -- (B, T, N, V)
  -- y * silu(g), one op
  y = m2.swiglu(C.repeat_heads(g:reshape(B, T, c.Ng, c.v), c.N):reshape(B, T, c.N * c.v), y:reshape(B, T, c.N * c.v))
  local out = self.out_proj(self.norm(y))
  if o and o.return_state then return out, hT end
  return out
end

function M2RNN:extra_repr()
  local c = self.cfg
  return string.format("d=%d, K=%d, V=%d, N=%d (q %d, k %d, v %d, f %d, g %d, w %d), state %d", self.d, c.k, c.v, c.N,
    c.Nq, c.Nk, c.Nv, c.Nf, c.Ng, c.Nw, c.state)
end

return M2RNN
