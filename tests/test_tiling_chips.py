"""Chips: grid, georeferencing, validity rules, band handling, overlaps and bad rasters."""
from __future__ import annotations

import math
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, requires_shared_data
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin
from tiling_fixtures import ORIGIN, UTM33N, json_lines, ortho, run, texture, write_raster

from tiling.chips import ChipParams, ChipPlanner, ChipReader, RasterError, iter_chips, open_source, open_sources


def cut(paths, **kw):
    """All valid chips with their pixels, through the library (as the CLI does)."""
    params = ChipParams(kw.pop("chip", 20.0), kw.pop("stride", 10.0), out_size=kw.pop("out", (32, 32)), **kw)
    sources = open_sources([str(p) for p in paths])
    planner = ChipPlanner(sources, params)
    with ChipReader(planner) as reader:
        chips = list(iter_chips(planner, reader))
    for s in sources:
        s.close()
    return planner, chips


def test_chips_lie_on_the_metric_lattice_with_independently_computed_centres(tmp_path):
    path = ortho(tmp_path / "o.tif")
    planner, chips = cut([path])
    assert planner.grid.kind == "native" and planner.grid.crs.to_epsg() == 32633
    to_wgs = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    # 100 m square: 9 x 9 cells fully inside, plus 36 half-covered edge cells (valid 0.5 >= min_valid)
    assert len(chips) == 117 and sum(c.valid_fraction == 1.0 for c, _ in chips) == 81
    for chip, rgb in chips:
        minx, miny, maxx, maxy = chip.footprint
        assert minx % 10 == 0 and maxy % 10 == 0 and maxx - minx == 20 and maxy - miny == 20
        assert (chip.x, chip.y) == ((minx + maxx) / 2, (miny + maxy) / 2)
        lon, lat = to_wgs.transform(chip.x, chip.y)
        assert chip.lon == pytest.approx(lon, abs=1e-9) and chip.lat == pytest.approx(lat, abs=1e-9)
        assert chip.window.flatten() == pytest.approx(((minx - ORIGIN[0]) / 0.5, (ORIGIN[1] - maxy) / 0.5, 40, 40))
        assert chip.gsd_m == pytest.approx(20 / 32)
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert len({c.chip_id for c, _ in chips}) == len(chips)


def test_chip_pixels_are_the_source_pixels_when_resolutions_match(tmp_path):
    path = ortho(tmp_path / "o.tif")
    _, chips = cut([path], chip=16.0, stride=16.0, out=(32, 32))
    with rasterio.open(path) as src:
        for chip, rgb in chips[:5]:
            col, row, w, h = (int(round(v)) for v in chip.window.flatten())
            expected = src.read(window=((row, row + h), (col, col + w)))
            np.testing.assert_array_equal(np.moveaxis(rgb, -1, 0), expected)


def test_readers_give_gdal_a_block_cache_of_megabytes_not_bytes(tmp_path):
    """rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64 (bytes): a cache of "256" bytes made GDAL decode a
    JPEG block again for every read touching it (the layout read ran ~5x slower)."""
    from rasterio._env import get_gdal_config

    from tiling.chips import GDAL_CACHE_MB

    sources = open_sources([str(ortho(tmp_path / "o.tif"))])
    planner = ChipPlanner(sources, ChipParams(20.0, 10.0, out_size=(32, 32)))
    with ChipReader(planner):
        assert get_gdal_config("GDAL_CACHEMAX") == GDAL_CACHE_MB * 2 ** 20
    for s in sources:
        s.close()


def test_edge_chips_are_padded_in_place_never_shifted(tmp_path):
    # extent 500003..500097 x 5000003..5000097: edge cells stick out by 3 to 17 m
    path = ortho(tmp_path / "o.tif", h=188, w=188, transform=from_origin(500_003.0, 5_000_097.0, 0.5, 0.5))
    _, chips = cut([path], min_valid=0.01)
    edge = next(c for c in chips if c[0].footprint[0] == 499_990.0 and c[0].footprint[3] == 5_000_090.0)
    chip, rgb = edge
    # x in [499990, 500003) is outside: first 13 m = 20.8 chip pixels -> columns 0..20 black, 21.. valid
    assert chip.valid_fraction == pytest.approx(11 / 32, abs=1 / 32)
    assert not rgb[:, :20].any() and rgb[:, 22:].all(axis=-1).all()
    strict = cut([path])[1]
    assert all(c.valid_fraction >= 0.5 for c, _ in strict) and len(strict) < len(chips)


