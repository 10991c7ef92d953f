"""Batched few-shot inference: support prototypes once per (class, part), query slices in batches."""
from __future__ import annotations

import numpy as np
import torch

from dataloaders.evaluation import QueryPlan, QueryScan, SupportSet
from models.alpnet import ALPNet, SupportPrototypes


@torch.no_grad()
def encode_parts(model: ALPNet, support: SupportSet, device: torch.device) -> list[SupportPrototypes]:
    """Prototypes of every support part of one class (the model must be in eval mode)."""
    return [model.encode_support(p.images.to(device), p.fg.to(device), p.bg.to(device))
            for p in support.parts]


@torch.no_grad()
def segment(model: ALPNet, prototypes: list[SupportPrototypes], scan: QueryScan, plan: QueryPlan,
            device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Binary prediction [Z, H, W] uint8 of one query scan (0 on slices the plan skips)."""
    pred = np.zeros(tuple(scan.grey.shape), np.uint8)
    by_part: dict[int, list[int]] = {}
    for z, part in zip(plan.predict_z, plan.parts):
        by_part.setdefault(part, []).append(z)
    for part, zs in by_part.items():
        for i in range(0, len(zs), batch_size):
            chunk = zs[i:i + batch_size]
            logits = model.score_queries(prototypes[part], scan.tiled(chunk).to(device))
            pred[chunk] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return pred
