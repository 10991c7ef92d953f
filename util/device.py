"""One resolved torch device from a config string: auto, cpu, cuda, cuda:N or mps."""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from util.errors import InputError

CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto", flag: str = "device") -> torch.device:
    """auto (CUDA, else MPS, else CPU) or the named device, which must exist here; errors name
    ``flag`` as the user gave it (``device`` for a config key, ``--device`` on a command line)."""
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    use = (f"use {flag} auto or {flag} cpu" if flag.startswith("-") else
           f"use {flag}=auto or {flag}=cpu")
    if base not in CHOICES:
        raise InputError(f"{flag}: expected one of {CHOICES} (or cuda:N), got {name!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{flag}: {name!r} requested but CUDA is not available here; {use}")
    if base == "mps" and not (getattr(torch.backends, "mps", None) is not None
                              and torch.backends.mps.is_available()):
        raise InputError(f"{flag}: 'mps' requested but MPS is not available here; {use}")
    return torch.device(name)


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX-512: its convolutions then run AVX2 kernels
_BELOW_AVX512 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _onednn_capped_below_avx512() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _BELOW_AVX512


def native_bf16(device: torch.device) -> bool:
    """bfloat16 arithmetic in hardware: CUDA devices that support it, CPUs with AVX512-BF16 or
    AMX (an AVX2-only CPU emulates bf16, far slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return (bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
                and not _onednn_capped_below_avx512()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def channels_last_pays(device: torch.device) -> bool:
    """Whether the channels_last layout speeds the encoder up here: on CUDA and on AVX-512 CPUs
    yes, on AVX2-only CPUs no (benchmarks/README.md has the figures)."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return "avx512f" in cpu_flags() and not _onednn_capped_below_avx512()
    return False


SWITCHES = {"bf16": native_bf16, "channels_last": channels_last_pays}


def resolve_switch(key: str, value: bool | str, device: torch.device) -> bool:
    """A config switch that takes True, False or "auto" (chosen for ``device``) as a bool."""
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise InputError(f"config: {key} expects True, False or 'auto', got {value!r}")
    return SWITCHES[key](device)


@dataclass
class ReadCount:
    """Host reads of device values seen by :func:`host_reads`: how many, and of what."""
    n: int = 0
    what: list[str] = field(default_factory=list)


class _HostReads(TorchDispatchMode):
    """Counts (or, with ``forbid``, fails on) a read of tensor values by the host: ``.item()``,
    ``bool()``, a boolean index, ``masked_select`` and ``nonzero``. ``.tolist()`` of a host
    tensor is not an operation and is not seen."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default, torch.ops.aten.index.Tensor}

    def __init__(self, count: ReadCount, forbid: bool) -> None:
        super().__init__()
        self.count, self.forbid = count, forbid

    @staticmethod
    def reads(func, args) -> bool:
        if func is torch.ops.aten.index.Tensor:  # a read only with a boolean index
            indices = args[1] if len(args) > 1 else ()
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS and self.reads(func, args):
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            if self.forbid:
                raise AssertionError(f"host read of device values: {func} on {shapes}")
            self.count.n += 1
            self.count.what.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads(device: torch.device, forbid: bool = True):
    """Counts the reads of values from ``device`` inside the block (yields a
    :class:`ReadCount`), or with ``forbid`` makes each an error: on CUDA by CUDA's own
    synchronisation check (``torch.cuda.set_sync_debug_mode``), elsewhere by catching the
    operations that read values (:class:`_HostReads`). For tests and checks; never in a run."""
    count = ReadCount()
    if device.type == "cuda":
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error" if forbid else "warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                yield count
            syncs = [str(w.message) for w in seen if "synchroniz" in str(w.message)]
            count.n, count.what = len(syncs), syncs
        finally:
            torch.cuda.set_sync_debug_mode(before)
    else:
        with _HostReads(count, forbid):
            yield count


def no_host_reads(device: torch.device):
    """:func:`host_reads` that makes every read an error."""
    return host_reads(device, True)


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait: to a CUDA device through
    pinned memory (torch's cached host allocator), copied asynchronously."""
    if tensor.device == device or device.type != "cuda":
        return tensor.to(device)
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
