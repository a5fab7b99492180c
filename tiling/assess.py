"""What ``saig locate`` says about each candidate besides its score: refined position, uncertainty, confidence.

After retrieval (the best :data:`POSTERIOR_K` chips, and the heatmap's chips when asked), the best
distinct places are refined on a fine grid (:mod:`tiling.refine`), every scored place enters the
posterior of :mod:`tiling.confidence`, and each candidate gets: its refined position (EPSG:4326
and grid CRS; null when not refined), the refined score, an uncertainty radius (metres, refined
candidates) and a confidence (the probability that the true position is within 25 m of the
reported position, calibrated with the checkpoint's calibration).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tiling.confidence import Calibration, Posterior, build_posterior, rms_radius
from tiling.reference import Chips, QueryResult, Reference
from tiling.refine import AerialViews, Refinement, RefineOptions, open_views, refine
from tiling.schema import ASSESSMENT_FIELDS

#: Chips retrieved per photo for the posterior (the output keeps ``-k``).
POSTERIOR_K = 64


def query_kind(photo, oq) -> str:
    """The calibration kind of a query: a panorama, a photo at a known heading, or one whose heading was searched."""
    if photo.view.panorama is not None:
        return "panorama"
    return "photo_no_heading" if oq.estimated or oq.heading_deg is None else "photo"


@dataclass
class Assessment:
    """Per-candidate fields (``tiling.schema.ASSESSMENT_FIELDS``, in ranking order), posterior, refined places."""

    fields: list[dict]
    posterior: Posterior
    positions: np.ndarray  # (N, 2) each candidate's reported position, grid CRS: refined when refined
    refinements: list[Refinement] = field(default_factory=list)

    def refinement_of(self, candidate: int) -> Refinement | None:
        """The refined place a candidate (index in the ranking) started, if any."""
        return next((r for r in self.refinements if r.candidate == candidate), None)


class Assessor:
    """Refines and assesses a photo's candidates against one index (its rasters opened once per run)."""

    def __init__(self, index: Reference, encode_views: Callable[[np.ndarray], np.ndarray] | None,
                 views: AerialViews | None, calibration: Calibration, refine_opts: RefineOptions) -> None:
        from pyproj import Transformer

        self.index, self.encode_views, self.views = index, encode_views, views
        self.calibration, self.refine_opts = calibration, refine_opts
        self.stride = float(index.grid["stride"])
        self.to_lonlat = Transformer.from_crs(index.crs, "EPSG:4326", always_xy=True)

    @classmethod
    def open(cls, index: Reference, encoder, opts, reporter) -> Assessor:
        """The assessor of a locate run: the checkpoint's calibration, the index's rasters when refining."""
        from saig_core.weights.checkpoint import read_checkpoint
        from tiling.index import encode_chips

        path = opts.checkpoint or index.meta["model"].get("checkpoint")
        calibration = Calibration.from_metadata(read_checkpoint(path).get("metadata"))
        if not calibration.fitted:
            reporter.log(f"{path}: no confidence calibration in this checkpoint (python benchmarks/calibration.py "
                         "--checkpoint CKPT --write-checkpoint); the confidence column is the model's uncalibrated "
                         "posterior mass", "warning")
        views = None
        if opts.refine > 0:
            views = open_views(index.meta, index.dir, lambda m: reporter.log(m, "warning"))
        polar = encoder.cfg.aerial_size if index.meta["chips"].get("polar_aerial") else None
        refine_opts = RefineOptions(places=opts.refine, step=opts.refine_step_m)
        return cls(index, lambda batch: encode_chips(encoder, batch, polar), views, calibration, refine_opts)

    def assess(self, oq, hits: QueryResult, kind: str) -> Assessment:
        """Refine the best places of ``hits`` (scores already scaled) for query ``oq``; assess every candidate."""
        c = hits.chips
        refinements: list[Refinement] = []
        if self.views is not None and self.encode_views is not None and len(c):
            refinements = refine(self.views, self.encode_views, oq.q, oq.scale, c.x, c.y, self.refine_opts,
                                 self.stride)
        xy, scores = _scored_places(hits)
        unit_m = metres_per_unit(self.to_lonlat, float(c.x[0]), float(c.y[0])) if len(c) else 1.0
        post = build_posterior(xy, scores, self.stride, refinements, unit_m)
        by_candidate = {r.candidate: r for r in refinements}
        cal, t = self.calibration, self.calibration.temperature
        p = post.probabilities(t)  # once for every candidate
        out, positions = [], []
        for i in range(len(c)):
            r = by_candidate.get(i)
            x, y = (r.x, r.y) if r else (float(c.x[i]), float(c.y[i]))
            positions.append((x, y))
            row: dict = dict.fromkeys(ASSESSMENT_FIELDS)
            row["confidence"] = round(cal.probability(post.mass_within(x, y, t, cal.hit_radius_m, p), kind), 4)
            if r is not None:
                lon, lat = self.to_lonlat.transform(r.x, r.y)
                row.update(refined_lon=float(lon), refined_lat=float(lat), refined_x=r.x, refined_y=r.y,
                           refined_score=r.score,
                           uncertainty_m=round(cal.uncertainty_factor * rms_radius(r, t) * unit_m, 2))
            out.append(row)
        return Assessment(out, post, np.asarray(positions, np.float64).reshape(-1, 2), refinements)


def _scored_places(hits: QueryResult) -> tuple[np.ndarray, np.ndarray]:
    """Every chip scored for the photo (the candidates and the heatmap's chips, each once): centres, scores."""
    parts: list[tuple[Chips, np.ndarray]] = [(hits.chips, hits.scores)]
    if hits.heat_chips is not None and hits.heat_scores is not None:
        parts.append((hits.heat_chips, hits.heat_scores))
    ids = np.concatenate([p[0].faiss_id for p in parts])
    xy = np.concatenate([np.stack([p[0].x, p[0].y], axis=1) for p in parts]).astype(np.float64)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float64)
    _, first = np.unique(ids, return_index=True)
    return xy[first], scores[first]


def metres_per_unit(to_lonlat, x: float, y: float) -> float:
    """Ground metres (geodesic) of one grid-CRS unit east of (x, y)."""
    from pyproj import Geod

    lons, lats = to_lonlat.transform([x, x + 1.0], [y, y])
    _, _, d = Geod(ellps="WGS84").inv(lons[0], lats[0], lons[1], lats[1])
    return float(d) if math.isfinite(d) and d > 0 else 1.0


__all__ = ["POSTERIOR_K", "Assessment", "Assessor", "metres_per_unit", "query_kind"]
