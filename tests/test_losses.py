"""The three retrieval losses against values computed by hand, brute-force loops and gradient checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saig_core.losses import build_loss, hard_negative_triplet, info_nce, soft_margin_triplet


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


# ground g0=(1,0), g1=(0,1); aerial a0=(0.6,0.8), a1=(0,1): cos = [[0.6, 0], [0.8, 1]],
# d = 2 - 2 cos = [[0.8, 2.0], [0.4, 0.0]]
G = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
A = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)


def test_soft_margin_triplet_matches_hand_computed_two_pair_batch():
    g2a = (sp(0.8 - 2.0) + sp(0.0 - 0.4)) / 2  # anchors ground 0, ground 1
    a2g = (sp(0.8 - 0.4) + sp(0.0 - 2.0)) / 2  # anchors aerial 0, aerial 1
    assert soft_margin_triplet(G, A, alpha=1.0).item() == pytest.approx((g2a + a2g) / 2, rel=1e-12)


def test_soft_margin_triplet_authors_unmasked_form_adds_the_diagonal_log2_terms():
    masked = soft_margin_triplet(G, A, alpha=1.0).item()
    unmasked = soft_margin_triplet(G, A, alpha=1.0, authors_unmasked=True).item()
    # each direction gains B terms of log 2, still divided by B(B-1) = 2
    assert unmasked == pytest.approx(masked + math.log(2.0), rel=1e-12)


def test_soft_margin_triplet_default_alpha_is_ten():
    assert soft_margin_triplet(G, A).item() == pytest.approx(soft_margin_triplet(G, A, alpha=10.0).item())


def _random_pairs(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    g = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    a = F.normalize(g + 0.8 * torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    return g, a


def _hard_negative_by_loops(g, a, alpha, k):
    b = g.shape[0]
    d = [[2 - 2 * float(g[i] @ a[j]) for j in range(b)] for i in range(b)]
    total = []
    for direction in ("g2a", "a2g"):
        terms = []
        for i in range(b):
            if direction == "g2a":
                negs = sorted(d[i][j] for j in range(b) if j != i)[:k]
            else:
                negs = sorted(d[j][i] for j in range(b) if j != i)[:k]
            terms += [sp(alpha * (d[i][i] - n)) for n in negs]
        total.append(sum(terms) / len(terms))
    return sum(total) / 2


def test_hard_negative_triplet_uses_the_floor_sqrt_b_hardest_negatives_by_default():
    g, a = _random_pairs(10, 6, seed=1)  # k = floor(sqrt(10)) = 3
    expected = _hard_negative_by_loops(g, a, alpha=10.0, k=3)
    assert hard_negative_triplet(g, a).item() == pytest.approx(expected, rel=1e-10)
    assert hard_negative_triplet(g, a, k=5).item() == pytest.approx(_hard_negative_by_loops(g, a, 10.0, 5), rel=1e-10)


def test_hard_negative_triplet_with_all_negatives_equals_soft_margin_triplet():
    g, a = _random_pairs(6, 4, seed=2)
    assert hard_negative_triplet(g, a, alpha=3.0, k=5).item() == pytest.approx(
        soft_margin_triplet(g, a, alpha=3.0).item(), rel=1e-10)


def test_info_nce_symmetric_matches_hand_computed_cross_entropies():
    # sim = [[0.6, 0], [0.8, 1]], temperature 1
    rows = (-math.log(math.exp(0.6) / (math.exp(0.6) + 1)) - math.log(math.e / (math.exp(0.8) + math.e))) / 2
    cols = (-math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8))) - math.log(math.e / (1 + math.e))) / 2
    assert info_nce(G, A, temperature=1.0).item() == pytest.approx((rows + cols) / 2, rel=1e-12)


def test_info_nce_authors_form_is_one_softmax_over_2b_minus_1_logits():
    # aerial 0: [sim(a0,g0)=0.6, sim(a0,g1)=0.8, sim(g0,a1)=0]; aerial 1: [0, 1, sim(g1,a0)=0.8]
    l0 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8) + 1))
    l1 = -math.log(math.e / (1 + math.e + math.exp(0.8)))
    assert info_nce(G, A, temperature=1.0, symmetric=False).item() == pytest.approx((l0 + l1) / 2, rel=1e-12)


def test_info_nce_default_temperature_is_0_02():
    g, a = _random_pairs(5, 3, seed=3)
    assert info_nce(g, a).item() == pytest.approx(info_nce(g, a, temperature=0.02).item())


@pytest.mark.parametrize("name,kwargs", [
    ("soft_margin_triplet", {"alpha": 2.0}),
    ("soft_margin_triplet", {"alpha": 2.0, "authors_unmasked": True}),
    ("hard_negative_triplet", {"alpha": 2.0, "k": 2}),
    ("info_nce", {"temperature": 0.5}),
    ("info_nce", {"temperature": 0.5, "symmetric": False}),
])
def test_loss_gradients_match_finite_differences(name, kwargs):
    g, a = _random_pairs(5, 4, seed=4)
    g.requires_grad_(True)
    a.requires_grad_(True)
    loss = build_loss(name, **kwargs)
    assert torch.autograd.gradcheck(loss, (g, a), eps=1e-6, atol=1e-7)


def test_losses_fall_when_pairs_get_closer_and_accept_half_precision():
    g, a = _random_pairs(8, 16, seed=5)
    closer = F.normalize(g + 0.1 * (a - g), dim=1)
    for name in ("soft_margin_triplet", "hard_negative_triplet", "info_nce"):
        fn = build_loss(name)
        assert fn(g, closer) < fn(g, a)
        assert fn(g.bfloat16(), a.bfloat16()).dtype == torch.float32


def test_losses_reject_mismatched_or_single_pair_batches():
    with pytest.raises(ValueError, match="at least 2"):
        soft_margin_triplet(G[:1], A[:1])
    with pytest.raises(ValueError, match="one shape"):
        info_nce(G, A[:1])
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("contrastive")
