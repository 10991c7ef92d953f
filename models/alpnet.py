"""ALPNet (the original's ``FewShotSeg``): 1-way S-shot segmentation with ALP (method.md §4.4–§4.5).

Training, one episode::

    out = model(support_images, support_fg, support_bg, query_images)
    loss = weighted_cross_entropy(out.logits, query_label) + out.align_loss

Evaluation, the support of a class encoded once and reused for batches of query slices::

    model.eval()
    support = model.encode_support(support_images, support_fg, support_bg)
    logits = model.score_features(support, model.encode(query_slices), (H, W))  # [Q, 2, H, W]

Shapes: images [S or Q, 3, H, W], masks [S, H, W] in {0, 1} (soft values allowed), features
[N, 256, H/8, W/8]. Pooling windows are 4 in training and 2 in evaluation (``self.training``).
``prototypes='global'`` is the paper's ablation: one masked-average prototype for the foreground
and one for the background (PANet), no local ones. No file is read here: weights are loaded by
:mod:`inference.loader`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.alp import (MODE_CHECK_WINDOW, SCALE, THRESHOLD, Prototypes, build_prototypes,
                        downsample_mask, l2_normalize, score_prototypes)
from models.encoder import build_encoder
from models.losses import alignment_target, per_image_cross_entropy
from util.errors import InputError

FEATURE_HW = 32   # the encoder's output grid for a 256 x 256 input
TRAIN_WINDOW = 4  # feature_hw / proto_grid_size = 32 / 8
EVAL_WINDOW = 2   # val_wsize
PROTOTYPES = ("alp", "global")  # ALP (local + global), or one masked average each (PANet)
# training on an empty local prototype set: the global prototype, or the original's skipped step
EMPTY_PROTOTYPES = ("fallback", "skip")


class ALPNetOutput(NamedTuple):
    logits: Tensor       # [Q, 2, H, W] (background, foreground), at the input resolution
    align_loss: Tensor   # scalar; 0 unless training with align=True
    n_fallback: Tensor   # 0-d long: ALP calls whose local set was empty (the global prototype
    #                      stood in); a device tensor, read by the training loop at its intervals


@dataclass(frozen=True)
class SupportPrototypes:
    """Background and foreground prototypes of one support set (one class, all shots)."""

    bg: Prototypes
    fg: Prototypes

    @property
    def n_fallback(self) -> Tensor:
        return self.bg.fallback.long() + self.fg.fallback.long()


class ALPNet(nn.Module):
    """Encoder + ALP; state-dict keys ``encoder.*`` as in the original (ALP has no parameters)."""

    def __init__(self, encoder: str | nn.Module = "deeplabv3_resnet101", *, align: bool = True,
                 fg_threshold: float = THRESHOLD, bg_threshold: float = THRESHOLD,
                 scale: float = SCALE, train_window: int = TRAIN_WINDOW,
                 eval_window: int = EVAL_WINDOW, mode_check_window: int = MODE_CHECK_WINDOW,
                 autocast_bf16: bool = False, channels_last: bool = False,
                 prototypes: str = "alp") -> None:
        super().__init__()
        for name, value in (("train_window", train_window), ("eval_window", eval_window),
                            ("mode_check_window", mode_check_window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ALPNet: expected {name} to be a positive int, got {value!r}")
        for name, value in (("fg_threshold", fg_threshold), ("bg_threshold", bg_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"ALPNet: expected {name} in [0, 1], got {value}")
        if not scale > 0:
            raise InputError(f"ALPNet: expected a positive similarity scale, got {scale}")
        if prototypes not in PROTOTYPES:
            raise InputError(f"ALPNet: expected prototypes in {PROTOTYPES}, got {prototypes!r}")
        self.encoder = build_encoder(encoder) if isinstance(encoder, str) else encoder
        self.fg_threshold = float(fg_threshold)
        self.bg_threshold = float(bg_threshold)
        self.scale = float(scale)
        self.prototype_kind = prototypes
        self.align = align
        self.train_window = train_window
        self.eval_window = eval_window
        self.mode_check_window = mode_check_window
        self.autocast_bf16 = autocast_bf16
        self.channels_last = channels_last
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)

    @property
    def window(self) -> int:
        return self.train_window if self.training else self.eval_window

    def forward(self, support_images: Tensor, support_fg: Tensor, support_bg: Tensor,
                query_images: Tensor) -> ALPNetOutput:
        """One episode; support and query go through the encoder in one batch (shared BN).

        N episodes at once (``episodes_per_step``): every tensor with a leading episode axis,
        images [N, S or Q, 3, H, W] and masks [N, S, H, W]. Their 2N images are encoded as one
        batch (batch-norm statistics pool them), prototypes and scores stay per episode; the
        logits of the queries are stacked [N·Q, 2, H, W], ``align_loss`` is the episodes'
        mean and ``n_fallback`` their sum."""
        if support_images.dim() != 5:
            return self.forward_episodes(support_images[None], support_fg[None],
                                         support_bg[None], query_images[None])
        return self.forward_episodes(support_images, support_fg, support_bg, query_images)

    def forward_episodes(self, support_images: Tensor, support_fg: Tensor, support_bg: Tensor,
                         query_images: Tensor) -> ALPNetOutput:
        n, n_shots = support_images.shape[:2]
        for i in range(n):
            _check_support(support_images[i], support_fg[i], support_bg[i])
            _check_query(query_images[i], support_images[i])
        n_queries = query_images.shape[1]
        feats = self.encode(torch.cat([support_images, query_images], dim=1).flatten(0, 1))
        feats = feats.unflatten(0, (n, n_shots + n_queries))
        logits, align, fallbacks = [], [], []
        for i in range(n):
            support_feats, query_feats = feats[i, :n_shots], feats[i, n_shots:]
            support = self.support_prototypes(support_feats, support_fg[i], support_bg[i])
            low = self.lowres_logits(l2_normalize(query_feats), support)
            fallbacks.append(support.n_fallback)
            if self.training and self.align:
                loss, n_align_fallback = self.alignment_loss(query_feats, low, support_feats,
                                                             support_fg[i], support_bg[i])
                align.append(loss)
                fallbacks.append(n_align_fallback)
            logits.append(_upsample(low, query_images.shape[-2:]))
        align_loss = torch.stack(align).mean() if align else feats.new_zeros(())
        return ALPNetOutput(torch.cat(logits), align_loss, torch.stack(fallbacks).sum())

    def encode(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] → float32 features [N, 256, H/8, W/8], with the configured speed-ups."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16,
                            enabled=self.autocast_bf16):
            feats = self.encoder(images)
        return feats.float().contiguous()

    def encode_support(self, support_images: Tensor, support_fg: Tensor,
                       support_bg: Tensor) -> SupportPrototypes:
        """Prototypes of a support set, for scoring many queries (use in eval mode); only the
        valid candidates are kept (:meth:`models.alp.Prototypes.compact`)."""
        _check_support(support_images, support_fg, support_bg)
        support = self.support_prototypes(self.encode(support_images), support_fg, support_bg)
        return SupportPrototypes(bg=support.bg.compact(), fg=support.fg.compact())

    def score_features(self, support: SupportPrototypes, query_feats: Tensor,
                       size: tuple[int, int]) -> Tensor:
        """Logits [Q, 2, *size] of already encoded queries [Q, C, h, w] (encode a volume once,
        score it against several classes)."""
        return _upsample(self.lowres_logits(l2_normalize(query_feats), support), size)

    def support_prototypes(self, support_feats: Tensor, support_fg: Tensor,
                           support_bg: Tensor) -> SupportPrototypes:
        """Prototypes from features [S, C, h, w] and image-resolution masks [S, H, W]."""
        size = support_feats.shape[-2:]
        fg = downsample_mask(support_fg.to(support_feats), size)
        bg = downsample_mask(support_bg.to(support_feats), size)
        return self._prototypes(support_feats, fg, bg, self.window)

    def lowres_logits(self, query_normed: Tensor, support: SupportPrototypes) -> Tensor:
        """Normalised query features [Q, C, h, w] → (background, foreground) scores [Q, 2, h, w]."""
        return torch.cat([score_prototypes(query_normed, support.bg, self.scale),
                          score_prototypes(query_normed, support.fg, self.scale)], dim=1)

    def alignment_loss(self, query_feats: Tensor, query_logits: Tensor, support_feats: Tensor,
                       support_fg: Tensor, support_bg: Tensor) -> tuple[Tensor, Tensor]:
        """Prototype alignment (method.md §4.5): segment the support with the query's prediction.

        The masks are the argmax of the low-resolution query logits [Q, 2, h, w] (no gradient);
        the loss is the unweighted cross-entropy per support shot, averaged over the shots.
        """
        pred = query_logits.argmax(dim=1, keepdim=True)
        fg, bg = (pred == 1).to(query_feats.dtype), (pred == 0).to(query_feats.dtype)
        protos = self._prototypes(query_feats, fg, bg, self.train_window)
        low = self.lowres_logits(l2_normalize(support_feats), protos)
        target = alignment_target(support_fg, support_bg)
        loss = per_image_cross_entropy(_upsample(low, support_fg.shape[-2:]), target).mean()
        return loss, protos.n_fallback

    def _prototypes(self, feats: Tensor, fg: Tensor, bg: Tensor, window: int) -> SupportPrototypes:
        bg_mode, fg_mode = ("global", "global") if self.prototype_kind == "global" \
            else ("local", "adaptive")
        return SupportPrototypes(
            bg=build_prototypes(feats, bg, bg_mode, window, self.bg_threshold),
            fg=build_prototypes(feats, fg, fg_mode, window, self.fg_threshold,
                                self.mode_check_window))


def _upsample(scores: Tensor, size) -> Tensor:
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


def _check_support(images: Tensor, fg: Tensor, bg: Tensor) -> None:
    if images.dim() != 4:
        raise InputError(f"ALPNet: expected support_images [S, 3, H, W], "
                         f"got {list(images.shape)}")
    s, _, h, w = images.shape
    for name, mask in (("support_fg", fg), ("support_bg", bg)):
        if tuple(mask.shape) != (s, h, w):
            raise InputError(f"ALPNet: expected {name} [S, H, W] = {[s, h, w]} to match "
                             f"support_images {list(images.shape)}, got {list(mask.shape)}")


def _check_query(query: Tensor, support: Tensor) -> None:
    if query.dim() != 4 or query.shape[1:] != support.shape[1:]:
        expected = ["Q", *support.shape[1:]]
        raise InputError(f"ALPNet: expected query_images {expected} like the support, "
                         f"got {list(query.shape)}")
