"""Segmenting new scans: input checks, the training preprocessing, and the way back (predict.py).

A new scan of any size and spacing is brought onto the network grid the way the training data
were made (method.md §1.2, §1.3, §3.2), then a prediction on that grid is mapped back onto the scan:

    to the network grid   intensity step → R1 to the target spacing → centre crop / pad to
                          256 x 256 (R3) → z-score of that [Z, 256, 256] volume
    back to the scan      un-crop into the resampled grid → nearest-neighbour resampling onto
                          the original image's grid (its exact size, spacing, origin,
                          direction)

Intensity step: MR clips at the 99.5th percentile (CHAOS-T2 step 3); CT clips HU to
[-125, 275] and rescales to [0, 255] (SABS step 1). The z-score is per volume for both: a new
CT scan has no training fold, and the checkpoint does not record the training-fold mean and std
that SABS uses (method.md §3.2), so per-volume statistics stand in for them. The z-score is taken
over the cropped / padded volume, as the loaders z-score the stored 256 x 256 files.

Target spacing: ``--spacing``, else the training dataset's (CHAOS-T2 1.25 x 1.25 x 7.70 mm);
for CT, which SABS resamples per scan, see :func:`target_spacing`. Every scan of one run uses the
same spacing.

Orientation: every scan is reoriented (axes permuted and flipped, :func:`reorient`) to the
training data's orientation code (CHAOS-T2 LAS; the support's where the dataset has none), so a
scan stored SAL or RAS is segmented along the same anatomical axes as a LAS one, and its
prediction is put back into the scan's own layout (:func:`restore_layout`). An oblique scan (an
axis more than about 26 degrees off every anatomical axis, e.g. cardiac short-axis stacks) is
kept as stored: its slices are segmented along its own z axis.

Modality: :func:`apparent_modality` reads CT in Hounsfield units from the voxels (air and lung,
below -200 HU, in at least 0.1 % of them); MR intensities are never that negative.

Masks are binarised (one label value, or any non-zero) and resampled with R2; the body extent
used by the realistic chunk assignment (method.md §9.5) is found on the scan's intensities before
the z-score, as the loaders do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data_preprocessing.contract import GEOMETRY_TOL
from data_preprocessing.registry import CHAOST2, SABS, DatasetInfo, get_dataset_info
from data_preprocessing.dicom import is_dicom, keep_locale, read_dicom_series
from data_preprocessing.preprocess import HU_AIR, apparent_modality, is_oblique, preprocess, \
    reorient
from data_preprocessing.preprocess import orientation as orientation_code
from data_preprocessing.resample import (BORDER, CROP_SIZE, crop_or_pad_volume, crop_windows,
                                         full_spacing, resample_label)
from dataloaders.volumes import Volume, body_extent, normalize
from inference.loader import ORIGINAL_ASSUMED, build_model, resolve_weights
from models.alpnet import ALPNet
from util.io import array_to_image, check_scan, read_image
from util.errors import InputError, MissingInput

MODALITIES = ("MR", "CT")
# SABS maps the central 448 of 512 pixels (a 32-pixel border cut off) onto 256 (method.md §1.3).
SABS_FOV_FRACTION = 1 - 2 * BORDER / 512
MAX_MASK_VALUES = 64  # more distinct values than this: an image, not a label map


@dataclass(frozen=True)
class Grid:
    """An image's voxel grid without its voxels: SITK array shape (Z, Y, X) and geometry."""

    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(shape=tuple(reversed(image.GetSize())), spacing=image.GetSpacing(),
                   origin=image.GetOrigin(), direction=image.GetDirection())


@dataclass
class PreparedScan:
    """A scan on the network grid: ``image`` [Z, 256, 256] float32 z-scored, ``body_z`` the
    first and last slice with intensity above the body threshold (all slices when none),
    ``grid`` the resampled grid the 256 x 256 crop was taken from, ``source`` the grid of the
    scan as read (where predictions go back to)."""

    image: np.ndarray
    body_z: tuple[int, int]
    grid: Grid
    source: Grid


