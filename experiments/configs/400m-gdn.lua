-- 400m-gdn.lua — the paper's 400M pure Gated DeltaNet baseline (2 heads, dk 256, dv 512).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-gdn.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-gdn", layers = paper.pattern(24, "G") })
