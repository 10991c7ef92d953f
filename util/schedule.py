"""Learning rate as a pure function of the step (method.md §5.2)."""
from __future__ import annotations
from util.errors import InputError


def lr_at(step: int, base_lr: float = 1e-3, gamma: float = 0.95, step_size: int = 1000) -> float:
    """``base_lr * gamma ** (step // step_size)``: the original's MultiStepLR with milestones
    every ``step_size`` steps (for 100k steps: 1000, ..., 99000; final lr 1e-3 * 0.95^99)."""
    if step < 0 or step_size < 1:
        raise InputError(f"lr_at: expected step >= 0 and step_size >= 1, got {step}, {step_size}")
    return base_lr * gamma ** (step // step_size)
