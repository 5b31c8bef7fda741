-- m2.profile — where the time goes, op by op (core/profile.h), in one of two modes.
--
-- Sync mode (the default): every op's forward and backward synchronises its device before and after, so each op's
-- time is its own (device and host work, no overlap) and the profiled steps run slower than unprofiled ones: read
-- the shares, not the sum.
--
-- Timeline mode (start{timeline = true}): nothing is synchronised per op. The outermost op calls' begin and end
-- put a timestamp on the device's stream (a CUDA event; on the CPU the host clock stands in) and read the host
-- clock; the timestamps are resolved when the rows are read (that waits for the device once), or mid-run when the
-- pool of 8192 calls is full (a flush: it synchronises mid-step; the time across it is left out of the totals).
-- Each row then has its calls' spans on the device's stream (GPU ms: from the stream reaching the call's begin mark
-- to it passing the end mark) and the host's time to issue them (host ms); the totals say how long the stream sat
-- between op spans: the GPU waiting for the host, or running work outside any op call (host <-> device copies,
-- gradient zeroing). Those gaps bound what a CUDA graph could save; idle time inside an op's span (between the
-- kernels of one op, while the host works) is not in them, so they are a lower bound on the GPU's idle time. The
-- marks cost the host two event records per call (microseconds), outside the host ms but inside the gaps when the
-- GPU waits for the host: compare the profiled steps' time with unprofiled ones.
--
--   m2.profile.start{timeline = false}  forget earlier rows and turn profiling on (sync mode, or timeline mode)
--   m2.profile.stop()             turn it off (the rows stay)
--   m2.profile.rows() -> { {op, fwd_calls, fwd_s, bwd_calls, bwd_s, fwd_gpu_s, bwd_gpu_s, gap_s, mem_peak_b,
--                                 mem_rise_b}, ... } largest total first (timeline mode: fwd_s / bwd_s are host issue
--                                 times, *_gpu_s the spans, gap_s the gaps that ended at the row's calls: where the GPU
--                                 waited; both modes: mem_peak_b the most bytes held on the device at any moment of
--                                 the row's calls, mem_rise_b the most one call raised that above what it began with)
--   m2.profile.timeline() -> {device, calls, flushes, window_s, spans_s, gaps_s, host_s} timeline mode's totals
--                                 over the op calls on the timeline's device (m2.core.profile_timeline)
--   m2.profile.report{per = 1, top = 25, title = nil, timeline = (the last start's mode)} -> a markdown table
--                                 (times divided by `per`, e.g. the number of profiled steps; the ops past `top`
--                                 summed in one line); in timeline mode the table has calls, GPU ms, host ms
--                                 and the gap ms just before the row's calls per row, and a summary line after it: window ms, op spans ms, gaps ms and their
--                                 share of the window, host issue ms, op calls (all per `per`); both tables end
--                                 with the peak GiB / rise MiB columns (mem_peak_b, mem_rise_b) and a line naming
--                                 the op during whose call the most memory was held
--   m2.profile.casts() -> { {op, fwd_calls, fwd_bytes, bwd_calls, bwd_bytes}, ... } the dispatcher's bf16
--                                 conversions (their time is the to_dtype row) by the op whose call needed them
--   m2.profile.cast_report{per = 1, title = nil} -> a markdown table of those (calls and MiB divided by `per`),
--                                 nil when there were none
--
-- What the autograd tape holds at this moment (core/autograd.h, m2_tape_rows; e.g. between a step's forward and its
-- backward): the bytes of the buffers behind the live nodes' tensors, each buffer once, by the op that recorded the
-- node, the role of the tensor there (input: retained input; param: input that is a parameter, held by the model
-- anyway; saved: kept by the forward for the backward; output: kept output; grad: pending output gradient, during a
-- backward) and its dtype. A buffer held several times is counted in its first holder's row (parameters first, then
-- the nodes oldest first).
--   m2.profile.tape() -> rows { {op, role, dtype, bytes, buffers, refs}, ... } most bytes first,
--                        totals {nodes, bytes, param_bytes, buffers, refs}
--   m2.profile.tape_report{top = 30, title = nil} -> a markdown table (MiB; the rows past `top` summed in one line)
local core = require "m2.core"
local P = {}
local timeline = false -- the mode of the last start

function P.start(o)
  o = o or {}
  if type(o) ~= "table" then error("m2.profile.start: expects a table of options or nothing", 2) end
  core.profile_reset()
  timeline = o.timeline and true or false
  if timeline then core.profile_mode(2) else core.profile_enable(true) end
end

function P.stop() core.profile_enable(false) end

function P.rows() return core.profile_rows() end

function P.timeline() return core.profile_timeline() end

-- the memory columns of a row and the line naming the op that held the most
local function mem_cells(r)
  return string.format(" %.2f | %.1f |", (r.mem_peak_b or 0) / 2 ^ 30, (r.mem_rise_b or 0) / 2 ^ 20)
end
local function mem_line(rows)
  local top
  for _, r in ipairs(rows) do if not top or (r.mem_peak_b or 0) > (top.mem_peak_b or 0) then top = r end end
  if not top or (top.mem_peak_b or 0) <= 0 then return nil end
  return string.format("memory: the most held, %.2f GiB, during a call of %s (which raised it by up to %.1f MiB)",
    top.mem_peak_b / 2 ^ 30, top.op, top.mem_rise_b / 2 ^ 20)
end

-- timeline mode's table: calls, GPU ms (spans) and host ms per row, then the summary line
local function timeline_report(o, per, top)
  local rows, t = core.profile_rows(), core.profile_timeline()
  local total = 0
  for _, r in ipairs(rows) do total = total + r.fwd_gpu_s + r.bwd_gpu_s end
  local out = {}
  if o.title then out[#out + 1] = o.title end
  out[#out + 1] = "| op | calls fwd | calls bwd | GPU ms fwd | GPU ms bwd | GPU ms | host ms | GPU share | gap ms before " ..
    "| peak GiB | rise MiB |"
  out[#out + 1] = "|---|---|---|---|---|---|---|---|---|---|---|"
  local function line(name, fc, bc, fg, bg, h, gp, mem)
    out[#out + 1] = string.format("| %s | %g | %g | %.2f | %.2f | %.2f | %.2f | %.1f%% | %.2f |", name, fc / per,
      bc / per, fg * 1e3 / per, bg * 1e3 / per, (fg + bg) * 1e3 / per, h * 1e3 / per,
      total > 0 and 100 * (fg + bg) / total or 0, gp * 1e3 / per) .. (mem or " | |")
  end
  local rest, host, gaps = { 0, 0, 0, 0, 0, 0, 0 }, 0, 0
  for i, r in ipairs(rows) do
    host, gaps = host + r.fwd_s + r.bwd_s, gaps + (r.gap_s or 0)
    if i <= top then
      line(r.op, r.fwd_calls, r.bwd_calls, r.fwd_gpu_s, r.bwd_gpu_s, r.fwd_s + r.bwd_s, r.gap_s or 0, mem_cells(r))
    else
      rest[1], rest[2], rest[3] = rest[1] + 1, rest[2] + r.fwd_calls, rest[3] + r.bwd_calls
      rest[4], rest[5], rest[6] = rest[4] + r.fwd_gpu_s, rest[5] + r.bwd_gpu_s, rest[6] + r.fwd_s + r.bwd_s
      rest[7] = rest[7] + (r.gap_s or 0)
    end
  end
  if rest[1] > 0 then
    line(string.format("(%d more ops)", rest[1]), rest[2], rest[3], rest[4], rest[5], rest[6], rest[7])
  end
  out[#out + 1] = string.format("| all | | | | | %.2f | %.2f | 100%% | %.2f | | |", total * 1e3 / per,
    host * 1e3 / per, gaps * 1e3 / per)
  out[#out + 1] = string.format("timeline on %s, per step: window %.2f ms, op spans %.2f ms, gaps %.2f ms (%.1f%% of " ..
    "the window: the GPU waiting for the host, or on work outside op calls such as copies and gradient zeroing), " ..
    "host issue %.2f ms, %g op calls%s", t.device, t.window_s * 1e3 / per, t.spans_s * 1e3 / per, t.gaps_s * 1e3 / per,
    t.window_s > 0 and 100 * t.gaps_s / t.window_s or 0, t.host_s * 1e3 / per, t.calls / per,
    t.flushes > 0 and string.format(" (%d mid-run flush(es) of the mark pool, each a synchronisation: the time " ..
      "across them is left out)", t.flushes) or "")
  out[#out + 1] = mem_line(rows)
  return table.concat(out, "\n")
end

function P.report(o)
  o = o or {}
  local per, top = o.per or 1, o.top or 25
  if type(per) ~= "number" or per <= 0 then error("m2.profile.report: per must be a number > 0", 2) end
  local tl = o.timeline
  if tl == nil then tl = timeline end
  if tl then return timeline_report(o, per, top) end
  local rows, total = core.profile_rows(), 0
  for _, r in ipairs(rows) do total = total + r.fwd_s + r.bwd_s end
  local out = {}
  if o.title then out[#out + 1] = o.title end
  out[#out + 1] = "| op | calls fwd | ms fwd | calls bwd | ms bwd | ms total | share | peak GiB | rise MiB |"
  out[#out + 1] = "|---|---|---|---|---|---|---|---|---|"
  local function line(name, fc, fs, bc, bs, mem)
    local t = fs + bs
    out[#out + 1] = string.format("| %s | %g | %.2f | %g | %.2f | %.2f | %.1f%% |", name, fc / per, fs * 1e3 / per,
      bc / per, bs * 1e3 / per, t * 1e3 / per, total > 0 and 100 * t / total or 0) .. (mem or " | |")
  end
  local rest = { 0, 0, 0, 0, 0 }
  for i, r in ipairs(rows) do
    if i <= top then line(r.op, r.fwd_calls, r.fwd_s, r.bwd_calls, r.bwd_s, mem_cells(r))
    else
      rest[1], rest[2], rest[3], rest[4], rest[5] = rest[1] + 1, rest[2] + r.fwd_calls, rest[3] + r.fwd_s,
        rest[4] + r.bwd_calls, rest[5] + r.bwd_s
    end
  end
  if rest[1] > 0 then line(string.format("(%d more ops)", rest[1]), rest[2], rest[3], rest[4], rest[5]) end
  out[#out + 1] = string.format("| all | | | | | %.2f | 100%% | | |", total * 1e3 / per)
  out[#out + 1] = mem_line(rows)
  return table.concat(out, "\n")
end

function P.casts() return core.profile_cast_rows() end

function P.cast_report(o)
  o = o or {}
  local per = o.per or 1
  if type(per) ~= "number" or per <= 0 then error("m2.profile.cast_report: per must be a number > 0", 2) end
  local rows = core.profile_cast_rows()
  if #rows == 0 then return nil end
  local out = {}
  if o.title then out[#out + 1] = o.title end
  out[#out + 1] = "| to_dtype for | calls fwd | MiB fwd | calls bwd | MiB bwd |"
  out[#out + 1] = "|---|---|---|---|---|"
  local t = { 0, 0, 0, 0 }
  for _, r in ipairs(rows) do
    out[#out + 1] = string.format("| %s | %g | %.1f | %g | %.1f |", r.op, r.fwd_calls / per,
      r.fwd_bytes / per / 2 ^ 20, r.bwd_calls / per, r.bwd_bytes / per / 2 ^ 20)
    t[1], t[2], t[3], t[4] = t[1] + r.fwd_calls, t[2] + r.fwd_bytes, t[3] + r.bwd_calls, t[4] + r.bwd_bytes
  end
  out[#out + 1] = string.format("| all | %g | %.1f | %g | %.1f |", t[1] / per, t[2] / per / 2 ^ 20, t[3] / per,
    t[4] / per / 2 ^ 20)
  return table.concat(out, "\n")
end

function P.tape() return core.tape_rows() end

function P.tape_report(o)
  o = o or {}
  local top = o.top or 30
  if type(top) ~= "number" or top < 0 then error("m2.profile.tape_report: top must be a number >= 0", 2) end
  local rows, tot = core.tape_rows()
  local mib = 2 ^ 20
  local out = {}
  if o.title then out[#out + 1] = o.title end
  out[#out + 1] = "| op | role | dtype | MiB | buffers | refs | share |"
  out[#out + 1] = "|---|---|---|---|---|---|---|"
  local function line(op, role, dtype, bytes, buffers, refs)
    out[#out + 1] = string.format("| %s | %s | %s | %.2f | %d | %d | %.1f%% |", op, role, dtype, bytes / mib, buffers,
      refs, tot.bytes > 0 and 100 * bytes / tot.bytes or 0)
  end
  local rest = { 0, 0, 0, 0 }
  for i, r in ipairs(rows) do
    if i <= top then line(r.op, r.role, r.dtype, r.bytes, r.buffers, r.refs)
    else rest[1], rest[2], rest[3], rest[4] = rest[1] + 1, rest[2] + r.bytes, rest[3] + r.buffers, rest[4] + r.refs end
  end
  if rest[1] > 0 then line(string.format("(%d more rows)", rest[1]), "", "", rest[2], rest[3], rest[4]) end
  out[#out + 1] = string.format("| all (%d nodes) | | | %.2f | %d | %d | 100%% |", tot.nodes, tot.bytes / mib,
    tot.buffers, tot.refs)
  out[#out + 1] = string.format("| all but parameters | | | %.2f | | | %.1f%% |", (tot.bytes - tot.param_bytes) / mib,
    tot.bytes > 0 and 100 * (tot.bytes - tot.param_bytes) / tot.bytes or 0)
  return table.concat(out, "\n")
end

return P
