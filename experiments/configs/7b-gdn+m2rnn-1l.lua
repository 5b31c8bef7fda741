-- 7b-gdn+m2rnn-1l.lua — 7B MoE GDN hybrid with one M2RNN layer (layer 0). MoE MLP (lua/m2/layers/moe.lua).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/7b-gdn+m2rnn-1l.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.moe7b{ name = "7b-gdn+m2rnn-1l", layers = paper.pattern(40, "G", { A = paper.ATTN_7B, M = { 0 } }) })
