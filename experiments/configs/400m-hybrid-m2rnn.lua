-- 400m-hybrid-m2rnn.lua — 400M hybrid: M2RNN layers with attention at layers 4, 12, 20 (NoPE).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-hybrid-m2rnn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-hybrid-m2rnn", layers = paper.pattern(24, "M", { A = paper.ATTN_400M }) })
