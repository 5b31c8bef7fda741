#!/usr/bin/env bash
# session_steps.sh OUTDIR — one device call: the parity tests of the chunked GDN / SSD kernels (on by default), the
# whole 400M training steps with them against the recurrent ones, hybrid-m2rnn with and without activations=bf16, the
# CUDA Lua tests, bench_gdn and per-kernel times under Nsight Compute, on CPU cores 0-1, while a state-tracking recipe sweep (CPU runs, bit-identical to
# this VM's) uses the other cores. Everything lands in OUTDIR/all.tar.gz (the device tool returns few files).
#   M2_DEADLINE_S   seconds for the whole call (default 560)
#   M2_ST_SWEEPS    ';'-separated sweeps, each "name:overrides" for experiments/sweep_state_tracking.lua
#                   (default: none); cores 2.. are shared among them by their parallel= settings
set -uo pipefail
out=${1:?usage: cuda/bench/session_steps.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build-gpu"
deadline=$((SECONDS + ${M2_DEADLINE_S:-560}))
left() { echo $((deadline - SECONDS)); }
mkdir -p "$out"
. "$root/cuda/bench/gpu_configure.sh"
t0=$SECONDS
ninja -C "$build" >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 3; }
echo "build: $((SECONDS - t0)) s"
ncpu=$(nproc)

# the state-tracking sweeps, in the background on cores 2..
pids=()
IFS=';' read -ra sweeps <<<"${M2_ST_SWEEPS:-}"
for sw in "${sweeps[@]}"; do
  [ -n "$sw" ] || continue
  name=${sw%%:*} args=${sw#*:}
  (cd "$root" && exec timeout $(($(left) - 25)) taskset -c 2-$((ncpu - 1)) "$build/m2lab" run \
    experiments/sweep_state_tracking.lua $args out="$out/st/$name" >"$out/st_$name.log" 2>&1) &
  pids+=($!)
done

# the GPU work on cores 0-1
run_step() { # name env... -- step_time args
  local name=$1
  shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  (cd "$root" && env "${envs[@]}" timeout 150 taskset -c 0-1 "$build/m2lab" run experiments/step_time.lua device=cuda \
    batch=4 steps=4 warmup=1 out=/tmp/st_$name.h5 "$@" >"$out/step_$name.log" 2>&1)
  echo "step $name: $(tail -1 "$out/step_$name.log")"
}
# the parity tests of the kernels whose defaults changed (chunked GDN / SSD on), then the steps, then the benchmarks
for t in cuda_ops_gdn_chunk cuda_ops_ssd_chunk cuda_ops_gdn cuda_ops_ssd cuda_op_cases; do
  [ "$(left)" -gt 60 ] || break
  timeout 150 taskset -c 0-1 "$build/tests/$t" >"$out/test_$t.log" 2>&1
  echo "$t: exit $? ($(tail -1 "$out/test_$t.log"))"
done
G=config=experiments/configs/400m-hybrid-gdn.lua S=config=experiments/configs/400m-hybrid-mamba2.lua
run_step gdn_rec M2_GDN_CHUNK_TC=0 -- $G
run_step gdn_default M2_GDN_STEP_DEFAULT=1 -- $G
run_step ssd_rec M2_SSD_CHUNK_TC=0 -- $S
run_step ssd_default M2_SSD_STEP_DEFAULT=1 -- $S
run_step m2rnn M2_STEP=1 --
run_step m2rnn_act_bf16 M2_STEP=1 -- activations=bf16
[ "$(left)" -gt 90 ] && { (cd "$build" && timeout $(($(left) - 60)) taskset -c 0-1 ctest -R "lua_cuda" \
  --output-on-failure >"$out/ctest_lua_cuda.log" 2>&1); echo "ctest lua_cuda: exit $? ($(grep "tests passed" \
  "$out/ctest_lua_cuda.log"))"; }
[ "$(left)" -gt 60 ] && { taskset -c 0-1 "$build/bench/bench_gdn" 5 >"$out/bench_gdn.md" 2>&1; echo "bench_gdn: exit $?"; }
# per-kernel times of the chunked kernels (Nsight Compute, one metric, clocks left alone), first 400M launches
kre='regex:k_gdn_(prep|scan|bscan|bgrad|bwy)|k_chain|k_scan|k_bwd|k_state|k_pass|k_group_sum|k_da_sum'
for b in gdn ssd; do
  [ "$(left)" -gt 60 ] || break
  timeout $(($(left) - 40)) taskset -c 0-1 ncu --clock-control none --metrics gpu__time_duration.sum -k "$kre" \
    --launch-count 48 "$build/bench/bench_$b" 1 >"$out/ncu_$b.txt" 2>&1
  echo "ncu bench_$b: exit $? ($(grep -c gpu__time_duration "$out/ncu_$b.txt") kernels)"
done
echo "steps done ($(left) s left)"
for p in "${pids[@]}"; do wait "$p"; done
for f in "$out"/st_*.log; do [ -f "$f" ] && { echo "== $f"; tail -25 "$f"; }; done
tar -C "$out" -czf /tmp/all.tar.gz . && rm -rf "${out:?}"/* && mv /tmp/all.tar.gz "$out/all.tar.gz"
ls -la "$out/all.tar.gz"
