#!/usr/bin/env bash
# ab_trees.sh OUTDIR OLDTREE [STAGE] — on the GPU machine, the same measurements of two source trees in one call:
# this checkout ("new") and another checkout of m2lab at OLDTREE ("old", e.g. `git archive <commit>` unpacked
# into an ignored folder and carried). Lua from .deps/ as in cuda/gpu_run.sh (carry .deps).
#   STAGE build  configure + build both trees (in parallel), then the CUDA tests of the new tree (ctest -L cuda)
#   STAGE bench  (needs the builds) runs, alternating old / new twice so that drift does not enter the comparison:
#                the M2RNN 400M rows (bench_m2rnn, M2_BENCH_QUICK=1), attention (bench_attention), and a whole
#                training step of the 400M hybrid-m2rnn (experiments/step_time.lua; B = 8 when the GPU has more
#                than 100 GiB, else B = 4)
#   STAGE all    both (default)
# M2_AB_ROUNDS: rounds of the old / new alternation (default 2).
# Writes OUTDIR/ab_<stage>.md (summary) and logs.
set -uo pipefail
out=${1:?usage: ab_trees.sh OUTDIR OLDTREE [build|bench|all]}
old=$(cd "${2:?old tree}" && pwd)
stage=${3:-all}
new="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" /tmp/lua
for d in "$new"/.deps/liblua5.4-0_*.deb "$new"/.deps/liblua5.4-dev_*.deb; do
  [ -f "$d" ] || { echo "missing $d (pass carry=[\".deps\"])"; exit 2; }
  dpkg -x "$d" /tmp/lua
done
sum="$out/ab_$stage.md"
log() { echo "$*" | tee -a "$sum"; }
log "# ab_trees $stage $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
log "new: $(git -C "$new" rev-parse --short HEAD 2>/dev/null) ($(git -C "$new" status --porcelain 2>/dev/null | wc -l) changed); old: $(cat "$old/.tree" 2>/dev/null || echo "$old")"
build_tree() { # dir tag [targets]
  [ -f "$1/build-gpu/build.ninja" ] || cmake -S "$1" -B "$1/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLUA_INCLUDE_DIRS="/tmp/lua/usr/include/lua5.4;/tmp/lua/usr/include/x86_64-linux-gnu" \
    -DLUA_LIBRARIES=/tmp/lua/usr/lib/x86_64-linux-gnu/liblua5.4.a >"$out/build_$2.log" 2>&1
  ninja -C "$1/build-gpu" -j $(($(nproc) / 2)) ${3:-} >>"$out/build_$2.log" 2>&1
}
if [ "$stage" = build ] || [ "$stage" = all ]; then
  t0=$(date +%s)
  # the old tree: only what the comparison runs; the new tree: everything (its CUDA tests run here)
  build_tree "$old" old "m2lab bench_m2rnn bench_attention" & build_tree "$new" new & wait
  for t in old new; do log "build $t: $(tail -1 "$out/build_$t.log")"; done
  log "builds: $(($(date +%s) - t0)) s"
  ctest --test-dir "$new/build-gpu" -L cuda -j 4 --timeout 300 --output-on-failure >"$out/ctest_new.log" 2>&1
  log "ctest -L cuda (new): $(grep -E 'tests passed|tests failed' "$out/ctest_new.log" | tail -1)"
  grep -E "^ *[0-9]+/[0-9]+ Test" "$out/ctest_new.log" | sed 's/^/    /' | tee -a "$sum"
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  batch=4; [ "${mem:-0}" -gt 100000 ] && batch=8
  for r in $(seq 1 "${M2_AB_ROUNDS:-2}"); do
    for t in old new; do
      d=$([ $t = old ] && echo "$old" || echo "$new")
      log "## run $r, $t"
      M2_BENCH_QUICK=1 "$d/build-gpu/bench/bench_m2rnn" 5 2>&1 | grep -E '^\| 400M' | head -4 | tee -a "$sum"
      "$d/build-gpu/bench/bench_attention" 5 2>&1 | grep -E '^\| (400M|7B)' | head -6 | tee -a "$sum"
      (cd "$d" && build-gpu/m2lab run experiments/step_time.lua device=cuda batch=$batch steps=5 warmup=2 \
        out=/tmp/step_$t.h5 2>&1 | tail -1 | sed "s/^/step_time B=$batch: /" | tee -a "$sum")
    done
  done
fi
