--[==[ m2.dist — training on several processes: the process group, data parallelism in m2.train, and `m2lab launch`
(core/dist.h, core/dist_dp.h; DISTRIBUTED.md has the design and the numbers).

  m2.dist.env()        -> {rank, world, local_rank, source, master_addr, master_port, under_mpi}, read from the
                          launcher's environment without starting anything (torchrun-style RANK / WORLD_SIZE /
                          LOCAL_RANK / MASTER_ADDR / MASTER_PORT, Open MPI's OMPI_COMM_WORLD_*, Slurm's SLURM_* under srun)
  m2.dist.rank() m2.dist.world() m2.dist.local_rank()   -- the same, one number
  m2.dist.group{device = "cpu", backend = "auto", timeout = 300} -> the process group (made once, then the same):
                          g:allreduce_sum(t) g:reduce_scatter_sum(send, recv) g:allgather(send, recv)
                          g:broadcast(t, root) g:barrier() g:allgather_numbers{...} g:broadcast_string(s, root)
                          backends: "self" (one process), "mpi" (CPU tensors, under mpirun), "nccl" (CUDA tensors)

m2.train with world > 1 (nothing to change in a script; every rank runs the same script with the same overrides):
  * the global batch is what data:batch(index) returns; rank r trains on rows [r B/R, (r+1) B/R) of it (B must be a
    multiple of the world size R), so the data, the loss and the schedule do not depend on R;
  * each rank's loss is scaled by 1 / (grad_accum R) before its backward, and the gradients are summed over the
    ranks in buckets (dist_bucket = elements, default 2^24) after the backward; the reported loss is the mean over
    ranks and micro-batches; the grad norm and clipping are those of the summed (global-batch) gradient;
  * zero = true (the default when R > 1; zero=false on the command line or in m2.train{} turns it off): ZeRO-1, the
    optimizer state is sharded over the ranks (each holds about 1/R of AdamW's m and v and updates its part of the
    parameters, which are then all-gathered), communicating as much as a plain all-reduce does;
  * rank 0 alone writes the run file: the global metrics, plus tokens_per_s_rank<r> and peak_mem_mb_rank<r> of
    every rank, and the attributes dist_world, dist_backend, dist_zero; checkpoints hold the full state (ZeRO-1 state
    gathered), so `m2lab resume` continues at any world size (the cursor counts global batches);
  * every rank checks at the start that all ranks have the same configuration, model and overrides (a hash,
    all-gathered): a mismatch is an error on every rank; a collective that waits longer than dist_timeout (seconds,
    default 300) fails instead of hanging, and a failed rank takes the job down (MPI_Abort / the launcher);
  * Ctrl-C or SIGTERM: the ranks agree at the next step to stop, write one checkpoint and exit 130;
  * eval runs on every rank (same result), rank 0 logs it;
  * expert parallelism (an LM's mlp = {kind = "moe", expert_parallel = true, ...}; lua/m2/layers/moe.lua): the
    experts' parameters are rank-local slices (dist.shards finds them): their gradients are not summed over the
    ranks, ZeRO-1 leaves them whole on their rank, and checkpoints gather them to the whole (E, ...) tensors (and
    their AdamW state), which a resume slices again for its world size.
  With the MPI backend the sums run in rank order, so R ranks with grad_accum = a give exactly the bits of one process
  that trains the same global batch as R a micro-batches in rank order (tests/lua/dist_train.lua checks it); against
  one process that takes the whole batch at once they differ in the last bits (summation order) only.

`m2lab launch -n N SCRIPT.lua key=value ...` starts N ranks on this machine: under mpirun when this m2lab has the MPI
backend and mpirun is installed (CPU ranks need it; GPU ranks then get NCCL's id over MPI), else N processes with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and MASTER_PORT (NCCL's TCP rendezvous) that it watches: when one
dies it stops the others and exits non-zero naming the rank. Options before the script: -n N, --no-mpi (always the
second way), --port P (MASTER_PORT, default $MASTER_PORT or 29500 + pid % 1000).
]==]

