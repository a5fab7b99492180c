"""Query side of the orientation-aware (``sector``) models: which query to search, and the heading estimate.

A sector model (``saig_core.model.orientation``) reads a photo's field of view from the empty columns
of its north-aligned canvas. With a known heading the photo is placed at it and searched once. Without
one, the canvas is rolled to :data:`ROTATIONS` headings, all of them are encoded in one batch and
searched in **one** FAISS call; each rotation's best score (the coverage-weighted mean sector
similarity) is compared and the best rotation is kept: its heading is the photo's heading estimate.
Models without the sector head keep the single north-aligned (or centred) query.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Headings tried when a photo's heading is unknown (every 11.25 degrees).
ROTATIONS = 32


@dataclass(frozen=True)
class OrientedQuery:
    """The query to search (1, D), the factor that turns its inner products into mean sector similarities,
    the heading it assumes (degrees, of the photo's centre column) and whether that heading was estimated."""

    q: np.ndarray
    scale: float
    heading_deg: float | None
    estimated: bool


def is_oriented(encoder) -> bool:
    """Whether the encoder's model has the orientation-aware sector head."""
    return getattr(encoder.cfg, "pool", None) == "sector"


def sectors_of(encoder) -> int:
    """Azimuth sectors of a sector model."""
    return int(encoder.cfg.sectors)


def single_query(encoder, canvas, heading_deg: float | None) -> OrientedQuery:
    """The query of a canvas whose heading is known (or assumed): one descriptor."""
    from saig_core.model.orientation import mean_similarity_scale

    q = encoder.encode("ground", canvas[None])
    scale = float(mean_similarity_scale(q, sectors_of(encoder))[0]) if is_oriented(encoder) else 1.0
    return OrientedQuery(q.numpy(), scale, heading_deg, False)


def rotation_query(encoder, canvas, heading0_deg: float, search_fn, rotations: int = ROTATIONS) -> OrientedQuery:
    """The best of ``rotations`` rolls of a canvas whose centre column assumes ``heading0_deg``.

    ``search_fn(Q)`` searches the (R, D) queries in one call and returns their (R, k) scores, best first.
    """
    from saig_core.model.orientation import mean_similarity_scale, rotated_canvases

    batch, offsets = rotated_canvases(canvas, rotations)
    q = encoder.encode("ground", batch)
    scale = mean_similarity_scale(q, sectors_of(encoder)).numpy()
    scores = np.asarray(search_fn(q.numpy()), dtype=np.float64)
    top = np.where(np.isfinite(scores[:, 0]), scores[:, 0], -np.inf) * scale
    best = int(np.argmax(top))
    heading = (heading0_deg + offsets[best]) % 360.0
    return OrientedQuery(q[best:best + 1].numpy(), float(scale[best]), heading, True)


__all__ = ["ROTATIONS", "OrientedQuery", "is_oriented", "rotation_query", "sectors_of", "single_query"]
