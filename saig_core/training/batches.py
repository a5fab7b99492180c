"""Batches of geographically hard negatives: neighbouring places of one world in the same batch.

Random batches mostly pit a place against far-away, easy negatives. Here each batch is made of
small groups; a group is an anchor pair and its nearest pairs of the same world that stand at least
``min_m`` apart (closer ones would be the same place, i.e. false negatives). The look-alike streets a
few blocks away are exactly the candidates retrieval confuses (Sample4Geo's GPS sampling).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRES_PER_DEGREE = 111_320.0


def local_metres(latlon: Sequence[tuple[float, float]]) -> np.ndarray:
    """(N, 2) east/north metres of lat/lon points on a local equirectangular plane (fine over a few km)."""
    ll = np.asarray(latlon, dtype=np.float64)
    lat0 = math.radians(float(np.mean(ll[:, 0]))) if len(ll) else 0.0
    return np.stack([ll[:, 1] * METRES_PER_DEGREE * math.cos(lat0), ll[:, 0] * METRES_PER_DEGREE], axis=1)


def neighbour_groups(xy: np.ndarray, world: Sequence[str], group: int, min_m: float,
                     rng: np.random.Generator) -> list[list[int]]:
    """Every index exactly once, in groups of up to ``group`` neighbours of one world ``min_m`` apart."""
    by_world: dict[str, list[int]] = {}
    for i, w in enumerate(world):
        by_world.setdefault(w, []).append(i)
    groups: list[list[int]] = []
    for name in sorted(by_world):
        members = np.asarray(by_world[name])
        groups.extend([[int(members[j]) for j in g] for g in _groups_of(xy[members], group, min_m, rng)])
    return groups


def _groups_of(xy: np.ndarray, group: int, min_m: float, rng: np.random.Generator) -> list[list[int]]:
    """Greedy groups within one world: a random anchor, then its nearest unused places ``min_m`` apart."""
    used = np.zeros(len(xy), dtype=bool)
    groups: list[list[int]] = []
    for anchor in rng.permutation(len(xy)):
        if used[anchor]:
            continue
        used[anchor] = True
        members = [int(anchor)]
        cand = np.flatnonzero(~used)
        order = cand[np.argsort(np.linalg.norm(xy[cand] - xy[anchor], axis=1))]
        for j in order[: 8 * group]:
            if len(members) >= group:
                break
            if np.all(np.linalg.norm(xy[members] - xy[j], axis=1) >= min_m):
                members.append(int(j))
                used[j] = True
        groups.append(members)
    return groups


def neighbour_batches(latlon: Sequence[tuple[float, float]], world: Sequence[str] | None, batch_size: int,
                      group: int, seed: int, epoch: int, min_m: float = 25.0) -> list[list[int]]:
    """Full batches of one epoch made of shuffled neighbour groups ((seed, epoch)-seeded, drop_last)."""
    rng = np.random.default_rng([seed, 7, epoch])
    world = list(world) if world else [""] * len(latlon)
    groups = neighbour_groups(local_metres(latlon), world, group, min_m, rng)
    flat = [i for k in rng.permutation(len(groups)) for i in groups[k]]
    return [flat[i:i + batch_size] for i in range(0, len(flat) - batch_size + 1, batch_size)]


__all__ = ["local_metres", "neighbour_batches", "neighbour_groups"]
