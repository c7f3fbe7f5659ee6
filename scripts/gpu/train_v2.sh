#!/usr/bin/env bash
# Reference models v2 on the GPU machine, in resumable stages (lm_eval_ssmsteer/training, issue 18).
# All runs of a stage share the one GPU; each stage ends after BUDGET seconds of training.
#
#   bash scripts/gpu/train_v2.sh ablate   RUNS OUT BUDGET   # new runs: the first recipe ablations below
#   bash scripts/gpu/train_v2.sh ablate2  RUNS OUT BUDGET   # new runs: the second ones
#   bash scripts/gpu/train_v2.sh stage3   RUNS OUT BUDGET INIT  # from INIT/m2-tok and INIT/m1-copy (weights)
#   bash scripts/gpu/train_v2.sh stage4   RUNS OUT BUDGET INIT  # on from INIT/m2-cont, m1-fromcopy(-short)
#   bash scripts/gpu/train_v2.sh stage5   RUNS OUT BUDGET INIT  # on from INIT/m1-short2 and INIT/m2-cont2,
#                                                               # and a new Bamba hybrid
#   bash scripts/gpu/train_v2.sh stage6   RUNS OUT BUDGET   # Mamba-2 and the Bamba hybrid on copying alone
#                                                         # (the start that taught Mamba-1); ref-mamba1 on
#                                                         # with phone book and niah multiquery weighted
#   bash scripts/gpu/train_v2.sh stage7   RUNS OUT BUDGET INIT M2 H  # from INIT/M2 and INIT/H (model folders
#                                                         # or RUNS of a warm machine): the short copying and
#                                                         # retrieval tasks, as m1-fromcopy-short did
#   bash scripts/gpu/train_v2.sh stage8   RUNS OUT BUDGET INIT  # from INIT/ref-mamba2 and INIT/ref-bamba (model
#                                                         # folders, e.g. bf16 copies: the shipped models do
#                                                         # not fit the carry beside the wheel): the whole
#                                                         # mix, as m1-all did from m1-short2
#   bash scripts/gpu/train_v2.sh stage8d  RUNS OUT BUDGET INIT  # a cold machine lost stage8's states: decay
#                                                         # anew from INIT/m2-all and INIT/h-all (as m1-all-d)
#   bash scripts/gpu/train_v2.sh stage9   RUNS OUT BUDGET INIT  # from INIT/ref-mamba1, ref-mamba2, ref-bamba (bf16
#                                                         # copies): the whole mix with niah multiquery
#                                                         # weighted x8 (Mamba-2 also x20), lr 5e-4 decayed
#                                                         # over 1,800 steps: the one task none meets
#   bash scripts/gpu/train_v2.sh stage10  RUNS OUT BUDGET INIT  # stage9 with the deciding characters weighted
#                                                         # (--word-start-weight 8: each value's first digit
#                                                         # is what the models get wrong), each model with
#                                                         # and without two to four queried keys always
#   bash scripts/gpu/train_v2.sh stage11  RUNS OUT BUDGET INIT  # stage9's recipe on the two models with
#                                                         # their SSM state doubled (training/widen.py)
#   bash scripts/gpu/train_v2.sh stage12  RUNS OUT BUDGET INIT  # from INIT/ref-mamba1, ref-mamba2 (bf16 copies):
#                                                         # two-key documents without distractor needles
#                                                         # (the slot a model loses it fills with an unasked
#                                                         # needle), and MQAR weighted up instead
#   bash scripts/gpu/train_v2.sh stage13  RUNS OUT BUDGET INIT  # from INIT/ref-mamba1, ref-mamba2 (model folders):
#                                                         # the two models deepened (training/widen.py
#                                                         # --deepen: a copy of layers after themselves, out_proj
#                                                         # zero, same function at step 0), stage9's recipe;
#                                                         # packs the models in bf16 (the 16 MiB return limit)
#   bash scripts/gpu/train_v2.sh stage14  RUNS OUT BUDGET INIT  # from INIT/ref-mamba1, ref-mamba2: stage9's recipe
#                                                         # with the training-only task aux_deferred_recall
#                                                         # (training/auxiliary.py: several keys asked at once,
#                                                         # answered in order, in short documents) x3 and x8
#   bash scripts/gpu/train_v2.sh stage15  RUNS OUT BUDGET   # new models of the reference shapes on
#                                                         # aux_deferred_recall alone: can they learn both
#                                                         # slots from scratch, or only the one the trained
#                                                         # models keep?
#   bash scripts/gpu/train_v2.sh stage16  RUNS OUT BUDGET   # stage15 with wider models, and with more tokens
#   bash scripts/gpu/train_v2.sh stage17  RUNS OUT BUDGET INIT  # stage14 with longer short-task documents
#                                                         # (8-40 pairs); stage15 at lower peak rates
#   bash scripts/gpu/train_v2.sh continue RUNS OUT BUDGET [RUN...]  # the named runs (default: the best
#                                                                   # Mamba-1 and Mamba-2 run) go on
#   bash scripts/gpu/train_v2.sh decay    RUNS OUT BUDGET [RUN...]  # ... and decay their learning rate
#
# "Best" is the highest mean monitor score (calibration split, exact + per-token over 2) of the runs of an
# architecture (scripts/pick_runs.py). Logs, states and the chosen models are packed under OUT.
# Needs mamba-ssm (docs/gpu.md) and the checkout on PYTHONPATH.
set -uo pipefail
mode=${1:?usage: train_v2.sh ablate|...|stage15|stage16|stage17|continue|decay RUNS OUT BUDGET}
runs=${2:?RUNS}
out=${3:?OUT}
budget=${4:?BUDGET}
mkdir -p "$runs" "$out"
common=(--device cuda --workers 2 --eval-every 250 --eval-docs 32)
new() {  # name arch [args]
    local name=$1 arch=$2
    shift 2
    python3 -m lm_eval_ssmsteer.train --run "$runs/$name" --arch "$arch" --steps 1000000 --decay-start 1000000 \
        --time-budget "$budget" "${common[@]}" "$@" >"$runs/$name.log" 2>&1
}
# the seven short copying and retrieval tasks, and token-balanced steps from a warm start
short=(ssm_copy ssm_selective_copy ssm_phonebook ssm_mqar ssm_zoology_mqar ssm_kv_retrieval ssm_induction)
tok=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100)
copyw=(--weights copy=3 selective_copy=3 phonebook=4 kv_retrieval=4 mqar=3 induction=3)
case $mode in
ablate)
    new m1-mix mamba &
    new m1-copyw mamba "${copyw[@]}" &
    new m1-curr mamba --curriculum-steps 1500 &
    new m1-short mamba --tasks ssm_copy ssm_selective_copy ssm_phonebook ssm_mqar ssm_zoology_mqar \
        ssm_kv_retrieval ssm_induction ssm_mamba_selective_copy &
    new m2-mix mamba2 &
    new m2-copyw mamba2 "${copyw[@]}" --lr 3e-3 &
    wait
    ;;
