"""Device and precision choice: ``auto`` means CUDA when present, then MPS, else CPU.

Precisions: ``fp32``; ``bf16`` / ``fp16`` run matmuls and convolutions under autocast (LayerNorm,
softmax and the final L2 normalisation stay float32); ``auto`` picks bf16 on CUDA GPUs that support it
(else fp16) and exact fp32 on CPU and MPS; ``fast`` is ``auto`` except that on a CPU with native bf16
instructions (AVX512-BF16 or AMX) it picks bf16, about 1.8x the fp32 throughput with descriptors
within cosine 0.9999 of fp32 (see benchmarks/encoder.py).
"""
from __future__ import annotations

import contextlib
import functools
import platform

import torch

from saig_core.errors import SaigError
from saig_core.runtime.choices import DEVICES, PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(SaigError, RuntimeError):
    """A device or precision that was asked for but is not available here."""


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """A torch device from ``auto|cpu|cuda|mps`` (``cuda:1`` works too); errors when it is absent."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unsupported device {name!r}; choose one of {', '.join(DEVICES)}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}; choose one of {', '.join(DEVICES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}; a CPU-only build ends in '+cpu': see the README for a CUDA build)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise DeviceError("device 'mps' was asked for but MPS is not available")
    return device


def describe_device(device: torch.device) -> str:
    """'CUDA (NVIDIA H100 80GB HBM3)', 'CPU (AMD EPYC, 2 threads)', ... for logs and the backend check."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name ('AMD EPYC', 'Intel(R) Core(TM) i7-...'), or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (x86 AVX512-BF16 or AMX-BF16; Linux only).

    Elsewhere bf16 on CPU is emulated and slower than fp32, so ``fast`` stays fp32 there.
    """
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The concrete precision (``fp32``, ``bf16`` or ``fp16``) for ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision in ("auto", "fast"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "fast" and device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """An autocast context for ``precision`` on ``device`` (a no-op context for fp32)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
