"""Compatibility path: ``saig_core.sam`` is :mod:`saig_core.training.sam`."""
from saig_core.training.sam import SAM

__all__ = ["SAM"]
