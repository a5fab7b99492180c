"""Every option is checked when the command line is parsed: a bad value is a usage error (exit 2), before any work."""
from __future__ import annotations

import os

import pytest

from saig_cli.main import build_parser

BAD_VALUES = [
    (["tile", "o.tif", "--chip-size-m", "inf", "--stride-m", "32", "--out", "c.gpkg"], "--chip-size-m",
     "finite number"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "0", "--out", "c.gpkg"], "--stride-m", "positive"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--aerial-size", "0x0", "--out", "c.gpkg"],
     "--aerial-size", "between 16 and 4096"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--aerial-size", "100000x100000",
      "--out", "c.gpkg"], "--aerial-size", "between 16 and 4096"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--grid-crs", "EPSG:999999", "--out", "c.gpkg"],
     "--grid-crs", "unknown CRS"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--grid-crs", "EPSG:4326", "--out", "c.gpkg"],
     "--grid-crs", "not a projected CRS in metres"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--min-valid", "1.5", "--out", "c.gpkg"],
     "--min-valid", "between 0 and 1"),
    (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--grid", "xyz", "--zoom", "40", "--out", "c.gpkg"],
     "--zoom", "between 0 and 24"),
    (["index", "build", "o.tif", "--checkpoint", "m.pt", "--chip-size-m", "64", "--stride-m", "32", "--out", "i",
      "--batch-size", "0"], "--batch-size", "at least 1"),
    (["index", "build", "o.tif", "--checkpoint", "m.pt", "--chip-size-m", "nan", "--stride-m", "32", "--out", "i"],
     "--chip-size-m", "finite number"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--fov-deg", "nan"], "--fov-deg", "finite number"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--fov-deg", "0"], "--fov-deg", "more than 0"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--fov-deg", "-30"], "--fov-deg", "more than 0"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--fov-deg", "400"], "--fov-deg", "at most 360"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "-k", "0"], "-k", "at least 1"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--prior-radius-m", "-5"], "--prior-radius-m",
     "positive"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--panorama", "--photo"], "--photo", "not allowed"),
    (["locate", "p.jpg", "--index", "i", "--out", "r.gpkg", "--device", "gpu7"], "--device", "expected auto"),
    (["synth", "--seed", "1", "--out", "w", "--resolution-m", "0"], "--resolution-m", "positive"),
    (["synth", "--seed", "1,-2", "--out", "w", "--pairs", "3"], "--seed", "not be negative"),
    (["demo", "--stride-m", "inf"], "--stride-m", "finite number"),
    (["train", "--config", "c.yaml", "--out", "r", "--stop-after-epoch", "0"], "--stop-after-epoch", "at least 1"),
    (["info", "m.pt", "--ground-size", "128x"], "--ground-size", "expected HxW"),
]


@pytest.mark.parametrize("argv, option, message", BAD_VALUES, ids=[" ".join(a[:2]) + " " + o for a, o, _ in BAD_VALUES])
def test_bad_values_are_usage_errors_naming_the_option(argv, option, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}" in err and message in err, err
    assert "Traceback" not in err and os.listdir(tmp_path) == []  # nothing done, nothing written


def test_output_locations_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for argv in (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--out", str(a_file / "c.gpkg")],
                 ["locate", "p.jpg", "--index", "i", "--out", str(tmp_path)],
                 ["index", "build", "o.tif", "--checkpoint", "m.pt", "--chip-size-m", "64", "--stride-m", "32",
                  "--out", str(a_file / "deeper" / "idx")]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2 and "argument --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["locate", "p.jpg", "--index", "i", "--out", str(tmp_path / "r.gpkg"),
                                   "--heatmap-dir", str(a_file)])
    assert exit_.value.code == 2 and "argument --heatmap-dir" in capsys.readouterr().err


def test_missing_parent_folders_of_outputs_are_accepted_and_made_the_same_way_everywhere(tmp_path):
    from saig_core.runtime.args import make_parents

    for argv in (["tile", "o.tif", "--chip-size-m", "64", "--stride-m", "32", "--out", str(tmp_path / "a/b/c.gpkg")],
                 ["locate", "p.jpg", "--index", "i", "--out", str(tmp_path / "d/e/r.gpkg"),
                  "--heatmap-dir", str(tmp_path / "d/heat")],
                 ["index", "build", "o.tif", "--checkpoint", "m.pt", "--chip-size-m", "64", "--stride-m", "32",
                  "--out", str(tmp_path / "f/idx")]):
        args = build_parser().parse_args(argv)
        make_parents(args.out)
        assert os.path.isdir(os.path.dirname(args.out))
    assert sorted(os.listdir(tmp_path)) == ["a", "d", "f"] and not os.path.exists(tmp_path / "d" / "heat")
