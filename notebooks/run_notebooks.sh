#!/usr/bin/env bash
# run_notebooks.sh — execute every notebooks/*.ipynb headless against run files made by short real
# runs, and check that every code cell ran without an error and that every figure a notebook
# declares (notebook metadata m2lab.figures) was written. The CTest "notebooks" runs this.
#
#   notebooks/run_notebooks.sh [BUILD_DIR]      (default: build; m2lab is BUILD_DIR/m2lab)
#
# Python: the venv BUILD_DIR/notebook-venv (notebooks/venv.sh: made from PyPI with notebooks/requirements.txt
# when it is missing or the requirements changed). Run files, executed notebooks and figures go to BUILD_DIR/notebook-check/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
m2lab=${M2LAB:-$build/m2lab}
[ -x "$m2lab" ] || { echo "run_notebooks.sh: no m2lab at $m2lab (build it first)" >&2; exit 2; }

py=$("$root/notebooks/venv.sh" "$build") # the venv (notebooks/requirements.txt), made or updated when needed

work=$build/notebook-check
rm -rf "$work"
mkdir -p "$work/runs" "$work/figures" "$work/executed"
cd "$work"
log=$work/runs.log
: >"$log"
run() { echo "+ m2lab $*" >>"$log"; "$m2lab" "$@" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }

# run files: a few language-model runs, a small sweep, state-tracking runs with eval by length, and a tiny LM sweep
exp=$root/experiments/tiny_lm.lua
for arch in M A G; do
  run run "$exp" arch=$arch steps=40 checkpoint_every=20 eval_every=10 out=runs/tiny_$arch.h5
done
cat >sweep.lua <<LUA
local m2 = require "m2"
m2.sweep { name = "nb_sweep", script = "$exp", set = { steps = 30, eval_every = 15, checkpoint_every = 15 },
           grid = { arch = { "M", "A" }, lr = { 1e-3, 3e-3, 1e-2 } }, seeds = { 0, 1 },
           list = { { arch = "Q", lr = 1e-3 } }, -- a member that fails: the notebook lists it
           out = "runs/nb_sweep/", parallel = 2 }
LUA
"$m2lab" sweep sweep.lua >>"$log" 2>&1 || true # exit status 1: the deliberately failing member
grep -q "14 members: 12 done" "$log" || { cat "$log" >&2; echo "run_notebooks.sh: the sweep did not finish its members" >&2; exit 1; }
# a tiny MoE LM (moe_load.ipynb: the per-expert load it logs)
run run "$exp" arch=MA moe_experts=8 moe_top_k=2 steps=60 checkpoint_every=0 eval_every=30 out=runs/tiny_moe.h5
for arch in M A; do
  for seed in 0 1; do
    run run "$exp" task=groups arch=$arch seed=$seed steps=40 len=8 eval_mults=1,2,4 eval_every=20 \
      checkpoint_every=0 out=runs/groups_${arch}_$seed.h5
  done
done

# state tracking over seeds (state_tracking_seeds.ipynb): experiments/state_tracking.lua, two architectures x two seeds,
# a few steps at train length 8 (the notebook reads /eval/acc_pos<t> and /eval/acc_len<L> of each run)
mkdir -p "$work/st_runs"
for arch in m2rnn gdn; do
  for seed in 0 1; do
    run run "$root/experiments/state_tracking.lua" arch=$arch seed=$seed steps=20 train_len=8 curriculum=0 eval_every=10 \
      eval_batches=1 eval_batch=8 log_every=5 out="$work/st_runs/${arch}_$seed.h5"
  done
done

# the LM comparison (lm_comparison.ipynb): experiments/sweep_lm.lua at a tiny size on a ~300 KB slice of the corpus
bash "$root/datasets/corpus.sh" --corpus pydoc --max-bytes 300000 --out "$work/lm_slice" >>"$log" 2>&1 ||
  { cat "$log" >&2; echo "run_notebooks.sh: could not make the corpus slice (tests/bootstrap.sh installs python3-doc)" >&2; exit 1; }
run run "$root/experiments/sweep_lm.lua" data="$work/lm_slice" seeds=0,1 steps=16 d=32 layers=3 length=32 batch=4 \
  warmup=4 eval_every=4 eval_batches=2 out=runs/sweep_lm

export M2LAB_RUNS=$work/runs M2LAB_FIGURES=$work/figures M2LAB_SWEEP=$work/runs/nb_sweep/index.h5 MPLBACKEND=Agg
export M2LAB_LM_SWEEP=$work/runs/sweep_lm/index.h5 M2LAB_MOE_RUN=$work/runs/tiny_moe.h5 M2LAB_ST_RUNS=$work/st_runs
"$py" - "$root/notebooks" "$work" <<'PY'
import glob, json, os, sys
import nbformat
from nbclient import NotebookClient

nbdir, work = sys.argv[1], sys.argv[2]
passed = failed = 0
for path in sorted(glob.glob(os.path.join(nbdir, "*.ipynb"))):
    name = os.path.basename(path)
    nb = nbformat.read(path, as_version=4)
    problems = []
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": nbdir}}).execute()
    except Exception as e:  # CellExecutionError names the cell and the traceback
        problems.append(f"execution stopped: {str(e)[:2000]}")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} did not run")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    for fig in nb.metadata.get("m2lab", {}).get("figures", []):
        fpath = os.path.join(os.environ["M2LAB_FIGURES"], fig)
        if not os.path.isfile(fpath) or os.path.getsize(fpath) == 0:
            problems.append(f"figure {fig} was not written")
    nbformat.write(nb, os.path.join(work, "executed", name))
    if problems:
        failed += 1
        print(f"FAIL {name}")
        for p in problems:
            print("  " + p)
    else:
        passed += 1
        ncode = sum(c.cell_type == "code" for c in nb.cells)
        figs = nb.metadata.get("m2lab", {}).get("figures", [])
        print(f"ok   {name}: {ncode} code cells ran, figures {', '.join(figs)}")
print(f"notebooks: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
PY
