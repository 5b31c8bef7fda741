#!/usr/bin/env bash
# quick_check.sh OUTDIR — the shortest useful GPU call: build this tree (Lua from .deps/, carry .deps), run the CUDA
# tests, the M2RNN 400M rows and one whole 400M training step (B = 4, fits an H100). For when device time is short;
# cuda/bench/ab_trees.sh compares two trees, cuda/gpu_run.sh runs every benchmark. M2_QUICK_TARGETS: build only these
# ninja targets (e.g. the CUDA tests, m2lab and bench_m2rnn).
set -uo pipefail
out=${1:?usage: cuda/bench/quick_check.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out" /tmp/lua
for d in "$root"/.deps/liblua5.4-0_*.deb "$root"/.deps/liblua5.4-dev_*.deb; do dpkg -x "$d" /tmp/lua; done
sum="$out/quick.md"
log() { echo "$*" | tee -a "$sum"; }
log "# quick_check $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name --format=csv,noheader) git $(git -C "$root" rev-parse --short HEAD)"
t0=$(date +%s)
cmake -S "$root" -B "$root/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DLUA_INCLUDE_DIRS="/tmp/lua/usr/include/lua5.4;/tmp/lua/usr/include/x86_64-linux-gnu" \
  -DLUA_LIBRARIES=/tmp/lua/usr/lib/x86_64-linux-gnu/liblua5.4.a >"$out/build.log" 2>&1 &&
  ninja -C "$root/build-gpu" ${M2_QUICK_TARGETS:-} >>"$out/build.log" 2>&1
log "build: exit $? in $(($(date +%s) - t0)) s"
ctest --test-dir "$root/build-gpu" -L cuda -j 4 --timeout 240 --output-on-failure >"$out/ctest.log" 2>&1
log "ctest -L cuda: $(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1)"
grep -E "^ *[0-9]+/[0-9]+ Test" "$out/ctest.log" | sed 's/^/    /' | tee -a "$sum"
M2_BENCH_QUICK=1 "$root/build-gpu/bench/bench_m2rnn" 5 2>&1 | grep -E '^\| 400M' | head -4 | tee -a "$sum"
(cd "$root" && build-gpu/m2lab run experiments/step_time.lua device=cuda batch=4 steps=4 warmup=1 out=/tmp/st.h5 2>&1 |
  tail -1 | sed 's/^/step_time B=4: /' | tee -a "$sum")
