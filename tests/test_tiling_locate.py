"""`saig locate`: candidates, GeoPackage layers, priors, heatmaps, refusals (photo reading: test_photos.py)."""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Geod, Transformer
from tiling_fixtures import json_lines, micro_checkpoint, ortho, photo, run, texture, write_raster

from tiling import search
from tiling.heatmap import NODATA


def gps_exif(lat: float, lon: float, heading=None, ref="T") -> Image.Exif:
    def dms(v):
        d = int(v)
        m = int((v - d) * 60)
        return (float(d), float(m), round((v - d - m / 60) * 3600, 4))

    ex = Image.Exif()
    gps = {1: "N" if lat >= 0 else "S", 2: dms(abs(lat)), 3: "E" if lon >= 0 else "W", 4: dms(abs(lon))}
    if heading is not None:
        gps.update({16: ref, 17: float(heading)})
    ex[0x8825] = gps
    return ex


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """An index over a raster with a nodata hole (cells without chips), and photos."""
    tmp = tmp_path_factory.mktemp("locate")
    ckpt = micro_checkpoint(tmp / "micro.pt")
    data = texture(200, 200, seed=5)
    data[:, 60:140, 60:140] = 0  # a 40 m nodata square in the middle
    tif = write_raster(tmp / "ortho.tif", data, nodata=0)
    out = tmp / "idx"
    run("index", "build", tif, "--checkpoint", ckpt, "--chip-size-m", 20, "--stride-m", 10, "--out", out)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(500_025.0, 5_000_075.0)
    photos = tmp / "photos"
    photos.mkdir()
    photo(photos / "a_gps.jpg", exif=gps_exif(lat, lon, 40.0, "M"))
    photo(photos / "b_plain.png", seed=2)
    photo(photos / "c_pano.jpg", size=(512, 128), seed=3)
    return tmp, ckpt, out, photos, (lon, lat)


def test_locate_json_lines_and_geopackage_layers(indexed):
    tmp, _, index, photos, (lon, lat) = indexed
    bad = photos.parent / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp / "results.gpkg"
    proc = run("locate", photos, bad, "--index", index, "-k", 5, "--out", out, "--json", check=False)
    events = json_lines(proc.stdout)
    assert proc.returncode == 1  # one photo failed, the others were located
    assert "encoding on CPU" in proc.stderr  # the device is always said
    results = [e for e in events if e["event"] == "result"]
    errors = [e for e in events if e["event"] == "error"]
    assert [e["file"] for e in errors] == [str(bad)] and str(bad) in errors[0]["message"]
    assert [r["photo"] for r in results] == [str(photos / n) for n in ("a_gps.jpg", "b_plain.png", "c_pano.jpg")]
    gps = results[0]
    assert gps["exif"]["heading_magnetic"] == 40.0 and gps["exif"]["heading_ref"] == "M"
    # no EXIF date: the declination is taken at the file time, and the heading is made true with it
    assert gps["exif"]["heading"] == pytest.approx(40.0 + gps["exif"]["declination_deg"])
    assert gps["exif"]["lat"] == pytest.approx(lat, abs=1e-6) and gps["heatmap"] is None
    assert results[1]["exif"] is None
    for r in results:
        ranks = [c["rank"] for c in r["candidates"]]
        scores = [c["score"] for c in r["candidates"]]
        assert ranks == [1, 2, 3, 4, 5] and scores == sorted(scores, reverse=True)
        assert set(r["candidates"][0]) == {"rank", "score", "chip_id", "lon", "lat", "x", "y", "grid_crs",
                                           "distance_m", "heading_deg", "heading_estimated", "confidence",
                                           "refined_lon", "refined_lat", "refined_x", "refined_y", "refined_score",
                                           "uncertainty_m"}
    geod = Geod(ellps="WGS84")
    for c in gps["candidates"]:
        assert c["distance_m"] == pytest.approx(geod.inv(lon, lat, c["lon"], c["lat"])[2], abs=1e-3)
    cands = gpd.read_file(out, layer="candidates")
    photo_layer = gpd.read_file(out, layer="photos")
    assert cands.crs.to_epsg() == 4326 and len(cands) == 15
    assert np.allclose(cands.geometry.x, cands["lon"]) and np.allclose(cands.geometry.y, cands["lat"])
    assert len(photo_layer) == 3 and photo_layer.geometry.notna().sum() == 1
    assert list(photo_layer["input"]) == ["fov", "fov", "panorama"]


