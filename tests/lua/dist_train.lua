-- dist_train.lua — the small training run of the data-parallel tests (tests/dist_mpi.sh runs it under mpirun with 2
-- and 4 ranks, and in one process for the references). Not a test by itself (no test_ prefix).
--   split = R   one process trains each global batch as R micro-batches of its rows, in rank order (grad_accum R):
--               the run that R ranks must equal bit for bit
--   die_rank, die_step   that rank kills itself (SIGKILL) when it reads that batch: a rank that dies mid-run
--   stall_rank, stall_step, stall_s   that rank sleeps stall_s seconds when it reads that batch: a stuck rank
--   throttle    seconds to sleep per batch (a run slow enough to be interrupted)
--   experts = E (> 0)  MoE MLPs of E experts (top-2) instead of SwiGLU; ep = true: expert parallel (tests/dist_ep.sh)
local m2 = require "m2"

local cfg = m2.config {
  arch = "MA", steps = 8, batch = 8, len = 16, lr = 1e-2, clip = 1.0, split = 1, grad_accum = 1, seed = 0,
  out = "runs/dist.h5", die_rank = -1, die_step = -1, checkpoint_every = 4, throttle = 0.0, group = "S3",
  random_length = false, decay = 6, stall_rank = -1, stall_step = -1, stall_s = 0.0, experts = 0, ep = false, aux = 0.01,
}
m2.seed(cfg.seed)

local spec = { name = "dist-" .. cfg.arch, vocab = 6, d = 16, layers = cfg.arch, mlp = { kind = "swiglu", hidden = 32 },
               m2rnn = { heads = 2, k = 4, v = 8 }, attention = { heads = 2, head_dim = 8, rope = true } }
if cfg.experts > 0 then
  spec.mlp = { kind = "moe", experts = cfg.experts, top_k = 2, expert_hidden = 16, shared_hidden = 16,
               aux_loss_coef = cfg.aux, expert_parallel = cfg.ep }
end
if not cfg.arch:find("A", 1, true) then spec.attention = nil end
if not cfg.arch:find("M", 1, true) then spec.m2rnn = nil end
local model = m2.models.lm(spec)

local base = m2.data.state_tracking { group = cfg.group, length = cfg.len, batch = cfg.batch, seed = cfg.seed,
                                      random_length = cfg.random_length }
local data = { vocab = base.vocab }
function data:batch(i)
  if cfg.throttle > 0 then m2.core.sleep(cfg.throttle) end
  if cfg.die_step >= 0 and i == cfg.die_step and m2.dist.rank() == cfg.die_rank then
    io.stderr:write(string.format("dist_train: rank %d kills itself at batch %d\n", cfg.die_rank, i))
    io.stderr:flush()
    m2.core.kill(m2.core.getpid(), "KILL")
  end
  if cfg.stall_step >= 0 and i == cfg.stall_step and m2.dist.rank() == cfg.stall_rank then m2.core.sleep(cfg.stall_s) end
  if cfg.split == 1 then return base:batch(i) end
  local x, y = base:batch(i // cfg.split)
  local n = cfg.batch // cfg.split
  local r = i % cfg.split
  return x:narrow(1, r * n + 1, n):contiguous(), y:narrow(1, r * n + 1, n):contiguous()
end

m2.train { model = model, data = data, steps = cfg.steps, grad_accum = cfg.grad_accum * cfg.split,
           optim = { kind = "adamw", lr = cfg.lr, weight_decay = 0.1, betas = { 0.9, 0.95 } },
           schedule = { kind = "cosine", warmup = 2, decay = cfg.decay }, clip = cfg.clip, out = cfg.out,
           checkpoint_every = cfg.checkpoint_every, log_every = 1 }
