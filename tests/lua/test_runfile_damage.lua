-- test_runfile_damage.lua — damaged run files (issue 17 item 6): byte-flipped and truncated copies of a real small
-- run. `m2lab inspect` reports every part it cannot read ("damaged: ..." lines, exit 1, its error printed once) and
-- never leaves one out; a resume skips a damaged old checkpoint (pruning deletes it without failing) and falls back
-- from a damaged newest one to the one before it, naming it, and continues bit-exactly from there.
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local sh_quote, m2lab = T.sh_quote, T.m2lab
local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end
local function write(path, s) local f = assert(io.open(path, "wb")); f:write(s); f:close() end
local function flip(bytes, pos, mask) -- pos 1-based
  return bytes:sub(1, pos - 1) .. string.char(bytes:byte(pos) ~ (mask or 0x20)) .. bytes:sub(pos + 1)
end
local function count(s, needle)
  local n, at = 0, 1
  while true do
    local i = s:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, i + 1
  end
end

-- the run: checkpoints 10, 20, 30, all kept
local good = dir .. "/good.h5"
local code, out = m2lab("run", m2.source_dir .. "/experiments/tiny_lm.lua", "steps=30", "checkpoint_every=10",
  "keep_checkpoints=0", "eval_every=0", "d=16", "out=" .. good)
assert(code == 0, out)
local bytes = read(good)
local good_inspect
code, good_inspect = m2lab("inspect", good)
assert(code == 0, good_inspect)
-- each checkpoint's attributes live in its own checksummed heap block; "data_cursor" is in them, in step order
local attr_at = {}
do
  local at = 1
  while true do
    local i = bytes:find("data_cursor", at, true)
    if not i then break end
    attr_at[#attr_at + 1] = i
    at = i + 1
  end
end
assert(#attr_at == 3, "one data_cursor attribute per checkpoint, found " .. #attr_at)

T.case("a damaged old checkpoint: inspect reports it; resume goes on and pruning deletes it", function()
  local p = dir .. "/old.h5"
  write(p, flip(bytes, attr_at[1] + 3))
  local c, o = m2lab("inspect", p)
  T.eq(c, 1, o)
  T.ok(o:find("damaged: " .. p .. ": /checkpoints/10", 1, true), "names the checkpoint: " .. o)
  T.ok(o:find("checkpoints (2): 20, 30", 1, true), o)
  T.eq(count(o, "m2lab inspect: " .. p .. ": damaged: 1 part of the file cannot be read"), 1, "the error once: " .. o)
  c, o = m2lab("resume", p, "steps=50", "keep_checkpoints=2")
  T.eq(c, 0, o)
  T.ok(not o:find("warning", 1, true), "nothing to warn about: the newest checkpoint is intact: " .. o)
  T.eq(runs.info(p).checkpoints, { 40, 50 })
  c, o = m2lab("inspect", p)
  T.eq(c, 0, "pruning deleted the damaged one too: " .. o)
end)

T.case("a damaged newest checkpoint: resume falls back to the one before, naming it, bit-exactly", function()
  local p = dir .. "/new.h5"
  write(p, flip(bytes, attr_at[3] + 3))
  local c, o = m2lab("inspect", p)
  T.eq(c, 1, o)
  T.ok(o:find("damaged: " .. p .. ": /checkpoints/30", 1, true), o)
  T.ok(o:find("latest intact 20", 1, true), o)
  c, o = m2lab("resume", p, "steps=40")
  T.eq(c, 0, o)
  T.ok(o:find("m2.train: warning: " .. p .. ": checkpoint 30 is damaged", 1, true), "the warning names it: " .. o)
  T.ok(o:find("resuming " .. p .. " at step 20 of 40", 1, true), o)
  T.eq(runs.info(p).checkpoints, { 10, 20, 30, 40 }, "checkpoint 30 written again over the damaged one")
  local _, want = runs.series(good, "metrics", "loss")
  local _, got = runs.series(p, "metrics", "loss")
  T.eq(#got, 40)
  T.eq({ table.unpack(got, 21, 30) }, { table.unpack(want, 21, 30) }, "steps 21..30 again, bit for bit")
  c, o = m2lab("inspect", p)
  T.eq(c, 0, o)
end)

T.case("truncated copies: a clean error, printed once, from inspect and resume", function()
  for _, n in ipairs { 0, 7, 512, #bytes // 8, #bytes // 2, #bytes - 4096, #bytes - 1 } do
    local p = dir .. "/cut.h5"
    write(p, bytes:sub(1, n))
    local c, o = m2lab("inspect", p)
    T.eq(c, 1, n .. " bytes: " .. o)
    T.eq(count(o, p), 1, n .. " bytes: the error names the file, once: " .. o)
    c, o = m2lab("resume", p)
    T.ok(c == 1 or c == 2, n .. " bytes: resume fails cleanly (exit " .. c .. "): " .. o)
    T.ok(o:find(p, 1, true) ~= nil, o)
  end
end)

T.case("byte flips across the file: inspect reports damage or shows everything, never leaves a part out", function()
  local n, shown, reported = 32, 0, 0
  local want_ckpts = good_inspect:match("checkpoints %(3%): 10, 20, 30")
  T.ok(want_ckpts ~= nil, good_inspect)
  for k = 0, n - 1 do
    local pos = math.floor(#bytes * (k + 0.5) / n) + 1
    local p = dir .. "/flip.h5"
    local b = bytes
    for i = 0, 15 do b = flip(b, pos + i, 0x5a ~ (i * 37 + k) & 0xff) end
    write(p, b)
    local c, o = m2lab("inspect", p)
    T.ok(c == 0 or c == 1, string.format("flip at %d: exit %d (a crash?): %s", pos, c, o))
    if c == 0 then
      shown = shown + 1
      T.ok(o:find("checkpoints (3): 10, 20, 30", 1, true) and o:find("metrics (6 series)", 1, true) and
        not o:find("damaged", 1, true), string.format("flip at %d: exit 0 shows every checkpoint and series: %s", pos, o))
    else
      reported = reported + 1
      T.ok(o:find("damaged: ", 1, true) or o:find("m2lab inspect: " .. p .. ": ", 1, true),
        string.format("flip at %d: exit 1 says what: %s", pos, o))
    end
  end
  print(string.format("  %d flipped copies: %d read whole (exit 0), %d reported damaged (exit 1)", n, shown, reported))
end)

os.execute("rm -rf " .. sh_quote(dir))
