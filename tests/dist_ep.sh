#!/usr/bin/env bash
# dist_ep.sh — expert parallelism on CPU ranks under mpirun (label dist; skipped, exit 77, without mpirun or without
# the MPI backend):
#   * the all-to-all with counts (dist.h, tests/lua/dist_alltoall.lua) on 1, 3 and 4 ranks: every value where it
#     belongs with empty blocks among them, f32 / f64 / i64, bad counts refused on every rank; a rank that never calls
#     it makes the others fail after the timeout, naming the collective;
set -u
build="$(cd "${1:?usage: dist_ep.sh BUILD_DIR}" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
m2lab="$build/m2lab"
command -v mpirun >/dev/null || { echo "dist_ep: no mpirun (apt-get install openmpi-bin): skipped"; exit 77; }
"$m2lab" version | grep -q "collectives:.*mpi" || { echo "dist_ep: m2lab built without MPI: skipped"; exit 77; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 2
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
bad=0
fail() { echo "dist_ep: FAILED: $*"; bad=$((bad + 1)); }
run() { # name, then the command; its output goes to name.log
  local name=$1; shift
  timeout 300 "$@" >"$name.log" 2>&1
}

# ---- the all-to-all ----
a2a="$root/tests/lua/dist_alltoall.lua"
for n in 1 3 4; do
  run "a2a$n" "${mpi[@]}" -n $n "$m2lab" run "$a2a" || fail "alltoallv on $n ranks"
  [ "$(grep -c "all in place" "a2a$n.log")" = $((3 * n)) ] || fail "alltoallv on $n ranks: every rank, every dtype"
  [ "$(grep -c "bad calls refused" "a2a$n.log")" = $n ] || fail "alltoallv on $n ranks: bad calls refused everywhere"
done
t0=$SECONDS
run a2a_timeout "${mpi[@]}" -n 3 "$m2lab" run "$a2a" mode=timeout timeout=2
[ "$(grep -c "dist alltoallv: rank [02] of 3 waited 2 s (the timeout)" a2a_timeout.log)" = 2 ] ||
  fail "alltoallv: the ranks that called it time out, naming it"
[ $((SECONDS - t0)) -lt 30 ] || fail "alltoallv timeout took $((SECONDS - t0)) s"

if [ $bad = 0 ]; then echo "dist_ep: ok"; else
  for f in *.log; do echo "==== $f"; tail -c 1500 "$f"; done
fi
exit $((bad > 0))
