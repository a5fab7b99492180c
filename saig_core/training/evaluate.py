"""Retrieval metrics exactly per the cross-view protocol: ground queries against an aerial gallery.

For query ``i`` count the gallery items *strictly* closer than its true match; R@k is the fraction
of queries whose count is below ``k`` (ties are resolved in the query's favour). Top-1 % uses
``k = floor(0.01 N) + 1`` for a gallery of ``N``. VIGOR's hit rate counts a query as a hit when no
gallery item is strictly closer than the closest of its positive and semi-positive images.

Descriptors are L2-normalised, so ranking by dot product is ranking by distance. Similarities are
computed a block of queries at a time (``max_block_bytes`` bounds the block), so 100k x 100k
evaluations fit in a few hundred MB.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "closer_counts",
    "recall_at_k",
    "recall_from_counts",
    "retrieval_metrics",
    "top_percent_k",
]

DEFAULT_BLOCK_BYTES = 1 << 26  # 64 MiB of float32 similarities per block


def top_percent_k(gallery_size: int) -> int:
    """The k of "top-1 %": ``floor(0.01 N) + 1`` (89 for N = 8,884)."""
    return gallery_size // 100 + 1


def closer_counts(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    positive: torch.Tensor | Sequence[int] | None = None,
    semi_positives: torch.Tensor | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per query, the number of gallery items strictly closer than its positive (int64, (Q,)).

    ``positive[i]`` is the gallery index of query ``i``'s match (default ``i``). With
    ``semi_positives`` (Q, S) (gallery indices, -1 = none) the second result counts the items
    strictly closer than the best of the positive and the semi-positives (0 means a VIGOR hit).
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"expected (Q, D) queries and (N, D) gallery, got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    q, n = queries.shape[0], gallery.shape[0]
    device = gallery.device
    if positive is None:
        if q != n:
            raise ValueError("without positive indices, queries and gallery must pair row by row")
        positive = torch.arange(q, device=device)
    positive = torch.as_tensor(positive, dtype=torch.long, device=device)
    if positive.shape != (q,) or (q and (int(positive.min()) < 0 or int(positive.max()) >= n)):
        raise ValueError(f"positive must hold {q} gallery indices in [0, {n})")
    gallery = gallery.float()
    block = max(1, max_block_bytes // (4 * max(n, 1)))
    counts = torch.empty(q, dtype=torch.long, device=device)
    hits = torch.empty(q, dtype=torch.long, device=device) if semi_positives is not None else None
    if semi_positives is not None:
        semi_positives = torch.as_tensor(semi_positives, dtype=torch.long, device=device).reshape(q, -1)
    for start in range(0, q, block):
        stop = min(q, start + block)
        sim = queries[start:stop].to(device).float() @ gallery.t()  # (b, N)
        rows = torch.arange(stop - start, device=device)
        pos_sim = sim[rows, positive[start:stop]]  # taken from the same product: exact ties stay ties
        counts[start:stop] = (sim > pos_sim[:, None]).sum(dim=1)
        if hits is not None and semi_positives is not None:  # both set together, above
            semi = semi_positives[start:stop]
            semi_sim = sim.gather(1, semi.clamp(min=0)).masked_fill(semi < 0, float("-inf"))
            best = torch.maximum(pos_sim, semi_sim.max(dim=1).values)
            hits[start:stop] = (sim > best[:, None]).sum(dim=1)
    return counts, hits


def recall_from_counts(counts: torch.Tensor, gallery_size: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"R@k": fraction, ..., "R@1%": fraction}`` from strictly-closer counts."""
    if counts.numel() == 0:
        raise ValueError("no queries to evaluate")
    n = counts.numel()
    out = {f"R@{k}": int((counts < k).sum()) / n for k in ks}
    out["R@1%"] = int((counts < top_percent_k(gallery_size)).sum()) / n
    return out


def recall_at_k(
    ground: torch.Tensor,
    aerial: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    positive: torch.Tensor | Sequence[int] | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> dict[str, float]:
    """R@k (each k in ``ks``) and R@1% of ground queries against the aerial gallery, as fractions.

    Row ``i`` of ``ground`` matches row ``i`` of ``aerial`` unless ``positive`` gives the gallery
    index of each query's match (VIGOR, where the gallery is not one image per query).
    """
    counts, _ = closer_counts(ground, aerial, positive, max_block_bytes=max_block_bytes)
    return recall_from_counts(counts, aerial.shape[0], ks)


def retrieval_metrics(
    ground: torch.Tensor,
    aerial: torch.Tensor,
    positive: torch.Tensor | Sequence[int] | None = None,
    semi_positives: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> dict[str, float]:
    """:func:`recall_at_k` plus ``"hit"`` (VIGOR hit rate) when ``semi_positives`` are given."""
    counts, hits = closer_counts(ground, aerial, positive, semi_positives, max_block_bytes)
    out = recall_from_counts(counts, aerial.shape[0], ks)
    if hits is not None:
        out["hit"] = int((hits == 0).sum()) / hits.numel()
    return out