def test_prior_radius_restricts_candidates_to_chips_near_the_exif_position(indexed):
    tmp, _, index, photos, _ = indexed
    proc = run("--progress", "json", "locate", photos / "a_gps.jpg", photos / "b_plain.png", "--index", index,
               "-k", 50, "--prior-radius-m", 16, "--out", tmp / "prior.gpkg", "--json")
    events = json_lines(proc.stdout)
    results = [e for e in events if e["event"] == "result"]
    near = results[0]["candidates"]
    assert 0 < len(near) < 50 and all(c["distance_m"] <= 16 for c in near)
    assert len(results[1]["candidates"]) == 50  # no EXIF position: searched everywhere, with a warning
    assert any(e["event"] == "log" and e["level"] == "warning" and "b_plain.png" in e["message"] for e in events)


def test_heatmap_values_sit_on_chip_centres_and_its_maximum_is_the_top_candidate(indexed):
    tmp, _, index, photos, _ = indexed
    heat_dir = tmp / "heat"
    proc = run("locate", photos / "b_plain.png", "--index", index, "-k", 3, "--out", tmp / "h.gpkg",
               "--heatmap-dir", heat_dir, "--json")
    result = json_lines(proc.stdout)[-1]
    import faiss

    from tiling.manifest import read_manifest

    chips = read_manifest(index / "chips.gpkg")
    with rasterio.open(result["heatmap"]) as src:
        heat = src.read(1)
        assert src.dtypes[0] == "float32" and src.nodata == NODATA and src.crs.to_epsg() == 32633
        transform = src.transform
    t = transform
    rows = np.floor((chips["y"].to_numpy() - t.f) / t.e).astype(int)  # the pixel containing each chip centre
    cols = np.floor((chips["x"].to_numpy() - t.c) / t.a).astype(int)
    centres = np.stack([t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e], axis=1)
    # every chip has its own pixel, centred exactly on the chip's footprint centre
    np.testing.assert_allclose(centres, chips[["x", "y"]].to_numpy(), atol=1e-6)
    assert len(set(zip(rows, cols, strict=True))) == len(chips)
    # ... holding the chip's score, and no chip means nodata (the hole in the raster)
    from tiling.locate import LoadedIndex, load_model_for_index
    from tiling.photos import read_photo

    loaded = LoadedIndex(index)
    encoder, ground = load_model_for_index(loaded, None, "cpu")
    q = encoder.encode("ground", ground.tensor(read_photo(photos / "b_plain.png", ground))[None]).numpy()
    np.testing.assert_allclose(heat[rows, cols], search.scores_for(faiss.read_index(str(index / "index.faiss")), q)[0],
                               atol=1e-5)
    assert (heat == NODATA).sum() == heat.size - len(chips) > 0
    # the maximum pixel is the top-1 candidate
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    top = result["candidates"][0]
    assert (transform.c + (c + 0.5) * transform.a, transform.f + (r + 0.5) * transform.e) == pytest.approx(
        (top["x"], top["y"]), abs=1e-6)
    assert heat[r, c] == pytest.approx(top["score"], abs=1e-5)


def test_a_checkpoint_with_another_fingerprint_is_refused(indexed):
    tmp, _, index, photos, _ = indexed
    other = micro_checkpoint(tmp / "other.pt", seed=1)
    out = tmp / "refused.gpkg"
    proc = run("locate", photos, "--index", index, "--checkpoint", other, "--out", out, check=False)
    assert proc.returncode == 1 and "does not match the index" in proc.stderr and str(other) in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_locate_refuses_an_index_with_a_corrupted_file(indexed, tmp_path):
    import shutil

    _, _, index, photos, _ = indexed
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    with open(copy / "index.faiss", "ab") as f:
        f.write(b"tampered")
    proc = run("locate", photos / "b_plain.png", "--index", copy, "--out", tmp_path / "r.gpkg", check=False)
    assert proc.returncode == 1 and str(copy / "index.faiss") in proc.stderr


