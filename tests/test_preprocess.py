"""Image conversions before encoding: each odd input is converted as documented or refused clearly."""
import numpy as np
import pytest
import torch
from PIL import Image

from saig_core import InputError, build_model, load_checkpoint, save_checkpoint
from saig_core.data.preprocess import array_to_tensor, image_to_tensor, tensor_to_uint8, to_rgb


def test_rgb_pixels_map_to_minus_one_to_one_channel_first():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 128)
    t = array_to_tensor(rgb)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))
    assert np.array_equal(tensor_to_uint8(t), rgb)


def test_grey_images_become_three_equal_channels():
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, mode="L")
    rgb = np.asarray(to_rgb(grey))
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == np.asarray(grey)).all()


def test_rgba_is_composited_over_black_by_its_alpha():
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [255, 255, 255, 128]]], np.uint8))
    rgb = np.asarray(to_rgb(rgba)).astype(int)
    assert rgb[0, 0].tolist() == [200, 100, 50]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert all(abs(v - 128) <= 1 for v in rgb[0, 2])


def test_sixteen_bit_images_are_scaled_from_their_full_range():
    arr = np.array([[0, 32768, 65535]], np.uint16)
    image = Image.fromarray(arr)
    assert image.mode.startswith("I;16")
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == [0, 127, 255]


def test_palette_images_are_expanded():
    pal = Image.new("P", (2, 2))
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [10, 20, 30]


def test_images_are_resized_to_the_branch_size():
    image = Image.fromarray(np.full((100, 300, 4), 255, np.uint8))  # RGBA, any size
    t = image_to_tensor(image, (32, 128))
    assert t.shape == (3, 32, 128)
    torch.testing.assert_close(t, torch.ones(3, 32, 128))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Image.fromarray(np.zeros((4, 4), np.float32), mode="F"), "cannot convert a F image"),
    ],
)
def test_unconvertible_images_are_refused(make, message):
    with pytest.raises(InputError, match=message):
        to_rgb(make())


@pytest.mark.parametrize("arr", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))])
def test_arrays_that_are_not_uint8_rgb_are_refused(arr):
    with pytest.raises(InputError, match=r"expected an \(H, W, 3\) uint8 array"):
        array_to_tensor(arr)


def test_a_size_that_is_not_a_multiple_of_16_is_refused_when_loading(tmp_path):
    path = save_checkpoint(build_model("saig_micro", ground_size=(32, 128), aerial_size=(64, 64)), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"ground_size 100x400: both sides must be positive multiples of 16"):
        load_checkpoint(path, ground_size=(100, 400))
