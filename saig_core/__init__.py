"""saig_core: the SAIG cross-view retrieval engine, the bottom layer (no GIS imports).

Sub-packages, one concept each:

* :mod:`saig_core.model`: configs and presets, the backbone (convolutional stem + attention-only
  blocks), the GAP / SMD heads, the two-branch :class:`SAIGModel`, FLOP counts;
* :mod:`saig_core.weights`: checkpoints (the project's format, the authors', ImageNet backbones), ONNX;
* :mod:`saig_core.training`: losses, (A)SAM, schedule, YAML training config, trainer, DDP, evaluation;
* :mod:`saig_core.data`: cross-view datasets, ground/aerial transforms, image preprocessing;
* :mod:`saig_core.runtime`: devices and precisions, the batch :class:`Encoder`, progress reporting,
  the argument builders every command shares.

``saig_core.losses``, ``saig_core.sam`` and ``saig_core.evaluate`` are kept as short paths to their
training modules.
"""
from typing import TYPE_CHECKING

from saig_core.version import __version__

# The public API is imported on first use (PEP 562), so `import saig_core` and `saig --help`
# do not pay for importing torch; `from saig_core import build_model` works as usual.
_LAZY = {
    "CheckpointError": ".weights.checkpoint",
    "checkpoint_info": ".weights.checkpoint",
    "convert_official": ".weights.checkpoint",
    "load_checkpoint": ".weights.checkpoint",
    "model_fingerprint": ".weights.checkpoint",
    "save_checkpoint": ".weights.checkpoint",
    "Encoder": ".runtime.encode",
    "encode_batches": ".runtime.encode",
    "BACKBONE_PRESETS": ".model.config",
    "BackboneConfig": ".model.config",
    "ModelConfig": ".model.config",
    "preset_config": ".model.config",
    "InputError": ".model.saig_model",
    "SAIGModel": ".model.saig_model",
    "build_model": ".model.saig_model",
    "count_parameters": ".model.saig_model",
}

if TYPE_CHECKING:  # static tools see the real names
    from saig_core.model.config import BACKBONE_PRESETS, BackboneConfig, ModelConfig, preset_config
    from saig_core.model.saig_model import InputError, SAIGModel, build_model, count_parameters
    from saig_core.runtime.encode import Encoder, encode_batches
    from saig_core.weights.checkpoint import (
        CheckpointError,
        checkpoint_info,
        convert_official,
        load_checkpoint,
        model_fingerprint,
        save_checkpoint,
    )


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saig_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BACKBONE_PRESETS",
    "BackboneConfig",
    "CheckpointError",
    "Encoder",
    "InputError",
    "ModelConfig",
    "SAIGModel",
    "__version__",
    "build_model",
    "checkpoint_info",
    "convert_official",
    "count_parameters",
    "encode_batches",
    "load_checkpoint",
    "model_fingerprint",
    "preset_config",
    "save_checkpoint",
]