local m2 = require "m2"
local core = m2.core

local dist = {}

local function fail(msg) m2.error("m2.dist: " .. msg) end

local env_cache
function dist.env()
  if not env_cache then env_cache = core.dist_env() end
  return env_cache
end
function dist.rank() return dist.env().rank end
function dist.world() return dist.env().world end
function dist.local_rank() return dist.env().local_rank end

local the_group
function dist.group(opts)
  if the_group then return the_group end
  opts = opts or {}
  the_group = core.dist_init { backend = opts.backend, device = opts.device or "cpu", timeout = opts.timeout }
  return the_group
end

-- ---------------------------------------------------------------------------------------
-- data parallelism inside m2.train (the hooks train.lua calls when the world size is above 1)
-- ---------------------------------------------------------------------------------------

local DP = {}
DP.__index = DP

local function arg_or(name, v)
  local a = m2.args[name]
  if a == nil then return v end
  return a
end

-- the text every rank must agree on: the resolved config and training record, the overrides, the parameters
local function agreement_text(s, st)
  local runs = require "m2.runs"
  local cj = runs.json_decode(st.config_json)
  if type(cj.train) == "table" then cj.train.device = nil end -- cuda:<local rank> differs between ranks
  local parts = { runs.json_encode(cj) }
  for _, p in ipairs(st.params) do parts[#parts + 1] = p.name .. table.concat(p.tensor:shape(), "x") end
  local order = core.args_order or {}
  for _, k in ipairs(order) do parts[#parts + 1] = k .. "=" .. tostring((m2.args_raw or {})[k]) end
  return table.concat(parts, "\n")
end

-- dist.device(dev) -> the device of this rank: "cuda" becomes cuda:<local rank mod the GPUs it sees> when there are
-- several ranks (one process per GPU); anything else stays
function dist.device(dev)
  local env = dist.env()
  if env.world == 1 or dev ~= "cuda" then return dev end
  local n = core.dist_cuda_count()
  if n <= 1 then return dev end
  return "cuda:" .. (env.local_rank % n)
end

-- dist.shards(model) -> {[parameter name] = {index = r, parts = R}}: the parameters of which this rank holds rows
-- [r n, (r+1) n) of dim 1 (n = its own size there): the experts of an expert-parallel MoE, marked by the module field
-- _shard (lua/m2/layers/moe.lua). Empty for one process.
function dist.shards(model)
  local out = {}
  if type(model) ~= "table" or type(model.modules) ~= "function" then return out end
  for path, m in model:modules() do
    local sh = rawget(m, "_shard")
    if sh then
      for _, p in ipairs(m:parameters()) do out[path == "" and p.name or path .. "." .. p.name] = sh end
    end
  end
  return out
end

-- dist.full_shape(p) -> the shape of the whole parameter p ({name, tensor, shard}) across the ranks
function dist.full_shape(p)
  local shape = p.tensor:shape()
  if p.shard then shape[1] = shape[1] * p.shard.parts end
  return shape
end

-- dist.setup(s, st) -> the data-parallel state, or nil for one process. s.zero / s.dist_bucket / s.dist_timeout are
-- the m2.train settings (zero=, dist_bucket=, dist_timeout= on the command line win).
function dist.setup(s, st)
  local env = dist.env()
  if env.world == 1 then return nil end
  local zero = arg_or("zero", s.zero)
  if zero == nil then zero = true end
  if zero == 1 or zero == "1" then zero = true elseif zero == 0 or zero == "0" then zero = false end
  if type(zero) ~= "boolean" then fail("zero must be true or false, got " .. tostring(zero)) end
  local bucket = arg_or("dist_bucket", s.dist_bucket or 0)
  local timeout = arg_or("dist_timeout", s.dist_timeout or 0)
  if math.type(bucket) ~= "integer" or bucket < 0 then fail("dist_bucket must be a non-negative integer") end
  if type(timeout) ~= "number" or timeout < 0 then fail("dist_timeout must be a number of seconds >= 0") end
  local g = dist.group { device = s.device, timeout = timeout > 0 and timeout or nil }
  local self = setmetatable({ g = g, rank = g:rank(), world = g:world(), zero = zero, win = {} }, DP)
  for r = 1, self.world do self.win[r] = { tokens = 0, time = 0.0, mem = 0.0 } end
  g:check_same("configuration (config, training settings, parameter names and shapes, overrides)",
    agreement_text(s, st))
  local shards, rank_local = dist.shards(s.model), {}
  for i, p in ipairs(st.params) do
    p.shard = shards[p.name]
    if p.shard then rank_local[#rank_local + 1] = i end
  end
  self.dp = core.dp_new(g, st.opt._c, { zero = zero, bucket = bucket > 0 and bucket or nil, rank_local = rank_local })
  if self.rank ~= 0 then s.quiet = true end
  return self
end

-- rank r's rows of a global batch
function DP:slice(x, what)
  if not m2.is_tensor(x) then
    fail(string.format("data parallelism splits tensor batches by rows, but data:batch returned a %s as %s", type(x),
      what))
  end
  local b = x:size(1)
  if b % self.world ~= 0 then
    fail(string.format("the global batch has %d rows (%s), not a multiple of the world size %d: each rank takes an " ..
      "equal share of the rows", b, what, self.world))
  end
  local n = b // self.world
  return x:narrow(1, self.rank * n + 1, n):contiguous()
end

-- rank 0 runs open(); every rank learns its outcome (a failure is raised on every rank with rank 0's message)
function DP:open(st, s, open)
  local err = ""
  if self.rank == 0 and s.out then
    local ok, e = pcall(open)
    if not ok then err = tostring(e) end
  end
  err = self.g:broadcast_string(err, 0)
  if err ~= "" then error(self.rank == 0 and err or ("rank 0: " .. err), 0) end
  if m2.resuming and s.out then m2.resuming.used = true end
  local has_run = self.g:broadcast_string(st.run and "1" or "0", 0)
  self.root_has_run = has_run == "1"
  if st.run then
    st.run:set_attr("dist_world", self.world)
    st.run:set_attr("dist_backend", self.g:backend())
    st.run:set_attr("dist_zero", self.zero and 1 or 0)
  end
end

local RESUME_FIELDS = { "step", "cursor", "nan_skips", "nan_streak", "tokens", "train_time", "resumed_from",
                        "last_ckpt" }

-- after rank 0 opened (and maybe loaded a checkpoint without the optimizer state, st.dp_state_step): the
-- parameters, the optimizer state and the counters of rank 0 on every rank
function DP:sync_start(st)
  self.dp:broadcast_params(0)
  local runs = require "m2.runs"
  local info = ""
  if self.rank == 0 then
    local t = { opt_steps = st.opt:steps(), state_step = st.dp_state_step, rng = m2.rng_state(), win = st.win }
    for _, k in ipairs(RESUME_FIELDS) do t[k] = st[k] end
    info = runs.json_encode(t)
  end
  local t = runs.json_decode(self.g:broadcast_string(info, 0))
  if self.rank ~= 0 then
    for _, k in ipairs(RESUME_FIELDS) do st[k] = t[k] end
    st.win = t.win
    st.opt:set_steps(t.opt_steps)
    m2.set_rng_state(t.rng)
  end
  if t.state_step then
    -- the rank-local parameters (expert parallelism): rank 0 reads each whole, every rank keeps its slice
    for _, p in ipairs(st.params) do
      if p.shard then p.tensor:copy_(self:read_slice(st, t.state_step, "params/" .. p.name, p)) end
    end
    -- each state tensor: rank 0 reads it whole, every rank keeps its part
    local names = st.opt:state_names()
    for j, sname in ipairs(names) do
      for i, p in ipairs(st.params) do
        local key = "optim/" .. sname .. "/" .. p.name
        local full = p.shard and self:read_slice(st, t.state_step, key, p) or self:read_whole(st, t.state_step, key, p)
        self.dp:load_state(i, j, full)
      end
    end
  end
end

-- checkpoint tensor `key` (shaped like parameter p across the ranks) read by rank 0 and broadcast (on p's device:
-- the backend's memory)
function DP:read_whole(st, step, key, p)
  local full = m2.zeros(dist.full_shape(p), { device = p.tensor:device() })
  if self.rank == 0 then st.run:ckpt_read_into(step, key, full) end
  self.g:broadcast(full, 0)
  return full
end

-- ... and this rank's slice of it (p.shard)
function DP:read_slice(st, step, key, p)
  local n = p.tensor:size(1)
  return self:read_whole(st, step, key, p):narrow(1, self.rank * n + 1, n):contiguous()
end

-- the whole of a rank-local tensor t (a parameter with p.shard, or its optimizer state): the ranks' slices
-- all-gathered in rank order along dim 1 (every rank calls it; every rank gets the whole)
function DP:gather_shard(t)
  local shape = t:shape()
  shape[1] = shape[1] * self.world
  local full = m2.empty(shape, { device = t:device() })
  self.g:allgather(t:contiguous(), full)
  return full
end

-- after the backward passes: sum the gradients, agree on the loss, tokens, interruption; clip
-- -> loss (global mean), tokens (global), grad norm
function DP:reduce(st, s, lsum, tokens, dt, mem)
  self.dp:sync_grads()
  local all = self.g:allgather_numbers { lsum, tokens, dt, mem, m2.interrupted() and 1 or 0 }
  local total, ntok, stop = 0.0, 0, false
  for r = 1, self.world do
    local a = all[r]
    total = total + a[1]
    ntok = ntok + math.tointeger(a[2])
    local w = self.win[r]
    w.tokens, w.time, w.mem = w.tokens + a[2], w.time + a[3], math.max(w.mem, a[4])
    stop = stop or a[5] ~= 0
  end
  self.stop = stop
  local gnorm = self.dp:clip(s.clip or math.huge)
  return total / (s.grad_accum * self.world), ntok, gnorm
end

function DP:step(lr) self.dp:step(lr) end

-- per-rank throughput and memory over the logging window (rank 0 writes them)
function DP:log(run, step)
  for r = 1, self.world do
    local w = self.win[r]
    if run then
      run:log("metrics", "tokens_per_s_rank" .. (r - 1), step, w.time > 0 and w.tokens / w.time or 0)
      run:log("metrics", "peak_mem_mb_rank" .. (r - 1), step, w.mem)
    end
    w.tokens, w.time, w.mem = 0, 0.0, 0.0
  end
end

-- state tensor j of parameter i for a checkpoint (gathered under ZeRO-1; every rank calls it)
function DP:state(i, j) return self.dp:full_state(i, j) end

-- a failed training: this rank takes the others down when it exits rather than leaving them waiting
function DP:failed() self.g:abort_at_exit() end

-- ---------------------------------------------------------------------------------------
-- m2lab launch -n N SCRIPT.lua key=value ...
-- ---------------------------------------------------------------------------------------

local function which(name)
  for dir in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
    local p = dir .. "/" .. name
    local f = io.open(p, "rb")
    if f then
      f:close()
      return p
    end
  end
  return nil
end

local function usage(msg)
  io.stderr:write("m2lab launch: ", msg, "\nusage: m2lab launch -n N [--no-mpi] [--port P] SCRIPT.lua [key=value ...]\n")
  return 2
end

local function describe(code, sig)
  if sig then return "was killed by signal " .. tostring(sig) end
  return "exited with status " .. tostring(code)
end

-- the N-process way: spawn, watch, stop the others when one fails
local function launch_env(n, port, script, overrides)
  m2.interrupted() -- poll: a Ctrl-C reaches the ranks too; the launcher waits for them to save and stop
  local pids, rank_of, left = {}, {}, n
  for r = 0, n - 1 do
    local argv = { "/usr/bin/env", "RANK=" .. r, "WORLD_SIZE=" .. n, "LOCAL_RANK=" .. r, "LOCAL_WORLD_SIZE=" .. n,
                   "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" .. port, m2.exe, "run", script }
    for _, o in ipairs(overrides) do argv[#argv + 1] = o end
    local pid = core.spawn(argv)
    pids[r] = pid
    rank_of[pid] = r
  end
  local status, failed = 0, nil
  local deadline
  while left > 0 do
    local pid, code, sig = core.wait(-1, deadline ~= nil)
    if pid and rank_of[pid] then
      local r = rank_of[pid]
      rank_of[pid], pids[r] = nil, nil
      left = left - 1
      local bad = sig ~= nil or code ~= 0
      if bad and not failed then
        failed = r
        status = sig and 128 + sig or code
        local interrupted = m2.interrupted()
        if interrupted and code == 130 then
          io.stderr:write(string.format("m2lab launch: rank %d stopped (interrupted); waiting for the others\n", r))
        else
          io.stderr:write(string.format("m2lab launch: rank %d (pid %d) %s: stopping the other ranks\n", r, pid,
            describe(code, sig)))
          for q, p in pairs(pids) do if p then core.kill(p, "TERM") end end
        end
        deadline = core.clock() + (interrupted and 120 or 15)
      end
    elseif deadline then
      if core.clock() > deadline then
        for q, p in pairs(pids) do
          io.stderr:write(string.format("m2lab launch: rank %d (pid %d) did not stop: killing it\n", q, p))
          core.kill(p, "KILL")
        end
        deadline = core.clock() + 3600
      end
      core.sleep(0.05)
    end
  end
  if failed then
    io.stderr:write(string.format("m2lab launch: failed: rank %d %s\n", failed, status > 128 and
      ("was killed by signal " .. (status - 128)) or ("exited with status " .. status)))
  end
  return status
end

function dist.main(args)
  local n, mpi, port, script = nil, true, nil, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-n" or a == "--nproc" then
      n = math.tointeger(tonumber(args[i + 1] or ""))
      i = i + 2
    elseif a:match("^%-n%d+$") then
      n = math.tointeger(tonumber(a:sub(3)))
      i = i + 1
    elseif a == "--no-mpi" then
      mpi = false
      i = i + 1
    elseif a == "--port" then
      port = math.tointeger(tonumber(args[i + 1] or ""))
      i = i + 2
    elseif a:sub(1, 1) == "-" then
      return usage("unknown option " .. a)
    elseif script then
      return usage("one script only (got " .. script .. " and " .. a .. ")")
    else
      script = a
      i = i + 1
    end
  end
  if not n or n < 1 then return usage("-n N: the number of processes (a positive integer) is missing") end
  if not script then return usage("the script is missing") end
  if not port then port = math.tointeger(tonumber(os.getenv("MASTER_PORT") or "")) or 29500 + core.getpid() % 1000 end
  local overrides = {}
  for _, k in ipairs(core.args_order or {}) do overrides[#overrides + 1] = k .. "=" .. m2.args_raw[k] end
  local mpirun = mpi and core.dist_backends():find("mpi", 1, true) and which("mpirun")
  if not mpirun then return launch_env(n, port, script, overrides) end
  local argv = { mpirun, "-n", tostring(n), "--oversubscribe", "--bind-to", "none" }
  local uid = io.popen and io.popen("id -u 2>/dev/null")
  if uid then
    if uid:read("l") == "0" then argv[#argv + 1] = "--allow-run-as-root" end
    uid:close()
  end
  for _, a in ipairs { m2.exe, "run", script } do argv[#argv + 1] = a end
  for _, o in ipairs(overrides) do argv[#argv + 1] = o end
  m2.interrupted() -- poll: mpirun passes a Ctrl-C on to the ranks, which save and stop; wait for it
  local pid = core.spawn(argv)
  while true do
    local p, code, sig = core.wait(pid)
    if p then
      if sig then return 128 + sig end
      if code ~= 0 then io.stderr:write("m2lab launch: mpirun exited with status ", code, " (its lines above name the rank)\n") end
      return code
    end
  end
end

return dist
