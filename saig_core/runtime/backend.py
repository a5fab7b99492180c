"""What the engine can do here: versions, the device it would use, and optionally a checkpoint's model.

Backs ``saig backend-info`` (the QGIS plugin's "Check backend" button).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saig_core.runtime.device import describe_device, resolve_device, resolve_precision
from saig_core.version import __version__


def backend_info(
    device: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    ground_size: tuple[int, int] | None = None,
    aerial_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A JSON-able description of the backend; ``model`` is None without a checkpoint.

    Raises :class:`saig_core.errors.SaigError` subclasses for an unavailable device or a checkpoint
    that cannot be loaded, so the caller can show the reason.
    """
    dev = resolve_device(device)
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    info: dict[str, Any] = {
        "version": __version__,
        "torch": str(torch.__version__),
        "device": str(dev),
        # the GPU's own name for CUDA ("NVIDIA H100 80GB HBM3"); "CPU (AMD EPYC, 2 threads)" otherwise
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else describe_device(dev),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "precision": resolve_precision(dev, "auto"),
        "fast_precision": resolve_precision(dev, "fast"),
        "onnxruntime": ort_version,
        "model": None,
    }
    if checkpoint is not None:
        from saig_core.weights.checkpoint import GROUND_INPUT_KEY, aerial_footprint_m, checkpoint_info

        ck = checkpoint_info(checkpoint, ground_size=ground_size, aerial_size=aerial_size)
        cfg = ck["config"]
        info["model"] = {
            "path": str(Path(checkpoint)),
            "kind": ck["kind"],
            "preset": cfg["preset"],
            "pool": cfg["pool"],
            "depth": cfg["backbone"]["depth"],
            "ground_size": cfg["ground_size"],
            "aerial_size": cfg["aerial_size"],
            "descriptor_dim": ck["descriptor_dim"],
            "parameters": ck["parameters"],
            "fingerprint": ck["fingerprint"],
            # what must match at inference (null when the checkpoint does not record it): the ground
            # side of one aerial training image, and how ground images become input
            "aerial_footprint_m": aerial_footprint_m(ck["metadata"]),
            "ground_input": ck["metadata"].get(GROUND_INPUT_KEY),
        }
    return info
