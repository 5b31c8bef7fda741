#!/usr/bin/env bash
# ab_m2rnn.sh OUTDIR — on the GPU machine, an A/B comparison of versions of the M2RNN kernels on the same GPU.
# For each value v in M2_AB_VARIANTS (default "0 1") it configures a build with -DM2R_AB=v in the CUDA flags (the
# kernel sources select an experiment with `#if M2R_AB`; Lua from .deps/, as cuda/gpu_run.sh does), builds the
# parity test cuda_ops_m2rnn and bench_m2rnn (the builds run in parallel), runs the test, then times the variants in
# turn, twice (M2_BENCH_QUICK=2: the 400M layer's default rows and ckpt 64), so that the machine-to-machine spread
# (~1%) does not enter the comparison and every timed variant is also checked. Pass carry=[".deps"].
# M2_AB_DEFINE names the macro set to each variant (default M2R_AB; e.g. M2R_TANH_HIDES_NAN).
set -uo pipefail
out=${1:?usage: cuda/bench/ab_m2rnn.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
vs="${M2_AB_VARIANTS:-0 1}"
mkdir -p "$out" /tmp/lua
for d in "$root"/.deps/liblua5.4-0_*.deb "$root"/.deps/liblua5.4-dev_*.deb; do
  [ -f "$d" ] || { echo "missing $d (pass carry=[\".deps\"])"; exit 2; }
  dpkg -x "$d" /tmp/lua
done
jobs_per=$(($(nproc) / $(echo $vs | wc -w)))
for v in $vs; do
  (
    b="${M2_AB_BUILD:-$root/build-ab}-$v"
    [ -f "$b/build.ninja" ] || cmake -S "$root" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS="-D${M2_AB_DEFINE:-M2R_AB}=$v" \
      -DLUA_INCLUDE_DIRS="/tmp/lua/usr/include/lua5.4;/tmp/lua/usr/include/x86_64-linux-gnu" \
      -DLUA_LIBRARIES=/tmp/lua/usr/lib/x86_64-linux-gnu/liblua5.4.a >"$out/build_$v.log" 2>&1
    ninja -C "$b" -j "$jobs_per" cuda_ops_m2rnn bench_m2rnn >>"$out/build_$v.log" 2>&1
  ) &
done
wait
for v in $vs; do
  b="${M2_AB_BUILD:-$root/build-ab}-$v"
  t=$(find "$b" -name cuda_ops_m2rnn -type f -perm -u+x | head -1)
  [ -n "$t" ] && [ -x "$b/bench/bench_m2rnn" ] || { echo "variant $v: build failed"; tail -20 "$out/build_$v.log"; exit 3; }
  "$t" >"$out/test_$v.log" 2>&1
  echo "variant $v: cuda_ops_m2rnn exit $? ($(tail -1 "$out/test_$v.log"))"
done | tee "$out/ab.txt"
for r in 1 2; do
  for v in $vs; do
    echo "## run $r, variant $v"
    M2_BENCH_QUICK=2 "${M2_AB_BUILD:-$root/build-ab}-$v/bench/bench_m2rnn" "${M2_BENCH_REPS:-5}" |
      grep -E "^\| 400M +\| (fast|general)"
  done
done | tee -a "$out/ab.txt"
