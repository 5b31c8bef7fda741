-- step_time.lua — what one training step of a model config costs on this machine: m2.train on random
-- tokens (the loss is meaningless; the time and memory are not). Progress lines give each step's time,
-- tokens/s and peak memory; the last line a summary. Compare with the PyTorch stack's whole-step figures
-- in shared/GPU.md (400M models, B=8, T=4096: hybrid-m2rnn 850 ms, hybrid-gdn 426 ms, ...).
--
--   m2lab run experiments/step_time.lua device=cuda        (400m-hybrid-m2rnn at the paper's B=8, T=4096: 553 ms a
--                                                           step, 59.2 k tokens/s, 125 GiB on an H200)
--   m2lab run experiments/step_time.lua device=cuda config=experiments/configs/400m-gdn.lua batch=4
--   m2lab run experiments/step_time.lua layers=MA d=64 vocab=256 batch=2 len=64     (a quick check on the CPU)
-- layers / d / vocab override the config's (empty / 0: keep it); steps = all steps run (m2.train reads steps= too),
-- the first `warmup` of them untimed;
-- precision: "bf16" (matmul and linear products in bf16 with fp32 accumulation, like bf16 autocast) or "f32";
-- activations: "bf16" (needs precision=bf16: matmul / linear outputs in bf16, the ops after them on bf16 inputs,
-- as bf16 autocast; parameters, optimizer state, loss and recurrent states fp32) or "f32" (the default);
-- ckpt: the M2RNN layers' steps between kept states, a multiple of 8 (0: the layer's default, 8; 16 halves that memory for
-- ~10% more time a step; 64 keeps 1/8 of it);
-- fused_loss=0: the LM head's full (B, T, vocab) logits, then the loss (1, the default: m2.linear_cross_entropy);
-- profile=1: after the warm-up, time every op (m2.profile: a device synchronisation per op, so those steps run
-- slower) and print a table of the ops by time per step, and one of what the autograd tape holds after the first
-- profiled step's forward, before its backward (m2.profile.tape_report: bytes by op, role and dtype);
-- profile=2: the timeline mode over the timed steps (m2.profile.start{timeline = true}: no synchronisation per op,
-- a timestamp on the device's stream at each op call's begin and end, so the steps run at their normal pace): a
-- table of the ops by GPU time (their spans on the stream) and host issue time per step, and how long per step the
-- GPU sat between op spans (waiting for the host, or on copies and gradient zeroing outside op calls), next to
-- the median step: the most a CUDA graph of the step could save (profiling stops after the last step's optimizer
-- step, before the final checkpoint; no tape table);
-- drop_unread=0: the tape's nodes keep every input whole, also those whose values their op's backward never reads
-- (m2.core.tape_drop_unread; 1, the default: they keep only those inputs' metadata), to compare the tape's bytes;
-- cast_keep=1: a call run on f32 copies of its bf16 inputs (activations=bf16: every op on the CPU, the ops without
-- mixed kernels on CUDA) records one node that keeps the bf16 inputs, not the copies (m2.core.cast_keep_bf16; 0 off,
-- -1, the default: as the environment says, M2_CAST_KEEP_BF16=1, else off); same outputs and gradients, bit for bit;
-- mixed=1: the bf16 / f32 calls of conv1d_causal, add, sub, mul and swiglu run on CUDA's mixed kernels instead of f32
-- copies (m2.core.mixed_kernels; 0 off, -1, the default: as the environment says, M2_MIXED_KERNELS=0 off, else on);
-- chunked: 1 runs the GDN and Mamba-2 layers in their chunked form (m2.gdn_chunked / m2.ssd_chunked), 0 recurrent,
-- -1 (the default) as the config says;
-- loss_chunk: rows of logits the fused loss holds at a time (spec.loss_chunk; -1, the default: as the config says);
-- checkpoint: activation checkpointing of the blocks (spec.checkpoint, m2.checkpoint): 0 off (the default), -1 every
-- block, n the first n blocks (each runs its forward again in the backward, holding only its input).
local m2 = require "m2"

local cfg = m2.config {
  config = "experiments/configs/400m-hybrid-m2rnn.lua", batch = 8, len = 4096, steps = 4, warmup = 1,
  layers = "", d = 0, vocab = 0, seed = 0, lr = 3e-4, out = "runs/step_time.h5", precision = "bf16", activations = "f32",
  ckpt = 0,
  profile = 0, fused_loss = 1, chunked = -1, drop_unread = 1, checkpoint = 0,
  cast_keep = -1, mixed = -1, loss_chunk = -1,
}
m2.seed(cfg.seed)
m2.core.tape_drop_unread(cfg.drop_unread ~= 0)
if cfg.cast_keep >= 0 then m2.core.cast_keep_bf16(cfg.cast_keep ~= 0) end
if cfg.mixed >= 0 then m2.core.mixed_kernels(cfg.mixed ~= 0) end

local spec = m2.models.load(cfg.config) -- as given, else from the repository root
if type(spec) ~= "table" or not spec.layers then m2.error("step_time: " .. cfg.config .. " returned no model spec") end
if cfg.layers ~= "" then spec.layers = cfg.layers end
if cfg.d > 0 then spec.d = cfg.d end
if cfg.vocab > 0 then spec.vocab = cfg.vocab end
if cfg.ckpt > 0 and spec.m2rnn then spec.m2rnn.ckpt = cfg.ckpt end
if cfg.chunked >= 0 then
  for _, kind in ipairs { "gdn", "mamba2" } do
    if spec[kind] then spec[kind].chunked = cfg.chunked ~= 0 end
  end
end
spec.fused_loss = cfg.fused_loss ~= 0
if cfg.loss_chunk >= 0 then spec.loss_chunk = cfg.loss_chunk end
if cfg.checkpoint < -1 then m2.error("step_time: checkpoint must be 0 (off), -1 (every block) or n (the first n)") end
spec.checkpoint = cfg.checkpoint == -1 or cfg.checkpoint
local model = m2.models.lm(spec)

local data, batches = {}, 0
function data:batch() -- fresh random tokens every step, made on the CPU (m2.train moves them)
  batches = batches + 1
  if cfg.profile ~= 0 and batches == cfg.warmup + 1 then -- the previous step is done
    m2.profile.start { timeline = cfg.profile == 2 }
  end
  return m2.randint(spec.vocab, cfg.batch, cfg.len), m2.randint(spec.vocab, cfg.batch, cfg.len)
end

local device = m2.args.device or "cpu"
-- the model's loss as m2.train computes it by default; on the first profiled step, what the tape holds once the
-- forward is done (the backward has not run yet)
local tape_report
local function loss(mdl, x, y)
  local l = type(mdl.loss) == "function" and mdl:loss(x, y) or m2.cross_entropy(mdl(x), y, -100)
  if cfg.profile == 1 and not tape_report and batches == cfg.warmup + 1 then
    local dev = device:match("^cuda") and "cuda" or "cpu"
    tape_report = m2.profile.tape_report { title = string.format(
      "\nstep_time: what the autograd tape holds after the forward of step %d (each buffer once; %s memory in use " ..
      "then %.2f GiB, peak of the step so far %.2f GiB)", batches, dev, m2.core.mem_current(dev) / 2 ^ 30,
      m2.core.mem_peak(dev) / 2 ^ 30) }
  end
  return l
end

local nckpt = m2.models.checkpointed(model.spec)
print(string.format("step_time: %s (%s, d %d, vocab %d, %s parameters) on %s, batch %d x %d tokens, %s products, " ..
  "%s activations, %s", spec.name or cfg.config, spec.layers, spec.d, spec.vocab,
  m2.models.human(m2.models.param_count(model)), device, cfg.batch, cfg.len, cfg.precision, cfg.activations,
  nckpt == 0 and "no block checkpointed" or string.format("%d of %d blocks checkpointed", nckpt, #spec.layers)))

if cfg.profile ~= 0 and cfg.profile ~= 1 and cfg.profile ~= 2 then
  m2.error("step_time: profile must be 0 (off), 1 (every op synchronised) or 2 (timeline)")
end
local opt = m2.optim.adamw { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-10, weight_decay = 0.1 }
if cfg.profile == 2 then -- the timeline ends with the last step's optimizer step (not the checkpoint m2.train saves)
  local step, n = opt.step, 0
  function opt.step(self, lr)
    local used = step(self, lr)
    n = n + 1
    if n == cfg.steps then m2.profile.stop() end
    return used
  end
end
local summary = m2.train {
  model = model, data = data, steps = cfg.steps,
  optim = opt,
  loss = loss, schedule = { kind = "constant" }, clip = 1.0, log_every = 1, out = cfg.out, overwrite = true, config = cfg,
  precision = cfg.precision, activations = cfg.activations,
}

-- the per-step metrics m2.train logged (log_every = 1): tokens/s and peak memory of each step
local runs = require "m2.runs"
local steps, tps = runs.series(summary.out, "metrics", "tokens_per_s")
local _, mem = runs.series(summary.out, "metrics", "peak_mem_mb")
local times, peak = {}, 0
for i, step in ipairs(steps) do
  if step > cfg.warmup and tps[i] > 0 then
    times[#times + 1] = cfg.batch * cfg.len / tps[i]
    peak = math.max(peak, mem[i])
  end
end
table.sort(times)
local med
if #times == 0 then
  print(string.format("step_time: no timed step (steps = %d, warmup = %d)", cfg.steps, cfg.warmup))
else
  med = times[(#times + 1) // 2]
  print(string.format("step_time: %s on %s, " .. cfg.precision .. " products, " .. cfg.activations ..
    " activations" .. (m2.core.mixed_kernels() and " (mixed kernels)" or "") ..
    ": median step %.1f ms over %d steps (min %.1f), %.1f k tokens/s, " ..
    "peak memory %.2f GiB (run file %s)", spec.layers, device, med * 1e3, #times, times[1] * 1e3,
    cfg.batch * cfg.len / med / 1e3, peak / 1024, summary.out))
end
if cfg.profile == 2 then
  m2.profile.stop()
  local n = cfg.steps - cfg.warmup
  if n > 0 then
    print(m2.profile.report { per = n, title = string.format("\nstep_time: ops by GPU time per step over %d " ..
      "profiled step(s) (timeline: no synchronisation per op; GPU ms = the op calls' spans on the device's stream, " ..
      "host ms = the host's time to issue them, gap ms before = the GPU idle just before them)", n) })
    local t = m2.profile.timeline()
    print(string.format("step_time: GPU idle between ops: %.2f ms of %.2f ms (%.1f %%) per step (timeline window; " ..
      "median step %s) — a CUDA graph could save at most about that", t.gaps_s * 1e3 / n, t.window_s * 1e3 / n,
      t.window_s > 0 and 100 * t.gaps_s / t.window_s or 0, med and string.format("%.2f ms", med * 1e3) or "n/a"))
  end
elseif cfg.profile ~= 0 then
  m2.profile.stop()
  local n = cfg.steps - cfg.warmup
  if n > 0 then
    print(m2.profile.report { per = n, title = string.format(
      "\nstep_time: ops by time per step over %d profiled step(s) (each op synchronised: read the shares)", n) })
    local casts = m2.profile.cast_report { per = n, title =
      "\nstep_time: the bf16 conversions per step (their time is the to_dtype row) by the op that caused them" }
    if casts then print(casts) end
  end
  if tape_report then print(tape_report) end
end
