"""Adaptive local prototype pooling (ALP): the heart of ALPNet (method.md §4.2–§4.3).

One ALP call scores every query position against the prototypes of one class (or of the
background), computed from the support features and a soft support mask at feature resolution:

1. Prototypes, by ``mode``:
   - ``'global'``       one masked average over all shots, ``mean_s Σ F_s·M_s / (Σ M_s + 1e-5)``
                        (PANet's prototype; the original calls this mode ``'mask'``);
   - ``'local'``        the k×k average-pooled support features whose pooled mask is > threshold,
                        shot by shot, raster order inside a shot (original: ``'gridconv'``);
   - ``'local+global'`` the local ones followed by one masked average per shot
                        (original: ``'gridconv+'``);
   - ``'adaptive'``     the foreground's rule: ``'local+global'`` when some 4×4 window of the
                        mask averages ≥ threshold, else ``'global'`` (the original chooses
                        between the two on the host).
2. Similarities ``d_k(x) = scale · <n(q(x)), n(p_k)>`` with ``n(v) = v / max(|v|, 1e-4)``.
3. Score ``Σ_k softmax_k(d(x)) · d_k(x)``: the softmax-weighted mean similarity. With a single
   prototype this is exactly ``scale · cos(q(x), p)``, the PANet score, so all modes share it.

Fixed against the original (method.md §0): when no window passes the threshold in ``'local'`` mode
the set is empty; we fall back to the global prototype of that mask instead of raising, and flag
it (``Prototypes.fallback``) so training can count it.

The foreground mode is chosen from the mask alone (:func:`local_allowed`), always with a 4×4
window (also at test time, where prototypes use 2×2 windows). The number of prototypes is fixed
per feature size: which ones count is a mask on the device (:class:`Prototypes`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from util.errors import InputError

MODES = ("global", "local", "local+global", "adaptive")
NORM_EPS = 1e-4   # n(v) = v / max(|v|, NORM_EPS); also the cosine eps of the original
MASK_EPS = 1e-5   # denominator guard of the masked average
THRESHOLD = 0.95  # FG_THRESH = BG_THRESH in the original
SCALE = 20.0      # similarity scale, all modes
MODE_CHECK_WINDOW = 4


@dataclass(frozen=True)
class ALPInfo:
    """What one ALP call used, as plain values (reading them waits for the device): for tests,
    benchmarks and logs, never inside a training step."""

    mode: str           # the mode used ('adaptive' resolves to 'global' or 'local+global')
    n_local: int        # local prototypes whose pooled mask passed the threshold
    n_prototypes: int   # prototypes the score was computed with
    fallback: bool      # True when the local set was empty and the global prototype was used


@dataclass(frozen=True)
class Prototypes:
    """The candidate prototypes of one mask, L2-normalised ``vectors`` [K, C], and the ones that
    count, ``valid`` [K].

    K depends on the feature size and the mode only (every pooling window, then the global
    ones), never on the mask: how many windows pass the threshold stays on the device, so no
    step waits for the host and a step can be captured whole (``torch.compile``, CUDA graphs).
    Invalid candidates get zero softmax weight, which is the same score as leaving them out.
    ``n_local`` (long) and ``fallback`` (bool) are 0-d tensors; ``local_chosen`` is the adaptive
    mode's choice (None in the other modes); ``dense``: every candidate is valid (known on the
    host, after :meth:`compact`)."""

    vectors: Tensor
    valid: Tensor
    mode: str
    n_local: Tensor
    fallback: Tensor
    local_chosen: Tensor | None = None
    dense: bool = False

    def used(self) -> Tensor:
        """The prototypes the score uses, [K_valid, C] (reads the device)."""
        return self.vectors[self.valid]

    def compact(self) -> "Prototypes":
        """The same prototypes without the invalid candidates (reads the device once): for a
        support scored against many queries, where scoring every candidate would cost more
        than the one read."""
        used = self.used()
        return Prototypes(used, self.valid.new_ones(len(used)), self.mode, self.n_local,
                          self.fallback, self.local_chosen, dense=True)

    @property
    def info(self) -> ALPInfo:
        mode = self.mode
        if self.local_chosen is not None:
            mode = "local+global" if bool(self.local_chosen) else "global"
        return ALPInfo(mode=mode, n_local=int(self.n_local),
                       n_prototypes=int(self.valid.sum()), fallback=bool(self.fallback))


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


def local_candidates(feats: Tensor, mask: Tensor, window: int,
                     threshold: float) -> tuple[Tensor, Tensor]:
    """Every window's pooled support features [S·(h/k)·(w/k), C], shot by shot in raster order,
    and whether its pooled mask is > threshold [S·(h/k)·(w/k)] (bool)."""
    pooled = F.avg_pool2d(feats, window)                 # [S, C, h/k, w/k]
    keep = F.avg_pool2d(mask, window).flatten() > threshold
    return pooled.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]), keep


def local_prototypes(feats: Tensor, mask: Tensor, window: int, threshold: float) -> Tensor:
    """The local prototypes that pass, [K, C] (a variable count: reads the device)."""
    candidates, keep = local_candidates(feats, mask, window, threshold)
    return candidates[keep]


def local_allowed(fg_mask: Tensor, threshold: float = THRESHOLD,
                  window: int = MODE_CHECK_WINDOW) -> Tensor:
    """0-d bool on the mask's device: some ``window``×``window`` cell averages ≥ threshold (the
    foreground then gets local prototypes, 'local+global'; else one global prototype)."""
    if min(fg_mask.shape[-2:]) < window:
        raise InputError(f"foreground mode check: expected a mask of at least {window}×{window} "
                         f"(the mode-check window), got {list(fg_mask.shape)}")
    return F.avg_pool2d(fg_mask, window).amax() >= threshold


def choose_fg_mode(fg_mask: Tensor, threshold: float = THRESHOLD,
                   window: int = MODE_CHECK_WINDOW) -> str:
    """'local+global' if some ``window``×``window`` cell of the mask averages ≥ threshold, else
    'global' (reads the device; the model uses :func:`local_allowed`)."""
    return "local+global" if bool(local_allowed(fg_mask, threshold, window)) else "global"


def build_prototypes(support_feats: Tensor, support_mask: Tensor, mode: str, window: int,
                     threshold: float = THRESHOLD,
                     check_window: int = MODE_CHECK_WINDOW) -> Prototypes:
    """Prototypes of one mask: [S, C, h, w] features, [S, 1, h, w] soft mask.

    Candidates and validity by mode (L: the local candidates, k: those that pass):
    'global' [mean of the shots' masked averages]; 'local' [L, that mean], the mean valid only
    when no window passed (the fallback); 'local+global' [L, one masked average per shot];
    'adaptive' (the foreground rule) [L, per shot, mean]: 'local+global' when
    :func:`local_allowed` (window ``check_window``), else 'global'."""
    _check_support(support_feats, support_mask, mode, window)
    shots = masked_average(support_feats, support_mask)            # [S, C]
    mean = shots.mean(dim=0, keepdim=True)
    no = torch.zeros((), dtype=torch.bool, device=support_feats.device)
    if mode == "global":
        return Prototypes(l2_normalize(mean), ~no[None], mode, no.long(), no)
    candidates, keep = local_candidates(support_feats, support_mask, window, threshold)
    every_shot = torch.ones(len(shots), dtype=torch.bool, device=keep.device)
    if mode == "local":
        fallback = ~keep.any()
        return Prototypes(l2_normalize(torch.cat([candidates, mean])),
                          torch.cat([keep, fallback[None]]), mode, keep.sum(), fallback)
    if mode == "local+global":
        return Prototypes(l2_normalize(torch.cat([candidates, shots])),
                          torch.cat([keep, every_shot]), mode, keep.sum(), no)
    chosen = local_allowed(support_mask, threshold, check_window)
    keep = keep & chosen
    return Prototypes(l2_normalize(torch.cat([candidates, shots, mean])),
                      torch.cat([keep, every_shot & chosen, ~chosen[None]]), mode, keep.sum(),
                      no, chosen)


def score_prototypes(query_normed: Tensor, protos: Prototypes, scale: float = SCALE) -> Tensor:
    """Softmax-weighted similarity: L2-normalised query [Q, C, h, w] → score [Q, 1, h, w]."""
    if query_normed.dim() != 4 or query_normed.shape[1] != protos.vectors.shape[1]:
        raise InputError(f"score_prototypes: expected query features [Q, "
                         f"{protos.vectors.shape[1]}, h, w], got {list(query_normed.shape)}")
    sim = scale * torch.einsum("qchw,kc->qkhw", query_normed, protos.vectors)
    masked = sim if protos.dense else sim.masked_fill(~protos.valid.view(1, -1, 1, 1),
                                                      float("-inf"))
    weights = masked.softmax(dim=1)
    return (weights * sim).sum(dim=1, keepdim=True)


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