# ---------------------------------------------------------------- reading and checking inputs

def read_scan(path: str | os.PathLike, what: str = "image") -> sitk.Image:
    """A scalar 3-D image; missing, unreadable, truncated or other-dimensional files raise. A
    folder holding one DICOM series is read as that volume; one DICOM file of a series is
    refused with the folder to give instead."""
    path = Path(path)
    if path.is_dir():
        image = read_dicom_folder(path, what)
    elif path.is_file() and is_dicom(path):
        raise InputError(f"{path}: expected a volume, found one DICOM slice; give its series "
                         f"folder {path.parent} as the {what}")
    else:
        image = read_image(path)
    return check_scan(image, path, what, varying="image" in what)


def read_dicom_folder(folder: Path, what: str) -> sitk.Image:
    """The one DICOM series of ``folder`` (several: an error listing them)."""
    with keep_locale():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise MissingInput(f"{folder}: expected an image file or a folder of one DICOM "
                                f"series as the {what}, found a folder without DICOM series")
    if len(uids) > 1:
        raise InputError(f"{folder}: expected one DICOM series as the {what}, found "
                         f"{len(uids)}: {', '.join(uids)}; put each series in its own folder")
    with keep_locale():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0])
    return read_dicom_series(tuple(Path(f) for f in files), str(folder))


def check_same_grid(image: sitk.Image, mask: sitk.Image, image_path: str | os.PathLike,
                    mask_path: str | os.PathLike, tol: float = GEOMETRY_TOL) -> None:
    """The mask must share the image's size, and its spacing, origin, direction within ``tol``."""
    if mask.GetSize() != image.GetSize():
        raise InputError(f"{mask_path}: expected the size of the support image {image_path} "
                         f"{image.GetSize()}, found {mask.GetSize()}")
    for key in ("Spacing", "Origin", "Direction"):
        want, got = getattr(image, f"Get{key}")(), getattr(mask, f"Get{key}")()
        if not np.allclose(want, got, rtol=0.0, atol=tol):
            raise InputError(f"{mask_path}: expected the {key.lower()} of the support image "
                             f"{image_path} {_fmt(want)} (tolerance {tol:g}), found {_fmt(got)}; "
                             f"the mask must be drawn on the support image's grid")


def binary_mask(mask: sitk.Image, path: str | os.PathLike,
                label: float | None = None) -> np.ndarray:
    """SITK array (Z, Y, X) uint8: 1 where the mask equals ``label`` (None: is non-zero)."""
    arr = sitk.GetArrayViewFromImage(mask)
    values = np.unique(arr)
    if not np.array_equal(values, np.rint(values)) or values.size > MAX_MASK_VALUES:
        shown = ", ".join(f"{v:g}" for v in values[:8])
        raise InputError(f"{path}: expected a label map (a few integer values) as the support "
                         f"mask, found {values.size} distinct values ({shown} ...), an image; "
                         f"give the organ's mask (with --label for a multi-organ map)")
    if label is None:
        out = arr != 0
        if not out.any():
            raise InputError(f"{path}: expected a support mask with some non-zero voxels, found "
                             f"an empty mask (all 0)")
    else:
        out = arr == label
        if not out.any():
            values = np.unique(arr)
            shown = ", ".join(f"{v:g}" for v in values[:20]) + (" ..." if values.size > 20 else "")
            raise InputError(f"{path}: expected voxels with label value {label:g} (--label), "
                             f"found only the values {shown}")
    return out.astype(np.uint8)


def merged_labels_warning(mask: sitk.Image, path: str | os.PathLike,
                          label: float | None) -> str | None:
    """A warning when a multi-organ label map is used without ``--label``: its organs merge."""
    if label is not None:
        return None
    values = [v for v in np.unique(sitk.GetArrayViewFromImage(mask)).tolist() if v != 0]
    if len(values) < 2:
        return None
    shown = ", ".join(f"{v:g}" for v in values)
    return (f"WARNING: {path} holds {len(values)} labels ({shown}); without --label they are "
            f"merged into one organ; pass --label to choose one")


