"""What stops a training run early, and how it leaves the run resumable.

- :class:`StopRequests`: SIGTERM / SIGINT (what Slurm and Kubernetes send before a kill) ask the
  step loop to stop after the current step; the loop writes a full checkpoint and raises
  :class:`Preempted` (sacred marks the run INTERRUPTED, the command exits with 128 + signal).
  A second signal stops at once.
- :func:`stop_on_nonfinite`: a NaN/inf loss on any rank stops every rank at the first such step
  (the training loop reads its losses at intervals and before every checkpoint); the rank whose
  loss it is saves that step's episode in the run folder and the error names it.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import torch

from util import distributed
from util.errors import NonFiniteLoss
from util.runs import SacredInterrupt
from util.workers import Stopped


class Preempted(SacredInterrupt, Stopped):
    """Training stopped by SIGTERM / SIGINT after a full checkpoint; sacred marks the run
    INTERRUPTED and the command line exits with 128 + the signal number (training.py, and
    :func:`util.cli.run_main` for a script that trains, e.g. the quickstart)."""
    STATUS = "INTERRUPTED"
    note = ""  # the message names the checkpoint and how to continue

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; "
                         f"checkpoint {path}; continue with resume={path.parent.parent}")
        self.signum = signum


class StopRequests:
    """Within ``with StopRequests(log) as stops:``, a SIGTERM / SIGINT sets ``stops.signum``
    (the step loop checks it between steps); a second signal exits at once. Handlers are
    installed only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, log) -> None:
        self.signum: int | None = None
        self.log = log
        self.previous = {}
        self.pid = os.getpid()

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            return  # a loader worker forked inside the block: the training process decides
        if self.signum is not None:
            os._exit(128 + signum)  # the second signal: stop at once
        self.signum = signum
        self.log.warning("%s: stopping after this step with a checkpoint (a second signal stops "
                         "at once)", signal.Signals(signum).name)


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
