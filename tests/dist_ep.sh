#!/usr/bin/env bash
# dist_ep.sh — expert parallelism on CPU ranks under mpirun (label dist; skipped, exit 77, without mpirun or without
# the MPI backend):
#   * the all-to-all with counts (dist.h, tests/lua/dist_alltoall.lua) on 1, 3 and 4 ranks: every value where it
#     belongs with empty blocks among them, f32 / f64 / i64, bad counts refused on every rank; a rank that never calls
#     it makes the others fail after the timeout, naming the collective;
#   * the expert-parallel MoE layer (tests/lua/dist_ep_layer.lua) on 1, 2 and 4 ranks equals the plain layer on the
#     whole global batch (output rows, every gradient, the aux loss, the logged load) within 1e-5, with random routing
#     and with experts that no token picks, one that rank 0's tokens never pick, and (4 ranks) a rank that receives no
#     row at all;
#   * a tiny MoE LM (tests/lua/dist_train.lua experts=8, top-2, 8 steps, seed 1) trained expert-parallel on 2 and 4
#     ranks equals one process training the same global batch with all experts to 1e-4 (loss, lr, grad-norm series,
#     every parameter and AdamW state tensor of the last checkpoint, whose expert tensors hold all 8 experts), as
#     dist_mpi.sh's data-parallel runs do; ZeRO-1 or not changes nothing but the grad norm's last bits;
#   * a 2-rank checkpoint resumes on 2 ranks bit for bit, and on 1 and 4 ranks to 1e-4;
#   * experts not divisible by the world size: an error naming both on every rank, no run file.
# (seed 1: with seed 0 one element of an attention projection, whose gradient is near zero, ends 1.5e-4 apart after
# 8 AdamW steps; the 2- and 4-rank runs differ there by 8e-5 too, so it is the amplified rounding, not the exchange.)
set -u
name=dist_ep
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh" "$@"

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

# ---- the layer against the plain one ----
lay="$root/tests/lua/dist_ep_layer.lua"
for n in 1 2 4; do
  for c in random empty; do
    run "layer$n$c" "${mpi[@]}" -n $n "$m2lab" run "$lay" case=$c || fail "the layer on $n ranks, $c routing"
    [ "$(grep -c "^dist_ep_layer $c: rank" "layer$n$c.log")" = $n ] || fail "the layer on $n ranks ($c): every rank"
  done
done
grep -q "rank 3 of 4 (2 experts here, 0 rows received)" layer4empty.log || fail "a rank that receives no row"

# ---- training equals one process ----
train="$root/tests/lua/dist_train.lua"
ep=(experts=8 seed=1)
same() { # a b tol what [norm_tol]
  "$m2lab" run "$root/tests/lua/dist_compare.lua" a="$1" b="$2" tol="$3" norm_tol="${5:-$3}" what="$4" >>compare.log 2>&1 ||
    fail "$4"
}
run ref1 "$m2lab" run "$train" out=ref1.h5 "${ep[@]}" || fail "one process, all experts"
run e2 "${mpi[@]}" -n 2 "$m2lab" run "$train" out=e2.h5 "${ep[@]}" ep=true || fail "2 ranks, expert parallel"
run e2n "${mpi[@]}" -n 2 "$m2lab" run "$train" out=e2n.h5 "${ep[@]}" ep=true zero=false || fail "2 ranks, no ZeRO"
run e4 "${mpi[@]}" -n 4 "$m2lab" run "$train" out=e4.h5 "${ep[@]}" ep=true || fail "4 ranks, expert parallel"
same e2.h5 ref1.h5 1e-4 "expert parallel on 2 ranks vs one process"
same e4.h5 ref1.h5 1e-4 "expert parallel on 4 ranks vs one process"
same e2n.h5 e2.h5 0 "expert parallel on 2 ranks: ZeRO-1 vs none" 1e-12

# ---- resume at the same and at other world sizes ----
for w in 1 2 4; do
  run "h$w" "${mpi[@]}" -n 2 "$m2lab" run "$train" out="h$w.h5" "${ep[@]}" ep=true steps=4 || fail "2 ranks, 4 steps"
  if [ $w = 1 ]; then run "r$w" "$m2lab" resume "h$w.h5" steps=8 || fail "resume in one process"
  else run "r$w" "${mpi[@]}" -n $w "$m2lab" resume "h$w.h5" steps=8 || fail "resume on $w ranks"; fi
done
same h2.h5 e2.h5 0 "2-rank expert-parallel checkpoint resumed on 2 ranks" 1e-12
same h1.h5 e2.h5 1e-4 "2-rank expert-parallel checkpoint resumed in one process"
same h4.h5 e2.h5 1e-4 "2-rank expert-parallel checkpoint resumed on 4 ranks"

# ---- experts not divisible by the world size: every rank says so (each keeps running to say it) ----
# (mpirun then exits 0 whatever the ranks did: the messages and the missing run file are the test)
run bad3 "${mpi[@]}" --mca orte_abort_on_non_zero_status 0 -n 3 "$m2lab" run "$train" out=b3.h5 "${ep[@]}" ep=true
[ "$(grep -c "dist_train.lua:[0-9]*: MoE: expert_parallel: experts = 8 is not a multiple of the world size 3" bad3.log)" = 3 ] ||
  fail "8 experts on 3 ranks: every rank names the cause at the script's line"
[ ! -e b3.h5 ] || fail "8 experts on 3 ranks: no run file"

finish grep -h "^dist_compare" compare.log