ablate2)
    new m1-copy mamba --tasks ssm_copy --tokens-per-step 16384 --micro-batches 1 &
    new m1-tok mamba --balance tokens --tokens-per-step 32768 --micro-batches 2 &
    new m1-short-tok mamba --tasks "${short[@]}" --balance tokens --tokens-per-step 32768 --micro-batches 2 &
    new m2-tok mamba2 --balance tokens --tokens-per-step 32768 --micro-batches 2 &
    wait
    ;;
stage3)
    init=${5:?INIT folder with m2-tok/ and m1-copy/}
    new m2-cont mamba2 --init "$init/m2-tok" "${tok[@]}" --steps 1300 --decay-start 650 &
    new m1-fromcopy mamba --init "$init/m1-copy" "${tok[@]}" --steps 2200 --decay-start 1100 &
    new m1-fromcopy-short mamba --init "$init/m1-copy" --tasks "${short[@]}" "${tok[@]}" --steps 2200 \
        --decay-start 1100 &
    wait
    ;;
stage4)
    init=${5:?INIT folder with m2-cont/ and m1-fromcopy/}
    retrieval=(--weights phonebook=3 mqar=3 kv_retrieval=3 induction=2 passkey=2 niah_single=2)
    new m2-cont2 mamba2 --init "$init/m2-cont" "${tok[@]}" &
    new m1-fromcopy2 mamba --init "$init/m1-fromcopy" "${tok[@]}" "${retrieval[@]}" &
    new m1-short2 mamba --init "$init/m1-fromcopy-short" --tasks "${short[@]}" "${tok[@]}" \
        --weights phonebook=3 mqar=3 kv_retrieval=3 induction=2 &
    wait
    ;;
