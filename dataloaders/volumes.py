"""Scan loading and intensity normalisation for episodes (method.md §3.2, §6.1).

Volumes are kept in memory as **(Z, H, W)** arrays, axis 0 being the SITK array's slice axis, so
``volume[z]`` is one contiguous 2-D slice and ``z`` is the index used by ``classmap_<N>.json``.
(The original transposes to (H, W, Z); the slice index and the in-plane crop are the same.)

Normalisation, by the dataset's ``dataset.json`` rule:

- ``zscore_volume`` (MR): per volume ``(x − mean) / std`` with the population std over every
  voxel as stored (padding and the trailing zero slice included);
- ``zscore_train_fold`` (CT): one mean and population std over every voxel of every
  training-fold image as stored (SABS: 257×257×(Z+1)), from :func:`train_fold_stats` (one
  streaming pass, float64 accumulators, per-file statistics merged with Chan's formula).

The image is normalised as a whole, then cropped to ``[:, :256, :256]``. Labels are mapped to
class ids with :func:`data_preprocessing.contract.map_label_values` (CMR 200/500/600 → 1/2/3).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data_preprocessing.contract import Dataset, load_dataset, map_label_values
from data_preprocessing.resample import CROP_SIZE
from util.io import check_scan, read_array, read_image
from util.errors import InputError, MissingInput

__all__ = ["NormStats", "Volume", "as_dataset", "train_fold_stats", "normalization_stats",
           "normalize", "body_extent", "load_volume", "load_volumes", "NORMALIZATIONS",
           "tile_grey", "tile_slices"]

NORMALIZATIONS = ("zscore_volume", "zscore_train_fold")
CROP = CROP_SIZE  # the in-plane size the network sees (resample.CROP_SIZE)


@dataclass(frozen=True)
class NormStats:
    """Global intensity statistics of a set of scans (CT training-fold normalisation)."""

    mean: float
    std: float
    n_voxels: int


@dataclass
class Volume:
    """One scan in memory; every array is (Z, H, W) and cropped to ``[:, :256, :256]``.

    ``image`` float32, normalised; ``label`` uint8 class ids or None; ``superpix`` int32
    pseudolabel ids or None; ``body_z`` the first and last slice holding any raw intensity above
    the dataset's body threshold (None when no slice does), computed from the image alone.
    """

    pid: str
    image: np.ndarray
    label: np.ndarray | None = None
    superpix: np.ndarray | None = None
    body_z: tuple[int, int] | None = None

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])


def as_dataset(dataset: Dataset | str | os.PathLike) -> Dataset:
    """A :class:`Dataset` from itself or from a registered folder's path."""
    return dataset if isinstance(dataset, Dataset) else load_dataset(dataset)


