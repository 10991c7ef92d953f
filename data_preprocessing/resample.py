"""Resampling and centre cropping shared by the raw-data preprocessing CLIs (method.md §1.1).

- R1 :func:`resample_to_spacing`: linear resampling to a target spacing, same pixel type, origin
  and direction kept, output size ``int(n * sp_in / sp_out + 1)`` per axis (the "+1" rule).
- R2 :func:`resample_label`: per-label-value resampling, a larger label wins overlaps, float64.
- R3 :func:`crop_or_pad`: centre crop / pad of an (H, W, Z) array to 256 x 256 in-plane.
- :func:`normalize_resample_crop`: the MRI "step 3" (CHAOS-T2 §1.2 and CMR §1.4) built from them.

Arrays here follow SimpleITK: a SITK array is (Z, Y, X) = (slices, rows H, cols W); spacing
tuples are (x, y, z). R3 works on (H, W, Z), which is a SITK array transposed by (1, 2, 0).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from util.io import array_to_image, read_image, write_image
from util.errors import InputError


# Added to ``n * sp_in / sp_out + 1`` before truncation. An exact ratio computed in floating point
# can land a hair below the integer (255.99999999999997 + 1 for a 448 px axis resampled by 1.75);
# the original's plain ``int()`` then drops the "+1" plane, whereas the intended result has it.
# The guard only changes sizes whose ratio product lies within 1e-6 below an integer.
SIZE_EPS = 1e-6
CROP_SIZE = 256
CLIP_PERCENTILE = 99.5


def resampled_size(size: Sequence[int], spacing_in: Sequence[float],
                   spacing_out: Sequence[float]) -> tuple[int, ...]:
    """R1 output size per axis: ``int(n * sp_in / sp_out + 1 + SIZE_EPS)``."""
    if not (len(size) == len(spacing_in) == len(spacing_out)):
        raise InputError(f"size {tuple(size)}, input spacing {tuple(spacing_in)} and target "
                         f"spacing {tuple(spacing_out)} must have the same number of axes")
    for sp in spacing_out:
        if not sp > 0:
            raise InputError(f"target spacing must be positive, got {tuple(spacing_out)}")
    return tuple(int(n * si / so + 1 + SIZE_EPS)
                 for n, si, so in zip(size, spacing_in, spacing_out))


def full_spacing(image: sitk.Image, spacing: Sequence[float]) -> tuple[float, ...]:
    """A target spacing for ``image``: 3 values as given; 2 values keep the input z spacing."""
    spacing = tuple(float(s) for s in spacing)
    dim = image.GetDimension()
    if len(spacing) == dim:
        return spacing
    if dim == 3 and len(spacing) == 2:
        return spacing + (image.GetSpacing()[2],)
    raise InputError(f"target spacing {spacing}: expected {dim} values (or 2 to keep the input "
                     f"z spacing) for a {dim}-D image")


def resample_to_spacing(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """R1: linear resampling to ``spacing`` on the input's origin and direction.

    The output keeps the input pixel type (ITK truncates interpolated values towards zero for
    integer types) and voxels whose continuous index falls outside the input get 0, so an axis
    gains an all-zero trailing plane whenever ``frac(n * r) < r / 2`` with ``r = sp_in / sp_out``.
    """
    spacing = full_spacing(image, spacing)
    size = resampled_size(image.GetSize(), image.GetSpacing(), spacing)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(spacing)
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetTransform(sitk.Transform())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0)
    resampler.SetOutputPixelType(image.GetPixelID())
    return resampler.Execute(image)


def resample_label(label: sitk.Image, spacing: Sequence[float],
                   reference: sitk.Image | None = None) -> sitk.Image:
    """R2: resample each label value's float32 binary map with R1, ``rint`` it, write the value.

    Values are visited in increasing order (0 included), so a larger label wins any overlap.
    Returns a float64 image on the R1 grid of ``label``; with ``reference`` its full geometry
    (spacing, origin, direction) is copied from it, whose size must match.
    """
    arr = sitk.GetArrayFromImage(label)
    out: np.ndarray | None = None
    grid: sitk.Image | None = None
    for value in np.unique(arr):
        grid = resample_to_spacing(array_to_image((arr == value).astype(np.float32), label),
                                   spacing)
        hit = np.rint(sitk.GetArrayFromImage(grid)) * value
        if out is None:  # the first (smallest) value starts the output, all zero when it is 0
            out = hit.astype(np.float64)
        else:
            out[hit == value] = value
    if grid is None:
        raise InputError("resample_label: expected a non-empty label image, found no voxels")
    result = array_to_image(out, grid)  # float64 already
    if reference is not None:
        if reference.GetSize() != result.GetSize():
            raise InputError(f"resample_label: resampled label size {result.GetSize()} differs "
                             f"from the reference image size {reference.GetSize()}")
        result.CopyInformation(reference)
    return result


def crop_or_pad(arr_hwz: np.ndarray, size: int = CROP_SIZE, pad_value: float = 0.0) -> np.ndarray:
    """R3: centre crop / pad an (H, W, ...) array to (size, size, ...), float64.

    Output pixel (r, c) is source pixel ``(H//2 - size//2 + r, W//2 - size//2 + c)``; source
    positions outside the array get ``pad_value``. Trailing axes (Z) are untouched.
    """
    if arr_hwz.ndim < 2:
        raise InputError(f"crop_or_pad: expected an (H, W, ...) array, got shape {arr_hwz.shape}")
    out = np.full((size, size) + arr_hwz.shape[2:], pad_value, dtype=np.float64)
    src, dst = crop_windows(arr_hwz.shape[:2], size)
    out[dst[0], dst[1]] = arr_hwz[src[0], src[1]]
    return out


def crop_windows(shape: Sequence[int], size: int = CROP_SIZE
                 ) -> tuple[list[slice], list[slice]]:
    """R3's correspondence per axis of ``shape``: (source slices, output slices) such that
    ``output[out] = source[src]``; output index 0 is source index ``n // 2 - size // 2``."""
    src, dst = [], []
    for n in shape:
        start = n // 2 - size // 2
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, max(hi, lo) - start))
    return src, dst