def test_nodata_alpha_and_black_collar_chips_are_skipped(tmp_path):
    data = texture(200, 200)
    data[:, :, :100] = 0  # west half
    with_nodata = write_raster(tmp_path / "nodata.tif", data, nodata=0)
    collar = write_raster(tmp_path / "collar.tif", data)  # no nodata declared: pure black is collar
    alpha = np.full((1, 200, 200), 255, np.uint8)
    alpha[:, :, :100] = 0
    rgba = write_raster(tmp_path / "rgba.tif", np.concatenate([texture(200, 200), alpha]), photometric="RGB",
                        alpha="YES")
    with rasterio.open(rgba) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    for path in (with_nodata, collar, rgba):
        _, chips = cut([path])
        xs = sorted({c.footprint[0] for c, _ in chips})
        # cells starting at 500040 are half valid (kept), further west skipped
        assert xs[0] == 500_040.0, path.name
        half = [c for c, _ in chips if c.footprint[0] == 500_040.0]
        # (a collar is found by value: bilinear resampling blends one column of chip pixels at its edge)
        assert all(c.valid_fraction == pytest.approx(0.5, abs=1 / 32) for c in half), path.name
        for c, rgb in chips:
            if c.footprint[0] == 500_040.0:
                assert not rgb[:, :15].any() and rgb[:, 17:].all(axis=-1).all()


def test_single_band_16_bit_is_stretched_to_grey_rgb(tmp_path):
    rng = np.random.default_rng(0)
    data = (1000 + rng.random((1, 200, 200)) * 4000).astype(np.uint16)
    path = write_raster(tmp_path / "pan.tif", data, nodata=0)
    planner, chips = cut([path])
    (lo, hi), = planner.stretch
    assert 1000 <= lo < 1200 and 4800 < hi <= 5000
    rgb = np.stack([r for _, r in chips])
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    inside = rgb[[c.valid_fraction == 1.0 for c, _ in chips]]
    assert inside.min() < 40 and inside.max() > 215 and 100 < inside.mean() < 155  # 2..98 % -> 0..255


def test_overlapping_rasters_are_one_surface_first_given_wins_per_pixel(tmp_path):
    a = ortho(tmp_path / "a.tif", seed=1)
    b = ortho(tmp_path / "b.tif", seed=2, transform=from_origin(ORIGIN[0] + 50, ORIGIN[1], 0.5, 0.5))
    _, chips = cut([a, b], chip=16.0, stride=16.0)
    ids = [c.chip_id for c, _ in chips]
    assert len(ids) == len(set(ids))
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        pa, pb = ra.read(), rb.read()
    for c, rgb in chips:
        minx, _, _, maxy = c.footprint
        assert c.source == str(a if minx < ORIGIN[0] + 100 else b)  # the first raster giving it pixels
        if minx < ORIGIN[0] or minx + 16 > ORIGIN[0] + 150 or maxy > ORIGIN[1] or maxy - 16 < ORIGIN[1] - 100:
            continue  # edge cells of the union: padded
        # every pixel: from a where a covers it (first given), else from b; no black seam
        row = int(round((ORIGIN[1] - maxy) / 0.5))
        for j in range(32):
            x = minx + (j + 0.5) * 0.5
            expected = pa[:, row:row + 32, int((x - ORIGIN[0]) / 0.5)] if x < ORIGIN[0] + 100 else \
                pb[:, row:row + 32, int((x - ORIGIN[0] - 50) / 0.5)]
            np.testing.assert_array_equal(rgb[:, j].T, expected)
    # union x 500000..500150, y 5000000..5000100 on a 16 m lattice: 9 whole columns (500144 holds 6 m),
    # 6 whole rows (the top row holds 4 m); the seam at x = 500100 costs nothing
    assert len(chips) == 9 * 6


