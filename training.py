"""Train ALPNet on self-supervised superpixel episodes (or supervoxel / manual-label episodes).

    python training.py with chaost2 setting2 group0 eval_fold=0 [pretrained_weights=coco.pth]
    python training.py with quickstart                       # the phantom, minutes on a CPU
    python training.py with chaost2 resume=exps/train/<exp>/<id>   # continue a killed run

Setup → data → model → optimizer → one step loop (stops at ``n_steps``) → save. Everything of a
run (config, metrics, tensorboard events, checkpoints) lands in ``<log_dir>/train/<exp_name>/<id>``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate

# config_ssl_upload first: util.runs imports sacred without its pkg_resources warning
from config_ssl_upload import BEFORE_KEY, KEYS, RESUME_MUST_MATCH, ex
from data_preprocessing.contract import check_labels_needed, load_dataset
from data_preprocessing.registry import get_dataset_info
from dataloaders.evaluation import build_evaluation
from dataloaders.episodes import (ManualLabelEpisodes, StepSampler,
                                  SupervoxelEpisodes, SuperpixelEpisodes, episode_loader,
                                  resolve_exclude_labels, training_classes)
from inference.evaluate import Staged, evaluate, stage
from inference.loader import Weights, build_model, check_pretrained, resolve_weights
from models.losses import CLASS_WEIGHTS, weighted_cross_entropy
from util import distributed
from util.checkpoint import BEST, LATEST, SNAPSHOT_DIR, save_checkpoint
from util.cli import progress
from util.device import SWITCHES, resolve_device, resolve_switch
from util.errors import InputError
from util.guards import Preempted, StopRequests, stop_on_nonfinite
from util.logger import LearningCurve, RunLogger, episode_panel
from util.metrics import summarize
from util.runs import given_keys, run_cli
from util.schedule import lr_at
from util.seeding import rng_state, seed_everything, set_rng_state
from util.version import code_version


@ex.config_hook
def pretrained_found(config, command_name, logger):
    """A pretrained file that is not there (or not fetched) stops training before its run
    folder exists (run after config_ssl_upload's hook, which checked the keys)."""
    if command_name == "train" and not config["resume"] and config["pretrained_weights"]:
        check_pretrained(config["pretrained_weights"], config["encoder"])
    return {}


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


def validate_now(model, ds, evalset, device: torch.device, batch_size: int,
                 staged: Staged | None = None) -> dict[str, float]:
    """Mean Dice per organ and overall (``mean``) of the current weights (overlap metrics only,
    on the device; ``staged``: the set already there); the model is put back in train mode.
    Evaluation draws no random numbers, so the training stream is unchanged."""
    model.eval()
    try:
        result = evaluate(model, ds, evalset, device, batch_size, distances=False,
                          staged=staged)
    finally:
        model.train()
    summary = summarize(result.scores)
    dice = {organ: stats["dice"]["mean"] for organ, stats in summary["per_organ"].items()}
    return {**dice, "mean": summary["overall"]["dice"]["mean"]}


def check_resume_config(path: Path, saved: dict, cfg: dict, step: int) -> None:
    """A resumed run keeps the keys that decide its episodes and arithmetic, and goes on."""
    if cfg["n_steps"] < step:
        raise InputError(f"{path}: n_steps={cfg['n_steps']} is below the checkpoint's step "
                         f"{step}; expected n_steps >= {step} to continue this run")
    for key in RESUME_MUST_MATCH:
        trained_with = saved.get(key, BEFORE_KEY.get(key))
        if trained_with != cfg[key]:
            raise InputError(f"{path}: resuming needs the same {key!r} as the checkpoint's run; "
                             f"expected {trained_with!r}, got {cfg[key]!r}")


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


@dataclass
class Step:
    """What one step leaves for the books: its losses, prediction and whether it updated."""
    batch: dict
    query_loss: torch.Tensor
    align_loss: torch.Tensor
    logits: torch.Tensor
    n_fallback: torch.Tensor  # 0-d, on the device
    skipped: bool


def train_step(forward, optimizer, batch: dict, class_weights, skip_empty: bool) -> Step:
    """One episode: forward, loss (weighted query cross-entropy + alignment) and the SGD update
    (skipped, as in the original, when ``skip_empty`` and a prototype set was empty). Nothing
    here reads the device (but ``skip_empty``); the losses are checked by :meth:`Books.flush`."""
    out = forward(batch["support_images"], batch["support_fg"], batch["support_bg"],
                  batch["query_images"])
    # [N, Q, H, W] for N episodes: the logits stack their queries
    labels = batch["query_labels"].flatten(0, -3)
    query_loss = weighted_cross_entropy(out.logits, labels, class_weights)
    loss = query_loss + out.align_loss
    skipped = skip_empty and bool(out.n_fallback > 0)  # reads the device (skip mode only)
    if not skipped:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return Step(batch, query_loss, out.align_loss, out.logits, out.n_fallback, skipped)


def setup(_run, _config, _log) -> tuple[dict, distributed.DistInfo, torch.device, Path]:
    """The run's config as a plain dict (device switches resolved, ``world_size`` recorded),
    its rank and device, and its folder; every generator seeded."""
    cfg = json.loads(json.dumps(_config))  # plain, picklable copy of the read-only config
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
    _run.info["code_version"] = code_version()
    _log.info("run folder %s, device %s, rank %d of %d (%d episode(s) per rank and step), "
              "bf16 %s, channels_last %s (config: %s, %s)", run_dir, device, rank.rank,
              rank.world_size, cfg["episodes_per_step"], cfg["bf16"], cfg["channels_last"],
              _config["bf16"], _config["channels_last"])
    return cfg, rank, device, run_dir


class Books:
    """Everything of a training run but the arithmetic: the step count and learning rate, the
    logs (tensorboard, metrics.json, the progress bar, a line every ``print_interval``), the
    finite-loss check, validation with ``best.pth``, and the checkpoints. Every rank counts
    steps, checks and validates in step (rank 0 alone writes); ``with books:`` holds the
    progress bar.

    The steps' values stay on the device (``pending``) until :meth:`flush` reads them at once:
    every ``print_interval`` steps and before a validation or a checkpoint, so the host never
    waits for a step in between."""

    def __init__(self, cfg: dict, rank: distributed.DistInfo, device: torch.device,
                 run_dir: Path, model, optimizer, ds, fold, episodes, val_set, run,
                 log) -> None:
        self.cfg, self.rank, self.device, self.run_dir = cfg, rank, device, run_dir
        self.model, self.optimizer, self.ds, self.fold = model, optimizer, ds, fold
        self.episodes, self.val_set, self.run, self.log = episodes, val_set, run, log
        # the validation set, copied to the device once
        self.val_staged = stage(val_set, device) if val_set is not None else None
        self.pending: list[torch.Tensor] = []  # per step: query loss, align loss, fallbacks,
        #                                        skipped, on the device
        self.record = ds.info.record()  # the preprocessing record every checkpoint carries
        self.snapshots = run_dir / SNAPSHOT_DIR
        self.step = self.start_step = 0
        self.best = {"step": None, "mean": None}  # best validation mean Dice so far
        self.last = None
        self.logger = RunLogger(run_dir, run, cfg["print_interval"]) if rank.is_main else None
        self.curve = LearningCurve(run_dir) if val_set is not None else None
        self.bar, self.window_start = None, 0.0
        self.window_end = 0  # the last step of the last logged window

    def resume(self, weights: Weights) -> None:
        """Continue from a checkpoint's optimizer, RNG streams, step and best validation."""
        if weights.kind == "none":
            return
        state = weights.training
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = self.start_step = self.window_end = int(state["step"])
        self.best = state.get("best_val", self.best)
        self.run.info["resumed_from"] = str(weights.path)
        self.log.info("resumed from %s at step %d", weights.path, self.step)

    def __enter__(self) -> "Books":
        if self.rank.is_main:
            self.bar = progress(total=self.cfg["n_steps"], desc="training", unit="step")
            self.bar.update(self.step)
        self.window_start = time.perf_counter()  # the s/step of each print_interval window
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def set_lr(self) -> None:
        """The learning rate of the coming step, into the optimizer."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_of(self.step + 1)

    def after_step(self, done: Step) -> None:
        """Count the step; validate, log and checkpoint at their intervals."""
        cfg = self.cfg
        self.step, self.last = self.step + 1, done
        self.pending.append(torch.stack([
            done.query_loss.detach(), done.align_loss.detach(),
            done.n_fallback.to(done.query_loss.dtype),
            torch.full_like(done.query_loss, float(done.skipped))]))
        if self.bar is not None:
            self.bar.update(1)
        if cfg["val_every"] and self.step % cfg["val_every"] == 0:
            began = time.perf_counter()
            self.validate()
            self.window_start += time.perf_counter() - began  # s/step counts training alone
        if self.step % cfg["print_interval"] == 0:
            self.flush()
        if self.logger is not None and self.step % cfg["image_every"] == 0:
            b = {k: v.flatten(0, -(4 if "images" in k else 3)) for k, v in done.batch.items()}
            self.logger.image("train/episode", self.step, episode_panel(  # the first episode
                b["support_images"][0], b["support_fg"][0], b["query_images"][0],
                b["query_labels"][0], done.logits[0].argmax(0)))
        if self.step % cfg["save_snapshot_every"] == 0:
            self.checkpoint(f"{self.step}.pth")
        if self.step % cfg["checkpoint_every"] == 0:
            self.checkpoint(LATEST)

    def flush(self) -> None:
        """Read the pending steps' values from the device (one wait) and log them: every step
        to tensorboard, window means to metrics.json and the log line. A non-finite loss stops
        the run at the first such step of any rank (every rank flushes after the same steps),
        after the steps before it are logged (:func:`util.guards.stop_on_nonfinite`)."""
        if not self.pending:
            return
        values, self.pending = torch.stack(self.pending), []
        first = self.step - len(values) + 1
        losses = values[:, 0] + values[:, 1]
        n_finite = distributed.first_nonfinite(losses, self.rank)
        self.log_steps(first, values[:n_finite].tolist())  # [:None]: every step
        if n_finite is not None:
            bad = first + n_finite
            self.close_window(bad - 1)
            stop_on_nonfinite(self.run_dir, bad, self.episode_of(bad), losses[n_finite],
                              self.rank)

    def log_steps(self, first: int, rows: list) -> None:
        if self.logger is None or not rows:
            return
        for step, (loss, align, fallbacks, skipped) in enumerate(rows, first):
            means = self.logger.scalars(step, {
                "train/loss": loss, "train/align_loss": align, "train/lr": self.lr_of(step),
                "train/empty_prototype_sets": fallbacks, "train/skipped_steps": skipped})
            if means is not None:
                self.log_means(step, means)
        if self.bar is not None:  # the last step read
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr_of(step):.2e}")

    def lr_of(self, step: int) -> float:
        """The learning rate of ``step`` (1-based): a pure function of the step."""
        return lr_at(step - 1, self.cfg["lr"], self.cfg["lr_step_gamma"],
                     self.cfg["lr_step_size"])

    def log_means(self, step: int, means: dict) -> None:
        """The log line of a window of steps ending at ``step``: their means and s/step."""
        now = time.perf_counter()
        rate = (now - self.window_start) / max(step - self.window_end, 1)
        self.window_start, self.window_end = now, step
        self.log.info("step %d/%d  loss %.4f  align %.4f  lr %.2e  empty sets %.2f  "
                      "%.3f s/step", step, self.cfg["n_steps"], means["train/loss"],
                      means["train/align_loss"], self.lr_of(step),
                      means["train/empty_prototype_sets"], rate)

    def close_window(self, step: int) -> None:
        """A last, partial window (the run ends or stops at ``step``) into metrics.json and the
        log."""
        if self.logger is not None and (means := self.logger.end_window(step)):
            self.log_means(step, means)

    def episode_of(self, step: int) -> dict:
        """The episodes this rank trained on at ``step`` (1-based), batched as the loader's."""
        sampler = StepSampler(0, 0, self.rank.world_size, self.rank.rank,
                              self.cfg["episodes_per_step"])
        recipes = default_collate([self.episodes.recipe(i) for i in sampler.indices(step - 1)])
        return {**recipes, **self.episodes.assemble(recipes, self.device)}

    def validate(self) -> None:
        """Rank 0 validates the current weights, logs the curve and keeps ``best.pth``."""
        self.flush()  # a non-finite step stops the run before its weights are validated
        if self.val_set is not None:
            dice = validate_now(self.model, self.ds, self.val_set, self.device,
                                self.cfg["eval_batch_size"], self.val_staged)
            self.logger.summary(self.step, {f"val/dice/{o}": d for o, d in dice.items()})
            self.curve.add(self.step, dice)
            self.log.info("step %d validation: mean Dice %.2f%% (%s)", self.step,
                          100 * dice["mean"], ", ".join(f"{o} {100 * d:.2f}"
                                                        for o, d in dice.items() if o != "mean"))
            if self.best["mean"] is None or dice["mean"] > self.best["mean"]:
                self.best.update(step=self.step, mean=dice["mean"])
                self.checkpoint(BEST)
        distributed.barrier(self.rank)

    def checkpoint(self, name: str) -> None:
        self.flush()  # no checkpoint holds the weights of a non-finite step
        if self.rank.is_main:
            save_checkpoint(self.snapshots / name, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "rng": rng_state(), "config": self.cfg,
                "dataset": self.ds.name, "dataset_record": self.record, "fold": self.fold,
                "best_val": self.best, "code_version": code_version()})

    def preempt(self, signum: int) -> None:
        # every rank is here after the same step (distributed.agreed_signal)
        self.flush()
        self.close_window(self.step)
        self.checkpoint(LATEST)
        raise Preempted(signum, self.step, self.snapshots / LATEST)

    def finish(self) -> dict:
        """The last validation and checkpoint; the run's result (rank 0) for sacred."""
        cfg, step, latest = self.cfg, self.step, self.snapshots / LATEST
        self.flush()  # every rank, before the rank-dependent checks below
        self.close_window(step)
        if cfg["val_every"] and step % cfg["val_every"] and step > self.start_step:
            self.validate()
        if step % cfg["checkpoint_every"] or not latest.is_file():
            self.checkpoint(LATEST)
        distributed.barrier(self.rank)
        distributed.shutdown(self.rank)
        if self.logger is None:
            return {"step": step, "rank": self.rank.rank}
        self.logger.close()
        self.log.info("finished at step %d; checkpoint %s", step, latest)
        final = None if self.last is None else (self.last.query_loss
                                                + self.last.align_loss).item()
        return {"step": step, "final_loss": final, "checkpoint": str(latest),
                "best_val": self.best}


