-- 7b-hybrid-gdn.lua — 7B MoE hybrid: GDN (3 heads) with attention at 4, 12, 20, 28, 36. MoE MLP (lua/m2/layers/moe.lua).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/7b-hybrid-gdn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.moe7b{ name = "7b-hybrid-gdn", layers = paper.pattern(40, "G", { A = paper.ATTN_7B }) })
