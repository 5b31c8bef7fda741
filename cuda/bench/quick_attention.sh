#!/usr/bin/env bash
# quick_attention.sh OUTDIR — on the GPU machine, the short loop for work on the attention kernels: configure (Lua
# from .deps/, as cuda/gpu_run.sh does) if needed, build the attention parity test and the benchmark, run them.
# The full flow with every CUDA test is cuda/gpu_run.sh.
set -uo pipefail
out=${1:?usage: cuda/bench/quick_attention.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-gpu}"
. "$root/cuda/bench/gpu_configure.sh"
ninja -C "$build" cuda_ops_attention bench_attention >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
for t in cuda_ops_attention; do
  "$build/tests/$t" >"$out/$t.log" 2>&1
  echo "$t: exit $? ($(tail -1 "$out/$t.log"))"
done
grep -E "FAIL|error" "$out/cuda_ops_attention.log" | head -20
"$build/bench/bench_attention" "${M2_BENCH_REPS:-5}" | tee "$out/bench_attention.txt"
