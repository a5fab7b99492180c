"""Confidence calibration on validation worlds; ONE JSON object on stdout (benchmarks/results/calibration.json).

Fits the checkpoint's confidence calibration (``synthetic_world.calibrate``: temperature, a logistic map
per query kind, the uncertainty factor) on validation worlds 8101-8103 (used by no training run, not the
demo's 2026, not accuracy.py's held-out 9001-9003) and reports the calibration curve on them -- per bin of
predicted confidence, the share of photos whose reported top-1 position is within 25 m of the truth --
with the uncalibrated curve beside it, and how often the uncertainty radius holds the truth. The held-out
curve (the honest one) is measured by ``benchmarks/accuracy.py`` on its own worlds.

    python benchmarks/calibration.py --checkpoint models/demo.pt --write-checkpoint
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import record  # noqa: E402 - after the path insert, as the other benchmarks do


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="models/demo.pt")
    ap.add_argument("--size-m", type=float, default=1200.0)
    ap.add_argument("--panoramas", type=int, default=40, help="per world")
    ap.add_argument("--photos", type=int, default=40, help="90-degree photos per world (located with and without "
                                                           "their heading)")
    ap.add_argument("--write-checkpoint", action="store_true",
                    help="store the fitted calibration in the checkpoint's metadata (weights untouched)")
    record.add_results_arg(ap)
    args = ap.parse_args()
    from synthetic_world.calibrate import calibrate
    from tiling.confidence import METADATA_KEY

    run = record.Run("calibration", f"Confidence calibration on validation worlds ({args.checkpoint})",
                     "python " + " ".join(sys.argv), "full")
    checkpoint = str(Path(args.checkpoint).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        cal, figures = calibrate(checkpoint, Path(tmp), args.size_m, args.panoramas, args.photos,
                                 log=lambda m: print(m, file=sys.stderr))
    if args.write_checkpoint:
        from saig_core.weights.checkpoint import update_metadata

        update_metadata(checkpoint, **{METADATA_KEY: cal.to_metadata()})
        run.note(f"The calibration was stored in {args.checkpoint} (metadata key {METADATA_KEY}).")
    curve = figures["curve"]["all"]
    run.goal("expected calibration error on the validation worlds", curve["ece"], "<=", 0.05)
    run.goal("uncertainty radius holds the truth (refined top-1 hits)",
             figures["uncertainty_coverage"].get("held", float("nan")), ">=", 0.85)
    run.note("Confidence = probability that the true position is within 25 m of the candidate's reported (refined) "
             "position. These curves are measured on the worlds the calibration was fitted on; accuracy.py reports "
             "the curve on held-out worlds.")
    run.write(figures, args.results_dir)


if __name__ == "__main__":
    main()
