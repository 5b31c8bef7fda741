#!/usr/bin/env bash
# run.sh — the README's test command: install what is missing, build, run the whole CTest suite
# (labels cpu, cuda (skips without a GPU), lua, slow). Extra arguments go to ctest (e.g. -L cpu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tests/bootstrap.sh"
build="${M2_BUILD_DIR:-$root/build}"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
