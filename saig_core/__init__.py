"""saig_core: the SAIG cross-view retrieval engine (model, heads, checkpoints, training, evaluation).

No GIS imports here: the geospatial side lives in :mod:`tiling`.
"""
from typing import TYPE_CHECKING

from .version import __version__

# The public API is imported on first use (PEP 562), so `import saig_core.cli` and `saig --help`
# do not pay for importing torch; `from saig_core import build_model` works as usual.
_LAZY = {
    "CheckpointError": ".checkpoint",
    "checkpoint_info": ".checkpoint",
    "convert_official": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "model_fingerprint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "Encoder": ".encode",
    "encode_batches": ".encode",
    "BACKBONE_PRESETS": ".config",
    "BackboneConfig": ".config",
    "ModelConfig": ".config",
    "preset_config": ".config",
    "InputError": ".model",
    "SAIGModel": ".model",
    "build_model": ".model",
    "count_parameters": ".model",
}

if TYPE_CHECKING:  # static tools see the real names
    from .checkpoint import (CheckpointError, checkpoint_info, convert_official, load_checkpoint,
                             model_fingerprint, save_checkpoint)
    from .config import BACKBONE_PRESETS, BackboneConfig, ModelConfig, preset_config
    from .encode import Encoder, encode_batches
    from .model import InputError, SAIGModel, build_model, count_parameters


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
