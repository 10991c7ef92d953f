"""Atomic file writing and NIfTI reading with clear errors.

Every file this project writes goes through :func:`atomic_path`: the content is written to a
temporary file in the destination folder, flushed, then renamed over the destination, so an
interrupted write never leaves a partial file under the final name.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from util.errors import InputError, MissingInput, NoPermission, PathInTheWay


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it onto ``dest``.

    ``suffix`` defaults to the destination's full suffix (``.nii.gz``) so writers that choose the
    format from the file name keep working. On an exception the temporary file is removed and
    ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def found_at(path: str | os.PathLike) -> str:
    """What is at ``path``, for error messages: 'a folder', 'a file' or 'nothing there'."""
    path = Path(path)
    return "a folder" if path.is_dir() else "a file" if path.exists() else "nothing there"


def ensure_writable_dir(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any long computation, that files can be written in folder ``path``: it is
    a writable folder, or the nearest existing folder above it is (nothing is created here).
    PermissionError / FileExistsError naming the path otherwise."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PathInTheWay(f"{path}: expected a folder ({what}), found a file in the way"
                              + ("" if existing == path else f" ({existing})"))
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NoPermission(f"{path}: expected a writable folder ({what}), cannot write in "
                              f"{existing} ({err.strerror or err})") from None
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected a JSON file, found nothing there")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: expected valid JSON, found a parse error: {err}") from err


def _check_nifti_payload(path: Path) -> None:
    """Reject a NIfTI-1 file that is empty, cut short, damaged, not 3-D, or holds NaN/inf voxels.

    SimpleITK reads a truncated ``.nii.gz`` without complaint (the missing voxels become 0) and
    turns NaN/inf voxels into 0, so the stream is read here to its end (which checks the gzip
    CRC), the byte count is compared with what the header promises, and floating-point voxels
    are checked as stored.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    if path.stat().st_size == 0:
        raise InputError(f"{path}: expected a NIfTI volume, found an empty (zero-byte) file")
    nonfinite = 0
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as fh:
            header = nib.Nifti1Header.from_fileobj(fh, check=False)  # zero pixdim as stored
            dtype = header.get_data_dtype()
            offset = int(header.get_data_offset())
            found = fh.tell()
            pending = b""
            floating = np.issubdtype(dtype, np.floating)
            while chunk := fh.read(1 << 22):
                start = max(offset - found, 0)
                found += len(chunk)
                if floating and start < len(chunk):
                    data = pending + chunk[start:]
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype=dtype)
                    nonfinite += values.size - int(np.count_nonzero(np.isfinite(values)))
                    pending = data[usable:]
    except (OSError, EOFError, ValueError, nib.spatialimages.HeaderDataError,
            nib.wrapstruct.WrapStructError) as err:
        raise InputError(f"{path}: expected a complete NIfTI file, reading it failed: {err}; "
                         f"the file is truncated or damaged") from err
    shape = tuple(int(n) for n in header.get_data_shape())
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if found < expected:
        raise InputError(f"{path}: expected {expected} bytes of NIfTI data, found {found}; the "
                         f"file is truncated or damaged")
    core = shape
    while len(core) > 3 and core[-1] == 1:
        core = core[:-1]
    if len(shape) == 5 and shape[3] == 1 and shape[4] > 1:  # NIfTI's vector layout
        raise InputError(f"{path}: expected a 3-D volume of one value per voxel, found a 3-D "
                         f"image with {shape[4]} components per voxel (shape {shape})")
    if len(core) != 3:
        raise InputError(f"{path}: expected a 3-D volume, found a {len(core)}-D image of shape "
                         f"{shape}")
    if nonfinite:
        raise InputError(f"{path}: expected finite voxel values, found {nonfinite} NaN/inf "
                         f"voxel(s)")
    _check_spacing(path, [float(v) for v in header["pixdim"][1:4]])