def _read_image(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(check_scan(read_image(path), path)).astype(np.float32)


def train_fold_stats(dataset: Dataset | str | os.PathLike, pids: list[str]) -> NormStats:
    """Mean and population std over every voxel of the images ``pids``, read as stored."""
    ds = as_dataset(dataset)
    if not pids:
        raise InputError(f"{ds.root}: expected at least one training scan for the "
                         f"normalisation statistics, got none")
    n, mean, m2 = 0, 0.0, 0.0
    for pid in pids:
        x = read_array(ds.path("image", pid)).astype(np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise InputError(f"{ds.path('image', pid)}: expected finite intensities, found NaN "
                             f"or inf")
        nb, mean_b = x.size, float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        delta = mean_b - mean
        total = n + nb
        mean += delta * nb / total
        m2 += m2_b + delta * delta * n * nb / total
        n = total
    std = float(np.sqrt(m2 / n))
    if not std > 0:
        raise InputError(f"{ds.root}: expected varying intensities over scans {pids}, found a "
                         f"constant image set (std 0)")
    return NormStats(mean=float(mean), std=std, n_voxels=int(n))


def normalization_stats(dataset: Dataset | str | os.PathLike,
                        train_pids: list[str]) -> NormStats | None:
    """Training-fold statistics when the dataset's rule needs them (CT), else None (MR)."""
    ds = as_dataset(dataset)
    rule = ds.meta["normalization"]
    if rule == "zscore_volume":
        return None
    if rule == "zscore_train_fold":
        return train_fold_stats(ds, train_pids)
    raise InputError(f"{ds.root / 'dataset.json'}: normalization expected one of "
                     f"{NORMALIZATIONS}, found {rule!r}")


def normalize(image: np.ndarray, rule: str, stats: NormStats | None = None,
              where: str = "image") -> np.ndarray:
    """Z-score ``image`` by ``rule``; float32 out."""
    if rule == "zscore_volume":
        mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
        if not std > 0:
            raise InputError(f"{where}: expected a non-constant volume to z-score, found std 0")
    elif rule == "zscore_train_fold":
        if stats is None:
            raise InputError(f"{where}: normalization 'zscore_train_fold' needs the training-fold "
                             f"statistics; pass stats=train_fold_stats(dataset, train_pids)")
        mean, std = stats.mean, stats.std
    else:
        raise InputError(f"{where}: normalization expected one of {NORMALIZATIONS}, got {rule!r}")
    return ((image - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)


def body_extent(raw: np.ndarray, threshold: float) -> tuple[int, int] | None:
    """First and last slice of a raw (Z, H, W) image with any voxel above ``threshold``."""
    zs = np.flatnonzero((raw > threshold).reshape(raw.shape[0], -1).any(axis=1))
    return (int(zs[0]), int(zs[-1])) if zs.size else None




def pseudolabel_command(root, scale: str) -> str:
    """The command that writes pseudolabels of ``scale``: supervoxels for ``SV<min_size>``,
    2-D superpixels otherwise."""
    if scale.startswith("SV") and scale[2:].isdigit():
        return f"`python -m data_preprocessing.supervoxels --dir {root} --min-size {scale[2:]}`"
    return f"`python -m data_preprocessing.superpixels --dir {root} --scale {scale}`"


def _crop(arr: np.ndarray, crop: int | None) -> np.ndarray:
    return arr if crop is None else np.ascontiguousarray(arr[:, :crop, :crop])


def load_volume(dataset: Dataset | str | os.PathLike, pid: str, *, stats: NormStats | None = None,
                label: bool = True, superpix_scale: str | None = None,
                crop: int | None = CROP) -> Volume:
    """Read, normalise and crop one scan; optionally its label and pseudolabel."""
    ds = as_dataset(dataset)
    image_path = ds.path("image", pid)
    raw = _read_image(image_path)
    image = normalize(raw, ds.meta["normalization"], stats, str(image_path))
    body_z = body_extent(_crop(raw, crop), float(ds.meta.get("body_threshold", 0.0)))
    vol = Volume(pid=pid, image=_crop(image, crop), body_z=body_z)
    if label:
        path = ds.path("label", pid)
        lab = read_array(path)
        if lab.shape != raw.shape:
            raise InputError(f"{path}: expected the image's shape {raw.shape}, found {lab.shape}")
        lab = map_label_values(lab, ds.raw_label_values, str(path))
        unknown = sorted(set(np.unique(lab).tolist()) - set(ds.labels))
        if unknown:
            raise InputError(f"{path}: expected the label values of {ds.root / 'dataset.json'} "
                             f"{sorted(ds.labels)}, found unknown {unknown}")
        vol.label = _crop(lab.astype(np.uint8), crop)
    if superpix_scale is not None:
        path = ds.path("pseudolabel", pid, superpix_scale)
        if not path.is_file():
            raise MissingInput(
                f"{path}: expected pseudolabels of scale {superpix_scale!r} for scan {pid}, found "
                f"nothing there; generate them with {pseudolabel_command(ds.root, superpix_scale)}")
        sp = read_array(path)
        if sp.shape != raw.shape:
            raise InputError(f"{path}: expected the image's shape {raw.shape}, found {sp.shape}")
        if not np.array_equal(sp, np.rint(sp)) or sp.min(initial=0) < 0:
            raise InputError(f"{path}: expected non-negative integer pseudolabel ids, found "
                             f"other values")
        vol.superpix = _crop(sp.astype(np.int32), crop)
    return vol


def load_volumes(dataset: Dataset | str | os.PathLike, pids: list[str], *,
                 stats: NormStats | None = None, label: bool = True,
                 superpix_scale: str | None = None, crop: int | None = CROP) -> list[Volume]:
    """:func:`load_volume` for each of ``pids``, in the given order."""
    ds = as_dataset(dataset)
    unknown = [p for p in pids if p not in ds.cases]
    if unknown:
        raise InputError(f"{ds.root}: expected scan ids among {ds.cases}, got unknown {unknown}")
    return [load_volume(ds, p, stats=stats, label=label, superpix_scale=superpix_scale, crop=crop)
            for p in pids]


def tile_grey(grey: torch.Tensor) -> torch.Tensor:
    """Grey slices [..., H, W] as the network's input [..., 3, H, W]: three identical channels,
    a view (no copy; ``.contiguous()`` makes one)."""
    return grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:])


def tile_slices(images: Sequence[np.ndarray]) -> torch.Tensor:
    """[n] × [H, W] float → [n, 3, H, W] contiguous float32 tensor (:func:`tile_grey`)."""
    return tile_grey(torch.from_numpy(np.stack(images).astype(np.float32, copy=False))).contiguous()
