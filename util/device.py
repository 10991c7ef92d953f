"""One resolved torch device from a config string: auto, cpu, cuda, cuda:N or mps."""
from __future__ import annotations

import os

import torch
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
