"""CHAOS-T2 raw download (DICOM + PNG ground truth) to normalized NIfTI (method.md §1.2).

Stages, per scan ``<src>/<pid>/T2SPIR/{DICOM_anon/*.dcm, Ground/*.png}``:

1. DICOM -> ``<niis>/image_<pid>.nii.gz``: the series is read with SimpleITK's ImageSeriesReader
   (slices ordered by GDCM along the slice normal), then the row axis is flipped with
   ``sitk.Flip`` so the array layout matches dcm2nii's output and the shared preprocessed files
   (direction diag(1, -1, 1) for axial scans) while the physical geometry stays the same.
2. PNG ground truth -> ``<niis>/label_<pid>.nii.gz``: PNGs sorted by the integer after the last
   ``-`` (or, when each PNG shares its name with a DICOM file and that order differs, in the
   DICOM slice order), stacked to (Z, H, W), flipped vertically like the image, grey values
   0/63/126/189/252 mapped to 0..4 (any other grey value is an error), geometry copied from the
   image.
3. ``<dst>/image_<pid>.nii.gz`` and ``label_<pid>.nii.gz``: 99.5-percentile clip, resample to
   1.25 x 1.25 x 7.70 mm, centre crop / pad to 256 x 256, float64
   (:func:`data_preprocessing.resample.normalize_resample_crop`).

Usage::

    python -m data_preprocessing.chaos --src CHAOS_Train_Sets/Train_Sets/MR \
        --dst data/CHAOST2/chaos_MR_T2_normalized
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk

from data_preprocessing.contract import discover_cases, register
from data_preprocessing.dicom import keep_locale
from data_preprocessing.registry import CHAOST2
from data_preprocessing.resample import (add_resample_options, normalize_mr_pair,
                                         parse_resample_options, resample_record)
from util.io import array_to_image, ensure_writable_dir, sort_pids, write_image
from util.errors import InputError, MissingInput

# Grey value of each class in the CHAOS ground-truth PNGs (method.md §1.2 step 2).
GREY_TO_CLASS = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}
_GREY_LUT = np.zeros(256, dtype=np.uint8)
_GREY_LUT[list(GREY_TO_CLASS)] = list(GREY_TO_CLASS.values())
SEQUENCE = "T2SPIR"
_PNG_INDEX = re.compile(r"-(\d+)$")



@dataclass(frozen=True)
class RawScan:
    """One raw CHAOS-T2 scan: its id, DICOM files in GDCM slice order, PNGs in label order."""

    pid: str
    dicom_dir: Path
    dicom_files: tuple[str, ...]
    png_files: tuple[Path, ...]
    reordered: bool = False  # PNGs follow their same-named DICOM, not their number order


def png_index(path: str | os.PathLike) -> int:
    """The slice number of a ground-truth PNG: the integer after the last ``-`` of its stem."""
    match = _PNG_INDEX.search(Path(path).stem)
    if match is None:
        raise InputError(f"{path}: expected a PNG name ending in '-<number>' "
                         f"(like IMG-0002-00001.png), found {Path(path).name!r}")
    return int(match.group(1))


def dicom_series_files(dicom_dir: str | os.PathLike) -> tuple[str, ...]:
    """The ``*.dcm`` files of the single series in ``dicom_dir``, in GDCM's slice order."""
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise MissingInput(f"{dicom_dir}: expected a folder of DICOM slices, found nothing "
                                f"there")
    present = sorted(p.name for p in dicom_dir.glob("*.dcm"))
    if not present:
        raise MissingInput(f"{dicom_dir}: expected *.dcm files, found none")
    with keep_locale():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(dicom_dir))
    if len(series) != 1:
        raise InputError(f"{dicom_dir}: expected one DICOM series, found {len(series)}"
                         f"{': ' + ', '.join(series) if series else ''}")
    with keep_locale():
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir), series[0]))
    in_series = {Path(f).name for f in files}
    left_out = [name for name in present if name not in in_series]
    if left_out:
        raise InputError(f"{dicom_dir}: expected all {len(present)} .dcm files to form one "
                         f"readable series, found {len(left_out)} outside it (unreadable or from "
                         f"another series): {', '.join(left_out[:5])}"
                         f"{' ...' if len(left_out) > 5 else ''}")
    return files


