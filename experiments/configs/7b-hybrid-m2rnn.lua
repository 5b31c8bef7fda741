-- 7b-hybrid-m2rnn.lua — 7B MoE hybrid: M2RNN (132 heads) with attention at 4, 12, 20, 28, 36. MoE MLP (lua/m2/layers/moe.lua).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/7b-hybrid-m2rnn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.moe7b{ name = "7b-hybrid-m2rnn", layers = paper.pattern(40, "M", { A = paper.ATTN_7B }) })
