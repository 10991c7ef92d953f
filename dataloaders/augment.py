"""Episode augmentation (method.md §3.5): random affine, elastic deformation, gamma.

The pipeline acts on an ``[H, W, 1 + K]`` float32 stack: channel 0 is the image, channels
1..K a one-hot of an integer label with K classes (K = 2 for a binary mask). In order:

1. **Affine** ``M = Z · Sh · T · R`` (rotation first, zoom last) about the centre
   ``(cx, cy) = (H / 2, W // 2)``, applied with ``cv2.warpAffine``, bilinear, constant border 0.
2. **Elastic**: two fields ``U(-1, 1)^{H×W}``, each smoothed by ``cv2.GaussianBlur`` (kernel
   ``int(4σ) | 1``, σ = 5, reflect-101 border) and scaled by α; every channel is resampled at
   ``(row + dy, col + dx)`` with ``scipy.ndimage.map_coordinates``, order 1, mode ``reflect``.
3. **Label recovery**: ``rint`` of the one-hot channels, then argmax over them (a pixel where
   every channel rounds to 0 becomes class 0).
4. **Gamma** on the image channel only: ``r · ((x − m + 1e-5) / r)^γ + m`` with ``m = min x``,
   ``r = max x − m + 1e-5``.

Every random number comes from the ``numpy.random.Generator`` passed in, in a fixed order (the
affine parameters θ, tx, ty, φ, s; the two elastic fields dx, dy; γ), so an episode is a pure
function of its generator's seed. Differences from the original: it drew affine and gamma from
the unseeded global NumPy state and the elastic field from OS entropy (method.md §5.4), and it used
OpenCV flag 3 (INTER_AREA), which ``warpAffine`` treats exactly as bilinear (INTER_LINEAR here).
The flip step of the original is configured off and is not implemented.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from util.errors import InputError

__all__ = ["AugParams", "PRESETS", "get_aug_params", "affine_matrix", "random_affine",
           "smooth_field", "elastic_deform", "recover_label", "gamma_transform", "random_gamma",
           "geometric",
           "augment_pair"]


@dataclass(frozen=True)
class AugParams:
    """Ranges of one augmentation preset; every range is symmetric unless given as a pair."""

    rotate_deg: float = 5.0          # θ ~ U(-rotate_deg, rotate_deg)
    shift_px: float = 5.0            # tx, ty ~ U(-shift_px, shift_px)
    shear_deg: float = 5.0           # φ ~ U(-shear_deg, shear_deg)
    scale: tuple[float, float] = (0.9, 1.2)   # isotropic zoom s ~ U(lo, hi)
    elastic_alpha: float = 10.0      # α; 0 switches the elastic step off
    elastic_sigma: float = 5.0       # σ of the Gaussian smoothing
    gamma: tuple[float, float] = (0.5, 1.5)   # γ ~ U(lo, hi)

    def __post_init__(self) -> None:
        for name in ("rotate_deg", "shift_px", "shear_deg", "elastic_alpha"):
            if getattr(self, name) < 0:
                raise InputError(f"AugParams.{name}: expected >= 0, got {getattr(self, name)}")
        if self.elastic_sigma <= 0:
            raise InputError(f"AugParams.elastic_sigma: expected > 0, got {self.elastic_sigma}")
        for name in ("scale", "gamma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise InputError(f"AugParams.{name}: expected 0 < lo <= hi, got {(lo, hi)}")


PRESETS: dict[str, AugParams] = {
    "sabs_aug": AugParams(),  # the default of the original (method.md §3.5)
    "aug_v3": AugParams(rotate_deg=30.0, shift_px=30.0, shear_deg=30.0, scale=(0.8, 1.3),
                        elastic_alpha=20.0, elastic_sigma=5.0, gamma=(0.2, 1.8)),
}


def get_aug_params(aug: str | AugParams | None) -> AugParams | None:
    """A preset name ('sabs_aug', 'aug_v3', 'none'), an :class:`AugParams`, or None (no aug)."""
    if aug is None or isinstance(aug, AugParams):
        return aug
    if aug == "none":
        return None
    if aug not in PRESETS:
        raise InputError(f"augmentation: expected one of {sorted(PRESETS) + ['none']} or an "
                         f"AugParams, got {aug!r}")
    return PRESETS[aug]


def affine_matrix(theta_deg: float, tx: float, ty: float, shear_deg: float, s: float,
                  shape: tuple[int, int]) -> np.ndarray:
    """The 2×3 source→destination matrix ``Z · Sh · T · R`` of method.md §3.5 for an [H, W] image.

    R rotates by θ about ``(cx, cy) = (H / 2, W // 2)`` (OpenCV's convention, positive θ is
    counter-clockwise on screen); T shifts by (tx columns, ty rows); Sh is the shear
    ``[[1, -sin φ], [0, cos φ]]`` about the origin; Z zooms by s about the same centre.
    """
    h, w = shape
    cx, cy = h / 2, w // 2
    t, p = math.radians(theta_deg), math.radians(shear_deg)
    c, sn = math.cos(t), math.sin(t)
    rot = np.array([[c, sn, (1 - c) * cx - sn * cy], [-sn, c, sn * cx + (1 - c) * cy],
                    [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)
    shear = np.array([[1, -math.sin(p), 0], [0, math.cos(p), 0], [0, 0, 1]])
    zoom = np.array([[s, 0, (1 - s) * cx], [0, s, (1 - s) * cy], [0, 0, 1]])
    return (zoom @ shear @ shift @ rot)[:2]


def random_affine(stack: np.ndarray, rng: np.random.Generator, params: AugParams) -> np.ndarray:
    """Warp every channel of ``stack`` [H, W, C] with one random affine (bilinear, border 0)."""
    theta = rng.uniform(-params.rotate_deg, params.rotate_deg)
    tx = rng.uniform(-params.shift_px, params.shift_px)
    ty = rng.uniform(-params.shift_px, params.shift_px)
    shear = rng.uniform(-params.shear_deg, params.shear_deg)
    s = rng.uniform(*params.scale)
    h, w = stack.shape[:2]
    m = affine_matrix(theta, tx, ty, shear, s, (h, w))
    out = cv2.warpAffine(stack, m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(stack.shape)  # warpAffine drops a trailing axis of length 1


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def smooth_field(raw: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """One displacement component from its raw ``U(-1, 1)`` draw: Gaussian blur, times α."""
    ksize = int(4 * sigma) | 1
    return cv2.GaussianBlur(raw, (ksize, ksize), sigma) * alpha


def elastic_deform(stack: np.ndarray, rng: np.random.Generator, alpha: float,
                   sigma: float) -> np.ndarray:
    """Resample every channel of ``stack`` [H, W, C] along one smooth random displacement."""
    h, w = stack.shape[:2]
    # dx (columns), then dy (rows)
    dx, dy = (smooth_field(rng.uniform(-1.0, 1.0, size=(h, w)), alpha, sigma) for _ in range(2))
    rows, cols = _grid(h, w)
    coords = np.stack([rows + dy, cols + dx])
    out = np.empty_like(stack)
    for ch in range(stack.shape[2]):
        out[..., ch] = ndimage.map_coordinates(stack[..., ch], coords, order=1, mode="reflect")
    return out


def recover_label(onehot: np.ndarray) -> np.ndarray:
    """Integer label [H, W] int64 from interpolated one-hot channels [H, W, K]."""
    rounded = np.rint(onehot)
    if rounded.max(initial=0) > 1:
        raise AssertionError(f"recover_label: one-hot channels exceed 1 after rounding "
                             f"(max {onehot.max()}); the interpolation is not convex")
    return np.argmax(rounded, axis=2).astype(np.int64)


def gamma_transform(image: np.ndarray, gamma: float) -> np.ndarray:
    """method.md §3.5 gamma on one image: ``r · ((x − m + 1e-5) / r)^γ + m``."""
    m = float(image.min())
    r = float(image.max()) - m + 1e-5
    return (r * np.power((image - m + 1e-5) / r, gamma) + m).astype(np.float32)


def _stack(image: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(f"augment: expected image and label [H, W] of one shape, got "
                         f"{image.shape} and {label.shape}")
    stack = np.empty(image.shape + (1 + n_classes,), np.float32)
    stack[..., 0] = image
    for k in range(n_classes):
        stack[..., 1 + k] = label == k
    return stack


def geometric(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
              params: AugParams, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Affine then elastic on (image [H, W], label [H, W] in 0..n_classes-1), label recovered."""
    stack = random_affine(_stack(image, label, n_classes), rng, params)
    if params.elastic_alpha > 0:
        stack = elastic_deform(stack, rng, params.elastic_alpha, params.elastic_sigma)
    return np.ascontiguousarray(stack[..., 0]), recover_label(stack[..., 1:])


def random_gamma(image: np.ndarray, rng: np.random.Generator, params: AugParams) -> np.ndarray:
    """Gamma with γ drawn from ``params.gamma``."""
    return gamma_transform(image, rng.uniform(*params.gamma))


def augment_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 params: AugParams, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The full method.md §3.5 pipeline: (image [H, W] float32, label [H, W] int64)."""
    image, label = geometric(image, label, rng, params, n_classes)
    return random_gamma(image, rng, params), label
