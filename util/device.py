"""One resolved torch device from a config string: auto, cpu, cuda, cuda:N or mps."""
from __future__ import annotations

import torch

CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in CHOICES:
        raise ValueError(f"device: expected one of {CHOICES} (or cuda:N), got {name!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available here; use "
                         f"device=auto or device=cpu")
    if base == "mps" and not (getattr(torch.backends, "mps", None) is not None
                              and torch.backends.mps.is_available()):
        raise ValueError("device: 'mps' requested but MPS is not available here; use "
                         "device=auto or device=cpu")
    return torch.device(name)
