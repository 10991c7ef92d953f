"""Full, atomic training checkpoints.

A checkpoint holds the model, the optimizer, the step, the RNG states, the run's config and a
format version. It is written to a temporary file in the destination folder, flushed and renamed,
so a killed run never leaves a half-written checkpoint under the final name. Resume takes the
newest checkpoint that loads; a damaged one is skipped with a warning.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from util.io import atomic_path

FORMAT_VERSION = 1
LATEST = "latest.pth"
BEST = "best.pth"  # highest validation mean Dice of a run with val_every
SNAPSHOT_DIR = "snapshots"
_STEP = re.compile(r"^(\d+)\.pth$")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for every failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected a checkpoint file, found nothing there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: expected a readable torch checkpoint, loading failed "
                         f"({type(err).__name__}: {err}); the file is truncated or damaged") \
            from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{path}: expected a training checkpoint with a format_version, found "
                         f"{type(state).__name__} (a bare state dict? use it as "
                         f"pretrained_weights or reload_model_path instead)")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: expected checkpoint format {FORMAT_VERSION}, found "
                         f"{state['format_version']}")
    for key in ("model", "optimizer", "step"):
        if key not in state:
            raise ValueError(f"{path}: expected key {key!r} in the checkpoint, missing")
    return state


def checkpoint_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run folder, newest first: ``latest.pth`` (written at every
    ``checkpoint_every`` and at the end, so never older than a snapshot), then ``<step>.pth``."""
    snapshots = Path(run_dir) / SNAPSHOT_DIR
    numbered = sorted(((int(m.group(1)), p) for p in snapshots.glob("*.pth")
                       if (m := _STEP.match(p.name))), reverse=True)
    latest = [snapshots / LATEST] if (snapshots / LATEST).is_file() else []
    return latest + [p for _, p in numbered]


def find_resume_checkpoint(target: str | os.PathLike,
                           map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The newest loadable checkpoint of a run folder, or the named checkpoint file itself.

    An explicit file that does not exist or does not load is an error; in a run folder, damaged
    checkpoints are skipped (with a warning) in favour of the next newest.
    """
    target = Path(target)
    if target.suffix == ".pth" or target.is_file():
        return target, load_checkpoint(target, map_location)
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: expected a run folder or checkpoint file to resume "
                                f"from, found nothing there")
    problems = []
    for path in checkpoint_candidates(target):
        try:
            return path, load_checkpoint(path, map_location)
        except ValueError as err:
            problems.append(str(err))
            warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=2)
    detail = "; ".join(problems) if problems else "none found"
    raise FileNotFoundError(f"{target / SNAPSHOT_DIR}: expected a loadable checkpoint to resume "
                            f"from, {detail}")


def checkpoint_weights(path: str | os.PathLike | None) -> tuple[dict, dict | None]:
    """(training config, model state dict) of one of our checkpoints, read once; ``({}, None)``
    for a bare state dict (the original's snapshots: read them with load_original_checkpoint)."""
    if not path:
        return {}, None
    try:
        state = load_checkpoint(path)
    except ValueError:
        return {}, None
    return {**state.get("config", {}), "checkpoint_step": int(state["step"])}, state["model"]
