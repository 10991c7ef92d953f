"""Learning rate as a pure function of the step (SPEC §5.2)."""
from __future__ import annotations


def lr_at(step: int, base_lr: float = 1e-3, gamma: float = 0.95, step_size: int = 1000,
          n_steps: int | None = None) -> float:
    """``base_lr * gamma ** (step // step_size)``; the last decay is at the last milestone below
    ``n_steps`` (the original's milestones are ``1000, 2000, ..., n_steps - 1000``)."""
    decays = step // step_size
    if n_steps is not None:
        decays = min(decays, max(n_steps // step_size - 1, 0))
    return base_lr * gamma ** decays
