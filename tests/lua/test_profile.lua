-- test_profile.lua — m2.profile: op rows for forward and backward calls, the optimizer step and gradient clipping as
-- rows of their own, nested calls counted once (with the outer op), nothing recorded while off, the report table;
-- the timeline mode (start{timeline = true}: spans, totals, its report) and experiments/step_time.lua profile=2 on a
-- tiny CPU model.
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

T.case("timeline mode: rows with spans, totals, the report", function()
  m2.seed(4)
  local w = m2.randn(16, 12, { requires_grad = true })
  local x = m2.randn(8, 16)
  m2.profile.start { timeline = true }
  T.eq(m2.core.profile_mode(), 2, "timeline mode")
  for _ = 1, 2 do
    m2.sum_all(m2.tanh(m2.matmul(x, w))):backward()
    m2.core.sleep(0.01) -- 10 ms without an op: a gap
  end
  m2.profile.stop()
  T.eq(m2.core.profile_mode(), 0, "stop: off")
  local mm = row("matmul")
  T.ok(mm and mm.fwd_calls == 2 and mm.bwd_calls == 2, "two matmul calls each way")
  T.ok(mm.fwd_gpu_s > 0 and mm.fwd_gpu_s == mm.fwd_s, "CPU: the span is the host time, > 0")
  local t = m2.profile.timeline()
  T.eq(t.device, "cpu")
  local calls = 0
  for _, r in ipairs(m2.profile.rows()) do calls = calls + r.fwd_calls + r.bwd_calls end
  T.eq(t.calls, calls, "the totals count every call (all on the host clock)")
  T.ok(t.gaps_s >= 0.008, "the sleep between the two steps is a gap: " .. t.gaps_s)
  T.ok(math.abs(t.spans_s + t.gaps_s - t.window_s) <= 1e-9 + 1e-9 * t.window_s, "spans + gaps = window")
  local rep = m2.profile.report { per = 2 }
  T.ok(rep:find("| op | calls fwd | calls bwd | GPU ms fwd |", 1, true), rep)
  T.ok(rep:find("| matmul | 1 | 1 |", 1, true), "calls divided by per = 2: " .. rep)
  T.ok(rep:find("timeline on cpu, per step: window", 1, true) and rep:find("% of the window", 1, true), rep)
  T.ok(m2.profile.report { per = 2, timeline = false }:find("| ms total |", 1, true), "the sync table on request")
  m2.profile.start()
  T.eq(m2.core.profile_mode(), 1, "start(): sync mode again")
  T.eq(m2.profile.timeline().calls, 0, "start forgets the timeline")
  T.ok(m2.profile.report():find("| ms total |", 1, true), "sync mode: the sync table")
  m2.profile.stop()
  T.raises(function() m2.core.profile_mode(3) end, "mode must be 0")
end)

T.case("memory: the most held during a row's calls, and the most one call raised it", function()
  m2.seed(5)
  local h, w = m2.randn(32, 16), m2.randn(1000, 16)
  local t = m2.randint(1000, 32)
  for _, tl in ipairs { false, true } do
    local before = m2.core.mem_current("cpu")
    m2.profile.start { timeline = tl }
    -- chunks of 8 rows: each chunk's (8, 1000) f32 logits (32000 bytes) live only inside the call, and its result
    -- is a scalar: the rise is the transients', far above what the call leaves behind
    local loss = m2.linear_cross_entropy(h, w, t, -100, 8)
    local after = m2.core.mem_current("cpu")
    local y = m2.matmul(h, m2.randn(16, 256)) -- holds (32, 256) f32 = 32768 bytes more from here
    m2.profile.stop()
    local lce, mm = row("linear_cross_entropy"), row("matmul")
    T.ok(lce.mem_rise_b >= 32000, "the chunk's logits are in the rise: " .. lce.mem_rise_b)
    T.ok(lce.mem_peak_b >= before + 32000, "peak >= held before + the rise")
    T.ok(after - before < lce.mem_rise_b / 4, "the transients were freed: " .. (after - before))
    T.ok(mm.mem_rise_b >= 32768, "the product's output is in its rise: " .. mm.mem_rise_b)
    T.ok(mm.mem_peak_b >= before + 32768 and mm.mem_peak_b <= m2.core.mem_peak("cpu"), "within the process's peak")
    local rep = m2.profile.report()
    T.ok(rep:find("| peak GiB | rise MiB |", 1, true), rep)
    local who = rep:match("memory: the most held, [%d.]+ GiB, during a call of (%S+) ")
    local top = lce.mem_peak_b >= mm.mem_peak_b and "linear_cross_entropy" or "matmul"
    T.eq(who, top, "the line names the row with the highest peak: " .. rep)
    loss:release()
    y:release()
  end
end)

T.case("step_time.lua profile=2 on the CPU: the timeline report and the idle line", function()
  local out = T.temp_path(".h5")
  local code, text = T.run_m2lab(string.format("run %s/experiments/step_time.lua layers=MA d=32 vocab=64 batch=1 " ..
    "len=16 steps=3 warmup=1 profile=2 out=%s", m2.source_dir or ".", out))
  os.remove(out)
  T.eq(code, 0, text)
  T.ok(text:find("median step", 1, true), text)
  T.ok(text:find("ops by GPU time per step over 2 profiled step(s)", 1, true), text)
  T.ok(text:find("| (optimizer step) | 1 | 0 |", 1, true), "one optimizer step per step: " .. text)
  T.ok(text:find("timeline on cpu, per step: window", 1, true), text)
  local gap, win = text:match("GPU idle between ops: ([%d.]+) ms of ([%d.]+) ms")
  T.ok(gap and win and tonumber(win) > 0 and tonumber(gap) >= 0 and tonumber(gap) <= tonumber(win), text)
  T.ok(not text:find("what the autograd tape holds", 1, true), "no tape table in timeline mode")
end)

T.finish()
