"""Refined positions: re-scoring a fine grid around the best candidates with aerial views cut on the fly.

Retrieval ranks the chips of the index's grid, one every ``stride`` (16 m in the demo). Refinement
takes the best distinct places among the candidates (:attr:`RefineOptions.places`, at least two
radii apart) and scores a fine square grid around each -- every ``step`` (default stride / 4) within
``radius`` (default one stride) in x and y -- by cutting an aerial view centred on each grid point
from the orthophotos the index was built from and encoding it with the index's model. The views are
cut exactly as the index's chips are (same ground size, pixel size, validity rule, contrast stretch,
polar transform), from one window per place read through GDAL (:func:`tiling.chips.read_area`).
The best-scoring point is the refined position; the scored points feed the posterior of
:mod:`tiling.confidence`.

The index records its rasters (``sources`` in ``metadata.json``, with their absolute paths); a
raster that is no longer where it was is looked for relative to the index folder and the current
folder. Without any of them refinement is skipped with a warning naming the missing files.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError

ENCODE_BATCH = 128  # fine views encoded per batch


@dataclass(frozen=True)
class RefineOptions:
    """How many distinct places are refined, and the fine grid (grid-CRS units; None: from the stride)."""

    places: int = 3
    step: float | None = None  # default stride / 4
    radius: float | None = None  # default one stride

    def grid(self, stride: float) -> tuple[float, float]:
        """(step, radius) for an index of this stride."""
        step = self.step if self.step is not None else stride / 4.0
        radius = self.radius if self.radius is not None else stride
        if not step > 0 or not radius >= 0:
            raise SaigError(f"refinement needs a positive step and a radius >= 0 (got {step:g}, {radius:g})")
        return step, radius


@dataclass
class Refinement:
    """One refined place: which candidate (index into the ranked list) it started from, the best fine point
    (grid CRS) and its score, and every scored fine point (N, 2) with its score (N,)."""

    candidate: int
    x: float
    y: float
    score: float
    points: np.ndarray
    scores: np.ndarray
    step: float


def resolve_rasters(meta: dict, index_dir: Path) -> tuple[list[Path], list[str]]:
    """The index's rasters as files found now, and the recorded ones not found (in build order)."""
    found: list[Path] = []
    missing: list[str] = []
    for entry in meta.get("sources", []):
        given = Path(entry["path"])
        tries = [Path(entry["abs_path"])] if entry.get("abs_path") else []
        tries += [given] if given.is_absolute() else [Path.cwd() / given, index_dir / given,
                                                      index_dir.parent / given, index_dir / given.name]
        hit = next((p for p in tries if p.is_file()), None)
        if hit is None:
            missing.append(str(entry.get("abs_path") or given))
        else:
            found.append(hit)
    return found, missing


