"""Calibrating a checkpoint's confidence on validation worlds (``benchmarks/calibration.py``).

Validation worlds are synthetic worlds of their own seeds (:data:`VALIDATION_WORLDS`: used by no
training run, not the demo's 2026 and not the held-out worlds of ``benchmarks/accuracy.py``), in three
UTM zones. Each is indexed as ``saig demo`` does (64 m chips every 16 m) and its photos are located in
this process exactly as ``saig locate`` would (:func:`tiling.locate.assess_photos`): panoramas and
90-degree photos with their headings, and the photos again without (``photo_no_heading``). Each photo
is a :class:`tiling.confidence.Sample`: its posterior, its reported top-1 position and the truth; the
calibration is then fitted on all of them (:func:`tiling.confidence.fit`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tiling.confidence import Calibration, Sample, fit, reliability

#: Validation worlds: seed -> (lon, lat) of the centre (UTM 32N, 23S, 50S).
VALIDATION_WORLDS = {8101: (9.0, 50.0), 8102: (-47.9, -15.8), 8103: (116.4, -31.9)}


def world_samples(world: Path, checkpoint: str, work: Path, log: Callable[[str], None]) -> list[Sample]:
    """Index one world with ``checkpoint`` and locate its photos (with and without headings): one sample each."""
    import json

    from pyproj import Transformer

    from saig_core.runtime.progress import Reporter
    from synthetic_world import io
    from synthetic_world.demo import run_saig
    from tiling.locate import LocateOptions, assess_photos

    index = work / "index"
    run_saig(["index", "build", str(world / "orthophoto.tif"), "--checkpoint", checkpoint, "--chip-size-m", "64",
              "--stride-m", "16", "--out", str(index), "--json"], log=lambda *_: None)
    crs = json.loads((index / "metadata.json").read_text())["crs"]
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    truth = {(world / t.file).resolve(): t for t in io.read_truth(world / "truth.csv")}
    reporter = Reporter("none")
    samples: list[Sample] = []
    photos = [p for p, t in truth.items() if t.kind == "photo"]
    for paths, ignore in ((list(truth), False), (photos, True)):
        opts = LocateOptions(index=str(index), checkpoint=checkpoint, ignore_heading=ignore)
        for path, kind, assessed in assess_photos(paths, opts, reporter):
            t = truth[path.resolve()]
            top = assessed.positions[0]
            samples.append(Sample(kind, assessed.posterior, (float(top[0]), float(top[1])),
                                  to_grid.transform(t.lon, t.lat), assessed.refinement_of(0)))
    log(f"{world.name}: {len(samples)} located photos")
    return samples


def curves(cal: Calibration, samples: list[Sample]) -> dict:
    """The calibration curve of ``samples`` under ``cal``, over all photos and per kind."""
    out = {}
    for kind in ("all", "panorama", "photo", "photo_no_heading"):
        mine = [s for s in samples if kind in ("all", s.kind)]
        if mine:
            conf = [cal.probability(s.posterior.mass_within(*s.top, cal.temperature), s.kind) for s in mine]
            out[kind] = reliability(np.asarray(conf), np.asarray([s.hit for s in mine]))
    return out


def uncertainty_coverage(cal: Calibration, samples: list[Sample]) -> dict:
    """How often the uncertainty radius holds the truth, over photos whose refined top-1 is a hit."""
    from tiling.confidence import rms_radius

    rows = [(float(np.hypot(s.top[0] - s.truth[0], s.top[1] - s.truth[1])),
             cal.uncertainty_factor * rms_radius(s.refinement, cal.temperature))
            for s in samples if s.hit and s.refinement is not None]
    if not rows:
        return {"photos": 0}
    err, radius = np.asarray(rows).T
    return {"photos": len(rows), "held": round(float(np.mean(err <= radius)), 4),
            "median_radius_m": round(float(np.median(radius)), 2), "median_error_m": round(float(np.median(err)), 2)}


def calibrate(checkpoint: str, work: Path, size_m: float, panoramas: int, photos: int,
              log: Callable[[str], None] = print) -> tuple[Calibration, dict]:
    """Fit ``checkpoint``'s calibration on the validation worlds; returns it and its figures (curves, coverage)."""
    from synthetic_world.demo import run_saig

    samples: list[Sample] = []
    for seed, (lon, lat) in VALIDATION_WORLDS.items():
        world = work / f"world_{seed}"
        run_saig(["synth", "--seed", str(seed), f"--origin={lon},{lat}", "--size-m", str(size_m), "--photos",
                  str(panoramas), "--fov-photos", str(photos), "--out", str(world)], log=lambda *_: None)
        (work / f"run_{seed}").mkdir()
        samples += world_samples(world, checkpoint, work / f"run_{seed}", log)
    source = {"worlds": sorted(VALIDATION_WORLDS), "size_m": size_m, "panoramas_per_world": panoramas,
              "photos_per_world": photos}
    cal = fit(samples, source)
    return cal, {"calibration": cal.to_metadata(), "curve": curves(cal, samples),
                 "uncertainty_coverage": uncertainty_coverage(cal, samples),
                 "uncalibrated_curve": curves(Calibration(), samples)["all"]}


__all__ = ["VALIDATION_WORLDS", "calibrate", "curves", "uncertainty_coverage", "world_samples"]
