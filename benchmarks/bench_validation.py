"""Benchmark: validation of CHAOS-T2 fold 0, kidneys (label group 0), full predictions written.

Runs ``validation.py``'s command in-process on the shared CHAOS-T2 scans with a randomly
initialised model (``--encoder``, ResNet-101 by default) for each protocol, ``--repeats`` times,
and prints JSON with the wall time of the whole validation, the number of predicted query slices,
seconds per predicted slice, and the peak RSS.

    .venv/bin/python benchmarks/bench_validation.py [--protocols paper realistic] [--repeats 1]
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

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import peak_rss_mb, summary  # noqa: E402
from config_ssl_upload import ex  # noqa: E402
from data_preprocessing import classmap  # noqa: E402
from data_preprocessing.contract import load_dataset, register  # noqa: E402
from data_preprocessing.prepare import link_scans  # noqa: E402
import validation  # noqa: E402,F401  (registers the validate command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SSL_SHARED_DATA", "../shared/data")
                        + "/CHAOST2")
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--protocols", nargs="+", default=["paper", "realistic"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data, logs = Path(tmp) / "data", Path(tmp) / "exps"
        link_scans(args.data, data)
        register(data, "CHAOST2")
        classmap.write_classmap(data, 1)
        ds = load_dataset(data)
        # both protocols predict every slice of every query scan, once per test class
        slices = len(ds.test_labels(0)) * sum(
            nib.load(ds.path("image", p)).shape[2] for p in ds.fold(0)["query"])
        for protocol in args.protocols:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run = ex.run("validate", named_configs=["chaost2"], config_updates={
                    "data_dir": str(data), "log_dir": str(logs), "encoder": args.encoder,
                    "label_sets": 0, "eval_fold": 0, "protocol": protocol, "device": "cpu",
                    "eval_batch_size": args.batch_size, "save_predictions": True})
                times.append(time.perf_counter() - start)
                assert Path(run.result["run_dir"], "summary.json").is_file()
            results[protocol] = {**summary(times, 2), "runs_s": [round(t, 2) for t in times],
                                 "predicted_slices": slices,
                                 "s_per_slice": round(float(np.median(times)) / slices, 4)}
    print(json.dumps({"benchmark": "validation_chaos_fold0_kidneys", "encoder": args.encoder,
                      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
                      **results,
                      "peak_rss_gib": round(peak_rss_mb() / 1024, 3)}, indent=2))


if __name__ == "__main__":
    main()
