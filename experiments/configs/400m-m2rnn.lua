-- 400m-m2rnn.lua — the paper's 400M pure M2RNN baseline (24 M2RNN layers, K 64, V 16, 84 heads).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-m2rnn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-m2rnn", layers = paper.pattern(24, "M") })
