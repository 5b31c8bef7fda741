#!/usr/bin/env bash
# quick_ssd.sh OUTDIR — on the GPU machine, the short loop for the Mamba-2 SSD kernels: configure (Lua from .deps/,
# gpu_configure.sh) if needed, build the SSD parity tests and bench_ssd, run them, then the peer (peer_ssd.py:
# mamba_ssm's Triton SSD; from .whl/: wheels of mamba_ssm / einops are installed with pip --no-index --no-deps, a
# mamba_ssm source archive is unpacked under /tmp and put on the peer's path). Logs and OUTDIR/ssd.md (the summary
# and both tables) under OUTDIR. M2_BENCH_REPS: timed repeats (default 5).
set -uo pipefail
out=${1:?usage: cuda/bench/quick_ssd.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-gpu}"
. "$root/cuda/bench/gpu_configure.sh"
sum="$out/ssd.md"
log() { echo "$*" | tee -a "$sum"; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
log "# quick_ssd $(date -u +%Y-%m-%dT%H:%MZ) $gpu git $(git -C "$root" rev-parse --short HEAD 2>/dev/null)"
ninja -C "$build" cuda_ops_ssd cuda_ops_ssd_chunk bench_ssd >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
for t in cuda_ops_ssd cuda_ops_ssd_chunk; do
  "$build/tests/$t" >"$out/$t.log" 2>&1
  log "$t: exit $? ($(tail -1 "$out/$t.log"))"
  grep -E "FAIL|error [0-9.e+-]+ >" "$out/$t.log" | head -20 | tee -a "$sum"
done
"$build/bench/bench_ssd" "${M2_BENCH_REPS:-5}" 2>&1 | tee "$out/bench_ssd.txt" | tee -a "$sum"
shopt -s nullglob
whl=("$root"/.whl/mamba_ssm*.whl "$root"/.whl/einops*.whl)
[ ${#whl[@]} -gt 0 ] && pip install --no-index --no-deps "${whl[@]}" >"$out/pip.log" 2>&1
for sd in "$root"/.whl/mamba_ssm-*.tar.gz "$root"/.whl/mamba-ssm-*.tar.gz; do # the source archive: its Triton files only
  mkdir -p /tmp/mamba_src && tar -xzf "$sd" -C /tmp/mamba_src &&
    export M2_PEER_PATH="$(dirname "$(find /tmp/mamba_src -maxdepth 3 -type d -name mamba_ssm | head -1)")"
done
python3 "$root/cuda/bench/peer_ssd.py" "${M2_BENCH_REPS:-5}" 2>&1 | tee "$out/peer_ssd.txt" | tee -a "$sum"
