"""Train ALPNet on self-supervised superpixel episodes (or supervoxel / manual-label episodes).

    python training.py with chaost2 setting2 group0 eval_fold=0 [pretrained_weights=coco.pth]
    python training.py with quickstart                       # the phantom, minutes on a CPU
    python training.py with chaost2 resume=exps/train/<exp>/<id>   # continue a killed run

Setup → data → model → optimizer → one step loop (stops at ``n_steps``) → save. Everything of a
run (config, metrics, tensorboard events, checkpoints) lands in ``<log_dir>/train/<exp_name>/<id>``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

# config_ssl_upload first: it silences sacred's pkg_resources warning before importing sacred
from config_ssl_upload import (SacredInterrupt, check_labels_needed, ex, given_keys,
                               resolve_exclude_labels, run_cli)
from data_preprocessing.contract import load_dataset
from data_preprocessing.registry import get_dataset_info
from dataloaders.evaluation import build_evaluation
from dataloaders.episodes import (EPISODE_TENSORS, ManualLabelEpisodes, SupervoxelEpisodes,
                                  SuperpixelEpisodes, episode_loader, training_classes)
from inference.evaluate import evaluate
from inference.loader import ARCH_BEFORE, NO_WEIGHTS, build_model, weights_of_state
from models.losses import CLASS_WEIGHTS, weighted_cross_entropy
from util import distributed
from util.checkpoint import BEST, LATEST, SNAPSHOT_DIR, find_resume_checkpoint, save_checkpoint
from util.cli import progress
from util.device import SWITCHES, resolve_device, resolve_switch
from util.logger import LearningCurve, RunLogger, episode_panel
from util.metrics import summarize
from util.schedule import lr_at
from util.seeding import rng_state, seed_everything, set_rng_state
from util.errors import InputError, NonFiniteLoss

# what decides the episodes, the model or the schedule: a resumed run must keep it
RESUME_MUST_MATCH = ("dataset", "eval_fold", "encoder", "seed", "pseudolabel", "superpix_scale",
                     "exclude_labels", "exclude_mode", "superpixel_draw", "slice_draw",
                     "prototypes", "which_aug", "min_superpixel_px", "min_fg_px",
                     "empty_prototypes",
                     "usealign", "use_wce", "proto_grid_size",
                     "feature_hw", "fg_thresh", "bg_thresh", "lr", "lr_step_gamma",
                     "lr_step_size", "momentum", "weight_decay", "world_size")


# what checkpoints written before a key existed were trained with
BEFORE_KEY = {"world_size": 1, "exclude_mode": "any", "superpixel_draw": "uniform",
              "slice_draw": "uniform", "empty_prototypes": "fallback",
              **ARCH_BEFORE}


def build_episodes(cfg: dict, ds, train_pids: list[str]):
    """The training episode dataset chosen by ``pseudolabel``."""
    common = {"exclude_labels": cfg["exclude_labels"], "seed": cfg["seed"],
              "aug": cfg["which_aug"]}
    if cfg["pseudolabel"] == "superpixel":
        return SuperpixelEpisodes(ds, train_pids, superpix_scale=cfg["superpix_scale"],
                                  min_superpixel_px=cfg["min_superpixel_px"],
                                  draw=cfg["superpixel_draw"], slice_draw=cfg["slice_draw"],
                                  **common)
    if cfg["pseudolabel"] == "supervoxel":
        return SupervoxelEpisodes(ds, train_pids, superpix_scale=cfg["superpix_scale"],
                                  exclude_mode=cfg["exclude_mode"], **common)
    return ManualLabelEpisodes(ds, train_pids, training_classes(ds, cfg["label_sets"]),
                               min_fg_px=cfg["min_fg_px"], **common)


def validation_set(cfg: dict, ds):
    """The evaluation set validated during training: every label group's test classes in
    Setting 1, the run's own group in Setting 2 (configured protocol, support and query scans of
    ``splits.json``)."""
    return build_evaluation(ds, cfg["eval_fold"],
                            label_group="all" if cfg["setting"] == 1 else cfg["label_sets"],
                            protocol=cfg["protocol"], npart=cfg["n_sup_part"],
                            z_margin=cfg["z_margin"], realistic_chunks=cfg["realistic_chunks"])


def validate_now(model, ds, evalset, device: torch.device, batch_size: int) -> dict[str, float]:
    """Mean Dice per organ and overall (``mean``) of the current weights; the model is put back
    in train mode. Evaluation draws no random numbers, so the training stream is unchanged."""
    model.eval()
    try:
        result = evaluate(model, ds, evalset, device, batch_size)
    finally:
        model.train()
    summary = summarize(result.scores)
    dice = {organ: stats["dice"]["mean"] for organ, stats in summary["per_organ"].items()}
    return {**dice, "mean": summary["overall"]["dice"]["mean"]}


def check_resume_config(path: Path, saved: dict, cfg: dict) -> None:
    for key in RESUME_MUST_MATCH:
        if saved.get(key, BEFORE_KEY.get(key)) != cfg[key]:
            raise InputError(f"{path}: resuming needs the same {key!r} as the checkpoint's run; "
                             f"expected {saved.get(key)!r}, got {cfg[key]!r}")


class Preempted(SacredInterrupt):
    """Training stopped by SIGTERM / SIGINT after a full checkpoint; sacred marks the run
    INTERRUPTED and the command line exits with 128 + the signal number."""
    STATUS = "INTERRUPTED"

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; "
                         f"checkpoint {path}; continue with resume={path.parent.parent}")
        self.signum = signum


class StopRequests:
    """SIGTERM / SIGINT (what SLURM and Kubernetes send before a kill) ask the step loop to stop
    after the current step; a second signal stops at once. Handlers are installed only in the
    main thread and restored by :meth:`restore`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, log) -> None:
        self.signum: int | None = None
        self.log = log
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)  # the second signal: stop at once
        self.signum = signum
        self.log.warning("%s: stopping after this step with a checkpoint (a second signal stops "
                         "at once)", signal.Signals(signum).name)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def save_bad_episode(run_dir: Path, step: int, episode: dict, loss: float,
                     rank: distributed.DistInfo) -> Path:
    suffix = f"_rank{rank.rank}" if rank.enabled else ""
    run_dir.mkdir(parents=True, exist_ok=True)  # rank 0's folder, maybe on another node
    path = run_dir / f"nonfinite_episode_step{step}{suffix}.pt"
    torch.save({"step": step, "loss": loss, "rank": rank.rank, "episode": episode}, path)
    return path