def crop_or_pad_volume(arr_zyx: np.ndarray, size: int = CROP_SIZE,
                       pad_value: float = 0.0) -> np.ndarray:
    """R3 on a SITK array (Z, Y, X): transpose to (H, W, Z), crop / pad, transpose back."""
    if arr_zyx.ndim != 3:
        raise InputError(f"crop_or_pad_volume: expected a (Z, Y, X) array, got {arr_zyx.shape}")
    return np.ascontiguousarray(
        crop_or_pad(arr_zyx.transpose(1, 2, 0), size, pad_value).transpose(2, 0, 1))


def clip_percentile(arr: np.ndarray, percentile: float = CLIP_PERCENTILE
                    ) -> tuple[np.ndarray, float]:
    """Set voxels above the ``percentile``-th percentile to it, keeping ``arr``'s dtype.

    For an integer array the clip value is truncated towards zero (as assigning a float into an
    integer array does). Returns the clipped copy and the clip value actually written.
    """
    hir = np.percentile(arr, percentile)
    value = np.asarray(hir).astype(arr.dtype)
    out = arr.copy()
    out[arr > hir] = value
    return out, float(value)


def normalize_resample_crop(image: sitk.Image, label: sitk.Image, spacing: Sequence[float],
                            size: int = CROP_SIZE, percentile: float = CLIP_PERCENTILE,
                            name: str = "scan") -> tuple[sitk.Image, sitk.Image, dict]:
    """The MRI step 3 (method.md §1.2 step 3, §1.4): clip, R1, R2, R3; float64 image and label.

    1. voxels above the ``percentile``-th percentile are set to it (integer dtype kept);
    2. the image is resampled with R1 to ``spacing`` (2 values keep the input z spacing);
    3. the label is resampled with R2 on its own geometry to the same spacing;
    4. both are centre cropped / padded with R3 (image pad = the resampled image's minimum,
       label pad = 0), and get the resampled image's spacing, origin and direction.
    ``name`` (a path or scan id) is used in error messages. Returns (image, label, info).
    """
    from data_preprocessing.preprocess import preprocess_label, to_network_grid  # uses R1-R3

    for what, img in (("image", image), ("label", label)):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{name}: expected a scalar 3-D {what}, found a "
                             f"{img.GetDimension()}-D image with "
                             f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
    if image.GetSize() != label.GetSize():
        raise InputError(f"{name}: expected the label size to equal the image size "
                         f"{image.GetSize()}, found {label.GetSize()}")
    prepared = to_network_grid(image, {"rule": "clip_percentile", "percentile": percentile},
                               spacing, size, name)
    lbl_out = preprocess_label(label, prepared, size, name)
    info = {"clip_value": prepared.clip_value, "resampled_size": prepared.resampled.GetSize(),
            "pad_value": float(sitk.GetArrayViewFromImage(prepared.resampled).min())}
    return prepared.image, lbl_out, info


