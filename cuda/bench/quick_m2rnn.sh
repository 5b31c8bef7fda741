#!/usr/bin/env bash
# quick_m2rnn.sh OUTDIR — on the GPU machine, the short loop for work on the M2RNN kernels: configure (Lua from
# .deps/, as cuda/gpu_run.sh does) if needed, build only the M2RNN test and benchmark, run the parity test and
# the benchmark's quick rows (M2_BENCH_QUICK=1; M2_BENCH_CKS adds checkpoint intervals). The full flow with
# every CUDA test is cuda/gpu_run.sh.
set -uo pipefail
out=${1:?usage: cuda/bench/quick_m2rnn.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-gpu}"
. "$root/cuda/bench/gpu_configure.sh"
ninja -C "$build" cuda_ops_m2rnn bench_m2rnn >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
t=$(find "$build" -name cuda_ops_m2rnn -type f -perm -u+x | head -1)
"$t" >"$out/test.log" 2>&1
echo "cuda_ops_m2rnn: exit $? ($(tail -1 "$out/test.log"))"
M2_BENCH_QUICK=1 "$build/bench/bench_m2rnn" "${M2_BENCH_REPS:-7}" | tee "$out/bench_quick.txt"
