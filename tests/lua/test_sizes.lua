-- test_sizes.lua — shapes whose element count or byte size would overflow are refused with a message naming the
-- shape, never wrapped around (issue 17, defect 1: out-of-bounds writes, wrong sums, 16 GiB allocations, OOM).
local m2 = require "m2"
local T = m2.test

T.case("creation refuses a shape whose element count overflows", function()
  T.raises(function() return m2.zeros(2^32, 2^32) end, "%(4294967296, 4294967296%) is too large")
  T.raises(function() return m2.zeros(2^32 + 1, 2^32) end, "%(4294967297, 4294967296%) is too large")
  T.raises(function() return m2.empty(2^40, 2, 2^40) end, "%(1099511627776, 2, 1099511627776%) is too large")
  T.raises(function() return m2.full({2^31, 2^31, 2^31}, 1) end, "is too large")
  -- large but countable shapes with a zero size are tensors with no elements
  local e = m2.empty(2^40, 0)
  T.eq(e:numel(), 0)
end)

T.case("reshape and expand refuse an overflowing target shape", function()
  T.raises(function() return m2.zeros(0):reshape(2^32, 2^32) end, "reshape: .*%(4294967296, 4294967296%) is too large")
  T.raises(function() return m2.zeros(0):reshape(2^32, 2^32):set(3, 7, 7) end, "reshape")
  T.raises(function() return m2.zeros(0):reshape(-1, 2^32, 2^32) end, "reshape: .*is too large")
  T.raises(function() return m2.ones(1, 1):expand(2^32, 2^32) end, "expand: .*%(4294967296, 4294967296%) is too large")
  -- an expand that fits still sums right
  T.eq(m2.ones(1, 1):expand(2^16, 2^8):sum_all():item(), 2^24)
end)

T.case("totable refuses what it cannot build", function()
  T.raises(function() return m2.empty(2^40, 0):totable() end, "totable: .*%(1099511627776, 0%)")
  T.raises(function() return m2.empty(2^20, 2^12, 0):totable() end, "totable")
  T.eq(#m2.zeros(3, 0):totable(), 3)
end)

-- (math.mininteger: the check negated the dim, undefined behaviour that UBSan reports; a plain build passed)
T.case("dims at the integer limits are out of range, not undefined", function()
  local x = m2.zeros(2, 3)
  T.raises(function() return x:sum(math.mininteger) end, "out of range")
  T.raises(function() return x:sum(math.maxinteger) end, "out of range")
end)


T.case("arange refuses a count that cannot be a tensor, and non-finite bounds (found by tests/fuzz/fuzz_lua.c)", function()
  T.raises(function() return m2.arange(1 / 0) end, "must be finite")
  T.raises(function() return m2.arange(0, 1, 0 / 0) end, "must be finite")
  T.raises(function() return m2.arange(-1e308, 1e308) end, "are too many")
  T.raises(function() return m2.arange(0, 2^62, 1) end, "are too many")
  T.raises(function() return m2.arange(0, 1, 2^-70) end, "are too many")
  T.eq(m2.arange(3, 0):numel(), 0)
end)
