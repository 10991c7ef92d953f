"""Benchmark: one training step broken down, with the encoder-only floor, on real CHAOS-T2 episodes.

Builds superpixel episodes (``sabs_aug``) from ``--scans`` shared CHAOS-T2 training scans and the
configured ALPNet (ResNet-101 by default, random init, 256×256, 1 shot), then times each of
``--steps`` steps after ``--warmup`` warm-up steps:

- ``episode_host``: drawing the episode's recipe on the host (what the loader does);
- ``episode``: that, plus assembling it on the device (gather, one batched warp, gamma): what
  a training step adds to the model's work;
- ``forward_loss``: encoder + ALP + alignment + weighted CE;
- ``backward`` and ``optimizer``;
- ``step``: forward_loss + backward + optimizer (what a training step costs with the data in
  workers);
- ``encoder_floor``: encoder forward+backward alone on the same batch of 2 (sum of features as
  the loss).

Prints JSON with median/p10/p90 per part, the ratio step / encoder floor, peak RSS (and peak GPU
memory on CUDA), and the loss of the first (fixed, seeded) episode so that speed changes can be
checked not to change numbers. It also counts the floating-point operations of one step
(``torch.utils.flop_counter``: convolutions and matrix products, forward + backward) and divides
them by the measured times, next to a large fp32 matrix product timed in the same run
(``matmul_gflops``): a step whose ``achieved_gflops`` is at the matrix-product rate is bound by
arithmetic, and only fewer operations or lower precision make it faster.

    .venv/bin/python benchmarks/bench_train_step.py [--encoder deeplabv3_resnet101] [--steps 8]
        [--device auto|cpu|cuda] [--channels-last] [--bf16] [--compile] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_preprocessing import superpixels  # noqa: E402
from data_preprocessing.contract import register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402
from dataloaders.episodes import SuperpixelEpisodes  # noqa: E402
from models.alpnet import ALPNet  # noqa: E402
from benchmarks.timing import peak_rss_mb, summary, synchronizer, tf32_settings  # noqa: E402
from models.losses import weighted_cross_entropy  # noqa: E402
from util.device import resolve_device  # noqa: E402



def stats(values: list[float]) -> dict:
    return summary(values, 4)


def matmul_gflops(device: torch.device, sync, n: int = 2048, repeats: int = 10) -> float:
    """The rate of an n×n fp32 matrix product on ``device``: the arithmetic ceiling in practice."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def count_gflop(fn) -> float:
    """Floating-point operations (GFLOP) of ``fn()``, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSL_SHARED_DATA", "../shared/data")
                        + "/CHAOST2")
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the encoder")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (as training's compile=True); the "
                             "compilation happens in the warm-up steps")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sync = synchronizer(device)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        link_scans(args.data, tmp)
        ds = register(tmp, "CHAOST2")
        train = ds.fold(0)["train"][: args.scans]
        superpixels.generate(tmp, cases=train)
        episodes = SuperpixelEpisodes(ds, train, seed=1234, aug="sabs_aug")
        model = ALPNet(args.encoder, channels_last=args.channels_last,
                       autocast_bf16=args.bf16).to(device).train()
        if args.compile:
            model.compile()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                    weight_decay=5e-4)
        rss_model = peak_rss_mb()
        parts: dict[str, list[float]] = {k: [] for k in ("episode_host", "episode",
                                                          "forward_loss", "backward",
                                                          "optimizer", "step", "encoder_floor")}
        first_loss = None
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            recipes = default_collate([episodes.recipe(i)])
            t_host = time.perf_counter()
            batch = episodes.assemble(recipes, device)  # [1, shots or 1, ...]: as training
            labels = batch["query_labels"].flatten(0, -3)
            sync()
            t1 = time.perf_counter()
            out = model(batch["support_images"], batch["support_fg"], batch["support_bg"],
                        batch["query_images"])
            loss = weighted_cross_entropy(out.logits, labels) + out.align_loss
            sync()
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync()
            t3 = time.perf_counter()
            optimizer.step()
            sync()
            t4 = time.perf_counter()
            if first_loss is None:
                first_loss = loss.item()
            images = torch.cat([batch["support_images"][0], batch["query_images"][0]])
            sync()
            t5 = time.perf_counter()
            model.encode(images).sum().backward()
            sync()
            t6 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if i >= args.warmup:
                for key, value in (("episode_host", t_host - t0), ("episode", t1 - t0),
                                   ("forward_loss", t2 - t1),
                                   ("backward", t3 - t2), ("optimizer", t4 - t3),
                                   ("step", t4 - t1), ("encoder_floor", t6 - t5)):
                    parts[key].append(value)
        peak_rss = peak_rss_mb() / 1024
        gpu = ({"gpu": torch.cuda.get_device_name(device),
                "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 1024 ** 3,
                                             3)} if device.type == "cuda" else {})
        # operations of one step and of the encoder floor, on the last episode
        def one_step() -> None:
            out = model(batch["support_images"], batch["support_fg"], batch["support_bg"],
                        batch["query_images"])
            (weighted_cross_entropy(out.logits, labels) + out.align_loss).backward()
        step_gflop = count_gflop(one_step)
        floor_gflop = count_gflop(lambda: model.encode(images).sum().backward())
        optimizer.zero_grad(set_to_none=True)
        matmul = matmul_gflops(device, sync)
    step_s, floor_s = float(np.median(parts["step"])), float(np.median(parts["encoder_floor"]))
    result = {"benchmark": "train_step", "encoder": args.encoder, "input": "1-shot 256x256",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "device": str(device), **gpu,
              "torch": torch.__version__, "channels_last": args.channels_last, "bf16": args.bf16,
              "compile": args.compile,
              "tf32": tf32_settings(),
              "steps": args.steps, **{k: stats(v) for k, v in parts.items()},
              "step_over_encoder_floor": round(step_s / floor_s, 3),
              "step_gflop": round(step_gflop, 1), "encoder_floor_gflop": round(floor_gflop, 1),
              "achieved_gflops": {"step": round(step_gflop / step_s, 1),
                                  "encoder_floor": round(floor_gflop / floor_s, 1)},
              "matmul_gflops": round(matmul, 1),
              "peak_rss_gib": round(peak_rss, 3),
              "rss_after_model_gib": round(rss_model / 1024, 3),
              "first_episode_loss": round(first_loss, 6)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
