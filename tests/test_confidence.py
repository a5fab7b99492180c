"""Confidence: the posterior over scored places, its calibration, the uncertainty radius, the calibration curve."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tiling.confidence import (
    GAUSS_90,
    Calibration,
    Posterior,
    Sample,
    build_posterior,
    fit,
    reliability,
    rms_radius,
)
from tiling.refine import Refinement


def two_places(gap: float, t: float = 0.02) -> Posterior:
    """Chips every 16 m: one near (0, 0) scoring 0.8, one near (1000, 0) scoring 0.8 - gap, the rest 0.5."""
    xy = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 500.0], [500.0, 500.0]])
    return build_posterior(xy, np.array([0.8, 0.8 - gap, 0.5, 0.5]), 16.0, [], 1.0)


def test_equal_places_share_the_mass_and_a_clear_winner_takes_it():
    assert two_places(0.0).mass_within(0, 0, 0.02) == pytest.approx(0.5, abs=1e-3)
    assert two_places(0.2).mass_within(0, 0, 0.02) > 0.99
    assert two_places(0.2).mass_within(0, 0, 1.0) < 0.4  # a hot temperature spreads it over every place


def test_fine_points_replace_the_chips_of_their_window_and_weigh_by_their_area():
    points = np.array([[x, y] for y in (-4.0, 0.0, 4.0) for x in (-4.0, 0.0, 4.0)])
    r = Refinement(0, 0.0, 0.0, 0.8, points, np.full(9, 0.8), 4.0)
    post = build_posterior(np.array([[0.0, 0.0], [1000.0, 0.0]]), np.array([0.8, 0.8]), 16.0, [r], 1.0)
    assert len(post.xy) == 9 + 1  # the chip at (0, 0) is inside the window: its fine points stand for it
    # 9 points of 4 m x 4 m = 144 m2 against one chip of 16 m x 16 m = 256 m2 at the same score
    assert post.mass_within(0, 0, 0.02) == pytest.approx(144 / (144 + 256))


def test_the_uncertainty_radius_grows_with_a_flat_score_surface():
    points = np.array([[x, y] for y in np.arange(-16, 17, 4.0) for x in np.arange(-16, 17, 4.0)])
    d = np.hypot(points[:, 0], points[:, 1])
    sharp = Refinement(0, 0.0, 0.0, 1.0, points, 1.0 - 0.01 * d, 4.0)
    flat = Refinement(0, 0.0, 0.0, 1.0, points, 1.0 - 0.0001 * d, 4.0)
    assert rms_radius(sharp, 0.02) < 5.0 < 10.0 < rms_radius(flat, 0.02)
    assert rms_radius(sharp, 0.02) >= 4.0 / math.sqrt(6)  # never below the grid's own rounding


def simulated(n: int, seed: int) -> list[Sample]:
    """Photos whose top-1 is a hit with probability raw**2 (raw = the posterior mass at the top-1): an
    over-confident model that calibration must correct."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gap = rng.uniform(0.0, 0.15)
        post = two_places(gap)
        raw = post.mass_within(0, 0, 0.02)
        hit = rng.random() < raw ** 2
        out.append(Sample("panorama", post, (0.0, 0.0), (3.0, 4.0) if hit else (600.0, 0.0)))
    return out


def test_calibration_turns_an_over_confident_mass_into_the_hit_rate():
    cal = fit(simulated(600, 1), {"worlds": [1]})
    test = simulated(600, 2)
    hits = np.array([s.hit for s in test])
    raw = np.array([s.posterior.mass_within(*s.top, cal.temperature) for s in test])
    calibrated = np.array([cal.probability(r, "panorama") for r in raw])
    uncalibrated = np.array([Calibration().probability(s.posterior.mass_within(*s.top, 0.02), "panorama")
                             for s in test])
    assert reliability(calibrated, hits)["ece"] < 0.05 < reliability(uncalibrated, hits)["ece"]
    assert cal.fitted and cal.fitted_on["photos"] == 600 and "panorama" in cal.platt


def test_a_calibration_survives_the_checkpoint_metadata_round_trip():
    cal = Calibration(0.013, {"all": (1.5, -0.2), "photo": (0.7, 0.1)}, 1.9, 25.0, {"worlds": [8101]})
    back = Calibration.from_metadata({"confidence_calibration": cal.to_metadata()})
    assert back == cal
    assert not Calibration.from_metadata({}).fitted and Calibration().uncertainty_factor == GAUSS_90
    assert back.probability(0.5, "panorama") == pytest.approx(1 / (1 + math.exp(0.2)))  # falls back to "all"


def test_too_few_validation_photos_are_refused():
    with pytest.raises(ValueError, match="at least 10"):
        fit(simulated(5, 3))


def test_the_calibration_curve_bins_predictions_and_reports_the_error():
    curve = reliability(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 0]))
    assert [b["photos"] for b in curve["bins"]] == [2, 2]
    assert curve["bins"][1]["hit_rate"] == 0.5 and curve["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.45)