@ex.command
def train(_run, _config, _log):
    cfg, rank, device, run_dir = setup(_run, _config, _log)

    # data
    ds = load_dataset(cfg["data_dir"])
    check_dataset(cfg, ds)
    train_pids, fold = ds.training_cases(cfg["eval_fold"])
    cfg["exclude_labels"] = resolve_exclude_labels(cfg, ds)
    episodes = build_episodes(cfg, ds, train_pids)
    _log.info("%s %s: %d training scans, excluded classes %s", ds.name,
              f"fold {cfg['eval_fold']}" if fold else "(no folds)", len(train_pids),
              cfg["exclude_labels"])
    # rank 0 validates during training while the other ranks wait
    val_set = validation_set(cfg, ds) if cfg["val_every"] > 0 and rank.is_main else None

    # model, optimizer and the books (logs, validation, checkpoints), from a checkpoint if resumed
    resumed = resolve_weights(cfg["resume"], purpose="resume", map_location=device)
    if resumed.kind != "none":
        check_resume_config(resumed.path, resumed.config, cfg, int(resumed.training["step"]))
    model = build_model(cfg, device, resumed, explicit=given_keys(_run))
    if cfg["compile"]:
        # the whole episode forward is one graph (fixed-size prototypes), and the encoder alone
        # (what validation calls); in place, so the state-dict keys stay those of the original
        model.compile()
        model.encoder.compile()
    # DDP averages the gradients of the ranks' episodes (effective batch: world_size episodes)
    forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None) if rank.enabled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    books = Books(cfg, rank, device, run_dir, model, optimizer, ds, fold, episodes, val_set,
                  _run, _log)
    books.resume(resumed)

    # the step loop: the sampler yields the global steps step .. n_steps - 1
    loader = episode_loader(episodes.recipes, num_workers=cfg["num_workers"], start_step=books.step,
                            n_steps=max(cfg["n_steps"] - books.step, 0),
                            pin_memory=device.type == "cuda", rank=rank.rank,
                            world_size=rank.world_size, per_step=cfg["episodes_per_step"])
    class_weights = torch.tensor(CLASS_WEIGHTS if cfg["use_wce"] else (1.0, 1.0), device=device)
    skip_empty = cfg["empty_prototypes"] == "skip"
    model.train()
    with StopRequests(_log) as stops, books:
        for recipes in loader:
            # a signal to any rank stops every rank here: the last step is logged, checkpoint
            signum = distributed.agreed_signal(stops.signum, rank)
            if signum is not None:
                books.preempt(signum)
            books.set_lr()
            # the loader's episodes_per_step recipes, made into episodes on the device
            batch = episodes.assemble(recipes, device)
            books.after_step(train_step(forward, optimizer, batch, class_weights, skip_empty))
    return books.finish()


if __name__ == "__main__":
    run_cli(ex, KEYS, "train", sys.argv)
