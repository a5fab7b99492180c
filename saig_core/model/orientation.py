"""Orientation-aware retrieval: one descriptor per azimuth sector, an extension of SAIG.

The backbone is unchanged (conv stem + attention-only blocks). Only the pooling differs:

* The aerial branch sees a **polar-transformed** chip (``saig_core.data.transforms.polar_transform``):
  its token columns are azimuths around the chip centre, clockwise from north, as a panorama's are.
* The ground branch sees a north-aligned panorama, or a limited field-of-view photo pasted into a
  north-aligned canvas at its heading (exact 0 elsewhere, see ``limited_fov_to_input``).
* :class:`SectorPool` averages each branch's tokens per azimuth sector (token columns grouped into
  ``S`` equal sectors), L2-normalises each sector descriptor and concatenates them (``S * C``). On
  the ground side each sector is weighted by the fraction of its pixel columns the view covers
  (:func:`canvas_coverage`), so a photo's descriptor is **masked** to the sectors it sees.

After the model's final L2 normalisation, the inner product of a ground descriptor with an aerial
one is ``sum_s w_s <g_s, a_s> / (|w| sqrt(S))``: one FAISS inner-product search matches only the
covered sectors. :func:`mean_similarity_scale` turns it into the coverage-weighted mean sector
similarity, comparable between queries of different coverage (used to compare rotations).

Without a heading, the photo is searched at every rotation of the canvas (one batch of queries in
one FAISS call); the rotation whose best candidate scores highest is the **heading estimate**.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SectorPool(nn.Module):
    """Tokens (B, rows*cols, C) of a (rows, cols) grid -> per-sector descriptors (B, S*C), sector major."""

    def __init__(self, grid: tuple[int, int], sectors: int) -> None:
        super().__init__()
        rows, cols = grid
        if sectors < 1 or cols % sectors:
            raise ValueError(f"{sectors} sectors do not divide {cols} token columns")
        self.grid, self.sectors = (rows, cols), sectors

    def forward(self, tokens: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sector mean of the tokens, each L2-normalised and weighted by ``coverage`` (B, S) if given."""
        b, _, c = tokens.shape
        rows, cols = self.grid
        x = tokens.reshape(b, rows, cols, c).mean(dim=1)  # (B, cols, C): one vector per azimuth column
        x = x.reshape(b, self.sectors, cols // self.sectors, c).mean(dim=2)  # (B, S, C)
        x = F.normalize(x.float(), dim=2)
        if coverage is not None:
            x = x * coverage[:, :, None].to(x.dtype)
        return x.flatten(1)


def canvas_coverage(x: torch.Tensor, sectors: int) -> torch.Tensor:
    """Fraction of each sector's pixel columns that hold any view, (B, 3, H, W) -> (B, S).

    A canvas column is empty when every value in it is exactly 0 (the normalised mid-grey fill of
    ``limited_fov_to_input``); a uint8 image never normalises to exactly 0, so real pixels always count.
    """
    b, _, _, w = x.shape
    if w % sectors:
        raise ValueError(f"{sectors} sectors do not divide an input {w} pixels wide")
    seen = (x != 0).flatten(1, 2).any(dim=1)  # (B, W)
    return seen.reshape(b, sectors, w // sectors).float().mean(dim=2)


def sector_blocks(desc: torch.Tensor, sectors: int) -> torch.Tensor:
    """(B, S*C) descriptors -> (B, S, C) sector blocks."""
    return desc.reshape(desc.shape[0], sectors, -1)


def mean_similarity_scale(query: torch.Tensor, sectors: int) -> torch.Tensor:
    """Per-query factor (B,) turning ``<query, aerial>`` into the coverage-weighted mean sector similarity.

    With unit sector blocks weighted ``w_s`` and a unit aerial of ``S`` unit blocks, the factor is
    ``sqrt(S) / sum_s |q_s|``; 0 for an empty query.
    """
    norms = sector_blocks(query.float(), sectors).norm(dim=2).sum(dim=1)
    scale = math.sqrt(sectors) / norms.clamp_min(1e-12)
    return torch.where(norms > 0, scale, torch.zeros_like(scale))


def rotate_sectors(desc: torch.Tensor, shift: int, sectors: int) -> torch.Tensor:
    """Descriptors with their sector blocks rolled by ``shift`` sectors (sector s moves to s + shift)."""
    return torch.roll(sector_blocks(desc, sectors), shifts=shift, dims=1).flatten(1)


def rotation_shifts(width: int, rotations: int) -> list[int]:
    """Column shifts of a ``width``-pixel canvas for ``rotations`` equally spaced headings (0 first)."""
    if rotations < 1 or rotations > width:
        raise ValueError(f"rotations must be within 1..{width}, got {rotations}")
    return [round(k * width / rotations) % width for k in range(rotations)]


def rotated_canvases(canvas: torch.Tensor, rotations: int) -> tuple[torch.Tensor, list[float]]:
    """A canvas (3, H, W) rolled to every rotation: (R, 3, H, W) and the heading offset of each in degrees."""
    w = canvas.shape[-1]
    shifts = rotation_shifts(w, rotations)
    batch = torch.stack([torch.roll(canvas, shifts=s, dims=-1) for s in shifts])
    return batch, [360.0 * s / w for s in shifts]


def best_rotation(scores: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Index of the rotation whose best candidate scores highest, from scores (R, k) sorted best first."""
    top = scores[:, 0]
    return int(torch.argmax(top)), top


__all__ = [
    "SectorPool", "best_rotation", "canvas_coverage", "mean_similarity_scale", "rotate_sectors",
    "rotated_canvases", "rotation_shifts", "sector_blocks",
]
