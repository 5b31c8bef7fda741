#!/usr/bin/env bash
# layout.sh — the house rules that a grep can check (tests/CMakeLists.txt runs it, label cpu):
#   core/ stands alone: no path into cuda/, no M2_HAVE_CUDA, no __CUDACC__ (the CUDA library registers itself);
#   one op, files named for it: every core/ops_X.c defines op rows and has tests/test_ops_X.c, every cuda/ops_X.cu
#   has tests/cuda_ops_X.c and registers its kernels (m2_cuda_register_ops_X, listed in M2_CUDA_OP_FILES).
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
bad=0
fail() { echo "layout: $*"; bad=$((bad + 1)); }
hits=$(grep -rn 'cuda/\|M2_HAVE_CUDA\|__CUDACC__' core/)
[ -z "$hits" ] || fail "core/ must not know the CUDA library:"$'\n'"$hits"
for f in core/ops_*.c; do
  b=$(basename "$f" .c)
  grep -q 'const m2_op m2_op_' "$f" || fail "$f defines no op row (a helper file should not be named ops_*)"
  [ -f "tests/test_$b.c" ] || fail "$f has no tests/test_$b.c"
done
for f in cuda/ops_*.cu; do
  b=$(basename "$f" .cu)
  [ -f "tests/cuda_$b.c" ] || fail "$f has no tests/cuda_$b.c"
  if grep -q 'm2_op_register_kernels' "$f"; then
    grep -q "X($b)" cuda/cuda_ops.h || fail "$f registers kernels but is not in M2_CUDA_OP_FILES (cuda/cuda_ops.h)"
  fi
done
checked=$(ls core/ops_*.c cuda/ops_*.cu | wc -l)
[ $bad = 0 ] && echo "layout: ok ($checked op files checked)"
exit $((bad > 0))
