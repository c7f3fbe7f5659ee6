#!/usr/bin/env bash
# Add find options to surveys already run (docs/finder.md, "Plant survey"): for every survey folder given
# (one holding settings.json and plants/), a copy under WORK is resumed with that folder's own settings and
# --only-damaging --finds FIND, so only FIND runs (FIND may name several, space-separated, as one argument),
# on the plants recorded as damaging, named with --plants (the damage and the references are measured again,
# on the same TEST documents); each copy is packed as OUT/<name>.tgz, with <name> the folder's path below
# docs/results/finder/ with / as -.
#
#   SURVEY_SET=fresh bash scripts/gpu/survey_option.sh FIND WORK OUT FOLDER [FOLDER ...]
#
# Needs the mamba-ssm kernels (docs/gpu.md), the models named in the settings and the checkout on PYTHONPATH.
set -uo pipefail
find_option=${1:?usage: survey_option.sh FIND WORK OUT FOLDER...}
work=${2:?WORK}
out=${3:?OUT}
shift 3
read -ra finds <<<"$find_option"
mkdir -p "$work" "$out"
for folder in "$@"; do
    name=$(echo "${folder#docs/results/finder/}" | tr / -)
    copy="$work/$name"
    rm -rf "$copy" && cp -r "$folder" "$copy"
    read -ra args <<<"$(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("--model", s["model"], "--tasks", *s["tasks"], "--lengths", *map(str, s["lengths"]),
      "--test-docs", s["test_docs"], "--docs-per-task", s["docs_per_task"])' "$copy/settings.json")"
    # the plants recorded as damaging, named: a plant without a file would be measured from scratch (a
    # folder of only the damaging plants' files, as survey-blocks-gpu/ keeps, would otherwise cost a survey)
    read -ra plants <<<"$(python3 -c '
import json, sys
from pathlib import Path
from lm_eval_ssmsteer.studies.survey import plants_folder
records = plants_folder(Path(sys.argv[1])).glob("*.json")
print(*sorted(p.stem for p in records if json.loads(p.read_text())["damaging"]))' "$copy")"
    if [ ${#plants[@]} -eq 0 ]; then
        echo "== $name: no damaging plant recorded in $folder, skipped" >&2
        continue
    fi
    echo "== $name: ${args[*]} --plants ${plants[*]}"
    python3 -m lm_eval_ssmsteer study survey --out "$copy" --set "${SURVEY_SET:?SURVEY_SET}" --device cuda \
        "${args[@]}" --plants "${plants[@]}" --only-damaging --finds "${finds[@]}" 2>&1 |
        grep -v "Loading weights" | tail -40
    tar -czf "$out/$name.tgz" -C "$work" "$name"
done
