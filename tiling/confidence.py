"""Confidence and uncertainty of a photo's candidates: a posterior over places, calibrated on validation worlds.

**Posterior.** Every place a photo was scored at is a point with a score ``s`` and the ground area it
stands for: the index's chips (the ranked candidates and, when asked, the heatmap's chips) each
stand for ``stride**2``; the fine points of a refined place (:mod:`tiling.refine`) each for
``step**2`` and replace the chips inside their window. The posterior probability of a point is
``area * exp(s / T)``, normalised over all points; the temperature ``T`` is fitted.

**Confidence** of a candidate = the probability that the true position is within
:data:`HIT_M` (25 m) of the candidate's reported position (refined when refined): the posterior
mass within 25 m of it (the raw confidence), mapped through a logistic curve per kind of query
(``panorama``, ``photo`` with a known heading, ``photo_no_heading``) fitted on validation worlds by
``benchmarks/calibration.py --write-checkpoint`` and stored in the checkpoint (:class:`Calibration`).
A checkpoint without a calibration gives the raw mass, and ``saig locate`` says so.

**Uncertainty radius** of a refined candidate: the posterior's RMS distance from the refined
position over its fine points (plus the grid's own rounding), times a factor fitted so that it
holds the true position for 90 % of the validation photos whose refined top-1 was a hit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

HIT_M = 25.0
KINDS = ("panorama", "photo", "photo_no_heading")
#: The radius holding 90 % of an isotropic 2-D Gaussian, in units of its RMS radius: sqrt(-ln 0.1).
GAUSS_90 = math.sqrt(-math.log(0.1))
COVERAGE = 0.9  # what the uncertainty radius is fitted to hold
METADATA_KEY = "confidence_calibration"


@dataclass(frozen=True)
class Calibration:
    """Temperature, a logistic map (a, b) per query kind, the uncertainty factor and where they came from."""

    temperature: float = 0.02
    platt: dict[str, tuple[float, float]] = field(default_factory=dict)
    uncertainty_factor: float = GAUSS_90
    hit_radius_m: float = HIT_M
    fitted_on: dict = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        """Whether this was fitted (else the identity map and default temperature)."""
        return bool(self.platt)

    def probability(self, raw: float, kind: str) -> float:
        """The calibrated probability for a raw posterior mass (the mass itself when not fitted)."""
        a, b = self.platt.get(kind) or self.platt.get("all") or (1.0, 0.0)
        return float(_sigmoid(a * _logit(raw) + b))

    def to_metadata(self) -> dict:
        """JSON-able, as stored in a checkpoint's metadata under :data:`METADATA_KEY`."""
        d = asdict(self)
        d["platt"] = {k: [float(a), float(b)] for k, (a, b) in self.platt.items()}
        return d

    @classmethod
    def from_metadata(cls, meta: dict | None) -> Calibration:
        """The calibration a checkpoint's metadata records (the default, unfitted one when none)."""
        d = (meta or {}).get(METADATA_KEY)
        if not d:
            return cls()
        return cls(float(d["temperature"]), {k: (float(v[0]), float(v[1])) for k, v in d["platt"].items()},
                   float(d["uncertainty_factor"]), float(d.get("hit_radius_m", HIT_M)), dict(d.get("fitted_on", {})))


@dataclass
class Posterior:
    """Scored points of one photo (grid CRS), their log-weights before the temperature, and metres per unit."""

    xy: np.ndarray  # (N, 2)
    scores: np.ndarray  # (N,)
    log_area: np.ndarray  # (N,)
    unit_m: float

    def probabilities(self, temperature: float) -> np.ndarray:
        """Each point's posterior probability at this temperature."""
        z = self.log_area + self.scores / temperature
        w = np.exp(z - z.max())
        return w / w.sum()

    def mass_within(self, x: float, y: float, temperature: float, radius_m: float = HIT_M,
                    p: np.ndarray | None = None) -> float:
        """Posterior mass within ``radius_m`` of (x, y) (``p``: the probabilities at ``temperature``, when the
        caller asks for many positions)."""
        p = self.probabilities(temperature) if p is None else p
        near = np.hypot(self.xy[:, 0] - x, self.xy[:, 1] - y) * self.unit_m <= radius_m
        return float(p[near].sum())


def build_posterior(xy: np.ndarray, scores: np.ndarray, stride: float, refinements: list, unit_m: float) -> Posterior:
    """The posterior's points: chips (``xy``, ``scores``; each ``stride**2``) outside the refined windows, and
    every refined place's fine points (each ``step**2``)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64)
    keep = np.ones(len(xy), bool)
    parts_xy, parts_s, parts_a = [], [], []
    for r in refinements:
        lo, hi = r.points.min(axis=0) - r.step / 2, r.points.max(axis=0) + r.step / 2
        keep &= ~np.all((xy >= lo) & (xy <= hi), axis=1)
        parts_xy.append(r.points)
        parts_s.append(r.scores)
        parts_a.append(np.full(len(r.points), 2 * math.log(r.step)))
    parts_xy.insert(0, xy[keep])
    parts_s.insert(0, scores[keep])
    parts_a.insert(0, np.full(int(keep.sum()), 2 * math.log(stride)))
    return Posterior(np.concatenate(parts_xy), np.concatenate(parts_s), np.concatenate(parts_a), unit_m)


def rms_radius(refinement, temperature: float) -> float:
    """Posterior RMS distance (grid units) of a refined place's fine points from its best point, with the
    grid's own rounding (a uniform error of one step per axis: step**2 / 6)."""
    z = refinement.scores / temperature
    w = np.exp(z - z.max())
    d2 = (refinement.points[:, 0] - refinement.x) ** 2 + (refinement.points[:, 1] - refinement.y) ** 2
    return float(math.sqrt((w * d2).sum() / w.sum() + refinement.step ** 2 / 6.0))