def test_geographic_raster_is_cut_on_its_utm_zone(tmp_path):
    lon0, lat0, res = 15.001, 45.002, 0.5 / 111_000
    path = write_raster(tmp_path / "geo.tif", texture(300, 400), crs="EPSG:4326",
                        transform=from_origin(lon0, lat0, res * 1.4, res))
    planner, chips = cut([path])
    assert planner.grid.kind == "utm" and planner.grid.crs.to_epsg() == 32633
    assert chips and all(c.valid_fraction >= 0.5 for c, _ in chips)
    for c, rgb in chips:
        assert lon0 <= c.lon <= lon0 + 400 * res * 1.4 and lat0 - 300 * res <= c.lat <= lat0
        assert rgb[rgb.any(axis=-1)].min() >= 1  # no black inside the valid part: collar rule held


def test_xyz_grid_uses_mercantile_tiles_with_the_latitude_scale_factor(tmp_path):
    path = ortho(tmp_path / "o.tif", h=600, w=600)
    planner, chips = cut([path], grid="xyz", chip=20.0)
    z = planner.grid.zoom
    assert planner.grid.crs.to_epsg() == 3857
    lat = chips[0][0].lat
    ground = 2 * math.pi * 6378137 / 2 ** z * math.cos(math.radians(lat))
    assert abs(math.log2(ground / 20.0)) <= 0.5  # the zoom whose ground size is nearest 20 m
    for c, _ in chips:
        tile = mercantile.tile(c.lon, c.lat, z)
        assert c.chip_id == f"{z}/{tile.x}/{tile.y}" and (c.col, c.row) == (tile.x, tile.y)
        b = mercantile.xy_bounds(tile)
        assert c.footprint == pytest.approx((b.left, b.bottom, b.right, b.top))
        assert c.gsd_m == pytest.approx((b.right - b.left) * math.cos(math.radians(c.lat)) / 32, rel=1e-9)


def bad_rasters(tmp: Path) -> dict[str, tuple[Path, str]]:
    text = tmp / "notes.tif"
    text.write_text("not a raster at all\n")
    no_crs = write_raster(tmp / "nocrs.tif", texture(64, 64), crs=None)
    no_gt = write_raster(tmp / "nogt.tif", texture(64, 64), crs=UTM33N, transform=Affine.identity())
    rotated = write_raster(tmp / "rotated.tif", texture(64, 64),
                           transform=Affine(0.5, 0.1, ORIGIN[0], 0.1, -0.5, ORIGIN[1]))
    return {"not a raster": (text, "not a readable raster"), "no CRS": (no_crs, "has no CRS"),
            "no geotransform": (no_gt, "no geotransform"), "rotated": (rotated, "rotated")}


