-- test_profile.lua — m2.profile: op rows for forward and backward calls, the optimizer step and gradient clipping as
-- rows of their own, nested calls counted once (with the outer op), nothing recorded while off, the report table.
local m2 = require "m2"
local T = m2.test

local function row(name)
  for _, r in ipairs(m2.profile.rows()) do
    if r.op == name then return r end
  end
end

T.case("ops, backward, optimizer and clipping are rows", function()
  m2.seed(3)
  local w = m2.randn(8, 5, { requires_grad = true })
  local x = m2.randn(4, 8)
  local opt = m2.optim.adamw { params = { w }, lr = 1e-2 }
  m2.profile.start()
  local y = m2.matmul(x, w)      -- 1 matmul forward
  local l = m2.sum_all(m2.tanh(y))
  l:backward()                   -- 1 matmul backward, 1 tanh backward
  m2.optim.clip_grad_norm({ w }, 1.0)
  opt:step()
  m2.profile.stop()
  local mm, th = row("matmul"), row("tanh")
  T.ok(mm and th, "matmul and tanh have rows")
  T.eq(mm.fwd_calls, 1, "one matmul forward")
  T.eq(mm.bwd_calls, 1, "one matmul backward (its inner ops are not counted again)")
  T.eq(th.fwd_calls, 1)
  T.eq(th.bwd_calls, 1)
  T.ok(mm.fwd_s >= 0 and mm.bwd_s >= 0, "times are not negative")
  local o, c = row("(optimizer step)"), row("(clip_grad_norm)")
  T.ok(o and o.fwd_calls == 1, "the optimizer step is one row")
  T.ok(c and c.fwd_calls == 1, "gradient clipping is one row")
  -- rows come largest total first
  local rows, last = m2.profile.rows(), math.huge
  for _, r in ipairs(rows) do
    T.ok(r.fwd_s + r.bwd_s <= last, "sorted by total time")
    last = r.fwd_s + r.bwd_s
  end
  -- off: nothing more is recorded
  local z = m2.matmul(x, w)
  T.eq(row("matmul").fwd_calls, 1, "no rows while off")
  local rep = m2.profile.report { per = 2, top = 2 }
  T.ok(rep:find("| matmul |", 1, true) or rep:find("more ops", 1, true), "report names ops")
  T.ok(rep:find("| all |", 1, true), "report has a total line")
  T.ok(rep:find("0.5 |", 1, true), "calls divided by per = 2")
  T.raises(function() m2.profile.report { per = 0 } end, "per must be a number > 0")
  m2.profile.start()
  T.eq(#m2.profile.rows(), 0, "start forgets earlier rows")
  m2.profile.stop()
  z:release()
end)

T.case("the bf16 conversions by the op that caused them", function()
  -- on the CPU every call with a bf16 input runs on f32 copies: a conv1d of a bf16 x with an f32 weight converts x
  -- and rounds y (forward), converts dy and rounds dx (backward)
  local x = m2.randn({ 2, 5, 3 }):to("bf16"):requires_grad(true)
  local w = m2.randn({ 3, 4 }):requires_grad(true)
  m2.profile.start()
  m2.sum_all(m2.conv1d_causal(x, w):to("f32")):backward()
  m2.profile.stop()
  local casts = m2.profile.casts()
  T.eq(#casts, 1, "one op caused conversions (a :to() asked for by name is not counted)")
  T.eq(casts[1].op, "conv1d_causal")
  T.eq(casts[1].fwd_calls, 2, "x to f32, y to bf16")
  T.eq(casts[1].bwd_calls, 2, "dy to f32, dx to bf16")
  T.eq(casts[1].fwd_bytes, 30 * 4 + 30 * 2, "bytes of the copies made")
  local rep = m2.profile.cast_report { per = 2 }
  T.ok(rep:find("| conv1d_causal | 1 |", 1, true), "report: calls divided by per = 2")
  m2.profile.start()
  T.eq(m2.profile.cast_report(), nil, "no conversions: no table")
  m2.profile.stop()
end)

T.finish()
