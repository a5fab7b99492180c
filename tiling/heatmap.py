"""Similarity heatmaps: one Float32 GeoTIFF per photo on the chip grid.

One pixel per lattice step (the stride; the tile size for XYZ grids), in the grid CRS, placed so
that each pixel is centred exactly on the footprint centre of the chips of its cell: pixel
``(i, j)`` is centred at ``(cx_min + j * stride, cy_max - i * stride)``. Its value is the maximum
score of the chips centred there (several rasters' chips could share a cell; the overlap rule keeps
one, the max makes it well defined anyway). Pixels without a scored chip are nodata
(:data:`NODATA`). So the heatmap's maximum pixel is the top-1 candidate's chip.

Names (:func:`heatmap_names`): ``<photo stem>_heatmap.tif``; photos of a run that share a stem
(``a/IMG_0001.jpg`` and ``b/IMG_0001.jpg``) get their path below the photos' common folder instead,
``a__IMG_0001_heatmap.tif`` and ``b__IMG_0001_heatmap.tif`` (and the suffix too if that is still not
unique), so no heatmap overwrites another and a resumed run names them the same way. A photo group's
fused heatmap (``saig locate --group``) is ``group_<folder>_<first photo stem>.tif``
(:func:`group_heatmap_name`), checked against every other name of the run.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError

NODATA = -9999.0
MAX_PIXELS = 100_000_000


def heatmap_grid(rows: np.ndarray, cols: np.ndarray, grid: dict) -> tuple[object, int, int, int, int]:
    """(affine transform, height, width, row0, col0) of the heatmap covering these chip cells."""
    from rasterio.transform import Affine  # rasterio ships no type information

    s, c = float(grid["stride"]), float(grid["chip_size"])
    ox, oy = grid["origin"]
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    height, width = r1 - r0 + 1, c1 - c0 + 1
    if height * width > MAX_PIXELS:
        raise SaigError(f"the heatmap would have {height}x{width} pixels (limit {MAX_PIXELS:,}); the chips are too "
                        "spread out for one raster (use --prior-radius-m)")
    cx0 = ox + c0 * s + c / 2  # centre of the first column's chips, grid CRS
    cy0 = oy - r0 * s - c / 2  # centre of the first row's chips, grid CRS
    transform = Affine(s, 0.0, cx0 - s / 2, 0.0, -s, cy0 + s / 2)
    return transform, height, width, r0, c0


PHOTO_BAND = "similarity (cosine) of the photo to the chip centred on this pixel"
GROUP_BAND = "fused similarity of the photo group (mean over its photos at their offsets) for this chip"


def write_heatmap(path: str | os.PathLike, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, grid: dict,
                  crs: str, band: str = PHOTO_BAND) -> Path:
    """Write the heatmap GeoTIFF atomically (see the module docstring); ``band`` describes its values."""
    import rasterio  # rasterio ships no type information

    path = Path(path)
    transform, height, width, r0, c0 = heatmap_grid(rows, cols, grid)
    data = np.full((height, width), -np.inf, np.float32)
    np.maximum.at(data, (rows - r0, cols - c0), scores.astype(np.float32))
    data[np.isneginf(data)] = NODATA
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with rasterio.open(tmp, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
                           crs=crs, transform=transform, nodata=NODATA, compress="deflate") as dst:
            dst.write(data, 1)
            dst.set_band_description(1, band)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def heatmap_names(photos: Sequence[Path]) -> dict[str, str]:
    """A unique heatmap file name per photo of a run, keyed by the photo's resolved path (see the module docstring)."""
    real = [os.path.realpath(p) for p in photos]
    stems = Counter(Path(r).stem for r in real)
    root = os.path.commonpath([os.path.dirname(r) for r in real]) if real else ""
    names = {}
    for r in real:
        stem = Path(r).stem
        if stems[stem] > 1:
            stem = "__".join(Path(os.path.relpath(r, root)).with_suffix("").parts)
        names[r] = stem
    counts = Counter(names.values())
    return {r: (f"{n}_{Path(r).suffix.lstrip('.')}" if counts[n] > 1 else n) + "_heatmap.tif"
            for r, n in names.items()}


def group_heatmap_name(first_photo: Path, taken: set[str]) -> str:
    """The heatmap file name of a photo group whose first photo is ``first_photo``:
    ``group_<folder>_<stem>.tif``, characters other than letters, digits, ``.``, ``-`` and ``_`` made ``_``,
    with ``_2``, ``_3``... when ``taken`` (the run's photo heatmaps and earlier groups') holds it already. The name
    is added to ``taken``, so groups named in the same order get the same names (a resumed run)."""
    base = re.sub(r"[^\w.-]+", "_", f"group_{first_photo.parent.name}_{first_photo.stem}")
    name, n = f"{base}.tif", 1
    while name in taken:
        n += 1
        name = f"{base}_{n}.tif"
    taken.add(name)
    return name


class HeatmapFolder:
    """Where a run's heatmaps go: created when the first one is written; removed at the end when this run
    created it and wrote nothing into it."""

    def __init__(self, folder: Path, names: dict[str, str]) -> None:
        self.dir = folder
        self.names = names
        self._created = False

    def path_for(self, photo: Path) -> Path:
        """The heatmap path of a photo of the run (the folder is made on first use)."""
        return self.path_named(self.names[os.path.realpath(photo)])

    def path_named(self, name: str) -> Path:
        """The path of heatmap file ``name`` in the folder (made on first use)."""
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._created = True
        return self.dir / name

    def remove_if_empty(self) -> None:
        """Remove the folder if this run made it and it is empty (nothing was located)."""
        if self._created and self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()
