"""Evaluate a checkpoint on one fold: 1-shot or k-shot, paper or realistic protocol.

    python validation.py with chaost2 group0 eval_fold=0 reload_model_path=<run>/snapshots/latest.pth
    python validation.py with chaost2 group1 protocol=realistic reload_model_path=...

Setup → data (support parts and query plans of the fold's test classes) → model → for each class:
support prototypes once per part, query slices in batches → metrics, predictions, overlays. The run
folder ``<log_dir>/validate/<exp_name>/<id>`` gets ``scores.csv``, ``summary.json``, the
predictions ``predictions/pred_<pid>_<organ>.nii.gz`` (the query image's grid and geometry) and
``overlays/*.png``.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from config_ssl_upload import ex, run_cli
from data_preprocessing.contract import load_dataset
from data_preprocessing.registry import make_folds
from dataloaders.evaluation import build_evaluation
from models.factory import build_model
from util.checkpoint import SNAPSHOT_DIR, checkpoint_weights, find_resume_checkpoint
from util.device import resolve_device
from util.inference import encode_parts, encode_scan, segment_features
from util.io import array_with_geometry, atomic_path, read_image_info, write_image, write_json
from util.logger import RunLogger, overlay
from util.metrics import METRICS, format_table, score_organ, summarize
from util.seeding import seed_everything


def fold_scans(ds, cfg: dict) -> dict:
    """Support and query scans of the fold for ``n_shots`` (k-shot folds as SPEC §3.1)."""
    if cfg["n_shots"] == ds.splits.get("n_shots", 1) and cfg["support_idx"] == [-1]:
        return ds.fold(cfg["eval_fold"])  # splits.json as written
    ds.fold(cfg["eval_fold"])  # checks the fold index
    return make_folds(ds.cases, tuple(ds.splits["fold_sep"]), cfg["n_shots"],
                      cfg["support_idx"][0])[cfg["eval_fold"]]


def resolve_weights(cfg: dict) -> tuple[str | None, dict, dict | None]:
    """``reload_model_path`` as (checkpoint file, its training config, its model state dict;
    {} and None for a bare state dict), the file read once: "latest" → the newest training run
    of this experiment under ``log_dir/train``; a run folder → its newest loadable checkpoint."""
    target = cfg["reload_model_path"]
    if target == "latest":
        runs = Path(cfg["log_dir"]) / "train" / cfg["exp_name"]
        ids = sorted((int(p.name) for p in runs.glob("*") if p.name.isdigit()), reverse=True)
        found = [runs / str(i) for i in ids if (runs / str(i) / SNAPSHOT_DIR).is_dir()]
        if not found:
            raise FileNotFoundError(f"{runs}: expected a training run with checkpoints for "
                                    f"reload_model_path=latest, found none; train first or name "
                                    f"the checkpoint")
        target = found[0]
    if target and Path(target).is_dir():
        path, state = find_resume_checkpoint(target)
        return (str(path), {**state.get("config", {}), "checkpoint_step": int(state["step"])},
                state["model"])
    return (target, *checkpoint_weights(target))


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


@ex.command
def validate(_run, _config, _log):
    cfg = json.loads(json.dumps(_config))
    run_dir = Path(_run.observers[0].dir) if _run.observers else Path(cfg["log_dir"])
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"], cfg["deterministic"])

    # data
    ds = load_dataset(cfg["data_dir"])
    split = fold_scans(ds, cfg)
    evalset = build_evaluation(ds, cfg["eval_fold"], label_group=cfg["label_sets"],
                               protocol=cfg["protocol"], npart=cfg["n_sup_part"],
                               support_pids=split["support"], query_pids=split["query"],
                               z_margin=cfg["z_margin"])
    _log.info("%s fold %d, %s protocol: support %s, queries %s, classes %s", ds.name,
              cfg["eval_fold"], cfg["protocol"], split["support"], split["query"],
              [ds.labels[c] for c in evalset.classes])

    # model
    cfg["reload_model_path"], trained, weights = resolve_weights(cfg)
    if not cfg["reload_model_path"]:
        _log.warning("reload_model_path is not set: evaluating an UNTRAINED model")
    model = build_model(cfg, device, weights).eval()

    # predict and score: prototypes once per class and part, each query volume encoded once
    scores, absent = [], []
    prototypes = {c: encode_parts(model, evalset.support[c], device) for c in evalset.classes}
    for i, scan in enumerate(evalset.queries):
        reference = read_image_info(ds.path("image", scan.pid))  # voxels already loaded
        sx, sy, sz = reference.GetSpacing()
        plans = {c: evalset.plans[c][i] for c in evalset.classes}
        needed = sorted({z for plan in plans.values() for z in plan.predict_z})
        feats = encode_scan(model, scan, needed, device, cfg["eval_batch_size"])
        for c, plan in plans.items():
            organ = ds.labels[c]
            if plan.absent:
                absent.append({"scan": scan.pid, "organ": organ, "protocol": plan.protocol})
                _log.warning("scan %s: %s is absent from the ground truth%s", scan.pid, organ,
                             "" if plan.score_z else "; nothing to score")
                if not plan.score_z:
                    continue
            pred = segment_features(model, prototypes[c], feats, plan, tuple(scan.grey.shape),
                                    cfg["eval_batch_size"])
            gt = scan.binary_label(c).numpy().astype(np.uint8)
            zs = plan.score_z
            scores.append(score_organ(pred[zs], gt[zs], (sz, sy, sx), scan.pid, organ))
            if cfg["save_predictions"]:
                write_prediction(pred, c, reference,
                                 run_dir / "predictions" / f"pred_{scan.pid}_{organ}.nii.gz")
                shown = list(range(plan.gt_z[0], plan.gt_z[1] + 1)) if plan.gt_z else zs
                write_overlays(run_dir / "overlays", scan.pid, organ, scan.grey, gt, pred,
                               shown, cfg["n_overlay_slices"])

    # report
    summary = summarize(scores)
    summary.update({"dataset": ds.name, "fold": cfg["eval_fold"], "protocol": cfg["protocol"],
                    "setting": trained.get("setting", cfg["setting"]),
                    "pseudolabel": trained.get("pseudolabel", cfg["pseudolabel"]),
                    "steps": trained.get("checkpoint_step", trained.get("n_steps")), "encoder": cfg["encoder"],
                    "label_group": cfg["label_sets"], "n_shots": cfg["n_shots"],
                    "support": split["support"], "queries": split["query"], "absent": absent,
                    "checkpoint": cfg["reload_model_path"]})
    write_json(run_dir / "summary.json", summary)
    with atomic_path(run_dir / "scores.csv") as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(scores[0].as_dict()) if scores else ["scan"])
        writer.writeheader()
        for s in scores:
            writer.writerow(s.as_dict())
    logger = RunLogger(run_dir, _run)
    for organ, stats in summary["per_organ"].items():
        logger.summary(0, {f"val/{m}/{organ}": stats[m]["mean"] for m in METRICS
                           if not math.isnan(stats[m]["mean"])})
    logger.close()
    table = format_table(summary)
    print(table)
    _log.info("wrote %s", run_dir / "summary.json")
    return {"dice": {o: s["dice"]["mean"] for o, s in summary["per_organ"].items()},
            "mean_dice": summary["overall"]["dice"]["mean"], "run_dir": str(run_dir)}


if __name__ == "__main__":
    run_cli("validate", sys.argv)
