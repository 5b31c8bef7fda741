#!/usr/bin/env bash
# ab_m2rnn.sh OUTDIR — on the GPU machine, an A/B comparison of two versions of the M2RNN kernels on the same GPU:
# builds bench_m2rnn for each value in M2_AB_VARIANTS (default "0 1"; -DM2R_AB=v, the kernel sources select an
# experiment with `#if M2R_AB`), then runs them in turn twice (M2_BENCH_QUICK=2: the 400M layer's default rows and ckpt 64) so that the
# machine-to-machine spread (~1%) does not enter the comparison. Lua is not needed. Correctness is the job of
# cuda/bench/quick_m2rnn.sh (cuda_m2rnn) once a variant is adopted.
set -uo pipefail
out=${1:?usage: cuda/bench/ab_m2rnn.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" /tmp/ab
src="$root/cuda/bench/bench_m2rnn.cu $root/cuda/m2rnn_fwd.cu $root/cuda/m2rnn_bwd.cu $root/core/status.c"
vs="${M2_AB_VARIANTS:-0 1}"
for v in $vs; do
  nvcc -O3 -arch=sm_90 -DM2R_AB=$v -I"$root/core" -I"$root/cuda" -o /tmp/ab/bench_$v $src -Xptxas -v \
    >"$out/build_$v.log" 2>&1 &
done
wait
for v in $vs; do
  [ -x /tmp/ab/bench_$v ] || { echo "build $v failed"; tail -20 "$out/build_$v.log"; exit 3; }
  echo "variant $v: $(grep -A2 "_Z12m2r_bwd_fastILi2ELi0ELi64ELb1E" "$out/build_$v.log" | grep -oE "[0-9]+ bytes spill stores|Used [0-9]+ registers" | tr '\n' ' ')"
done
for r in 1 2; do
  for v in $vs; do
    echo "## run $r, variant $v"
    M2_BENCH_QUICK=2 /tmp/ab/bench_$v "${M2_BENCH_REPS:-5}" | grep -E "^\| 400M +\| (fast|general)"
  done
done | tee "$out/ab.txt"
