"""Compatibility path: ``saig_core.losses`` is :mod:`saig_core.training.losses`."""
from saig_core.training.losses import (
    LOSSES,
    build_loss,
    hard_negative_triplet,
    info_nce,
    pair_distances,
    soft_margin_triplet,
)

__all__ = ["LOSSES", "build_loss", "hard_negative_triplet", "info_nce", "pair_distances", "soft_margin_triplet"]
