#!/usr/bin/env bash
# profile_m2rnn.sh OUTDIR — on the GPU machine: build the M2RNN benchmark (Lua not needed), dump the SASS
# of the fast kernels and profile one forward and one backward launch of the 400M layer with Nsight
# Compute (per-instruction execution counts, warp stalls). Writes at most 6 files into OUTDIR.
# Environment: M2_PROFILE_KERNELS (regex, default "m2r_(fwd|bwd)_fast"), M2_GPU_BUILD (build folder).
set -uo pipefail
out=${1:?usage: cuda/bench/profile_m2rnn.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-prof}"
mkdir -p "$out" "$build"
re="${M2_PROFILE_KERNELS:-m2r_(fwd|bwd)_fast}"
inc="-I$root/core -I$root/cuda"
cd "$build" || exit 2
nvcc -O3 -arch=sm_90 -lineinfo $inc -o bench_m2rnn "$root"/cuda/bench/bench_m2rnn.cu "$root"/cuda/m2rnn_fwd.cu \
  "$root"/cuda/m2rnn_bwd.cu "$root"/core/status.c -Xptxas -v >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
grep -E "Compiling entry|registers|spill" "$out/build.log" | grep -B1 -A1 fast | head -60
cuobjdump -sass bench_m2rnn >"$build/all.sass" 2>&1
for k in bwd fwd; do # the paper-shape (K = 64, MUFU tanh) kernel of each direction
  awk -v pat="m2r_${k}_fastILi[24]ELi0ELi64E" '/Function : /{f = ($0 ~ pat)} f' "$build/all.sass" >"$out/$k.sass"
done
wc -l "$out"/*.sass
M2_BENCH_QUICK=1 M2_BENCH_CKS="${M2_BENCH_CKS:-8,16,32}" ./bench_m2rnn 5 | tee "$out/bench_quick.txt"
for k in fwd bwd; do
  M2_BENCH_QUICK=1 timeout 300 ncu --kernel-name "regex:m2r_${k}_fast" --launch-skip 1 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section InstructionStats -f -o "$build/$k" ./bench_m2rnn 1 >"$build/ncu_$k.log" 2>&1
  ncu -i "$build/$k.ncu-rep" --page details >"$out/ncu_${k}_details.txt" 2>&1
  ncu -i "$build/$k.ncu-rep" --page raw 2>&1 | grep -E "issue_stalled|pipe_.*pct|inst_executed_pipe" |
    sort -k3 -g -r | head -80 >>"$out/ncu_${k}_details.txt"
  ncu -i "$build/$k.ncu-rep" --page source --csv --print-source sass >"$build/${k}_src.csv" 2>&1
  # stall samples per CUDA source line (where the warps wait, by line of m2rnn_*.cu), the top 60
  ncu -i "$build/$k.ncu-rep" --page source --csv --print-source cuda >"$build/${k}_cuda.csv" 2>&1
  python3 - "$build/${k}_cuda.csv" >"$out/ncu_${k}_lines.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr = next((i for i, r in enumerate(rows) if any("Warp Stall Sampling (All" in c for c in r)), None)
if hdr is None:
    print("no stall column; header candidates:"); [print(r[:12]) for r in rows[:6]]; sys.exit()
h = rows[hdr]
col = next(j for j, c in enumerate(h) if c.startswith("Warp Stall Sampling (All"))
ie = next((j for j, c in enumerate(h) if c.startswith("Instructions Executed")), None)
ln = h.index("#") if "#" in h else 0
src = h.index("Source") if "Source" in h else 1
tot, lines, cur = 0.0, [], ""
for r in rows[hdr + 1:]:
    if len(r) <= col: continue
    if len(r) < 4 and r: cur = r[0]
    try: n = float(r[col].replace(",", "") or 0)
    except ValueError: continue
    ni = float(r[ie].replace(",", "") or 0) if ie is not None and r[ie].strip() else 0.0
    tot += n; lines.append((n, ni, r[ln], r[src][:110]))
print(f"stall samples {tot:.0f}; columns: {h[:8]}")
for n, ni, l, s in sorted(lines, reverse=True)[:60]: print(f"{100*n/max(tot,1):5.1f}% {n:8.0f} inst {ni:10.3g}  L{l}: {s}")
PY
  python3 - "$build/${k}_src.csv" >>"$out/ncu_${k}_details.txt" <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr = None
for i, r in enumerate(rows):
    if "Source" in r and any("Instructions Executed" in c for c in r):
        hdr = i; break
if hdr is None:
    print("no source table; first lines:"); [print(r) for r in rows[:5]]; sys.exit()
h = rows[hdr]; src = h.index("Source"); ie = [j for j, c in enumerate(h) if c.startswith("Instructions Executed")][0]
addr = h.index("Address") if "Address" in h else None
tot = 0; ops = collections.Counter(); lines = []
for r in rows[hdr + 1:]:
    try: n = float(r[ie].replace(",", ""))
    except: continue
    tot += n; op = r[src].split()[0] if r[src].split() else "?"
    if op.startswith("@"): op = r[src].split()[1]
    ops[op.split(".")[0]] += n; lines.append((n, r[addr] if addr is not None else "", r[src]))
print(f"\n== warp instructions executed: {tot:.4g}")
for op, n in ops.most_common(30): print(f"{op:12s} {n:12.4g} {100*n/tot:5.1f}%")
print("\n== hottest 60 SASS lines")
for n, a, s in sorted(lines, reverse=True)[:60]: print(f"{n:12.4g} {a} {s}")
PY
done
ls -la "$out"
