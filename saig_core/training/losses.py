"""Cross-view retrieval losses on L2-normalised descriptors.

Row ``i`` of ``ground`` and row ``i`` of ``aerial`` are a matching pair; every other row of the
batch is a negative. Distances are squared L2 distances of unit vectors, ``d = 2 - 2 cos``, and
``d[i, j]`` compares ground ``i`` with aerial ``j``. Every loss is the mean of its two directions:
ground anchors against aerial candidates (rows of ``d``) and aerial anchors against ground
candidates (columns of ``d``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "build_loss", "hard_negative_triplet", "info_nce", "pair_distances", "sector_loss",
           "soft_margin_triplet"]

LOSSES = ("soft_margin_triplet", "hard_negative_triplet", "info_nce", "sector_triplet", "sector_info_nce")


def pair_distances(ground: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
    """(B, B) squared L2 distances ``2 - 2 <g_i, a_j>`` of L2-normalised descriptors."""
    _check_pairs(ground, aerial)
    return 2.0 - 2.0 * (_f32(ground) @ _f32(aerial).t())


def soft_margin_triplet(
    ground: torch.Tensor, aerial: torch.Tensor, alpha: float = 10.0, authors_unmasked: bool = False
) -> torch.Tensor:
    """Weighted soft-margin triplet over every in-batch pair, both directions.

    ground -> aerial: mean over i != j of ``log(1 + exp(alpha (d_ii - d_ij)))``; aerial -> ground
    the same on the transposed matrix; the loss is the mean of the two.

    ``authors_unmasked=True`` reproduces the authors' form: the i = j terms (each ``log 2``) are
    summed too while the sum is still divided by ``B (B - 1)``.
    """
    d = pair_distances(ground, aerial)
    b = d.shape[0]
    pos = d.diagonal()
    g2a = F.softplus(alpha * (pos[:, None] - d))  # row i: anchor ground i, negative aerial j
    a2g = F.softplus(alpha * (pos[None, :] - d))  # column j: anchor aerial j, negative ground i
    if not authors_unmasked:
        off = ~torch.eye(b, dtype=torch.bool, device=d.device)
        g2a, a2g = g2a[off], a2g[off]
    denom = b * (b - 1)
    return (g2a.sum() / denom + a2g.sum() / denom) / 2


def hard_negative_triplet(
    ground: torch.Tensor, aerial: torch.Tensor, alpha: float = 10.0, k: int | None = None
) -> torch.Tensor:
    """The soft-margin term over the ``k`` hardest (closest) negatives of each anchor, both directions.

    ``k`` defaults to ``floor(sqrt(B))`` and is capped at ``B - 1``.
    """
    d = pair_distances(ground, aerial)
    b = d.shape[0]
    k = math.isqrt(b) if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, b - 1)
    pos = d.diagonal()
    eye = torch.eye(b, dtype=torch.bool, device=d.device)
    masked = d.masked_fill(eye, float("inf"))  # a positive is never its own negative
    g_hard = masked.topk(k, dim=1, largest=False).values  # (B, k) per ground anchor
    a_hard = masked.t().topk(k, dim=1, largest=False).values  # (B, k) per aerial anchor
    g2a = F.softplus(alpha * (pos[:, None] - g_hard)).mean()
    a2g = F.softplus(alpha * (pos[:, None] - a_hard)).mean()
    return (g2a + a2g) / 2


def info_nce(
    ground: torch.Tensor, aerial: torch.Tensor, temperature: float = 0.02, symmetric: bool = True
) -> torch.Tensor:
    """InfoNCE over cosine similarities divided by ``temperature``.

    ``symmetric=True`` (default): the mean of the ground -> aerial and aerial -> ground
    cross-entropies over the (B, B) similarity matrix. ``symmetric=False``: the authors' form, one
    softmax per aerial anchor ``i`` over ``2B - 1`` logits: its similarity to every ground image,
    then the similarities of ground ``i`` to every other aerial image (the duplicate positive
    dropped); the positive is logit ``i``.
    """
    _check_pairs(ground, aerial)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    sim = _f32(ground) @ _f32(aerial).t() / temperature  # sim[i, j] = <g_i, a_j>
    b = sim.shape[0]
    target = torch.arange(b, device=sim.device)
    if symmetric:
        return (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2
    a_vs_g = sim.t()  # row i: aerial i against all ground images (positive at i)
    g_vs_a = sim  # row i: ground i against all aerial images
    off = ~torch.eye(b, dtype=torch.bool, device=sim.device)
    extra = g_vs_a[off].view(b, b - 1)  # ground i against the other aerial images
    return F.cross_entropy(torch.cat([a_vs_g, extra], dim=1), target)


def sector_loss(ground: torch.Tensor, aerial: torch.Tensor, sectors: int, kind: str = "triplet",
                alpha: float = 10.0, temperature: float = 0.05, rotation_weight: float = 0.5) -> torch.Tensor:
    """Loss of an orientation-aware (sector) model; ground descriptors may be masked to a field of view.

    Similarities are the coverage-weighted mean sector similarities (``saig_core.model.orientation``),
    so views of every width are on one scale. Besides the in-batch negatives (both directions, as in
    the other losses), each ground view is pushed away from its own aerial rotated by every other
    whole sector: that is what makes the rotation search (the heading estimate) pick the right one.
    ``kind`` is ``triplet`` (soft margin, ``alpha``) or ``info_nce`` (``temperature``).
    """
    from saig_core.model.orientation import mean_similarity_scale, rotate_sectors

    _check_pairs(ground, aerial)
    g, a = _f32(ground), _f32(aerial)
    scale = mean_similarity_scale(g, sectors)
    sim = (g @ a.t()) * scale[:, None]  # sim[i, j]: ground i against aerial j
    pos = sim.diagonal()
    rot = torch.stack([(g * rotate_sectors(a, k, sectors)).sum(1) for k in range(1, sectors)], dim=1) * scale[:, None]
    b = sim.shape[0]
    if kind == "info_nce":
        target = torch.arange(b, device=sim.device)
        g2a = F.cross_entropy(torch.cat([sim, rot], dim=1) / temperature, target)
        return (g2a + F.cross_entropy(sim.t() / temperature, target)) / 2
    off = ~torch.eye(b, dtype=torch.bool, device=sim.device)
    g2a = F.softplus(2 * alpha * (sim - pos[:, None]))[off].mean()
    a2g = F.softplus(2 * alpha * (sim - pos[None, :]))[off].mean()
    rotation = F.softplus(2 * alpha * (rot - pos[:, None])).mean()  # d = 2 - 2 sim, as above
    return (g2a + a2g) / 2 + rotation_weight * rotation


def build_loss(name: str, **kwargs):
    """The loss function ``name`` (one of :data:`LOSSES`) with its keyword arguments bound."""
    fns: dict[str, Callable[..., torch.Tensor]] = {
           "soft_margin_triplet": soft_margin_triplet, "hard_negative_triplet": hard_negative_triplet,
           "info_nce": info_nce,
           "sector_triplet": lambda g, a, **kw: sector_loss(g, a, kind="triplet", **kw),
           "sector_info_nce": lambda g, a, **kw: sector_loss(g, a, kind="info_nce", **kw)}
    if name not in fns:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    fn = fns[name]

    def loss(ground: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
        return fn(ground, aerial, **kwargs)

    loss.__name__ = name
    return loss


def _check_pairs(ground: torch.Tensor, aerial: torch.Tensor) -> None:
    if ground.ndim != 2 or ground.shape != aerial.shape:
        raise ValueError(f"expected two (B, D) descriptor batches of one shape, got {tuple(ground.shape)} "
                         f"and {tuple(aerial.shape)}")
    if ground.shape[0] < 2:
        raise ValueError("a contrastive loss needs at least 2 pairs in the batch")


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision descriptors from autocast are promoted; float64 stays)."""
    return x if x.dtype == torch.float64 else x.float()