def output_path(out_dir: str | os.PathLike, query: str | os.PathLike) -> Path:
    """``<out_dir>/<query name without .nii.gz / .nii / other extension>_pred.nii.gz``."""
    stem = Path(Path(query).name.removesuffix(".gz")).stem
    return Path(out_dir) / f"{stem}_pred.nii.gz"


def orientation(image: sitk.Image | Grid) -> str:
    """The three-letter orientation code of the image axes (e.g. 'LAS'); the closest one for an
    oblique image."""
    return orientation_code(image.direction if isinstance(image, Grid) else image.GetDirection())


def restore_layout(result: sitk.Image, stored: Grid, name: str) -> sitk.Image:
    """Undo :func:`reorient`: ``result`` (on the reoriented grid) in the axis order of the scan
    as stored, with exactly its geometry."""
    back = reorient(result, orientation(stored))
    grid = Grid.of(back)
    same = np.allclose(grid.direction, stored.direction, atol=GEOMETRY_TOL)
    if grid.shape != stored.shape or not same:
        raise RuntimeError(f"{name}: reorienting the prediction back gave size "
                           f"{tuple(reversed(grid.shape))}, direction {_fmt(grid.direction)}; "
                           f"expected the scan's {tuple(reversed(stored.shape))}, "
                           f"{_fmt(stored.direction)}")
    back.SetOrigin(stored.origin)  # the same point, without the rounding of the permutation
    back.SetSpacing(stored.spacing)
    back.SetDirection(stored.direction)
    return back


def check_modality(image: sitk.Image, modality: str, explicit: bool, name: str,
                   source: str = "this checkpoint") -> str | None:
    """Stop when ``image`` looks like another modality than ``modality`` (that of ``source``,
    the checkpoint), or return a warning when ``modality`` was given explicitly; None when they
    agree."""
    seen, fraction = apparent_modality(image)
    if seen == modality:
        return None
    found = (f"{100 * fraction:.1f} % of its voxels below {HU_AIR:g}, air in Hounsfield units "
             f"(a CT)" if seen == "CT" else f"only {100 * fraction:.2f} % of its voxels below "
             f"{HU_AIR:g}, no air in Hounsfield units (not a CT)")
    if explicit:
        return f"WARNING: {name}: segmented as {modality} (--modality), but found {found}"
    article = "an" if modality == "MR" else "a"
    raise InputError(f"{name}: expected {article} {modality} scan for {source}, found "
                     f"{found}; pass --modality {seen} to preprocess it as {seen}, or --modality "
                     f"{modality} to keep {modality} preprocessing")


# ---------------------------------------------------------------- preprocessing settings

def trained_on(cfg: dict, record: dict | None) -> DatasetInfo | None:
    """The preprocessing record a checkpoint was trained with: its own (checkpoints carry it),
    else the preset its config names (checkpoints written before they carried it), else None
    (the original code's snapshots)."""
    if record:
        return DatasetInfo.from_record(record, "the checkpoint's dataset record")
    try:
        return get_dataset_info(cfg["dataset"]) if cfg.get("dataset") else None
    except KeyError:
        return None


def dataset_info(modality: str, trained: DatasetInfo | None = None) -> DatasetInfo:
    """The preprocessing a new scan follows: the checkpoint's record when it has ``modality``;
    otherwise the CHAOS-T2 preset for MR, SABS for CT."""
    if modality not in MODALITIES:
        raise InputError(f"modality: expected one of {MODALITIES}, got {modality!r}")
    if trained is not None and trained.modality == modality:
        return trained
    return CHAOST2 if modality == "MR" else SABS


def checkpoint_modality(trained: DatasetInfo | None) -> str:
    """The modality a checkpoint was trained on; MR when it records none."""
    return trained.modality if trained is not None else "MR"


