"""Compatibility path: ``saig_core.evaluate`` is :mod:`saig_core.training.evaluate`."""
from saig_core.training.evaluate import (
    DEFAULT_BLOCK_BYTES,
    closer_counts,
    recall_at_k,
    recall_from_counts,
    retrieval_metrics,
    top_percent_k,
)

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "closer_counts",
    "recall_at_k",
    "recall_from_counts",
    "retrieval_metrics",
    "top_percent_k",
]
