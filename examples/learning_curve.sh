#!/usr/bin/env bash
# A measured learning curve on real scans: train from random initialisation (or PRETRAINED), keep
# a snapshot every EVAL_EVERY steps, validate each snapshot and the untrained model on every label
# group, and print one Dice table (docs/results.md, "measured here").
#
#   bash examples/learning_curve.sh                          # CHAOS-T2 fold 0, S1, 1000 steps, fp32
#   PRECISION=bf16 bash examples/learning_curve.sh
#   SEED=2024 bash examples/learning_curve.sh                # the run-to-run spread
#   DATASET=cmr LABEL_GROUPS=0 STEPS=2000 EVAL_EVERY=1000 bash examples/learning_curve.sh
#
# Environment: DATASET (config name: chaost2 sabs cmr), FOLD, SETTING (1|2), LABEL_GROUPS (label groups
# validated; Setting 2 trains one model per group), STEPS, EVAL_EVERY, PRECISION (fp32|bf16),
# SEED, ENCODER, PRETRAINED (a weights file), LOG_DIR, EXTRA (more sacred overrides), PY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
DATASET=${DATASET:-chaost2}
FOLD=${FOLD:-0}
SETTING=${SETTING:-1}
LABEL_GROUPS=${LABEL_GROUPS:-"0 1"}
STEPS=${STEPS:-1000}
EVAL_EVERY=${EVAL_EVERY:-500}
PRECISION=${PRECISION:-fp32}
SEED=${SEED:-1234}
ENCODER=${ENCODER:-deeplabv3_resnet101}
LOG_DIR=${LOG_DIR:-./exps/learning_curve}
EXTRA=${EXTRA:-}
case $PRECISION in
    fp32) BF16=False ;;
    bf16) BF16=True ;;
    *) echo "learning_curve.sh: PRECISION expects fp32 or bf16, got '$PRECISION'" >&2; exit 2 ;;
esac
PREFIX=lc_${PRECISION}_seed${SEED}
WEIGHTS=${PRETRAINED:+pretrained_weights=$PRETRAINED}

run() {  # run <script> <overrides...>
    echo "+ $PY $1 with $DATASET ${*:2}"
    # shellcheck disable=SC2086
    "$PY" "$1" with "$DATASET" "${@:2}" eval_fold="$FOLD" seed="$SEED" encoder="$ENCODER" \
        exp_prefix="$PREFIX" log_dir="$LOG_DIR" $EXTRA
}

train_and_validate() {  # train_and_validate <setting/group configs...> -- <validated groups>
    local configs=() groups=() group step snap
    while [ "$1" != -- ]; do configs+=("$1"); shift; done
    shift; groups=("$@")
    run training.py "${configs[@]}" n_steps="$STEPS" save_snapshot_every="$EVAL_EVERY" \
        bf16="$BF16" $WEIGHTS
    run_dir=$(ls -td "$LOG_DIR"/train/"$PREFIX"_*/[0-9]*/ | head -n 1)  # the run just made
    run_dir=${run_dir%/}
    for group in "${groups[@]}"; do
        run validation.py "${configs[@]}" group"$group" bf16="$BF16" $WEIGHTS
        for step in $(seq "$EVAL_EVERY" "$EVAL_EVERY" "$STEPS"); do
            snap=$run_dir/snapshots/$step.pth
            run validation.py "${configs[@]}" group"$group" bf16="$BF16" reload_model_path="$snap"
        done
    done
}

if [ "$SETTING" = 1 ]; then
    # shellcheck disable=SC2086
    train_and_validate setting1 -- $LABEL_GROUPS
else
    for group in $LABEL_GROUPS; do
        train_and_validate setting2 group"$group" -- "$group"
    done
fi
"$PY" -m util.aggregate "$LOG_DIR"/validate --out "$LOG_DIR"/results_"$PREFIX"
