"""Seeds and random-number-generator state.

Data randomness never uses global state: every episode draws from a NumPy ``Generator`` built from
(run seed, episode index) by :func:`dataloaders.episodes.episode_rng`, so episode ``i`` is the same
whatever the worker count and after a resume. Model-side randomness (parameter init) uses torch's generator, seeded by
:func:`seed_everything` and saved/restored with checkpoints.
"""
from __future__ import annotations

import random

import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python and torch; optionally make torch kernels deterministic."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
