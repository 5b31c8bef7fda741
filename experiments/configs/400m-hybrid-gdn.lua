-- 400m-hybrid-gdn.lua — 400M hybrid: GDN layers with attention at layers 4, 12, 20 (NoPE).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-hybrid-gdn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-hybrid-gdn", layers = paper.pattern(24, "G", { A = paper.ATTN_400M }) })
