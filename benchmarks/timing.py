"""Shared by the benchmarks: device synchronisation, repeated timed calls, peak memory."""
from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np
import torch


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[], None],
               warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def tf32_settings() -> dict:
    """Whether CUDA may round fp32 convolutions / matrix products to TF32 (recorded in results:
    an "fp32" CUDA timing with cuDNN's default TF32 convolutions is not strict fp32)."""
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(times: list[float], digits: int = 5) -> dict:
    """Median, p10, p90, min and max seconds of ``times`` and their count: every benchmark's
    summary of repeated timings."""
    arr = np.asarray(times, dtype=float)
    return {"median_s": round(float(np.median(arr)), digits),
            "p10_s": round(float(np.percentile(arr, 10)), digits),
            "p90_s": round(float(np.percentile(arr, 90)), digits),
            "min_s": round(float(arr.min()), digits), "max_s": round(float(arr.max()), digits),
            "n": int(arr.size)}
