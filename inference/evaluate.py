"""One evaluation loop for ``validation.py`` and validation during training (``val_every``).

For every test class of an :class:`~dataloaders.evaluation.EvaluationSet`: support prototypes
once per part, each query volume encoded once (the slices any class needs), every class scored
from those features, metrics per (query scan, organ); optionally the predictions on the query
image's grid and PNG overlays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data_preprocessing.contract import Dataset
from dataloaders.evaluation import EvaluationSet, SupportPart
from inference.batched import encode_parts, encode_scan, segment_masks
from models.alpnet import ALPNet
from util.device import upload
from util.io import array_with_geometry, atomic_path, read_image_info, write_image
from util.logger import overlay
from util.metrics import OrganScore, score_counts, score_organ

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Scores of one evaluation run, and the (scan, organ) pairs absent from the ground truth.
    Overlap counts still on the device wait in ``pending`` until :meth:`read`."""
    scores: list[OrganScore] = field(default_factory=list)
    absent: list[dict] = field(default_factory=list)
    pending: list[tuple[str, str, int, torch.Tensor]] = field(default_factory=list)

    def read(self) -> "Evaluation":
        """The pending (scan, organ, slices, [tp, predicted, ground truth]) counts, read from
        the device at once, appended to ``scores`` in their order."""
        if self.pending:
            values = torch.stack([v for *_, v in self.pending]).tolist()
            for (scan, organ, n, _), (tp, n_pred, n_gt) in zip(self.pending, values):
                self.scores.append(score_counts(tp, n_pred - tp, n_gt - tp, n, scan, organ))
            self.pending = []
        return self


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


@dataclass
class Staged:
    """An evaluation set's tensors on one device, copied once: the support parts per class, and
    per query scan its grey volume and labels."""
    device: torch.device
    parts: dict[int, list[SupportPart]]
    grey: list[torch.Tensor]
    label: list[torch.Tensor]


def stage(evalset: EvaluationSet, device: torch.device) -> Staged:
    """:class:`Staged` of ``evalset`` on ``device`` (on the CPU the tensors themselves)."""
    def on(part: SupportPart) -> SupportPart:
        return replace(part, images=part.images.to(device), fg=part.fg.to(device),
                       bg=part.bg.to(device))
    return Staged(device, {c: [on(p) for p in evalset.support[c].parts] for c in evalset.classes},
                  [q.grey.to(device) for q in evalset.queries],
                  [q.label.to(device) for q in evalset.queries])


@torch.no_grad()
def evaluate(model: ALPNet, ds: Dataset, evalset: EvaluationSet, device: torch.device,
             batch_size: int = 16, outputs: Outputs = Outputs(),
             progress=None, distances: bool = True, staged: Staged | None = None,
             read: bool = True) -> Evaluation:
    """Predict and score every (query scan, test class) of ``evalset`` with ``model`` as it is.

    The caller puts the model in eval mode (and back in train mode). ``progress`` (optional) is
    called with the scan id after each query scan. Without ``distances`` (validation during
    training) only the overlap metrics are computed, on the device, and read once at the end
    (``read=False``: left for :meth:`Evaluation.read`); the surface distances (HD95, ASSD) need
    the masks on the host. ``staged`` (from :func:`stage`) keeps the set on the device between
    calls.
    """
    result = Evaluation()
    staged = staged if staged is not None else stage(evalset, device)
    on_host = distances or outputs.folder is not None
    prototypes = {c: encode_parts(model, staged.parts[c], device) for c in evalset.classes}
    for i, scan in enumerate(evalset.queries):
        # the header (spacing, grid) of the scan whose voxels are loaded, where the host scores
        reference = read_image_info(ds.path("image", scan.pid)) if on_host else None
        plans = {c: evalset.plans[c][i] for c in evalset.classes}
        needed = sorted({z for plan in plans.values() for z in plan.predict_z})
        feats = encode_scan(model, staged.grey[i], needed, batch_size)
        for c, plan in plans.items():
            organ = ds.labels[c]
            if plan.absent:
                result.absent.append({"scan": scan.pid, "organ": organ,
                                      "protocol": plan.protocol})
                logger.warning("scan %s: %s is absent from the ground truth%s", scan.pid, organ,
                               "" if plan.score_z else "; nothing to score")
                if not plan.score_z:
                    continue
            masks = segment_masks(model, prototypes[c], feats, plan, tuple(scan.grey.shape),
                                  batch_size)
            zs = plan.score_z
            if not on_host:
                rows = upload(torch.as_tensor(zs, dtype=torch.long), masks.device)
                pred = masks.index_select(0, rows).bool()
                gt = staged.label[i].index_select(0, rows) == c
                result.pending.append((scan.pid, organ, len(zs), torch.stack(
                    [(pred & gt).sum(), pred.sum(), gt.sum()])))
                continue
            pred = masks.cpu().numpy()
            gt = scan.binary_label(c).numpy().astype(np.uint8)
            result.scores.append(score_organ(pred[zs], gt[zs], reference.GetSpacing()[::-1],
                                             scan.pid, organ, distances))
            if outputs.folder is not None and outputs.predictions:
                write_prediction(pred, c, reference, outputs.folder / "predictions"
                                 / f"pred_{scan.pid}_{organ}.nii.gz")
            if outputs.folder is not None and outputs.overlay_slices:
                shown = list(range(plan.gt_z[0], plan.gt_z[1] + 1)) if plan.gt_z else zs
                write_overlays(outputs.folder / "overlays", scan.pid, organ, scan.grey, gt, pred,
                               shown, outputs.overlay_slices)
        if progress is not None:
            progress(scan.pid)
    return result.read() if read else result
