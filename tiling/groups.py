"""Photo groups: several photos taken together, fused into one heatmap and one ranked list.

``saig locate --group RULE`` groups the run's photos by ``folder`` (photos of one folder), by
``time:SECONDS`` (EXIF times no further apart than SECONDS from the previous photo) or by
``radius:METRES`` (EXIF positions within METRES of the group's first photo). Each photo is still located
and reported on its own; then each group of two or more is fused: a candidate place ``c`` for the group
(the mean of its photos' positions) scores the mean, over its photos, of each photo's score at the chip
nearest ``c`` plus that photo's EXIF offset from the group's mean position (no offset when a photo has no
position). Photos that agree on one place reinforce it; a look-alike seen by one photo only is averaged
down. Scores come from each photo's heatmap scores (every chip of an index of up to
``tiling.reference.HEAT_ALL_MAX`` chips, else the neighbourhoods of its best candidates).
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError

RULES = ("folder", "time", "radius")
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class GroupRule:
    """How photos are grouped: ``kind`` in :data:`RULES` and its threshold (seconds or metres)."""

    kind: str
    value: float = 0.0


def parse_group_rule(text: str) -> GroupRule:
    """``folder``, ``time:SECONDS`` or ``radius:METRES`` -> a :class:`GroupRule` (ValueError naming the problem)."""
    kind, _, value = text.partition(":")
    if kind == "folder" and not value:
        return GroupRule("folder")
    if kind in ("time", "radius"):
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--group {text!r}: {kind} needs a number, e.g. {kind}:60") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"--group {text!r}: the {kind} threshold must be positive")
        return GroupRule(kind, v)
    raise ValueError(f"--group {text!r}: expected folder, time:SECONDS or radius:METRES")


@dataclass
class Member:
    """One located photo of a group: its path, EXIF position and time, and its scores per chip centre (arrays,
    20 bytes a chip: 4 MB a photo over an index of :data:`tiling.reference.HEAT_ALL_MAX` chips)."""

    path: Path
    lon: float | None
    lat: float | None
    time: _dt.datetime | None
    keys: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))  # (N, 2) chip centres / stride
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # (N,) the photo's score there
    floor: float = 0.0  # its lowest score: what it scores where it scored no chip


def _timestamp(date: str | None) -> _dt.datetime | None:
    if not date:
        return None
    try:
        return _dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
    except ValueError:
        return None


def make_member(path: Path, exif, hits, stride: float) -> Member:
    """A group member from a photo's EXIF and its heatmap scores (keyed by chip centre in stride units)."""
    chips, scores = (hits.heat_chips, hits.heat_scores) if hits.heat_chips is not None else (hits.chips, hits.scores)
    keys = np.rint(np.stack([np.asarray(chips.x, np.float64), np.asarray(chips.y, np.float64)], 1) / stride)
    return Member(path, exif.lon, exif.lat, _timestamp(exif.date), keys.astype(np.int64),
                  np.asarray(scores, np.float32), float(np.min(scores)) if len(scores) else 0.0)


def assign_groups(members: list[Member], rule: GroupRule) -> list[list[Member]]:
    """The groups of ``members`` under ``rule`` (a photo lacking what the rule needs is a group of its own)."""
    if rule.kind == "folder":
        by: dict[Path, list[Member]] = {}
        for m in members:
            by.setdefault(m.path.parent, []).append(m)
        return list(by.values())
    if rule.kind == "time":
        timed = sorted((m for m in members if m.time is not None), key=lambda m: m.time)  # type: ignore[arg-type,return-value]
        groups: list[list[Member]] = []
        for m in timed:
            last = groups[-1][-1].time if groups else None
            if last is not None and m.time is not None and abs((m.time - last).total_seconds()) <= rule.value:
                groups[-1].append(m)
            else:
                groups.append([m])
        return groups + [[m] for m in members if m.time is None]
    placed: list[list[Member]] = []
    for m in members:
        if m.lon is None or m.lat is None:
            placed.append([m])
            continue
        home = next((g for g in placed if g[0].lon is not None and _metres(g[0], m) <= rule.value), None)
        if home is None:
            placed.append([m])
        else:
            home.append(m)
    return placed


def _offset(m: Member, lon0: float, lat0: float) -> tuple[float, float]:
    """East/north metres of a member from (lon0, lat0) (local plane; 0 without a position)."""
    if m.lon is None or m.lat is None:
        return 0.0, 0.0
    return ((m.lon - lon0) * METRES_PER_DEGREE * math.cos(math.radians(lat0)), (m.lat - lat0) * METRES_PER_DEGREE)