stage5)
    # Mamba-1: the short-task model (copy, retrieval, induction learned) takes on the whole mix, the
    # long-context tasks weighted up or not; Mamba-2: the token-balanced model goes through the short
    # tasks with retrieval weighted, the route that taught Mamba-1 phone book, MQAR and kv retrieval
    init=${5:?INIT folder with m1-short2/ and m2-cont2/}
    long=(--weights passkey=2 niah_single=2 niah_multikey=2 niah_multivalue=2 niah_multiquery=2
        variable_tracking=2 ruler_niah_single=2 ruler_niah_multikey=2)
    new m1-all mamba --init "$init/m1-short2" "${tok[@]}" &
    new m1-all-long mamba --init "$init/m1-short2" "${tok[@]}" "${long[@]}" &
    new m2-short mamba2 --init "$init/m2-cont2" --tasks "${short[@]}" "${tok[@]}" \
        --weights phonebook=3 mqar=3 kv_retrieval=3 induction=2 &
    new h-bamba bamba "${tok[@]}" &  # the reference hybrid (issue 19), from scratch on the whole mix
    wait
    ;;
stage6)
    copy=(--tasks ssm_copy --tokens-per-step 16384 --micro-batches 1)
    new m2-copy mamba2 "${copy[@]}" &
    new m2-copy-lr3 mamba2 "${copy[@]}" --lr 3e-3 &
    new h-copy bamba "${copy[@]}" &
    # ref-mamba1 (decayed to 4e-5) warms again to 1e-3 and decays over 3,000 steps, the two tasks it
    # misses (phone book 0.80, niah multiquery 0.65-0.72 on TEST) weighted x3
    new m1-pb mamba --init lm_eval_ssmsteer/models/ref-mamba1 --balance tokens --tokens-per-step 32768 \
        --micro-batches 2 --warmup 100 --lr 1e-3 --steps 3000 --decay-start 100 \
        --weights phonebook=3 niah_multiquery=3 &
    wait
    ;;
stage7)
    init=${5:?INIT folder with the Mamba-2 and hybrid copy runs}
    m2=${6:?M2 run name} h=${7:?hybrid run name}
    folder() { [ -d "$init/$1/model" ] && echo "$init/$1/model" || echo "$init/$1"; }
    new m2-cs mamba2 --init "$(folder "$m2")" --tasks "${short[@]}" "${tok[@]}" &
    new h-cs bamba --init "$(folder "$h")" --tasks "${short[@]}" "${tok[@]}" &
    [ -f "$runs/m1-pb/checkpoint/state.json" ] &&
        python3 -m lm_eval_ssmsteer.train --run "$runs/m1-pb" --resume --time-budget "$budget" \
            --device cuda --workers 2 >>"$runs/m1-pb.log" 2>&1 &
    wait
    ;;
stage8)
    init=${5:?INIT folder with ref-mamba2/ and ref-bamba/}
    new m2-all mamba2 --init "$init/ref-mamba2" "${tok[@]}" &
    new h-all bamba --init "$init/ref-bamba" "${tok[@]}" &
    wait
    ;;
stage8d)
    init=${5:?INIT folder with m2-all/ and h-all/}
    new m2-all-d mamba2 --init "$init/m2-all" "${tok[@]}" --steps 2700 --decay-start 100 &
    new h-all-d bamba --init "$init/h-all" "${tok[@]}" --steps 2100 --decay-start 100 &
    wait
    ;;
stage9)
    init=${5:?INIT folder with ref-mamba1/, ref-mamba2/ and ref-bamba/}
    # every model answers the second key of a two-key query and names the wrong value for the first
    # (string_match_part 1.00, all 0.57-0.68): a one-token decision the per-token loss barely weighs
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 5e-4 --steps 1800
        --decay-start 100)
    new m1-mq mamba --init "$init/ref-mamba1" "${mq[@]}" --weights niah_multiquery=8 phonebook=3 &
    new m2-mq mamba2 --init "$init/ref-mamba2" "${mq[@]}" --weights niah_multiquery=8 &
    new m2-mq20 mamba2 --init "$init/ref-mamba2" "${mq[@]}" --weights niah_multiquery=20 &
    new h-mq bamba --init "$init/ref-bamba" "${mq[@]}" --weights niah_multiquery=8 &
    wait
    ;;
