"""Refinement: aerial views cut on the fly from an index's rasters, and the fine-grid search around candidates."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiling_fixtures import ORIGIN, micro_checkpoint, run, texture, write_raster

from tiling.chips import ChipParams, ChipPlanner, iter_chips, open_sources
from tiling.refine import AerialViews, RefineOptions, distinct_places, open_views, refine, resolve_rasters


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A 100 m raster (0.5 m pixels, UTM 33N) indexed with 20 m chips every 10 m by the micro model."""
    tmp = tmp_path_factory.mktemp("refine")
    tif = write_raster(tmp / "ortho.tif", texture(200, 200, seed=7))
    out = tmp / "idx"
    run("index", "build", tif, "--checkpoint", micro_checkpoint(tmp / "micro.pt"), "--chip-size-m", 20,
        "--stride-m", 10, "--out", out)
    return tmp, tif, out, json.loads((out / "metadata.json").read_text())


def flat(views: np.ndarray) -> np.ndarray:
    """A stand-in encoder for geometry tests: each view's normalised pixels (equal views score 1)."""
    v = views.reshape(len(views), -1).astype(np.float64) - 128.0
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_index_records_its_rasters_by_absolute_path_and_its_stretch(indexed):
    _, tif, _, meta = indexed
    assert meta["sources"][0]["abs_path"] == str(tif.resolve())
    assert "stretch" in meta and meta["stretch"] is None  # 8-bit: no contrast stretch


