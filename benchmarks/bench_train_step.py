"""Benchmark: one training step broken down, with the encoder-only floor, on real CHAOS-T2 episodes.

Builds superpixel episodes (``sabs_aug``) from ``--scans`` shared CHAOS-T2 training scans and the
configured ALPNet (ResNet-101 by default, random init, 256×256, 1 shot), then times each of
``--steps`` steps after ``--warmup`` warm-up steps:

- ``episode``: producing the episode in-process (the loader hides this behind compute when it
  runs in workers);
- ``forward_loss``: encoder + ALP + alignment + weighted CE;
- ``backward`` and ``optimizer``;
- ``step``: forward_loss + backward + optimizer (what a training step costs with the data in
  workers);
- ``encoder_floor``: encoder forward+backward alone on the same batch of 2 (sum of features as
  the loss).

Prints JSON with median/p10/p90 per part, the ratio step / encoder floor, peak RSS, and the loss of
the first (fixed, seeded) episode so that speed changes can be checked not to change numbers.

    .venv/bin/python benchmarks/bench_train_step.py [--encoder deeplabv3_resnet101] [--steps 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_preprocessing import superpixels  # noqa: E402
from data_preprocessing.contract import register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402
from dataloaders.episodes import SuperpixelEpisodes  # noqa: E402
from models.alpnet import ALPNet  # noqa: E402
from models.losses import weighted_cross_entropy  # noqa: E402

TENSORS = ("support_images", "support_fg", "support_bg", "query_images", "query_labels")


def stats(values: list[float]) -> dict:
    arr = np.array(values)
    return {"median_s": round(float(np.median(arr)), 4),
            "p10_s": round(float(np.percentile(arr, 10)), 4),
            "p90_s": round(float(np.percentile(arr, 90)), 4)}


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
    args = parser.parse_args()
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
                       autocast_bf16=args.bf16).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                    weight_decay=5e-4)
        rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        parts: dict[str, list[float]] = {k: [] for k in ("episode", "forward_loss", "backward",
                                                          "optimizer", "step", "encoder_floor")}
        first_loss = None
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            ep = episodes[i]
            batch = {k: ep[k] for k in TENSORS}
            t1 = time.perf_counter()
            out = model(batch["support_images"], batch["support_fg"], batch["support_bg"],
                        batch["query_images"])
            loss = weighted_cross_entropy(out.logits, batch["query_labels"]) + out.align_loss
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            if first_loss is None:
                first_loss = loss.item()
            images = torch.cat([batch["support_images"], batch["query_images"]])
            t5 = time.perf_counter()
            model.encode(images).sum().backward()
            t6 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if i >= args.warmup:
                for key, value in (("episode", t1 - t0), ("forward_loss", t2 - t1),
                                   ("backward", t3 - t2), ("optimizer", t4 - t3),
                                   ("step", t4 - t1), ("encoder_floor", t6 - t5)):
                    parts[key].append(value)
    result = {"benchmark": "train_step", "encoder": args.encoder, "input": "1-shot 256x256",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "channels_last": args.channels_last,
              "bf16": args.bf16,
              "steps": args.steps, **{k: stats(v) for k, v in parts.items()},
              "step_over_encoder_floor": round(float(np.median(parts["step"])
                                                     / np.median(parts["encoder_floor"])), 3),
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    / 1024 ** 2, 3),
              "rss_after_model_gib": round(rss_model / 1024, 3),
              "first_episode_loss": round(first_loss, 6)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
