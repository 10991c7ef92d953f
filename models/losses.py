"""Losses: weighted cross-entropy on the query (method.md §5.1) and the alignment-loss pieces
(§4.5).

Training minimises ``weighted_cross_entropy(out.logits, query_label) + out.align_loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from util.errors import InputError

CLASS_WEIGHTS = (0.05, 1.0)  # (background, foreground); (1, 1) when use_wce is off
IGNORE_INDEX = 255


def weighted_cross_entropy(logits: Tensor, target: Tensor,
                           class_weights: tuple[float, ...] | None = CLASS_WEIGHTS,
                           ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy of logits [N, K, H, W] against labels [N, H, W] with class weights.

    PyTorch's weighted mean: ``Σ w_y · nll / Σ w_y`` over pixels not equal to ``ignore_index``
    (NaN when every pixel is ignored). ``class_weights``: numbers, or a tensor on the logits'
    device.
    """
    target = _check_target(logits, target, "weighted_cross_entropy")
    weight = None
    if class_weights is not None:
        if len(class_weights) != logits.shape[1]:
            raise InputError(f"weighted_cross_entropy: expected one weight per class "
                             f"({logits.shape[1]}), got {len(class_weights)}: {class_weights}")
        # a tensor already on the device, as training passes it: building one from Python
        # numbers here would copy to the GPU, and wait for it, at every step
        weight = class_weights.to(logits.dtype) if isinstance(class_weights, Tensor) else \
            torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def alignment_target(support_fg: Tensor, support_bg: Tensor,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Support labels for the alignment loss: [S, H, W] long, 1 on fg, 0 on bg, else ignored.

    Where a pixel is in both masks, background wins (it is written last, as in the original).
    """
    if support_fg.shape != support_bg.shape:
        raise InputError(f"alignment_target: expected fg and bg masks of one shape, got "
                         f"{list(support_fg.shape)} and {list(support_bg.shape)}")
    target = torch.full(support_fg.shape, ignore_index, dtype=torch.long, device=support_fg.device)
    target[support_fg == 1] = 1
    target[support_bg == 1] = 0
    return target


def per_image_cross_entropy(logits: Tensor, target: Tensor,
                            ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Unweighted cross-entropy per image: [N, K, H, W], [N, H, W] → [N].

    Each entry is the mean over that image's non-ignored pixels, i.e. what one
    ``F.cross_entropy`` call per image gives; an image with no valid pixel gives 0, not NaN.
    """
    target = _check_target(logits, target, "per_image_cross_entropy")
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = (target != ignore_index).flatten(1).sum(dim=1)
    return nll.flatten(1).sum(dim=1) / valid.clamp_min(1)


def _check_target(logits: Tensor, target: Tensor, where: str) -> Tensor:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(f"{where}: expected logits [N, K, H, W] and labels [N, H, W] of the same "
                         f"N, H, W, got {list(logits.shape)} and {list(target.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise InputError(f"{where}: expected integer labels (torch.long), got {target.dtype}; "
                         f"convert them with .long()")
    return target.long()
