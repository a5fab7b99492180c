"""The SAIG network: configs and presets (:mod:`.config`), the backbone (:mod:`.backbone`), the GAP
and SMD heads (:mod:`.pooling`), the two unshared branches (:mod:`.saig_model`) and FLOP counts
(:mod:`.flops`).
"""
from saig_core.model.config import BACKBONE_PRESETS, BackboneConfig, ModelConfig, preset_config
from saig_core.model.saig_model import InputError, SAIGModel, build_model, count_parameters

__all__ = ["BACKBONE_PRESETS", "BackboneConfig", "InputError", "ModelConfig", "SAIGModel", "build_model",
           "count_parameters", "preset_config"]
