"""One evaluation loop for ``validation.py`` and validation during training (``val_every``).

For every test class of an :class:`~dataloaders.evaluation.EvaluationSet`: support prototypes
once per part, each query volume encoded once (the slices any class needs), every class scored
from those features, metrics per (query scan, organ); optionally the predictions on the query
image's grid and PNG overlays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data_preprocessing.contract import Dataset
from dataloaders.evaluation import EvaluationSet
from inference.batched import encode_parts, encode_scan, segment_features
from models.alpnet import ALPNet
from util.io import array_with_geometry, atomic_path, read_image_info, write_image
from util.logger import overlay
from util.metrics import OrganScore, score_organ

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Scores of one evaluation run, and the (scan, organ) pairs absent from the ground truth."""
    scores: list[OrganScore] = field(default_factory=list)
    absent: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Outputs:
    """What an evaluation writes besides its scores (nothing by default)."""
    folder: Path | None = None
    predictions: bool = False
    overlay_slices: int = 0


def write_prediction(pred: np.ndarray, class_id: int,
                     reference: sitk.Image | sitk.ImageFileReader, path: Path) -> None:
    """A [Z, h, w] binary prediction as 0/class_id on the reference image's full grid (an image,
    or the header of its file)."""
    full = np.zeros(tuple(reversed(reference.GetSize())), np.uint8)
    z, h, w = pred.shape
    full[:z, :h, :w] = pred * class_id
    write_image(array_with_geometry(full, reference), path)


def write_overlays(folder: Path, pid: str, organ: str, grey: torch.Tensor, gt: np.ndarray,
                   pred: np.ndarray, zs: list[int], n: int) -> None:
    """PNG panels (ground truth | prediction) for ``n`` slices spread over ``zs``."""
    import cv2

    picks = sorted({zs[int(i)] for i in np.linspace(0, len(zs) - 1, n)}) if zs and n else []
    for z in picks:
        image = grey[z].unsqueeze(0).expand(3, -1, -1)
        panel = np.concatenate([overlay(image, torch.from_numpy(gt[z]), (0.2, 1.0, 0.2)),
                                overlay(image, torch.from_numpy(pred[z]), (1.0, 0.2, 0.2))],
                               axis=1)
        with atomic_path(folder / f"{pid}_{organ}_z{z:03d}.png") as tmp:
            cv2.imwrite(str(tmp), (panel[..., ::-1] * 255).astype(np.uint8))


@torch.no_grad()
def evaluate(model: ALPNet, ds: Dataset, evalset: EvaluationSet, device: torch.device,
             batch_size: int = 16, outputs: Outputs = Outputs(),
             progress=None) -> Evaluation:
    """Predict and score every (query scan, test class) of ``evalset`` with ``model`` as it is.

    The caller puts the model in eval mode (and back in train mode). ``progress`` (optional) is
    called with the scan id after each query scan.
    """
    result = Evaluation()
    prototypes = {c: encode_parts(model, evalset.support[c], device) for c in evalset.classes}
    for i, scan in enumerate(evalset.queries):
        reference = read_image_info(ds.path("image", scan.pid))  # voxels already loaded
        sx, sy, sz = reference.GetSpacing()
        plans = {c: evalset.plans[c][i] for c in evalset.classes}
        needed = sorted({z for plan in plans.values() for z in plan.predict_z})
        feats = encode_scan(model, scan, needed, device, batch_size)
        for c, plan in plans.items():
            organ = ds.labels[c]
            if plan.absent:
                result.absent.append({"scan": scan.pid, "organ": organ,
                                      "protocol": plan.protocol})
                logger.warning("scan %s: %s is absent from the ground truth%s", scan.pid, organ,
                               "" if plan.score_z else "; nothing to score")
                if not plan.score_z:
                    continue
            pred = segment_features(model, prototypes[c], feats, plan, tuple(scan.grey.shape),
                                    batch_size)
            gt = scan.binary_label(c).numpy().astype(np.uint8)
            zs = plan.score_z
            result.scores.append(score_organ(pred[zs], gt[zs], (sz, sy, sx), scan.pid, organ))
            if outputs.folder is not None and outputs.predictions:
                write_prediction(pred, c, reference, outputs.folder / "predictions"
                                 / f"pred_{scan.pid}_{organ}.nii.gz")
            if outputs.folder is not None and outputs.overlay_slices:
                shown = list(range(plan.gt_z[0], plan.gt_z[1] + 1)) if plan.gt_z else zs
                write_overlays(outputs.folder / "overlays", scan.pid, organ, scan.grey, gt, pred,
                               shown, outputs.overlay_slices)
        if progress is not None:
            progress(scan.pid)
    return result
