"""Check a dataset folder against its contract; collect every problem and raise once.

Checked per case: image and label present and readable, equal shape and geometry (spacing,
origin, direction), finite intensities, label values within the declared set; per recorded
pseudolabel scale: file present, same grid, non-empty, superpixels on every body slice; every
recorded class map equals the one rebuilt from the labels; folds name known cases.

    python -m data_preprocessing.verify --dir data/CHAOST2
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_preprocessing.classmap import slice_index
from data_preprocessing.contract import GEOMETRY_TOL, Dataset, load_dataset
from util.io import read_image, read_json, sort_pids
from util.errors import InputError



class DatasetVerificationError(InputError):
    """Raised with the full list of problems found in a dataset folder."""

    def __init__(self, folder: Path, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{folder}: {len(problems)} problem(s) found:\n{lines}")


def _geometry(image: sitk.Image) -> dict:
    return {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
            "direction": image.GetDirection()}


def _fmt(values) -> tuple[float, ...]:
    return tuple(round(float(v), 5) for v in values)


def _compare_grid(ref: sitk.Image, ref_path: Path, other: sitk.Image, other_path: Path,
                  problems: list[str]) -> bool:
    if ref.GetSize() != other.GetSize():
        problems.append(f"{other_path}: expected size {ref.GetSize()} (as {ref_path.name}), "
                        f"found {other.GetSize()}")
        return False
    for key, want in _geometry(ref).items():
        got = _geometry(other)[key]
        if not np.allclose(want, got, atol=GEOMETRY_TOL):
            problems.append(f"{other_path}: expected {key} {_fmt(want)} (as {ref_path.name}), "
                            f"found {_fmt(got)}")
    return True


def _try_read(path: Path, problems: list[str]) -> sitk.Image | None:
    try:
        return read_image(path)
    except (FileNotFoundError, ValueError) as err:
        problems.append(str(err))
        return None


def _allowed_label_values(ds: Dataset) -> set[int]:
    raw = ds.raw_label_values
    return {0, *raw} if raw else set(ds.labels)


def _check_case(ds: Dataset, pid: str, problems: list[str],
                labelled: bool = True) -> np.ndarray | None:
    """Check one case; return its class-id label array [Z, H, W] when readable."""
    image_path, label_path = ds.path("image", pid), ds.path("label", pid)
    image = _try_read(image_path, problems)
    label = _try_read(label_path, problems) if labelled else None
    # non-finite voxels, truncation, empty files and non-3-D images fail read_image (listed)
    if image is not None:
        arr = sitk.GetArrayViewFromImage(image)
        if arr.min() == arr.max():
            problems.append(f"{image_path}: expected an image with varying intensities, found "
                            f"a constant image (every voxel {float(arr.min()):g})")
            image = None  # its pseudolabels would only repeat the problem
    label_ids = None
    if label is not None:
        if image is not None:
            _compare_grid(image, image_path, label, label_path, problems)
        lab = sitk.GetArrayFromImage(label)
        allowed = _allowed_label_values(ds)
        values = np.unique(lab[np.isfinite(lab)])
        unknown = [float(v) for v in values if v != np.rint(v) or int(v) not in allowed]
        if unknown or not np.all(np.isfinite(lab)):
            problems.append(f"{label_path}: expected label values {sorted(allowed)}, found "
                            f"{sorted(unknown) or 'NaN/inf'}")
        else:
            label_ids = lab.astype(np.int64)
            for raw, cid in ds.raw_label_values.items():
                label_ids[lab == raw] = cid
    if image is not None:
        for scale in ds.meta.get("pseudolabels", {}):
            _check_pseudolabel(ds, pid, scale, image, image_path, problems)
    return label_ids


def _check_pseudolabel(ds: Dataset, pid: str, scale: str, image: sitk.Image, image_path: Path,
                       problems: list[str]) -> None:
    path = ds.path("pseudolabel", pid, scale)
    sp = _try_read(path, problems)
    if sp is None or not _compare_grid(image, image_path, sp, path, problems):
        return
    ids = sitk.GetArrayFromImage(sp)
    if not ids.any():
        problems.append(f"{path}: expected superpixel ids on body slices, found an all-zero file")
        return
    body = (sitk.GetArrayFromImage(image) > float(ds.meta["body_threshold"]))
    body_slices = np.flatnonzero(body.reshape(body.shape[0], -1).any(axis=1))
    empty = [int(z) for z in body_slices if not ids[z].any()]
    if empty:
        problems.append(f"{path}: expected superpixels on every body slice, found none on "
                        f"slice(s) {empty}")


def _check_classmaps(ds: Dataset, label_ids: dict[str, np.ndarray],
                     problems: list[str]) -> None:
    for min_tp in ds.meta.get("classmaps", []):
        path = ds.classmap_path(min_tp)
        try:
            recorded = read_json(path)
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
            continue
        missing_names = sorted(set(ds.labels.values()) - set(recorded))
        if missing_names:
            problems.append(f"{path}: expected class keys {sorted(ds.labels.values())}, "
                            f"missing {missing_names}")
        for pid, lab in label_ids.items():
            for name, zs in slice_index(lab, ds.labels, min_tp).items():
                got = recorded.get(name, {}).get(pid)
                if got != zs:
                    problems.append(f"{path}: {name} of scan {pid} disagrees with "
                                    f"{ds.path('label', pid).name}: expected slices {zs}, "
                                    f"found {got}")


def _check_splits(ds: Dataset, problems: list[str]) -> None:
    # a published dataset needs its folds; a folder of one's own without (enough) labels trains
    # on every scan without them
    if not ds.splits["folds"] and not ds.splits.get("no_folds") and ds.meta.get("preset"):
        problems.append(f"{ds.root / 'splits.json'}: expected folds for training and validation, "
                        f"found none ({ds.splits.get('note') or f'{len(ds.cases)} scans'}); "
                        f"bring the dataset's scans, or re-register with --no-folds to mark the "
                        f"folder as preprocessing-only")
    known = set(ds.cases)
    for fold in ds.splits["folds"]:
        for role in ("train", "query", "support"):
            unknown = [p for p in fold.get(role, []) if p not in known]
            if unknown:
                problems.append(f"{ds.root / 'splits.json'}: fold {fold.get('fold')} {role} "
                                f"names unknown case(s) {unknown}; known: {sort_pids(known)}")


def verify_dataset(folder: str | os.PathLike, pseudolabels: bool = True) -> Dataset:
    """Verify ``folder``; raise :class:`DatasetVerificationError` listing every problem. With
    ``pseudolabels`` (the default) the folder must hold a pseudolabel set to train on."""
    folder = Path(folder)
    ds = load_dataset(folder)
    problems: list[str] = []
    if pseudolabels and not ds.meta.get("pseudolabels"):
        problems.append(f"{folder / 'dataset.json'}: expected a pseudolabel set to train on, "
                        f"found none; generate it with `python -m data_preprocessing.superpixels "
                        f"--dir {folder}`, or verify with --without-pseudolabels for validation "
                        f"or manual-label training only")
    on_disk = {p.name for p in folder.glob("image_*.nii.gz")}
    labelled = set(ds.labelled)
    for pid in ds.cases:
        for kind in ("image", "label") if pid in labelled else ("image",):
            if not ds.path(kind, pid).exists():
                problems.append(f"{ds.path(kind, pid)}: expected the {kind} of case {pid} "
                                f"(listed in dataset.json), found nothing there")
    extra = sorted(on_disk - {ds.path("image", p).name for p in ds.cases})
    if extra:
        problems.append(f"{folder / 'dataset.json'}: expected every image to be listed, found "
                        f"unlisted {extra}; re-register the folder")
    label_ids = {}
    for pid in ds.cases:
        if ds.path("image", pid).exists() or ds.path("label", pid).exists():
            lab = _check_case(ds, pid, problems, pid in labelled)
            if lab is not None:
                label_ids[pid] = lab
    _check_classmaps(ds, label_ids, problems)
    _check_splits(ds, problems)
    if label_ids and len(label_ids) == len(labelled):
        present = set().union(*(np.unique(lab).tolist() for lab in label_ids.values()))
        missing = [ds.labels[c] for c in ds.meta["all_test_labels"] if c not in present]
        if missing:
            problems.append(f"{folder / 'dataset.json'}: expected the {ds.name} classes "
                            f"{[ds.labels[c] for c in ds.meta['all_test_labels']]} in the labels, "
                            f"found no voxel of {missing} in any scan")
    if problems:
        raise DatasetVerificationError(folder, problems)
    return ds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="registered dataset folder")
    parser.add_argument("--without-pseudolabels", action="store_true",
                        help="the folder is for validation or manual-label training only: no "
                             "pseudolabel set is needed")
    args = parser.parse_args(argv)
    ds = verify_dataset(args.dir, pseudolabels=not args.without_pseudolabels)
    folds = (f"{len(ds.splits['folds'])} folds" if ds.splits["folds"]
             else "no folds (preprocessing only)")
    print(f"{args.dir}: {ds.name} ({ds.meta['modality']}), {len(ds.cases)} cases verified, {folds} "
          f"(pseudolabels: {sorted(ds.meta.get('pseudolabels', {}))}, "
          f"classmaps: {ds.meta.get('classmaps', [])})")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.verify", main)
