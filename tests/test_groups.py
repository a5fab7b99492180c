"""Photo groups: grouping rules, fusion of the photos' scores into one ranked list and one heatmap, resume."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from tiling.groups import (
    METRES_PER_DEGREE,
    Member,
    assign_groups,
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
        m = _member(f"{n}.jpg", dx, dy)
        for kx in range(0, 30):
            for ky in range(0, 30):
                m.scores[(kx, ky)] = 0.1
        m.scores[(10 + dx // 16, 10 + dy // 16)] = 0.6  # its own true spot
        m.scores[(25 - n, 3 + n)] = 0.9  # a look-alike, different for every photo
        m.floor = 0.1
        group.append(m)
    keys, scores = fuse(group, 16.0, 3)
    assert keys[0] == (10, 10)
    assert scores[0] == pytest.approx(0.6)
    assert all(s < scores[0] for s in scores[1:])


def test_fused_cells_cover_every_cell_with_the_mean_of_the_photos_scores_at_their_offsets():
    # two photos 32 m apart east-west (stride 16): shifts of -1 and +1 key from their mean position
    west, east = _member("w.jpg", -16, 0), _member("e.jpg", 16, 0)
    west.scores, west.floor = {(4, 5): 0.2, (5, 5): 0.8}, 0.2
    east.scores, east.floor = {(6, 5): 0.4, (7, 5): 0.6}, 0.4
    cells, fused = fused_cells([west, east], 16.0)
    # west's key k is cell k+1, east's key k is cell k-1
    assert cells == [(5, 5), (6, 5)]
    np.testing.assert_allclose(fused, [(0.2 + 0.4) / 2, (0.8 + 0.6) / 2])
    keys, top = fuse([west, east], 16.0, 1)
    assert keys == [(6, 5)] and top[0] == pytest.approx(fused.max())


def test_a_cell_only_one_photo_scored_takes_the_others_lowest_score():
    a, b = _member("a.jpg", 0, 0), _member("b.jpg", 0, 0)
    a.scores, a.floor = {(0, 0): 0.5, (1, 0): 0.9}, 0.5
    b.scores, b.floor = {(0, 0): 0.7}, 0.7
    cells, fused = fused_cells([a, b], 16.0)
    assert cells == [(0, 0), (1, 0)]
    np.testing.assert_allclose(fused, [0.6, 0.8])


def test_group_names_and_heatmap_names_never_collide_with_each_other_or_a_photos_heatmap():
    g1 = [_member("IMG_1.jpg", 0, 0, folder="2025/day1"), _member("IMG_2.jpg", 0, 0, folder="2025/day1")]
    g2 = [_member("IMG_1.jpg", 0, 0, folder="2026/day1"), _member("IMG_2.jpg", 0, 0, folder="2026/day1")]
    assert group_names([g1, g2]) == ["group:day1/IMG_1.jpg+1", "group:day1/IMG_1.jpg+1 #2"]
    taken = {"group_day1_IMG_1_heatmap.tif", "IMG_1_heatmap.tif"}  # the run's photos' heatmaps
    names = [group_heatmap_name(g[0].path, taken) for g in (g1, g2)]
    assert names == ["group_day1_IMG_1.tif", "group_day1_IMG_1_2.tif"]
    assert group_heatmap_name(Path("my photos/été 1") / "a b.jpg", set()) == "group_été_1_a_b.tif"
    assert group_heatmap_name(Path("x") / "a.jpg", {"group_x_a.tif"}) == "group_x_a_2.tif"
