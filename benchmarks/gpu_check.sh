#!/usr/bin/env bash
# The prepared GPU check: one short script for a machine with a GPU, whose python3 has torch and
# torchvision (none of the imaging packages are needed). It writes JSON files to $OUT (default
# ./gpu_check):
#   model_<variant>.json  bench_model.py: training step (fp32 / channels_last / bf16 autocast +
#                         channels_last / the same compiled, torch.compile of the whole
#                         forward), encoder forward+backward, the loss of a fixed episode,
#                         and the validation's computation for 140 query slices scored against 2
#                         classes (CHAOS fold 0, kidneys: 280 predictions), peak GPU memory;
#   conv3x3.json          bench_conv3x3.py: the trunk's 3×3 convolutions, direct vs Winograd;
#   gpu_util_<variant>.txt the GPU's utilisation (%) every 200 ms during each variant, where
#                         nvidia-smi exists (its mean is printed);
#   host_reads.json       check_host_reads.py: training steps (episodes assembled on the device)
#                         under CUDA's synchronisation check, and the validation's reads counted;
#                         needs the imaging packages (SITE: a folder of them for PYTHONPATH),
#                         skipped with a message without them.
# Usage: bash benchmarks/gpu_check.sh   (DEVICE, ENCODER, SIZE, RUNS, SLICES override defaults;
# the tests run it on the CPU with ENCODER=tiny). A relative OUT is taken from the repository root.
# The "fp32" CUDA step runs as training does, with cuDNN's default TF32 convolutions: each JSON
# records the setting.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
encoder="${ENCODER:-deeplabv3_resnet101}"
size="${SIZE:-256}"
runs="${RUNS:-20}"
slices="${SLICES:-140}"
mkdir -p "$out"
[ -n "${SITE:-}" ] && export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
for variant in fp32 channels_last bf16_channels_last bf16_channels_last_compile; do
    case "$variant" in
        fp32) flags=() ;;
        channels_last) flags=(--channels-last) ;;
        bf16_channels_last) flags=(--channels-last --bf16) ;;
        bf16_channels_last_compile) flags=(--channels-last --bf16 --compile) ;;
    esac
    sampler=""
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 \
            > "$out/gpu_util_$variant.txt" &
        sampler=$!
    fi
    "$py" -m benchmarks.bench_model --device "$device" --encoder "$encoder" --size "$size" \
        --runs "$runs" --warmup 3 --infer-slices "$slices" ${flags[@]+"${flags[@]}"} \
        > "$out/model_$variant.json"
    if [ -n "$sampler" ]; then
        kill "$sampler"
        wait "$sampler" 2> /dev/null || true
        awk '{s += $1; n++} END {if (n) printf "gpu utilisation %.0f%% (mean of %d samples)\n",
            s / n, n}' "$out/gpu_util_$variant.txt"
    fi
    "$py" -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2],
'step %.4f s' % r['full_step']['median_s'], 'encoder %.4f s' % r['encoder_fwd_bwd']['median_s'],
'loss %.6f' % r['first_step_loss'], 'inference %.4f s/slice' % r['inference']['s_per_slice'])" \
        "$out/model_$variant.json" "$variant"
done
"$py" benchmarks/bench_conv3x3.py --device "$device" --repeats "$runs" --size $((size / 8)) \
    > "$out/conv3x3.json"
"$py" -c "import json, sys; print('conv3x3 trunk ms (strict fp32)',
json.load(open(sys.argv[1]))['trunk_total_ms'])" "$out/conv3x3.json"
# last, and not fatal: the timings above come first whatever this finds
if "$py" -c "import SimpleITK, skimage, scipy" 2> /dev/null; then
    if "$py" benchmarks/check_host_reads.py --device "$device" > "$out/host_reads.json" \
            2> "$out/host_reads.err"; then
        verdict="none in the training steps"
    else
        verdict="FOUND in the training steps (see $out/host_reads.err)"
    fi
    "$py" -c "import json, sys; r = json.load(open(sys.argv[1])); print('host reads:', sys.argv[2],
'| steps', r['step_host_reads'], 'validation', r['validation_host_reads'], 'support parts',
r['support_parts'])" "$out/host_reads.json" "$verdict" || echo "host-read check failed: $out/host_reads.err"
else
    echo "host-read check skipped: SimpleITK, scikit-image or SciPy missing (set SITE)"
fi
