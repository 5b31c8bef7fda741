#!/usr/bin/env bash
# session_kernels.sh OUTDIR — one device call for the kernels that are off by default until a GPU has run them:
# build everything once, then the chunked GDN loop (quick_gdn.sh: parity tests, bench_gdn, the fla peer), the chunked
# SSD loop (quick_ssd.sh: parity tests, bench_ssd, mamba_ssm's Triton SSD as peer), the grouped MoE GEMMs
# (moe_grouped_check.sh), each cut at its share of the call's deadline (M2_DEADLINE_S, default 560). Pass
# carry=[".deps", ".whl"]: .whl/ holds the peers' wheels and .whl/site the mamba_ssm sources (its sdist's Python
# package; the Triton SSD files need no compiled extension). Logs under OUTDIR/{gdn,ssd,moe}.
set -uo pipefail
out=${1:?usage: cuda/bench/session_kernels.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build-gpu"
deadline=$((SECONDS + ${M2_DEADLINE_S:-560}))
left() { echo $((deadline - SECONDS)); }
mkdir -p "$out"
. "$root/cuda/bench/gpu_configure.sh"
t0=$SECONDS
ninja -C "$build" >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 3; }
echo "build: $((SECONDS - t0)) s"
export M2_GDN_STEP=${M2_GDN_STEP:-1}
export PYTHONPATH="/tmp/fla_site:$root/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
timeout $(($(left) * 40 / 100)) bash "$root/cuda/bench/quick_gdn.sh" "$out/gdn" >"$out/gdn.log" 2>&1
echo "quick_gdn: exit $? ($(left) s left)"; cat "$out/gdn/summary.md" 2>/dev/null
timeout $(($(left) * 55 / 100)) bash "$root/cuda/bench/quick_ssd.sh" "$out/ssd" >"$out/ssd.log" 2>&1
echo "quick_ssd: exit $? ($(left) s left)"; head -30 "$out/ssd/ssd.md" 2>/dev/null
M2_DEADLINE_S=$(($(left) - 5)) timeout $(($(left) - 2)) bash "$root/cuda/bench/moe_grouped_check.sh" "$out/moe" >"$out/moe.log" 2>&1
echo "moe_grouped_check: exit $? ($(left) s left)"; tail -40 "$out/moe/moe_grouped.md" 2>/dev/null
