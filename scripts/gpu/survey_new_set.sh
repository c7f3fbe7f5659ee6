#!/usr/bin/env bash
# Survey a whole plant set on the three model x task folders of the GPU surveys (docs/finder.md, "Plant
# survey"): ref-mamba1 and ref-mamba2 on the needle tasks (40 TEST documents a task and length), ref-mamba2 on
# copying (80), lengths 512 and 2048, 4 calibration documents a task and length. FOLDERS="m2-needles
# m2-copying" names fewer (the gated set is run on those two). Every plant's damage is measured; the finds run
# on the damaging ones. Each folder's plants (the set's plants on its model, as `study survey --list` prints
# them: 84 for a set drawn from the whole grid, 60 for the gated set on ref-mamba2) are split into PARTS
# processes, all at once on one GPU; part P of folder F is surveyed into OUT/parts/F-P/ (its plant files
# written as they finish, so a part cut short keeps what it did), its output in OUT/logs/F-P.log. Merge the
# parts' plants/ into one folder per F afterwards (the settings are the same).
#
#   [FOLDERS="..."] bash scripts/gpu/survey_new_set.sh SET "FIND [FIND ...]" OUT [PARTS]
#
# To finish a set cut short: RESUME_FROM=FOLDER (one holding m1-needles/, m2-needles/, m2-copying/, each with
# settings.json and plants/, as docs/results/finder/survey-SET-gpu/ does) seeds each part with the plant files
# of its ids found there; the survey skips those and runs the rest (and any FIND a file lacks).
#
# Needs the mamba-ssm kernels (docs/gpu.md) and the checkout on PYTHONPATH, as survey_option.sh does.
set -uo pipefail
set_name=${1:?usage: survey_new_set.sh SET FINDS OUT [PARTS]}
read -ra finds <<<"${2:?FINDS}"
out=${3:?OUT}
parts=${4:-4}
read -ra folders <<<"${FOLDERS:-m1-needles m2-needles m2-copying}"
# the later sets drawn from the whole grid; another set stops here, named
python3 -c "
import sys
from lm_eval_ssmsteer.studies.survey import LATER_SETS
names = [name for name, _, _, only_left, _ in LATER_SETS if not only_left]
if sys.argv[1] not in names:
    sys.exit(f'survey_new_set.sh: SET {sys.argv[1]!r}; allowed: {\", \".join(names)}')" "$set_name" || exit 2
needles=(--tasks ssm_passkey ssm_variable_tracking ssm_ruler_niah_single --test-docs 40)
copying=(--tasks ssm_copy ssm_kv_retrieval ssm_induction --test-docs 80)
mkdir -p "$out/logs"
started=$SECONDS
for folder in "${folders[@]}"; do
    case $folder in
        m1-needles) model=ref-mamba1 tasks=("${needles[@]}") ;;
        m2-needles) model=ref-mamba2 tasks=("${needles[@]}") ;;
        m2-copying) model=ref-mamba2 tasks=("${copying[@]}") ;;
        *)
            echo "survey_new_set.sh: FOLDERS names $folder; allowed: m1-needles m2-needles m2-copying" >&2
            exit 2
            ;;
    esac
    # the set's plant ids on this model, in list order
    read -ra all_ids <<<"$(python3 -m lm_eval_ssmsteer study survey --set "$set_name" --model "$model" \
        --list | awk '{print $1}' | tr '\n' ' ')"
    count=${#all_ids[@]}
    for ((part = 0; part < parts; part++)); do
        ids=("${all_ids[@]:part * count / parts:(part + 1) * count / parts - part * count / parts}")
        if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM/$folder/settings.json" ]; then
            mkdir -p "$out/parts/$folder-$part/plants"
            cp "$RESUME_FROM/$folder/settings.json" "$out/parts/$folder-$part/"
            for id in "${ids[@]}"; do
                [ -f "$RESUME_FROM/$folder/plants/$id.json" ] &&
                    cp "$RESUME_FROM/$folder/plants/$id.json" "$out/parts/$folder-$part/plants/"
            done
        fi
        python3 -m lm_eval_ssmsteer study survey --out "$out/parts/$folder-$part" --set "$set_name" \
            --device cuda --model "$model" "${tasks[@]}" --lengths 512 2048 --docs-per-task 4 \
            --plants "${ids[@]}" --only-damaging --finds "${finds[@]}" 2>&1 |
            grep --line-buffered -v "Loading weights" >"$out/logs/$folder-$part.log" &
    done
done
wait
echo "set $set_name, finds ${finds[*]}: ${#folders[@]} folders in $parts parts each, $((SECONDS - started)) s"