def find_scan(src: str | os.PathLike, pid: str) -> RawScan:
    """Locate and check one scan's DICOM series and PNGs; raises before anything is read."""
    scan_dir = Path(src) / pid / SEQUENCE
    dicom_dir, ground_dir = scan_dir / "DICOM_anon", scan_dir / "Ground"
    files = dicom_series_files(dicom_dir)
    if not ground_dir.is_dir():
        raise MissingInput(f"{ground_dir}: expected the ground-truth PNG folder, found "
                                f"nothing there")
    pngs = sorted(ground_dir.glob("*.png"), key=png_index)
    if len(pngs) != len(files):
        raise InputError(f"{ground_dir}: expected {len(files)} PNGs (one per DICOM slice in "
                         f"{dicom_dir}), found {len(pngs)}")
    indices = [png_index(p) for p in pngs]
    if len(set(indices)) != len(indices):
        raise InputError(f"{ground_dir}: expected distinct PNG slice numbers, found duplicates")
    # When every PNG is named like a DICOM slice, that pairing decides its slice; it equals the
    # number order whenever GDCM's position order follows the file numbering.
    by_stem = {p.stem: p for p in pngs}
    dicom_stems = [Path(f).stem for f in files]
    ordered = tuple(pngs)
    if set(by_stem) == set(dicom_stems):
        ordered = tuple(by_stem[s] for s in dicom_stems)
    return RawScan(pid, dicom_dir, files, ordered, reordered=ordered != tuple(pngs))


def find_scans(src: str | os.PathLike, pids: list[str] | None = None) -> list[RawScan]:
    """All scans under ``src`` (numerically named folders holding T2SPIR), or the given ``pids``."""
    src = Path(src)
    if not src.is_dir():
        raise MissingInput(f"{src}: expected the CHAOS MR folder (<pid>/T2SPIR/...), found "
                                f"nothing there")
    if pids is None:
        pids = sort_pids(p.name for p in src.iterdir() if p.is_dir() and p.name.isdigit()
                         and (p / SEQUENCE).is_dir())
        if not pids:
            raise MissingInput(f"{src}: expected scan folders <pid>/{SEQUENCE}/DICOM_anon, "
                                    f"found none")
    return [find_scan(src, str(pid)) for pid in pids]


def read_dicom_series(scan: RawScan) -> sitk.Image:
    """Read the series and flip rows: array (Z, Y, X) laid out as dcm2nii's / the shared files."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(scan.dicom_files))
    try:
        with keep_locale():
            image = reader.Execute()
    except RuntimeError as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise InputError(f"{scan.dicom_dir}: expected a readable DICOM series, reading failed: "
                         f"{last}") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{scan.dicom_dir}: expected grey-scale slices, found "
                         f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
    return sitk.Flip(image, [False, True, False])


def read_png(path: Path) -> np.ndarray:
    """One ground-truth PNG as a 2-D uint8 array (H, W)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{path}: expected a readable PNG, reading failed")
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., k]) for k in range(1, arr.shape[2])):
            raise InputError(f"{path}: expected a grey-scale PNG, found {arr.shape[2]} "
                             f"different channels")
        arr = arr[..., 0]
    return arr


