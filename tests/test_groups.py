"""Photo groups: grouping rules and fusion of the photos' scores into one ranked list."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tiling.groups import METRES_PER_DEGREE, Member, assign_groups, fuse, parse_group_rule

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
