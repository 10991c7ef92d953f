"""Superpixel pseudolabels (method.md §2): 2-D Felzenszwalb per slice inside the body mask.

Writes ``superpix-<SCALE>_<pid>.nii.gz`` (int16 ids, 0 outside the body, the image's geometry) and
``fgmask_<pid>.nii.gz`` (uint8 body mask) into the dataset folder and records the parameters in
its ``dataset.json``. Volumes are processed in parallel, one worker process per core.

    python -m data_preprocessing.superpixels --dir data/CHAOST2 --scale MIDDLE [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import skimage
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import felzenszwalb

from data_preprocessing.contract import check_writable_dataset, commit_staged, discard_on_error, \
    load_dataset, staging_folder
from util.cli import progress
from util.workers import worker_pool
from util.io import array_to_image, read_image, write_image
from util.errors import InputError


@dataclass(frozen=True)
class SuperpixelParams:
    """Felzenszwalb parameters of one named scale (``scale`` is skimage's k)."""

    min_size: int
    sigma: float
    scale: float = 1.0


# MIDDLE is the original's (the only one it implements). SMALL is the alternative the original
# mentions (min_size 100, sigma 0.8); LARGE is this project's choice (4x MIDDLE's min_size).
SCALES: dict[str, SuperpixelParams] = {
    "SMALL": SuperpixelParams(min_size=100, sigma=0.8),
    "MIDDLE": SuperpixelParams(min_size=400, sigma=1.0),
    "LARGE": SuperpixelParams(min_size=1600, sigma=1.0),
}
RELABEL_MODES = ("compact", "faithful")


def body_mask(slice2d: np.ndarray, threshold: float) -> np.ndarray:
    """Largest 8-connected component of ``slice > threshold`` with holes filled (method.md §2.2)."""
    mask = slice2d > threshold
    if not mask.any():
        return mask
    components = connected_components(mask)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)


def relabel(seg: np.ndarray, mask: np.ndarray, mode: str = "compact") -> np.ndarray:
    """Superpixel ids inside ``mask`` from raw Felzenszwalb labels ``seg`` (0..K-1).

    ``compact``: every segment touching the mask is kept, ids 1..N in raw-id order.
    ``faithful``: the original's relabelling (method.md §2.3): raw ids 1..K-2 keep their value, raw
    K-1 becomes K, raw 0 is dropped, no compaction.
    """
    if mode == "compact":
        inside = seg[mask]
        ids = np.unique(inside)
        out = np.zeros(seg.shape, dtype=np.int32)
        out[mask] = np.searchsorted(ids, inside) + 1
        return out
    if mode == "faithful":
        k = int(seg.max()) + 1
        out = np.where(mask & (seg > 0), seg, 0).astype(np.int32)
        if k >= 2:
            out[out == k - 1] = k
        return out
    raise InputError(f"relabel mode: expected one of {RELABEL_MODES}, got {mode!r}")


def superpixels_slice(slice2d: np.ndarray, params: SuperpixelParams, threshold: float,
                      relabel_mode: str = "compact") -> tuple[np.ndarray, np.ndarray]:
    """(superpixel ids [H, W] int32, body mask [H, W] bool) of one slice in raw intensities."""
    mask = body_mask(slice2d, threshold)
    if not mask.any():
        return np.zeros(slice2d.shape, np.int32), mask
    seg = felzenszwalb(slice2d.astype(np.float64), scale=params.scale, sigma=params.sigma,
                       min_size=params.min_size)
    return relabel(seg, mask, relabel_mode), mask


def superpixels_volume(volume: np.ndarray, params: SuperpixelParams, threshold: float,
                       relabel_mode: str = "compact") -> tuple[np.ndarray, np.ndarray]:
    """Per-slice superpixels of a SITK array [Z, H, W]; ids are unrelated across slices."""
    ids = np.zeros(volume.shape, np.int32)
    masks = np.zeros(volume.shape, bool)
    for z in range(volume.shape[0]):
        ids[z], masks[z] = superpixels_slice(volume[z], params, threshold, relabel_mode)
    return ids, masks


