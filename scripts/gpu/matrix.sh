#!/usr/bin/env bash
# The GPU matrix of docs/gpu.md on the machine it runs on (needs CUDA and the mamba-ssm kernels):
#   1. benchmarks/gpu_matrix.py: 3 architectures x fp32/bf16/fp16 x every site x every positions mode,
#      prefill and cached decoding: no crash, scale 1.0 equal to unsteered on the same path, kernels used;
#   2. scripts/gpu/presets_lmeval.sh: the paper presets and scale-1.0 specs through lm-eval in bf16.
#
#   bash scripts/gpu/matrix.sh OUTDIR NEOX_TOKENIZER_DIR [TAG]
#
# Writes OUTDIR/gpu_matrix[-TAG].json, .log and OUTDIR/lmeval[-TAG].json. Run with the checkout on PYTHONPATH.
set -uo pipefail
out=${1:?usage: matrix.sh OUTDIR NEOX_TOKENIZER_DIR [TAG]}
neox=${2:?usage: matrix.sh OUTDIR NEOX_TOKENIZER_DIR [TAG]}
tag=${3:+-$3}
mkdir -p "$out"
status=0
python3 benchmarks/gpu_matrix.py --out "$out/gpu_matrix$tag.json" >"$out/gpu_matrix$tag.log" 2>&1 || status=1
tail -n 75 "$out/gpu_matrix$tag.log"

bash scripts/gpu/presets_lmeval.sh "$out/lmeval$tag.json" "$neox" || status=1
exit $status
