"""Where the rasters of a run hold data, on the chip grid: coarse valid masks and the cells of each grid row.

Before any cell is enumerated, each raster's valid-data footprint is read once at a coarse
resolution (about half a stride per mask pixel, at most :data:`MASK_MAX` pixels a side) through
GDAL: the raster's own mask (nodata, alpha, internal mask) or, for rasters with none, its non-black
pixels (the collar rule), decimated with ``average`` (overviews when present) and warped to the
grid CRS by a ``WarpedVRT`` when the raster is in another CRS. Masks are dilated by one pixel, so a
cell is a candidate when any part of it may hold valid data: a mostly-empty raster costs only the
cells near its data.

Cells are enumerated one grid row at a time (row-major, each cell once however many rasters cover
it), so memory holds one row, never the run's cell list; :class:`RowPlan` says which rasters may
cover each cell of the row.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tiling.grid import GridSpec

MASK_MAX = 2048


@dataclass
class Layout:
    """One raster on the grid: its bounds in the grid CRS and a coarse valid mask (True = may hold data)."""

    index: int
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy (grid CRS)
    mask: np.ndarray  # bool (h, w), row 0 at maxy
    res: tuple[float, float]  # mask pixel size x, y (grid units)

    def row_span(self, grid: GridSpec) -> tuple[int, int]:
        """First and last grid row whose cells intersect this raster's bounds."""
        oy, s, c = grid.origin[1], grid.stride, grid.chip_size
        minx, miny, maxx, maxy = self.bounds
        return math.floor((oy - maxy - c) / s) + 1, math.ceil((oy - miny) / s) - 1

    def cols_in_row(self, grid: GridSpec, row: int) -> np.ndarray:
        """Columns of the cells of ``row`` that intersect this raster's valid-data footprint."""
        ox, oy, s, c = grid.origin[0], grid.origin[1], grid.stride, grid.chip_size
        minx, miny, maxx, maxy = self.bounds
        y_top = oy - row * s
        h, w = self.mask.shape
        rx, ry = self.res
        i0 = max(0, math.floor((maxy - y_top) / ry))
        i1 = min(h, math.ceil((maxy - (y_top - c)) / ry))
        col0 = math.floor((minx - ox - c) / s) + 1
        col1 = math.ceil((maxx - ox) / s) - 1
        if i1 <= i0 or col1 < col0:
            return np.empty(0, np.int64)
        line = self.mask[i0:i1].any(axis=0)
        cum = np.concatenate([[0], np.cumsum(line)])
        cols = np.arange(col0, col1 + 1, dtype=np.int64)
        x0 = ox + cols * s
        j0 = np.clip(np.floor((x0 - minx) / rx), 0, w).astype(np.int64)
        j1 = np.clip(np.ceil((x0 + c - minx) / rx), 0, w).astype(np.int64)
        return cols[cum[j1] > cum[j0]]


@dataclass
class RowPlan:
    """The candidate cells of one grid row: columns (ascending), their first run position, and for each
    raster that may cover some of them, which ones (in the run's raster order)."""

    row: int
    cols: np.ndarray
    seq0: int
    cover: list[tuple[int, np.ndarray]]  # (raster index, bool per column)


class RowIndex:
    """The grid rows of a run with their candidate counts, computed once (one int per row)."""

    def __init__(self, grid: GridSpec, layouts: list[Layout], progress: Callable[[int, int], None] | None = None):
        self.grid = grid
        self.layouts = layouts
        spans = np.array([lay.row_span(grid) for lay in layouts], np.int64).reshape(-1, 2)
        self.first_row = int(spans[:, 0].min()) if len(layouts) else 0
        last = int(spans[:, 1].max()) if len(layouts) else -1
        self._spans = spans
        n = max(0, last - self.first_row + 1)
        counts = np.zeros(n, np.int64)
        for i in range(n):
            counts[i] = len(self._cols(self.first_row + i)[0])
            if progress is not None and (i % 64 == 63 or i == n - 1):
                progress(i + 1, n)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    @property
    def total(self) -> int:
        """Candidate cells of the run."""
        return int(self.offsets[-1])

    def _cols(self, row: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        active = np.flatnonzero((self._spans[:, 0] <= row) & (self._spans[:, 1] >= row))
        per = [(int(k), self.layouts[k].cols_in_row(self.grid, row)) for k in active]
        per = [(k, c) for k, c in per if c.size]
        if not per:
            return np.empty(0, np.int64), []
        cols = np.unique(np.concatenate([c for _, c in per]))
        return cols, [(self.layouts[k].index, np.isin(cols, c)) for k, c in per]

    def rows(self, start_seq: int = 0, stop_seq: int | None = None) -> Iterator[RowPlan]:
        """Row plans holding candidates ``start_seq`` .. ``stop_seq`` (whole rows; the caller trims)."""
        stop = self.total if stop_seq is None else min(stop_seq, self.total)
        if start_seq >= stop:
            return
        i = int(np.searchsorted(self.offsets, start_seq, side="right")) - 1
        while i < len(self.offsets) - 1 and self.offsets[i] < stop:
            if self.offsets[i + 1] > self.offsets[i]:
                cols, cover = self._cols(self.first_row + i)
                yield RowPlan(self.first_row + i, cols, int(self.offsets[i]), cover)
            i += 1


def dilate(mask: np.ndarray) -> np.ndarray:
    """A bool mask grown by one pixel in the 8 directions (a cell touching a valid pixel's edge counts)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def mask_shape(bounds: tuple[float, float, float, float], cell: float) -> tuple[int, int]:
    """(h, w) of a coarse mask over ``bounds`` with pixels of about ``cell`` (capped at MASK_MAX a side)."""
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    size = max(cell, width / MASK_MAX, height / MASK_MAX)
    return max(1, math.ceil(height / size)), max(1, math.ceil(width / size))
