"""MS-CMRSeg 2019 bSSFP cardiac MRI to normalized NIfTI (method.md §1.4).

Input: ``image_<n>.nii.gz`` and ``label_<n>.nii.gz`` in ``--src`` (the challenge's
``patient<n>_C0*.nii.gz`` renamed; that renaming is not part of the original pipeline). Each scan
goes through the CHAOS step 3 (:func:`data_preprocessing.resample.normalize_resample_crop`):
99.5-percentile clip, linear resampling to 1.25 x 1.25 x 7.99 mm, per-label resampling, centre
crop / pad to 256 x 256, float64. Labels keep the raw challenge values {0, 200, 500, 600} on disk;
readers map them to 1 / 2 / 3.

Usage::

    python -m data_preprocessing.cmr --src MSCMR/bSSFP --dst data/CMR/cmr_MR_normalized
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_preprocessing.contract import discover_cases, register
from data_preprocessing.registry import CMR
from data_preprocessing.resample import (add_resample_options, normalize_mr_pair,
                                         parse_resample_options, resample_record)
from util.io import ensure_writable_dir
from util.errors import InputError, MissingInput

RAW_LABEL_VALUES = (0, *sorted(CMR.raw_label_values))  # 0, 200, 500, 600


def find_cases(src: str | os.PathLike, pids: list[str] | None = None) -> list[str]:
    """Scan ids with both ``image_<n>.nii.gz`` and ``label_<n>.nii.gz`` in ``src``, sorted."""
    src = Path(src)
    if not src.is_dir():
        raise MissingInput(f"{src}: expected the bSSFP folder with image_<n>.nii.gz and "
                                f"label_<n>.nii.gz, found nothing there")
    if pids is None:
        pids = discover_cases(src)
        if not pids:
            raise MissingInput(f"{src}: expected image_<n>.nii.gz files, found none")
    for pid in pids:
        for kind in ("image", "label"):
            path = src / f"{kind}_{pid}.nii.gz"
            if not path.is_file():
                raise MissingInput(f"{path}: expected the {kind} of scan {pid}, found "
                                        f"nothing there")
    return [str(p) for p in pids]


def check_label_values(label: sitk.Image, path: str | os.PathLike) -> list[int]:
    """The label values, which must be raw MS-CMRSeg values {0, 200, 500, 600}."""
    found = np.unique(sitk.GetArrayViewFromImage(label))
    unknown = [float(v) for v in found if float(v) not in RAW_LABEL_VALUES]
    if unknown:
        raise InputError(f"{path}: expected label values {list(RAW_LABEL_VALUES)}, found "
                         f"{[float(v) for v in found]} (unknown: {unknown})")
    return [int(v) for v in found]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder with image_<n> / label_<n>.nii.gz")
    parser.add_argument("--dst", required=True, help="output folder of the normalized scans")
    parser.add_argument("--pids", nargs="+", default=None, help="only these scan ids")
    add_resample_options(parser, CMR.target_spacing)
    args = parse_resample_options(parser, argv)
    ensure_writable_dir(args.dst, "--dst")
    pids = find_cases(args.src, args.pids)  # checks every pair before anything is written
    for pid in pids:
        print(normalize_mr_pair(args.src, args.dst, pid, CMR.name, args, check_label_values))
    register(args.dst, CMR.name, preprocessing={
        "tool": "data_preprocessing.cmr",
        "source": "MS-CMRSeg 2019 bSSFP image_<n>/label_<n>.nii.gz",
        **resample_record(args),
        "label_values_on_disk": list(RAW_LABEL_VALUES),
    })


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.cmr", main)
