-- test_tape_memory.lua — m2.profile.tape / tape_report: what the live autograd tape holds, each buffer once, by op,
-- role and dtype, on a graph whose bytes are worked out by hand; nothing after the backward.
local m2 = require "m2"
local T = m2.test

local function row(rows, op, role, dtype)
  for _, r in ipairs(rows) do
    if r.op == op and r.role == role and r.dtype == dtype then return r end
  end
end

-- drop: the nodes keep only the metadata of the inputs their backward never reads (the default) or everything
local function tiny(drop)
  local was = m2.core.tape_drop_unread(drop)
  collectgarbage("collect")
  local rows0, tot0 = m2.profile.tape()
  T.eq(#rows0, 0, "nothing held before")
  T.eq(tot0.bytes, 0)
  local w = m2.full({ 8, 5 }, 0.1, { requires_grad = true }) -- parameter, 160 bytes
  local x = m2.full({ 4, 8 }, 0.5)                           -- 128 bytes, no grad
  local y = m2.matmul(x, w)                                  -- (4, 5): 80 bytes, tanh's input (its backward reads
                                                             -- only the output: dropped)
  local t = m2.tanh(y)                                       -- tanh keeps its output: 80 bytes
  local l = m2.sum_all(t)                                    -- holds t (dropped; else the buffer tanh keeps)
  local rows, tot = m2.profile.tape()
  local function expect(op, role, dtype, bytes, buffers, refs)
    local r = row(rows, op, role, dtype)
    T.ok(r, string.format("a row %s / %s / %s", op, role, dtype))
    if r then
      T.eq(r.bytes, bytes, op .. " / " .. role .. " bytes")
      T.eq(r.buffers, buffers, op .. " / " .. role .. " buffers")
      T.eq(r.refs, refs, op .. " / " .. role .. " refs")
    end
  end
  expect("matmul", "param", "f32", 160, 1, 1)
  expect("matmul", "input", "f32", 128, 1, 1)
  expect("tanh", "output", "f32", 80, 1, 1)
  T.eq(tot.nodes, 3, "three live nodes")
  T.eq(tot.param_bytes, 160, "of which the parameter")
  if drop then
    T.eq(#rows, 3, "tanh's and sum_all's inputs hold no data")
    T.eq(tot.bytes, 160 + 128 + 80, "each buffer once")
    T.eq(tot.buffers, 3)
  else
    expect("tanh", "input", "f32", 80, 1, 1)
    expect("sum_all", "input", "f32", 0, 0, 1)
    T.eq(tot.bytes, 160 + 128 + 80 + 80, "each buffer once")
    T.eq(tot.buffers, 4)
  end
  local rep = m2.profile.tape_report { title = "tape" }
  T.ok(rep:find("| tanh | output | f32 | 0.00 | 1 | 1 |", 1, true), "the report has the rows")
  T.ok(rep:find("| all (3 nodes) |", 1, true), "and the totals")
  T.raises(function() m2.profile.tape_report { top = -1 } end, "top must be a number >= 0")
  l:backward()
  rows, tot = m2.profile.tape()
  T.eq(#rows, 0, "the backward released what the nodes held")
  T.eq(tot.bytes, 0)
  local g = w.grad:clone()
  w:release(); x:release(); y:release(); t:release(); l:release()
  m2.core.tape_drop_unread(was)
  return g
end

T.case("a tiny graph's tape, by hand, inputs kept whole", function() tiny(false) end)
T.case("the same graph with the unread inputs dropped: the same gradient", function()
  T.eq(m2.core.tape_drop_unread(), true, "on by default")
  local g0, g1 = tiny(false), tiny(true)
  T.eq(m2.max_all(m2.square(g0 - g1)):item(), 0, "gradients identical")
end)

T.finish()
