"""Segmentation metrics per (scan, organ): Dice, precision, recall, HD95 and ASSD in millimetres.

Empty masks are handled, never raised on, and flagged:

==========================  =====  =========  ======  ==========
case                        Dice   precision  recall  HD95, ASSD
==========================  =====  =========  ======  ==========
both empty                  1      nan        nan     nan
ground truth empty only     0      0          nan     nan
prediction empty only       0      nan        0       nan
==========================  =====  =========  ======  ==========

Aggregates are NaN-aware means and population std over the scans where a value exists, with the
count reported.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from medpy.metric import binary as medpy_binary
from util.errors import InputError


@dataclass
class OrganScore:
    scan: str
    organ: str
    dice: float
    precision: float
    recall: float
    hd95_mm: float
    assd_mm: float
    tp: int
    fp: int
    fn: int
    empty_gt: bool
    empty_pred: bool
    n_slices: int

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & gt))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(gt)) - tp


def score_organ(pred: np.ndarray, gt: np.ndarray, spacing_zyx: tuple[float, float, float],
                scan: str = "", organ: str = "", distances: bool = True) -> OrganScore:
    """Metrics of a binary prediction against a binary ground truth, both [Z, H, W]; the surface
    distances (HD95, ASSD) only with ``distances`` (else NaN)."""
    if pred.shape != gt.shape:
        raise InputError(f"scan {scan} {organ}: expected prediction and ground truth of one "
                         f"shape, got {pred.shape} and {gt.shape}")
    pred, gt = pred.astype(bool), gt.astype(bool)
    tp, fp, fn = overlap_counts(pred, gt)
    hd95 = assd = math.nan
    if distances and tp + fn and tp + fp:
        hd95 = float(medpy_binary.hd95(pred, gt, voxelspacing=spacing_zyx))
        assd = float(medpy_binary.assd(pred, gt, voxelspacing=spacing_zyx))
    return score_counts(tp, fp, fn, int(pred.shape[0]), scan, organ, hd95, assd)


def score_counts(tp: int, fp: int, fn: int, n_slices: int, scan: str = "", organ: str = "",
                 hd95: float = math.nan, assd: float = math.nan) -> OrganScore:
    """The overlap metrics of true / false positive and false negative voxel counts (an empty
    prediction of an empty ground truth has Dice 1)."""
    empty_gt, empty_pred = tp + fn == 0, tp + fp == 0
    dice = 1.0 if empty_gt and empty_pred else 2 * tp / (2 * tp + fp + fn)
    return OrganScore(scan, organ, float(dice), _ratio(tp, tp + fp), _ratio(tp, tp + fn), hd95,
                      assd, int(tp), int(fp), int(fn), empty_gt, empty_pred, int(n_slices))


METRICS = ("dice", "precision", "recall", "hd95_mm", "assd_mm")


def summarize(scores: list[OrganScore]) -> dict:
    """Per organ and overall: mean, std and count of every metric (NaN-aware).

    ``overall`` is the mean over scans of the per-scan mean over organs (the original's
    ``meanDice``), for each metric.
    """
    out: dict = {"per_organ": {}, "overall": {}}
    organs = sorted({s.organ for s in scores}, key=[s.organ for s in scores].index)
    for organ in organs:
        rows = [s for s in scores if s.organ == organ]
        out["per_organ"][organ] = {m: _stats([getattr(s, m) for s in rows]) for m in METRICS}
    scans = sorted({s.scan for s in scores}, key=[s.scan for s in scores].index)
    for m in METRICS:
        per_scan = []
        for scan in scans:
            vals = [getattr(s, m) for s in scores if s.scan == scan]
            finite = [v for v in vals if not math.isnan(v)]
            per_scan.append(float(np.mean(finite)) if finite else math.nan)
        out["overall"][m] = _stats(per_scan)
    return out


def _stats(values: list[float]) -> dict:
    finite = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def format_table(summary: dict, metrics: tuple[str, ...] = ("dice", "hd95_mm", "assd_mm")) -> str:
    """A plain-text table: one row per organ plus the overall row, mean ± std (n)."""
    header = f"{'organ':<12}" + "".join(f"{m:>22}" for m in metrics)
    lines = [header, "-" * len(header)]
    rows = list(summary["per_organ"].items()) + [("overall", summary["overall"])]
    for organ, stats in rows:
        cells = []
        for m in metrics:
            st = stats[m]
            scale = 100.0 if m == "dice" else 1.0
            cells.append(f"{st['mean'] * scale:>9.2f} ± {st['std'] * scale:6.2f} ({st['n']})"
                         if st["n"] else f"{'n/a':>22}")
        lines.append(f"{organ:<12}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
