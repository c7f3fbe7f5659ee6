#!/usr/bin/env bash
# The finder's measurements on ref-mamba1 on the GPU machine (docs/finder.md), packed as OUTDIR/finder.tgz
# after each step (the large scores JSON files left out):
#   1. the held-out test table (unsteered, found, random, paper heuristic) with find's defaults, and with
#      --docs-per-task 8 --screen 100;
#   2. the plant survey: 4 of 16 B channels x0.1 at every layer, seeds 10 and 11, calibration 2 and 8
#      documents per task, --screen 3 and 100 (ssmsteer study plant);
#   3. the planted protocol through lm-eval with find's defaults for layer 3 seeds 10 and 11.
#
#   bash scripts/gpu/finder_all.sh OUTDIR
#
# Needs lm-eval and the mamba-ssm kernels installed (docs/gpu.md) and the checkout on PYTHONPATH.
set -euo pipefail
out=${1:?usage: finder_all.sh OUTDIR}
res="$out/finder"
mkdir -p "$res"
pack() { rm -f "$res"/*.scores.json; tar -czf "$out/finder.tgz" -C "$out" finder; }
table() { python3 -m lm_eval_ssmsteer study find-table --models ref-mamba1 --samples 20 --lengths 512 2048 \
    --device cuda --out-dir "$res" "$@" 2>&1 | grep -E "^ref-mamba1|^\|" || true; pack; }
table
table --docs-per-task 8 --screen 100
python3 -m lm_eval_ssmsteer study plant --layers 0 1 2 3 4 5 --plants B:4 --seeds 10 11 --docs-per-task 2 8 \
    --screen 3 100 --device cuda --out "$res/plant_study_B.json" 2>&1 | grep -v "Loading weights\|plants:" | tail -52
pack
for seed in 10 11; do
    table --plant 3 --plant-site B --plant-channels 4 --plant-scale 0.1 --plant-seed "$seed"
done
