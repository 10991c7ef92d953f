"""Training/validation logging into the run folder: tensorboard events and sacred metrics.

Tags are namespaced (``train/loss``, ``train/align_loss``, ``train/lr``, ``train/empty_prototype_sets``,
``val/dice/<organ>``). Scalars go to tensorboard every step; sacred's ``metrics.json`` gets the
window means every ``print_interval`` steps (a 100k-entry metrics file would be rewritten on every
heartbeat).
"""
from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tensorboardX import SummaryWriter

from util.io import atomic_path


class RunLogger:
    def __init__(self, run_dir: str | Path, sacred_run=None, print_interval: int = 100) -> None:
        # a unique suffix: a resumed run in the same second must not reuse the events file name
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                    filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        self.run = sacred_run
        self.print_interval = max(1, int(print_interval))
        self._window: dict[str, list[float]] = defaultdict(list)

    def scalars(self, step: int, values: dict[str, float]) -> dict[str, float] | None:
        """Log ``values`` at ``step``; every ``print_interval`` steps return the window means."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            self._window[tag].append(float(value))
        if step % self.print_interval:
            return None
        return self.end_window(step)

    def end_window(self, step: int) -> dict[str, float] | None:
        """The means of the values logged since the last window, into ``metrics.json`` at
        ``step`` (also a run's last, partial window); None when there are none."""
        if not self._window:
            return None
        means = {tag: float(np.mean(v)) for tag, v in self._window.items()}
        if self.run is not None:
            for tag, value in means.items():
                self.run.log_scalar(tag, value, step)
        self._window.clear()
        return means

    def summary(self, step: int, values: dict[str, float]) -> None:
        """Log final values (validation metrics) to both sinks."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            if self.run is not None:
                self.run.log_scalar(tag, value, step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """``image`` [H, W, 3] float in [0, 1]."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _grey(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] tiled z-scored slice → [H, W] in [0, 1]."""
    g = image[0].detach().float().cpu().numpy()
    lo, hi = np.percentile(g, [0.5, 99.5])
    return np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay(image: torch.Tensor, mask: torch.Tensor, colour=(1.0, 0.2, 0.2),
            alpha: float = 0.45) -> np.ndarray:
    """A grey slice [3, H, W] with a binary mask [H, W] blended in ``colour`` → [H, W, 3]."""
    grey = np.repeat(_grey(image)[..., None], 3, axis=2)
    m = (mask.detach().cpu().numpy() > 0.5)[..., None]
    return np.where(m, (1 - alpha) * grey + alpha * np.asarray(colour), grey)


def episode_panel(support_image: torch.Tensor, support_fg: torch.Tensor,
                  query_image: torch.Tensor, query_label: torch.Tensor,
                  prediction: torch.Tensor) -> np.ndarray:
    """Support + mask | query + pseudolabel | query + prediction, side by side [H, 3W, 3]."""
    return np.concatenate([overlay(support_image, support_fg, (1.0, 0.2, 0.2)),
                           overlay(query_image, query_label, (0.2, 1.0, 0.2)),
                           overlay(query_image, prediction, (0.2, 0.4, 1.0))], axis=1)


class LearningCurve:
    """Dice against step during training: ``val_curve.csv`` (step, organ, dice) in the run folder
    and ``val_curve.png`` (one line per organ, and the mean), both rewritten at each evaluation.
    Rows already in the CSV (a resumed run) are kept."""

    def __init__(self, run_dir: str | Path) -> None:
        self.csv = Path(run_dir) / "val_curve.csv"
        self.png = Path(run_dir) / "val_curve.png"
        self.rows: list[tuple[int, str, float]] = []
        if self.csv.is_file():
            with open(self.csv, encoding="utf-8", newline="") as fh:
                self.rows = [(int(r["step"]), r["organ"], float(r["dice"]))
                             for r in csv.DictReader(fh)]

    def add(self, step: int, dice: dict[str, float]) -> None:
        self.rows = [r for r in self.rows if r[0] != step]
        self.rows += [(step, organ, float(value)) for organ, value in dice.items()]
        with atomic_path(self.csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("step", "organ", "dice"))
            writer.writerows(self.rows)
        self._plot()

    def _plot(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for organ in dict.fromkeys(r[1] for r in self.rows):
            points = sorted((s, d * 100) for s, o, d in self.rows if o == organ)
            ax.plot(*zip(*points), marker="o", label=organ,
                    linewidth=2.5 if organ == "mean" else 1.2)
        ax.set_xlabel("training step")
        ax.set_ylabel("Dice (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        with atomic_path(self.png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