def test_a_view_cut_on_the_fly_is_the_index_chip_at_that_cell(indexed):
    _, tif, _, meta = indexed
    planner = ChipPlanner(open_sources([tif]), ChipParams(20.0, 10.0, out_size=tuple(meta["chips"]["out_size"])))
    chips = list(iter_chips(planner))
    chip, pixels = chips[len(chips) // 2]  # an interior chip
    with AerialViews(meta, [tif]) as views:
        points, cut, fraction = views.around(chip.x, chip.y, step=5.0, radius=0.0)
    assert points.tolist() == [[chip.x, chip.y]] and fraction[0] == 1.0
    diff = np.abs(cut[0].astype(np.int16) - pixels.astype(np.int16))
    assert diff.mean() < 2.0  # GDAL's bilinear warp vs the chip reader's Pillow resize: the same footprint


def test_refinement_finds_the_exact_position_a_query_was_cut_at(indexed):
    _, tif, _, meta = indexed
    truth = (ORIGIN[0] + 47.0, ORIGIN[1] - 52.0)  # off the 10 m chip grid
    # views are 64 px over 20 m (0.3125 m pixels): a 1.25 m step is 4 whole pixels
    with AerialViews(meta, [tif]) as views:
        _, view, _ = views.around(*truth, step=1.25, radius=0.0)
        q = flat(view)
        xs, ys = np.array([truth[0] + 5.0, truth[0] - 30.0]), np.array([truth[1] - 3.75, truth[1] + 20.0])
        found = refine(views, flat, q, 1.0, xs, ys, RefineOptions(places=2, step=1.25, radius=8.75), stride=10.0)
    best = max(found, key=lambda r: r.score)
    assert best.candidate == 0 and (best.x, best.y) == pytest.approx(truth) and best.score == pytest.approx(1.0)
    assert len(best.points) == 15 * 15 and best.step == 1.25  # every 1.25 m within 8.75 m in x and y
    assert found[1].score < 0.9  # the other place, 36 m away, does not look like it


def test_distinct_places_are_at_least_the_given_distance_apart():
    xs, ys = np.array([0.0, 5.0, 30.0, 31.0, 80.0]), np.zeros(5)
    assert distinct_places(xs, ys, 3, 20.0) == [0, 2, 4]
    assert distinct_places(xs, ys, 1, 20.0) == [0]


def test_moved_rasters_are_found_next_to_the_index_and_missing_ones_are_named(indexed, tmp_path):
    _, tif, out, meta = indexed
    moved = tmp_path / "project"
    shutil.copytree(out, moved / "idx")
    shutil.copy(tif, moved / "ortho.tif")
    gone = {**meta, "sources": [{**meta["sources"][0], "abs_path": str(tmp_path / "old" / "ortho.tif"),
                                 "path": "ortho.tif"}]}
    found, missing = resolve_rasters(gone, moved / "idx")
    assert found == [moved / "ortho.tif"] and missing == []
    lost = {**gone, "sources": [{**gone["sources"][0], "path": str(tmp_path / "old" / "ortho.tif")}]}
    warnings: list[str] = []
    assert open_views(lost, moved / "idx", warnings.append) is None
    assert "not found" in warnings[0] and str(tmp_path / "old" / "ortho.tif") in warnings[0]


def test_locate_reports_refined_positions_uncertainty_and_confidence(indexed):
    tmp, _, index, _ = indexed
    from PIL import Image

    photo = tmp / "p.png"
    Image.fromarray(np.moveaxis(texture(120, 160, seed=3), 0, -1)).save(photo)
    from tiling_fixtures import json_lines

    proc = run("locate", photo, "--index", index, "-k", 5, "--out", tmp / "r.gpkg", "--json", "--overwrite")
    cands = json_lines(proc.stdout)[-1]["candidates"]
    assert "no confidence calibration" in proc.stderr  # the micro model was never calibrated, and it is said
    refined = [c for c in cands if c["refined_x"] is not None]
    assert 1 <= len(refined) <= 3 and all(0.0 <= c["confidence"] <= 1.0 for c in cands)
    for c in refined:  # within one stride (the default radius) of the chip, with a positive uncertainty
        assert abs(c["refined_x"] - c["x"]) <= 10.0 and abs(c["refined_y"] - c["y"]) <= 10.0
        assert c["uncertainty_m"] > 0 and c["refined_lon"] is not None
    plain = run("locate", photo, "--index", index, "-k", 5, "--out", tmp / "r0.gpkg", "--json", "--refine", "0")
    assert all(c["refined_x"] is None and c["confidence"] is not None
               for c in json_lines(plain.stdout)[-1]["candidates"])
    import geopandas as gpd

    layer = gpd.read_file(tmp / "r.gpkg", layer="candidates")
    assert {"confidence", "refined_lon", "refined_lat", "uncertainty_m"} <= set(layer.columns)
    assert gpd.read_file(tmp / "r.gpkg", layer="photos")["top1_confidence"].notna().all()


def test_a_16_bit_raster_in_another_crs_is_cut_on_the_fly_as_the_index_cut_it(tmp_path):
    """The stretch recorded by the build and the warp to the grid CRS: views match the index's chips."""
    from rasterio.transform import from_origin

    data = (texture(200, 200, seed=11).astype(np.uint16) * 40 + 500)
    tif = write_raster(tmp_path / "u16_3857.tif", data, crs="EPSG:3857",
                       transform=from_origin(1_670_000.0, 5_650_000.0, 0.7, 0.7))
    out = tmp_path / "idx"
    run("index", "build", tif, "--checkpoint", micro_checkpoint(tmp_path / "m.pt"), "--chip-size-m", 20,
        "--stride-m", 10, "--out", out)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["crs"] != "EPSG:3857" and meta["stretch"] is not None  # a UTM grid, a recorded 16-bit stretch
    planner = ChipPlanner(open_sources([tif]), ChipParams(20.0, 10.0, out_size=tuple(meta["chips"]["out_size"])))
    chip, pixels = [c for c in iter_chips(planner) if c[0].valid_fraction == 1.0][5]
    with AerialViews(meta, [tif]) as views:
        _, cut, fraction = views.around(chip.x, chip.y, step=5.0, radius=0.0)
    assert fraction[0] == 1.0
    assert np.abs(cut[0].astype(np.int16) - pixels.astype(np.int16)).mean() < 4.0
