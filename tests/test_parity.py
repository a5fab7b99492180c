"""Descriptors of a model loaded from an authors' checkpoint equal the documented computation.

The reference (tests/authors_reference.py) is written from saig-reference.md with plain tensor
operations in float64; our fp32 model must agree to fp32 precision for both branches and both heads.
"""
import pytest
import torch
from authors_reference import authors_state_dict, reference_descriptor

from saig_core import load_checkpoint

GROUND, AERIAL = (32, 128), (64, 64)  # token grids 2x8 (row-major order matters) and 4x4


@pytest.fixture(scope="module", params=["gap", "smd"])
def authors_file(request, tmp_path_factory):
    smd = request.param == "smd"
    state = authors_state_dict(depth=3, ground_tokens=16, aerial_tokens=16, smd=smd, seed=7)
    path = tmp_path_factory.mktemp("authors") / f"model_checkpoint_{request.param}.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": []}]},
                "epoch": 12, "best_acc": 91.5}, path)
    return path, state, smd, load_checkpoint(path, ground_size=GROUND, aerial_size=AERIAL)


@pytest.mark.parametrize("branch, prefix, size", [("ground", "model_grd.", GROUND), ("aerial", "model_sat.", AERIAL)])
def test_descriptors_equal_the_documented_forward_pass(authors_file, branch, prefix, size):
    path, state, smd, model = authors_file
    assert model.cfg.pool == ("smd" if smd else "gap") and model.cfg.backbone.depth == 3
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = getattr(model, f"encode_{branch}")(images)
    expected = reference_descriptor(state, prefix, images, smd).float()
    assert ours.shape == expected.shape == (3, 384 * (8 if smd else 1))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # the weights are non-trivial: different images give clearly different descriptors
    assert (expected[0] @ expected[1]).item() < 0.99


def test_token_order_is_row_major(authors_file):
    """Transposing the image (column-major tokens) must change the ground descriptor: order matters."""
    path, state, smd, model = authors_file
    image = torch.rand(1, 3, *GROUND, generator=torch.Generator().manual_seed(2)) * 2 - 1
    flipped = image.flip(-1)
    with torch.no_grad():
        a, b = model.encode_ground(image), model.encode_ground(flipped)
    torch.testing.assert_close(b, reference_descriptor(state, "model_grd.", flipped, smd).float(), atol=1e-5, rtol=0)
    assert not torch.allclose(a, b, atol=1e-3)
