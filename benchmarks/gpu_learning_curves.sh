#!/usr/bin/env bash
# Learning curves on a GPU in one call: CHAOS-T2 fold 0, Setting 1, ResNet-101 from random
# initialisation, 1000 steps, validated during training at 500 and 1000 (val_every), plus the
# untrained model of each seed; fp32 and bf16, several seeds, as many as fit in BUDGET seconds.
# Everything lands in $OUT/curves.tar.gz (run folders without checkpoints) and $OUT/summary.txt.
#
#   DATA=.device/data/CHAOST2 SITE=.device_site BUDGET=480 bash benchmarks/gpu_learning_curves.sh
#
# DATA: a prepared CHAOS-T2 folder (python -m data_preprocessing.prepare); SITE: a folder of the
# Python packages the GPU machine lacks (PYTHONPATH); RUNS: "precision:seed" items in order;
# EXTRA: more training overrides, e.g. EXTRA="compile=True episodes_per_step=4".
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_curves}"
py="${PYTHON:-python3}"
data="${DATA:-data/CHAOST2}"
budget="${BUDGET:-480}"
steps="${STEPS:-1000}"
every="${EVAL_EVERY:-500}"
runs="${RUNS:-fp32:1234 bf16:1234 fp32:2024 bf16:2024 fp32:7}"
device="${DEVICE:-cuda}"
encoder="${ENCODER:-deeplabv3_resnet101}"
workers="${WORKERS:-12}"
read -r -a extra <<< "${EXTRA:-}"
[ -n "${SITE:-}" ] && export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
logs="$out/runs"
mkdir -p "$logs"
start=$(date +%s)
"$py" -c "import torch; print('torch', torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
'cudnn tf32', torch.backends.cudnn.allow_tf32, 'matmul tf32', torch.backends.cuda.matmul.allow_tf32)" \
    | tee "$out/summary.txt"
last=0
for item in $runs; do
    precision=${item%%:*} seed=${item##*:}
    elapsed=$(( $(date +%s) - start ))
    if [ "$last" -gt 0 ] && [ $(( elapsed + last )) -gt "$budget" ]; then
        echo "skipped $item: ${elapsed}s spent, the last run took ${last}s" | tee -a "$out/summary.txt"
        continue
    fi
    bf16=False; [ "$precision" = bf16 ] && bf16=True
    common=(chaost2 setting1 eval_fold=0 seed="$seed" data_dir="$data" device="$device"
            encoder="$encoder"
            log_dir="$logs" exp_prefix="gpu_${precision}_seed$seed" bf16="$bf16")
    t0=$(date +%s)
    "$py" training.py with "${common[@]}" n_steps="$steps" val_every="$every" \
        save_snapshot_every=100000 checkpoint_every=100000 num_workers="$workers" print_interval=100 \
        ${extra[@]+"${extra[@]}"} > "$logs/train_${precision}_$seed.log" 2>&1
    rc=$?
    t1=$(date +%s)
    for group in 0 1; do
        "$py" validation.py with "${common[@]}" label_sets=$group save_predictions=False \
            > "$logs/untrained_${precision}_${seed}_group$group.log" 2>&1
    done
    last=$(( $(date +%s) - t0 ))
    echo "$item: train rc $rc, ${steps} steps + validation in $(( t1 - t0 ))s, untrained $(( $(date +%s) - t1 ))s" \
        | tee -a "$out/summary.txt"
    grep -h "validation: mean Dice\|step .*/$steps " "$logs/train_${precision}_$seed.log" \
        | tail -n 4 | tee -a "$out/summary.txt"
    grep -h "^overall" "$logs"/untrained_"${precision}_${seed}"_group*.log | tee -a "$out/summary.txt"
done
find "$logs" -name "*.pth" -delete
tar -czf "$out/curves.tar.gz" -C "$out" runs && rm -rf "$logs"
echo "total $(( $(date +%s) - start ))s" | tee -a "$out/summary.txt"
