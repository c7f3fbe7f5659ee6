#!/usr/bin/env bash
# Regression check of the committed baseline: evaluate every run it holds on ssmsteer_quick, then
# `ssmsteer regress`. With --update, rewrite the baseline from the fresh runs instead.
#   bash scripts/ci_regress.sh [--update]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
for args in "pretrained=tiny-random-mamba" "pretrained=tiny-random-mamba,steer=examples/delta-gate.json"; do
  lm_eval --model mamba-steered --model_args "$args" --tasks ssmsteer_quick --device cpu --batch_size 8 \
    --output_path "$out" > "$out/log.txt" 2>&1 || { tail -40 "$out/log.txt"; exit 1; }
done
if [ "${1:-}" = "--update" ]; then
  ssmsteer regress --update-baseline --baseline baselines/ssmsteer_quick.json --current "$out"
else
  ssmsteer regress --baseline baselines/ssmsteer_quick.json --current "$out"
fi