stage10)
    init=${5:?INIT folder with ref-mamba1/, ref-mamba2/ and ref-bamba/}
    # stage9 moved nothing: the first value's first digit is one target of ~19 in a two-key answer; weigh
    # an answer word's first character (mixing.word_start_weights) instead of the task, and (q24) ask two
    # to four keys in every multiquery document instead of one or two
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 5e-4 --steps 1800
        --decay-start 100 --word-start-weight 8 --weights niah_multiquery=4)
    # four queried keys of four needles need ~551 tokens at some draws; the default range starts at 500
    q24=(--ranges niah_multiquery.num_queries=2:4 niah_multiquery.length=640:768)
    new m1-ws8 mamba --init "$init/ref-mamba1" "${mq[@]}" phonebook=3 &
    new m1-ws8q24 mamba --init "$init/ref-mamba1" "${mq[@]}" phonebook=3 "${q24[@]}" &
    new m2-ws8 mamba2 --init "$init/ref-mamba2" "${mq[@]}" &
    new m2-ws8q24 mamba2 --init "$init/ref-mamba2" "${mq[@]}" "${q24[@]}" &
    wait
    ;;
stage11)
    init=${5:?INIT folder with ref-mamba1-s32/ and ref-mamba2-s128/ (python -m lm_eval_ssmsteer.training.widen)}
    # stages 9 and 10 moved nothing: each model holds one of the two queried keys and answers the other slot
    # with a needle that was not asked; the same models with twice the SSM state (new dimensions written,
    # not read yet: the same function at step 0), stage9's recipe at two learning rates
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --steps 1800
        --decay-start 100 --weights niah_multiquery=4)
    new m1-s32 mamba --init "$init/ref-mamba1-s32" "${mq[@]}" phonebook=3 --lr 5e-4 &
    new m1-s32-lr1e3 mamba --init "$init/ref-mamba1-s32" "${mq[@]}" phonebook=3 --lr 1e-3 &
    new m2-s128 mamba2 --init "$init/ref-mamba2-s128" "${mq[@]}" --lr 5e-4 &
    new m2-s128-lr1e3 mamba2 --init "$init/ref-mamba2-s128" "${mq[@]}" --lr 1e-3 &
    wait
    ;;
stage12)
    init=${5:?INIT folder with ref-mamba1/ and ref-mamba2/}
    # stages 9-11 moved nothing; the lost slot is filled with a needle that was not asked (scripts/
    # multiquery_slots.py). nd: every multiquery document holds exactly its two queried needles, so the
    # second slot has no distractor to take and its value is always in the state; mqar: the short
    # multi-query recall tasks weighted up (Zoology's recipe teaches query-key binding there)
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 5e-4 --steps 1800
        --decay-start 100)
    nd=(--ranges niah_multiquery.num_needles=2:2 niah_multiquery.num_queries=2:2 --weights niah_multiquery=4)
    recall=(--weights niah_multiquery=4 mqar=6 zoology_mqar=6)
    new m1-nd mamba --init "$init/ref-mamba1" "${mq[@]}" "${nd[@]}" phonebook=3 &
    new m2-nd mamba2 --init "$init/ref-mamba2" "${mq[@]}" "${nd[@]}" &
    new m1-mqar mamba --init "$init/ref-mamba1" "${mq[@]}" "${recall[@]}" phonebook=3 &
    new m2-mqar mamba2 --init "$init/ref-mamba2" "${mq[@]}" "${recall[@]}" &
    wait
    ;;
