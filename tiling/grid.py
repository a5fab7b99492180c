"""The metric chip grid: which CRS chips are cut in, and the lattice of chip cells in it.

Chips are cut on a lattice anchored at a fixed origin (the CRS origin; the top-left of the world for
XYZ), so every raster of a run (and every later run with the same parameters) shares one set of
cells: cell ``(row, col)`` has its upper-left corner at ``x = x0 + col * stride``,
``y = y0 - row * stride`` (grid CRS units, metres) and spans ``chip_size``; for XYZ, row/col are
the tile's y/x.

Grid CRS (``GridSpec.kind``):

* ``auto``: the rasters' own CRS when they all share one projected CRS in metres that is not a
  Mercator (Mercator "metres" are ground metres x 1/cos(latitude)); otherwise the UTM zone (WGS 84)
  of the centre of all rasters' extents, longitudes unwrapped across the antimeridian (a raster of
  Fiji in EPSG:3832 gets zone 60S or 1S, never 31S); extents wider than 12 degrees are refused.
* ``crs``: a CRS the user names (must be projected in metres).
* ``xyz``: web-mercator (EPSG:3857) XYZ tiles of one zoom level (mercantile). A tile's ground size is
  its EPSG:3857 size x cos(latitude of its centre); the zoom is chosen so that this ground size is
  closest to the requested chip size at the centre latitude, and chips do not overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import CRS

from saig_core.errors import SaigError

WEB_MERCATOR_EQUATOR_M = 2 * math.pi * 6378137.0
# A run whose rasters span more than this (degrees of longitude) cannot share one UTM zone sensibly.
MAX_UTM_SPAN_DEG = 12.0


class GridError(SaigError, ValueError):
    """The rasters of a run cannot be put on one metric grid (message says why)."""


@dataclass(frozen=True)
class GridSpec:
    """A chip lattice: CRS, cell size and spacing in that CRS's units (metres)."""

    crs: CRS
    chip_size: float
    stride: float
    kind: str  # "native" | "utm" | "crs" | "xyz"
    zoom: int | None = None
    origin: tuple[float, float] = (0.0, 0.0)  # upper-left corner of cell (0, 0), grid CRS

    def __post_init__(self) -> None:
        if not (self.chip_size > 0 and self.stride > 0):
            raise GridError(f"chip size and stride must be positive, got {self.chip_size} and {self.stride}")

    @property
    def crs_string(self) -> str:
        """The grid CRS as ``EPSG:<code>`` when it has one, else as WKT."""
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    def cells_in_bounds(self, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of every cell whose footprint intersects ``bounds`` (grid CRS), row-major."""
        ox, oy = self.origin
        minx, miny, maxx, maxy = bounds[0] - ox, bounds[1] - oy, bounds[2] - ox, bounds[3] - oy
        s, c = self.stride, self.chip_size
        col0 = math.floor((minx - c) / s) + 1
        col1 = math.ceil(maxx / s) - 1
        row0 = math.floor((-maxy - c) / s) + 1
        row1 = math.ceil(-miny / s) - 1
        if col1 < col0 or row1 < row0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        rr, cc = np.meshgrid(np.arange(row0, row1 + 1), np.arange(col0, col1 + 1), indexing="ij")
        return rr.ravel(), cc.ravel()

    def footprint(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 4) footprints (minx, miny, maxx, maxy) in the grid CRS."""
        minx = self.origin[0] + np.asarray(cols, np.float64) * self.stride
        maxy = self.origin[1] - np.asarray(rows, np.float64) * self.stride
        return np.stack([minx, maxy - self.chip_size, minx + self.chip_size, maxy], axis=1)


def is_metric_projected(crs: CRS) -> bool:
    """Projected, in metres, and not a normal-aspect Mercator (whose metres grow as 1/cos(latitude)).

    Transverse and oblique Mercators (UTM, Swiss LV95, ...) keep scale close to 1 and are accepted.
    """
    if not crs.is_projected:
        return False
    units = {ax.unit_name.lower() for ax in crs.axis_info}
    if not units or not units <= {"metre", "meter"}:
        return False
    method = (crs.coordinate_operation.method_name if crs.coordinate_operation else "").lower()
    return "mercator" not in method or "transverse" in method or "oblique" in method


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone containing (lon, lat) in EPSG:4326 (no Norway/Svalbard exceptions)."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def choose_grid(
    crses: list[CRS],
    lonlat_bounds: list[tuple[float, float, float, float]],
    chip_size_m: float,
    stride_m: float,
    kind: str = "auto",
    grid_crs: str | None = None,
    zoom: int | None = None,
) -> GridSpec:
    """The grid for a run over rasters with these CRSs and EPSG:4326 bounds (see module docstring)."""
    if not crses:
        raise GridError("no raster to put on a grid")
    west, east = longitude_span(lonlat_bounds)
    south = min(b[1] for b in lonlat_bounds)
    north = max(b[3] for b in lonlat_bounds)
    lon_c, lat_c = (west + east) / 2, (south + north) / 2
    if kind == "xyz":
        if zoom is None:
            ground = WEB_MERCATOR_EQUATOR_M * math.cos(math.radians(lat_c))
            zoom = int(round(math.log2(ground / chip_size_m)))
        if not 0 <= zoom <= 24:
            raise GridError(f"XYZ zoom {zoom} is outside 0..24")
        size = WEB_MERCATOR_EQUATOR_M / 2 ** zoom
        half = WEB_MERCATOR_EQUATOR_M / 2
        return GridSpec(CRS.from_epsg(3857), size, size, "xyz", zoom, origin=(-half, half))
    if grid_crs is not None:
        crs = CRS.from_user_input(grid_crs)
        if not is_metric_projected(crs):
            raise GridError(f"grid CRS {grid_crs} is not a projected CRS in metres (Mercators excluded)")
        return GridSpec(crs, chip_size_m, stride_m, "crs")
    if kind != "auto":
        raise GridError(f"unknown grid kind {kind!r}; choose auto or xyz")
    first = crses[0]
    if is_metric_projected(first) and all(c == first for c in crses[1:]):
        return GridSpec(first, chip_size_m, stride_m, "native")
    if east - west > MAX_UTM_SPAN_DEG:
        raise GridError(
            f"the rasters span {east - west:.1f} degrees of longitude ({west:.2f}..{east:.2f}): too wide for one "
            "UTM zone; index regions separately or pass --grid-crs"
        )
    return GridSpec(utm_crs((lon_c + 180.0) % 360.0 - 180.0, lat_c), chip_size_m, stride_m, "utm")


def longitude_span(lonlat_bounds: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """West and east longitudes of all extents together, unwrapped across the antimeridian.

    An extent whose west is east of its east (as ``transform_bounds`` gives for a raster crossing
    180 degrees) spans ``east + 360``; each extent is shifted by whole turns to lie nearest the first,
    so rasters on both sides of the antimeridian (Fiji, Chukotka) get a span of a few degrees, not
    ~360, and their centre falls on the right side of the Earth. ``east`` may exceed 180.
    """
    spans = []
    for w, _, e, _ in lonlat_bounds:
        spans.append((w, e + 360.0 if e < w else e))
    ref = (spans[0][0] + spans[0][1]) / 2
    shifted = []
    for w, e in spans:
        turn = round(((w + e) / 2 - ref) / 360.0) * 360.0
        shifted.append((w - turn, e - turn))
    return min(w for w, _ in shifted), max(e for _, e in shifted)
