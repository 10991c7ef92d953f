"""Benchmark: memory layout and precision of the encoder on this CPU, the evidence behind
``channels_last=auto`` and ``bf16=auto``.

Times the encoder's forward + backward (batch of 2, 256×256: the step's dominant cost) for
fp32 NCHW, fp32 channels_last and bf16 autocast + channels_last, alternating the variants round
by round in one process so that CPU steal hits them alike. oneDNN reads ``ONEDNN_MAX_CPU_ISA``
when the process starts, so an AVX-512 host measures its AVX2 kernels with::

    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_layout.py

Prints JSON: the CPU flags that matter, the ISA cap, median seconds per variant, the ratios to
fp32 NCHW, and what ``auto`` chooses under these conditions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import summary  # noqa: E402
from models.alpnet import ALPNet  # noqa: E402
from util.device import channels_last_pays, cpu_flags, native_bf16  # noqa: E402

VARIANTS = {"fp32_nchw": {}, "fp32_channels_last": {"channels_last": True},
            "bf16_channels_last": {"channels_last": True, "autocast_bf16": True}}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="which to time (bf16 is emulated, and slow, without native bf16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.randn(2, 3, args.size, args.size)
    models = {}
    for name in dict.fromkeys(["fp32_nchw", *args.variants]):  # the reference is always timed
        torch.manual_seed(0)
        models[name] = ALPNet(args.encoder, **VARIANTS[name]).train()
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            model.encode(batch).sum().backward()
            if round_:
                times[name].append(time.perf_counter() - start)
    median = {n: summary(t)["median_s"] for n, t in times.items()}
    cpu = torch.device("cpu")
    flags = cpu_flags()
    print(json.dumps({
        "benchmark": "encoder forward+backward by layout and precision",
        "cpu": platform.processor() or platform.machine(),
        "flags": {f: f in flags for f in FLAGS},
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "encoder": args.encoder, "size": args.size, "rounds": args.rounds,
        "median_s": median, "all_s": times,
        "ratio_to_fp32_nchw": {n: median[n] / median["fp32_nchw"] for n in median},
        "auto_chooses": {"channels_last": channels_last_pays(cpu), "bf16": native_bf16(cpu)},
    }, indent=1))


if __name__ == "__main__":
    main()
