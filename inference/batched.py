"""Batched few-shot inference: support prototypes once per (class, part), each query volume
encoded once and scored against every class, everything on the model's device."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dataloaders.evaluation import QueryPlan, QueryScan, SupportPart
from dataloaders.volumes import tile_grey
from models.alpnet import ALPNet, SupportPrototypes
from util.device import upload


@torch.no_grad()
def encode_parts(model: ALPNet, parts: Sequence[SupportPart],
                 device: torch.device) -> list[SupportPrototypes]:
    """Prototypes of every support part of one class (the model must be in eval mode)."""
    return [model.encode_support(p.images.to(device), p.fg.to(device), p.bg.to(device))
            for p in parts]


@torch.no_grad()
def encode_scan(model: ALPNet, grey: torch.Tensor, zs: Sequence[int],
                batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Features [C, h, w] of the slices ``zs`` of a grey volume [Z, H, W] (on the model's
    device: staged once, tiled to three channels there), encoded in batches."""
    feats: dict[int, torch.Tensor] = {}
    rows = upload(torch.as_tensor(list(zs), dtype=torch.long), grey.device)
    for i in range(0, len(zs), batch_size):
        tiled = tile_grey(grey.index_select(0, rows[i:i + batch_size])).contiguous()
        for z, f in zip(zs[i:i + batch_size], model.encode(tiled)):
            feats[z] = f
    return feats


@torch.no_grad()
def segment_masks(model: ALPNet, prototypes: list[SupportPrototypes],
                  feats: dict[int, torch.Tensor], plan: QueryPlan,
                  shape: tuple[int, int, int], batch_size: int = 16) -> torch.Tensor:
    """Binary prediction [Z, H, W] uint8 of one query scan on the features' device (0 on slices
    the plan skips); nothing is read back."""
    device = next(iter(feats.values())).device if feats else torch.device("cpu")
    pred = torch.zeros(shape, dtype=torch.uint8, device=device)
    by_part: dict[int, list[int]] = {}
    for z, part in zip(plan.predict_z, plan.parts):
        by_part.setdefault(part, []).append(z)
    order, masks = [], []
    for part, zs in by_part.items():
        for i in range(0, len(zs), batch_size):
            chunk = zs[i:i + batch_size]
            logits = model.score_features(prototypes[part], torch.stack([feats[z] for z in chunk]),
                                          shape[1:])
            order += chunk
            masks.append(logits.argmax(dim=1).to(torch.uint8))
    if masks:
        pred[upload(torch.as_tensor(order, dtype=torch.long), device)] = torch.cat(masks)
    return pred


def segment_features(model: ALPNet, prototypes: list[SupportPrototypes],
                     feats: dict[int, torch.Tensor], plan: QueryPlan,
                     shape: tuple[int, int, int], batch_size: int = 16) -> np.ndarray:
    """:func:`segment_masks` read to the host once: [Z, H, W] uint8."""
    return segment_masks(model, prototypes, feats, plan, shape, batch_size).cpu().numpy()


def segment(model: ALPNet, prototypes: list[SupportPrototypes], scan: QueryScan, plan: QueryPlan,
            device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Binary prediction [Z, H, W] uint8 of one query scan for one class."""
    feats = encode_scan(model, scan.grey.to(device), plan.predict_z, batch_size)
    return segment_features(model, prototypes, feats, plan, tuple(scan.grey.shape), batch_size)
