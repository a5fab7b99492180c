"""Training that fits field photos: neighbour batches (hard negatives) and the field-of-view curriculum."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from saig_core.data.transforms import AugmentConfig, PairTransform
from saig_core.training.batches import local_metres, neighbour_batches


def _grid(n: int, spacing_m: float, lat0: float = 48.0) -> list[tuple[float, float]]:
    """n x n places spacing_m apart around (lat0, 11)."""
    deg_lat = spacing_m / 111_320.0
    deg_lon = deg_lat / np.cos(np.radians(lat0))
    return [(lat0 + i * deg_lat, 11.0 + j * deg_lon) for i in range(n) for j in range(n)]


def test_each_batch_holds_groups_of_neighbours_of_one_world_at_least_min_m_apart():
    latlon = _grid(12, 10.0) * 2  # two worlds at the same coordinates: unrelated places
    world = ["a"] * 144 + ["b"] * 144
    batches = neighbour_batches(latlon, world, batch_size=16, group=4, seed=0, epoch=0, min_m=25.0)
    xy = local_metres(latlon)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # nobody twice
    first = batches[0][:4]
    assert len({world[i] for i in first}) == 1
    d = np.linalg.norm(xy[first][:, None] - xy[first][None], axis=2)
    assert d[~np.eye(4, dtype=bool)].min() >= 25.0
    assert d.max() < 100.0  # the nearest places, not random ones of the 110 m world


def test_neighbour_batches_change_with_the_epoch_and_repeat_with_the_seed():
    latlon, world = _grid(10, 30.0), ["a"] * 100
    assert neighbour_batches(latlon, world, 8, 4, 0, 1) == neighbour_batches(latlon, world, 8, 4, 0, 1)
    assert neighbour_batches(latlon, world, 8, 4, 0, 1) != neighbour_batches(latlon, world, 8, 4, 0, 2)


def test_the_fov_curriculum_narrows_the_views_as_epochs_go_on():
    aug = AugmentConfig(fov_curriculum=[[0, [360]], [2, [90]]], fov_placement="canvas", fov_heading_known=True)
    t = PairTransform((32, 128), (32, 128), aug)
    pano = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 128, 3), dtype=np.uint8))
    rng = np.random.default_rng(0)
    x, _ = t.ground(pano, rng, train=True)
    assert (x != 0).flatten(0, 1).any(dim=0).all()  # epoch 0: whole panoramas
    t.set_epoch(3)
    x, _ = t.ground(pano, rng, train=True)
    assert int((x != 0).flatten(0, 1).any(dim=0).sum()) == 32  # 90 degrees of 128 columns


def test_jitter_keeps_the_empty_canvas_columns_empty():
    aug = AugmentConfig(fov_deg=(90,), fov_prob=1.0, fov_placement="canvas", fov_heading_known=True, jitter=0.3)
    t = PairTransform((32, 128), (64, 64), aug)
    pano = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 128, 3), dtype=np.uint8))
    aerial = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    g, _ = t(pano, aerial, np.random.default_rng(3), train=True)
    seen = (g != 0).flatten(0, 1).any(dim=0)
    assert int(seen.sum()) == 32 and torch.is_tensor(g)
