-- test_autograd.lua — grad mode from Lua (m2.no_grad, m2.grad_enabled), graph lifetime
-- (m2.live_nodes / m2.live_tensors), backward rules seen from Lua, gradcheck options.
local m2 = require "m2"
local T = m2.test

m2.seed(77)

T.case("no_grad", function()
  local w = m2.randn(3, { requires_grad = true })
  T.ok(m2.grad_enabled())
  local y, extra = m2.no_grad(function(a, b)
    T.ok(not m2.grad_enabled(), "off inside")
    return (w * a):sum(), b
  end, 2, "passed")
  T.ok(m2.grad_enabled(), "on again after")
  T.eq(extra, "passed", "arguments and all results pass through")
  T.ok(not y:requires_grad(), "nothing recorded inside no_grad")
  T.raises(function() y:backward() end, "does not require grad")
  -- nesting
  m2.no_grad(function()
    m2.no_grad(function() T.ok(not m2.grad_enabled()) end)
    T.ok(not m2.grad_enabled(), "still off after the inner one")
  end)
  T.ok(m2.grad_enabled())
  -- errors restore the mode (pcall-safe), also deep inside
  for _ = 1, 3 do
    local ok = pcall(m2.no_grad, function() m2.no_grad(function() error("x") end) end)
    T.ok(not ok)
  end
  T.ok(m2.grad_enabled(), "an error inside no_grad does not leave grad off")
  T.raises(function() m2.no_grad(42) end, "function expected")
  -- the same computation outside no_grad records
  local z = (w * 2):sum()
  T.ok(z:requires_grad())
  z:backward()
  T.eq(w.grad:totable(), { 2, 2, 2 })
end)

T.case("graph lifetime and live counters", function()
  collectgarbage()
  collectgarbage()
  local t0, n0 = m2.live_tensors(), m2.live_nodes()
  do
    local w = m2.randn(4, 4, { requires_grad = true })
    local x = m2.randn(2, 4)
    local loss = m2.matmul(x, w):tanh():sum()
    T.ok(m2.live_nodes() > n0, "the graph holds tape nodes")
    loss:backward()
    T.raises(function() loss:backward() end, "second time")
  end
  collectgarbage()
  collectgarbage()
  T.eq(m2.live_nodes(), n0, "nodes freed with their tensors")
  T.eq(m2.live_tensors(), t0, "tensors freed")
end)

T.case("gradients seen from Lua", function()
  local x = m2.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "f64", requires_grad = true })
  -- d/dx sum(softmax(x) * c) for a row is softmax * (c - sum(softmax * c))
  local c = m2.tensor({ { 1, 0 }, { 0, 1 } }, { dtype = "f64" })
  local s = x:softmax(2)
  ;(s * c):sum():backward()
  local st = s:totable()
  local want = {}
  for i = 1, 2 do
    local dot = st[i][1] * c:get(i, 1) + st[i][2] * c:get(i, 2)
    want[i] = { st[i][1] * (c:get(i, 1) - dot), st[i][2] * (c:get(i, 2) - dot) }
  end
  T.close(x.grad:totable(), want, 1e-12)
  -- gradient through a transposed view and a narrow
  local y = m2.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { requires_grad = true })
  y:t():narrow(1, 2, 2):sum():backward()
  T.eq(y.grad:totable(), { { 0, 1, 1 }, { 0, 1, 1 } })
  -- clone of a tensor needing grad keeps the graph; detach does not
  local z = m2.tensor({ 1, 2 }, { requires_grad = true })
  local zc = z:clone()
  T.ok(zc:requires_grad() and not zc:is_leaf())
  ;(zc * zc):sum():backward()
  T.eq(z.grad:totable(), { 2, 4 })
end)

T.case("gradcheck options", function()
  local x = m2.randn({ 50 }, { dtype = "f64", requires_grad = true })
  local ok, err = m2.gradcheck(function(a) return a:tanh() end, { x }, { max_checks = 5, eps = 1e-5, seed = 9 })
  T.ok(ok and err <= 1)
  -- a float32 input is too coarse for the default tolerances: gradcheck says so instead of raising
  local x32 = m2.randn({ 4 }, { requires_grad = true })
  local ok32, err32, msg32 = m2.gradcheck(function(a) return a:exp() end, { x32 })
  T.eq(ok32, false)
  T.ok(err32 > 1 and type(msg32) == "string", tostring(msg32))
  T.raises(function() m2.gradcheck(function(a) return a end, {}) end, "empty list of inputs")
  T.raises(function() m2.gradcheck(function(a) return a end, { 3 }) end, "input 1 is not a tensor")
end)
