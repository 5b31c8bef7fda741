-- 400m-gdn+m2rnn-3l.lua — 400M GDN hybrid with M2RNN at layers 3, 11, 19 (before each attention layer).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-gdn+m2rnn-3l.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-gdn+m2rnn-3l", layers = paper.pattern(24, "G", { A = paper.ATTN_400M, M = { 3, 11, 19 } }) })
