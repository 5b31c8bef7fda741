#!/usr/bin/env bash
# moe_grouped_check.sh OUTDIR — the GPU work for the grouped MoE GEMMs (cuda/moe_gmm_tc.cu, M2_MOE_GROUPED=1) in one
# device call (pass carry=[".deps"]): build only what it needs (build-gpu: m2lab, cuda_ops_moe, bench_moe), then
#   1. tests/cuda_ops_moe (parity of both paths with the CPU, grouped vs per-expert, determinism)
#   2. the same under compute-sanitizer memcheck (out-of-bounds accesses of the new kernels)
#   3. bench_moe: the 7B MoE layer, every row on the per-expert cuBLAS path and on the grouped kernels
#   4. a 7B-hybrid-m2rnn step cut to layers MA, B = 4, with M2_MOE_GROUPED=0 (per-expert, the default) and =1 (grouped)
# Each later step stops at a deadline (M2_DEADLINE_S seconds after the start, default 560). Writes OUTDIR/moe_grouped.md.
set -uo pipefail
out=${1:?usage: cuda/bench/moe_grouped_check.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deadline=$((SECONDS + ${M2_DEADLINE_S:-560}))
left() { echo $((deadline - SECONDS)); }
mkdir -p "$out"
mkdir -p /tmp/lua # the Lua of .deps/, as cuda/bench/quick_check.sh builds
for d in "$root"/.deps/liblua5.4-0_*.deb "$root"/.deps/liblua5.4-dev_*.deb; do dpkg -x "$d" /tmp/lua; done
t0=$(date +%s)
cmake -S "$root" -B "$root/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DLUA_INCLUDE_DIRS="/tmp/lua/usr/include/lua5.4;/tmp/lua/usr/include/x86_64-linux-gnu" \
  -DLUA_LIBRARIES=/tmp/lua/usr/lib/x86_64-linux-gnu/liblua5.4.a >"$out/build.log" 2>&1 &&
  ninja -C "$root/build-gpu" m2lab cuda_ops_moe bench_moe >>"$out/build.log" 2>&1
echo "build: exit $? in $(($(date +%s) - t0)) s" >"$out/moe_grouped_build.txt"
cd "$root"
sum="$out/moe_grouped.md"
{
  cat "$out/moe_grouped_build.txt"
  echo "# moe_grouped_check $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name --format=csv,noheader) git $(git rev-parse --short HEAD)"
  echo "## cuda_ops_moe"
  timeout $(($(left) - 5)) build-gpu/tests/cuda_ops_moe 2>&1 | tail -25
  echo "exit $?"
  if [ "$(left)" -gt 120 ]; then
    echo "## cuda_ops_moe under compute-sanitizer memcheck"
    timeout $(($(left) - 90)) compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
      build-gpu/tests/cuda_ops_moe 2>&1 | tail -6
    echo "exit $?"
  fi
  if [ "$(left)" -gt 40 ]; then
    echo "## bench_moe"
    timeout $(( $(left) > 150 ? 120 : $(left) - 10 )) build-gpu/bench/bench_moe 2>&1
    echo "exit $?"
  fi
  for g in 0 1; do
    [ "$(left)" -gt 40 ] || break
    echo "## step_time 7b-hybrid-m2rnn layers=MA batch=4, M2_MOE_GROUPED=$g"
    M2_MOE_GROUPED=$g timeout $(($(left) - 20)) build-gpu/m2lab run experiments/step_time.lua \
      config=experiments/configs/7b-hybrid-m2rnn.lua layers=MA device=cuda batch=4 steps=4 warmup=1 out=/tmp/st7_$g.h5 \
      2>&1 | tail -4
    echo "exit $?"
  done
} | tee "$sum"
echo "moe_grouped_check: done with $(left) s left"
