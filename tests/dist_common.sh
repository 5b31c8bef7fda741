# dist_common.sh — what tests/dist_mpi.sh and tests/dist_ep.sh share, sourced after setting `name`:
#   name=dist_X; source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh" "$@"
# The build directory argument (build, root, m2lab), the skip (exit 77) without mpirun or without m2lab's MPI
# backend, a temporary working directory (removed at exit), the mpirun command line (mpi), and the helpers fail, run
# and finish.
build="$(cd "${1:?usage: $name.sh BUILD_DIR}" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
m2lab="$build/m2lab"
command -v mpirun >/dev/null || { echo "$name: no mpirun (apt-get install openmpi-bin): skipped"; exit 77; }
"$m2lab" version | grep -q "collectives:.*mpi" || { echo "$name: m2lab built without MPI: skipped"; exit 77; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 2
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
bad=0
fail() { echo "$name: FAILED: $*"; bad=$((bad + 1)); }
run() { # log name, then the command; its output goes to LOG.log
  local log=$1; shift
  timeout 300 "$@" >"$log.log" 2>&1
}
finish() { # [command, run when all passed]: "NAME: ok" and exit 0, or the tail of every log and exit 1
  if [ $bad = 0 ]; then echo "$name: ok"; "$@"; else
    for f in *.log; do echo "==== $f"; tail -c 1500 "$f"; done
  fi
  exit $((bad > 0))
}
