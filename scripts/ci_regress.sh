#!/usr/bin/env bash
# Regression check of the committed baseline (baselines/ssmsteer_quick.json): evaluate every run it holds
# on ssmsteer_quick, then `ssmsteer regress`. With --update, rewrite the baseline from the fresh runs.
#   bash scripts/ci_regress.sh [--update]
# The runs: the bundled trained reference models ref-mamba1 (Mamba-1) and ref-mamba2 (Mamba-2), each
# unsteered and with its examples/ref-mamba*-mild.json. fast_scan=True runs the project's CPU scans (same
# scores; tests/test_backend.py and tests/test_fastscan.py check them against transformers' scans): Mamba-1's
# scan as one op, ~2.3x faster; Mamba-2's chunked scan as matrix products, ~10x faster on transformers 5.17. Two runs at a time, one thread each (CI has 2 cores). .github/workflows/ssmsteer-regress.yml
# lists the same runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUNS=(
  "pretrained=ref-mamba1,fast_scan=True"
  "pretrained=ref-mamba1,fast_scan=True,steer=examples/ref-mamba1-mild.json"
  "pretrained=ref-mamba2,fast_scan=True"
  "pretrained=ref-mamba2,fast_scan=True,steer=examples/ref-mamba2-mild.json"
)
out=$(mktemp -d)
pids=()
failed=0
finish() {  # wait for run $1
  if ! wait "${pids[$1]}"; then
    echo "lm_eval failed for ${RUNS[$1]}:" >&2
    tail -40 "$out/log$1.txt" >&2
    failed=1
  fi
}
for i in "${!RUNS[@]}"; do
  if [ "$i" -ge 2 ]; then finish $((i - 2)); fi  # at most two at a time
  lm_eval --model mamba-steered --model_args "${RUNS[$i]}" --tasks ssmsteer_quick --device cpu \
    --batch_size 8 --log_samples --output_path "$out/run$i" > "$out/log$i.txt" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if [ "$i" -ge $((${#pids[@]} - 2)) ]; then finish "$i"; fi
done
[ "$failed" = 0 ] || exit 1
echo "results in $out (ssmsteer report $out --out DIR for the leaderboard)"
if [ "${1:-}" = "--update" ]; then
  ssmsteer regress --update-baseline --baseline baselines/ssmsteer_quick.json --current "$out"
else
  ssmsteer regress --baseline baselines/ssmsteer_quick.json --current "$out"
fi
