#!/usr/bin/env bash
# The paper presets and scale-1.0 specs through lm-eval with dtype=bfloat16 on a mamba-130m-shaped random
# model with the GPT-NeoX tokenizer (ssm_copy_mc, a loglikelihood task, and ssm_passkey at 8192 tokens):
# every run must finish, and each scale-1.0 run's per-sample outputs must equal the unsteered run's.
#
#   bash scripts/gpu/presets_lmeval.sh OUTFILE.json NEOX_TOKENIZER_DIR
#
# Needs CUDA, the mamba-ssm kernels and lm-eval; run with the checkout on PYTHONPATH.
set -uo pipefail
dest=${1:?usage: presets_lmeval.sh OUTFILE.json NEOX_TOKENIZER_DIR}
neox=${2:?usage: presets_lmeval.sh OUTFILE.json NEOX_TOKENIZER_DIR}
status=0
work=$(mktemp -d)
model="$work/mamba-130m-random"
python3 scripts/gpu/make_130m_random.py "$model" "$neox"
runs=(
    "unsteered|"
    "paper-mamba-130m|,steer=paper-mamba-130m"
    "paper-mamba-130m-dtgate|,steer=paper-mamba-130m-dtgate"
    "delta-x1.0|,steer_layer=20,steer_site=delta,steer_scale=1.0"
    "gate-x1.0|,steer_layer=all,steer_site=gate,steer_scale=1.0"
)
for entry in "${runs[@]}"; do
    name=${entry%%|*}
    extra=${entry#*|}
    start=$SECONDS
    if python3 -m lm_eval_ssmsteer eval --model mamba-steered \
        --model_args "pretrained=$model,dtype=bfloat16$extra" --tasks ssm_copy_mc,ssm_passkey \
        --metadata '{"max_seq_lengths": [8192], "num_samples": 16}' --device cuda --batch_size 8 \
        --log_samples --output_path "$work/runs/$name" >"$work/$name.log" 2>&1; then
        echo "lm-eval $name: ok ($((SECONDS - start)) s)"
    else
        echo "lm-eval $name: FAILED"; tail -n 20 "$work/$name.log"; status=1
    fi
done
python3 - "$work/runs" "$dest" <<'PY' || status=1
import json
import sys
from pathlib import Path

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
summary, failures = {}, []
samples = {}
for run in sorted(p for p in runs.iterdir() if p.is_dir()):
    results = sorted(run.rglob("results_*.json"))
    if not results:
        failures.append(f"{run.name}: no results")
        continue
    doc = json.loads(results[-1].read_text())
    summary[run.name] = {"results": doc["results"], "config": doc["config"]}
    samples[run.name] = {
        p.name.split("_20")[0]: [json.loads(line)["resps"] for line in p.read_text().splitlines()]
        for p in run.rglob("samples_*.jsonl")
    }
for name in ("delta-x1.0", "gate-x1.0"):
    if name in samples and "unsteered" in samples:
        same = samples[name] == samples["unsteered"]
        summary[name]["per_sample_outputs_equal_unsteered"] = same
        if not same:
            failures.append(f"{name}: per-sample outputs differ from the unsteered run")
summary["failures"] = failures
dest.write_text(json.dumps(summary, indent=1))
for name, run in summary.items():
    if name != "failures":
        print(name, {t: {k: v for k, v in r.items() if not k.endswith("stderr,none")} for t, r in run["results"].items()},
              run.get("per_sample_outputs_equal_unsteered", ""))
print("failures:", failures)
sys.exit(1 if failures else 0)
PY
exit $status
