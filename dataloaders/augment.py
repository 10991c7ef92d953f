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

A view's parameters are drawn on the host from the ``numpy.random.Generator`` passed in, in a
fixed order (:func:`draw_view`: θ, tx, ty, φ, s, the seed of the elastic fields, γ): a few
numbers, so the loader's share of an episode is microseconds. The two elastic fields, the only
large random draw, come from a torch generator seeded with that seed on the device that warps
(:func:`elastic_fields`). An episode is thus a pure function of its generator's seed on one
device; the CPU's and CUDA's generators give different fields of the same distribution (and
CUDA's may differ between GPU models, whose launch sizes differ; tests/test_augment.py compares
the CPU's with the earlier NumPy draw). :func:`augment_views`
applies a batch of views' plans at once. Differences from the original: it drew affine and
gamma from the unseeded global NumPy state and the elastic field from OS entropy (method.md
§5.4), and it used OpenCV flag 3 (INTER_AREA), which ``warpAffine`` treats exactly as bilinear.
The flip step of the original is configured off and is not implemented.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from util.device import upload
from util.errors import InputError

__all__ = ["AugParams", "PRESETS", "get_aug_params", "affine_matrix", "draw_affine",
           "draw_field_seed", "elastic_fields", "unit_theta", "smooth_fields", "elastic_grid",
           "warp", "recover_label", "gamma_transform", "ViewPlan", "draw_view",
           "augment_views", "one_hot_stack", "augment_pair"]

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


def draw_field_seed(rng: np.random.Generator) -> int:
    """The seed of one view's elastic fields (:func:`elastic_fields`), drawn after its affine."""
    return int(rng.integers(2 ** 63 - 1))


def elastic_fields(seeds: Sequence[int], shape: tuple[int, int],
                   device: torch.device | str = "cpu") -> Tensor:
    """The raw elastic fields ``U(-1, 1)`` [N, 2, H, W] (dx columns, dy rows) of N views, each
    from a torch generator on ``device`` seeded with its seed: drawn where they are used, so a
    view costs the host one integer. A seed gives the same field on every run of one device
    type (the CPU's and CUDA's generators differ)."""
    device = torch.device(device)
    out = torch.empty((len(seeds), 2) + tuple(shape), device=device)
    gen = torch.Generator(device=device)
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        out[i].uniform_(-1.0, 1.0, generator=gen)
    return out


def unit_theta(matrices: np.ndarray, h: int, w: int) -> np.ndarray:
    """``F.affine_grid``'s θ [N, 2, 3] float32 (unit → unit coordinates) of source→destination
    pixel matrices [N, 2, 3]: destination pixel p samples the source at ``M⁻¹ p``."""
    m = np.asarray(matrices, dtype=np.float64)
    full = np.concatenate([m, np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(m), 1, 3))], axis=1)
    # grid_sample's unit coordinates u = (2 p + 1) / n − 1: p = S u + t
    to_pixel = np.array([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]])
    return (np.linalg.inv(to_pixel) @ np.linalg.inv(full) @ to_pixel)[:, :2].astype(np.float32)


IDENTITY_THETA = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)


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
    # Python scalars, not a tensor built from a list: on CUDA that would be a host copy that
    # waits for the device
    unit = torch.stack([disp[:, 0] * (2 / w), disp[:, 1] * (2 / h)], dim=-1)
    return _base_grid(h, w, str(disp.device)) + unit


