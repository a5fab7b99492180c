"""saig_core: the SAIG cross-view retrieval engine (model, heads, checkpoints, training, evaluation).

No GIS imports here: the geospatial side lives in :mod:`tiling`.
"""
from .checkpoint import (
    CheckpointError,
    checkpoint_info,
    convert_official,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from .config import BACKBONE_PRESETS, BackboneConfig, ModelConfig, preset_config
from .model import InputError, SAIGModel, build_model, count_parameters
from .version import __version__

__all__ = [
    "BACKBONE_PRESETS",
    "BackboneConfig",
    "CheckpointError",
    "InputError",
    "ModelConfig",
    "SAIGModel",
    "__version__",
    "build_model",
    "checkpoint_info",
    "convert_official",
    "count_parameters",
    "load_checkpoint",
    "model_fingerprint",
    "preset_config",
    "save_checkpoint",
]
