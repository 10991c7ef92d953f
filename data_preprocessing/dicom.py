"""DICOM series: recognising DICOM files, reading one series as a checked volume.

Used by the importers (a folder of series, one case each) and by ``predict.py`` (a series
folder as the support or a query). GDCM orders a series' slices along the slice normal; the
slices must be evenly spaced (a gap is a missing slice).
"""
from __future__ import annotations

import contextlib
import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from util.errors import InputError


@contextlib.contextmanager
def keep_locale():
    """GDCM resets the process locale to "C" (Python's default text encoding becomes ASCII);
    restore it afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def is_dicom(path: Path) -> bool:
    """A DICOM part-10 file: the ``DICM`` marker after the 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and is_dicom(p)]


def read_dicom_series(files: tuple[Path, ...], where: str) -> sitk.Image:
    """One series; slices must be evenly spaced along the slice normal (a gap is a missing
    slice)."""
    if len(files) < 2:
        raise InputError(f"{where}: expected a DICOM series of several slices, found "
                         f"{len(files)} file")
    positions = []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        positions.append(np.asarray(reader.GetOrigin(), float))
        normal = np.asarray(reader.GetDirection(), float).reshape(3, 3)[:, 2]
    steps = np.diff(np.asarray(positions) @ normal)
    if steps.size and (np.abs(steps).min() <= 1e-6
                       or np.abs(steps).max() - np.abs(steps).min() > 0.01 * np.abs(steps).max()):
        raise InputError(f"{where}: expected evenly spaced DICOM slices, found steps from "
                         f"{np.abs(steps).min():.3g} to {np.abs(steps).max():.3g} mm "
                         f"(a missing or repeated slice)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    with keep_locale():
        return reader.Execute()
