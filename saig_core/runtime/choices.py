"""The device and precision names the engine accepts, in one place.

Torch-free, so command-line help and validation can use them without importing torch.
"""
from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "auto (CUDA when present, then MPS, else CPU), cpu, cuda, cuda:N or mps"

#: Autocast precisions, plus ``auto`` (per device) and, for inference only, ``fast`` (bf16 on CPUs
#: with native bf16).
EXPLICIT_PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_PRECISIONS = ("auto", *EXPLICIT_PRECISIONS)
PRECISIONS = ("auto", "fast", *EXPLICIT_PRECISIONS)
PRECISION_HELP = ("auto (bf16 on CUDA, exact fp32 on CPU/MPS), fast (like auto, but bf16 on CPUs with native "
                  "bf16), fp32, bf16 or fp16")

#: ``--progress`` modes of every command: a bar on stderr, JSON lines on stdout, or nothing.
PROGRESS_MODES = ("auto", "bar", "json", "none")
