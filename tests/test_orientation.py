"""The orientation-aware sector head: masking by field of view, rotation search, heading estimates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from saig_core.data.transforms import limited_fov_to_input
from saig_core.model.config import BackboneConfig, ModelConfig
from saig_core.model.orientation import (
    SectorPool,
    canvas_coverage,
    mean_similarity_scale,
    rotate_sectors,
    rotated_canvases,
    rotation_shifts,
    sector_blocks,
)
from saig_core.model.saig_model import SAIGModel
from saig_core.training.losses import sector_loss

SMALL = BackboneConfig(depth=1, dim=32, heads=2, stem_channels=(8, 16, 32, 32), stem_strides=(2, 2, 2, 2))


def _model(sectors: int = 8) -> SAIGModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=SMALL, pool="sector", sectors=sectors, ground_size=(32, 128), aerial_size=(32, 128))
    return SAIGModel(cfg).eval()


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))


def test_a_90_degree_photo_at_heading_90_covers_the_two_sectors_from_45_to_135():
    canvas = limited_fov_to_input(_photo(), (32, 128), 90.0, "canvas", 90.0)
    cov = canvas_coverage(canvas[None], 8)[0]
    assert cov.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_panorama_covers_every_sector():
    pano = torch.rand(1, 3, 32, 128) * 2 - 1
    assert canvas_coverage(pano, 8).tolist() == [[1.0] * 8]


def test_the_ground_descriptor_is_zero_outside_the_covered_sectors():
    model = _model()
    canvas = limited_fov_to_input(_photo(), (32, 128), 90.0, "canvas", 90.0)
    blocks = sector_blocks(model.encode_ground(canvas[None]), 8)[0]
    norms = blocks.norm(dim=1)
    assert torch.all(norms[[0, 3, 4, 5, 6, 7]] == 0)
    assert torch.allclose(norms[1:3], torch.full((2,), 1 / math.sqrt(2)))


def test_the_score_of_a_masked_query_ignores_the_aerial_sectors_it_does_not_see():
    model = _model()
    canvas = limited_fov_to_input(_photo(), (32, 128), 90.0, "canvas", 90.0)
    q = model.encode_ground(canvas[None]).detach()
    a = F.normalize(torch.randn(1, 8, 32), dim=2)
    b = a.clone()
    b[:, [0, 4, 6]] = F.normalize(torch.randn(1, 3, 32), dim=2)  # other content where the photo does not look
    score = lambda x: float(q @ (x.flatten(1) / math.sqrt(8)).t())  # noqa: E731
    assert score(a) == pytest.approx(score(b), abs=1e-6)
    # and the mean-similarity scale makes it the mean of the two covered sectors' cosines
    qb = sector_blocks(q, 8)[0]
    expected = float(sum(F.normalize(qb[s], dim=0) @ a[0, s] for s in (1, 2)) / 2)
    assert score(a) * float(mean_similarity_scale(q, 8)[0]) == pytest.approx(expected, abs=1e-5)


def test_sector_pool_weights_each_unit_sector_by_its_coverage():
    pool = SectorPool((2, 8), 4)
    tokens = torch.randn(3, 16, 5)
    out = sector_blocks(pool(tokens, torch.tensor([[1.0, 0.5, 0.0, 1.0]] * 3)), 4)
    assert torch.allclose(out.norm(dim=2), torch.tensor([[1.0, 0.5, 0.0, 1.0]] * 3), atol=1e-6)


def test_rolling_the_canvas_moves_the_view_by_whole_rotations():
    canvas = limited_fov_to_input(_photo(), (32, 128), 90.0, "canvas", None)  # centred: heading 180
    batch, offsets = rotated_canvases(canvas, 32)
    assert offsets[:3] == [0.0, 11.25, 22.5] and len(offsets) == 32
    at_270 = limited_fov_to_input(_photo(), (32, 128), 90.0, "canvas", 270.0)
    assert torch.equal(batch[offsets.index(90.0)], at_270)
    assert rotation_shifts(128, 8) == [0, 16, 32, 48, 64, 80, 96, 112]


def test_rotation_search_recovers_a_known_rotation_of_the_aerial_sectors():
    rng = torch.Generator().manual_seed(1)
    aerial = F.normalize(torch.randn(1, 8, 16, generator=rng), dim=2)
    truth = 3  # the photo looks at sectors 3 and 4 of the aerial
    ground = torch.zeros(1, 8, 16)
    ground[0, 3:5] = aerial[0, 3:5] + 0.1 * torch.randn(2, 16, generator=rng)
    ground = F.normalize(F.normalize(ground, dim=2).flatten(1), dim=1)
    centred = rotate_sectors(ground, -truth, 8)  # what a heading-less photo gives: its view at sector 0
    queries = torch.cat([rotate_sectors(centred, k, 8) for k in range(8)])
    a = aerial.flatten(1) / math.sqrt(8)
    scores = (queries @ a.t())[:, 0] * mean_similarity_scale(queries, 8)
    assert int(torch.argmax(scores)) == truth
    assert float(scores[truth]) > 0.8


def test_the_sector_loss_prefers_the_right_rotation_and_place():
    rng = torch.Generator().manual_seed(2)
    a = F.normalize(torch.randn(6, 4, 8, generator=rng), dim=2).flatten(1) / 2
    good = sector_loss(a.clone(), a, sectors=4)
    rotated = sector_loss(rotate_sectors(a, 1, 4), a, sectors=4)
    assert good < rotated
    assert sector_loss(a, a, sectors=4, kind="info_nce") < sector_loss(rotate_sectors(a, 1, 4), a, sectors=4,
                                                                          kind="info_nce")


def test_a_sector_model_needs_sectors_that_divide_both_token_grids():
    with pytest.raises(ValueError, match="sectors 3 must divide"):
        ModelConfig(backbone=SMALL, pool="sector", sectors=3, ground_size=(32, 128), aerial_size=(32, 128))
    assert ModelConfig(backbone=SMALL, pool="sector", sectors=4, ground_size=(32, 128),
                       aerial_size=(32, 128)).descriptor_dim == 4 * 32
