#!/usr/bin/env bash
# Trains the reference models on the GPU machine, side by side on one GPU, each stopping after BUDGET
# seconds of training (cosine schedule over the budget): Mamba-1 (224 x 6; continued from MAMBA1_INIT when
# set) and Mamba-2 (256 x 5) at two learning rates. The better run per architecture (teacher-forced answer
# accuracy in its training.json) ships; docs/tasks.md records the runs made.
#
#   [MAMBA1_INIT=folder] bash scripts/gpu/train_refs.sh OUTDIR [BUDGET_SECONDS]
#
# The first recipe (training/legacy.py), kept for the record; new runs: scripts/gpu/train_v2.sh.
# Needs mamba-ssm's kernels (docs/gpu.md); without them Mamba-1 trains on transformers' torch loop.
set -euo pipefail
out=${1:?usage: train_refs.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-400}
mkdir -p "$out"
run() {  # name arch tokens_per_batch lr [extra args]
    local name=$1 arch=$2 tpb=$3 lr=$4
    shift 4
    python3 -m lm_eval_ssmsteer.training.legacy --arch "$arch" --out "$out/$name" --tokens-per-batch "$tpb" --lr "$lr" \
        --time-budget "$budget" --steps 1000000 --docs 200000 --workers 4 --device cuda "$@" >"$out/$name.log" 2>&1
}
run ref-mamba1 mamba 32768 "${MAMBA1_LR:-2e-3}" ${MAMBA1_INIT:+--init "$MAMBA1_INIT"} &
run ref-mamba2 mamba2 32768 2e-3 &
wait
