"""Episode augmentation (method.md §3.5): random affine, elastic deformation, gamma, in torch.

The arithmetic is batched torch on any device: a stack ``[N, 1 + K, H, W]`` (channel 0 the
image, channels 1..K a one-hot of an integer label with K classes; K = 2 for a binary mask) is
resampled by :func:`warp`, images get :func:`gamma_transform`. In order:

1. **Affine** ``M = Z · Sh · T · R`` (rotation first, zoom last) about the centre
   ``(cx, cy) = (H / 2, W // 2)`` (:func:`affine_matrix`), bilinear, zero outside the image.
2. **Elastic**: two fields ``U(-1, 1)^{H×W}``, each smoothed by a Gaussian (kernel
   ``int(4σ) | 1`` taps, σ = 5, reflect-101 border) and scaled by α; every channel is resampled
   at ``(row + dy, col + dx)``, bilinear, mirrored at the border (half-sample symmetric).
3. **Label recovery**: ``rint`` of the one-hot channels, then argmax over them (a pixel where
   every channel rounds to 0 becomes class 0).
4. **Gamma** on the image channel only: ``r · ((x − m + 1e-5) / r)^γ + m`` with ``m = min x``,
   ``r = max x − m + 1e-5``.

Both resamplings are ``torch.nn.functional.grid_sample`` with pixel centres at
``(2i + 1) / n − 1`` (``align_corners=False``): the affine with zero padding is OpenCV's
``warpAffine`` (bilinear, constant border 0) without its 1/32-pixel coordinate rounding, the
elastic with reflection padding is ``scipy.ndimage.map_coordinates`` (order 1, mode 'reflect');
tests/test_augment.py compares both with those references.

Every random number comes from the ``numpy.random.Generator`` passed in, in a fixed order per
view (the affine parameters θ, tx, ty, φ, s; the two elastic fields dx, dy; γ), so an episode is
a pure function of its generator's seed. Differences from the original: it drew affine and gamma
from the unseeded global NumPy state and the elastic field from OS entropy (method.md §5.4), and
it used OpenCV flag 3 (INTER_AREA), which ``warpAffine`` treats exactly as bilinear. The flip
step of the original is configured off and is not implemented.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from util.errors import InputError

__all__ = ["AugParams", "PRESETS", "get_aug_params", "affine_matrix", "draw_affine",
           "draw_fields", "affine_grid", "smooth_fields", "elastic_grid", "warp",
           "recover_label", "gamma_transform", "random_gamma", "geometric", "augment_pair"]

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
    """The 2×3 source→destination matrix ``Z · Sh · T · R`` of method.md §3.5 for an [H, W] image,
    in pixel coordinates (x a column, y a row).

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


def draw_affine(rng: np.random.Generator, params: AugParams, shape: tuple[int, int]) -> np.ndarray:
    """θ, tx, ty, φ, s drawn in that order; their 2×3 matrix."""
    theta = rng.uniform(-params.rotate_deg, params.rotate_deg)
    tx = rng.uniform(-params.shift_px, params.shift_px)
    ty = rng.uniform(-params.shift_px, params.shift_px)
    shear = rng.uniform(-params.shear_deg, params.shear_deg)
    s = rng.uniform(*params.scale)
    return affine_matrix(theta, tx, ty, shear, s, shape)


def draw_fields(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The two raw elastic fields ``U(-1, 1)``, dx (columns) then dy (rows): [2, H, W]."""
    return np.stack([rng.uniform(-1.0, 1.0, size=shape) for _ in range(2)]).astype(np.float32)


def affine_grid(matrices: np.ndarray, h: int, w: int, device: torch.device | str = "cpu"
                ) -> Tensor:
    """grid_sample's grid [N, H, W, 2] on ``device`` of source→destination matrices [N, 2, 3]
    (pixels): destination pixel p samples the source at ``M⁻¹ p``."""
    m = np.asarray(matrices, dtype=np.float64)
    full = np.concatenate([m, np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(m), 1, 3))], axis=1)
    # grid_sample's unit coordinates u = (2 p + 1) / n − 1: p = S u + t
    to_pixel = np.array([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]])
    theta = np.linalg.inv(to_pixel) @ np.linalg.inv(full) @ to_pixel  # unit → unit
    return F.affine_grid(torch.from_numpy(theta[:, :2]).float().to(device), [len(m), 1, h, w],
                         align_corners=False)


@functools.lru_cache(maxsize=8)
def _gaussian(sigma: float) -> tuple[float, ...]:
    """OpenCV's Gaussian kernel of ``int(4σ) | 1`` taps, normalised."""
    taps = int(4 * sigma) | 1
    x = np.arange(taps) - (taps - 1) / 2
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return tuple((k / k.sum()).tolist())


def smooth_fields(raw: Tensor, alpha: float, sigma: float) -> Tensor:
    """Displacements [N, 2, H, W] from raw ``U(-1, 1)`` fields: separable Gaussian blur
    (reflect-101 border, as OpenCV's default), times α. The taps are accumulated as shifted
    slices, in place: on a CPU several times faster than a one-channel convolution."""
    k = _gaussian(float(sigma))
    r = len(k) // 2
    h, w = raw.shape[-2:]
    x = F.pad(raw, (r, r, 0, 0), mode="reflect")
    rows = x[..., 0:w] * (alpha * k[0])
    for i in range(1, len(k)):
        rows.add_(x[..., i:i + w], alpha=alpha * k[i])
    x = F.pad(rows, (0, 0, r, r), mode="reflect")
    out = x[..., 0:h, :] * k[0]
    for i in range(1, len(k)):
        out.add_(x[..., i:i + h, :], alpha=k[i])
    return out


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int, device: str) -> Tensor:
    """Pixel centres in grid_sample's coordinates: [1, H, W, 2] (x, y)."""
    ys = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, dtype=torch.float32) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None].to(device)


