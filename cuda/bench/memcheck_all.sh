#!/usr/bin/env bash
# memcheck_all.sh OUTDIR — compute-sanitizer memcheck over every CUDA C test (tests/cuda_*.c) and every Lua CUDA test
# (tests/lua/cuda_*.lua, run by m2lab test; its child processes too), for the GPU machine (issue 17: the CUDA tests
# under memcheck). Builds the CUDA tree first (gpu_configure.sh: Lua from .deps/, carry .deps) unless it is built.
# Writes OUTDIR/memcheck.md, one line per test:
#   PASS name  12 s  0 errors          FAIL name  3 s  2 errors (exit 9)      SKIP name (exit 77: no GPU)
#   TIMEOUT name (M2_MEMCHECK_TIMEOUT s)   NOT RUN name (deadline)           MISSING name (not built)
# and each test's whole output in OUTDIR/memcheck/NAME.log. Exit 0 when every test ran clean (or skipped), 1 when any
# reported a memcheck error or failed, 2 when none did but some timed out, were not run or were not built.
# Settings: M2_BUILD_DIR (default <root>/build-gpu), M2_MEMCHECK_ONLY (a grep -E pattern on the names),
# M2_MEMCHECK_TIMEOUT (seconds a test, default 300), M2_DEADLINE_S (stop starting tests this many seconds after the
# start, default 560, for a 600 s call), M2_MEMCHECK_ARGS (more compute-sanitizer arguments).
set -uo pipefail
out=${1:?usage: cuda/bench/memcheck_all.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build=${M2_BUILD_DIR:-$root/build-gpu}
deadline=$((SECONDS + ${M2_DEADLINE_S:-560}))
per_test=${M2_MEMCHECK_TIMEOUT:-300}
mkdir -p "$out/memcheck"
out="$(cd "$out" && pwd)"
sum="$out/memcheck.md"
: >"$sum"
log() { echo "$*" | tee -a "$sum"; }
command -v compute-sanitizer >/dev/null || { log "memcheck_all: no compute-sanitizer on PATH"; exit 2; }

if [ ! -x "$build/m2lab" ] || [ -n "${M2_MEMCHECK_REBUILD:-}" ]; then
  source "$root/cuda/bench/gpu_configure.sh"
  ninja -C "$build" >>"$out/build.log" 2>&1 || { log "memcheck_all: build failed (tail of $out/build.log):";
    tail -20 "$out/build.log" | tee -a "$sum"; exit 1; }
fi
log "# memcheck_all $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
  "git $(git -C "$root" rev-parse --short HEAD 2>/dev/null)"

# the tests: name and command (C tests as built; Lua tests through m2lab, in the build directory as CTest runs them)
names=() srcs=()
for src in "$root"/tests/cuda_*.c "$root"/tests/lua/cuda_*.lua; do
  case "$src" in *.lua) names+=("lua_$(basename "$src" .lua)") ;; *) names+=("$(basename "$src" .c)") ;; esac
  srcs+=("$src")
done

failed=0 incomplete=0
for i in "${!names[@]}"; do
  n=${names[$i]}
  [ -n "${M2_MEMCHECK_ONLY:-}" ] && ! grep -qE "$M2_MEMCHECK_ONLY" <<<"$n" && continue
  case "${srcs[$i]}" in *.lua) cmd=("$build/m2lab" test "${srcs[$i]}") ;; *) cmd=("$build/tests/$n") ;; esac
  if [ ! -x "${cmd[0]}" ]; then log "MISSING $n (not built: ${cmd[0]})"; incomplete=1; continue; fi
  left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then log "NOT RUN $n (deadline)"; incomplete=1; continue; fi
  lim=$((left - 5 < per_test ? left - 5 : per_test))
  t0=$SECONDS
  (cd "$build" && OPENBLAS_NUM_THREADS=1 timeout -k 10 "$lim" compute-sanitizer --tool memcheck --leak-check no \
    --error-exitcode 9 --print-limit 50 --target-processes all ${M2_MEMCHECK_ARGS:-} "${cmd[@]}") \
    >"$out/memcheck/$n.log" 2>&1
  rc=$?
  dt=$((SECONDS - t0))
  # every process it checked ends with "========= ERROR SUMMARY: N errors"
  errs=$(grep -Eo "ERROR SUMMARY: [0-9]+ error" "$out/memcheck/$n.log" | awk '{s += $3} END {print s + 0}')
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    log "TIMEOUT $n ($lim s; $errs errors before it)"
    [ "$errs" -gt 0 ] && failed=1 || incomplete=1
  elif [ $rc = 77 ] && [ "$errs" = 0 ]; then
    log "SKIP $n (exit 77: no GPU)"
  elif [ $rc = 0 ] && [ "$errs" = 0 ]; then
    log "PASS $n  $dt s  0 errors"
  else
    log "FAIL $n  $dt s  $errs errors (exit $rc): $(grep -m1 -E "^========= (Invalid|Program hit|Uninit|Race|Error)|FAIL" \
      "$out/memcheck/$n.log" | cut -c1-160)"
    failed=1
  fi
done
log "memcheck_all: $(grep -c '^PASS' "$sum") passed, $(grep -c '^FAIL' "$sum") failed, $(grep -c '^SKIP' "$sum")" \
  "skipped, $(grep -cE '^(TIMEOUT|NOT RUN|MISSING)' "$sum") not finished"
[ $failed = 1 ] && exit 1
[ $incomplete = 1 ] && exit 2
exit 0
