-- 400m-mamba2.lua — the paper's 400M pure Mamba-2 baseline (64 heads, inner 1216, state 216).
-- Run it for a dry-run parameter summary: m2lab run experiments/configs/400m-mamba2.lua
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local paper = dofile(dir .. "paper.lua")
return paper.finish(paper.dense400m{ name = "400m-mamba2", layers = paper.pattern(24, "S") })
