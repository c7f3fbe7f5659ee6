#!/usr/bin/env bash
# The two-GPU issue's measurement: lm-eval with steering on N GPUs (accelerate launch) against one GPU, in
# one call, on a mamba-130m-shaped random model (GPT-NeoX tokenizer, bf16, mamba-ssm kernels), with
# ssm_passkey at 8192 tokens (generation) and ssm_copy_mc (loglikelihood): benchmarks/data_parallel.py
# prints the table and exits 1 when any per-sample output differs or world_size is not recorded.
#
#   bash scripts/gpu/data_parallel.sh OUTDIR NEOX_TOKENIZER_DIR [PROCESSES]
#
# Needs N GPUs, CUDA, the mamba-ssm kernels, lm-eval and accelerate; the checkout on PYTHONPATH.
set -uo pipefail
out=${1:?usage: data_parallel.sh OUTDIR NEOX_TOKENIZER_DIR [PROCESSES]}
neox=${2:?usage: data_parallel.sh OUTDIR NEOX_TOKENIZER_DIR [PROCESSES]}
processes=${3:-2}
mkdir -p "$out"
model="$out/mamba-130m-random"
python3 scripts/gpu/make_130m_random.py "$model" "$neox"
python3 benchmarks/data_parallel.py --processes "$processes" --out "$out/runs" \
    --model-args "pretrained=$model,dtype=bfloat16,steer=paper-mamba-130m" \
    --tasks ssm_passkey,ssm_copy_mc --metadata '{"max_seq_lengths": [8192]}' --batch-size 8
