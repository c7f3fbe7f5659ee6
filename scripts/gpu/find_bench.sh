#!/usr/bin/env bash
# The finder's GPU measurements (issue 4, docs/finder.md), written under OUTDIR:
#   1. benchmarks/find_gpu.py: `find` on a mamba-130m-shaped model (24 x 768, all sites, 256 calibration
#      sequences of 512 tokens) against a leave-one-out loop on the same wall-time budget;
#   2. `ssmsteer find` on ref-mamba1 with a planted bottleneck (layer 2 B, 4 of 16 channels x0.1, seed 2)
#      with the default calibration documents and with 4x and 16x as many (calibration split only).
#
#   bash scripts/gpu/find_bench.sh OUTDIR
#
# Needs the mamba-ssm (and causal-conv1d) kernels installed (docs/gpu.md) and the checkout on PYTHONPATH.
set -euo pipefail
out=${1:?usage: find_bench.sh OUTDIR}
mkdir -p "$out"
python3 benchmarks/find_gpu.py --out "$out/find_gpu.json" 2>&1 | tee "$out/find_gpu.log" | grep -v "it/s\]" || true
planted="$out/planted-L2-B-4x0.1-seed2"
python3 -m lm_eval_ssmsteer study damp --model ref-mamba1 --layer 2 --site B --channels 4 --scale 0.1 \
    --seed 2 --out "$planted.model" 2>&1 | grep -v "Loading weights\|Writing model shards"
for docs in 2 8 32; do
    start=$SECONDS
    python3 -m lm_eval_ssmsteer find --model "$planted.model" --out "$planted.docs$docs.json" \
        --docs-per-task "$docs" --device cuda --no-progress 2>&1 | grep -v "Loading weights" | tee "$planted.docs$docs.log"
    echo "docs/task $docs: $((SECONDS - start)) s wall (model load included)" | tee -a "$planted.docs$docs.log"
done
rm -rf "$planted.model"