stage13)
    init=${5:?INIT folder with ref-mamba1/ and ref-mamba2/}
    # stages 9-12 moved nothing, twice the state included (stage11); the depth is the lever not tried. Each
    # deepened model computes what its source does at step 0 (tests/test_widen.py); 1,000 steps (33M tokens)
    # with the cosine over them, since a deeper model runs slower and the budget must see the decay end
    grow() { [ -d "$runs/init-$1" ] || python3 -m lm_eval_ssmsteer.training.widen "$init/$2" "$runs/init-$1" --deepen "$3"; }
    grow m1-d12 ref-mamba1 0,1,2,3,4,5 && grow m1-d9 ref-mamba1 1,3,5 && grow m2-d10 ref-mamba2 0,1,2,3,4 &&
        grow m2-d8 ref-mamba2 1,2,3 || exit 1
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 1e-3 --steps 1000
        --decay-start 100 --weights niah_multiquery=4)
    new m1-d12 mamba --init "$runs/init-m1-d12" "${mq[@]}" phonebook=3 &
    new m1-d9 mamba --init "$runs/init-m1-d9" "${mq[@]}" phonebook=3 &
    new m2-d10 mamba2 --init "$runs/init-m2-d10" "${mq[@]}" &
    new m2-d8 mamba2 --init "$runs/init-m2-d8" "${mq[@]}" &
    wait
    ;;
stage14)
    init=${5:?INIT folder with ref-mamba1/ and ref-mamba2/}
    # stages 9-13 moved nothing; the lost slot is the second of two keys asked together. aux_deferred_recall
    # asks exactly that in 60-250 characters (a niah multiquery document takes 500-768), so a step holds
    # several times more such answers
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 5e-4 --steps 1800
        --decay-start 100 --weights niah_multiquery=4)
    new m1-aux3 mamba --init "$init/ref-mamba1" "${mq[@]}" phonebook=3 aux_deferred_recall=3 &
    new m1-aux8 mamba --init "$init/ref-mamba1" "${mq[@]}" phonebook=3 aux_deferred_recall=8 &
    new m2-aux3 mamba2 --init "$init/ref-mamba2" "${mq[@]}" aux_deferred_recall=3 &
    new m2-aux8 mamba2 --init "$init/ref-mamba2" "${mq[@]}" aux_deferred_recall=8 &
    wait
    ;;
stage15)
    # stage14's models learned the short task with the same slot asymmetry as their niah multiquery; whether
    # that is the architecture's at this size or inherited from the trained weights, new models say
    aux=(--tasks aux_deferred_recall --balance tokens --tokens-per-step 16384 --micro-batches 1 --warmup 200
        --eval-docs 0)
    new m1-auxnew mamba "${aux[@]}" --lr 2e-3 --steps 3000 --decay-start 1500 &
    new m1-auxnew-lr1e3 mamba "${aux[@]}" --lr 1e-3 --steps 3000 --decay-start 1500 &
    new m2-auxnew mamba2 "${aux[@]}" --lr 2e-3 --steps 1800 --decay-start 900 &
    new m2-auxnew-lr3e3 mamba2 "${aux[@]}" --lr 3e-3 --steps 1800 --decay-start 900 &
    wait
    ;;
stage16)
    # stage15's new models learned an asked key's value but not the order in 29-49M tokens; whether width or
    # more tokens is the lever, before a wider model goes through the whole curriculum: Mamba-1 at twice the
    # width and Mamba-2 at 1.5 times (384: its heads must stay a multiple of 8) at stage15's token counts, and
    # the reference shapes with 5/3 the tokens
    aux=(--tasks aux_deferred_recall --balance tokens --tokens-per-step 16384 --micro-batches 1 --warmup 200
        --eval-docs 0)
    new m1-auxwide mamba "${aux[@]}" --hidden 448 --lr 1e-3 --steps 3000 --decay-start 1500 &
    new m2-auxwide mamba2 "${aux[@]}" --hidden 384 --lr 2e-3 --steps 1800 --decay-start 900 &
    new m1-auxlong mamba "${aux[@]}" --lr 1e-3 --steps 5000 --decay-start 2500 &
    new m2-auxlong mamba2 "${aux[@]}" --lr 3e-3 --steps 3000 --decay-start 1500 &
    wait
    ;;