def _check_spacing(path: Path, spacing) -> None:
    """Every voxel spacing positive and finite (readers would silently take 1 mm for 0)."""
    for axis, value in zip("xyz", spacing):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{path}: expected a positive voxel spacing along {axis}, found "
                             f"{value:g} (spacing {tuple(float(v) for v in spacing)}); fix the "
                             f"file's header")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a medical image with SimpleITK; a missing, unreadable or truncated file names the path."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected an image file, found nothing there")
    _check_nifti_payload(path)
    try:
        image = sitk.ReadImage(str(path))
        _check_spacing(path, image.GetSpacing())
        return image
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise InputError(f"{path}: expected a readable image (NIfTI/DICOM), reading failed: "
                         f"{first}") from err


def check_scan(image: sitk.Image, where: str | os.PathLike, what: str = "image",
               varying: bool = True) -> sitk.Image:
    """The one check of a scan as read: 3-D, one value per voxel, finite, and (``varying``) not
    constant. Returns ``image``; raises :class:`InputError` naming ``where`` otherwise."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: expected a scalar 3-D {what}, found a "
                         f"{image.GetDimension()}-D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel, size "
                         f"{image.GetSize()}")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: expected finite intensities, found NaN or inf")
    if varying and arr.size and arr.min() == arr.max():
        article = "an" if what[:1] in "aeiou" else "a"
        raise InputError(f"{where}: expected {article} {what} with varying intensities, found a "
                         f"constant image (every voxel {float(arr.min()):g})")
    return image


def read_array(path: str | os.PathLike, dtype: Any | None = None) -> np.ndarray:
    """Read an image as a SITK array, axis order (Z, Y, X)."""
    arr = sitk.GetArrayFromImage(read_image(path))
    return arr.astype(dtype) if dtype is not None else arr


def read_image_info(path: str | os.PathLike) -> sitk.ImageFileReader:
    """The header of an image file (``GetSize``, ``GetSpacing``, ``GetOrigin``, ``GetDirection``)
    without reading its voxels; for files whose data were already read and checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected an image file, found nothing there")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise InputError(f"{path}: expected a readable image, reading its header failed: "
                         f"{first}") from None
    _check_spacing(path, reader.GetSpacing())
    return reader


def _check_nifti_header(path: Path) -> None:
    """A NIfTI file's header alone: not empty, readable, positive voxel spacing."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: expected a NIfTI volume, found an empty (zero-byte) file")
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz")
              else open(path, "rb")) as fh:
            header = nib.Nifti1Header.from_fileobj(fh, check=False)
    except (OSError, EOFError, ValueError, nib.spatialimages.HeaderDataError,
            nib.wrapstruct.WrapStructError) as err:
        raise InputError(f"{path}: expected a NIfTI header, reading it failed: {err}; the file "
                         f"is truncated or damaged") from None
    ndim = min(max(int(header["dim"][0]), 1), 3)
    _check_spacing(path, [float(v) for v in header["pixdim"][1:1 + ndim]])


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (NIfTI by the file name's extension)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def array_to_image(arr: np.ndarray, reference: sitk.Image | None = None) -> sitk.Image:
    """SITK array (Z, Y, X) to an image carrying ``reference``'s spacing, origin, direction
    (the sizes must match)."""
    img = sitk.GetImageFromArray(arr)
    if reference is not None:
        img.CopyInformation(reference)
    return img


def array_with_geometry(arr: np.ndarray, geometry: sitk.Image) -> sitk.Image:
    """Like :func:`array_to_image`, for an array whose size differs from ``geometry``'s (a crop,
    a pad): spacing, origin and direction are set one by one."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(geometry.GetSpacing())
    img.SetOrigin(geometry.GetOrigin())
    img.SetDirection(geometry.GetDirection())
    return img


_DIGITS = re.compile(r"(\d+)")


def pid_from_path(path: str | os.PathLike) -> str:
    """The scan id: the last run of digits in the file name (``image_12.nii.gz`` gives ``"12"``)."""
    runs = _DIGITS.findall(Path(path).name)
    if not runs:
        raise InputError(f"{path}: expected a file name holding a scan id (digits), found none")
    return str(int(runs[-1]))


def pid_key(pid: str) -> tuple:
    """Sort key of a scan id: numeric ids by their integer value, before any named ones."""
    pid = str(pid)
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def sort_pids(pids) -> list[str]:
    """Scan ids sorted by :func:`pid_key` (the published ids numerically), as strings."""
    return sorted((str(p) for p in pids), key=pid_key)
