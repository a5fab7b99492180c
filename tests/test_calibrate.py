"""Calibration on a validation world, end to end: samples from real locate runs, a fit, and the checkpoint record."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from saig_core.weights.checkpoint import load_checkpoint, model_fingerprint, read_checkpoint, update_metadata
from synthetic_world.calibrate import VALIDATION_WORLDS, curves, world_samples
from synthetic_world.demo import run_saig
from tiling.confidence import METADATA_KEY, Calibration, fit

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.pt"


def test_validation_worlds_are_none_of_the_training_held_out_or_demo_seeds():
    assert not set(VALIDATION_WORLDS) & {*range(101, 118), 2026, 9001, 9002, 9003}
    assert any(lat < 0 for _, lat in VALIDATION_WORLDS.values())  # the southern hemisphere too


def test_a_small_world_gives_one_sample_per_located_photo_and_a_calibration_the_checkpoint_keeps(tmp_path):
    world = tmp_path / "world"
    run_saig(["synth", "--seed", "8199", "--size-m", "400", "--photos", "6", "--fov-photos", "6", "--out",
              str(world)], log=lambda *_: None)
    (tmp_path / "run").mkdir()
    samples = world_samples(world, str(DEMO), tmp_path / "run", log=lambda *_: None)
    # 6 panoramas and 6 photos with their headings, and the 6 photos again without
    assert sorted(s.kind for s in samples) == ["panorama"] * 6 + ["photo"] * 6 + ["photo_no_heading"] * 6
    assert all(s.refinement is not None for s in samples)  # the index's orthophoto is there: every top-1 refined
    assert all(abs(s.truth[0] - s.top[0]) < 500 for s in samples)  # one 400 m world, one CRS
    # refinement on a synthetic world: where the top-1 is the right place, the refined position is closer to the
    # truth than the chip centre it started from (the centre of its fine grid)
    hits = [s for s in samples if s.hit and s.refinement is not None]
    centre = [float(np.hypot(*(s.refinement.points.mean(axis=0) - s.truth))) for s in hits]
    refined = [float(np.hypot(s.top[0] - s.truth[0], s.top[1] - s.truth[1])) for s in hits]
    assert len(hits) >= 4 and np.median(refined) < np.median(centre)
    cal = fit(samples, {"worlds": [8199]})
    curve = curves(cal, samples)["all"]
    assert sum(b["photos"] for b in curve["bins"]) == 18 and 0.0 <= curve["ece"] <= 1.0
    ckpt = shutil.copy(DEMO, tmp_path / "calibrated.pt")
    before = model_fingerprint(load_checkpoint(ckpt))
    update_metadata(ckpt, **{METADATA_KEY: cal.to_metadata()})
    assert Calibration.from_metadata(read_checkpoint(ckpt)["metadata"]) == cal
    assert model_fingerprint(load_checkpoint(ckpt)) == before  # an index built with the model stays valid


def test_fitting_needs_enough_photos():
    with pytest.raises(ValueError, match="at least 10"):
        fit([])
