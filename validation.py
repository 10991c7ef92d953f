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

from config_ssl_upload import KEYS, ex
from data_preprocessing.contract import load_dataset
from data_preprocessing.registry import make_folds
from dataloaders.evaluation import build_evaluation
from inference.evaluate import Outputs, evaluate
from inference.loader import architecture, build_model, resolve_weights
from util.cli import progress
from util.device import SWITCHES, resolve_device, resolve_switch
from util.io import atomic_path, write_json
from util.logger import RunLogger
from util.metrics import METRICS, format_table, summarize
from util.seeding import seed_everything
from util.errors import InputError
from util.runs import given_keys, log_file_only, run_cli


def fold_scans(ds, cfg: dict) -> dict:
    """Support and query scans of the fold for ``n_shots`` (k-shot folds as method.md §3.1)."""
    if cfg["n_shots"] == ds.splits.get("n_shots", 1) and cfg["support_idx"] == [-1]:
        return ds.fold(cfg["eval_fold"])  # splits.json as written
    ds.fold(cfg["eval_fold"])  # checks the fold index
    return make_folds(ds.labelled, tuple(ds.splits["fold_sep"]), cfg["n_shots"],
                      cfg["support_idx"][0])[cfg["eval_fold"]]


def write_report(run_dir: Path, run, summary: dict, scores: list) -> None:
    """``summary.json``, ``scores.csv`` (one row per scan and organ), the metrics for sacred and
    tensorboard, and the table on the terminal."""
    write_json(run_dir / "summary.json", summary)
    with atomic_path(run_dir / "scores.csv") as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(scores[0].as_dict()) if scores else ["scan"])
        writer.writeheader()
        for s in scores:
            writer.writerow(s.as_dict())
    logger = RunLogger(run_dir, run)
    for organ, stats in summary["per_organ"].items():
        logger.summary(0, {f"val/{m}/{organ}": stats[m]["mean"] for m in METRICS
                           if not math.isnan(stats[m]["mean"])})
    logger.close()
    table = format_table(summary)
    print(table)
    log_file_only(table)


@ex.command
def validate(_run, _config, _log):
    cfg = json.loads(json.dumps(_config))
    run_dir = Path(_run.observers[0].dir) if _run.observers else Path(cfg["log_dir"])
    device = resolve_device(cfg["device"])
    for key in SWITCHES:
        cfg[key] = resolve_switch(key, cfg[key], device)
    seed_everything(cfg["seed"], cfg["deterministic"])

    # data
    ds = load_dataset(cfg["data_dir"])
    ds.require_labels("validation")
    split = fold_scans(ds, cfg)
    evalset = build_evaluation(ds, cfg["eval_fold"], label_group=cfg["label_sets"],
                               protocol=cfg["protocol"], npart=cfg["n_sup_part"],
                               support_pids=split["support"], query_pids=split["query"],
                               z_margin=cfg["z_margin"],
                               realistic_chunks=cfg["realistic_chunks"])
    _log.info("%s fold %d, %s protocol: support %s, queries %s, classes %s; device %s, bf16 %s, "
              "channels_last %s", ds.name, cfg["eval_fold"], cfg["protocol"], split["support"],
              split["query"], [ds.labels[c] for c in evalset.classes], device, cfg["bf16"],
              cfg["channels_last"])

    # model
    weights = resolve_weights(cfg["reload_model_path"],
                              runs=Path(cfg["log_dir"]) / "train" / cfg["exp_name"])
    if weights.kind == "none":
        _log.warning("reload_model_path is not set: evaluating an UNTRAINED model")
    trained_on = weights.config.get("dataset")
    if trained_on and trained_on.upper() != ds.name.upper() and not cfg["cross_dataset"]:
        raise InputError(f"{weights.path}: trained on {trained_on}, but the data in "
                         f"{cfg['data_dir']} are {ds.name} ({ds.meta['modality']}); evaluate it "
                         f"on {trained_on} data, or set cross_dataset=True to do this on purpose")
    explicit = given_keys(_run)
    cfg = architecture(cfg, weights, explicit)  # the checkpoint's architecture, for the summary
    model = build_model(cfg, device, weights).eval()
    trained = weights.config

    # predict and score: prototypes once per class and part, each query volume encoded once
    with progress(total=len(evalset.queries), desc="query scans", unit="scan") as bar:
        result = evaluate(model, ds, evalset, device, cfg["eval_batch_size"], Outputs(
            run_dir, predictions=cfg["save_predictions"],
            overlay_slices=cfg["n_overlay_slices"] if cfg["save_predictions"] else 0),
            progress=lambda pid: bar.update(1))
    scores, absent = result.scores, result.absent

    # report
    summary = summarize(scores)
    summary.update({"dataset": ds.name, "fold": cfg["eval_fold"], "protocol": cfg["protocol"],
                    "setting": trained.get("setting", cfg["setting"]),
                    "pseudolabel": trained.get("pseudolabel", cfg["pseudolabel"]),
                    "steps": weights.step, "encoder": cfg["encoder"],
                    "label_group": cfg["label_sets"], "n_shots": cfg["n_shots"],
                    "support": split["support"], "queries": split["query"], "absent": absent,
                    "checkpoint": weights.path})
    write_report(run_dir, _run, summary, scores)
    _log.info("wrote %s", run_dir / "summary.json")
    return {"dice": {o: s["dice"]["mean"] for o, s in summary["per_organ"].items()},
            "mean_dice": summary["overall"]["dice"]["mean"], "run_dir": str(run_dir)}


if __name__ == "__main__":
    run_cli(ex, KEYS, "validate", sys.argv)
