"""Batched few-shot inference: support prototypes once per (class, part), each query volume
encoded once and scored against every class."""
from __future__ import annotations

import numpy as np
import torch

from dataloaders.evaluation import QueryPlan, QueryScan, SupportSet
from models.alpnet import ALPNet, SupportPrototypes


@torch.no_grad()
def encode_parts(model: ALPNet, support: SupportSet,
                 device: torch.device) -> list[SupportPrototypes]:
    """Prototypes of every support part of one class (the model must be in eval mode)."""
    return [model.encode_support(p.images.to(device), p.fg.to(device), p.bg.to(device))
            for p in support.parts]


@torch.no_grad()
def encode_scan(model: ALPNet, scan: QueryScan, zs: list[int], device: torch.device,
                batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Features [C, h, w] of the slices ``zs`` of a query scan, encoded in batches."""
    feats: dict[int, torch.Tensor] = {}
    for i in range(0, len(zs), batch_size):
        chunk = zs[i:i + batch_size]
        for z, f in zip(chunk, model.encode(scan.tiled(chunk).to(device))):
            feats[z] = f
    return feats


@torch.no_grad()
def segment_features(model: ALPNet, prototypes: list[SupportPrototypes],
                     feats: dict[int, torch.Tensor], plan: QueryPlan,
                     shape: tuple[int, int, int], batch_size: int = 16) -> np.ndarray:
    """Binary prediction [Z, H, W] uint8 of one query scan from its encoded slices (0 on slices
    the plan skips); the slices' masks are read from the device once, together."""
    pred = np.zeros(shape, np.uint8)
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
        pred[order] = torch.cat(masks).cpu().numpy()
    return pred


def segment(model: ALPNet, prototypes: list[SupportPrototypes], scan: QueryScan, plan: QueryPlan,
            device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Binary prediction [Z, H, W] uint8 of one query scan for one class."""
    feats = encode_scan(model, scan, plan.predict_z, device, batch_size)
    return segment_features(model, prototypes, feats, plan, tuple(scan.grey.shape), batch_size)
