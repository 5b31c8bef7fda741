--[==[ m2.opts — the check of an options table, shared by the constructors of lua/m2 (nn modules, optimizers).

  O.check(opts, ctor, known) -> opts     nil gives {}; a non-table, a positional entry, or a key that `known` (a set)
                                         lacks, is an error naming ctor (and the known keys), at the caller's script line
  O.one_table(extra, ctor, example)      error when a constructor that takes one table got a second argument
]==]

local m2 = require "m2"

local O = {}

function O.check(opts, ctor, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then m2.error(ctor .. ": options must be a table, got " .. type(opts)) end
  for k in pairs(opts) do
    if math.type(k) == "integer" then
      m2.error(string.format("%s: options are named (key = value), got a positional entry [%d] (%s)", ctor, k,
                             type(opts[k])))
    end
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      m2.error(string.format("%s: unknown option '%s' (known: %s)", ctor, tostring(k), table.concat(names, ", ")))
    end
  end
  return opts
end

function O.one_table(extra, ctor, example)
  if extra ~= nil then
    m2.error(string.format("%s takes one options table, e.g. %s; got a second argument (%s)", ctor, example, type(extra)))
  end
end

return O