stage17)
    init=${5:?INIT folder with ref-mamba1/ and ref-mamba2/}
    # stage14's fine-tunes learned the short task (60-250 characters) and nothing of it reached niah
    # multiquery (500-768): the same with 8-40 pairs a document (up to ~480 characters), a bridge in length;
    # beside them, stage15/16's loss fell only once the rate decayed: new models at a lower peak rate
    mq=(--balance tokens --tokens-per-step 32768 --micro-batches 2 --warmup 100 --lr 5e-4 --decay-start 100
        --ranges aux_deferred_recall.num_pairs=8:40 --weights niah_multiquery=4 aux_deferred_recall=8)
    aux=(--tasks aux_deferred_recall --balance tokens --tokens-per-step 16384 --micro-batches 1 --warmup 200
        --eval-docs 0)
    new m1-bridge mamba --init "$init/ref-mamba1" "${mq[@]}" phonebook=3 --steps 1800 &
    new m2-bridge mamba2 --init "$init/ref-mamba2" "${mq[@]}" --steps 1400 &
    new m1-auxlr5e4 mamba "${aux[@]}" --lr 5e-4 --steps 3000 --decay-start 1500 &
    new m2-auxlr1e3 mamba2 "${aux[@]}" --lr 1e-3 --steps 1800 --decay-start 900 &
    wait
    ;;
continue | decay)
    extra=()
    [ "$mode" = decay ] && extra=(--decay-in-budget)
    names=("${@:5}")
    [ ${#names[@]} -eq 0 ] && read -ra names <<<"$(python3 scripts/pick_runs.py "$runs")"
    for name in "${names[@]}"; do
        python3 -m lm_eval_ssmsteer.train --run "$runs/$name" --resume --time-budget "$budget" \
            --device cuda --workers 2 "${extra[@]}" >>"$runs/$name.log" 2>&1 &
    done
    wait
    ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
python3 scripts/pick_runs.py "$runs" --table | tee "$out/pick-$mode.txt"
tar -czf "$out/logs-$mode.tgz" -C "$runs" --exclude checkpoint --exclude model.safetensors --exclude "*.pt" .
pack=$(python3 scripts/pick_runs.py "$runs")
[ "$mode" = stage3 ] && pack="m2-cont m1-fromcopy m1-fromcopy-short"
[ "$mode" = stage4 ] && pack="m2-cont2 m1-fromcopy2 m1-short2"
[ "$mode" = stage5 ] && pack="m1-all m1-all-long m2-short h-bamba"
[ "$mode" = stage6 ] && pack="m2-copy m2-copy-lr3 h-copy m1-pb"
[ "$mode" = stage7 ] && pack="m2-cs h-cs m1-pb"
[ "$mode" = stage8 ] && pack="m2-all h-all"
[ "$mode" = stage8d ] && pack="m2-all-d h-all-d"
[ "$mode" = stage9 ] && pack="m1-mq m2-mq m2-mq20 h-mq"
[ "$mode" = stage10 ] && pack="m1-ws8 m1-ws8q24 m2-ws8 m2-ws8q24"
[ "$mode" = stage11 ] && pack="m1-s32 m1-s32-lr1e3 m2-s128 m2-s128-lr1e3"
[ "$mode" = stage12 ] && pack="m1-nd m2-nd m1-mqar m2-mqar"
[ "$mode" = stage13 ] && pack="m1-d12 m1-d9 m2-d10 m2-d8"
[ "$mode" = stage14 ] && pack="m1-aux3 m1-aux8 m2-aux3 m2-aux8"
[ "$mode" = stage15 ] && pack="m1-auxnew m1-auxnew-lr1e3 m2-auxnew m2-auxnew-lr3e3"
[ "$mode" = stage16 ] && pack="m1-auxwide m2-auxwide m1-auxlong m2-auxlong"
[ "$mode" = stage17 ] && pack="m1-bridge m2-bridge m1-auxlr5e4 m2-auxlr1e3"
[ "$mode" = continue ] || [ "$mode" = decay ] && [ $# -gt 4 ] && pack="${*:5}"
for name in $pack; do
    # stage13's 4.1-4.4M and stage16's 4.9-7.9M parameters: fp32 weights pass the 16 MiB a returned file may take
    if [ "$mode" = stage13 ] || [ "$mode" = stage16 ]; then
        python3 -c "import sys, torch; from safetensors.torch import load_file, save_file; f = sys.argv[1]; \
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(f).items()}, f, \
metadata={'format': 'pt'})" "$runs/$name/model/model.safetensors"
    fi
    tar -czf "$out/model-$name.tgz" -C "$runs/$name" model
done