def _process_case(image_path: Path, sp_path: Path, mask_path: Path, params: SuperpixelParams,
                  threshold: float, relabel_mode: str) -> dict:
    image = read_image(image_path)
    volume = sitk.GetArrayFromImage(image)
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{image_path}: expected finite intensities, found NaN or inf")
    ids, masks = superpixels_volume(volume, params, threshold, relabel_mode)
    if ids.max() > np.iinfo(np.int16).max:
        raise InputError(f"{image_path}: more superpixels on a slice than int16 holds")
    write_image(array_to_image(ids.astype(np.int16), image), sp_path)
    write_image(array_to_image(masks.astype(np.uint8), image), mask_path)
    per_slice = [int(len(np.unique(s)) - 1) for s, m in zip(ids, masks) if m.any()]
    return {"case": image_path.name, "body_slices": len(per_slice), "per_slice": per_slice}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def run_jobs(fn, jobs: list[tuple], workers: int | None = None, desc: str = "volumes") -> list:
    """``fn(*job)`` for every job, in order; in a pool of ``workers`` processes (default: every
    core) unless one suffices. A progress bar per volume on a terminal."""
    workers = min(workers or default_workers(), len(jobs)) or 1
    if workers == 1:
        return [fn(*job) for job in progress(jobs, desc=desc, unit="vol")]
    with worker_pool(workers) as pool:
        return list(progress(pool.map(fn, *zip(*jobs)), total=len(jobs), desc=desc, unit="vol"))


def generate(folder: str | os.PathLike, scale: str = "MIDDLE", relabel_mode: str = "compact",
             workers: int | None = None, cases: list[str] | None = None) -> list[dict]:
    """Write pseudolabels for every case (or ``cases``) of a registered folder; returns stats."""
    if scale not in SCALES:
        raise InputError(f"superpixel scale: expected one of {sorted(SCALES)}, got {scale!r}")
    if relabel_mode not in RELABEL_MODES:
        raise InputError(f"relabel mode: expected one of {RELABEL_MODES}, got {relabel_mode!r}")
    ds = load_dataset(folder)
    params, threshold = SCALES[scale], float(ds.meta["body_threshold"])
    record = {"method": "felzenszwalb2d", **asdict(params), "body_threshold": threshold,
              "relabel": relabel_mode, "skimage": skimage.__version__}
    if cases is not None:  # a few cases, written in place (tests, partial folders)
        jobs = [(ds.path("image", p), ds.path("pseudolabel", p, scale), ds.path("fgmask", p),
                 params, threshold, relabel_mode) for p in cases]
        return run_jobs(_process_case, jobs, workers, desc=f"superpixels {scale}")
    # the whole set: written aside, then switched with its dataset.json record in one step
    staging = staging_folder(folder, f"superpix-{scale}")
    jobs = [(ds.path("image", p), staging / ds.path("pseudolabel", p, scale).name,
             staging / ds.path("fgmask", p).name, params, threshold, relabel_mode)
            for p in ds.cases]
    with discard_on_error(staging):
        stats = run_jobs(_process_case, jobs, workers, desc=f"superpixels {scale}")
    commit_staged(folder, staging, {"pseudolabels": {scale: record}})
    return stats


def summarize(stats: list[dict]) -> dict:
    counts = np.array([n for s in stats for n in s["per_slice"]])
    if counts.size == 0:
        return {"body_slices": 0}
    return {"volumes": len(stats), "body_slices": int(counts.size),
            "superpixels_per_slice": {"min": int(counts.min()),
                                      "p5": float(np.percentile(counts, 5)),
                                      "median": float(np.median(counts)),
                                      "p95": float(np.percentile(counts, 95)),
                                      "max": int(counts.max()), "mean": float(counts.mean())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="registered dataset folder")
    parser.add_argument("--scale", default="MIDDLE", choices=sorted(SCALES))
    parser.add_argument("--relabel", default="compact", choices=RELABEL_MODES,
                        help="compact (fixed, default) or faithful (the original's id bug)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: expected a positive number of processes, got {args.workers}")
    check_writable_dataset(args.dir)
    start = time.perf_counter()
    stats = generate(args.dir, args.scale, args.relabel, args.workers)
    summary = summarize(stats)
    print(f"superpixels {args.scale} for {len(stats)} volumes in "
          f"{time.perf_counter() - start:.1f} s: {summary}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.superpixels", main)