def _metres(a: Member, b: Member) -> float:
    dx, dy = _offset(b, float(a.lon), float(a.lat))  # type: ignore[arg-type]
    return math.hypot(dx, dy)


def group_name(group: list[Member]) -> str:
    """A readable, stable name: the common folder and the first photo's name."""
    return f"group:{group[0].path.parent.name}/{group[0].path.name}+{len(group) - 1}"


def group_names(groups: list[list[Member]]) -> list[str]:
    """:func:`group_name` of each group, made unique with `` #2``, `` #3``... in order (two folders of one name,
    ``2025/day1`` and ``2026/day1``, may both start with ``IMG_0001.jpg``): each group is recorded under its own."""
    names: list[str] = []
    for group in groups:
        base = name = group_name(group)
        n = 1
        while name in names:
            n += 1
            name = f"{base} #{n}"
        names.append(name)
    return names


def fused_cells(group: list[Member], stride: float) -> tuple[np.ndarray, np.ndarray]:
    """Every cell any photo of ``group`` scored ((N, 2) chip keys in stride units, for the group's mean position,
    in key order) and its fused score: the mean over the photos of each one's score at the cell plus its EXIF
    offset (its lowest score where it scored no chip)."""
    if not group:
        raise SaigError("an empty photo group cannot be fused")
    placed = [m for m in group if m.lon is not None and m.lat is not None]
    lon0 = float(np.mean([m.lon for m in placed])) if placed else 0.0
    lat0 = float(np.mean([m.lat for m in placed])) if placed else 0.0
    shifts = [np.rint(np.asarray(_offset(m, lon0, lat0)) / stride).astype(np.int64) for m in group]
    shifted = [m.keys.reshape(-1, 2) - s for m, s in zip(group, shifts, strict=True)]
    every = np.concatenate(shifted)
    if not len(every):
        return every, np.zeros(0)
    lo, span = every.min(0), int(np.ptp(every[:, 1])) + 1  # a cell's code: (x - x0) * span + (y - y0), in key order
    codes = [(k[:, 0] - lo[0]) * span + (k[:, 1] - lo[1]) for k in shifted]
    cell_codes = np.unique(np.concatenate(codes))
    cells = np.stack([cell_codes // span + lo[0], cell_codes % span + lo[1]], 1)
    fused = np.zeros(len(cells))
    for m, c in zip(group, codes, strict=True):
        fused += _scores_at(c, m.scores, cell_codes, m.floor)
    return cells, fused / len(group)


def _scores_at(codes: np.ndarray, scores: np.ndarray, want: np.ndarray, floor: float) -> np.ndarray:
    """The scores of cells coded ``want`` from a photo's (``codes``, ``scores``); ``floor`` where it has none."""
    if not len(codes):
        return np.full(len(want), floor)
    order = np.argsort(codes, kind="stable")
    codes, scores = codes[order], scores[order]
    at = np.minimum(np.searchsorted(codes, want), len(codes) - 1)
    return np.where(codes[at] == want, scores[at], floor)


WINDOW_CELLS = 64  # side of the square windows (in cells) the fused cells' chips are read by


def cell_windows(cells: np.ndarray, stride: float) -> list[tuple[float, float, float, float]]:
    """Grid-CRS bounds of the :data:`WINDOW_CELLS`-square windows holding ``cells`` (chip keys in stride units,
    half a stride of margin): the chips of a group's cells are read by place, window by window, so cells spread
    over a big index (neighbourhoods of far-apart candidates) never read the manifest between them."""
    n = WINDOW_CELLS
    tiles = np.unique(np.asarray(cells, np.int64).reshape(-1, 2) // n, axis=0).tolist()
    return [((tx * n - 0.5) * stride, (ty * n - 0.5) * stride, ((tx + 1) * n - 0.5) * stride,
             ((ty + 1) * n - 0.5) * stride) for tx, ty in tiles]


def fuse(group: list[Member], stride: float, k: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The group's top-k cells of :func:`fused_cells` and their fused scores, best first."""
    cells, fused = fused_cells(group, stride)
    order = np.argsort(-fused, kind="stable")[:k]
    return [(int(cells[i, 0]), int(cells[i, 1])) for i in order], fused[order]


__all__ = ["RULES", "GroupRule", "Member", "assign_groups", "cell_windows", "fuse", "fused_cells", "group_name",
           "group_names", "make_member", "parse_group_rule"]
