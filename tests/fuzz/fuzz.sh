#!/usr/bin/env bash
# fuzz.sh TARGET [SECONDS] [libFuzzer args ...] — build the libFuzzer targets and fuzz one for a bounded time
# (CTests fuzz_lua and fuzz_runfile, label fuzz). TARGET: lua (tests/fuzz/fuzz_lua.c: Lua snippets run by the m2lab
# host) or runfile (tests/fuzz/fuzz_runfile.c: damaged run files through inspect, the readers and a resume).
#   - configures and builds a second tree (default <source>/build-fuzz; M2_FUZZ_BUILD_DIR overrides) with clang,
#     -DM2_FUZZ=ON and ASan + UBSan + libFuzzer's coverage (only the two targets are built there);
#   - runs the target for M2_FUZZ_RUNS inputs (default 300, fixed seed; see below) or SECONDS (default M2_FUZZ_TIME
#     or 300), whichever comes first, over the committed corpus (tests/fuzz/corpus_TARGET,
#     read only) and a working corpus (<build>/corpus-TARGET: what it finds, kept between runs), with the dictionary
#     tests/fuzz/lua.dict for lua; a crash, sanitizer report, leak check, timeout (M2_FUZZ_TIMEOUT, 60 s an input)
#     or out-of-memory fails the test and leaves the input in <build>/artifacts-TARGET/ (reproduce:
#     <build>/tests/fuzz_TARGET FILE; M2_FUZZ_PRINT=1 prints a Lua input's snippet).
# Exit 77 (skipped) when clang or its libFuzzer runtime (Debian: clang, libclang-rt-14-dev) is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${1:?usage: fuzz.sh lua|runfile [SECONDS] [libFuzzer args]}"
shift
secs="${M2_FUZZ_TIME:-300}"
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then secs="$1"; shift; fi
case "$target" in lua|runfile) ;; *) echo "fuzz.sh: unknown target '$target' (lua or runfile)" >&2; exit 2 ;; esac
build="${M2_FUZZ_BUILD_DIR:-$root/build-fuzz}"
cc="${M2_FUZZ_CC:-$(command -v clang-14 || command -v clang || true)}"
if [ -z "$cc" ]; then
  echo "fuzz.sh: SKIP: no clang (Debian: apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' > "$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2> "$probe/err"; then
  echo "fuzz.sh: SKIP: $cc cannot link -fsanitize=fuzzer (libFuzzer's runtime: Debian libclang-rt-14-dev):"
  head -3 "$probe/err"
  exit 77
fi
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DM2_FUZZ=ON \
    -DM2_CUDA=OFF -DM2_MPI=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    >/dev/null
fi
cmake --build "$build" -j "${M2_FUZZ_JOBS:-$(nproc)}" --target fuzz_lua fuzz_runfile

bin="$build/tests/fuzz_$target"
seeds="$root/tests/fuzz/corpus_$target"
work="$build/corpus-$target"
arts="$build/artifacts-$target"
mkdir -p "$work" "$arts"
# CTest's runs are reproducible: a fixed seed (M2_FUZZ_SEED, default 1) and a fixed number of inputs
# (M2_FUZZ_RUNS, default 300: mutations of the committed corpus, ~10 s) with SECONDS as a cap, so CI replays the same
# inputs every time (a regression check that cannot fail at random). To explore: M2_FUZZ_RUNS=-1 (no limit),
# M2_FUZZ_SEED=0 (a new seed each run) and SECONDS as long as you like.
args=(-max_total_time="$secs" -runs="${M2_FUZZ_RUNS:-300}" -seed="${M2_FUZZ_SEED:-1}"
      -timeout="${M2_FUZZ_TIMEOUT:-60}" -rss_limit_mb=3072 -print_final_stats=1
      -artifact_prefix="$arts/" -close_fd_mask=1 -error_exitcode=1 -timeout_exitcode=1)
if [ "$target" = lua ]; then
  args+=(-dict="$root/tests/fuzz/lua.dict" -max_len=4096)
else
  # when exploring (M2_FUZZ_RUNS=-1): a real run file beside the committed seeds, written once by this tree's m2lab.
  # Not in the fixed replay: its bytes (times, paths) differ every time, and so would the inputs derived from it.
  if [ "${M2_FUZZ_RUNS:-300}" = -1 ] && [ -n "${M2_FUZZ_M2LAB:-}" ] && [ -x "$M2_FUZZ_M2LAB" ] &&
     [ ! -f "$work/tiny_lm.h5" ]; then
    (cd "$probe" && "$M2_FUZZ_M2LAB" run "$root/experiments/tiny_lm.lua" steps=4 checkpoint_every=2 \
      keep_checkpoints=0 eval_every=2 d=8 vocab=8 len=8 batch=2 out="$work/tiny_lm.h5" >/dev/null 2>&1) ||
      echo "fuzz.sh: note: could not write a tiny_lm run for the corpus"
  fi
  args+=(-max_len=262144)
fi
# detect_leaks=0: Lua and HDF5 keep memory until exit (the targets check tensors, tape nodes and HDF5 objects
# themselves); malloc_fill_byte=0 as in tests/sanitize.sh (HDF5 1.10.8 frees a link table it never filled);
# max_allocation_size_mb + allocator_may_return_null: a huge tensor is a clean out-of-memory error, not a finding.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:malloc_fill_byte=0:allocator_may_return_null=1:max_allocation_size_mb=128${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export OPENBLAS_NUM_THREADS=1
echo "fuzz.sh: $bin for ${secs}s (corpus: $work + $seeds; artifacts: $arts)"
"$bin" "${args[@]}" "$@" "$work" "$seeds"
