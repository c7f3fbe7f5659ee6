#!/usr/bin/env bash
# The finder-v2 plant survey on the GPU machine (docs/finder.md, "Plant survey"): every plant of the fixed
# list (design and held-out sets), 40 TEST documents per task and length (3 tasks x 512 and 2048 tokens:
# 240 documents), find with each option; one JSON file per plant under OUTDIR/survey/plants/, so a second
# run resumes where the first stopped. OUTDIR/survey.tgz is packed after each set.
#
#   [SURVEY_SETS="unseen fresh"] bash scripts/gpu/survey.sh OUTDIR [extra ssmsteer study survey arguments]
#
# Needs the mamba-ssm kernels (docs/gpu.md) and the checkout on PYTHONPATH.
set -euo pipefail
out=${1:?usage: survey.sh OUTDIR [survey arguments]}
shift
res="$out/survey"
mkdir -p "$res"
for set in ${SURVEY_SETS:-design held-out}; do
    python3 -m lm_eval_ssmsteer study survey --out "$res" --set "$set" --device cuda --test-docs 40 \
        --lengths 512 2048 --finds causal causal:screen=100 probe "$@" 2>&1 | grep -v "Loading weights" | tail -170
    tar -czf "$out/survey.tgz" -C "$out" survey
done
