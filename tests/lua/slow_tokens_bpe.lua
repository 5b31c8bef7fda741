-- slow_tokens_bpe.lua (label slow: the first run makes a venv with `tokenizers` from PyPI) — the BPE tokenizer round
-- trip on a slice of the corpus: datasets/corpus.sh trains a byte-level BPE, writes the shards, decodes them again
-- (--check), and m2.data.tokens reads them with the sidecar's vocab and bytes per token.
local m2 = require "m2"
local T = m2.test

local SRC = m2.source_dir or "."
local dir = os.tmpname()
os.remove(dir)
dir = dir .. ".d"

T.case("BPE: train, shard, decode again (round trip), read from Lua", function()
  local p = assert(io.popen(string.format("bash '%s/datasets/corpus.sh' --corpus pydoc --tokenizer bpe --vocab 600 " ..
    "--max-bytes 200000 --out '%s' --check 2>&1", SRC, dir)))
  local out = p:read("a")
  local _, _, code = p:close()
  T.eq(code, 0, out)
  T.ok(out:find("round trip ok", 1, true) ~= nil, out)
  local data = m2.data.tokens { path = dir, length = 32, batch = 2 }
  T.eq({ data.tokenizer, data.vocab, data.eot }, { "bpe", 600, 0 })
  T.ok(data.bytes_per_token > 1.5 and data:val().bytes_per_token > 1.5, "BPE tokens hold several bytes")
  local f = io.open(dir .. "/tokenizer.json")
  T.ok(f ~= nil, "tokenizer.json saved beside the shards")
  if f then f:close() end
  -- a tokenizer file that does not parse: an error naming it
  local bad = T.write_temp('{"model": 3}', ".json")
  p = assert(io.popen(string.format("'%s/bin/python' '%s/datasets/prepare.py' --out '%s/x' --tokenizer json " ..
    "--tokenizer-json '%s' '%s/README.md' '%s/datasets/README.md' 2>&1",
    os.getenv("M2_DATA_VENV") or ((os.getenv("M2_BUILD_DIR") or (SRC .. "/build")) .. "/data-venv"), SRC, dir, bad,
    SRC, SRC)))
  out = p:read("a")
  _, _, code = p:close()
  T.ok(code == 1 and out:find(bad .. ": not a tokenizer.json", 1, true) ~= nil, out)
  os.remove(bad)
end)
os.execute("rm -rf '" .. dir .. "'")
