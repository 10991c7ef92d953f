# Shared by the experiment scripts: one loop over folds, training then validation.
#
# Environment (all optional):
#   FOLDS="0 1 2 3 4"   folds to run            STAGE=all|train|validate
#   LOG_DIR=./exps      where runs go           PY=.venv/bin/python
#   NAMED="supervoxels" extra named configs     EXTRA="pretrained_weights=coco"
#   VAL_EXTRA="protocol=realistic"              extra validation overrides
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
FOLDS=${FOLDS:-"0 1 2 3 4"}
STAGE=${STAGE:-all}
LOG_DIR=${LOG_DIR:-./exps}
NAMED=${NAMED:-}
EXTRA=${EXTRA:-}
VAL_EXTRA=${VAL_EXTRA:-}

run() {  # run <script> <named configs and overrides...>
    echo "+ $PY $1 with ${*:2}"
    # shellcheck disable=SC2086
    "$PY" "$1" with "${@:2}" log_dir="$LOG_DIR" $NAMED $EXTRA
}

# experiment <dataset config> <setting 1|2> "<label groups>"
#   Setting 1: one model per fold, validated on every group.
#   Setting 2: one model per fold and group (its test classes' slices excluded from training).
experiment() {
    local dataset=$1 setting=$2 groups=$3 fold group
    for fold in $FOLDS; do
        if [ "$setting" = 1 ] && [ "$STAGE" != validate ]; then
            run training.py "$dataset" setting1 eval_fold="$fold"
        fi
        for group in $groups; do
            if [ "$setting" = 2 ] && [ "$STAGE" != validate ]; then
                run training.py "$dataset" setting2 group"$group" eval_fold="$fold"
            fi
            if [ "$STAGE" != train ]; then
                # shellcheck disable=SC2086
                run validation.py "$dataset" setting"$setting" group"$group" eval_fold="$fold" \
                    reload_model_path=latest $VAL_EXTRA
            fi
        done
    done
}
