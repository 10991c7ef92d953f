"""Class-slice index ``classmap_<MIN_TP>.json`` (method.md §1.6, with the pixel-count fix).

``{label name: {pid: [slice indices, ascending]}}``, one key per label (background included) and one
pid key per scan. Slice index = SITK array axis 0. A slice is listed under class ``c >= 1`` when it
holds at least ``MIN_TP`` pixels of ``c``; under background when it holds background and at least
``MIN_TP`` foreground pixels (for ``MIN_TP = 1`` this is exactly the published index).

    python -m data_preprocessing.classmap --dir data/CHAOST2 [--min-tp 1 100]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from data_preprocessing.contract import check_writable_dataset, load_dataset, map_label_values, \
    update_metadata
from util.io import read_array, write_json
from util.errors import InputError


def slice_index(label: np.ndarray, labels: dict[int, str], min_tp: int = 1) -> dict[str, list[int]]:
    """Per class name, the slices (axis 0 of ``label`` [Z, H, W]) holding the class."""
    counts = {c: (label == c).reshape(label.shape[0], -1).sum(axis=1) for c in labels}
    foreground = (label != 0).reshape(label.shape[0], -1).sum(axis=1)
    out = {}
    for cid, name in labels.items():
        if cid == 0:
            keep = (counts[0] > 0) & (foreground >= min_tp)
        else:
            keep = counts[cid] >= min_tp
        out[name] = np.flatnonzero(keep).tolist()
    return out


def build_classmap(folder: str | os.PathLike, min_tp: int = 1) -> dict[str, dict[str, list[int]]]:
    ds = load_dataset(folder)
    classmap: dict[str, dict[str, list[int]]] = {name: {} for name in ds.labels.values()}
    for pid in ds.labelled:
        path = ds.path("label", pid)
        label = map_label_values(read_array(path), ds.raw_label_values, str(path))
        for name, zs in slice_index(label, ds.labels, min_tp).items():
            classmap[name][pid] = zs
    return classmap


def write_classmap(folder: str | os.PathLike, min_tp: int = 1) -> Path:
    ds = load_dataset(folder)
    ds.require_labels("a class-slice index")
    classmap = build_classmap(folder, min_tp)
    path = ds.classmap_path(min_tp)
    write_json(path, classmap)
    update_metadata(folder, classmaps=[min_tp])
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="registered dataset folder")
    parser.add_argument("--min-tp", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)
    for n in args.min_tp:
        if n < 1:
            raise InputError(f"--min-tp: expected a positive pixel count, got {n}")
    check_writable_dataset(args.dir)
    for n in args.min_tp:
        print(f"wrote {write_classmap(args.dir, n)}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.classmap", main)
