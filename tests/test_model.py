"""The SAIG architecture as published: parameter counts, token grid, descriptors."""
import pytest
import torch

from saig_core import InputError, build_model, count_parameters


@pytest.mark.parametrize(
    "preset, pool, expected",
    [
        ("saig_s", "gap", 18_201_600),
        ("saig_s", "smd", 19_256_848),
        ("saig_d", "gap", 31_228_416),
        ("saig_d", "smd", 32_283_664),
    ],
)
def test_parameter_counts_match_the_published_models(preset, pool, expected):
    assert count_parameters(build_model(preset, pool=pool)) == expected


def test_one_branch_has_the_published_stem_and_block_sizes():
    model = build_model("saig_s")
    assert count_parameters(model.ground.backbone.patch_embed) == 2_488_320
    assert count_parameters(model.ground.backbone.blocks[0]) == 592_128


def test_token_grid_follows_the_image_size():
    model = build_model("saig_micro", ground_size=(64, 256), aerial_size=(96, 96))
    assert model.ground.backbone.pos_embed.shape[1] == 4 * 16
    assert model.aerial.backbone.pos_embed.shape[1] == 6 * 6


@pytest.mark.parametrize("pool, dim", [("gap", 64), ("smd", 8 * 64)])
def test_descriptors_are_unit_length_float32(pool, dim):
    model = build_model("saig_micro", pool=pool, ground_size=(32, 128), aerial_size=(64, 64)).eval()
    with torch.no_grad():
        g = model.encode_ground(torch.rand(2, 3, 32, 128) * 2 - 1)
        a = model.encode_aerial(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert g.shape == (2, dim) and a.shape == (3, dim)
    assert g.dtype == a.dtype == torch.float32
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2))


def test_sizes_that_are_not_multiples_of_16_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_model("saig_micro", ground_size=(100, 400))


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(1, 3, 32, 120), "expects 32x128"),
        (torch.rand(1, 4, 32, 128), "RGBA"),
        (torch.full((1, 3, 32, 128), float("nan")), "NaN"),
        (torch.zeros(1, 3, 32, 128, dtype=torch.uint8), "dtype"),
        (torch.rand(3, 32, 128), r"\(B, C, H, W\)"),
    ],
)
def test_bad_inputs_raise_a_clear_error(x, message):
    model = build_model("saig_micro", ground_size=(32, 128), aerial_size=(64, 64)).eval()
    with pytest.raises(InputError, match=message):
        model.encode_ground(x)


def test_grey_input_is_encoded_as_the_same_image_in_rgb():
    model = build_model("saig_micro", ground_size=(32, 128), aerial_size=(64, 64)).eval()
    grey = torch.rand(1, 1, 32, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_ground(grey), model.encode_ground(grey.expand(-1, 3, -1, -1)))
