"""Device choice and mixed precision: ``auto`` means CUDA when present, then MPS, else CPU."""
from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """A torch device from ``auto|cpu|cuda|mps`` (``cuda:1`` works too); errors when it is absent."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU (is a CUDA build of torch installed?)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was asked for but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose one of {', '.join(DEVICES)}")
    return device


def describe_device(device: torch.device) -> str:
    """'CUDA (NVIDIA H100 80GB HBM3)', 'CPU (2 threads)', ... for logs and the plugin's backend check."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast context: bf16 (or fp16) on GPUs, plain fp32 on CPU unless asked otherwise.

    ``precision``: ``auto`` (bf16 on CUDA when supported, else fp16; fp32 on CPU/MPS), ``fp32``,
    ``bf16`` or ``fp16``.
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    return torch.autocast(device_type=device.type, dtype=dtype)