def stop_on_nonfinite(run_dir: Path, step: int, episode: dict, loss: torch.Tensor,
                      rank: distributed.DistInfo) -> None:
    """Every rank stops; a rank whose own loss is non-finite saves its episode in the run folder
    (all ranks wait for the saves, so no rank's exit cuts one short)."""
    finite = bool(torch.isfinite(loss.detach()).all())
    saved = None if finite else save_bad_episode(run_dir, step, episode, loss.item(), rank)
    distributed.barrier(rank)
    if saved is None:
        raise NonFiniteLoss(f"non-finite loss on another rank at step {step}; its episode "
                                 f"is saved in {run_dir}")
    raise NonFiniteLoss(
        f"non-finite loss {loss.item()} at step {step}: scan {episode['scan_id'][0]}, "
        f"slice {int(episode['z'][0])}, superpixel {int(episode['superpixel_id'][0])}; "
        f"episode saved to {saved}")


def check_dataset(cfg: dict, ds) -> None:
    """The folder is the configured dataset and holds the labels the run needs."""
    try:
        expected = get_dataset_info(cfg["dataset"]).name
    except KeyError:
        expected = cfg["dataset"]
    if ds.name.upper() != expected.upper():
        raise InputError(f"{ds.root / 'dataset.json'}: expected dataset {cfg['dataset']!r} "
                         f"(config key dataset), found {ds.name!r}")
    check_labels_needed(cfg, "train", len(ds.labelled), len(ds.cases),
                        str(ds.root / "dataset.json"))


