for _, s in ipairs { 0, -1, 2^31, 2^32, 2^40, math.maxinteger, 0/0 } do
  print(pcall(m2.zeros, s, 2))
  print(pcall(function() return m2.ones(1):expand(s, s):sum_all() end))
  print(pcall(function() return m2.zeros(0):reshape(s, s) end))
  print(pcall(function() return m2.randn(2, 3):narrow(2, s, 1) end))
end