def fmt_spacing(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


def convert_pair(src: str | os.PathLike, dst: str | os.PathLike, pid: str, dataset: str,
                 transform, check_label=None) -> str:
    """Read ``image_<pid>``/``label_<pid>`` from ``src``, ``transform(image, label, name)`` →
    (image, label, info), write both to ``dst`` (atomically, after both are computed); returns a
    one-line summary. ``check_label(label, path)`` validates the input label first."""
    src, dst = Path(src), Path(dst)
    img_path, lbl_path = src / f"image_{pid}.nii.gz", src / f"label_{pid}.nii.gz"
    image, label = read_image(img_path), read_image(lbl_path)
    if check_label is not None:
        check_label(label, lbl_path)
    img_out, lbl_out, info = transform(image, label, str(img_path))
    out_img, out_lbl = dst / f"image_{pid}.nii.gz", dst / f"label_{pid}.nii.gz"
    write_image(img_out, out_img)
    write_image(lbl_out, out_lbl)
    values = np.unique(sitk.GetArrayViewFromImage(lbl_out)).astype(int).tolist()
    clip = f", clip {info['clip_value']:g}" if "clip_value" in info else ""
    return (f"{dataset} {pid}: {image.GetSize()} @ {fmt_spacing(image.GetSpacing())} mm -> "
            f"{img_out.GetSize()} @ {fmt_spacing(img_out.GetSpacing())} mm{clip}, label values "
            f"{values} -> {out_img}")


def add_resample_options(parser, spacing: Sequence[float]) -> None:
    """``--spacing``, ``--size`` and ``--percentile`` of the MR preprocessing CLIs."""
    parser.add_argument("--spacing", type=float, nargs="+", default=list(spacing),
                        help="target spacing x y [z] in mm (2 values keep the input z spacing)")
    parser.add_argument("--size", type=int, default=CROP_SIZE, help="in-plane crop / pad size")
    parser.add_argument("--percentile", type=float, default=CLIP_PERCENTILE,
                        help="intensity clipping percentile")


def parse_resample_options(parser, argv):
    """Parse ``argv``; a ``--spacing`` of other than 2 or 3 values is a usage error."""
    args = parser.parse_args(argv)
    if len(args.spacing) not in (2, 3):
        parser.error(f"--spacing: expected 2 or 3 values, got {len(args.spacing)}")
    return args


def normalize_mr_pair(src: str | os.PathLike, dst: str | os.PathLike, pid: str, dataset: str,
                      args, check_label=None) -> str:
    """The MRI step 3 for one scan ``src`` → ``dst`` with the parsed resample options ``args``;
    returns :func:`convert_pair`'s one-line summary."""
    return convert_pair(src, dst, pid, dataset, lambda image, label, name: normalize_resample_crop(
        image, label, args.spacing, args.size, args.percentile, name), check_label)


def resample_record(args) -> dict:
    """The ``preprocessing`` entries of ``dataset.json`` that the resample options decide."""
    return {"clip_percentile": args.percentile, "target_spacing": list(args.spacing),
            "size_rule": f"int(n * sp_in / sp_out + 1 + {SIZE_EPS})",
            "interpolation": "linear image (input pixel type), per-label linear + rint labels",
            "crop_size": args.size, "dtype": "float64"}


# SABS CT (method.md §1.3): the HU window, and the border cut off each side of a 512-pixel slice
HU_WINDOW = (-125.0, 275.0)
BORDER = 32


def window_ct(arr: np.ndarray, window: tuple[float, float] = HU_WINDOW,
              name: str = "image") -> np.ndarray:
    """Clip HU to ``window``, rescale by the clipped volume's min / max to [0, 255], float64."""
    clipped = np.clip(arr.astype(np.float64), window[0], window[1])
    lo, hi = clipped.min(), clipped.max()
    if not hi > lo:
        raise InputError(f"{name}: expected intensities spanning the window {window}, found a "
                         f"constant volume ({lo:g}) after clipping")
    return (clipped - lo) / (hi - lo) * 255.0
