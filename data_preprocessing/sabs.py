"""Synapse / SABS raw abdominal CT to normalized NIfTI (method.md §1.3).

Step 1 (``--tmp``, default ``<dst>/../tmp_normalized``): images ``img*.nii.gz`` and labels
``label*.nii.gz`` (found under ``--src``, also in its ``img/`` and ``label/`` subfolders) are
sorted lexicographically, paired and renumbered 0..N-1 in that order; HU are clipped to
[-125, 275] and rescaled with the clipped volume's own min / max to [0, 255] (float64); labels
are copied unchanged.

Step 2 (``--dst``): ``--border`` (32) pixels are sliced off each in-plane border (origin kept),
then the image is resampled with R1 to spacing ``(sx * fx, sy * fy, sz)`` with
``f = (n - 2 * border) / 256`` for an axis of ``n`` pixels, and the label with R2 onto the same
grid. For the 512-pixel Synapse scans ``f = 448 / 256 = 1.75``, the original's fixed factor; for
other sizes this choice still gives the original's 257 x 257 x (Z + 1) output (row, column and
slice 256 / Z all zero). Images are float64 in [0, 255], labels float64.

Usage::

    python -m data_preprocessing.sabs --src RawData/Training --dst data/SABS/sabs_CT_normalized
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import SimpleITK as sitk

from data_preprocessing.contract import discover_cases, register
from data_preprocessing.registry import SABS
from data_preprocessing.resample import (BORDER, CROP_SIZE, HU_WINDOW, SIZE_EPS, convert_pair,
                                         resample_label, resample_to_spacing, window_ct)
from util.io import (array_to_image, array_with_geometry, ensure_writable_dir, pid_from_path,
                     read_image, write_image)
from util.errors import InputError, MissingInput



def find_pairs(src: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, label) paths in lexicographic order of their file names, checked to match.

    Images are ``img*.nii.gz`` and labels ``label*.nii.gz`` in ``src`` or its subfolders
    ``img/`` and ``label/``; the k-th image and k-th label must carry the same number.
    """
    src = Path(src)
    if not src.is_dir():
        raise MissingInput(f"{src}: expected the Synapse folder holding img*.nii.gz and "
                                f"label*.nii.gz, found nothing there")
    imgs = sorted({*src.glob("img*.nii.gz"), *src.glob("img/img*.nii.gz")}, key=lambda p: p.name)
    lbls = sorted({*src.glob("label*.nii.gz"), *src.glob("label/label*.nii.gz")},
                  key=lambda p: p.name)
    if not imgs:
        raise MissingInput(f"{src}: expected img*.nii.gz files (or img/img*.nii.gz), "
                                f"found none")
    if len(imgs) != len(lbls):
        raise InputError(f"{src}: expected one label*.nii.gz per image, found {len(imgs)} images "
                         f"and {len(lbls)} labels")
    for img, lbl in zip(imgs, lbls):
        if pid_from_path(img) != pid_from_path(lbl):
            raise InputError(f"{lbl}: expected the label of {img.name} (number "
                             f"{pid_from_path(img)}), found number {pid_from_path(lbl)}")
    return list(zip(imgs, lbls))


def window_scan(img_path: Path, lbl_path: Path, tmp: str | os.PathLike, new_id: int,
                window: tuple[float, float] = HU_WINDOW) -> tuple[Path, Path]:
    """Step 1 for one pair: write ``image_<new_id>`` (windowed) and ``label_<new_id>`` (copied)."""
    image, label = read_image(img_path), read_image(lbl_path)
    if image.GetDimension() != 3 or image.GetSize() != label.GetSize():
        raise InputError(f"{lbl_path}: expected a 3-D label the size of {img_path.name} "
                         f"{image.GetSize()}, found {label.GetSize()}")
    out = array_to_image(window_ct(sitk.GetArrayFromImage(image), window, str(img_path)), image)
    tmp = Path(tmp)
    out_img, out_lbl = tmp / f"image_{new_id}.nii.gz", tmp / f"label_{new_id}.nii.gz"
    write_image(out, out_img)
    write_image(label, out_lbl)
    return out_img, out_lbl