def warp(stack: Tensor, theta: Tensor, raw_fields: Tensor | None, params: AugParams) -> Tensor:
    """Affine (θ [N, 2, 3] of :func:`unit_theta`; zero outside) then, given raw fields
    [N, 2, H, W], elastic (mirrored border) resampling of every channel of ``stack``
    [N, C, H, W], on ``stack``'s device."""
    n, _, h, w = stack.shape
    grid = F.affine_grid(theta.to(stack.device, stack.dtype), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if raw_fields is not None:
        disp = smooth_fields(raw_fields, params.elastic_alpha, params.elastic_sigma)
        out = F.grid_sample(out, elastic_grid(disp), mode="bilinear",
                            padding_mode="reflection", align_corners=False)
    return out


def recover_label(onehot: Tensor) -> Tensor:
    """Integer labels [N, H, W] int64 from interpolated one-hot channels [N, K, H, W]: the
    first channel of the largest rounded value (argmax, written as K comparisons: on a CPU
    far faster than ``argmax`` over a short middle dimension). Bilinear weights are convex, so
    no channel rounds above 1; nothing here reads the device."""
    rounded = torch.round(onehot)  # half to even, as numpy's rint
    best = rounded[:, 0]
    label = torch.zeros(best.shape, dtype=torch.int64, device=onehot.device)
    for k in range(1, rounded.shape[1]):
        better = rounded[:, k] > best
        label = torch.where(better, k, label)
        best = torch.maximum(best, rounded[:, k])
    return label


def gamma_transform(images: Tensor, gammas: Tensor) -> Tensor:
    """method.md §3.5 gamma of each image [N, H, W] with its γ [N]."""
    flat = images.flatten(1)
    m = flat.min(dim=1).values.view(-1, 1, 1)
    r = flat.max(dim=1).values.view(-1, 1, 1) - m + 1e-5
    return r * torch.pow((images - m + 1e-5) / r, gammas.view(-1, 1, 1).to(images)) + m


@dataclass
class ViewPlan:
    """The augmentation of N views, drawn on the host (:func:`draw_view`), applied on any device
    by :func:`augment_views`. Host tensors: ``theta`` [N, 2, 3] float32 (:func:`unit_theta`;
    the identity where ``geo`` is False), ``geo`` [N] bool, ``field_seed`` [N] int64,
    ``gamma`` [N] float32 (1 where ``gamma_on`` is False), ``gamma_on`` [N] bool."""

    theta: Tensor
    geo: Tensor
    field_seed: Tensor
    gamma: Tensor
    gamma_on: Tensor

    FIELDS = ("theta", "geo", "field_seed", "gamma", "gamma_on")

    @classmethod
    def of(cls, views: Sequence[dict]) -> "ViewPlan":
        """The plan of views drawn by :func:`draw_view`."""
        return cls(*(torch.as_tensor(np.stack([v[k] for v in views])) for k in cls.FIELDS))


def draw_view(rng: np.random.Generator | None, params: AugParams | None,
              shape: tuple[int, int], geometry: bool = True, gamma: bool = True) -> dict:
    """One view's augmentation, drawn from ``rng`` in a fixed order: the affine (θ, tx, ty, φ,
    s) and the elastic field's seed when ``geometry``, then γ when ``gamma``. With no
    ``params`` (no augmentation) nothing is drawn and the view stays as it is."""
    geometry, gamma = geometry and params is not None, gamma and params is not None
    view = {"theta": IDENTITY_THETA, "geo": np.bool_(geometry), "field_seed": np.int64(0),
            "gamma": np.float32(1.0), "gamma_on": np.bool_(gamma)}
    if geometry:
        view["theta"] = unit_theta(draw_affine(rng, params, shape)[None], *shape)[0]
        view["field_seed"] = np.int64(draw_field_seed(rng))
    if gamma:
        view["gamma"] = np.float32(rng.uniform(*params.gamma))
    return view


def _chosen(flags: Tensor) -> list[int]:
    """The indices where host flags [N] are True (read as a list: no tensor operation)."""
    return [i for i, on in enumerate(flags.tolist()) if on]


def augment_views(stack: Tensor, plan: ViewPlan, params: AugParams | None
                  ) -> tuple[Tensor, Tensor]:
    """Images [N, H, W] and labels [N, H, W] int64 of N views ``stack`` [N, 1 + K, H, W]
    (channel 0 the image, 1..K a one-hot label), augmented by ``plan`` on ``stack``'s device:
    the geometric views warped in one batch (elastic fields drawn there), labels recovered,
    then gamma. The plan's flags are host tensors, so choosing the views reads no device."""
    device, (h, w) = stack.device, stack.shape[-2:]
    geo = torch.tensor(_chosen(plan.geo) if params is not None else [], dtype=torch.long)
    if len(geo):
        fields = (elastic_fields(plan.field_seed[geo].tolist(), (h, w), device)
                  if params.elastic_alpha > 0 else None)
        theta = upload(plan.theta[geo], device)
        if len(geo) == len(stack):
            stack = warp(stack, theta, fields, params)
        else:
            on = upload(geo, device)
            stack = stack.index_copy(0, on, warp(stack.index_select(0, on), theta, fields,
                                                 params))
    images, labels = stack[:, 0], recover_label(stack[:, 1:])
    bright = torch.tensor(_chosen(plan.gamma_on) if params is not None else [], dtype=torch.long)
    if len(bright):
        on, gammas = upload(bright, device), upload(plan.gamma[bright], device)
        images = images.index_copy(0, on, gamma_transform(images.index_select(0, on), gammas))
    return images, labels


def one_hot_stack(images: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """[N, 1 + K, H, W] float: the images [N, H, W] and a one-hot of labels [N, H, W]."""
    return torch.cat([images[:, None].float()]
                     + [(labels == k)[:, None].to(torch.float32) for k in range(n_classes)], 1)


def augment_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 params: AugParams, n_classes: int = 2, geometry: bool = True,
                 gamma: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The method.md §3.5 pipeline of one view on the CPU, drawn from ``rng`` as an episode's
    view is: (image [H, W] float32, label [H, W] int64 in 0..n_classes-1)."""
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(f"augment: expected image and label [H, W] of one shape, got "
                         f"{image.shape} and {label.shape}")
    plan = ViewPlan.of([draw_view(rng, params, image.shape, geometry, gamma)])
    stack = one_hot_stack(torch.from_numpy(np.asarray(image, np.float32))[None],
                          torch.from_numpy(np.asarray(label))[None], n_classes)
    out_img, out_lab = augment_views(stack, plan, params)
    return out_img[0].contiguous().numpy(), out_lab[0].numpy()
