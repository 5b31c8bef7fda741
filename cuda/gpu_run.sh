#!/usr/bin/env bash
# gpu_run.sh OUTDIR — the project's one script for the GPU machine (shared/GPU.md). From a clean tree:
# unpack Lua 5.4 from the Debian packages in .deps/ (that machine has no Lua and no registry), configure
# and build for Hopper (sm_90), run the CUDA tests (ctest -L cuda) and every program in build/bench/,
# and write the logs plus a summary table into OUTDIR (at most 6 files).
# Environment: M2_GPU_TARGETS="t1 t2" builds only those ninja targets (default: everything; if the full
# build fails, the CUDA tests and benchmarks alone are tried); M2_GPU_SANITIZE=1 also runs the CUDA tests
# under compute-sanitizer memcheck and racecheck (memcheck alone runs whenever a CUDA test fails); M2_BENCH_ARGS is passed to every benchmark.
set -uo pipefail
out=${1:?usage: cuda/gpu_run.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-gpu}"
mkdir -p "$out"
summary="$out/summary.md"
log() { echo "$*" | tee -a "$summary"; }
: >"$summary"

log "# gpu_run $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
log "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$root" status --porcelain 2>/dev/null | wc -l) changed file(s)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader 2>&1 |
  sed 's/^/gpu: /' | tee -a "$summary"

# ---- Lua from the .debs ----
lua=/tmp/lua
mkdir -p "$lua"
for deb in "$root"/.deps/liblua5.4-0_*.deb "$root"/.deps/liblua5.4-dev_*.deb; do
  [ -f "$deb" ] || { log "missing $deb (pass carry=[\".deps\"])"; exit 2; }
  dpkg -x "$deb" "$lua"
done

# ---- configure + build ----
t0=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DLUA_INCLUDE_DIRS="$lua/usr/include/lua5.4;$lua/usr/include/x86_64-linux-gnu" \
  -DLUA_LIBRARIES="$lua/usr/lib/x86_64-linux-gnu/liblua5.4.a" >"$out/build.log" 2>&1 ||
  { log "configure FAILED (build.log)"; exit 3; }
cuda_targets() { # the CUDA tests and the benchmarks
  for f in "$root"/tests/cuda_*.c "$root"/cuda/bench/*.cu; do [ -f "$f" ] && basename "${f%.*}"; done
}
build_ok=1
if [ -n "${M2_GPU_TARGETS:-}" ]; then
  ninja -C "$build" ${M2_GPU_TARGETS} >>"$out/build.log" 2>&1 || build_ok=0
else
  if ! ninja -C "$build" >>"$out/build.log" 2>&1; then
    log "full build failed; building the CUDA tests and benchmarks only"
    ninja -C "$build" $(cuda_targets) >>"$out/build.log" 2>&1 || build_ok=0
  fi
fi
log "build: $([ $build_ok = 1 ] && echo ok || echo FAILED) in $(($(date +%s) - t0)) s"
[ $build_ok = 1 ] || { grep -m 20 -E "error|FAILED" "$out/build.log" | tee -a "$summary"; }

# ---- CUDA tests ----
t0=$(date +%s)
ctest --test-dir "$build" -L cuda -V --timeout 600 >"$out/ctest.log" 2>&1
ctest_rc=$?
log "ctest -L cuda: $(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1) ($(($(date +%s) - t0)) s)"
grep -E "^ *[0-9]+/[0-9]+ Test" "$out/ctest.log" | sed 's/^/    /' | tee -a "$summary"
tools=""
[ "$ctest_rc" != 0 ] && tools="memcheck"             # a failing test: look for bad accesses
[ "${M2_GPU_SANITIZE:-0}" = 1 ] && tools="memcheck racecheck"
if [ -n "$tools" ] && command -v compute-sanitizer >/dev/null; then
  for t in "$build"/tests/cuda_*; do
    [ -x "$t" ] || continue
    for tool in $tools; do
      timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 "$t" >>"$out/sanitize.log" 2>&1
      log "compute-sanitizer $tool $(basename "$t"): exit $?"
    done
  done
fi

# ---- benchmarks ----
for b in "$build"/bench/*; do
  [ -x "$b" ] || continue
  t0=$(date +%s)
  echo "===== $(basename "$b")" >>"$out/bench.log"
  "$b" ${M2_BENCH_ARGS:-} >>"$out/bench.log" 2>&1
  rc=$?
  log "bench $(basename "$b"): exit $rc ($(($(date +%s) - t0)) s)"
done
if [ -f "$out/bench.log" ]; then
  log ""
  grep -E "^\||^#|fast vs general" "$out/bench.log" >>"$summary"
fi
cat "$summary" >/dev/null
