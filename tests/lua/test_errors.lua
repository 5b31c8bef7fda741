-- test_errors.lua — error messages from Lua: core failures and argument errors carry the FILE:LINE
-- of this script, also when the failing call happens inside the m2 library (nn.lua, optim.lua).
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

local function here() return debug.getinfo(2, "l").currentline end
local FILE = "test_errors.lua"

-- err must start with "...test_errors.lua:LINE: "
local function located(err, line, what)
  local pat = FILE:gsub("%.", "%%.") .. ":" .. line .. ": "
  T.ok(err ~= nil and err:find(pat) ~= nil, string.format("%s: expected '%s:%d: ' in %q", what, FILE, line, tostring(err)))
end

T.case("core failures carry the caller's file:line", function()
  local a, b = m2.zeros(2), m2.zeros(3)
  local err, line = T.raises(function() return m2.add(a, b) end, "do not broadcast"), here()
  located(err, line, "m2.add")
  err, line = T.raises(function() return a + b end, "do not broadcast"), here()
  located(err, line, "metamethod +")
  err, line = T.raises(function() return m2.matmul(m2.zeros(2, 3), m2.zeros(4, 5)) end, "matmul"), here()
  located(err, line, "matmul")
  err, line = T.raises(function() return a:reshape(5) end, "reshape"), here()
  located(err, line, "reshape")
  -- the message is the core message verbatim after the location, no extra prefixes
  T.ok(err:find(": reshape", 1, true) ~= nil, err)
end)

T.case("argument errors: bad argument #N to 'f'", function()
  local x = m2.zeros(2)
  local err, line = T.raises(function() return m2.add(x, nil) end,
    "bad argument #2 to 'add' %(m2.Tensor or number expected, got nil%)"), here() - 1
  located(err, line, "add nil")
  err, line = T.raises(function() return m2.matmul(x, {}) end,
    "bad argument #2 to 'matmul' %(m2.Tensor expected, got table%)"), here() - 1
  located(err, line, "matmul table")
  -- method calls do not count self
  err, line = T.raises(function() return x:narrow("a", 1, 1) end, "bad argument #1 to 'narrow' %(integer expected, got string%)"), here()
  located(err, line, "narrow")
  err = T.raises(function() return x:sum(1.5) end, "number has no integer representation")
  err = T.raises(function() return x:sum(1, "yes") end, "boolean expected, got string")
  err = T.raises(function() return m2.zeros(2, "f64") end, "table of options expected")
  err = T.raises(function() return m2.Tensor.numel(5) end, "m2.Tensor expected, got number")
  -- messages are never used as format strings
  err = T.raises(function() return m2.zeros(2, { dtype = "%s%s%n" }) end, "unknown dtype '%%s%%s%%n'")
end)

T.case("failures inside the library report the script's line", function()
  local lin = nn.Linear(3, 4)
  local err, line = T.raises(function() return lin(m2.zeros(2, 5)) end, "linear"), here()
  located(err, line, "Linear:forward -> m2.linear")
  local mlp = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(5, 2))
  err, line = T.raises(function() return mlp(m2.zeros(1, 3)) end, "linear"), here()
  located(err, line, "a failure two modules deep")
  local norm = nn.RMSNorm(4)
  err, line = T.raises(function() return norm(m2.zeros(2, 3)) end, "rmsnorm"), here()
  located(err, line, "RMSNorm")
  -- Lua-level checks of the library are located too
  err, line = T.raises(function() return nn.Linear(3) end, "out_features must be a positive integer, got nil"), here()
  located(err, line, "nn.Linear(3)")
  err, line = T.raises(function() return nn.Linear(3, 4, { biass = false }) end, "unknown option 'biass'"), here()
  located(err, line, "unknown option")
  err, line = T.raises(function() return m2.optim.adamw({}, { lr = 1e-3 }) end, "takes one options table"), here()
  located(err, line, "adamw with a second argument")
  err, line = T.raises(function() return m2.optim.adamw { lr = 1e-3, betas = 0.9 } end, "betas must be a pair"), here()
  located(err, line, "adamw betas")
  err, line = T.raises(function() return m2.optim.adamw { params = lin, weight_decay = -1 } end, "weight_decay"), here()
  located(err, line, "core optimizer error")
  err, line = T.raises(function() return m2.config({ lr = 1 }, { lrr = 2 }) end, "unknown override 'lrr'"), here()
  located(err, line, "m2.config")
end)

T.case("error objects pass through no_grad and gradcheck unchanged", function()
  local obj = { code = 7 }
  local ok, e = pcall(m2.no_grad, function() error(obj) end)
  T.ok(not ok and e == obj, "no_grad re-raises the same error object")
  T.ok(m2.grad_enabled(), "grad mode restored after an error")
  local err, line = T.raises(function()
    return m2.no_grad(function() return m2.zeros(2) + m2.zeros(3) end) end, "broadcast"), here()
  located(err, line, "error inside no_grad")
end)

T.case("a misspelt op option is an error naming it, not a silent default (issue 17)", function()
  local q = m2.randn(1, 4, 2, 8)
  local line = here() + 1
  local err = T.raises(function() return m2.attention(q, q, q, { casual = false }) end,
    "attention: unknown option 'casual' %(known: scale, causal%)")
  located(err, line, "attention option")
  T.raises(function() return m2.attention(q, q, q, { false }) end, "attention: options are named")
  local x, W, f = m2.randn(1, 3, 1, 2), m2.randn(1, 2, 2), m2.sigmoid(m2.randn(1, 3, 1))
  local v = m2.randn(1, 3, 1, 2)
  T.raises(function() return m2.m2rnn(x, x, v, W, f, { gradclip = 1 }) end, "m2rnn: unknown option 'gradclip'")
  T.raises(function() return m2.m2rnn(x, x, v, W, f, nil, { ckpt = 8 }) end, "m2rnn: unknown option 'ckpt'")
  T.raises(function() return m2.matmul(m2.randn(2, 2), m2.randn(2, 2), { tA = true }) end, "matmul: unknown option 'tA'")
  -- the known names still work
  local y = m2.m2rnn(x, x, v, W, f, { grad_clip = 1, ckpt_every = 8 })
  T.eq(y:shape(), { 1, 3, 1, 2 })
  T.eq(m2.attention(q, q, q, { causal = false, scale = 0.5 }):shape(), { 1, 4, 2, 8 })
end)

T.case("an integer option too large for C is an error, not a truncated value (issue 17)", function()
  local x, W, f = m2.randn(1, 3, 1, 2), m2.randn(1, 2, 2), m2.sigmoid(m2.randn(1, 3, 1))
  T.raises(function() return m2.m2rnn(x, x, x, W, f, { ckpt_every = 1e12 }) end,
    "option 'ckpt_every' = 1000000000000 is out of range")
  local q = m2.randn(1, 3, 1, 2)
  T.raises(function() return m2.gdn(q, q, q, -m2.rand(1, 3, 1), m2.rand(1, 3, 1), { chunk = 2 ^ 40 }) end,
    "option 'chunk' = 1099511627776 is out of range")
end)
