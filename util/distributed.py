"""Multi-process (torchrun) training: process group, ranks, and the reductions the loop needs.

Launched by ``torchrun --nproc_per_node N training.py with ...`` the environment carries RANK,
WORLD_SIZE and LOCAL_RANK; otherwise this is a single process and every helper is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from util.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Ranks from the torchrun environment (a single process when absent)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as err:
        raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers from torchrun, got "
                         f"{os.environ.get('RANK')!r}/{os.environ.get('WORLD_SIZE')!r}/"
                         f"{os.environ.get('LOCAL_RANK')!r}") from err


def init(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group (NCCL on CUDA, gloo otherwise); one GPU per local rank."""
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    global _HOST_GROUP
    _HOST_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return info, device


_HOST_GROUP = None  # a gloo group for agreements between hosts (None: the default group)


def agreed_signal(signum: int | None, info: DistInfo) -> int | None:
    """The stop signal that any rank has received (the largest number; None when none has),
    the same on every rank, so that all ranks stop after the same step. An all-reduce of one
    integer between the hosts (gloo): the device is not waited for."""
    if not info.enabled:
        return signum
    box = torch.tensor([signum or 0])
    dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return int(box.item()) or None


def first_nonfinite(values: torch.Tensor, info: DistInfo | None) -> int | None:
    """The first index of ``values`` [n] that is not finite (None when all are); with ``info``,
    the first on any rank, the same on every rank so that all ranks stop together. One read of
    the device."""
    values = values.detach().reshape(-1)
    n = values.numel()
    index = torch.arange(n, device=values.device)
    first = torch.where(torch.isfinite(values), n, index).amin().reshape(1)
    if info is not None and info.enabled:
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    first = int(first.item())
    return None if first == n else first


def from_main(value, info: DistInfo):
    """Rank 0's ``value`` on every rank (a picklable object; e.g. the run folder)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