def target_orientation(info: DatasetInfo, support: sitk.Image, code: str = "auto") -> str | None:
    """The orientation code every scan is brought to: ``code`` itself unless "auto" (the
    dataset's, else the support's unless it is oblique) or "stored"; None: no scan is
    reoriented."""
    if code == "stored":
        return None
    if code == "auto":  # an oblique support of a dataset without one orientation: none
        if info.orientation is None and is_oblique(support):
            return None
        return info.orientation or orientation(support)
    if len(code) != 3 or {code[0], code[1], code[2]} - set("LRAPSI") or len(
            {c.translate(str.maketrans("RPI", "LAS")) for c in code}) != 3:
        raise InputError(f"--orientation: expected auto, stored or a code of three letters from "
                         f"L/R, A/P, S/I (one of each pair, e.g. LAS), got {code!r}")
    return code


def checkpoint_warnings(trained: DatasetInfo | None, modality: str,
                        path: str | os.PathLike) -> list[str]:
    """Loud lines for a checkpoint applied to data unlike its training data: the synthetic
    phantom, or scans of another modality."""
    if trained is None:
        return []
    lines = []
    if trained.name.upper() == "PHANTOM":
        lines.append(f"WARNING: {path} was trained on PHANTOM, the synthetic test data; its masks "
                     f"on real scans mean nothing")
    if trained.modality != modality:
        lines.append(f"WARNING: {path} was trained on {trained.name} ({trained.modality}), but "
                     f"these scans are preprocessed as {modality}; expect poor masks")
    return lines


def target_spacing(info: DatasetInfo, support: sitk.Image,
                   spacing: list[float] | None = None) -> tuple[float, float, float]:
    """The spacing every scan is resampled to: ``spacing`` if given (2 values keep the support's
    z spacing), else the dataset's (CHAOS-T2 1.25 x 1.25 x 7.70 mm). SABS has none (each scan
    keeps its own, ``s * 1.75`` in-plane); here one square in-plane spacing maps the central 7/8
    of the support's larger field-of-view axis onto 256 pixels (for a 512 x 512 scan exactly
    ``s * 1.75``) and z is the support's, so support and queries share one scale."""
    if spacing is not None:
        out = full_spacing(support, spacing)
    elif info.target_spacing is not None:
        out = tuple(float(s) for s in info.target_spacing)
    else:
        (sx, sy, sz), (nx, ny, _) = support.GetSpacing(), support.GetSize()
        s = max(sx * nx, sy * ny) * SABS_FOV_FRACTION / CROP_SIZE
        out = (s, s, sz)
    if len(out) != 3 or not all(np.isfinite(s) and s > 0 for s in out):
        raise InputError(f"spacing: expected three positive values (x, y, z) in mm, got {out}")
    return out


# ---------------------------------------------------------------- to the network grid and back

def prepare_scan(image: sitk.Image, spacing: tuple[float, float, float], info: DatasetInfo,
                 name: str = "scan") -> PreparedScan:
    """:func:`data_preprocessing.preprocess.preprocess` (the importers' own step) at
    ``spacing``, then the per-volume z-score of the loaders."""
    prepared = preprocess(image, info, spacing, name)
    cropped = sitk.GetArrayFromImage(prepared.image).astype(np.float32)
    body_z = body_extent(cropped, info.body_threshold) or (0, cropped.shape[0] - 1)
    return PreparedScan(image=normalize(cropped, "zscore_volume", where=name), body_z=body_z,
                        grid=Grid.of(prepared.resampled), source=Grid.of(image))


