-- test_tokens.lua — token shards from Lua (m2.core.shards / shard_write, lua/bind_data.c), m2.data.tokens on a slice
-- of the real corpus (datasets/corpus.sh -> datasets/prepare.py, byte-level, with its round-trip check), and a few
-- training steps through m2.train that log /eval/val_loss and /eval/val_bpb, and experiments/lm.lua.
local m2 = require "m2"
local T = m2.test

local SRC = m2.source_dir or "."
math.randomseed(os.time(), m2.core.getpid and m2.core.getpid() or 0) -- fresh inputs each run

local function tmpdir()
  local base = os.tmpname()
  os.remove(base)
  m2.core.mkdir_p(base .. ".d")
  return base .. ".d"
end

local function same(a, b) return a:numel() == b:numel() and m2.eq(a, b):sum_all():item() == a:numel() end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

T.case("shards from Lua: both widths round trip, errors name the file at the script line", function()
  local dir = tmpdir()
  local a, b = {}, {}
  for i = 1, 700 do a[i] = math.random(0, 65535) end
  for i = 1, 500 do b[i] = math.random(0, 100351) end
  b[1] = 100351
  m2.core.shard_write(dir .. "/x_train_000000.bin", a)                          -- version 0: uint16 fits
  m2.core.shard_write(dir .. "/x_train_000001.bin", m2.tensor(b, { dtype = "i64" })) -- needs uint32
  local s <close> = m2.core.shards(dir .. "/x_train_*.bin", { vocab = 100352 })
  T.eq({ s:count(), s:tokens(), s:width(1), s:width(2), s:shard_tokens(2) }, { 2, 1200, 2, 4, 500 })
  T.eq(s:read(1, 0, 700):totable(), a, "uint16 round trip")
  T.eq(s:read(2, 0, 500):totable(), b, "uint32 round trip")
  T.eq(s:windows(99), 699 // 99 + 499 // 99)
  -- errors, located at this file's lines
  T.raises(function() m2.core.shards(dir .. "/missing.bin") end, "test_tokens.lua:%d+: .*missing.bin: no token shards")
  T.raises(function() m2.core.shards({ dir .. "/x_train_000000.bin", dir .. "/nope.bin" }) end,
    "nope.bin: cannot open the token shard")
  T.raises(function() m2.core.shards(dir .. "/x_train_000001.bin", { vocab = 100000 }) end,
    "x_train_000001.bin: token id 100351 at position 0 is >= the vocabulary size 100000")
  T.raises(function() m2.core.shard_write(dir .. "/bad.bin", { 1, 70000 }, 1) end,
    "token 70000 at position 1 does not fit a version%-1")
  T.raises(function() m2.core.shard_write(dir .. "/bad.bin", { 1, -2 }) end, "entry 2 of the token list")
  T.raises(function() s:batch { batch = 2, length = 800 } end, "no window of 801 tokens fits")
  T.raises(function() s:batch { batch = 2, length = 8, rank = 2, world = 2 } end, "rank 2 is not in 0 .. world %- 1")
  T.raises(function() s:read(3, 0, 1) end, "shard number out of range")
  local f = io.open(dir .. "/trunc_val_0.bin", "wb")
  f:write(string.rep("\0", 100))
  f:close()
  T.raises(function() m2.core.shards(dir .. "/trunc_val_0.bin") end,
    "trunc_val_0.bin: truncated: 100 bytes, shorter than the 1024%-byte shard header")
  local c = m2.core.shards(dir .. "/x_train_000000.bin")
  c:close()
  T.raises(function() c:count() end, "already closed")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- a slice (~300 KB) of the real corpus (the Python documentation; tests/bootstrap.sh installs it), byte-level
local slice = tmpdir()
T.case("corpus.sh + prepare.py: a slice of the corpus, byte-level, round trip", function()
  local code, out = sh(string.format("bash '%s/datasets/corpus.sh' --corpus pydoc --max-bytes 300000 --out '%s' --check",
    SRC, slice))
  T.eq(code, 0, out)
  T.ok(out:find("round trip ok", 1, true) ~= nil, out)
  local f = assert(io.open(slice .. "/meta.json"))
  local meta = m2.runs.json_decode(f:read("a"))
  f:close()
  T.eq({ meta.tokenizer.kind, meta.tokenizer.vocab, meta.tokenizer.eot }, { "byte", 256, 0 })
  T.ok(meta.licence:find("PSF", 1, true) ~= nil and meta.source:find("python3", 1, true) ~= nil, "source and licence")
  local tr, va = meta.splits.train, meta.splits.val
  T.eq(tr.tokens, tr.bytes + tr.documents, "byte-level: one token a byte, one EOT a document")
  T.ok(tr.bytes + va.bytes <= 300000 and tr.bytes + va.bytes > 250000, "the slice is ~300 KB")
  -- errors of the preparation tool: exit status 1, a message naming the input
  code, out = sh(string.format("python3 '%s/datasets/prepare.py' --out '%s/x' /nonexistent/file.txt", SRC, slice))
  T.ok(code == 1 and out:find("/nonexistent/file.txt: no such file", 1, true) ~= nil, out)
  local bad = T.write_temp("{ not json", ".json")
  code, out = sh(string.format("python3 '%s/datasets/prepare.py' --out '%s/x' --tokenizer json --tokenizer-json '%s' " ..
    "'%s/README.md' '%s/datasets/README.md'", SRC, slice, bad, SRC, SRC))
  T.ok(code == 1 and (out:find(bad .. ": not a tokenizer.json", 1, true) or out:find("`tokenizers` package", 1, true)),
    out)
  os.remove(bad)
end)

T.case("m2.data.tokens: windows of the text, determinism, resume, ranks, val split, errors", function()
  local data = m2.data.tokens { path = slice, length = 64, batch = 4, seed = 3 }
  T.eq({ data.vocab, data.eot, data.tokenizer, data.split }, { 256, 0, "byte", "train" })
  T.close(data.bytes_per_token, 1, 1e-3)
  local x, y = data:batch(5)
  T.eq(x:shape(), { 4, 64 })
  T.ok(same(x:narrow(2, 2, 63), y:narrow(2, 1, 63)), "y is x shifted by one")
  -- the tokens are the slice's text: mostly printable ASCII
  local printable, n = 0, 0
  for _, row in ipairs(x:totable()) do
    for _, t in ipairs(row) do
      n = n + 1
      if (t >= 32 and t < 127) or t == 10 then printable = printable + 1 end
    end
  end
  T.ok(printable / n > 0.9, "text bytes: " .. printable .. " of " .. n)
  T.ok(same(data:batch(5), x), "same index, same batch")
  T.ok(not same(data:batch(6), x), "another index, another batch")
  local again = m2.data.tokens { path = slice, length = 64, batch = 4, seed = 3 }
  T.ok(same(again:batch(5), x), "resume: a new loader's batch 5 is bit-identical")
  T.ok(not same(m2.data.tokens { path = slice, length = 64, batch = 4, seed = 4 }:batch(5), x), "another seed")
  -- two ranks: disjoint windows, together the single-rank sequence interleaved
  local r0 = m2.data.tokens { path = slice, length = 64, batch = 4, seed = 3, rank = 0, world = 2 }
  local r1 = m2.data.tokens { path = slice, length = 64, batch = 4, seed = 3, rank = 1, world = 2 }
  local starts = {}
  local dup = 0
  for _, r in ipairs { r0, r1 } do
    for k = 0, 4 * 20 - 1 do
      local i, pos = r.shards:window(k * 2 + r.rank, r.opts)
      local key = i .. ":" .. pos
      if starts[key] then dup = dup + 1 end
      starts[key] = true
    end
  end
  T.eq(dup, 0, "ranks read disjoint windows")
  local one = m2.data.tokens { path = slice, length = 64, batch = 8, seed = 3 }
  local full = one:batch(0)
  local x0, x1 = r0:batch(0), r1:batch(0)
  T.ok(same(full:narrow(1, 1, 1), x0:narrow(1, 1, 1)) and same(full:narrow(1, 2, 1), x1:narrow(1, 1, 1)),
    "rank r takes every world-th window of the single-rank sequence")
  -- the val split: file order, its own bytes per token
  local v = data:val()
  T.eq({ v.split, v.shuffle }, { "val", false })
  local vx = v:batch(0)
  local first = v.shards:read(1, 0, 64)
  T.ok(same(vx:narrow(1, 1, 1):reshape { 64 }, first), "val batch 0 starts at the first token")
  T.eq(first:totable()[1], 0, "a document starts with EOT")
  -- errors at the caller's line
  T.raises(function() m2.data.tokens { path = slice, lenght = 3 } end, "unknown setting 'lenght'")
  T.raises(function() m2.data.tokens { path = slice, split = "test" } end, "split must be \"train\" or \"val\"")
  T.raises(function() m2.data.tokens { path = slice, rank = 2, world = 2 } end, "rank 2 is not in 0 .. world %- 1 = 1")
  T.raises(function() m2.data.tokens { path = slice, vocab = 100 } end, "is >= the vocabulary size 100")
  T.raises(function() m2.data.tokens { path = slice .. "/nothing" } end, "nothing: no token shards match")
  T.raises(function() m2.data.tokens { path = slice, length = 10000000 } end, "no window of 10000001 tokens fits")
  T.raises(function() data:batch(-1) end, "index must be an integer >= 0")
  local single = m2.data.tokens { path = slice .. "/*_train_*.bin", length = 64, batch = 4 }
  T.raises(function() single:val() end, "give the validation shards as val_path")
  local bdir = tmpdir()
  os.execute(string.format("cp '%s'/*.bin '%s'/ && printf '{\"tokenizer\": ' > '%s/meta.json'", slice, bdir, bdir))
  T.raises(function() m2.data.tokens { path = bdir } end, "meta.json: the shards' sidecar does not parse")
  os.execute("rm -rf '" .. bdir .. "'")
end)

T.case("m2.train on the slice: /eval/val_loss and /eval/val_bpb at eval_every", function()
  local out = T.temp_path(".h5")
  m2.seed(1)
  local data = m2.data.tokens { path = slice, length = 32, batch = 4, seed = 1, eval_batches = 2 }
  local model = m2.models.lm { vocab = data.vocab, d = 16, layers = "M", m2rnn = { heads = 2, k = 4, v = 4 },
                               mlp = { kind = "none" }, init_std = 0.1 }
  local summary = m2.train { model = model, data = data, steps = 6, eval_every = 3, out = out, quiet = true,
                             optim = { kind = "adamw", lr = 1e-2 } }
  T.eq(summary.status, "done")
  local steps, loss = m2.runs.series(out, "eval", "val_loss")
  local _, bpb = m2.runs.series(out, "eval", "val_bpb")
  T.eq(steps, { 3, 6 }, "evaluated at steps 3 and 6")
  for i = 1, 2 do
    T.ok(loss[i] == loss[i] and loss[i] > 0 and loss[i] < 2 * math.log(256), "val loss finite: " .. loss[i])
    T.close(bpb[i], loss[i] / math.log(2) / data:val().bytes_per_token, 1e-9, "bits per byte")
  end
  -- the same numbers by hand: the mean loss of the first two val batches
  local by_hand = data:evaluate(model)
  T.close(by_hand.val_loss, loss[2], 1e-6, "evaluate() = the logged value")
  os.remove(out)
end)

T.case("experiments/lm.lua runs on the slice (a few steps)", function()
  local out = T.temp_path(".h5")
  local code, text = T.run_m2lab(string.format("run %s/experiments/lm.lua arch=gdn+m2rnn-1l data=%s d=32 layers=2 " ..
    "length=32 batch=4 steps=4 eval_every=2 eval_batches=1 out=%s", SRC, slice, out))
  T.eq(code, 0, text)
  T.ok(text:find("(MA)", 1, true) and text:find("val loss", 1, true), text)
  local steps, loss = m2.runs.series(out, "eval", "val_loss")
  T.eq(steps, { 2, 4 })
  T.ok(loss[2] == loss[2] and loss[2] > 0, "finite")
  os.remove(out)
  code, text = T.run_m2lab(string.format("run %s/experiments/lm.lua arch=lstm data=%s", SRC, slice))
  T.ok(code ~= 0 and text:find("unknown arch 'lstm'", 1, true), text)
  code, text = T.run_m2lab(string.format("run %s/experiments/lm.lua data=/nonexistent/shards", SRC))
  T.ok(code ~= 0 and text:find("no token shards at /nonexistent/shards", 1, true), text)
end)

os.execute("rm -rf '" .. slice .. "'")

T.case("no leaks", function()
  collectgarbage()
  collectgarbage()
  T.ok(m2.live_nodes() == 0, "live nodes " .. m2.live_nodes())
end)
