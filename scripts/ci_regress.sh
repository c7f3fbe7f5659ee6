#!/usr/bin/env bash
# Regression check of the committed baseline (baselines/ssmsteer_quick.json): evaluate every run it holds
# on ssmsteer_quick, then `ssmsteer regress`. With --update, rewrite the baseline from the fresh runs.
#   bash scripts/ci_regress.sh [--update]
# The runs: the bundled trained reference model ref-mamba1, unsteered and with examples/ref-mamba1-mild.json.
# fast_scan=True runs Mamba-1's scan as one op on CPU (same scores; tests/test_backend.py and
# tests/test_fastscan.py check it against the torch loop), ~2.3x faster here. The two runs go in parallel,
# one thread each (CI has 2 cores). .github/workflows/ssmsteer-regress.yml lists the same runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUNS=(
  "pretrained=ref-mamba1,fast_scan=True"
  "pretrained=ref-mamba1,fast_scan=True,steer=examples/ref-mamba1-mild.json"
)
out=$(mktemp -d)
pids=()
for i in "${!RUNS[@]}"; do
  lm_eval --model mamba-steered --model_args "${RUNS[$i]}" --tasks ssmsteer_quick --device cpu \
    --batch_size 8 --log_samples --output_path "$out/run$i" > "$out/log$i.txt" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "lm_eval failed for ${RUNS[$i]}:" >&2
    tail -40 "$out/log$i.txt" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
echo "results in $out (ssmsteer report $out --out DIR for the leaderboard)"
if [ "${1:-}" = "--update" ]; then
  ssmsteer regress --update-baseline --baseline baselines/ssmsteer_quick.json --current "$out"
else
  ssmsteer regress --baseline baselines/ssmsteer_quick.json --current "$out"
fi