def elastic_grid(disp: Tensor) -> Tensor:
    """grid_sample's grid [N, H, W, 2] sampling pixel (row + dy, col + dx), from pixel
    displacements [N, 2, H, W] (dx, dy)."""
    n, _, h, w = disp.shape
    scale = disp.new_tensor([2 / w, 2 / h]).view(1, 2, 1, 1)
    return _base_grid(h, w, str(disp.device)) + (disp * scale).permute(0, 2, 3, 1)


def warp(stack: Tensor, matrices: np.ndarray, raw_fields: Tensor | None,
         params: AugParams) -> Tensor:
    """Affine (zero outside) then, given raw fields [N, 2, H, W], elastic (mirrored border)
    resampling of every channel of ``stack`` [N, C, H, W], on ``stack``'s device."""
    h, w = stack.shape[-2:]
    out = F.grid_sample(stack, affine_grid(matrices, h, w, stack.device), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    if raw_fields is not None:
        disp = smooth_fields(raw_fields, params.elastic_alpha, params.elastic_sigma)
        out = F.grid_sample(out, elastic_grid(disp), mode="bilinear",
                            padding_mode="reflection", align_corners=False)
    return out


def recover_label(onehot: Tensor) -> Tensor:
    """Integer labels [N, H, W] int64 from interpolated one-hot channels [N, K, H, W]: the
    first channel of the largest rounded value (argmax, written as K comparisons: on a CPU
    far faster than ``argmax`` over a short middle dimension)."""
    rounded = torch.round(onehot)  # half to even, as numpy's rint
    if rounded.numel() and rounded.max() > 1:
        raise AssertionError(f"recover_label: one-hot channels exceed 1 after rounding "
                             f"(max {float(onehot.max())}); the interpolation is not convex")
    best, label = rounded[:, 0], torch.zeros(rounded[:, 0].shape, dtype=torch.int64,
                                             device=onehot.device)
    for k in range(1, rounded.shape[1]):
        better = rounded[:, k] > best
        label[better] = k
        best = torch.maximum(best, rounded[:, k])
    return label


def gamma_transform(images: Tensor, gammas: Tensor) -> Tensor:
    """method.md §3.5 gamma of each image [N, H, W] with its γ [N]."""
    flat = images.flatten(1)
    m = flat.min(dim=1).values.view(-1, 1, 1)
    r = flat.max(dim=1).values.view(-1, 1, 1) - m + 1e-5
    return r * torch.pow((images - m + 1e-5) / r, gammas.view(-1, 1, 1)) + m


def _check(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(f"augment: expected image and label [H, W] of one shape, got "
                         f"{image.shape} and {label.shape}")


def geometric(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
              params: AugParams, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Affine then elastic on (image [H, W], label [H, W] in 0..n_classes-1), label recovered;
    the parameters drawn from ``rng`` (θ, tx, ty, φ, s, then the fields)."""
    _check(image, label)
    m = draw_affine(rng, params, image.shape)
    fields = draw_fields(rng, image.shape) if params.elastic_alpha > 0 else None
    stack = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32)]
                                      + [label == k for k in range(n_classes)]
                                      ).astype(np.float32, copy=False))[None]
    out = warp(stack, m[None], None if fields is None else torch.from_numpy(fields)[None],
               params)
    return out[0, 0].contiguous().numpy(), recover_label(out[:, 1:])[0].numpy()


def random_gamma(image: np.ndarray, rng: np.random.Generator, params: AugParams) -> np.ndarray:
    """Gamma with γ drawn from ``params.gamma``."""
    gamma = torch.tensor([rng.uniform(*params.gamma)], dtype=torch.float32)
    return gamma_transform(torch.from_numpy(np.asarray(image, dtype=np.float32))[None],
                           gamma)[0].numpy()


def augment_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 params: AugParams, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The full method.md §3.5 pipeline: (image [H, W] float32, label [H, W] int64)."""
    image, label = geometric(image, label, rng, params, n_classes)
    return random_gamma(image, rng, params), label
