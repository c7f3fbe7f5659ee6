#!/usr/bin/env bash
# One GPU, the question a data-parallel run raises: does a document's output depend on its batch mates?
# The same lm_eval run (mamba-130m-shaped random model, bf16, paper preset, ssm_passkey at 8192 tokens and
# ssm_copy_mc, 200 documents each) at batch 8 and batch 5, compared document by document with
# benchmarks/data_parallel.py's comparison (responses, per-document metrics, log-probabilities).
#
#   bash scripts/gpu/batch_composition.sh NEOX_TOKENIZER_DIR [OUTDIR]
#
# Needs CUDA, the mamba-ssm kernels and lm-eval; the checkout on PYTHONPATH.
set -u
neox=${1:?usage: batch_composition.sh NEOX_TOKENIZER_DIR [OUTDIR]}
out=${2:-/tmp/bc}
model="$out/model"
[ -f "$model/config.json" ] || python3 scripts/gpu/make_130m_random.py "$model" "$neox" > /dev/null 2>&1 || exit 1
for b in 8 5; do
    SSMSTEER_TIMING="$out/b$b/timing" python3 benchmarks/_timed_lm_eval.py --model mamba-steered \
        --model_args "pretrained=$model,dtype=bfloat16,steer=paper-mamba-130m" --tasks ssm_passkey,ssm_copy_mc \
        --metadata '{"max_seq_lengths": [8192], "num_samples": 200}' --include_path tasks --batch_size $b \
        --log_samples --output_path "$out/b$b" > "$out/b$b.log" 2>&1 || { tail -20 "$out/b$b.log"; exit 1; }
done
OUT_DIR="$out" python3 - <<'PY'
import importlib.util, json, os
from pathlib import Path
out = Path(os.environ["OUT_DIR"])
spec = importlib.util.spec_from_file_location("dp", "benchmarks/data_parallel.py")
dp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dp)
report = dp.compare(out / "b8", out / "b5", None)
report["timing"] = {b: json.loads((out / f"b{b}" / "timing" / "rank0.json").read_text()) for b in (8, 5)}
print(json.dumps(report, indent=1))
PY
