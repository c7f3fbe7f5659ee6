#!/usr/bin/env bash
# The two-GPU issue's measurement: steering on N GPUs (accelerate launch) against one GPU, in one call, on a
# mamba-130m-shaped random model (GPT-NeoX tokenizer, bf16, mamba-ssm kernels): benchmarks/data_parallel.py
# prints the tables and exits 1 when any per-sample output differs or world_size is not recorded.
#   lm_eval: the paper's preset, ssm_passkey at 8192 tokens (generation) and ssm_copy_mc (loglikelihood),
#            DOCS documents each (default 500); then each rank's share run alone in one process on one GPU
#            (the shard replay: the launch must equal it document by document), and, for the generations
#            that differ from the one-process run, scripts/gpu/divergence.py: the logit gap where they part;
#   launch:  the lm_eval leg without the shard replay (with divergence.py on what differs);
#   replay:  one GPU: the lm_eval leg's one-process run against the replay of PROCESSES shares, no launch
#            (what the batch composition alone changes), with divergence.py on what differs;
#   sweep:   ssmsteer sweep of 15 specs (delta x2 at 15 of the 24 layers) and the unsteered model, 16 cells
#            (8 a process on 2 GPUs), over the same two tasks, 50 documents each.
#
#   bash scripts/gpu/data_parallel.sh OUTDIR NEOX_TOKENIZER_DIR [PROCESSES] [lm_eval|launch|replay|sweep|both] [DOCS]
#
# DP_MODEL_ARGS (optional, KEY=VALUE[,KEY=VALUE...]) is appended to the model_args; DP_BATCH_SIZE (default 8)
# is lm-eval's --batch_size (1: every document computed alone, so no batch mate can change it).
#
# Needs N GPUs, CUDA, the mamba-ssm kernels, lm-eval and accelerate; the checkout on PYTHONPATH.
set -uo pipefail
usage="usage: data_parallel.sh OUTDIR NEOX_TOKENIZER_DIR [PROCESSES] [lm_eval|launch|replay|sweep|both] [DOCS]"
out=${1:?$usage}
neox=${2:?$usage}
processes=${3:-2}
legs=${4:-both}
docs=${5:-500}
mkdir -p "$out"
model="$out/mamba-130m-random"
[ -f "$model/config.json" ] || python3 scripts/gpu/make_130m_random.py "$model" "$neox" || exit 1
args=(--processes "$processes"
      --model-args "pretrained=$model,dtype=bfloat16,steer=paper-mamba-130m${DP_MODEL_ARGS:+,$DP_MODEL_ARGS}"
      --tasks ssm_passkey,ssm_copy_mc --batch-size "${DP_BATCH_SIZE:-8}")
lm_eval_metadata="{\"max_seq_lengths\": [8192], \"num_samples\": $docs}"
sweep_metadata='{"max_seq_lengths": [8192], "num_samples": 50}'
sweep=(--sweep-metadata "$sweep_metadata" --sweep-sites delta --sweep-scales 2
       --sweep-layers 0,1,2,3,5,7,9,11,13,15,17,19,21,22,23)
divergence() {  # the generations where one process and $1 part, and the logit gap there
    python3 scripts/gpu/divergence.py "$out/runs/p1" "$1" "$model" --steer paper-mamba-130m \
        --out "$out/runs/divergence.json"
}
case "$legs" in
    lm_eval) python3 benchmarks/data_parallel.py "${args[@]}" --metadata "$lm_eval_metadata" --shard-replay \
                 --out "$out/runs"; rc=$?; divergence "$out/runs/p$processes"; exit $rc ;;
    launch) python3 benchmarks/data_parallel.py "${args[@]}" --metadata "$lm_eval_metadata" --out "$out/runs"
            rc=$?; divergence "$out/runs/p$processes"; exit $rc ;;
    replay) python3 benchmarks/data_parallel.py "${args[@]}" --metadata "$lm_eval_metadata" --replay-only \
                --out "$out/runs"; rc=$?; divergence "$out/runs/replay/merged"; exit $rc ;;
    sweep) python3 benchmarks/data_parallel.py "${args[@]}" --metadata "$lm_eval_metadata" --skip-lm-eval \
               "${sweep[@]}" --out "$out/runs" ;;
    both) python3 benchmarks/data_parallel.py "${args[@]}" --metadata "$lm_eval_metadata" --shard-replay \
              "${sweep[@]}" --out "$out/runs" ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