def coverage_warning(prepared: PreparedScan, name: str,
                     least: int = CROP_SIZE // 8) -> str | None:
    """A warning when a scan, resampled, spans fewer than ``least`` pixels along an in-plane axis
    (a thin slab, or a slice cut across the body): its mask will be near empty."""
    rows, cols = prepared.grid.shape[1:]
    if min(rows, cols) >= least:
        return None
    return (f"WARNING: {name} is only {rows} x {cols} pixels in-plane after resampling to "
            f"{_fmt(prepared.grid.spacing)} mm (the network sees {CROP_SIZE} x {CROP_SIZE}); "
            f"expect an empty or meaningless mask")


def prepare_mask(mask01: np.ndarray, image: sitk.Image, prepared: PreparedScan,
                 name: str = "mask") -> np.ndarray:
    """A binary SITK-array mask on ``image``'s grid → [Z, 256, 256] uint8 on the network grid."""
    mask = array_to_image(mask01.astype(np.uint8), image)
    resampled = sitk.GetArrayFromImage(resample_label(mask, prepared.grid.spacing))
    assert resampled.shape == prepared.grid.shape, (resampled.shape, prepared.grid.shape)
    if not resampled.any():
        raise InputError(f"{name}: expected the support mask to survive resampling to "
                         f"{_fmt(prepared.grid.spacing)} mm, found it empty afterwards (the "
                         f"structure is smaller than half a voxel); choose a finer --spacing")
    size = prepared.image.shape[-1]
    out = crop_or_pad_volume(resampled, size, 0.0).astype(np.uint8)
    if not out.any():
        raise InputError(f"{name}: expected the support mask inside the central "
                         f"{size} x {size} field of view at {_fmt(prepared.grid.spacing)}"
                         f" mm, found it entirely outside; use a larger --spacing")
    return out


def support_volume(pid: str, prepared: PreparedScan, mask: np.ndarray) -> Volume:
    """The support scan as a :class:`Volume` with class 1 = the mask (for ``build_support``)."""
    return Volume(pid=pid, image=prepared.image, label=mask, body_z=prepared.body_z)


def uncrop_volume(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of R3: put a (Z, 256, 256) array back into a zero (Z, Y, X) array of ``shape``.

    Source pixel ``(n // 2 - 128 + r)`` became output pixel ``r`` (per in-plane axis), so the
    part of ``arr`` that came from inside the grid goes back there; padding is dropped and pixels
    cropped away stay 0.
    """
    if arr.ndim != 3 or arr.shape[0] != shape[0]:
        raise InputError(f"uncrop_volume: expected (Z={shape[0]}, H, W), got {arr.shape}")
    out = np.zeros(shape, arr.dtype)
    grid, net = crop_windows(shape[1:], arr.shape[1])  # the crop's source and output windows
    out[:, grid[0], grid[1]] = arr[:, net[0], net[1]]
    return out


def to_original(pred: np.ndarray, prepared: PreparedScan) -> sitk.Image:
    """A [Z, 256, 256] label map on the network grid → uint8 image on the scan's own grid.

    Un-crop into the resampled grid (same origin and direction as the scan), then resample with
    nearest neighbour onto the scan's size, spacing, origin and direction (the scan's geometry
    is the reference; its voxels are not needed).
    """
    grid, ref = prepared.grid, prepared.source
    full = sitk.GetImageFromArray(uncrop_volume(pred.astype(np.uint8), grid.shape))
    full.SetSpacing(grid.spacing)
    full.SetOrigin(grid.origin)
    full.SetDirection(grid.direction)
    return sitk.Resample(full, tuple(reversed(ref.shape)), sitk.Transform(),
                         sitk.sitkNearestNeighbor, ref.origin, ref.spacing, ref.direction, 0,
                         sitk.sitkUInt8)


# ---------------------------------------------------------------- the model

def load_model(path: str | os.PathLike, encoder: str | None,
               device: torch.device) -> tuple[ALPNet, dict, DatasetInfo | None]:
    """The model of a checkpoint in eval mode, the training config it holds ({} if none) and the
    preprocessing record it was trained with (:func:`trained_on`),
    through the one loader: our checkpoints bring their architecture (``encoder``, when given,
    must agree), a bare state dict of the original code is built as ``encoder`` (default
    deeplabv3_resnet101) with the original's defaults. Precision and memory layout are chosen
    for this machine (``auto``)."""
    weights = resolve_weights(path)  # a file or a training run folder
    base = {"encoder": encoder or "deeplabv3_resnet101", **ORIGINAL_ASSUMED,
            "pretrained_weights": None, "bf16": "auto", "channels_last": "auto"}
    model = build_model(base, device, weights, explicit=("encoder",) if encoder else (),
                        flags={"encoder": "--encoder"})
    return model.eval(), weights.config, trained_on(weights.config, weights.record)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
