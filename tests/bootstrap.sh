#!/usr/bin/env bash
# bootstrap.sh — install missing Debian packages, then configure and build m2lab into build/.
# Used by the README's two commands (experiments/run.sh, tests/run.sh). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkgs=(build-essential cmake ninja-build pkg-config liblua5.4-dev libhdf5-dev libopenblas-dev openmpi-bin libopenmpi-dev valgrind python3 python3-venv python3-pip
      python3-doc) # python3-doc: the corpus slice of tests/lua/test_tokens.lua (datasets/corpus.sh)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# optional: clang and libFuzzer's runtime for the fuzz tests (tests/fuzz/fuzz.sh skips them without these); not fatal
# when they cannot be installed (another release names the runtime otherwise, e.g. libclang-rt-18-dev)
opt_pkgs=(clang libclang-rt-14-dev)
opt_missing=()
for p in "${opt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || opt_missing+=("$p")
done
if ((${#opt_missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${opt_missing[@]}" >/dev/null 2>&1 ||
    echo "bootstrap: note: could not install ${opt_missing[*]}: the fuzz tests will be skipped"
fi
build="${M2_BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${M2_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