class AerialViews:
    """Aerial views centred anywhere, cut from an index's rasters as its chips were (a context manager)."""

    def __init__(self, meta: dict, paths: list[Path]) -> None:
        from tiling.chips import open_sources, run_stretch

        errors: list[str] = []
        self.sources = open_sources(paths, on_error=lambda e: errors.append(str(e)))
        if not self.sources:
            raise SaigError("none of the index's rasters can be opened: " + "; ".join(errors))
        self.errors = errors
        self.crs: str = meta["crs"]
        self.chip: float = float(meta["grid"]["chip_size"])
        self.px: int = int(meta["chips"]["out_size"][0])
        self.min_valid: float = float(meta["chips"].get("min_valid", 0.5))
        if "stretch" in meta:
            self.stretch = meta["stretch"]
        else:  # an index built before the stretch was recorded: the same deterministic statistics again
            self.stretch = run_stretch(self.sources)

    def close(self) -> None:
        """Close the rasters."""
        for s in self.sources:
            s.close()

    def __enter__(self) -> AerialViews:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def grid_step(self, step: float) -> float:
        """The fine grid step actually used: ``step`` rounded to whole view pixels (at least one)."""
        gsd = self.chip / self.px
        return max(1, round(step / gsd)) * gsd

    def around(self, x: float, y: float, step: float, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views centred on the fine grid around (x, y) (grid CRS): points (N, 2), views (N, px, px, 3) uint8 and
        their valid fraction (N,). One window is read; the grid step is rounded to whole view pixels."""
        from rasterio.transform import Affine

        from tiling.chips import read_area

        gsd = self.chip / self.px
        step_px = round(self.grid_step(step) / gsd)
        n = int(round(radius / (step_px * gsd)))
        side = self.px + 2 * n * step_px
        half = side * gsd / 2
        transform = Affine(gsd, 0.0, x - half, 0.0, -gsd, y + half)
        rgb, valid = read_area(self.sources, self.crs, transform, (side, side), self.stretch)
        offsets = np.arange(-n, n + 1)
        points, views, fractions = [], [], []
        for dy in offsets:  # dy > 0: north of the centre (upper rows)
            for dx in offsets:
                r0, c0 = (n - dy) * step_px, (n + dx) * step_px
                points.append((x + dx * step_px * gsd, y + dy * step_px * gsd))
                views.append(rgb[r0:r0 + self.px, c0:c0 + self.px])
                fractions.append(valid[r0:r0 + self.px, c0:c0 + self.px].mean())
        return np.asarray(points, np.float64), np.stack(views), np.asarray(fractions)


def distinct_places(xs: np.ndarray, ys: np.ndarray, count: int, apart: float) -> list[int]:
    """Indices of the first ``count`` candidates (in rank order) at least ``apart`` from every earlier one kept."""
    kept: list[int] = []
    for i in range(len(xs)):
        if len(kept) >= count:
            break
        if all(np.hypot(xs[i] - xs[j], ys[i] - ys[j]) >= apart for j in kept):
            kept.append(i)
    return kept


def refine(views: AerialViews, encode: Callable[[np.ndarray], np.ndarray], q: np.ndarray, scale: float,
           xs: np.ndarray, ys: np.ndarray, opts: RefineOptions, stride: float) -> list[Refinement]:
    """Refine the best distinct places among candidates at (xs, ys) (grid CRS, rank order) for query ``q``
    (1, D); ``encode(views)`` gives the descriptors (N, D) of uint8 views, ``scale`` the factor applied to
    the index's scores (so fine and coarse scores compare). Fine points with too few valid pixels are
    dropped, as the index drops such chips."""
    step, radius = opts.grid(stride)
    out: list[Refinement] = []
    for i in distinct_places(xs, ys, opts.places, 2 * radius):
        points, batch, fraction = views.around(float(xs[i]), float(ys[i]), step, radius)
        keep = fraction >= views.min_valid
        if not keep.any():
            continue
        points, batch = points[keep], batch[keep]
        desc = np.concatenate([encode(batch[j:j + ENCODE_BATCH]) for j in range(0, len(batch), ENCODE_BATCH)])
        scores = (desc @ q.reshape(-1)).astype(np.float64) * scale
        best = int(np.argmax(scores))
        out.append(Refinement(i, float(points[best, 0]), float(points[best, 1]), float(scores[best]), points, scores,
                              views.grid_step(step)))
    return out


def open_views(meta: dict, index_dir: Path, warn: Callable[[str], None]) -> AerialViews | None:
    """The index's rasters opened for refinement, or None (warned) when none of them can be found or read."""
    paths, missing = resolve_rasters(meta, index_dir)
    if missing:
        warn(f"{index_dir}: raster(s) the index was built from are missing, refinement uses the others: "
             f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if paths else
             f"{index_dir}: the rasters the index was built from are not found ({', '.join(missing[:3])}); "
             "candidates are not refined")
    if not paths:
        return None
    try:
        views = AerialViews(meta, paths)
    except SaigError as e:
        warn(f"{index_dir}: {e}; candidates are not refined")
        return None
    for message in views.errors:
        warn(f"{message} (not used for refinement)")
    return views


__all__ = ["AerialViews", "RefineOptions", "Refinement", "distinct_places", "open_views", "refine",
           "resolve_rasters"]