def grey_to_classes(grey: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Map CHAOS grey values 0/63/126/189/252 to classes 0..4; other values are an error."""
    found = np.unique(grey)
    unknown = [int(v) for v in found if int(v) not in GREY_TO_CLASS]
    if unknown:
        raise InputError(f"{path}: expected grey values {sorted(GREY_TO_CLASS)}, found "
                         f"{[int(v) for v in found]} (unknown: {unknown})")
    return _GREY_LUT[grey.astype(np.intp)]


def read_ground_truth(scan: RawScan, reference: sitk.Image) -> sitk.Image:
    """Stack the PNGs to (Z, H, W), flip vertically, map grey to classes, copy ``reference``.

    ``reference`` is the flipped DICOM image; its array shape must match the stack.
    """
    ref_size = reference.GetSize()  # (X, Y, Z)
    slices = []
    for path in scan.png_files:
        grey = read_png(path)
        if grey.shape != (ref_size[1], ref_size[0]):
            raise InputError(f"{path}: expected a {ref_size[1]} x {ref_size[0]} PNG like the "
                             f"DICOM slices in {scan.dicom_dir}, found {grey.shape[0]} x "
                             f"{grey.shape[1]}")
        slices.append(grey_to_classes(grey, path))
    stack = np.stack(slices, axis=0)[:, ::-1, :]
    return array_to_image(np.ascontiguousarray(stack), reference)


def convert_raw_scan(scan: RawScan, niis: str | os.PathLike) -> tuple[Path, Path]:
    """Stages 1-2: write ``image_<pid>.nii.gz`` and ``label_<pid>.nii.gz`` into ``niis``.

    Both are computed before either is written, so a failing scan leaves ``niis`` untouched.
    """
    niis = Path(niis)
    image = read_dicom_series(scan)
    label = read_ground_truth(scan, image)
    img_path, lbl_path = niis / f"image_{scan.pid}.nii.gz", niis / f"label_{scan.pid}.nii.gz"
    write_image(image, img_path)
    write_image(label, lbl_path)
    return img_path, lbl_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True,
                        help="CHAOS MR folder holding <pid>/T2SPIR/{DICOM_anon,Ground}")
    parser.add_argument("--dst", required=True, help="output folder of the normalized scans")
    parser.add_argument("--niis", default=None,
                        help="folder of the intermediate NIfTI (default <dst>/../niis/T2SPIR)")
    parser.add_argument("--pids", nargs="+", default=None, help="only these scan ids")
    parser.add_argument("--from-niis", action="store_true",
                        help="skip stages 1-2 and normalize the NIfTI already in --niis")
    add_resample_options(parser, CHAOST2.target_spacing)
    args = parse_resample_options(parser, argv)
    dst = ensure_writable_dir(args.dst, "--dst")
    niis = Path(args.niis) if args.niis else dst.parent / "niis" / SEQUENCE

    if args.from_niis:
        if not niis.is_dir():
            raise MissingInput(f"{niis}: expected the intermediate NIfTI folder "
                                    f"(--from-niis), found nothing there")
        pids = args.pids or discover_cases(niis)
        if not pids:
            raise MissingInput(f"{niis}: expected image_<pid>.nii.gz files, found none")
    else:
        scans = find_scans(args.src, args.pids)  # checks every scan before anything is written
        for scan in scans:
            img_path, _ = convert_raw_scan(scan, niis)
            order = " (PNGs paired by file name)" if scan.reordered else ""
            print(f"CHAOST2 {scan.pid}: {len(scan.dicom_files)} DICOM slices + "
                  f"{len(scan.png_files)} PNGs{order} -> {img_path}")
        pids = [scan.pid for scan in scans]

    for pid in pids:
        print(normalize_mr_pair(niis, dst, pid, CHAOST2.name, args))
    register(dst, CHAOST2.name, preprocessing={
        "tool": "data_preprocessing.chaos",
        "source": "CHAOS MR T2SPIR DICOM (SimpleITK ImageSeriesReader, rows flipped) + PNG",
        "grey_to_class": {str(k): v for k, v in GREY_TO_CLASS.items()},
        **resample_record(args),
    })


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.chaos", main)
