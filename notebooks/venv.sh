#!/usr/bin/env bash
# venv.sh — the project's one Python environment for notebooks/ and the Python checks: makes BUILD_DIR/notebook-venv
# from PyPI with notebooks/requirements.txt when it is missing or the requirements changed since it was made, and
# prints its python's path.
#
#   py=$(notebooks/venv.sh [BUILD_DIR])      (default: build)
#
# The venv records the SHA-256 of the requirements it was made from (notebook-venv/.requirements.sha256), so adding a
# package to requirements.txt installs it on the next use. Messages go to stderr; stdout is only the path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
req=$root/notebooks/requirements.txt
venv=$build/notebook-venv
py=$venv/bin/python
exec 9>"$build/.notebook-venv.lock" # one maker at a time (ctest -j runs the notebooks and the Python checks together)
flock 9
want=$(sha256sum "$req" | cut -d' ' -f1)
have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
if ! [ -x "$py" ] || [ "$want" != "$have" ]; then
  if ! [ -x "$py" ]; then
    echo "venv.sh: creating $venv (PyPI: notebooks/requirements.txt)" >&2
    python3 -m venv "$venv" >&2 ||
      { echo "venv.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  else
    echo "venv.sh: updating $venv (notebooks/requirements.txt changed)" >&2
  fi
  "$py" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$venv/.requirements.sha256"
fi
echo "$py"
