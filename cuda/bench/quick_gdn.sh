#!/usr/bin/env bash
# quick_gdn.sh OUTDIR — on the GPU machine, the loop for the Gated DeltaNet kernels: configure (Lua from .deps/, as
# gpu_configure.sh does) if needed, build the GDN parity tests and bench_gdn, run both tests (cuda_ops_gdn: the
# recurrent kernels; cuda_ops_gdn_chunk: the chunked tensor-core forward, switched on by the test itself), the
# benchmark (M2_BENCH_REPS repeats, default 7) and, when flash-linear-attention imports (wheels carried in .whl/ are
# installed into /tmp/fla_site first, --no-index --no-deps), the peer script on the same shapes. With M2_GDN_STEP=1
# also a whole 400m-hybrid-gdn training step (experiments/step_time.lua, B = 4, 3 steps) with the recurrent kernels
# and with M2_GDN_CHUNK_TC=1. Everything lands in OUTDIR: build.log, test_*.log, bench_gdn.md, peer_gdn.md,
# step_*.log and summary.md.
set -uo pipefail
out=${1:?usage: cuda/bench/quick_gdn.sh OUTDIR}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${M2_GPU_BUILD:-$root/build-gpu}"
mkdir -p "$out"
. "$root/cuda/bench/gpu_configure.sh"
sum="$out/summary.md"
log() { echo "$*" | tee -a "$sum"; }
log "# quick_gdn $(date -u +%Y-%m-%dT%H:%MZ) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) git $(git -C "$root" rev-parse --short HEAD)"
t0=$(date +%s)
ninja -C "$build" cuda_ops_gdn cuda_ops_gdn_chunk bench_gdn >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
log "build: $(($(date +%s) - t0)) s"
for t in cuda_ops_gdn cuda_ops_gdn_chunk; do
  exe=$(find "$build" -name "$t" -type f -perm -u+x | head -1)
  "$exe" >"$out/test_$t.log" 2>&1
  log "$t: exit $? ($(tail -1 "$out/test_$t.log"))"
done
"$build/bench/bench_gdn" "${M2_BENCH_REPS:-7}" 2>&1 | tee "$out/bench_gdn.md"
if ls "$root"/.whl/*.whl >/dev/null 2>&1; then
  pip install --no-index --no-deps --target /tmp/fla_site "$root"/.whl/*.whl >"$out/pip.log" 2>&1 ||
    log "pip install of .whl/ failed (see pip.log)"
fi
PYTHONPATH="/tmp/fla_site${PYTHONPATH:+:$PYTHONPATH}" python3 "$root/cuda/bench/peer_gdn.py" "${M2_BENCH_REPS:-7}" 2>&1 |
  tee "$out/peer_gdn.md"
if [ "${M2_GDN_STEP:-0}" = 1 ]; then
  ninja -C "$build" m2lab >>"$out/build.log" 2>&1 || { log "m2lab build failed"; exit 3; }
  for tc in 0 1; do
    (cd "$root" && M2_GDN_CHUNK_TC=$tc "$build/m2lab" run experiments/step_time.lua device=cuda \
      config=experiments/configs/400m-hybrid-gdn.lua batch=4 steps=3 warmup=1 out=/tmp/st_gdn.h5 >"$out/step_$tc.log" 2>&1)
    log "step_time 400m-hybrid-gdn B=4 M2_GDN_CHUNK_TC=$tc: $(tail -1 "$out/step_$tc.log")"
  done
fi
