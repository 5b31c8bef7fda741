-- test_resume_schedule.lua — a resume with a larger steps= keeps the learning-rate schedule stored in the
-- checkpoint (the lr does not jump), says so, and re-derives it from the new steps= only with reschedule=true;
-- a later resume keeps whichever schedule the last checkpoint ran with. reschedule=true outside a resume is an
-- error. (experiments/tiny_lm.lua: cosine, warmup 10, decay derived from steps as steps - warmup.)
local m2 = require "m2"
local T = m2.test
local core = m2.core
local runs = m2.runs

local dir = os.tmpname()
os.remove(dir)
core.mkdir_p(dir)
local experiment = m2.source_dir .. "/experiments/tiny_lm.lua"
local LR, MIN_LR, WARMUP = 3e-3, 3e-4, 10

local sh_quote, m2lab = T.sh_quote, T.m2lab

-- the cosine schedule of core/optim.c, for the lr of update `step` (1-based) with decay D
local function cosine(step, D)
  local u = step - 1 - WARMUP
  if u < 0 then return LR * step / WARMUP end
  if u >= D then return MIN_LR end
  return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * u / D))
end

local function lrs(path)
  local r <close> = runs.open(path)
  local steps, values = r:read_series("metrics", "lr")
  local latest = r:ckpt_latest()
  local train = runs.json_decode(r:ckpt_get(latest, "config_json")).train
  return steps, values, train
end

-- lr logged at steps a..b equals cosine(step, D) (to the last bits a double print/parse can lose)
local function check_lrs(path, a, b, D, what)
  local steps, values = lrs(path)
  T.ok(#steps >= b, what .. ": every step is logged")
  local bad
  for i = a, b do
    local want = cosine(i, D)
    if steps[i] ~= i or math.abs(values[i] - want) > 1e-12 * want then
      bad = bad or string.format("step %d: lr %.17g, want %.17g (decay %d)", i, values[i] or 0 / 0, want, D)
    end
  end
  T.eq(bad, nil, what)
end

local function new_run(name)
  local path = dir .. "/" .. name .. ".h5"
  local code, out = m2lab("run", experiment, "steps=20", "checkpoint_every=10", "eval_every=0", "d=16",
    "lr=" .. LR, "min_lr=" .. MIN_LR, "warmup=" .. WARMUP, "out=" .. path)
  T.eq(code, 0, out)
  check_lrs(path, 1, 20, 10, name .. ": the first 20 steps follow cosine decay 10")
  return path
end

T.case("resume with a larger steps= keeps the stored schedule and says so", function()
  local a = new_run("keep")
  local code, out = m2lab("resume", a, "steps=30")
  T.eq(code, 0, out)
  check_lrs(a, 1, 30, 10, "steps 21-30 continue the stored schedule (decay 10: min_lr), no jump")
  T.ok(out:find("schedule kept as stored in checkpoint 20 (cosine, warmup 10, decay 10", 1, true), out)
  T.ok(out:find("pass reschedule=true to re-derive it for steps=30", 1, true), out)
  local _, _, train = lrs(a)
  T.eq(train.decay, 10, "the new checkpoint records the schedule it ran with")
  T.eq(train.steps, 30)
end)

T.case("reschedule=true re-derives the schedule, says so, and later resumes keep the new one", function()
  local b = new_run("reschedule")
  local code, out = m2lab("resume", b, "steps=30", "reschedule=true")
  T.eq(code, 0, out)
  check_lrs(b, 1, 20, 10, "steps 1-20 unchanged")
  check_lrs(b, 21, 30, 20, "steps 21-30 follow the schedule derived for steps=30 (decay 20)")
  T.ok(out:find("schedule re-derived for steps=30 (reschedule=true): cosine, warmup 10, decay 20, lr 0.003 -> " ..
    "0.0003 (stored: decay 10): lr 0.00165 at step 21 (the stored schedule: 0.0003)", 1, true), out)
  local _, _, train = lrs(b)
  T.eq(train.decay, 20, "the checkpoint records the re-derived schedule")
  -- a later resume (reschedule= is not carried over) keeps decay 20, the one the last checkpoint ran with
  code, out = m2lab("resume", b, "steps=36")
  T.eq(code, 0, out)
  T.ok(out:find("schedule kept as stored in checkpoint 30 (cosine, warmup 10, decay 20", 1, true), out)
  check_lrs(b, 31, 36, 20, "steps 31-36 keep decay 20")
  -- the same steps=: nothing to choose, the stored schedule goes on
  code, out = m2lab("resume", b, "steps=36")
  T.eq(code, 0, out)
  T.ok(out:find("already done", 1, true) or out:find("schedule as stored", 1, true), out)
end)

T.case("reschedule=true outside a resume is an error", function()
  local path = dir .. "/fresh.h5"
  local code, out = m2lab("run", experiment, "steps=2", "d=16", "reschedule=true", "out=" .. path)
  T.eq(code, 1, out)
  T.ok(out:find("reschedule=true applies to m2lab resume", 1, true), out)
end)

os.execute("rm -rf " .. sh_quote(dir))
