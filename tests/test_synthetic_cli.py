"""`saig synth` as a user runs it: geotagged photos whose EXIF equals truth.csv, pairs the trainer reads."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import ExifTags, Image
from pyproj import Transformer

from synthetic_world import io
from tiling.photos import read_photo

SAIG = [sys.executable, "-m", "saig_core"]


def run_saig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SAIG, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    proc = run_saig("--progress", "json", "synth", "--seed", "11", "--size-m", "300", "--origin=-70.5,-33.4",
                    "--photos", "3", "--fov-photos", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and result["photos"] == 6
    assert result["crs"] == "EPSG:32719"                      # UTM 19 south: W and S refs get exercised
    return out


def _degrees(dms, ref: str) -> float:
    d, m, s = (float(v) for v in dms)
    value = d + m / 60 + s / 3600
    return -value if ref in ("S", "W") else value


def test_each_photos_exif_position_and_heading_equal_its_truth_row(world_dir):
    rows = io.read_truth(world_dir / "truth.csv")
    assert [r.kind for r in rows] == ["panorama"] * 3 + ["photo"] * 3
    for row in rows:
        with Image.open(world_dir / row.file) as im:
            exif = im.getexif()
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            size = im.size
        assert gps[ExifTags.GPS.GPSLatitudeRef] == "S" and gps[ExifTags.GPS.GPSLongitudeRef] == "W"
        lat = _degrees(gps[ExifTags.GPS.GPSLatitude], gps[ExifTags.GPS.GPSLatitudeRef])
        lon = _degrees(gps[ExifTags.GPS.GPSLongitude], gps[ExifTags.GPS.GPSLongitudeRef])
        assert lat == pytest.approx(row.lat, abs=1e-7) and lon == pytest.approx(row.lon, abs=1e-7), row.file
        assert gps[ExifTags.GPS.GPSImgDirectionRef] == "T"
        assert float(gps[ExifTags.GPS.GPSImgDirection]) == pytest.approx(row.heading, abs=0.006)
        focal = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.FocalLengthIn35mmFilm)
        if row.kind == "panorama":
            assert size == (512, 128) and row.heading == 180.0 and focal is None
        else:
            # 90 degrees: 16:9 is 37.7 mm of the 43.27 mm 35 mm-frame diagonal (CIPA), so 19 mm
            assert size == (512, 288) and focal == 19
            assert read_photo(world_dir / row.file).view.fov_deg == pytest.approx(90.0, abs=1.0)


def test_overwriting_a_world_leaves_no_photo_of_the_earlier_run(tmp_path):
    out = tmp_path / "w"
    assert run_saig("synth", "--seed", "3", "--size-m", "200", "--photos", "3", "--out", str(out)).returncode == 0
    again = run_saig("synth", "--seed", "3", "--size-m", "200", "--photos", "1", "--out", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert run_saig("synth", "--seed", "3", "--size-m", "200", "--photos", "1", "--out", str(out),
                    "--overwrite").returncode == 0
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["pano_0000.jpg"]
    assert [r.file for r in io.read_truth(out / "truth.csv")] == ["photos/pano_0000.jpg"]


def test_overwrite_deletes_only_what_synth_wrote_inside_the_folder(tmp_path):
    out = tmp_path / "w"
    assert run_saig("synth", "--seed", "3", "--size-m", "200", "--photos", "2", "--out", str(out)).returncode == 0
    outside = tmp_path / "precious.txt"
    outside.write_text("the user's")
    mine = out / "photos" / "my_notes.jpg"
    mine.write_text("the user's too")
    for marker in (True, False):  # with the marker, and as a world written before markers existed
        # a truth.csv edited (or written by an older version) to list files outside the folder
        rows = io.read_truth(out / "truth.csv")
        io.write_truth(out / "truth.csv", [*rows, io.TruthRow("../precious.txt", 0, 0, 0, 0, 0, "photo"),
                                           io.TruthRow(str(outside), 0, 0, 0, 0, 0, "photo")])
        if not marker:
            (out / ".saig-synth.json").unlink()
        proc = run_saig("synth", "--seed", "3", "--size-m", "200", "--photos", "1", "--out", str(out), "--overwrite")
        assert proc.returncode == 0, proc.stderr
        assert outside.read_text() == "the user's" and mine.read_text() == "the user's too"
        assert sorted(p.name for p in (out / "photos").iterdir()) == ["my_notes.jpg", "pano_0000.jpg"]


def test_truth_grid_coordinates_and_lonlat_agree(world_dir):
    meta = json.loads((world_dir / "world.json").read_text())
    to_geo = Transformer.from_crs(meta["crs"], "EPSG:4326", always_xy=True)
    w, s, e, n = meta["bounds"]
    for row in io.read_truth(world_dir / "truth.csv"):
        lon, lat = to_geo.transform(row.x, row.y)
        assert lon == pytest.approx(row.lon, abs=1e-7) and lat == pytest.approx(row.lat, abs=1e-7)
        assert w + 40 <= row.x <= e - 40 and s + 40 <= row.y <= n - 40


def test_pairs_are_written_in_the_layout_the_trainer_reads(tmp_path):
    from saig_core.data.datasets import load_pairs_csv

    proc = run_saig("synth", "--seed", "5,6", "--size-m", "200", "--pairs", "3", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    split = load_pairs_csv(tmp_path / "pairs.csv")
    assert len(split) == 6
    with Image.open(split.ground[0]) as g, Image.open(split.aerial[0]) as a:
        assert g.size == (512, 128) and a.size == (128, 128)     # 64 m chips at 0.5 m/px


def test_each_aerial_chip_is_the_orthophoto_around_its_camera_within_the_jitter(tmp_path):
    import csv

    import numpy as np

    from synthetic_world.render import orthophoto
    from synthetic_world.world import WorldConfig

    proc = run_saig("synth", "--seed", "5", "--size-m", "200", "--pairs", "4", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    world = io.make_world(WorldConfig(seed=5, size_m=200))
    ortho = orthophoto(world)
    to_grid = Transformer.from_crs("EPSG:4326", world.crs, always_xy=True)
    with open(tmp_path / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        chip = np.asarray(Image.open(tmp_path / row["aerial_path"]))
        col, row_ = world.to_pixel(*to_grid.transform(float(row["lon"]), float(row["lat"])))
        c0, r0 = int(round(col - 64)), int(round(row_ - 64))
        # The chip is the 128 px (64 m) crop found exactly once within 6 m (12 px, +1 rounding) of the camera.
        offsets = [(dr, dc) for dr in range(-13, 14) for dc in range(-13, 14)
                   if np.array_equal(ortho[r0 + dr:r0 + dr + 128, c0 + dc:c0 + dc + 128], chip)]
        assert len(offsets) == 1, row


@pytest.mark.parametrize("args, code, message", [
    (["--seed", "1,2", "--size-m", "200"], 1, "one --seed"),
    (["--seed", "1", "--size-m", "200", "--photos", "-1"], 2, "argument --photos: must not be negative"),
    (["--seed", "1", "--size-m", "inf"], 2, "argument --size-m: expected a finite number"),
    (["--seed", "1", "--size-m", "200", "--origin=200,10"], 2, "argument --origin: longitude must be within"),
    (["--seed", "1", "--size-m", "50"], 1, "size_m"),
    (["--seed", "1", "--size-m", "200", "--crs", "EPSG:4326"], 1, "projected"),
])
def test_bad_arguments_fail_with_a_clear_message_and_write_nothing(tmp_path, args, code, message):
    out = tmp_path / "w"
    proc = run_saig("synth", *args, "--out", str(out))
    assert proc.returncode == code and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
