"""Photo groups: grouping rules, fusion of the photos' scores into one ranked list and one heatmap, resume."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest

from saig_core.runtime.progress import Reporter
from tiling.groups import (
    METRES_PER_DEGREE,
    Member,
    assign_groups,
    cell_windows,
    fuse,
    fused_cells,
    group_names,
    parse_group_rule,
)
from tiling.heatmap import group_heatmap_name

LAT0, LON0 = 48.0, 11.0


def _member(name: str, east_m: float, north_m: float, time_s: float | None = None, folder: str = "a") -> Member:
    import math

    lon = LON0 + east_m / (METRES_PER_DEGREE * math.cos(math.radians(LAT0)))
    lat = LAT0 + north_m / METRES_PER_DEGREE
    t = None if time_s is None else dt.datetime(2026, 5, 1, 12) + dt.timedelta(seconds=time_s)
    return Member(Path(folder) / name, lon, lat, t)


def _scored(m: Member, table: dict[tuple[int, int], float], floor: float) -> Member:
    """``m`` with these scores per chip key (in the table's order, not sorted) and this floor."""
    m.keys = np.asarray(list(table), np.int64).reshape(-1, 2)
    m.scores, m.floor = np.asarray(list(table.values()), np.float32), floor
    return m


def test_group_rules_are_parsed_or_refused_with_the_reason():
    assert parse_group_rule("folder").kind == "folder"
    assert parse_group_rule("time:60").value == 60.0
    assert parse_group_rule("radius:40").kind == "radius"
    for bad in ("radius", "time:-1", "radius:x", "street"):
        with pytest.raises(ValueError, match="--group"):
            parse_group_rule(bad)


def test_photos_are_grouped_by_folder_time_and_radius():
    ms = [_member("1.jpg", 0, 0, 0, "a"), _member("2.jpg", 30, 0, 50, "a"), _member("3.jpg", 500, 0, 400, "b")]
    assert [len(g) for g in assign_groups(ms, parse_group_rule("folder"))] == [2, 1]
    assert [len(g) for g in assign_groups(ms, parse_group_rule("time:60"))] == [2, 1]
    assert [len(g) for g in assign_groups(ms, parse_group_rule("radius:40"))] == [2, 1]


def test_fusion_finds_the_place_all_photos_agree_on_despite_each_ones_look_alike():
    # four photos 16 m around a corner at chip key (10, 10) (stride 16 m); each alone prefers a different look-alike
    offsets = [(-16, 0), (16, 0), (0, 16), (0, -16)]
    group = []
    for n, (dx, dy) in enumerate(offsets):
        table = {(kx, ky): 0.1 for kx in range(30) for ky in range(30)}
        table[(10 + dx // 16, 10 + dy // 16)] = 0.6  # its own true spot
        table[(25 - n, 3 + n)] = 0.9  # a look-alike, different for every photo
        group.append(_scored(_member(f"{n}.jpg", dx, dy), table, 0.1))
    keys, scores = fuse(group, 16.0, 3)
    assert keys[0] == (10, 10)
    assert scores[0] == pytest.approx(0.6)
    assert all(s < scores[0] for s in scores[1:])


def test_fused_cells_cover_every_cell_with_the_mean_of_the_photos_scores_at_their_offsets():
    # two photos 32 m apart east-west (stride 16): shifts of -1 and +1 key from their mean position
    west = _scored(_member("w.jpg", -16, 0), {(5, 5): 0.8, (4, 5): 0.2}, 0.2)
    east = _scored(_member("e.jpg", 16, 0), {(6, 5): 0.4, (7, 5): 0.6}, 0.4)
    cells, fused = fused_cells([west, east], 16.0)
    # west's key k is cell k+1, east's key k is cell k-1
    assert cells.tolist() == [[5, 5], [6, 5]]
    np.testing.assert_allclose(fused, [(0.2 + 0.4) / 2, (0.8 + 0.6) / 2], rtol=1e-6)
    keys, top = fuse([west, east], 16.0, 1)
    assert keys == [(6, 5)] and top[0] == pytest.approx(fused.max())


def test_a_cell_only_one_photo_scored_takes_the_others_lowest_score():
    a = _scored(_member("a.jpg", 0, 0), {(1, 0): 0.9, (0, 0): 0.5, (0, -7): 0.6}, 0.5)
    b = _scored(_member("b.jpg", 0, 0), {(0, 0): 0.7}, 0.7)
    none = _scored(_member("c.jpg", 0, 0), {}, 0.1)  # a photo that scored no chip at all counts its floor
    cells, fused = fused_cells([a, b, none], 16.0)
    assert cells.tolist() == [[0, -7], [0, 0], [1, 0]]
    np.testing.assert_allclose(fused, [(0.6 + 0.7 + 0.1) / 3, (0.5 + 0.7 + 0.1) / 3, (0.9 + 0.7 + 0.1) / 3],
                               rtol=1e-6)


def test_the_chips_of_far_apart_cells_are_read_by_small_windows_that_hold_every_cell():
    cells = [(0, 0), (5, -3), (63, 63), (10_000, -20_000)]  # two neighbourhoods 350 km apart (stride 16 m)
    windows = cell_windows(np.asarray(cells), 16.0)
    assert len(windows) == 3  # (0, 0) and (63, 63) share one; (5, -3) lies in the one south of it
    for cx, cy in cells:  # each cell's chip centre (within half a stride of key * stride) is in a window
        for dx in (-7.9, 0.0, 7.9):
            x, y = cx * 16.0 + dx, cy * 16.0 - dx
            assert any(w[0] <= x <= w[2] and w[1] <= y <= w[3] for w in windows)
    assert max(w[2] - w[0] for w in windows) == 64 * 16.0


def test_group_names_and_heatmap_names_never_collide_with_each_other_or_a_photos_heatmap():
    g1 = [_member("IMG_1.jpg", 0, 0, folder="2025/day1"), _member("IMG_2.jpg", 0, 0, folder="2025/day1")]
    g2 = [_member("IMG_1.jpg", 0, 0, folder="2026/day1"), _member("IMG_2.jpg", 0, 0, folder="2026/day1")]
    assert group_names([g1, g2]) == ["group:day1/IMG_1.jpg+1", "group:day1/IMG_1.jpg+1 #2"]
    taken = {"group_day1_IMG_1_heatmap.tif", "IMG_1_heatmap.tif"}  # the run's photos' heatmaps
    names = [group_heatmap_name(g[0].path, taken) for g in (g1, g2)]
    assert names == ["group_day1_IMG_1.tif", "group_day1_IMG_1_2.tif"]
    assert group_heatmap_name(Path("my photos/été 1") / "a b.jpg", set()) == "group_été_1_a_b.tif"
    assert group_heatmap_name(Path("x") / "a.jpg", {"group_x_a.tif"}) == "group_x_a_2.tif"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic world (one group of 4 panoramas and one of 4 photos, geotagged), indexed with an untrained
    micro model."""
    from tiling_fixtures import micro_checkpoint, run

    tmp = tmp_path_factory.mktemp("groups")
    run("synth", "--seed", 5, "--size-m", 300, "--photos", 0, "--group-photos", 1, "--out", tmp / "w")
    ckpt = micro_checkpoint(tmp / "micro.pt")
    run("index", "build", tmp / "w" / "orthophoto.tif", "--checkpoint", ckpt, "--chip-size-m", 32, "--stride-m", 16,
        "--out", tmp / "idx")
    return tmp, tmp / "w" / "groups", tmp / "idx"


def _heat(path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1), src.transform, src.crs, src.nodata, src.dtypes[0]


def test_a_photo_group_gets_one_fused_heatmap_whose_maximum_is_its_top_candidate(world):
    import geopandas as gpd
    from tiling_fixtures import json_lines, run

    from tiling.heatmap import NODATA

    tmp, groups, index = world
    out, heat_dir = tmp / "g.gpkg", tmp / "heat"
    proc = run("locate", groups / "pano_g000", groups / "photo_g000", "--index", index, "-k", 5, "--out", out,
               "--heatmap-dir", heat_dir, "--group", "folder", "--json")
    results = {e["photo"]: e for e in json_lines(proc.stdout) if e["event"] == "result"}
    fused = {p: r for p, r in results.items() if p.startswith("group:")}
    assert sorted(fused) == ["group:pano_g000/0.jpg+3", "group:photo_g000/0.jpg+3"]
    assert sorted(p.name for p in heat_dir.glob("group_*")) == ["group_pano_g000_0.tif", "group_photo_g000_0.tif"]
    assert len(list(heat_dir.glob("*_heatmap.tif"))) == 8  # every photo's own heatmap still written
    layer = gpd.read_file(out, layer="photos").set_index("photo")
    for name, r in fused.items():
        assert r["heatmap"] == str(heat_dir / f"group_{name[6:name.index('/')]}_0.tif")
        assert layer.loc[name, "heatmap"] == r["heatmap"]
        heat, t, crs, nodata, dtype = _heat(r["heatmap"])
        assert crs.to_epsg() == 32632 and dtype == "float32" and nodata == NODATA  # the index's grid CRS
        top = r["candidates"][0]
        assert float(heat.max()) == pytest.approx(top["score"], rel=1e-6)
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert (t.c + (col + 0.5) * t.a, t.f + (row + 0.5) * t.e) == pytest.approx((top["x"], top["y"]), abs=1e-6)
        # the members stand within half a stride of their mean, so the fused map is the mean of their own maps
        members = [results[p]["heatmap"] for p in r["group"]]
        assert len(members) == 4
        mean = np.mean([_heat(m)[0] for m in members], axis=0)
        valid = heat != NODATA
        assert valid.sum() > 100 and np.array_equal(valid, _heat(members[0])[0] != NODATA)
        np.testing.assert_allclose(heat[valid], mean[valid], atol=1e-6)


class _KilledAfter(Reporter):
    """A library run's reporter that interrupts the run (as Ctrl-C does) once ``n`` photos are committed."""

    def __init__(self, n: int) -> None:
        super().__init__("none", out=io.StringIO(), err=io.StringIO())
        self.left = n

    def emit(self, event: str, **fields) -> None:
        super().emit(event, **fields)
        if event == "result":
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt


def test_a_resumed_run_fuses_the_photos_located_before_the_interruption_too(world):
    import json

    from tiling.locate import LocateOptions, locate_photos

    tmp, groups, index = world
    folder = [str(groups / "pano_g000")]

    def opts(name, **kw):
        return LocateOptions(index=str(index), k=5, heatmap_dir=str(tmp / f"heat_{name}"), device="cpu",
                             json_lines=True, group="folder", **kw)

    def results(reporter):
        return {e["photo"]: e for e in map(json.loads, reporter.out.getvalue().splitlines()) if e["event"] == "result"}

    whole = Reporter("none", out=io.StringIO(), err=io.StringIO())
    assert locate_photos(folder, tmp / "whole.gpkg", opts("whole"), whole) == 0
    with pytest.raises(KeyboardInterrupt):
        locate_photos(folder, tmp / "resumed.gpkg", opts("resumed"), _KilledAfter(2))
    assert (tmp / ".resumed.gpkg.partial").is_dir() and not (tmp / "resumed.gpkg").exists()
    resumed = Reporter("none", out=io.StringIO(), err=io.StringIO())
    assert locate_photos(folder, tmp / "resumed.gpkg", opts("resumed", resume=True), resumed) == 0
    a, b = results(whole)["group:pano_g000/0.jpg+3"], results(resumed)["group:pano_g000/0.jpg+3"]
    assert len(b["group"]) == 4 and b["group"] == a["group"]  # the two photos of the earlier run are in it
    assert "locating 2 photo(s) of the earlier run again" in resumed.err.getvalue()
    assert [c["chip_id"] for c in b["candidates"]] == [c["chip_id"] for c in a["candidates"]]
    np.testing.assert_allclose([c["score"] for c in b["candidates"]], [c["score"] for c in a["candidates"]],
                               atol=1e-6)
    assert Path(b["heatmap"]).name == "group_pano_g000_0.tif"
    np.testing.assert_allclose(_heat(b["heatmap"])[0], _heat(a["heatmap"])[0], atol=1e-6)
