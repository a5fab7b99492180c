"""The rasters of a run as one surface: tiles, folders, globs, VRTs, failing and foreign rasters, bounded plans."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA
from rasterio.transform import from_origin
from rasterio.windows import Window
from tiling_fixtures import ORIGIN, json_lines, micro_checkpoint, ortho, run, texture, write_raster

from saig_core.runtime.progress import Reporter
from tiling.chips import PARALLEL_MIN, ChipParams, ChipPlanner, ChipReader, iter_chips, open_sources
from tiling.grid import choose_grid
from tiling.manifest import read_manifest
from tiling.vrt import write_mosaic_vrt

ORTHOS = SHARED_DATA / "orthophotos"


def cut(paths, chip=20.0, stride=10.0, out=(64, 64), workers=1, **kw):
    """{(row, col): (chip, pixels)} of the valid chips of a run, through the library."""
    sources = open_sources([str(p) for p in paths])
    planner = ChipPlanner(sources, ChipParams(chip, stride, out_size=out, **kw))
    with ChipReader(planner) as reader:
        chips = {(c.row, c.col): (c, rgb) for c, rgb in iter_chips(planner, reader, workers=workers)}
    for s in sources:
        s.close()
    return planner, chips


def cut_into_tiles(path, folder, n=2, size=None):
    """The raster (or its top-left ``size`` pixels) cut into n x n GeoTIFF tiles, as delivered sheets."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    with rasterio.open(path) as src:
        h = w = size or min(src.height, src.width)
        profile = {k: v for k, v in src.profile.items() if k not in ("blockxsize", "blockysize", "photometric",
                                                                      "compress", "tiled", "interleave")}
        whole = folder / "whole.tif"
        with rasterio.open(whole, "w", **{**profile, "width": w, "height": h,
                                          "transform": src.window_transform(Window(0, 0, w, h))}) as dst:
            dst.write(src.read(window=Window(0, 0, w, h)))
        for i in range(n):
            for j in range(n):
                win = Window(j * w // n, i * h // n, (j + 1) * w // n - j * w // n, (i + 1) * h // n - i * h // n)
                tile = folder / "sheets" / f"row{i}" / f"tile_{i}_{j}.tif"
                tile.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(tile, "w", **{**profile, "width": win.width, "height": win.height,
                                                 "transform": src.window_transform(win)}) as dst:
                    dst.write(src.read(window=win))
                tiles.append(tile)
    return whole, tiles


@pytest.mark.parametrize("name,tolerance", [
    # mean absolute difference over all chips, 0..255 (measured: 0.02, 0.04, 0.23): only the seams differ
    ("gorinchem_0p25m_epsg28992.tif", 0.1),  # RGB JPEG, cut in its own CRS
    ("atlanta_pan_uint16_0p50m_epsg32616.tif", 0.2),  # 16-bit: one stretch for all tiles
    ("manila_oam_0p10m_epsg3395.tif", 0.5),  # World Mercator: warped to UTM through WarpedVRTs
])
def test_a_mosaic_of_tiles_gives_the_cells_and_pixels_of_the_raster_they_were_cut_from(tmp_path, name, tolerance):
    path = ORTHOS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    whole, tiles = cut_into_tiles(path, tmp_path, size=1000 if "manila" in name else None)
    res = 0.1 if "manila" in name else 1.0
    chip = 64 * res * (0.5 if "gorinchem" in name else 1.0) * 2
    _, one = cut([whole], chip=chip, stride=chip / 2)
    planner, mosaic = cut(tiles, chip=chip, stride=chip / 2)
    assert len(one) > 20 and mosaic.keys() == one.keys()  # the same cells: none lost at tile corners
    diffs = []
    for cell, (c, rgb) in one.items():
        m, mrgb = mosaic[cell]
        assert m.valid_fraction == pytest.approx(c.valid_fraction, abs=0.02)
        diffs.append(np.abs(rgb.astype(np.int16) - mrgb.astype(np.int16)).mean())
        if c.valid_fraction == 1.0:
            # no black seam: no chip line black in the mosaic's chip that is not in the whole raster's
            assert m.valid_fraction == 1.0
            lit, mlit = rgb.any(axis=-1), mrgb.any(axis=-1)
            assert not (~mlit.any(axis=0) & lit.any(axis=0)).any() and not (~mlit.any(axis=1) & lit.any(axis=1)).any()
    assert float(np.mean(diffs)) < tolerance, f"mean abs difference {np.mean(diffs):.2f}"
    if "uint16" in name:
        assert len(planner.stretch) == 1  # one stretch for the whole run, per band


def test_inputs_may_be_folders_searched_recursively_globs_and_a_vrt(tmp_path):
    tiles = []
    for i in range(2):
        for j in range(2):
            sub = tmp_path / "sheets" / f"r{i}"
            sub.mkdir(parents=True, exist_ok=True)
            tiles.append(ortho(sub / f"t{i}{j}.tif", h=100, w=100, seed=4 * i + j,
                               transform=from_origin(ORIGIN[0] + 50 * j, ORIGIN[1] - 50 * i, 0.5, 0.5)))
    (tmp_path / "sheets" / "readme.txt").write_text("not a raster")
    vrt = write_mosaic_vrt([(t, ORIGIN[0] + 50 * (k % 2), ORIGIN[1] - 50 * (k // 2)) for k, t in enumerate(tiles)],
                           tmp_path / "mosaic.vrt")
    results = {}
    for label, inputs in {"files": tiles, "folder": [tmp_path / "sheets"], "glob": [tmp_path / "sheets/**/t*.tif"],
                          "vrt": [vrt]}.items():
        out = tmp_path / f"{label}.gpkg"
        proc = run("--progress", "json", "tile", *inputs, "--chip-size-m", 20, "--stride-m", 10, "--out", out)
        assert not [e for e in json_lines(proc.stdout) if e["event"] == "error"], label
        results[label] = read_manifest(out)
    ids = list(results["files"]["chip_id"])
    assert len(ids) == 117  # the 100 m square of the four 50 m tiles: as one 200 px raster
    for label, chips in results.items():
        assert list(chips["chip_id"]) == ids, label
    missing = run("tile", tmp_path / "nothing/*.tif", "--chip-size-m", 20, "--stride-m", 10,
                  "--out", tmp_path / "none.gpkg", check=False)
    assert missing.returncode == 1 and "no file matches" in missing.stderr and "Traceback" not in missing.stderr


def test_a_raster_failing_mid_read_leaves_no_hole_where_another_has_data_also_after_resume(tmp_path, monkeypatch):
    from tiling import index as index_mod
    from tiling.index import BuildOptions, build_index

    ckpt = micro_checkpoint(tmp_path / "micro.pt")
    good = ortho(tmp_path / "good.tif", h=200, w=200, seed=2)
    full = ortho(tmp_path / "full.tif", h=400, w=400, seed=7)  # covers good's area, given first
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # header intact, the south half cut
    out = tmp_path / "idx"
    proc = run("--progress", "json", "index", "build", truncated, good, "--checkpoint", ckpt, "--chip-size-m", 20,
               "--stride-m", 10, "--out", out, check=False)
    errors = [e for e in json_lines(proc.stdout) if e["event"] == "error"]
    assert proc.returncode == 1 and [e["file"] for e in errors] == [str(truncated)]
    assert "truncated or corrupt" in errors[0]["message"]
    alone = set(read_manifest(run_tile(tmp_path, good))["chip_id"])
    chips = read_manifest(out / "chips.gpkg")
    assert alone <= set(chips["chip_id"])  # every cell the good raster fills is there
    assert {str(truncated), str(good)} == set(chips["source"])  # the readable part of the failing one counts
    assert json.loads((out / "metadata.json").read_text())["failed_sources"] == [str(truncated)]

    calls = {"n": 0}
    real = index_mod._write_shard

    def dies_on_the_third_shard(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(index_mod, "_write_shard", dies_on_the_third_shard)
    opts = BuildOptions(checkpoint=str(ckpt), device="cpu", shard_chips=40, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        build_index([str(truncated), str(good)], 20, 10, tmp_path / "resumed", opts, Reporter("none"))
    monkeypatch.undo()
    build_index([str(truncated), str(good)], 20, 10, tmp_path / "resumed", opts, Reporter("none"))
    resumed = read_manifest(tmp_path / "resumed" / "chips.gpkg")
    assert list(resumed["chip_id"]) == list(chips["chip_id"]) and list(resumed["source"]) == list(chips["source"])


def run_tile(tmp_path, *rasters):
    out = tmp_path / f"tile-{len(list(tmp_path.glob('tile-*')))}.gpkg"
    run("tile", *rasters, "--chip-size-m", 20, "--stride-m", 10, "--out", out, check=False)
    return out


def test_rasters_that_cannot_be_related_to_the_earth_or_reprojected_are_reported_and_skipped(tmp_path):
    good = ortho(tmp_path / "good.tif")
    mars = write_raster(tmp_path / "mars.tif", texture(64, 64), crs="IAU_2015:49900",
                        transform=from_origin(0.0, 0.001, 1e-5, 1e-5))
    geo = write_raster(tmp_path / "geo.tif", texture(400, 400), crs="EPSG:4326",
                       transform=from_origin(15.0, 45.1, 5e-6, 5e-6))
    broken = tmp_path / "broken_geo.tif"
    broken.write_bytes(geo.read_bytes()[: geo.stat().st_size // 3])  # warped reads fail past the cut
    out = tmp_path / "chips.gpkg"
    proc = run("--progress", "json", "tile", mars, good, broken, "--chip-size-m", 20, "--stride-m", 10,
               "--grid-crs", "EPSG:32633", "--out", out, check=False)
    errors = {e["file"]: e["message"] for e in json_lines(proc.stdout) if e["event"] == "error"}
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert set(errors) == {str(mars), str(broken)}
    assert "Mars" in errors[str(mars)] and "Earth" in errors[str(mars)]
    assert "cannot" in errors[str(broken)]
    assert set(read_manifest(out)["source"]) >= {str(good)}


@pytest.mark.parametrize("west,east", [(177.5, -178.5), (179.2, -179.6)])
def test_a_raster_across_the_antimeridian_gets_the_utm_zone_of_its_centre(tmp_path, west, east):
    from pyproj import CRS, Transformer

    to_3832 = Transformer.from_crs("EPSG:4326", "EPSG:3832", always_xy=True)
    x0, y0 = to_3832.transform(west, -17.0)
    x1, _ = to_3832.transform(east, -17.0)
    path = write_raster(tmp_path / "fiji.tif", texture(100, 100), crs="EPSG:3832",
                        transform=from_origin(x0, y0, (x1 - x0) / 100, (x1 - x0) / 100))
    sources = open_sources([path])
    grid = choose_grid([s.crs for s in sources], [s.lonlat_bounds for s in sources], 1000.0, 1000.0)
    centre = (west + (east + 360 - west) / 2 + 180) % 360 - 180
    expected = 32700 + int((centre + 180) // 6) + 1
    assert grid.crs == CRS.from_epsg(expected)  # 60S for 179.5 E, 1S for 179.8 W: never 31S
    for s in sources:
        s.close()


def test_a_mostly_empty_raster_plans_only_the_cells_near_its_data(tmp_path):
    data = np.zeros((3, 4000, 4000), np.uint8)
    data[:, 1000:1100, 2000:2160] = texture(100, 160)  # 50 m x 80 m of data in a 2 km square
    path = write_raster(tmp_path / "sparse.tif", data, nodata=0, tiled=True, blockxsize=256, blockysize=256,
                        compress="deflate")
    planner, chips = cut([path], chip=20.0, stride=10.0, out=(32, 32))
    assert planner.count() < 200  # not the 40,000 cells of the raster's extent
    assert len(chips) >= 20 and all(c.valid_fraction >= 0.5 for c, _ in chips.values())
    proc = run("--progress", "json", "tile", path, "--chip-size-m", 20, "--stride-m", 10,
               "--out", tmp_path / "sparse.gpkg")
    assert any(e["event"] == "progress" and e["stage"] == "plan" for e in json_lines(proc.stdout))


@pytest.mark.parametrize("chip", [10.0, 37.0])  # 20 px -> 16 (read whole), 74 px -> 16 (read 4x decimated)
def test_worker_processes_cut_exactly_what_one_process_cuts(tmp_path, chip):
    path = ortho(tmp_path / "o.tif", h=1400, w=1400, seed=5)
    planner, one = cut([path], chip=chip, stride=chip / 4 if chip > 10 else chip, out=(16, 16))
    assert planner.count() >= PARALLEL_MIN
    _, many = cut([path], chip=chip, stride=chip / 4 if chip > 10 else chip, out=(16, 16), workers=2)
    assert one.keys() == many.keys()
    for cell, (c, rgb) in one.items():
        assert many[cell][0] == c
        np.testing.assert_array_equal(many[cell][1], rgb)
