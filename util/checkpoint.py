"""Full, atomic training checkpoints.

A checkpoint holds the model, the optimizer, the step, the RNG states, the run's config and a
format version. It is written to a temporary file in the destination folder, flushed and renamed,
so a killed run never leaves a half-written checkpoint under the final name. Resume takes the
newest checkpoint that loads; a damaged one is skipped with a warning.
"""
from __future__ import annotations

import argparse
import os
import pickle
import logging
import re
from pathlib import Path
from typing import Any

import torch

from util.io import atomic_path
from util.errors import InputError, MissingInput

logger = logging.getLogger(__name__)

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


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
              what: str = "a torch file") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, so a crafted
    pickle cannot run code here. Every failure is a ValueError naming the file."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise InputError(f"{path}: expected a readable torch checkpoint ({what}), found an empty "
                         f"(zero-byte) file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "Unsupported global" in str(err):
            raise InputError(
                f"{path}: expected {what} holding only tensors and plain Python values, found "
                f"other objects, which loading would have to execute; refused (the file may run "
                f"code). A checkpoint of ours that holds NumPy values converts with "
                f"`python -m util.checkpoint --convert {path} NEW.pth`") from None
        raise InputError(f"{path}: expected a readable torch checkpoint ({what}, saved with "
                         f"torch.save), found something else: not a torch file") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as err:
        raise InputError(f"{path}: expected a readable torch checkpoint ({what}), loading "
                         f"failed ({type(err).__name__}: {err}); the file is truncated or "
                         f"damaged") from err


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Re-save a checkpoint that holds NumPy arrays or scalars (which weights-only loading
    refuses) with tensors and Python numbers instead, atomically to ``dst``. Only NumPy's array
    and dtype reconstructors are allowed besides the weights-only set: nothing else can run."""
    import numpy as np

    dtypes = [type(np.dtype(t)) for t in np.sctypeDict.values()]
    allowed = [np.core.multiarray._reconstruct, np.core.multiarray.scalar, np.ndarray, np.dtype,
               *dtypes]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "other objects"
        raise InputError(f"{src}: expected tensors, plain values and NumPy arrays, found {what}; "
                         f"not converted, since loading it would run that code (do not load "
                         f"it unless you trust where it came from)") from None
    with atomic_path(dst, suffix=".pth") as tmp:
        torch.save(_plain(state), tmp)
    safe_load(dst, "cpu", "the converted checkpoint")
    return Path(dst)


def _plain(obj: Any) -> Any:
    """Tensors and plain containers: NumPy arrays and scalars become tensors and Python numbers."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for every failure."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: expected a checkpoint file, found nothing there")
    state = safe_load(path, map_location, "a training checkpoint")
    check_training_state(path, state)
    return state


def check_training_state(path: str | os.PathLike, state: Any) -> None:
    """Raise ValueError naming ``path`` unless ``state`` is a complete training checkpoint."""
    if not isinstance(state, dict) or "format_version" not in state:
        raise InputError(f"{path}: expected a training checkpoint with a format_version, found "
                         f"{type(state).__name__} (a bare state dict? use it as "
                         f"pretrained_weights or reload_model_path instead)")
    if state["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: expected checkpoint format {FORMAT_VERSION}, found "
                         f"{state['format_version']}")
    for key in ("model", "optimizer", "step"):
        if key not in state:
            raise InputError(f"{path}: expected key {key!r} in the checkpoint, missing")


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
        raise MissingInput(f"{target}: expected a run folder or checkpoint file, found "
                                f"nothing there")
    problems = []
    for path in checkpoint_candidates(target):
        try:
            return path, load_checkpoint(path, map_location)
        except ValueError as err:
            problems.append(str(err))
            logger.warning("skipping damaged checkpoint: %s", err)
    detail = "; ".join(problems) if problems else "none found"
    raise MissingInput(f"{target / SNAPSHOT_DIR}: expected a loadable checkpoint, {detail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a checkpoint holding NumPy values "
                                     "into one that loads with weights-only loading.")
    parser.add_argument("--convert", nargs=2, metavar=("OLD", "NEW"), required=True)
    args = parser.parse_args(argv)
    print(f"wrote {convert(*args.convert)}")


if __name__ == "__main__":
    from util.cli import run_main

    run_main("python -m util.checkpoint", main)
