#!/usr/bin/env bash
# readme_h5py.sh — the README's instruction for reading a live run from h5py works (CTest readme_h5py, labels
# cpu;notebooks): the h5py.File(...) expression with swmr=True that README.md gives is evaluated, with `path` bound
# to the run file, while m2lab writes that run; it must open the file repeatedly and see the loss series grow.
# An open without swmr=True must fail meanwhile (HDF5 refuses a file a writer holds): that is why the README says it.
#
#   tests/readme_h5py.sh [BUILD_DIR]      (default: build; m2lab is BUILD_DIR/m2lab)
#
# Python: the notebooks' venv (notebooks/venv.sh: BUILD_DIR/notebook-venv from notebooks/requirements.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
m2lab=${M2LAB:-$build/m2lab}
[ -x "$m2lab" ] || { echo "readme_h5py.sh: no m2lab at $m2lab (build it first)" >&2; exit 2; }

py=$("$root/notebooks/venv.sh" "$build") # the project's one venv (made once, under a lock)

# the README's expression: h5py.File(<anything without a backquote>) containing swmr=True
expr=$(grep -o 'h5py\.File([^`]*)' "$root/README.md" | grep 'swmr=True' | head -n 1 || true)
if [ -z "$expr" ]; then
  echo "readme_h5py.sh: README.md does not say how to open a live run from h5py" \
    "(no \`h5py.File(path, \"r\", swmr=True)\`)" >&2
  exit 1
fi
echo "readme_h5py.sh: README.md says: $expr"

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# a run slow enough to be read while it trains (about 10 s; killed once the reader is done)
"$m2lab" run "$root/experiments/tiny_lm.lua" steps=500 throttle=0.02 d=16 checkpoint_every=100 eval_every=0 \
  flush_interval=0.2 out="$work/live.h5" >"$work/run.log" 2>&1 &
pid=$!

"$py" - "$expr" "$work/live.h5" "$pid" <<'PY'
import os, sys, time
import h5py

expr, path, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])

def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

def fail(msg):
    print("readme_h5py.sh: " + msg, file=sys.stderr)
    sys.exit(1)

sizes, opens, refused, errors = [], 0, 0, []
t0 = time.monotonic()
while time.monotonic() - t0 < 60 and len(sizes) < 5:
    if not alive():
        break
    if os.path.exists(path):
        try:
            f = eval(expr, {"h5py": h5py, "path": path})  # the README's expression, as written
        except OSError as e:  # the writer holds the file exclusively for a moment (new series, checkpoint): retry
            errors.append(str(e).splitlines()[0])
        else:
            with f:
                opens += 1
                if "metrics/loss/step" in f:
                    n = len(f["metrics/loss/step"])
                    if not sizes or n > sizes[-1]:
                        sizes.append(n)
        # the same open without swmr=True
        try:
            with h5py.File(path, "r"):
                pass
        except OSError:
            refused += 1
    time.sleep(0.2)
running = alive()
print(f"readme_h5py.sh: {opens} opens with the README's expression while the run wrote, loss series lengths "
      f"seen: {sizes}; {refused} opens without swmr=True refused")
if len(sizes) < 3:
    fail(f"the README's expression did not follow the live run (lengths {sizes}, run alive: {running}, "
         f"errors: {errors[-3:]})")
if refused == 0:
    fail("every open without swmr=True succeeded while the run wrote: the README's reason for swmr=True is stale")
PY
echo "readme_h5py.sh: ok"
