"""safetensors_check.py — m2lab's safetensors export, checked by the reference implementation (the `safetensors` PyPI
package) against the run file's checkpoint read with h5py; tests/safetensors_python.sh runs it (CTest, label cpu).

    python safetensors_check.py RUN.h5 EXPORT.safetensors STEP [--write-negated OUT.safetensors]

Checks: the export opens with safetensors.safe_open; its names are exactly the checkpoint's parameters
(/checkpoints/STEP/params/<module path>); every tensor has the checkpoint's dtype and shape and the same bytes (bit
for bit, NaN payloads included); the metadata names the run and the step. With --write-negated it also writes every
tensor negated with safetensors.numpy.save_file (the reference writer's layout: its own key order, header padding),
for m2lab to import (tests/lua/safetensors_import.lua). Exit status 0 when everything matches, 1 otherwise, with one
line per problem.
"""
import sys

import h5py
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def main(argv):
    if len(argv) not in (4, 6) or (len(argv) == 6 and argv[4] != "--write-negated"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run_path, st_path, step = argv[1], argv[2], int(argv[3])
    problems = []
    with h5py.File(run_path, "r") as run:
        group = run[f"checkpoints/{step}"]
        if not group.attrs.get("complete", 0):
            problems.append(f"{run_path}: checkpoint {step} is not complete")
        params = group["params"]
        want = {name: params[name][()] for name in params.keys()}  # dataset names are the module paths
    tensors = {}
    with safe_open(st_path, framework="numpy") as f:
        meta = f.metadata() or {}
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    for name in missing:
        problems.append(f"{st_path}: checkpoint parameter '{name}' is missing")
    for name in extra:
        problems.append(f"{st_path}: tensor '{name}' is not a parameter of checkpoint {step}")
    same = 0
    for name in sorted(set(want) & set(tensors)):
        a, b = tensors[name], np.asarray(want[name])
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{name}: {a.dtype} {a.shape} in the export, {b.dtype} {b.shape} in the run file")
        elif a.tobytes() != b.tobytes():
            bad = int(np.sum(a.view(np.uint8).reshape(-1) != b.view(np.uint8).reshape(-1)))
            problems.append(f"{name}: {bad} bytes differ from the run file's")
        else:
            same += 1
    if meta.get("step") != str(step):
        problems.append(f"{st_path}: metadata step is {meta.get('step')!r}, expected {str(step)!r}")
    if meta.get("run") != run_path:
        problems.append(f"{st_path}: metadata run is {meta.get('run')!r}, expected {run_path!r}")
    if len(want) == 0:
        problems.append(f"{run_path}: checkpoint {step} has no parameters (nothing was compared)")
    for p in problems:
        print("FAIL " + p)
    print(f"safetensors_check: {same} of {len(want)} tensors bit-identical to {run_path} step {step}"
          f" ({sum(t.nbytes for t in tensors.values())} bytes), {len(problems)} problem(s)")
    if len(argv) == 6 and not problems:
        negated = {name: np.ascontiguousarray(-t) for name, t in tensors.items()}
        save_file(negated, argv[5], metadata={"negated_from": st_path})
        print(f"safetensors_check: wrote {argv[5]} ({len(negated)} tensors negated, by safetensors.numpy.save_file)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
