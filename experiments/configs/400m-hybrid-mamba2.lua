-- 400m-hybrid-mamba2.lua — 400M hybrid: Mamba-2 layers with attention at layers 4, 12, 20 (NoPE).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-hybrid-mamba2.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-hybrid-mamba2", layers = paper.pattern(24, "S", { A = paper.ATTN_400M }) })
