#!/usr/bin/env bash
# The planted-bottleneck protocol through lm-eval (ssmsteer study find-table --plant) on the GPU machine,
# for plants of ssmsteer study plant (ref-mamba1, layer L B, 4 of 16 channels x0.1, seed S), with find's
# --screen SCREEN; outputs under OUTDIR, packed as OUTDIR/planted.tgz (the large scores JSON left out).
#
#   bash scripts/gpu/planted_lmeval.sh OUTDIR SCREEN L:S [L:S ...]
#
# Needs lm-eval and the mamba-ssm kernels installed (docs/gpu.md) and the checkout on PYTHONPATH.
set -euo pipefail
out=${1:?usage: planted_lmeval.sh OUTDIR SCREEN L:S [L:S ...]}
screen=${2:?usage: planted_lmeval.sh OUTDIR SCREEN L:S [L:S ...]}
shift 2
mkdir -p "$out/planted"
for plant in "$@"; do
    layer=${plant%%:*} seed=${plant##*:}
    python3 -m lm_eval_ssmsteer study find-table --models ref-mamba1 --samples 20 --lengths 512 2048 \
        --device cuda --plant "$layer" --plant-site B --plant-channels 4 --plant-scale 0.1 --plant-seed "$seed" \
        --screen "$screen" --out-dir "$out/planted" 2>&1 | grep -E "^ref-mamba1|^\|" || true
    rm -f "$out"/planted/*.scores.json
    tar -czf "$out/planted.tgz" -C "$out" planted
done
