"""Benchmark: 3-D supervoxel pseudolabels, seconds per volume, on the shared real scans.

For each dataset (CMR with ``min_size`` 1000, CHAOS-T2 with 5000, as method.md §9.2) the scans are
linked into a temporary folder and registered; every volume is then processed alone in this
process (read, supervoxels, write) and timed. Prints JSON with the per-volume median, min, max,
the total and the machine's CPU flags.

    .venv/bin/python benchmarks/bench_supervoxels.py [--data ../shared/data] [--only CMR]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import summary  # noqa: E402
from data_preprocessing import supervoxels  # noqa: E402
from data_preprocessing.contract import register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402
from util.device import cpu_flags  # noqa: E402

MIN_SIZE = {"CMR": 1000, "CHAOST2": 5000}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def time_dataset(src: Path, dataset: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pids = link_scans(src, tmp)
        ds = register(tmp, dataset)
        name = supervoxels.scale_name(MIN_SIZE[dataset])
        seconds, counts = [], []
        for pid in ds.cases:
            start = time.perf_counter()
            counts.append(supervoxels._process_case(ds.path("image", pid),
                                                    Path(tmp) / f"sv_{pid}.nii.gz",
                                                    MIN_SIZE[dataset]))
            seconds.append(time.perf_counter() - start)
    return {"volumes": len(pids), "scale": name,
            "per_volume_s": summary(seconds, 2),
            "total_s": round(sum(seconds), 1),
            "supervoxels_per_volume": [min(counts), max(counts)],
            "all_s": [round(s, 2) for s in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSL_SHARED_DATA", "../shared/data"))
    parser.add_argument("--only", choices=sorted(MIN_SIZE), default=None)
    args = parser.parse_args()
    flags = cpu_flags()
    result = {"benchmark": "supervoxels per volume, one process",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "flags": {f: f in flags for f in FLAGS}}
    for dataset in ([args.only] if args.only else ["CMR", "CHAOST2"]):
        result[dataset] = time_dataset(Path(args.data) / dataset, dataset)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
