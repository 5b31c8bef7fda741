-- 400m-attention.lua — the paper's 400M softmax-attention baseline (16 heads x 64, RoPE).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-attention.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-attention", layers = paper.pattern(24, "A"), attention = { heads = 16, head_dim = 64, rope = true } })
