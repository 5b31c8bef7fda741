#!/usr/bin/env bash
# dist_mpi.sh — data-parallel training on CPU ranks under mpirun (label dist; skipped, exit 77, without mpirun or
# without the MPI backend). A small hybrid LM (tests/lua/dist_train.lua, 8 steps, 5.6 k parameters) on the S3 task:
#   * 2 and 4 ranks equal bit for bit one process training each global batch as 2 / 4 micro-batches in rank order
#     (loss, lr and grad-norm series, last checkpoint's parameters and AdamW state); ZeRO-1 equals no ZeRO except
#     for the last bits of the logged grad norm (its sum of squares is added per rank); against one process taking
#     the whole batch at once they agree to 1e-4 (the order of the gradient sums differs);
#   * a 2-rank checkpoint resumes on 2 ranks bit for bit, and on 1 and 4 ranks to 1e-4;
#   * `m2lab launch -n 2` (mpirun) equals the 2-rank run; `m2lab launch --no-mpi` sets the env and, when a rank
#     fails, stops the others and names it;
#   * bad cases end on every rank within a bounded time: a killed rank (mpirun stops the job, rank 0's run file stays
#     readable), a stuck rank (rank 0's collective times out, its run file says why), different options on the ranks
#     (no run file is created), RANK >= WORLD_SIZE, CPU ranks started without mpirun; Ctrl-C stops every rank at
#     the same step with one checkpoint.
set -u
name=dist_mpi
source "$(dirname "${BASH_SOURCE[0]}")/dist_common.sh" "$@"
train="$root/tests/lua/dist_train.lua"
same() { # a b tol what [norm_tol]
  "$m2lab" run "$root/tests/lua/dist_compare.lua" a="$1" b="$2" tol="$3" norm_tol="${5:-$3}" what="$4" ||
    fail "$4"
}

# ---- equality ----
run ref1 "$m2lab" run "$train" out=ref1.h5 || fail "one process"
run ref2 "$m2lab" run "$train" out=ref2.h5 split=2 || fail "one process, 2 micro-batches"
run ref4 "$m2lab" run "$train" out=ref4.h5 split=4 || fail "one process, 4 micro-batches"
run d2 "${mpi[@]}" -n 2 "$m2lab" run "$train" out=d2.h5 zero=false || fail "2 ranks"
run d2z "${mpi[@]}" -n 2 "$m2lab" run "$train" out=d2z.h5 || fail "2 ranks, ZeRO-1"
run d4z "${mpi[@]}" -n 4 "$m2lab" run "$train" out=d4z.h5 || fail "4 ranks, ZeRO-1"
same d2.h5 ref2.h5 0 "2 ranks vs one process of 2 micro-batches"
same d2z.h5 d2.h5 0 "2 ranks: ZeRO-1 vs none" 1e-12
same d4z.h5 ref4.h5 0 "4 ranks, ZeRO-1 vs one process of 4 micro-batches" 1e-12
same d2.h5 ref1.h5 1e-4 "2 ranks vs one process of the whole batch"
same d4z.h5 ref1.h5 1e-4 "4 ranks vs one process of the whole batch"
"$m2lab" inspect d2z.h5 | grep -q "tokens_per_s_rank1" || fail "rank 0 records every rank's tokens/s"

# ---- resume at the same and at other world sizes ----
for w in 1 2 4; do
  run "h$w" "${mpi[@]}" -n 2 "$m2lab" run "$train" out="h$w.h5" steps=4 || fail "2 ranks, 4 steps"
  if [ $w = 1 ]; then run "r$w" "$m2lab" resume "h$w.h5" steps=8 || fail "resume in one process"
  else run "r$w" "${mpi[@]}" -n $w "$m2lab" resume "h$w.h5" steps=8 || fail "resume on $w ranks"; fi
done
same h2.h5 d2z.h5 0 "2-rank checkpoint resumed on 2 ranks" 1e-12
same h1.h5 d2z.h5 1e-4 "2-rank checkpoint resumed in one process"
same h4.h5 d2z.h5 1e-4 "2-rank checkpoint resumed on 4 ranks"

