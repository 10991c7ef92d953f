"""Synthetic abdominal-like MRI phantom: the embedded default dataset for the quickstart and tests.

Each scan is a stack of axial slices (default 256×256, 26–34 slices) with a body, liver, spleen,
two kidneys (cortex and medulla), spine, aorta and bowel loops. Every structure has its own mean
intensity and texture (smoothed noise of a structure-specific grain); a smooth multiplicative bias
field and Gaussian noise are added. Intensities are raw MR-like values (0 to about 1200, background
below the body threshold of 50). Labels use the CHAOS-T2 ids (1 liver, 2 right kidney, 3 left
kidney, 4 spleen). Everything is drawn from ``numpy.random.default_rng(seed)``, so a seed gives the
same dataset byte for byte.

    python -m data_preprocessing.phantom --out data/PHANTOM --seed 0 [--n-scans 10 --size 256]
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from data_preprocessing.contract import register
from data_preprocessing.registry import PHANTOM
from util.io import ensure_writable_dir, write_image
from util.errors import InputError


@dataclass(frozen=True)
class Structure:
    """An ellipsoid-like structure in relative coordinates of a 256-px slice."""

    name: str
    label: int  # ground-truth class id written to the label map (0: not an organ)
    centre: tuple[float, float]  # (row, col) in px of a 256 grid
    radii: tuple[float, float]  # (row, col) in px
    z_range: tuple[float, float]  # fraction of the slices
    intensity: float
    grain: float  # texture smoothing sigma in px
    texture: float  # texture amplitude


BODY = Structure("body", 0, (135, 128), (86, 112), (0.0, 1.0), 330, 4.0, 35)
STRUCTURES = (
    Structure("liver", 1, (112, 84), (42, 46), (0.08, 0.85), 520, 1.0, 28),
    Structure("spleen", 4, (138, 182), (28, 21), (0.30, 0.70), 690, 3.0, 40),
    Structure("bowel", 0, (85, 150), (20, 26), (0.20, 0.95), 260, 2.0, 60),
    Structure("aorta", 0, (160, 130), (7, 7), (0.0, 1.0), 910, 1.5, 10),
    Structure("spine", 0, (196, 128), (15, 15), (0.0, 1.0), 980, 2.5, 50),
    Structure("right_kidney", 2, (168, 88), (20, 14), (0.45, 0.82), 820, 1.5, 25),
    Structure("left_kidney", 3, (170, 170), (20, 14), (0.38, 0.75), 820, 1.5, 25),
)
MEDULLA_SCALE, MEDULLA_INTENSITY = 0.5, 600
SPACING = (1.25, 1.25, 7.70)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def make_scan(rng: np.random.Generator, size: int = 256,
              n_slices: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One phantom scan: (image [Z, H, W] float32, label [Z, H, W] uint8)."""
    z_count = int(n_slices if n_slices is not None else rng.integers(26, 35))
    f = size / 256.0
    zz, rr, cc = np.meshgrid(np.arange(z_count, dtype=np.float32),
                             np.arange(size, dtype=np.float32),
                             np.arange(size, dtype=np.float32), indexing="ij")
    shape = (z_count, size, size)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    wobble = _smooth_noise(rng, shape, (1.5, 10 * f, 10 * f))

    def paint(s: Structure) -> tuple[np.ndarray, np.ndarray]:
        jitter = rng.uniform(-6, 6, 2) * f
        radii = np.array(s.radii) * f * rng.uniform(0.88, 1.12, 2)
        cr, cc0 = np.array(s.centre) * f + jitter
        z0, z1 = (np.array(s.z_range) + rng.uniform(-0.04, 0.04, 2)) * (z_count - 1)
        zc, zr = (z0 + z1) / 2, max((z1 - z0) / 2, 0.5)
        taper = np.clip(1 - ((zz - zc) / (zr + 0.5)) ** 2, 0, 1) ** 0.35 if s.z_range != (0, 1) \
            else np.ones_like(zz)
        dist = ((rr - cr) / radii[0]) ** 2 + ((cc - cc0) / radii[1]) ** 2
        inside = (dist < taper * (1 + 0.12 * wobble)) & (taper > 0)
        mean = s.intensity * rng.uniform(0.92, 1.08)
        texture = s.texture * _smooth_noise(rng, shape, (0.7, s.grain * f, s.grain * f))
        image[inside] = mean + texture[inside]
        core = inside & (dist < MEDULLA_SCALE ** 2 * taper)
        return inside, core

    paint(BODY)
    for s in STRUCTURES:
        inside, core = paint(s)
        if s.label:
            label[inside] = s.label
        if s.name.endswith("kidney"):
            grain = _smooth_noise(rng, shape, (0.7, 2.0 * f, 2.0 * f))
            image[core] = MEDULLA_INTENSITY + 30 * grain[core]
    bias = np.exp(0.18 * _smooth_noise(rng, shape, (4, 60 * f, 60 * f)))
    body = image > 0
    image = image * bias + rng.normal(0, 12, shape).astype(np.float32) * body
    image[~body] = np.abs(rng.normal(0, 8, int((~body).sum())))
    return np.clip(np.rint(image), 0, None).astype(np.float32), label


def write_phantom(out: str | os.PathLike, seed: int = 0, n_scans: int = 10, size: int = 256,
                  n_slices: int | None = None) -> Path:
    """Write ``n_scans`` phantom scans and register the folder as dataset PHANTOM."""
    if n_scans < PHANTOM.fold_sep[-1]:
        raise InputError(f"--n-scans: the PHANTOM folds need at least {PHANTOM.fold_sep[-1]} "
                         f"scans, got {n_scans}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for pid in range(1, n_scans + 1):
        image, label = make_scan(rng, size, n_slices)
        img = sitk.GetImageFromArray(image)
        img.SetSpacing(SPACING)
        img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        lab = sitk.GetImageFromArray(label)
        lab.CopyInformation(img)
        write_image(img, out / f"image_{pid}.nii.gz")
        write_image(lab, out / f"label_{pid}.nii.gz")
    register(out, replace(PHANTOM, size=size), preprocessing={"generator": "phantom", "seed": seed,
                                            "n_scans": n_scans, "size": size,
                                            "n_slices": n_slices})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-scans", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="in-plane size in px")
    parser.add_argument("--slices", type=int, default=None, help="slices per scan (default 26-34)")
    args = parser.parse_args(argv)
    ensure_writable_dir(args.out, "--out")
    out = write_phantom(args.out, args.seed, args.n_scans, args.size, args.slices)
    print(f"wrote {args.n_scans} phantom scans to {out}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m data_preprocessing.phantom", main)
