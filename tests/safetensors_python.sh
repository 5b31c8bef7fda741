#!/usr/bin/env bash
# safetensors_python.sh [BUILD_DIR] — the safetensors export checked by the reference implementation, and a file the
# reference implementation wrote imported by m2lab (CTest "safetensors_python", label cpu):
#   1. a short real run (experiments/tiny_lm.lua, every mixer kind and a SwiGLU MLP, a fresh seed) -> run.h5;
#   2. `m2lab export run.h5 export.safetensors step=2` (an older checkpoint, not the latest);
#   3. tests/safetensors_check.py opens the export with the `safetensors` package and compares every tensor with the
#      run file's checkpoint (h5py), bit for bit, then writes every tensor negated with safetensors.numpy.save_file;
#   4. tests/safetensors_import.lua rebuilds the run's model (m2.runs.load_model), imports that file and checks
#      every parameter is the negated checkpoint.
# Python: the notebooks' venv (notebooks/venv.sh, notebooks/requirements.txt). Work files: BUILD_DIR/safetensors-check/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
m2lab=${M2LAB:-$build/m2lab}
[ -x "$m2lab" ] || { echo "safetensors_python.sh: no m2lab at $m2lab (build it first)" >&2; exit 2; }
py=$("$root/notebooks/venv.sh" "$build")

work=$build/safetensors-check
rm -rf "$work"
mkdir -p "$work"
cd "$work"
seed=$((RANDOM))
echo "safetensors_python.sh: seed $seed"
"$m2lab" run "$root/experiments/tiny_lm.lua" arch=MAGS mlp=true steps=4 checkpoint_every=2 eval_every=0 \
  seed=$seed out=run.h5 >run.log 2>&1 || { cat run.log >&2; exit 1; }
"$m2lab" export run.h5 export.safetensors step=2
"$py" "$root/tests/safetensors_check.py" run.h5 export.safetensors 2 --write-negated negated.safetensors
"$m2lab" test "$root/tests/safetensors_import.lua" run=run.h5 file=negated.safetensors step=2
