#!/usr/bin/env bash
# Add one find option to the damaging plants of all six GPU survey sets (fresh, unseen, sealed, withheld,
# kept, reserve: the 98 plants of docs/results/finder/survey-reserve-gpu/pooled-all-sets.md), one process a
# survey folder (18 folders), all at once on one GPU, through scripts/gpu/survey_option.sh. Each folder's copy
# is packed as OUT/tgz/<name>.tgz and its output written to OUT/logs/<name>.log.
#
#   bash scripts/gpu/survey_all_sets.sh FIND WORK OUT
#
# Needs the mamba-ssm kernels (docs/gpu.md) and the checkout on PYTHONPATH, as survey_option.sh does.
set -uo pipefail
find_option=${1:?usage: survey_all_sets.sh FIND WORK OUT}
work=${2:?WORK}
out=${3:?OUT}
results=docs/results/finder
declare -A sets=()
for m in fresh-m1-needles-survey fresh-m2-copying-survey fresh-m2-needles-survey; do
    sets[$results/survey-paired-gpu/survey-$m]=fresh
done
for m in m1-needles m2-copying m2-needles; do
    sets[$results/survey-paired-gpu/survey-unseen-$m]=unseen
    for s in sealed withheld kept reserve; do sets[$results/survey-$s-gpu/$m]=$s; done
done
mkdir -p "$out/logs" "$out/tgz"
started=$SECONDS
for folder in "${!sets[@]}"; do
    [ -d "$folder" ] || { echo "no survey folder $folder" >&2; exit 1; }
    name=$(echo "${folder#"$results"/}" | tr / -)
    SURVEY_SET=${sets[$folder]} bash scripts/gpu/survey_option.sh "$find_option" "$work/$name" "$out/tgz" \
        "$folder" >"$out/logs/$name.log" 2>&1 &
done
wait
echo "$find_option on ${#sets[@]} survey folders in $((SECONDS - started)) s"
