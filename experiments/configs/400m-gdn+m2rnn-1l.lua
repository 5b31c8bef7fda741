-- 400m-gdn+m2rnn-1l.lua — 400M GDN hybrid with one M2RNN layer (layer 0); attention at 4, 12, 20.
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-gdn+m2rnn-1l.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-gdn+m2rnn-1l", layers = paper.pattern(24, "G", { A = paper.ATTN_400M, M = { 0 } }) })
