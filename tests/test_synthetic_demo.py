"""`saig demo`: the product end to end on a small world, and how the demo scores a photo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_world.demo import score_photos as _score
from synthetic_world.demo import summarize as _summary
from synthetic_world.io import TruthRow

REPO = Path(__file__).resolve().parents[1]


def _candidates(points_lonlat):
    return {"candidates": [{"rank": i + 1, "lon": lon, "lat": lat} for i, (lon, lat) in enumerate(points_lonlat)]}


def test_a_hit_is_a_candidate_within_the_radius_whatever_its_chip():
    from pyproj import Transformer

    to_geo = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    x, y = 650000.0, 5320000.0
    truth = {"a.jpg": TruthRow("photos/a.jpg", *to_geo.transform(x, y), x, y, 180.0, "panorama")}
    far, near = to_geo.transform(x + 300, y), to_geo.transform(x + 10, y - 20)     # 300 m, 22.4 m away
    rows = _score(truth, {"a.jpg": _candidates([far, far, near])}, "EPSG:32632", radius=25.0, k_percent=2)
    assert rows[0]["first_hit_rank"] == 3 and rows[0]["top1_error_m"] == pytest.approx(300, abs=0.01)
    assert not rows[0]["hit@1"] and rows[0]["hit@5"] and not rows[0]["hit@1%"]
    summary = _summary(rows, chance=0.01)
    assert summary["R@1"] == 0 and summary["R@5"] == 1 and summary["median_error_m"] == pytest.approx(300, abs=0.1)


def test_demo_without_its_checkpoint_says_how_to_make_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "saig_core", "demo", "--out", str(tmp_path / "d"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 1 and "make demo-model" in proc.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_product_and_reports_what_it_measured(tmp_path):
    from saig_core import build_model, save_checkpoint
    from saig_core.data.transforms import AugmentConfig

    model = build_model("saig_micro", pool="gap", ground_size=(32, 128), aerial_size=(64, 64))
    ckpt = save_checkpoint(model, tmp_path / "micro.pt", ground_input=AugmentConfig(
        fov_deg=(90.0,), fov_placement="canvas", fov_heading_known=True).ground_input())
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")  # not the demo's: never deleted
    proc = subprocess.run([sys.executable, "-m", "saig_core", "demo", "--out", str(out), "--checkpoint", str(ckpt),
                           "--size-m", "400", "--photos", "3", "--fov-photos", "2", "--stride-m", "32",
                           "--group-photos", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R@1%" in proc.stdout and "panorama" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["panorama"]["count"] == 3 and report["metrics"]["photo_90deg"]["count"] == 2
    assert report["metrics"]["photo_90deg_no_heading"]["count"] == 2  # the same photos, headings ignored
    assert report["metrics"]["group_panorama"]["count"] == 1 and report["metrics"]["group_photo"]["count"] == 1
    assert report["chips"] > 0 and report["k_for_r1_percent"] == report["chips"] // 100 + 1
    for m in report["metrics"].values():
        assert 0 <= m["R@1"] <= m["R@5"] <= 1 and m["median_error_m"] >= 0
    assert all(report["timings_s"][k] > 0 for k in ("synth_s", "index_build_s", "locate_s"))
    assert (out / "candidates.gpkg").is_file() and len(list((out / "heatmaps").glob("*.tif"))) == 5
    assert report["outputs"]["overviews"] and all((out / p).is_file() for p in report["outputs"]["overviews"])
    assert (out / "keep.txt").read_text() == "the user's"


def test_demo_refuses_a_folder_holding_files_it_did_not_write(tmp_path):
    from saig_core import build_model, save_checkpoint

    ckpt = save_checkpoint(build_model("saig_micro", ground_size=(32, 128), aerial_size=(64, 64)), tmp_path / "m.pt")
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "report.json").write_text('{"mine": true}')
    proc = subprocess.run([sys.executable, "-m", "saig_core", "demo", "--out", str(out), "--checkpoint", str(ckpt)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "report.json" in proc.stderr and "did not write" in proc.stderr
    assert (out / "report.json").read_text() == '{"mine": true}' and sorted(p.name for p in out.iterdir()) == [
        "report.json"]


def test_a_later_run_deletes_only_what_the_marker_lists_inside_the_folder(tmp_path):
    from synthetic_world import ownership

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("keep")
    ownership.claim(out, "saig demo", ["world", "report.json", "heatmaps"], "what saig demo wrote")
    (out / "world").mkdir()
    (out / "world" / "x.tif").write_text("old")
    (out / "report.json").write_text("old")
    (out / "heatmaps").symlink_to(elsewhere)  # a link is removed as a link, never followed
    (out / "notes.txt").write_text("the user's")
    marker = json.loads((out / ".saig-demo.json").read_text())
    marker["entries"] += ["../elsewhere/data.txt", str(elsewhere / "data.txt"), "notes/../../elsewhere"]
    (out / ".saig-demo.json").write_text(json.dumps(marker))
    ownership.claim(out, "saig demo", ["world", "report.json", "heatmaps"], "what saig demo wrote")
    assert sorted(p.name for p in out.iterdir()) == [".saig-demo.json", "notes.txt"]
    assert (elsewhere / "data.txt").read_text() == "keep"
