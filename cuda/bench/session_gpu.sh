#!/usr/bin/env bash
# session_gpu.sh OUTDIR OLDTREE — one device call that does the most valuable GPU work first and stops each later
# step at a deadline (M2_DEADLINE_S seconds after the start, default 560, for a 600 s call):
#   1. cuda/bench/ab_trees.sh all: build this tree and OLDTREE, the CUDA tests of this tree, the old / new benchmark
#      alternation (M2_AB_ROUNDS, default 2)
#   2. generation speed (experiments/decode_speed.lua, 400M hybrid-m2rnn, batch 1 and 64, bf16 products)
#   3. the MoE layer benchmark and a reduced-depth 7B step
#   4. compute-sanitizer memcheck over the CUDA C tests, one after another, until the deadline
# OLDTREE "-": no comparison, cuda/bench/quick_check.sh instead of step 1. Pass carry=[".deps", OLDTREE]. At most 7 files come back: ab_all.md, build_{old,new}.log, ctest_new.log,
# decode.md, moe.md, memcheck.log.
set -uo pipefail
out=${1:?usage: session_gpu.sh OUTDIR OLDTREE}
old=${2:?old tree}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deadline=$((SECONDS + ${M2_DEADLINE_S:-560}))
left() { echo $((deadline - SECONDS)); }
if [ "$old" = "-" ]; then   # no old tree: build this one, its CUDA tests, the 400M rows and one step
  bash "$root/cuda/bench/quick_check.sh" "$out"
else
  M2_AB_ROUNDS=${M2_AB_ROUNDS:-2} bash "$root/cuda/bench/ab_trees.sh" "$out" "$old" all
fi
cd "$root"
if [ "$(left)" -gt 30 ]; then
  { echo "# decode_speed $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name --format=csv,noheader) git $(git rev-parse --short HEAD)"
    timeout $(($(left) - 5)) build-gpu/m2lab run experiments/decode_speed.lua device=cuda 2>&1
    echo "exit $?"; } | tee "$out/decode.md"
fi
if [ "$(left)" -gt 40 ]; then
  { echo "# MoE layer (bench_moe) and a 7B-hybrid-m2rnn step cut to layers MA, B=4 T=4096"
    timeout $(( $(left) > 130 ? 90 : $(left) - 10 )) build-gpu/bench/bench_moe 2>&1; echo "bench_moe exit $?"
    [ "$(left)" -gt 40 ] && timeout $(($(left) - 20)) build-gpu/m2lab run experiments/step_time.lua \
      config=experiments/configs/7b-hybrid-m2rnn.lua layers=MA device=cuda batch=4 steps=4 warmup=1 out=/tmp/st7.h5 2>&1 | tail -4
    echo "exit $?"; } | tee "$out/moe.md"
fi
if [ "$(left)" -gt 20 ]; then
  for t in build-gpu/tests/cuda_*; do
    [ -x "$t" ] && [ "$(left)" -gt 15 ] || continue
    echo "## $t"
    timeout $(($(left) - 5)) compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 "$t" 2>&1 | tail -4
    echo "exit $?"
  done | tee "$out/memcheck.log"
fi
echo "session_gpu: done with $(left) s left"
