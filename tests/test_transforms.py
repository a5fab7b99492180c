"""Transforms: FoV crops and their model-input placement, circular shifts, the polar transform, jitter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saig_core.data.preprocess import image_to_tensor
from saig_core.data.transforms import (
    AugmentConfig,
    PairTransform,
    circular_shift,
    fov_crop,
    limited_fov_to_input,
    photometric_jitter,
    polar_transform,
    rotate_aerial,
)


def column_panorama(width: int = 360, height: int = 8) -> Image.Image:
    """A panorama whose red channel is the column index (one column per degree when width = 360)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, :, 0] = (np.arange(width) % 256)[None, :]
    arr[:, :, 1] = (np.arange(width) // 256)[None, :]
    return Image.fromarray(arr)


def columns_of(image: Image.Image) -> list[int]:
    arr = np.asarray(image).astype(int)
    return (arr[0, :, 0] + 256 * arr[0, :, 1]).tolist()


def test_fov_crop_takes_all_rows_and_fov_over_360_of_the_columns_centred_on_the_heading():
    crop = fov_crop(column_panorama(), 90, heading_deg=90)
    assert crop.size == (90, 8)
    assert columns_of(crop) == list(range(45, 135))


def test_fov_crop_wraps_around_north():
    assert columns_of(fov_crop(column_panorama(), 90, heading_deg=0)) == list(range(315, 360)) + list(range(0, 45))
    assert columns_of(fov_crop(column_panorama(), 360, heading_deg=180)) == list(range(0, 360))


def test_limited_fov_resize_placement_fills_the_whole_ground_input():
    photo = Image.new("RGB", (40, 30), (255, 0, 0))
    x = limited_fov_to_input(photo, (32, 128), 90, "resize")
    assert x.shape == (3, 32, 128) and torch.allclose(x[0], torch.ones(32, 128))


def test_limited_fov_canvas_placement_sits_at_the_heading_column_or_the_middle():
    photo = Image.new("RGB", (40, 30), (255, 255, 255))
    x = limited_fov_to_input(photo, (32, 128), 90, "canvas", heading_deg=90)
    filled = (x[0, 0] != 0).nonzero().flatten().tolist()
    assert filled == list(range(16, 48))  # 32 columns (90/360 of 128) centred on column 32 (= 90 deg)
    x = limited_fov_to_input(photo, (32, 128), 90, "canvas", heading_deg=0)
    assert (x[0, 0] != 0).nonzero().flatten().tolist() == list(range(0, 16)) + list(range(112, 128))
    x = limited_fov_to_input(photo, (32, 128), 90, "canvas")
    assert (x[0, 0] != 0).nonzero().flatten().tolist() == list(range(48, 80))
    with pytest.raises(ValueError, match="placement"):
        limited_fov_to_input(photo, (32, 128), 90, "paste")


def test_training_fov_crop_equals_the_inference_path_for_the_same_heading():
    pano = column_panorama(512, 64)
    t = PairTransform((32, 128), (64, 64), AugmentConfig(fov_deg=(90,), fov_placement="canvas", fov_heading_known=True))
    rng = np.random.default_rng(5)
    x, shift = t.ground(pano, rng, train=True)
    heading = np.random.default_rng(5)
    heading.random()  # the crop/no-crop draw
    heading.integers(1)  # the width draw
    h = heading.uniform(0, 360)
    expected = limited_fov_to_input(fov_crop(pano, 90, h), (32, 128), 90, "canvas", heading_deg=h)
    assert shift is None and torch.equal(x, expected)


def test_circular_shift_rolls_columns_right():
    x = torch.arange(8.0).view(1, 1, 8)
    assert circular_shift(x, 0.25).flatten().tolist() == [6, 7, 0, 1, 2, 3, 4, 5]


def test_polar_transform_puts_the_centre_at_the_bottom_and_north_in_column_zero():
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :, 2] = 255  # blue everywhere
    arr[28:36, 28:36] = (255, 0, 0)  # red centre
    arr[0:8, 28:36] = (0, 255, 0)  # green just inside the north edge
    polar = polar_transform(image_to_tensor(Image.fromarray(arr), (64, 64)), (16, 64))
    assert polar.shape == (3, 16, 64)
    assert (polar[0, -1] > 0.9).all()  # bottom row: the red centre, all around
    assert polar[1, 0, 0] > 0.9 and polar[1, 0, 32] < -0.9  # top row: green north (col 0), not south (col 32)


def test_rotating_the_aerial_image_equals_shifting_its_polar_image():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = image_to_tensor(Image.fromarray(arr), (64, 64))
    clockwise = image_to_tensor(Image.fromarray(np.ascontiguousarray(np.rot90(arr, k=-1))), (64, 64))
    p, q = polar_transform(a, (16, 64)), polar_transform(clockwise, (16, 64))
    assert torch.allclose(circular_shift(p, 0.25), q, atol=1e-4)


def test_shift_keeps_a_polar_aerial_aligned_with_the_panorama():
    t = PairTransform((32, 128), (16, 64), AugmentConfig(shift=True, polar=True))
    pano = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 128, 3), dtype=np.uint8))
    aerial = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    g, a = t(pano, aerial, np.random.default_rng(3), train=True)
    f = np.random.default_rng(3).uniform(0, 1)
    assert torch.equal(g, circular_shift(image_to_tensor(pano, (32, 128)), f))
    assert torch.equal(a, circular_shift(polar_transform(image_to_tensor(aerial, (32, 32)), (16, 64)), f))
    g_eval, _ = t(pano, aerial, np.random.default_rng(3), train=False)
    assert torch.equal(g_eval, image_to_tensor(pano, (32, 128)))  # no shift in evaluation


def test_rotate_aerial_turns_the_heading_to_the_top():
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[14:18, 0:4] = 255  # a marker due west
    rotated = np.asarray(rotate_aerial(Image.fromarray(arr), 270.0))
    assert rotated[0:4, 14:18].mean() > 200  # west (270 deg) now points up


def test_photometric_jitter_is_seeded_bounded_and_off_at_zero():
    x = torch.rand(3, 8, 8) * 2 - 1
    assert torch.equal(photometric_jitter(x, 0.0, np.random.default_rng(0)), x)
    y1 = photometric_jitter(x, 0.4, np.random.default_rng(0))
    y2 = photometric_jitter(x, 0.4, np.random.default_rng(0))
    assert torch.equal(y1, y2) and not torch.equal(y1, x)
    assert y1.min() >= -1 and y1.max() <= 1


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fov_deg"):
        AugmentConfig(fov_deg=(0,))
    with pytest.raises(ValueError, match="shift_aerial"):
        AugmentConfig(shift_aerial="spin")
    assert AugmentConfig(fov_deg=[90, 180]).fov_deg == (90.0, 180.0)


def test_polar_transform_of_a_batch_equals_each_image_transformed_alone():
    batch = torch.rand(4, 3, 32, 32)
    one_by_one = torch.stack([polar_transform(image, (16, 64)) for image in batch])
    assert torch.equal(polar_transform(batch, (16, 64)), one_by_one)