def test_heatmap_on_an_xyz_grid_is_centred_on_the_tiles(tmp_path):
    from typing import NamedTuple

    import mercantile

    class Cell(NamedTuple):
        row: int
        col: int

    from tiling.chips import ChipParams, ChipPlanner, open_sources
    from tiling.heatmap import write_heatmap

    sources = open_sources([str(ortho(tmp_path / "o.tif", h=400, w=400))])
    planner = ChipPlanner(sources, ChipParams(20.0, 20.0, out_size=(32, 32), grid="xyz"))
    plans = list(planner.rows())
    sources[0].close()
    g = planner.grid
    grid = {"stride": g.stride, "chip_size": g.chip_size, "origin": list(g.origin)}
    rows = np.concatenate([np.full(p.cols.size, p.row) for p in plans])
    cols = np.concatenate([p.cols for p in plans])
    chips = [Cell(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    scores = np.linspace(0, 1, len(chips), dtype=np.float32)
    path = write_heatmap(tmp_path / "h.tif", rows, cols, scores, grid, "EPSG:3857")
    with rasterio.open(path) as src:
        heat, t = src.read(1), src.transform
    for chip, score in zip(chips, scores, strict=True):
        b = mercantile.xy_bounds(mercantile.Tile(chip.col, chip.row, g.zoom))
        cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
        r, c = int((cy - t.f) // t.e), int((cx - t.c) // t.a)  # the pixel holding the tile centre
        assert (t.c + (c + 0.5) * t.a, t.f + (r + 0.5) * t.e) == pytest.approx((cx, cy), abs=1e-6)
        assert heat[r, c] == pytest.approx(score)


# -- runs: every photo once, nothing lost ----------------------------------------------------------------------

def _layer(path, name):
    return gpd.read_file(path, layer=name)


def test_a_photo_over_the_pixel_limit_is_reported_and_the_others_located(indexed, tmp_path):
    import math

    from tiling.photos import MAX_PHOTO_PIXELS

    _, _, index, photos, _ = indexed
    side = int(math.sqrt(MAX_PHOTO_PIXELS)) + 100
    huge = tmp_path / "batch" / "huge.png"
    huge.parent.mkdir()
    Image.new("1", (side, side)).save(huge)
    good = [photo(tmp_path / "batch" / f"good_{i}.jpg", seed=i) for i in range(2)]
    out = tmp_path / "r.gpkg"
    proc = run("locate", huge.parent, "--index", index, "-k", 3, "--out", out, "--json", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    events = json_lines(proc.stdout)
    errors = [e for e in events if e["event"] == "error"]
    assert [e["file"] for e in errors] == [str(huge)] and "over the limit" in errors[0]["message"]
    assert sorted(e["photo"] for e in events if e["event"] == "result") == sorted(map(str, good))
    assert sorted(_layer(out, "photos")["photo"]) == sorted(map(str, good))


def test_duplicate_photo_names_in_two_folders_get_their_own_heatmaps(indexed, tmp_path):
    _, _, index, _, _ = indexed
    a = photo((tmp_path / "a").mkdir() or tmp_path / "a" / "IMG_0001.jpg", seed=3)
    b = photo((tmp_path / "b").mkdir() or tmp_path / "b" / "IMG_0001.jpg", seed=4)
    heat, out = tmp_path / "heat", tmp_path / "dup.gpkg"
    proc = run("locate", tmp_path / "a", tmp_path / "b", "--index", index, "-k", 2, "--out", out,
               "--heatmap-dir", heat, "--json")
    results = {r["photo"]: r for r in json_lines(proc.stdout) if r["event"] == "result"}
    assert set(results) == {str(a), str(b)}
    assert sorted(p.name for p in heat.iterdir()) == ["a__IMG_0001_heatmap.tif", "b__IMG_0001_heatmap.tif"]
    layer = _layer(out, "photos").set_index("photo")
    for p in (a, b):
        assert layer.loc[str(p), "heatmap"] == results[str(p)]["heatmap"]
        with rasterio.open(results[str(p)]["heatmap"]) as src:  # each its own photo's scores
            assert src.read(1).max() == pytest.approx(results[str(p)]["candidates"][0]["score"], abs=1e-5)


def test_nothing_located_writes_nothing_and_leaves_no_heatmap_folder(indexed, tmp_path):
    _, _, index, _, _ = indexed
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    out, heat = tmp_path / "sub" / "none.gpkg", tmp_path / "heat"
    proc = run("locate", bad, "--index", index, "--out", out, "--heatmap-dir", heat, check=False)
    assert proc.returncode == 1 and "nothing written" in proc.stderr and str(bad) in proc.stderr
    assert not out.exists() and not heat.exists() and list(out.parent.iterdir()) == []


def test_existing_outputs_and_unfinished_runs_are_never_replaced_silently(indexed, tmp_path):
    _, _, index, photos, _ = indexed
    out = tmp_path / "r.gpkg"
    out.write_text("the user's")
    proc = run("locate", photos / "b_plain.png", "--index", index, "--out", out, check=False)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr and out.read_text() == "the user's"
    proc = run("locate", photos / "b_plain.png", "--index", index, "--out", out, "--resume", check=False)
    assert proc.returncode == 1 and "nothing to resume" in proc.stderr
    partial = tmp_path / ".fresh.gpkg.partial"
    partial.mkdir()
    proc = run("locate", photos / "b_plain.png", "--index", index, "--out", tmp_path / "fresh.gpkg", check=False)
    assert proc.returncode == 1 and "--resume" in proc.stderr and partial.is_dir()


def _wait_for_lines(path, count, proc, timeout=120.0):
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"locate ended (exit {proc.returncode}) before it could be killed")
        time.sleep(0.005)
    raise AssertionError("locate committed nothing in time")


def test_a_sigkilled_locate_resumes_without_redoing_located_photos(indexed, tmp_path):
    import signal
    import subprocess

    from tiling_fixtures import SAIG

    _, _, index, _, _ = indexed
    folder = tmp_path / "field"
    names = []
    for i in range(24):  # real, biggish photos (PNG, 1600x1200) in two folders: a run of some seconds
        sub = folder / ("morning" if i % 2 else "evening")
        sub.mkdir(parents=True, exist_ok=True)
        data = np.moveaxis(texture(1200, 1600, seed=i), 0, 2)
        Image.fromarray(np.ascontiguousarray(data)).save(sub / f"IMG_{i // 2:04d}.png", compress_level=1)
        names.append(str(sub / f"IMG_{i // 2:04d}.png"))
    out, heat = tmp_path / "results.gpkg", tmp_path / "heat"
    args = [str(SAIG), "locate", str(folder), "--index", str(index), "-k", "4", "--out", str(out),
            "--heatmap-dir", str(heat), "--json"]
    journal = tmp_path / ".results.gpkg.partial" / "journal.jsonl"
    committed = 0
    for extra in ([], ["--resume"]):  # killed twice, at different points, then finished
        proc = subprocess.Popen(args + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_lines(journal, committed + 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL and not out.exists()
        committed = journal.read_bytes().count(b"\n")
        assert committed < len(names)
    final = run(*args[1:], "--resume")
    events = json_lines(final.stdout)
    new = [e["photo"] for e in events if e["event"] == "result" and not e.get("resumed")]
    old = [e["photo"] for e in events if e["event"] == "result" and e.get("resumed")]
    assert len(old) >= committed and len(old) + len(new) == len(names) and not set(old) & set(new)
    photos_layer, cands = _layer(out, "photos"), _layer(out, "candidates")
    assert sorted(photos_layer["photo"]) == sorted(names)  # every photo exactly once
    assert len(cands) == 4 * len(names) and sorted(set(cands["photo"])) == sorted(names)
    assert sorted(p.name for p in heat.iterdir()) == sorted(
        f"{Path(n).parent.name}__{Path(n).stem}_heatmap.tif" for n in names)  # no temporary file left
    assert not (tmp_path / ".results.gpkg.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field", "heat", "results.gpkg"]
