-- m2.profile — where the time goes, op by op (core/profile.h). While on, every op's forward and backward
-- synchronises its device before and after, so each op's time is its own (device and host work, no overlap) and
-- the profiled steps run slower than unprofiled ones: read the shares, not the sum.
--
--   m2.profile.start()            forget earlier rows and turn profiling on
--   m2.profile.stop()             turn it off (the rows stay)
--   m2.profile.rows() -> { {op, fwd_calls, fwd_s, bwd_calls, bwd_s}, ... } largest total time first
--   m2.profile.report{per = 1, top = 25, title = nil} -> a markdown table (times divided by `per`, e.g. the
--                                 number of profiled steps; the ops past `top` summed in one line)
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

function P.start()
  core.profile_reset()
  core.profile_enable(true)
end

function P.stop() core.profile_enable(false) end

function P.rows() return core.profile_rows() end

function P.report(o)
  o = o or {}
  local per, top = o.per or 1, o.top or 25
  if type(per) ~= "number" or per <= 0 then error("m2.profile.report: per must be a number > 0", 2) end
  local rows, total = core.profile_rows(), 0
  for _, r in ipairs(rows) do total = total + r.fwd_s + r.bwd_s end
  local out = {}
  if o.title then out[#out + 1] = o.title end
  out[#out + 1] = "| op | calls fwd | ms fwd | calls bwd | ms bwd | ms total | share |"
  out[#out + 1] = "|---|---|---|---|---|---|---|"
  local function line(name, fc, fs, bc, bs)
    local t = fs + bs
    out[#out + 1] = string.format("| %s | %g | %.2f | %g | %.2f | %.2f | %.1f%% |", name, fc / per, fs * 1e3 / per,
      bc / per, bs * 1e3 / per, t * 1e3 / per, total > 0 and 100 * t / total or 0)
  end
  local rest = { 0, 0, 0, 0, 0 }
  for i, r in ipairs(rows) do
    if i <= top then line(r.op, r.fwd_calls, r.fwd_s, r.bwd_calls, r.bwd_s)
    else
      rest[1], rest[2], rest[3], rest[4], rest[5] = rest[1] + 1, rest[2] + r.fwd_calls, rest[3] + r.fwd_s,
        rest[4] + r.bwd_calls, rest[5] + r.bwd_s
    end
  end
  if rest[1] > 0 then line(string.format("(%d more ops)", rest[1]), rest[2], rest[3], rest[4], rest[5]) end
  out[#out + 1] = string.format("| all | | | | | %.2f | 100%% |", total * 1e3 / per)
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