def _crop_border(image: sitk.Image, border: int, name: str) -> sitk.Image:
    """Slice ``border`` pixels off each in-plane side of a SITK array, keeping the geometry."""
    arr = sitk.GetArrayFromImage(image)  # (Z, Y, X)
    if min(arr.shape[1:]) <= 2 * border:
        raise InputError(f"{name}: expected in-plane size above {2 * border} to crop a "
                         f"{border}-pixel border, found {arr.shape[2]} x {arr.shape[1]}")
    return array_with_geometry(arr[:, border:-border, border:-border] if border else arr, image)


def crop_and_resample(image: sitk.Image, label: sitk.Image, border: int = BORDER,
                      size: int = CROP_SIZE, name: str = "scan") -> tuple[sitk.Image, sitk.Image]:
    """Step 2: crop the border, R1 the image to ``sx * (nx - 2b) / size`` etc., R2 the label."""
    if image.GetSize() != label.GetSize():
        raise InputError(f"{name}: expected the label size to equal the image size "
                         f"{image.GetSize()}, found {label.GetSize()}")
    img_c, lbl_c = _crop_border(image, border, name), _crop_border(label, border, name)
    sx, sy, sz = image.GetSpacing()
    nx, ny = img_c.GetSize()[:2]
    spacing = (sx * (nx / size), sy * (ny / size), sz)  # nx / size = 1.75 for 448 px
    res_img = resample_to_spacing(sitk.Cast(img_c, sitk.sitkFloat64), spacing)
    res_lbl = resample_label(lbl_c, spacing, reference=res_img)
    return res_img, res_lbl


def resample_scan(tmp: str | os.PathLike, dst: str | os.PathLike, pid: str,
                  border: int = BORDER, size: int = CROP_SIZE) -> str:
    """Step 2 for one scan, ``tmp`` -> ``dst``; returns a one-line summary."""
    return convert_pair(tmp, dst, pid, SABS.name, lambda image, label, name:
                        (*crop_and_resample(image, label, border, size, name=name), {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder with img*.nii.gz / label*.nii.gz")
    parser.add_argument("--dst", required=True, help="output folder of the normalized scans")
    parser.add_argument("--tmp", default=None,
                        help="step-1 folder (default <dst>/../tmp_normalized)")
    parser.add_argument("--from-tmp", action="store_true",
                        help="skip step 1 and resample the scans already in --tmp")
    parser.add_argument("--window", type=float, nargs=2, default=list(HU_WINDOW),
                        metavar=("LOW", "HIGH"), help="HU window")
    parser.add_argument("--border", type=int, default=BORDER,
                        help="pixels cut from each in-plane border")
    parser.add_argument("--size", type=int, default=CROP_SIZE,
                        help="in-plane size the cropped extent is resampled to (+1 by R1)")
    args = parser.parse_args(argv)
    dst = ensure_writable_dir(args.dst, "--dst")
    tmp = Path(args.tmp) if args.tmp else dst.parent / "tmp_normalized"
    window = (float(args.window[0]), float(args.window[1]))

    if args.from_tmp:
        if not tmp.is_dir():
            raise MissingInput(f"{tmp}: expected the step-1 folder (--from-tmp), found "
                                    f"nothing there")
        pids = discover_cases(tmp)
        if not pids:
            raise MissingInput(f"{tmp}: expected image_<id>.nii.gz files, found none")
    else:
        pairs = find_pairs(args.src)  # checks names before anything is written
        for new_id, (img, lbl) in enumerate(pairs):
            out_img, _ = window_scan(img, lbl, tmp, new_id, window)
            print(f"SABS {new_id}: {img.name} + {lbl.name} windowed {list(window)} -> {out_img}")
        pids = [str(k) for k in range(len(pairs))]

    for pid in pids:
        print(resample_scan(tmp, dst, pid, args.border, args.size))
    register(dst, SABS.name, preprocessing={
        "tool": "data_preprocessing.sabs",
        "source": "Synapse multi-atlas abdomen CT img*/label*.nii.gz, ids 0..N-1 in "
                  "lexicographic order",
        "hu_window": list(window),
        "intensity": "min/max of the clipped volume rescaled to [0, 255]",
        "border": args.border,
        "target_spacing": f"(sx*(nx-2*border)/{args.size}, sy*(ny-2*border)/{args.size}, sz)",
        "size_rule": f"int(n * sp_in / sp_out + 1 + {SIZE_EPS})",
        "interpolation": "linear image (float64), per-label linear + rint labels",
        "dtype": "float64",
    })


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.sabs", main)