# -- fitting --------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One validation photo: its kind, posterior, reported top-1 position (grid CRS), the true position, and
    the top-1's refinement when refined (for the uncertainty factor)."""

    kind: str
    posterior: Posterior
    top: tuple[float, float]
    truth: tuple[float, float]
    refinement: object | None = None

    @property
    def hit(self) -> bool:
        """Whether the reported top-1 position is within :data:`HIT_M` of the truth."""
        return math.hypot(self.top[0] - self.truth[0], self.top[1] - self.truth[1]) * self.posterior.unit_m <= HIT_M


def fit(samples: list[Sample], source: dict | None = None) -> Calibration:
    """Temperature (the best log-likelihood of a logistic map over all kinds), then a logistic map per kind
    (the shared one for a kind with fewer than 20 photos or one outcome only), then the uncertainty factor."""
    if len(samples) < 10:
        raise ValueError(f"calibration needs at least 10 validation photos (got {len(samples)})")
    hits = np.asarray([s.hit for s in samples], np.float64)
    best: tuple[float, float, tuple[float, float]] | None = None
    for t in np.geomspace(0.001, 0.5, 40):
        x = _logit(np.asarray([s.posterior.mass_within(*s.top, t) for s in samples]))
        ab = _fit_logistic(x, hits)
        ll = _log_likelihood(x, hits, ab)
        if best is None or ll > best[0]:
            best = (ll, float(t), ab)
    assert best is not None
    _, t, shared = best
    platt: dict[str, tuple[float, float]] = {"all": shared}
    for kind in KINDS:
        mine = [s for s in samples if s.kind == kind]
        y = np.asarray([s.hit for s in mine], np.float64)
        if len(mine) >= 20 and 0 < y.sum() < len(y):
            x = _logit(np.asarray([s.posterior.mass_within(*s.top, t) for s in mine]))
            platt[kind] = _fit_logistic(x, y)
    ratios = [math.hypot(s.top[0] - s.truth[0], s.top[1] - s.truth[1]) / rms_radius(s.refinement, t)
              for s in samples if s.hit and s.refinement is not None]
    factor = float(np.quantile(ratios, COVERAGE)) if len(ratios) >= 10 else GAUSS_90
    return Calibration(t, platt, factor, HIT_M, {**(source or {}), "photos": len(samples),
                                                 "uncertainty_photos": len(ratios)})


def reliability(predicted: np.ndarray, hit: np.ndarray, bins: int = 10) -> dict:
    """The calibration curve: per bin of predicted confidence its photos, mean prediction and hit rate; the
    expected calibration error and the Brier score."""
    predicted, hit = np.asarray(predicted, np.float64), np.asarray(hit, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(predicted, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        mean_p, rate = float(predicted[m].mean()), float(hit[m].mean())
        ece += m.sum() / len(predicted) * abs(mean_p - rate)
        rows.append({"bin": [round(float(edges[b]), 2), round(float(edges[b + 1]), 2)], "photos": int(m.sum()),
                     "mean_confidence": round(mean_p, 4), "hit_rate": round(rate, 4)})
    return {"bins": rows, "ece": round(float(ece), 4), "brier": round(float(np.mean((predicted - hit) ** 2)), 4),
            "photos": int(len(predicted)), "hit_rate": round(float(hit.mean()), 4) if len(hit) else None}


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -50.0, 50.0)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a x + b) by Newton's method, with a small ridge towards (1, 0) (the identity)."""
    a, b = 1.0, 0.0
    for _ in range(50):
        p = _sigmoid(a * x + b)
        w = p * (1 - p)
        g = np.array([((p - y) * x).sum() + ridge * (a - 1), (p - y).sum() + ridge * b])
        h = np.array([[(w * x * x).sum() + ridge, (w * x).sum()], [(w * x).sum(), w.sum() + ridge]])
        da, db = np.linalg.solve(h, g)
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-9:
            break
    return float(a), float(b)


def _log_likelihood(x: np.ndarray, y: np.ndarray, ab: tuple[float, float]) -> float:
    p = np.clip(_sigmoid(ab[0] * x + ab[1]), 1e-9, 1 - 1e-9)
    return float((y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


__all__ = ["GAUSS_90", "HIT_M", "KINDS", "METADATA_KEY", "Calibration", "Posterior", "Sample", "build_posterior",
           "fit", "reliability", "rms_radius"]
