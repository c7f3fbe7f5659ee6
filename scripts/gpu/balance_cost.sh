#!/usr/bin/env bash
# What `find --balance` costs on the GPU (docs/finder.md, "Balance"): `ssmsteer find` on the unplanted
# ref-mamba2, the default against --balance, alternately, ROUNDS rounds, on two calibration sets: the CLI's
# default tasks and documents, and the copying tasks at 4 documents a task (the survey folders' count). Each
# run's wall time (the command's, model load included) goes to OUTDIR/times.txt, its spec and log beside it.
# A round starts only while less than BUDGET seconds have passed (default 420), so a device call's limit is
# not hit half-way. The first run of a machine also pays its start-up (imports, kernel
# loading): read the later rounds.
#
#   bash scripts/gpu/balance_cost.sh OUTDIR [ROUNDS] [BUDGET]
#
# Needs the mamba-ssm kernels (docs/gpu.md) and the checkout on PYTHONPATH.
set -uo pipefail
out=${1:?usage: balance_cost.sh OUTDIR [ROUNDS] [BUDGET]}
rounds=${2:-3}
budget=${3:-420}
mkdir -p "$out"
started=$SECONDS
for ((round = 1; round <= rounds; round++)); do
    for set in default copy; do
        case $set in
            default) tasks=() ;;
            copy) tasks=(--tasks ssm_copy ssm_kv_retrieval ssm_induction --docs-per-task 4) ;;
        esac
        for option in default balance; do
            ((SECONDS - started > budget)) && break 3
            flag=()
            [ "$option" = balance ] && flag=(--balance)
            name="$out/$set-$option-$round"
            begin=$(date +%s.%N)
            python3 -m lm_eval_ssmsteer find --model ref-mamba2 "${tasks[@]}" "${flag[@]}" --device cuda \
                --no-progress --out "$name.json" >"$name.log" 2>&1
            rc=$?
            end=$(date +%s.%N)
            seconds=$(awk "BEGIN {printf \"%.1f\", $end - $begin}")
            echo "$round $set $option rc=$rc $seconds s" | tee -a "$out/times.txt"
        done
    done
done