@ex.command
def train(_run, _config, _log):
    cfg = json.loads(json.dumps(_config))  # plain, picklable copy of the read-only config
    if cfg["label_sets"] == "all":
        raise InputError("config: label_sets='all' is for validation; training takes one label "
                         "group (Setting 2) or trains for every group at once (Setting 1)")
    rank, device = distributed.init(resolve_device(cfg["device"]))
    # rank 0's run folder (only rank 0 has an observer), so every rank writes beside it
    run_dir = Path(distributed.from_main(
        _run.observers[0].dir if _run.observers else cfg["log_dir"], rank))
    cfg["world_size"] = rank.world_size  # recorded in checkpoints: it decides the episodes
    if cfg["empty_prototypes"] == "skip" and rank.world_size > 1:
        raise InputError(f"config: empty_prototypes='skip' would leave ranks waiting for the "
                         f"skipped rank's gradients; expects 'fallback' with {rank.world_size} "
                         f"processes")
    for key in SWITCHES:  # "auto" chosen for this device, recorded in checkpoints as chosen
        cfg[key] = resolve_switch(key, cfg[key], device)
    seed_everything(cfg["seed"], cfg["deterministic"])
    _log.info("run folder %s, device %s, rank %d of %d (one episode per rank and step), "
              "bf16 %s, channels_last %s (config: %s, %s)", run_dir, device, rank.rank,
              rank.world_size, cfg["bf16"], cfg["channels_last"], _config["bf16"],
              _config["channels_last"])

    # data
    ds = load_dataset(cfg["data_dir"])
    check_dataset(cfg, ds)
    train_pids, fold = ds.training_cases(cfg["eval_fold"])
    record = ds.info.record()  # the preprocessing record every checkpoint carries
    cfg["exclude_labels"] = resolve_exclude_labels(cfg, ds)
    episodes = build_episodes(cfg, ds, train_pids)
    _log.info("%s %s: %d training scans, excluded classes %s", ds.name,
              f"fold {cfg['eval_fold']}" if fold else "(no folds)", len(train_pids),
              cfg["exclude_labels"])
    # rank 0 validates during training while the other ranks wait
    val_set = validation_set(cfg, ds) if cfg["val_every"] > 0 and rank.is_main else None

    # model and optimizer
    resumed = find_resume_checkpoint(cfg["resume"], map_location=device) if cfg["resume"] \
        else None
    if resumed is not None:
        check_resume_config(resumed[0], resumed[1].get("config", {}), cfg)
    model = build_model(cfg, device, weights_of_state(*resumed) if resumed else NO_WEIGHTS,
                        explicit=given_keys(_run))
    if cfg["compile"]:
        model.encoder.compile()  # in place: state-dict keys stay those of the original
    # DDP averages the gradients of the ranks' episodes (effective batch: world_size episodes)
    forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None) if rank.enabled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    step = 0
    best = {"step": None, "mean": None}  # best validation mean Dice so far
    if resumed is not None:
        path, state = resumed
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        best = state.get("best_val", best)
        _run.info["resumed_from"] = str(path)
        _log.info("resumed from %s at step %d", path, step)

    def checkpoint(path: Path) -> None:
        if not rank.is_main:
            return
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "step": step, "rng": rng_state(), "config": cfg,
                               "dataset": ds.name, "dataset_record": record,
                               "fold": fold, "best_val": best})

    def validation() -> None:
        """Rank 0 validates the current weights, logs the curve and keeps ``best.pth``."""
        if val_set is not None:
            dice = validate_now(model, ds, val_set, device, cfg["eval_batch_size"])
            logger.summary(step, {f"val/dice/{organ}": d for organ, d in dice.items()})
            curve.add(step, dice)
            _log.info("step %d validation: mean Dice %.2f%% (%s)", step, 100 * dice["mean"],
                      ", ".join(f"{o} {100 * d:.2f}" for o, d in dice.items() if o != "mean"))
            if best["mean"] is None or dice["mean"] > best["mean"]:
                best.update(step=step, mean=dice["mean"])
                checkpoint(snapshots / BEST)
        distributed.barrier(rank)

    # the step loop: the sampler yields the global steps step .. n_steps - 1
    logger = RunLogger(run_dir, _run, cfg["print_interval"]) if rank.is_main else None
    curve = LearningCurve(run_dir) if val_set is not None else None
    loader = episode_loader(episodes, num_workers=cfg["num_workers"], start_step=step,
                            n_steps=max(cfg["n_steps"] - step, 0),
                            pin_memory=device.type == "cuda", rank=rank.rank,
                            world_size=rank.world_size)
    weights = CLASS_WEIGHTS if cfg["use_wce"] else (1.0, 1.0)
    snapshots = run_dir / SNAPSHOT_DIR
    model.train()
    loss = None
    window_start = time.perf_counter()  # the s/step of each print_interval window
    start_step = step
    stops = StopRequests(_log)
    bar = progress(total=cfg["n_steps"], desc="training", unit="step") if rank.is_main \
        else None
    if bar is not None:
        bar.update(step)
    try:
        for episode in loader:
            if stops.signum is not None:  # the last step is logged: checkpoint, then stop
                checkpoint(snapshots / LATEST)
                raise Preempted(stops.signum, step, snapshots / LATEST)
            lr = lr_at(step, cfg["lr"], cfg["lr_step_gamma"], cfg["lr_step_size"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = {k: episode[k][0].to(device, non_blocking=True) for k in EPISODE_TENSORS}
            out = forward(batch["support_images"], batch["support_fg"], batch["support_bg"],
                          batch["query_images"])
            query_loss = weighted_cross_entropy(out.logits, batch["query_labels"], weights)
            loss = query_loss + out.align_loss
            if not distributed.all_finite(loss, rank):
                stop_on_nonfinite(run_dir, step + 1, episode, loss, rank)  # counted as logged
            # the original skips the update of an episode with an empty prototype set
            skipped = cfg["empty_prototypes"] == "skip" and out.n_fallback > 0
            if not skipped:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step += 1
            if cfg["val_every"] and step % cfg["val_every"] == 0:
                began = time.perf_counter()
                validation()
                window_start += time.perf_counter() - began  # s/step counts training alone
            if logger is None:
                continue

            bar.update(1)
            bar.set_postfix(loss=f"{query_loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            means = logger.scalars(step, {"train/loss": query_loss.item(),
                                          "train/align_loss": out.align_loss.item(),
                                          "train/lr": lr,
                                          "train/empty_prototype_sets": float(out.n_fallback),
                                          "train/skipped_steps": float(skipped)})
            if means is not None:
                now = time.perf_counter()
                rate = (now - window_start) / cfg["print_interval"]
                window_start = now
                _log.info("step %d/%d  loss %.4f  align %.4f  lr %.2e  empty sets %.2f  "
                          "%.3f s/step", step, cfg["n_steps"], means["train/loss"],
                          means["train/align_loss"], lr, means["train/empty_prototype_sets"],
                          rate)
            if step % cfg["image_every"] == 0:
                pred = out.logits[0].argmax(0)
                logger.image("train/episode", step, episode_panel(
                    batch["support_images"][0], batch["support_fg"][0], batch["query_images"][0],
                    batch["query_labels"][0], pred))
            if step % cfg["save_snapshot_every"] == 0:
                checkpoint(snapshots / f"{step}.pth")
            if step % cfg["checkpoint_every"] == 0:
                checkpoint(snapshots / LATEST)
    finally:
        stops.restore()
        if bar is not None:
            bar.close()

    if cfg["val_every"] and step % cfg["val_every"] and step > start_step:
        validation()  # at the end
    if step % cfg["checkpoint_every"] or not (snapshots / LATEST).is_file():
        checkpoint(snapshots / LATEST)
    distributed.barrier(rank)
    distributed.shutdown(rank)
    if logger is None:
        return {"step": step, "rank": rank.rank}
    logger.close()
    _log.info("finished at step %d; checkpoint %s", step, snapshots / LATEST)
    return {"step": step, "final_loss": None if loss is None else loss.item(),
            "checkpoint": str(snapshots / LATEST), "best_val": best}


if __name__ == "__main__":
    run_cli("train", sys.argv)