# ---- the launcher ----
run launch "$m2lab" launch -n 2 "$train" out=l2.h5 || fail "m2lab launch -n 2"
same l2.h5 d2z.h5 0 "m2lab launch -n 2 vs mpirun -n 2"
t0=$SECONDS
run probe timeout 60 "$m2lab" launch -n 3 --no-mpi "$root/tests/lua/dist_launch_probe.lua" fail_rank=1 code=3
code=$?
[ $code = 3 ] || fail "launch --no-mpi: a rank exiting 3 should give 3, got $code"
grep -q "rank 1 (pid [0-9]*) exited with status 3: stopping the other ranks" probe.log || fail "launch names the rank"
[ "$(grep -c "probe: rank" probe.log)" = 3 ] || fail "launch started 3 ranks"
grep -q "probe: rank 2 of 3, local rank 2, torchrun" probe.log || fail "launch sets RANK / WORLD_SIZE / LOCAL_RANK"
[ $((SECONDS - t0)) -lt 30 ] || fail "launch stopped the others in $((SECONDS - t0)) s"

# ---- bad cases end everywhere, in bounded time ----
t0=$SECONDS
run kill "${mpi[@]}" -n 2 "$m2lab" run "$train" out=k.h5 steps=40 die_rank=1 die_step=5 checkpoint_every=2 &&
  fail "a killed rank should fail the job"
grep -q "rank 1" kill.log || fail "the killed rank is named"
"$m2lab" inspect k.h5 >k.inspect 2>&1 || fail "rank 0's run file stays readable after a rank died"
grep -q "checkpoints (.*): .*4" k.inspect || fail "rank 0's checkpoints before the death are there"
run stuck "${mpi[@]}" -n 2 "$m2lab" run "$train" out=s.h5 stall_rank=1 stall_step=3 stall_s=60 dist_timeout=3 &&
  fail "a stuck rank should fail the job"
"$m2lab" inspect s.h5 | grep -q "status *failed: .*waited 3 s (the timeout) for the other ranks" ||
  fail "rank 0's run file says a collective timed out"
run mismatch "${mpi[@]}" -n 1 "$m2lab" run "$train" out=m.h5 lr=0.01 : -n 1 "$m2lab" run "$train" out=m.h5 lr=0.02 &&
  fail "different options on the ranks should fail"
[ "$(grep -c "differs between ranks" mismatch.log)" = 2 ] || fail "every rank names the mismatch"
[ ! -e m.h5 ] || fail "no run file when the ranks disagree"
RANK=2 WORLD_SIZE=2 run badrank "$m2lab" run "$train" out=b.h5 && fail "RANK=2 of WORLD_SIZE=2"
grep -q "RANK=2 is not below WORLD_SIZE=2" badrank.log || fail "RANK >= WORLD_SIZE is named"
RANK=0 WORLD_SIZE=2 run nompi "$m2lab" run "$train" out=n.h5 && fail "CPU ranks without mpirun"
grep -q "start them with mpirun" nompi.log || fail "CPU ranks without mpirun: the message says how"
[ $((SECONDS - t0)) -lt 120 ] || fail "the bad cases took $((SECONDS - t0)) s"

# ---- Ctrl-C: every rank stops at the same step, one checkpoint ----
"${mpi[@]}" -n 2 "$m2lab" run "$train" out=i.h5 steps=400 throttle=0.1 checkpoint_every=1000 >int.log 2>&1 &
pid=$!
sleep 4
kill -INT $pid
for _ in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && { fail "Ctrl-C: still running after 60 s"; kill -KILL $pid; }
wait $pid
"$m2lab" inspect i.h5 >i.inspect 2>&1
grep -q "status *interrupted" i.inspect || fail "Ctrl-C: status interrupted"
grep -q "checkpoints (1)" i.inspect || fail "Ctrl-C: one checkpoint"

finish
