"""recall_at_k and the VIGOR hit rate against hand-computed cases and a brute-force reference with ties."""
from __future__ import annotations

import itertools

import pytest
import torch

from saig_core.evaluate import recall_at_k, retrieval_metrics, top_percent_k


def test_top_one_percent_k_follows_the_protocol():
    assert top_percent_k(8884) == 89
    assert top_percent_k(99) == 1
    assert top_percent_k(100) == 2


def test_recall_on_a_hand_computed_gallery_counts_ties_in_the_query_s_favour():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # query 0: nothing strictly closer (ties with 1, 2) -> rank 0; query 1: same;
    # query 2: its match has sim 0, the others too -> rank 0.
    assert recall_at_k(g, a, ks=(1,)) == {"R@1": 1.0, "R@1%": 1.0}
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # query 0: sims [0, 1, 1], match 0 -> 2 closer; query 1: sims [0, 1, 1], match 1 -> 0 closer (tie);
    # query 2: sims [1, 0, 0], match 2 -> 1 closer. Counts [2, 0, 1].
    r = recall_at_k(g, a, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0, "R@1%": 1 / 3})


def _quantised_unit_vectors(n: int, d: int, seed: int) -> torch.Tensor:
    """Vectors with four entries of +-0.5: exactly unit length, dot products exact multiples of 0.25."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, d)
    for i in range(n):
        idx = torch.randperm(d, generator=gen)[:4]
        out[i, idx] = 0.5 * (torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1)
    return out


def _brute_force_counts(g: torch.Tensor, a: torch.Tensor, positive: list[int]) -> list[int]:
    counts = []
    for i in range(g.shape[0]):
        dist = [float(((g[i].double() - a[j].double()) ** 2).sum()) for j in range(a.shape[0])]
        counts.append(sum(1 for j in range(a.shape[0]) if dist[j] < dist[positive[i]]))
    return counts


@pytest.mark.parametrize("block_bytes", [1 << 28, 4 * 150 * 3])  # one block, and blocks of 3 queries
def test_recall_equals_brute_force_distances_on_random_data_with_many_ties(block_bytes):
    g = _quantised_unit_vectors(150, 6, seed=0)
    a = _quantised_unit_vectors(150, 6, seed=1)
    counts = _brute_force_counts(g, a, list(range(150)))
    assert sum(1 for i, j in itertools.combinations(range(150), 2) if torch.equal(a[i], a[j])) > 0  # ties exist
    expected = {f"R@{k}": sum(c < k for c in counts) / 150 for k in (1, 5, 10)}
    expected["R@1%"] = sum(c < 2 for c in counts) / 150
    assert recall_at_k(g, a, max_block_bytes=block_bytes) == pytest.approx(expected, abs=1e-12)


def test_recall_with_explicit_positive_indices_and_a_larger_gallery():
    g = _quantised_unit_vectors(40, 5, seed=2)
    a = _quantised_unit_vectors(120, 5, seed=3)
    positive = torch.randint(0, 120, (40,), generator=torch.Generator().manual_seed(4))
    counts = _brute_force_counts(g, a, positive.tolist())
    r = recall_at_k(g, a, ks=(1, 3), positive=positive, max_block_bytes=4 * 120 * 7)
    assert r == pytest.approx({"R@1": sum(c < 1 for c in counts) / 40, "R@3": sum(c < 3 for c in counts) / 40,
                               "R@1%": sum(c < 2 for c in counts) / 40})


def test_vigor_hit_counts_a_semi_positive_at_the_top_as_a_hit():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    # query 0: positive 0 (sim .6); gallery item 1 (sim 1) is its semi-positive -> hit, R@1 miss
    # query 1: positive 2 (sim 1) -> hit and R@1
    m = retrieval_metrics(g, a, positive=[0, 2], semi_positives=torch.tensor([[1, -1], [3, -1]]), ks=(1,))
    assert m["R@1"] == 0.5 and m["hit"] == 1.0
    m = retrieval_metrics(g, a, positive=[0, 2], semi_positives=torch.tensor([[3, -1], [-1, -1]]), ks=(1,))
    assert m["hit"] == 0.5


def test_recall_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 4), torch.zeros(3, 5))
