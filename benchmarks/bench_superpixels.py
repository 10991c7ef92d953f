"""Benchmark: 2-D superpixel pseudolabels per volume, one process vs. all cores.

Runs `data_preprocessing.superpixels.generate` on the shared CHAOS-T2 scans (linked into a
temporary folder) with 1 worker and with every core, `--repeats` times each, and prints JSON with
the median and spread of the wall time, seconds per volume and the speed-up.

    .venv/bin/python benchmarks/bench_superpixels.py [--data ../shared/data/CHAOST2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import summary, time_calls  # noqa: E402
from data_preprocessing import superpixels  # noqa: E402
from data_preprocessing.contract import register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402


def timed(folder: Path, workers: int, repeats: int) -> list[float]:
    return time_calls(lambda: superpixels.generate(folder, "MIDDLE", workers=workers), repeats,
                      lambda: None, warmup=0)


def stats(times: list[float], n_volumes: int) -> dict:
    return {**summary(times, 3), "per_volume_s": round(statistics.median(times) / n_volumes, 4),
            "runs": [round(t, 3) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSL_SHARED_DATA", "../shared/data")
                        + "/CHAOST2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = superpixels.default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        n = len(link_scans(args.data, tmp))
        register(tmp, "CHAOST2")
        serial = timed(Path(tmp), 1, args.repeats)
        parallel = timed(Path(tmp), cores, args.repeats)
    result = {"benchmark": "superpixels_MIDDLE", "data": str(args.data), "volumes": n,
              "cpu": platform.processor() or platform.machine(), "cores": cores,
              "one_process": stats(serial, n), "all_cores": stats(parallel, n),
              "speedup": round(statistics.median(serial) / statistics.median(parallel), 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