@pytest.mark.parametrize("case", ["not a raster", "no CRS", "no geotransform", "rotated"])
def test_unusable_rasters_are_refused_naming_the_file_and_reason(tmp_path, case):
    path, reason = bad_rasters(tmp_path)[case]
    with pytest.raises(RasterError) as err:
        open_source(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_truncated_raster_fails_with_a_clear_read_error(tmp_path):
    path = ortho(tmp_path / "full.tif", h=400, w=400)
    blob = path.read_bytes()
    cut_path = tmp_path / "truncated.tif"
    cut_path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(RasterError) as err:
        cut([cut_path])
    assert str(cut_path) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_chip_smaller_than_a_pixel_is_refused(tmp_path):
    path = write_raster(tmp_path / "coarse.tif", texture(40, 40), transform=from_origin(*ORIGIN, 30.0, 30.0))
    with pytest.raises(RasterError) as err:
        cut([path], chip=20.0)
    assert str(path) in str(err.value) and "smaller than one pixel" in str(err.value)


def test_tile_cli_reports_bad_inputs_processes_the_rest_and_leaves_nothing_half_written(tmp_path):
    good = ortho(tmp_path / "good.tif")
    bad = bad_rasters(tmp_path)
    out = tmp_path / "chips.gpkg"
    proc = run("--progress", "json", "tile", good, *[p for p, _ in bad.values()], "--chip-size-m", 20,
               "--stride-m", 10, "--out", out, check=False)
    events = json_lines(proc.stdout)
    errors = [e for e in events if e["event"] == "error"]
    assert proc.returncode == 1
    assert {e["file"] for e in errors} == {str(p) for p, _ in bad.values()}
    result = events[-1]
    assert result == {"event": "result", "output": str(out), "layer": "chips", "count": 117, "crs": "EPSG:32633"}
    import geopandas as gpd

    gdf = gpd.read_file(out, layer="chips")
    assert len(gdf) == 117 and gdf.crs.to_epsg() == 32633 and set(gdf["source"]) == {str(good)}

    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 100, 100), np.uint8), nodata=0)
    out2 = tmp_path / "none.gpkg"
    proc = run("tile", empty, "--chip-size-m", 20, "--stride-m", 10, "--out", out2, check=False)
    assert proc.returncode == 1 and "no valid chip" in proc.stderr and str(empty) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def real_orthophotos() -> list[Path]:
    folder = SHARED_DATA / "orthophotos"
    return sorted(folder.glob("*.tif")) if folder.is_dir() else []


@requires_shared_data
@pytest.mark.parametrize("path", real_orthophotos(), ids=lambda p: p.name)
def test_real_orthophoto_chip_centres_match_an_independent_pyproj_computation(path):
    planner, chips = cut([path], chip=20.0, stride=20.0)
    assert chips, f"{path.name}: no chip"
    grid_epsg = planner.grid.crs.to_epsg()
    with rasterio.open(path) as src:
        src_crs = src.crs.to_wkt()
        src_transform = src.transform
    grid_to_wgs = Transformer.from_crs(f"EPSG:{grid_epsg}", "EPSG:4326", always_xy=True)
    src_to_wgs = Transformer.from_crs(src_crs, "EPSG:4326", always_xy=True)
    for chip, rgb in chips:
        lon, lat = grid_to_wgs.transform(chip.x, chip.y)
        assert (chip.lon, chip.lat) == pytest.approx((lon, lat), abs=1e-9)
        # the centre of the chip's source pixel window, through the file's own geotransform and CRS
        col_off, row_off, w, h = chip.window.flatten()
        sx = src_transform.c + src_transform.a * (col_off + w / 2)
        sy = src_transform.f + src_transform.e * (row_off + h / 2)
        wlon, wlat = src_to_wgs.transform(sx, sy)
        metres = math.hypot((wlon - chip.lon) * 111_320 * math.cos(math.radians(chip.lat)), (wlat - chip.lat) * 110_574)
        tolerance = 0.01 if grid_epsg == Transformer.from_crs(src_crs, src_crs).source_crs.to_epsg() else 0.5
        assert metres < tolerance, f"{path.name} {chip.chip_id}: window centre {metres:.3f} m from the chip centre"
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and rgb.any()


def test_manifest_is_a_geopackage_that_qgis_3_22_reads_fully(tmp_path):
    """GeoPackage 1.2 (user_version 10200): GDAL 3.6 in QGIS 3.22 warns about the 1.4 newer GDALs write."""
    import sqlite3

    from tiling.manifest import write_manifest

    rec = {"chip_id": "a", "source": "o.tif", "row": 0, "col": 0, "win_col_off": 0, "win_row_off": 0,
           "win_width": 8, "win_height": 8, "x": 1.0, "y": 1.0, "lon": 9.0, "lat": 45.0, "gsd_m": 0.5,
           "valid_fraction": 1.0, "minx": 0.0, "miny": 0.0, "maxx": 2.0, "maxy": 2.0}
    path = write_manifest([rec], "EPSG:32632", tmp_path / "chips.gpkg")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
