"""One scan onto the network grid, as a dataset's preprocessing record says (docs/own_scans.md).

:func:`preprocess` is the one transformation from a scan as read to the stored array that the
loaders read: the importers (:mod:`data_preprocessing.importers`), the published MR pipelines
(:func:`data_preprocessing.resample.normalize_resample_crop`) and ``predict.py``
(:func:`inference.predict.prepare_scan`) all call it, so a scan is treated alike when a dataset
is prepared and when a trained model segments it.

    intensity step (record "intensity")  MR: clip at the 99.5th percentile (dtype kept), and for
                                         imported MR folders rescale [min, clip] to [0, 1000]
                                         CT: HU window [-125, 275] rescaled to [0, 255]
    R1 to the target spacing             linear, the "+1" size rule (resample.resample_to_spacing)
    R3 centre crop / pad                 to size x size in-plane, padded with the minimum

Labels follow with :func:`preprocess_label` (R2 on their own grid, then R3 padded with 0).
Orientation (:func:`reorient`) is a separate step: importers bring every scan to the dataset's
orientation code before :func:`preprocess`; ``predict.py`` does the same with its own options.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from data_preprocessing.registry import INTENSITY_PARAMETERS, DatasetInfo
from data_preprocessing.resample import (clip_percentile, crop_or_pad_volume, full_spacing,
                                         resample_label, resample_to_spacing, window_ct)
from util.io import array_to_image, array_with_geometry, check_scan
from util.errors import InputError

INTENSITY_RULES = tuple(INTENSITY_PARAMETERS)
OBLIQUE_COS = 0.9
HU_AIR = -200.0  # below this: air or lung on a CT; MR intensities never go there
CT_AIR_FRACTION = 0.001


@dataclass
class Preprocessed:
    """A scan on the network grid: ``image`` the stored float64 image (size x size in-plane, the
    resampled grid's spacing, origin and direction), ``resampled`` the R1 grid before the crop
    (its voxels: predictions go back through it) and ``clip_value`` (MR) or None."""

    image: sitk.Image
    resampled: sitk.Image
    clip_value: float | None


def intensity_step(arr: np.ndarray, rule: dict, name: str = "scan") -> tuple[np.ndarray,
                                                                              float | None]:
    """The record's intensity rule on a SITK array; returns (array, MR clip value or None)."""
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: expected finite intensities, found NaN or inf")
    kind = rule.get("rule")
    if kind == "clip_percentile":
        out, clip = clip_percentile(arr, float(rule["percentile"]))
        if rule.get("rescale") is not None:
            lo, hi = (float(v) for v in rule["rescale"])
            low = float(out.min())
            if not clip > low:
                raise InputError(f"{name}: expected intensities below the "
                                 f"{rule['percentile']}th percentile, found a volume that is "
                                 f"constant up to it ({low:g})")
            out = lo + (out.astype(np.float64) - low) * ((hi - lo) / (clip - low))
        return out, clip
    if kind == "ct_window":
        return window_ct(arr, tuple(float(v) for v in rule["window"]), name), None
    raise InputError(f"{name}: intensity rule expected one of {INTENSITY_RULES}, found {kind!r}")


def preprocess(image: sitk.Image, info: DatasetInfo, spacing: Sequence[float] | None = None,
               name: str = "scan") -> Preprocessed:
    """``image`` as the record ``info`` says: its intensity rule, R1 to ``spacing`` (default:
    the record's target spacing; 2 values keep the image's z spacing), R3 to its in-plane size."""
    if spacing is None:
        spacing = info.target_spacing
    if spacing is None:
        raise InputError(f"{name}: the {info.name} record resamples each scan to its own "
                         f"spacing (no target spacing); expected an explicit spacing")
    return to_network_grid(image, info.intensity, spacing, info.size, name)


def to_network_grid(image: sitk.Image, intensity: dict, spacing: Sequence[float], size: int,
                    name: str = "scan") -> Preprocessed:
    """The steps of :func:`preprocess` with explicit parameters."""
    check_scan(image, name, varying=False)
    arr, clip = intensity_step(sitk.GetArrayFromImage(image), intensity, name)
    resampled = resample_to_spacing(array_to_image(arr, image), full_spacing(image, spacing))
    res_arr = sitk.GetArrayFromImage(resampled)
    cropped = crop_or_pad_volume(res_arr, size, float(res_arr.min()))
    return Preprocessed(array_with_geometry(cropped, resampled), resampled, clip)


def preprocess_label(label: sitk.Image, prepared: Preprocessed, size: int,
                     name: str = "label") -> sitk.Image:
    """A label on its image's grid onto the image's network grid: R2 on the label's own
    geometry to the resampled spacing, R3 padded with 0; float64 with the stored image's
    geometry."""
    res_label = resample_label(label, prepared.resampled.GetSpacing())
    if res_label.GetSize() != prepared.resampled.GetSize():
        raise InputError(f"{name}: resampled label size {res_label.GetSize()} differs from the "
                         f"resampled image size {prepared.resampled.GetSize()}; the label "
                         f"spacing {label.GetSpacing()} should equal its image's")
    cropped = crop_or_pad_volume(sitk.GetArrayFromImage(res_label), size, 0.0)
    return array_with_geometry(cropped, prepared.resampled)


def orientation(direction: Sequence[float]) -> str:
    """The three-letter orientation code of an image's direction cosines (e.g. 'LAS'); the
    closest one for an oblique image."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction))


def is_oblique(image: sitk.Image | Sequence[float]) -> bool:
    """Whether an axis of ``image`` (or of these direction cosines) lies more than ~26 degrees
    (cosine < 0.9) off every anatomical axis."""
    direction = image.GetDirection() if isinstance(image, sitk.Image) else image
    cosines = np.abs(np.asarray(direction, float).reshape(3, 3))
    return bool((cosines.max(axis=0) < OBLIQUE_COS).any())


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """``image`` with its axes permuted and flipped to orientation ``code``: the same voxels at
    the same physical positions, only stored in another order (``image`` itself if it already
    is)."""
    return image if orientation(image.GetDirection()) == code else sitk.DICOMOrient(image, code)


def apparent_modality(image: sitk.Image) -> tuple[str, float]:
    """"CT" when at least 0.1 % of the voxels lie below -200 (air or lung in Hounsfield units),
    else "MR"; and that fraction."""
    arr = sitk.GetArrayViewFromImage(image)
    fraction = float(np.count_nonzero(arr < HU_AIR)) / max(arr.size, 1)
    return ("CT" if fraction >= CT_AIR_FRACTION else "MR"), fraction
