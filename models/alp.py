"""Adaptive local prototype pooling (ALP): the heart of ALPNet (method.md §4.2–§4.3).

One ALP call scores every query position against the prototypes of one class (or of the
background), computed from the support features and a soft support mask at feature resolution:

1. Prototypes, by ``mode``:
   - ``'global'``       one masked average over all shots, ``mean_s Σ F_s·M_s / (Σ M_s + 1e-5)``
                        (PANet's prototype; the original calls this mode ``'mask'``);
   - ``'local'``        the k×k average-pooled support features whose pooled mask is > threshold,
                        shot by shot, raster order inside a shot (original: ``'gridconv'``);
   - ``'local+global'`` the local ones followed by one masked average per shot
                        (original: ``'gridconv+'``).
2. Similarities ``d_k(x) = scale · <n(q(x)), n(p_k)>`` with ``n(v) = v / max(|v|, 1e-4)``.
3. Score ``Σ_k softmax_k(d(x)) · d_k(x)``: the softmax-weighted mean similarity. With a single
   prototype this is exactly ``scale · cos(q(x), p)``, the PANet score, so all modes share it.

Fixed against the original (method.md §0): when no window passes the threshold in ``'local'`` mode
the set is empty; we fall back to the global prototype of that mask instead of raising, and report it
in :class:`ALPInfo` so training can count it.

The foreground mode is chosen by :func:`choose_fg_mode` from the mask alone, always with a 4×4
window (also at test time, where prototypes use 2×2 windows).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from util.errors import InputError

MODES = ("global", "local", "local+global")
NORM_EPS = 1e-4   # n(v) = v / max(|v|, NORM_EPS); also the cosine eps of the original
MASK_EPS = 1e-5   # denominator guard of the masked average
THRESHOLD = 0.95  # FG_THRESH = BG_THRESH in the original
SCALE = 20.0      # similarity scale, all modes
MODE_CHECK_WINDOW = 4


@dataclass(frozen=True)
class ALPInfo:
    """What one ALP call used; plain ints so a training loop can log them."""

    mode: str           # the mode asked for
    n_local: int        # local prototypes whose pooled mask passed the threshold
    n_prototypes: int   # prototypes the score was computed with
    fallback: bool      # True when the local set was empty and the global prototype was used


@dataclass(frozen=True)
class Prototypes:
    """L2-normalised prototypes ``vectors`` [K, C] of one mask, and how they were made."""

    vectors: Tensor
    info: ALPInfo


def l2_normalize(x: Tensor, dim: int = 1) -> Tensor:
    """``x / max(|x|, 1e-4)`` along ``dim``; a zero vector stays zero."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(NORM_EPS)


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft mask at feature resolution: [S, H, W] or [S, 1, H, W] → [S, 1, h, w].

    Bilinear with ``align_corners=False`` (method.md §4.2): for a factor of 8 each value is the mean
    of the 2×2 pixels at rows/cols {8i+3, 8i+4}, not an area average.
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise InputError(f"downsample_mask: expected a mask [S, H, W] or [S, 1, H, W], "
                         f"got shape {list(mask.shape)}")
    if not mask.is_floating_point():
        mask = mask.float()
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)


def masked_average(feats: Tensor, mask: Tensor) -> Tensor:
    """Per-shot global prototypes: [S, C, h, w] × [S, 1, h, w] → [S, C]."""
    return (feats * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + MASK_EPS)


def local_prototypes(feats: Tensor, mask: Tensor, window: int, threshold: float) -> Tensor:
    """Pooled support features whose pooled mask is > threshold: [K, C], shot by shot, raster."""
    pooled = F.avg_pool2d(feats, window)                 # [S, C, h/k, w/k]
    keep = F.avg_pool2d(mask, window).flatten() > threshold
    return pooled.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])[keep]


def choose_fg_mode(fg_mask: Tensor, threshold: float = THRESHOLD,
                   window: int = MODE_CHECK_WINDOW) -> str:
    """'local+global' if some ``window``×``window`` cell of the mask averages ≥ threshold."""
    if min(fg_mask.shape[-2:]) < window:
        raise InputError(f"choose_fg_mode: expected a mask of at least {window}×{window} "
                         f"(the mode-check window), got {list(fg_mask.shape)}")
    passed = F.avg_pool2d(fg_mask, window).max().item() >= threshold
    return "local+global" if passed else "global"


def build_prototypes(support_feats: Tensor, support_mask: Tensor, mode: str, window: int,
                     threshold: float = THRESHOLD) -> Prototypes:
    """Prototypes of one mask: [S, C, h, w] features, [S, 1, h, w] soft mask → [K, C]."""
    _check_support(support_feats, support_mask, mode, window)
    n_local, fallback = 0, False
    if mode == "global":
        protos = masked_average(support_feats, support_mask).mean(dim=0, keepdim=True)
    else:
        protos = local_prototypes(support_feats, support_mask, window, threshold)
        n_local = protos.shape[0]
        if mode == "local+global":
            protos = torch.cat([protos, masked_average(support_feats, support_mask)])
        elif n_local == 0:
            protos = masked_average(support_feats, support_mask).mean(dim=0, keepdim=True)
            fallback = True
    info = ALPInfo(mode=mode, n_local=n_local, n_prototypes=protos.shape[0], fallback=fallback)
    return Prototypes(l2_normalize(protos, dim=1), info)


def score_prototypes(query_normed: Tensor, protos: Prototypes, scale: float = SCALE) -> Tensor:
    """Softmax-weighted similarity: L2-normalised query [Q, C, h, w] → score [Q, 1, h, w]."""
    if query_normed.dim() != 4 or query_normed.shape[1] != protos.vectors.shape[1]:
        raise InputError(f"score_prototypes: expected query features [Q, "
                         f"{protos.vectors.shape[1]}, h, w], got {list(query_normed.shape)}")
    sim = scale * torch.einsum("qchw,kc->qkhw", query_normed, protos.vectors)
    return (sim.softmax(dim=1) * sim).sum(dim=1, keepdim=True)


def alp_score(query_feats: Tensor, support_feats: Tensor, support_mask: Tensor, mode: str,
              window: int, threshold: float = THRESHOLD,
              scale: float = SCALE) -> tuple[Tensor, ALPInfo]:
    """One ALP call: query [Q, C, h, w], support [S, C, h, w], mask [S, 1, h, w] → [Q, 1, h, w]."""
    protos = build_prototypes(support_feats, support_mask, mode, window, threshold)
    return score_prototypes(l2_normalize(query_feats), protos, scale), protos.info


def _check_support(feats: Tensor, mask: Tensor, mode: str, window: int) -> None:
    if mode not in MODES:
        close = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"ALP: expected mode in {MODES}, got {mode!r}{hint}")
    if feats.dim() != 4:
        raise InputError(f"ALP: expected support features [S, C, h, w], "
                         f"got shape {list(feats.shape)}")
    s, _, h, w = feats.shape
    if tuple(mask.shape) != (s, 1, h, w):
        raise InputError(f"ALP: expected support mask [S, 1, h, w] = {[s, 1, h, w]} to match the "
                         f"support features, got {list(mask.shape)}; downsample it with "
                         f"downsample_mask(mask, (h, w))")
    if mode != "global" and not 1 <= window <= min(h, w):
        raise InputError(f"ALP: expected a pooling window in [1, {min(h, w)}] for {h}×{w} "
                         f"features, got {window}")
