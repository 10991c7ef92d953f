# Shared by the experiment scripts: one loop over folds, training then validation.
#
# Environment (all optional):
#   FOLDS="0 1 2 3 4"   folds to run            STAGE=all|train|validate
#   LOG_DIR=./exps      where runs go           PY=.venv/bin/python
#   NAMED="supervoxels" extra named configs     EXTRA="pretrained_weights=coco"
#   VAL_EXTRA="protocol=realistic"              extra validation overrides
#   LAUNCHER=slurm|local  submit one job array instead of running here (examples/launch.py:
#                         a task per fold, or per fold and group in Setting 2; WAIT=0 returns)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
FOLDS=${FOLDS:-"0 1 2 3 4"}
STAGE=${STAGE:-all}
LOG_DIR=${LOG_DIR:-./exps}
NAMED=${NAMED:-}
EXTRA=${EXTRA:-}
VAL_EXTRA=${VAL_EXTRA:-}
LAUNCHER=${LAUNCHER:-}
WAIT=${WAIT:-1}
JOB=""        # with LAUNCHER: the commands of the task being collected
JOBS_FILE=""  # with LAUNCHER: every task's commands, blank-line separated

run() {  # run <script> <named configs and overrides...>
    if [ -n "$LAUNCHER" ]; then  # collected; NAMED and EXTRA split into words as below
        JOB+="$(printf '%q ' "$PY" "$1" with "${@:2}" log_dir="$LOG_DIR")$NAMED $EXTRA"$'\n'
        return
    fi
    echo "+ $PY $1 with ${*:2}"
    # shellcheck disable=SC2086
    "$PY" "$1" with "${@:2}" log_dir="$LOG_DIR" $NAMED $EXTRA
}

end_task() {  # with LAUNCHER: the collected commands become one task
    if [ -n "$LAUNCHER" ] && [ -n "$JOB" ]; then
        printf '%s\n' "$JOB" >> "$JOBS_FILE"
        JOB=""
    fi
}

submit() {  # with LAUNCHER: every task as one job array
    [ -n "$LAUNCHER" ] || return 0
    local wait=()
    [ "$WAIT" = 1 ] || wait=(--no-wait)
    "$PY" examples/launch.py --launcher "$LAUNCHER" --jobs "$JOBS_FILE" --log-dir "$LOG_DIR" \
        "${wait[@]}"
}

# experiment <dataset config> <setting 1|2> "<label groups>"
#   Setting 1: one model per fold, validated on every group.
#   Setting 2: one model per fold and group (its test classes' slices excluded from training).
experiment() {
    local dataset=$1 setting=$2 groups=$3 fold group
    if [ -n "$LAUNCHER" ]; then
        mkdir -p "$LOG_DIR"
        JOBS_FILE=$(mktemp "$LOG_DIR/jobs.XXXXXX")
    fi
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
            [ "$setting" = 1 ] || end_task  # Setting 2: a task per fold and group
        done
        end_task  # Setting 1: a task per fold
    done
    submit
}
