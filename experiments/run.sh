#!/usr/bin/env bash
# run.sh — the README's experiment command: install what is missing, build, and run an experiment
# script (default: experiments/default.lua). Usage: bash experiments/run.sh [SCRIPT.lua] [key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tests/bootstrap.sh"
script="$root/experiments/default.lua"
if [ $# -gt 0 ] && [[ "$1" == *.lua ]]; then script="$1"; shift; fi
exec "${M2_BUILD_DIR:-$root/build}/m2lab" run "$script" "$@"
