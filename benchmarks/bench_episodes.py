"""Benchmark: seconds per augmented 256×256 superpixel episode, in-process and through a loader.

Links the shared CHAOS-T2 scans into a temporary folder, generates MIDDLE superpixels for
``--scans`` training scans of fold 0, builds ``SuperpixelEpisodes`` (``sabs_aug``, Setting 1) and
prints JSON with:

- ``single_process``: the time of each of ``--episodes`` calls ``dataset[i]`` (median, p10, p90,
  min, max: a recipe drawn and assembled on the CPU), the same without augmentation (the
  sampling and tensor cost alone), and ``recipe`` (drawing the recipe alone: the host's share
  of an episode when training assembles it on its device);
- ``dataloader``: ``episode_loader(num_workers=--workers)``, wall time per batch after the first
  (worker start-up excluded), repeated ``--repeats`` times.

    .venv/bin/python benchmarks/bench_episodes.py [--data ../shared/data/CHAOST2] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import summary, time_calls  # noqa: E402
from data_preprocessing import superpixels  # noqa: E402
from data_preprocessing.contract import register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402
from dataloaders.episodes import SuperpixelEpisodes, episode_loader  # noqa: E402


def per_call(get, n: int) -> list[float]:
    indices = iter(range(n))
    return time_calls(lambda: get(next(indices)), n, lambda: None, warmup=0)


def loader_rate(dataset: SuperpixelEpisodes, workers: int, n: int) -> float:
    """Seconds per batch after the first one arrives (start-up excluded)."""
    it = iter(episode_loader(dataset, num_workers=workers, n_steps=n + 1))
    next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSL_SHARED_DATA", "../shared/data")
                        + "/CHAOST2")
    parser.add_argument("--scans", type=int, default=3, help="training scans to load")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        link_scans(args.data, tmp)
        ds = register(tmp, "CHAOST2")
        pids = ds.fold(0)["train"][:args.scans]
        superpixels.generate(tmp, workers=args.workers, cases=pids)
        start = time.perf_counter()
        episodes = SuperpixelEpisodes(ds, pids, length=args.episodes, seed=0)
        build_s = time.perf_counter() - start
        plain = SuperpixelEpisodes(ds, pids, length=args.episodes, seed=0, aug=None)
        augmented = per_call(episodes.__getitem__, args.episodes)
        no_aug = per_call(plain.__getitem__, args.episodes)
        recipe = per_call(episodes.recipe, args.episodes)
        loader = [loader_rate(episodes, args.workers, args.episodes)
                  for _ in range(args.repeats)]
    result = {"benchmark": "superpixel_episodes_256", "data": str(args.data),
              "scans": pids, "slices": episodes.n_total, "augmentation": "sabs_aug",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "build_s": round(build_s, 3),
              "single_process": {"augmented": summary(augmented), "no_augmentation":
                                 summary(no_aug), "recipe": summary(recipe)},
              "dataloader": {"workers": args.workers, "batches": args.episodes,
                             "seconds_per_batch": summary(loader),
                             "batches_per_s": round(1 / statistics.median(loader), 1)}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
