"""Orthophotos to georeferenced chips: planning (geometry only) and streaming windowed reads.

Behaviour, each decision documented here and tested:

* **Grid**: chips are cells of a :class:`~tiling.grid.GridSpec` lattice; each chip is resampled to
  ``out_size`` pixels covering exactly its footprint (bilinear by default), so chip pixel
  ``(i, j)`` is centred at ``(minx + (j + .5) * gsd, maxy - (i + .5) * gsd)`` in the grid CRS.
* **Reads**: when the grid CRS is the raster's CRS, chips are read straight from the file: the
  enclosing whole-pixel window (integer-decimated, from overviews when present, for chips at least
  2x coarser than the raster), then resampled to the exact footprint by Pillow; otherwise
  GDAL warps just the chip's output pixels (``rasterio.warp.reproject`` from the file's bands, with
  a destination alpha for validity). Only the window of one chip is read
  at a time and GDAL's block cache is capped (:data:`GDAL_CACHE_MB`), so memory stays bounded
  whatever the raster size.
* **Validity**: a chip pixel is invalid when the raster's mask says so (nodata value, alpha band,
  internal mask, outside the raster) or, for rasters without any of these, when all its bands are 0
  (a black collar). Chips whose valid fraction is below ``min_valid`` (default 0.5) are skipped;
  in kept chips invalid pixels are black (0).
* **Edges**: a cell partly outside the raster is padded with invalid pixels (never shifted inward),
  so its footprint is always exactly its cell; the validity rule decides whether it is kept.
* **Overlapping rasters**: each grid cell yields at most one chip: from the first raster, in the
  order given, where it passes the validity rule. Pixels are not mosaicked across rasters.
* **Bands**: red/green/blue by colour interpretation when present, else bands 1-3; one band (grey
  or 16-bit panchromatic) is repeated to three; a palette band is expanded; alpha is a mask.
* **Bit depth**: uint8 is used as is. Any other type (uint16, int16, float) is stretched linearly to
  0..255 between the 2nd and 98th percentiles of the raster's valid pixels, computed once per raster
  from a decimated read (at most :data:`STATS_SIZE` pixels on the long side, overviews when present),
  over all bands together so colour balance is kept.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio  # rasterio ships no type information
from pyproj import CRS, Transformer
from rasterio import windows
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject
from rasterio.windows import Window

from saig_core.errors import SaigError
from tiling.grid import GridSpec, choose_grid

GDAL_CACHE_MB = 256
STATS_SIZE = 1024
MAX_CANDIDATES = 20_000_000
_WGS84 = CRS.from_epsg(4326)


class RasterError(SaigError, ValueError):
    """A raster that cannot be chipped; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.filename = str(path)


class NoChipError(SaigError, ValueError):
    """The inputs produce no valid chip at all."""


@dataclass(frozen=True)
class ChipParams:
    """How chips are cut: ground size and stride in metres, model input size, validity rule, grid."""

    chip_size_m: float
    stride_m: float
    out_size: tuple[int, int] = (256, 256)
    min_valid: float = 0.5
    grid: str = "auto"  # auto | xyz
    grid_crs: str | None = None
    zoom: int | None = None
    resampling: str = "bilinear"

    def __post_init__(self) -> None:
        if not self.chip_size_m > 0 or not self.stride_m > 0:
            raise SaigError(f"--chip-size-m and --stride-m must be positive (got {self.chip_size_m}, {self.stride_m})")
        if not 0.0 <= self.min_valid <= 1.0:
            raise SaigError(f"min_valid must be within 0..1, got {self.min_valid}")
        if self.out_size[0] != self.out_size[1]:
            raise SaigError(f"chips are square; got an aerial input size of {self.out_size}")

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict (``out_size`` as a list), as recorded with a run's output."""
        return {"chip_size_m": self.chip_size_m, "stride_m": self.stride_m, "out_size": list(self.out_size),
                "min_valid": self.min_valid, "grid": self.grid, "grid_crs": self.grid_crs, "zoom": self.zoom,
                "resampling": self.resampling}


@dataclass
class Chip:
    """One chip: identity, source window and georeferencing (every coordinate names its CRS)."""

    seq: int  # position in the run's deterministic candidate order
    chip_id: str
    source: str
    source_index: int  # position of the source raster in the run
    row: int  # grid cell row (XYZ: tile y)
    col: int  # grid cell column (XYZ: tile x)
    window: Window  # the footprint in source pixels (fractional; may reach outside the raster)
    footprint: tuple[float, float, float, float]  # minx, miny, maxx, maxy in the grid CRS
    x: float  # centre, grid CRS
    y: float
    lon: float  # centre, EPSG:4326
    lat: float
    gsd_m: float  # ground metres per chip pixel at the centre
    valid_fraction: float = 0.0


@dataclass
class SourceRaster:
    """An opened, validated raster with what is needed to read chips from it."""

    path: Path
    index: int
    crs: CRS
    bands: list[int]
    palette: np.ndarray | None
    stretch: tuple[float, float] | None
    collar_rule: bool
    pixel_size_m: float
    lonlat_bounds: tuple[float, float, float, float]
    _ds: rasterio.io.DatasetReader = field(repr=False)  # for planning and statistics (readers open their own)

    def close(self) -> None:
        """Close the planning dataset."""
        self._ds.close()


def open_source(path: str | os.PathLike, index: int = 0) -> SourceRaster:
    """Open and validate one raster, raising :class:`RasterError` with a clear reason."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(path, "no such file")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise RasterError(path, f"not a readable raster ({_short(e)})") from None
    try:
        return _validate(path, index, ds)
    except BaseException:
        ds.close()
        raise


def _validate(path: Path, index: int, ds) -> SourceRaster:
    if ds.crs is None:
        raise RasterError(path, "has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:xxxx) before chipping")
    t = ds.transform
    if t.is_identity:
        raise RasterError(path, "has no geotransform (it is not georeferenced)")
    if t.b != 0 or t.d != 0:
        raise RasterError(path, "has a rotated or sheared geotransform; warp it north-up first "
                                "(gdalwarp -t_srs <its CRS> in.tif out.tif)")
    if t.a <= 0 or t.e >= 0:
        raise RasterError(path, "is not north-up (negative pixel width or positive pixel height); warp it first")
    if ds.count == 0 or any(np.dtype(d).kind == "c" for d in ds.dtypes):
        raise RasterError(path, "has no real-valued bands")
    crs = CRS.from_user_input(ds.crs.to_wkt())
    ci = list(ds.colorinterp)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in ci for c in rgb):
        bands = [ci.index(c) + 1 for c in rgb]
    elif ds.count >= 3 and ci[:3] != [ColorInterp.alpha] * 3:
        bands = [1, 2, 3]
    else:
        bands = [1]
    palette = None
    if len(bands) == 1 and ci[0] == ColorInterp.palette:
        cmap = ds.colormap(1)
        palette = np.zeros((65536 if ds.dtypes[0] == "uint16" else 256, 3), np.uint8)
        for k, rgba in cmap.items():
            if k < len(palette):
                palette[k] = rgba[:3]
    flags = ds.mask_flag_enums[bands[0] - 1]
    collar_rule = flags == [MaskFlags.all_valid]
    to_wgs = Transformer.from_crs(crs, _WGS84, always_xy=True)
    try:
        left, bottom, right, top = ds.bounds
        lonlat = to_wgs.transform_bounds(left, bottom, right, top, densify_pts=21)
    except Exception as e:  # noqa: BLE001 - pyproj raises several kinds
        raise RasterError(path, f"its extent cannot be transformed to EPSG:4326 ({e})") from None
    if not all(math.isfinite(v) for v in lonlat):
        raise RasterError(path, "its extent cannot be transformed to EPSG:4326")
    pixel_size_m = _pixel_size_m(ds, crs)
    src = SourceRaster(path, index, crs, bands, palette, None, collar_rule, pixel_size_m, lonlat, ds)
    if np.dtype(ds.dtypes[bands[0] - 1]) != np.uint8 and palette is None:
        src.stretch = _percentile_stretch(src)
    return src


def _pixel_size_m(ds, crs: CRS) -> float:
    """Ground size of one pixel at the raster centre, metres (geodesic)."""
    from pyproj import Geod

    t = ds.transform
    cx, cy = t.c + t.a * ds.width / 2, t.f + t.e * ds.height / 2
    to_wgs = Transformer.from_crs(crs, _WGS84, always_xy=True)
    lons, lats = to_wgs.transform([cx, cx + t.a, cx], [cy, cy, cy + t.e])
    geod = Geod(ellps="WGS84")
    _, _, dx = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, dy = geod.inv(lons[0], lats[0], lons[2], lats[2])
    return float(max(dx, dy))


def _percentile_stretch(src: SourceRaster) -> tuple[float, float]:
    ds = src._ds
    scale = min(1.0, STATS_SIZE / max(ds.width, ds.height))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            data = ds.read(src.bands, out_shape=(len(src.bands), *shape), resampling=Resampling.nearest)
            mask = ds.read_masks(src.bands[0], out_shape=shape, resampling=Resampling.nearest) > 0
    except rasterio.errors.RasterioIOError as e:
        raise RasterError(src.path, f"cannot be read; the file may be truncated or corrupt ({_short(e)})") from None
    values = data[:, mask].astype(np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(values, [2.0, 98.0])
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))


def _short(e: Exception) -> str:
    return str(e).split("\n")[0][:300]


class ChipPlanner:
    """The deterministic list of candidate chips of a run (geometry only; no pixels read)."""

    def __init__(self, sources: list[SourceRaster], params: ChipParams) -> None:
        self.sources = sources
        self.params = params
        self.grid: GridSpec = choose_grid(
            [s.crs for s in sources], [s.lonlat_bounds for s in sources], params.chip_size_m, params.stride_m,
            kind=params.grid, grid_crs=params.grid_crs, zoom=params.zoom,
        )
        self.out_h, self.out_w = params.out_size
        for s in sources:
            ground = self.ground_chip_size(s.lonlat_bounds)
            if ground < s.pixel_size_m:
                raise RasterError(s.path, f"chip size {ground:.3g} m is smaller than one pixel "
                                          f"({s.pixel_size_m:.3g} m); use a larger --chip-size-m")

    def ground_chip_size(self, lonlat_bounds: tuple[float, float, float, float]) -> float:
        """Ground metres of a chip's side over these bounds (XYZ tiles shrink with the cosine of latitude)."""
        if self.grid.kind != "xyz":
            return self.grid.chip_size
        lat = (lonlat_bounds[1] + lonlat_bounds[3]) / 2
        return self.grid.chip_size * math.cos(math.radians(lat))

    def source_cells(self, src: SourceRaster) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the grid cells over a raster's extent; raises RasterError past MAX_CANDIDATES."""
        to_grid = Transformer.from_crs(src.crs, self.grid.crs, always_xy=True)
        left, bottom, right, top = src._ds.bounds
        bounds = to_grid.transform_bounds(left, bottom, right, top, densify_pts=21)
        rows, cols = self.grid.cells_in_bounds(bounds)
        if rows.size > MAX_CANDIDATES:
            raise RasterError(src.path, f"its extent holds {rows.size:,} chip cells (limit {MAX_CANDIDATES:,}): "
                                        "too large for this chip size; use a larger stride or clip the raster")
        return rows, cols

    def candidates(self, start_seq: int = 0, skip_sources: frozenset[int] = frozenset()) -> Iterator[Chip]:
        """Every candidate chip in run order (sources in order, cells row-major), from ``start_seq``."""
        seq = 0
        for src in self.sources:
            rows, cols = self.source_cells(src)
            n = rows.size
            if seq + n <= start_seq or src.index in skip_sources:
                seq += n
                continue
            first = max(0, start_seq - seq)
            rows, cols = rows[first:], cols[first:]
            seq += first
            yield from self._describe(src, rows, cols, seq)
            seq += rows.size

    def count(self) -> int:
        """How many candidate chips the run has (all sources)."""
        return sum(self.source_cells(s)[0].size for s in self.sources)

    def _describe(self, src: SourceRaster, rows: np.ndarray, cols: np.ndarray, seq0: int) -> Iterator[Chip]:
        grid = self.grid
        step = 65536
        to_wgs = Transformer.from_crs(grid.crs, _WGS84, always_xy=True)
        to_src = Transformer.from_crs(grid.crs, src.crs, always_xy=True)
        inv = ~src._ds.transform
        for i0 in range(0, rows.size, step):
            r, c = rows[i0:i0 + step], cols[i0:i0 + step]
            fp = grid.footprint(r, c)
            cx, cy = (fp[:, 0] + fp[:, 2]) / 2, (fp[:, 1] + fp[:, 3]) / 2
            lon, lat = to_wgs.transform(cx, cy)
            # source pixel window: the footprint's outline (5 points per edge) in source pixels
            t = np.linspace(0.0, 1.0, 5)
            ex = np.concatenate([fp[:, [0]] + (fp[:, [2]] - fp[:, [0]]) * t, fp[:, [2]].repeat(5, 1),
                                 fp[:, [0]] + (fp[:, [2]] - fp[:, [0]]) * t, fp[:, [0]].repeat(5, 1)], axis=1)
            ey = np.concatenate([fp[:, [3]].repeat(5, 1), fp[:, [3]] + (fp[:, [1]] - fp[:, [3]]) * t,
                                 fp[:, [1]].repeat(5, 1), fp[:, [3]] + (fp[:, [1]] - fp[:, [3]]) * t], axis=1)
            sx, sy = to_src.transform(ex, ey)
            sx, sy = np.asarray(sx), np.asarray(sy)
            pc, pr = inv.a * sx + inv.b * sy + inv.c, inv.d * sx + inv.e * sy + inv.f
            win = np.stack([pc.min(1), pr.min(1), pc.max(1) - pc.min(1), pr.max(1) - pr.min(1)], axis=1)
            cos = np.cos(np.radians(lat)) if grid.kind == "xyz" else np.ones_like(lat)
            gsd = grid.chip_size * cos / self.out_w
            for k in range(r.size):
                rr, cc = int(r[k]), int(c[k])
                chip_id = f"{grid.zoom}/{cc}/{rr}" if grid.kind == "xyz" else f"r{rr}c{cc}"
                footprint = (float(fp[k, 0]), float(fp[k, 1]), float(fp[k, 2]), float(fp[k, 3]))
                yield Chip(seq0 + i0 + k, chip_id, str(src.path), src.index, rr, cc,
                           Window(*(round(float(v), 4) for v in win[k])), footprint,
                           float(cx[k]), float(cy[k]), float(lon[k]), float(lat[k]), float(gsd[k]))


class ChipReader:
    """Reads chip pixels as (H, W, 3) uint8 arrays; one instance per thread (datasets are not shared)."""

    def __init__(self, planner: ChipPlanner) -> None:
        self.planner = planner
        self.resampling = Resampling[planner.params.resampling]
        self._stack = ExitStack()
        self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        self._views: dict[int, rasterio.io.DatasetReader] = {}

    def close(self) -> None:
        """Close every dataset this reader opened, then leave its GDAL environment."""
        self._views.clear()
        self._stack.close()

    def __enter__(self) -> ChipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _dataset(self, src: SourceRaster):
        ds = self._views.get(src.index)
        if ds is None:
            ds = self._views[src.index] = self._stack.enter_context(rasterio.open(src.path))
        return ds

    def read(self, chip: Chip) -> np.ndarray:
        """The chip's pixels (H, W, 3) uint8 and sets ``chip.valid_fraction``; raises RasterError on I/O."""
        src = self.planner.sources[chip.source_index]
        ds = self._dataset(src)
        try:
            if src.crs == self.planner.grid.crs:
                data, valid = self._read_native(src, ds, chip)
            else:
                data, valid = self._read_warped(src, ds, chip)
        except rasterio.errors.RasterioIOError as e:
            raise RasterError(src.path, f"read failed; the file may be truncated or corrupt ({_short(e)})") from None
        if src.collar_rule:
            valid &= data.any(axis=0)
        chip.valid_fraction = float(valid.mean())
        return _to_rgb8(src, data, valid)

    def _read_native(self, src: SourceRaster, ds, chip: Chip) -> tuple[np.ndarray, np.ndarray]:
        """Same CRS: read the enclosing whole-pixel window, resample the exact footprint with Pillow.

        GDAL's own resampled reads of fractional windows are an order of magnitude slower than plain
        window reads, so GDAL only does whole-pixel reads (decimated by an integer factor, which
        lets it use overviews, when the chip is at least 2x coarser than the raster); the
        fractional part is Pillow's ``resize`` with a sub-pixel ``box``. Outside pixels stay invalid.
        """
        h, w = self.planner.out_h, self.planner.out_w
        exact = windows.from_bounds(*chip.footprint, transform=ds.transform)  # fractional source pixels
        px_w, px_h = exact.width / w, exact.height / h  # source pixels per chip pixel
        j0, j1 = _inside(exact.col_off, px_w, w, ds.width)
        i0, i1 = _inside(exact.row_off, px_h, h, ds.height)
        nb = len(src.bands)
        data = np.zeros((nb, h, w), dtype=ds.dtypes[src.bands[0] - 1])
        valid = np.zeros((h, w), bool)
        if j1 <= j0 or i1 <= i0:
            return data, valid
        # the exact source region of the kept chip pixels, and the whole-pixel window enclosing it
        x0, y0 = exact.col_off + j0 * px_w, exact.row_off + i0 * px_h
        x1, y1 = exact.col_off + j1 * px_w, exact.row_off + i1 * px_h
        c0, r0 = max(0, math.floor(x0 + 1e-6)), max(0, math.floor(y0 + 1e-6))
        c1, r1 = min(ds.width, math.ceil(x1 - 1e-6)), min(ds.height, math.ceil(y1 - 1e-6))
        win = Window(c0, r0, c1 - c0, r1 - r0)
        fx, fy = max(1, int(px_w)), max(1, int(px_h))  # integer decimation lets GDAL use overviews
        rw, rh = -(-(c1 - c0) // fx), -(-(r1 - r0) // fy)
        if (rw, rh) == (c1 - c0, r1 - r0):
            raw = ds.read(src.bands, window=win)
            mask = ds.read_masks(src.bands[0], window=win)
        else:
            raw = ds.read(src.bands, window=win, out_shape=(nb, rh, rw), resampling=Resampling.average)
            mask = ds.read_masks(src.bands[0], window=win, out_shape=(rh, rw), resampling=Resampling.nearest)
        sx, sy = rw / (c1 - c0), rh / (r1 - r0)
        # (an edge chip pixel whose centre is inside may reach past the raster edge: clamp)
        box = (max(0.0, (x0 - c0) * sx), max(0.0, (y0 - r0) * sy), min(rw, (x1 - c0) * sx), min(rh, (y1 - r0) * sy))
        size = (j1 - j0, i1 - i0)
        data[:, i0:i1, j0:j1] = _resample(raw, box, size, self.resampling)
        valid[i0:i1, j0:j1] = _resample(mask[None], box, size, Resampling.nearest)[0] > 0
        return data, valid

    def _read_warped(self, src: SourceRaster, ds, chip: Chip) -> tuple[np.ndarray, np.ndarray]:
        """Another CRS: GDAL warps only this chip's output pixels; validity comes from a warped alpha."""
        h, w = self.planner.out_h, self.planner.out_w
        bands = list(src.bands)
        alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
        src_alpha = 0
        if alpha:
            bands.append(alpha[0])
            src_alpha = len(bands)
        nb = len(src.bands)
        dst = np.zeros((nb + 1, h, w), dtype=ds.dtypes[src.bands[0] - 1])
        reproject(rasterio.band(ds, bands), dst, src_alpha=src_alpha, dst_alpha=nb + 1,
                  dst_transform=from_bounds(*chip.footprint, w, h), dst_crs=self.planner.grid.crs.to_wkt(),
                  resampling=self.resampling)
        full = np.iinfo(dst.dtype).max if dst.dtype.kind in "ui" else 1.0
        return dst[:nb], dst[nb] >= full / 2


_PIL_FILTERS = {Resampling.nearest: 0, Resampling.bilinear: 2, Resampling.cubic: 3, Resampling.lanczos: 1}


def _resample(arr: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
              resampling: Resampling) -> np.ndarray:
    """(bands, h, w) -> (bands, size[1], size[0]) of the sub-pixel ``box`` (x0, y0, x1, y1), in Pillow."""
    from PIL import Image

    _, h, w = arr.shape
    if size == (w, h) and all(abs(a - b) < 1e-6 for a, b in zip(box, (0, 0, w, h), strict=True)):
        return arr
    resample = _PIL_FILTERS.get(resampling, 2)
    if arr.dtype == np.uint8 and arr.shape[0] == 3:
        img = Image.fromarray(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), "RGB")
        return np.moveaxis(np.asarray(img.resize(size, resample, box=box)), -1, 0)
    out = []
    for band in arr:
        mode = "L" if band.dtype == np.uint8 else "F"
        img = Image.fromarray(np.ascontiguousarray(band if mode == "L" else band.astype(np.float32)), mode)
        out.append(np.asarray(img.resize(size, resample, box=box)))
    return np.stack(out).astype(arr.dtype, copy=False)


def _inside(off: float, step: float, n: int, size: int) -> tuple[int, int]:
    """Output pixels [a, b) whose centres fall inside [0, size) of the read dataset."""
    a = math.ceil((0.0 - off) / step - 0.5 - 1e-9)
    b = math.floor((size - off) / step - 0.5 - 1e-9) + 1
    return max(0, a), min(n, b)


def _to_rgb8(src: SourceRaster, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if src.palette is not None:
        rgb = src.palette[np.clip(data[0], 0, len(src.palette) - 1).astype(np.intp)]
    else:
        if src.stretch is not None:
            lo, hi = src.stretch
            data = np.clip((data.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
            data = np.nan_to_num(data, nan=0.0).astype(np.uint8)
        else:
            data = data.astype(np.uint8, copy=False)
        rgb = np.repeat(data, 3, axis=0) if data.shape[0] == 1 else data
        rgb = np.moveaxis(rgb, 0, -1)
    rgb = np.ascontiguousarray(rgb)
    rgb[~valid] = 0
    return rgb


def open_sources(paths: Sequence[str | os.PathLike], on_error=None) -> list[SourceRaster]:
    """Open every raster; a bad one is passed to ``on_error(RasterError)`` (or raised when None)."""
    sources: list[SourceRaster] = []
    for p in paths:
        try:
            sources.append(open_source(p, index=len(sources)))
        except RasterError as e:
            if on_error is None:
                for s in sources:
                    s.close()
                raise
            on_error(e)
    return sources


def iter_chips(planner: ChipPlanner, reader: ChipReader, start_seq: int = 0,
               taken: set[tuple[int, int]] | None = None, skip_sources: frozenset[int] = frozenset(),
               on_skip=None, on_source_error=None) -> Iterator[tuple[Chip, np.ndarray]]:
    """Valid chips with their pixels, in run order, applying the validity and overlap rules.

    ``taken`` (cells already holding a chip) is updated in place. A read error in one raster is
    passed to ``on_source_error(RasterError, source_index)`` and that raster's remaining chips are
    dropped (or it is raised when no handler is given); ``on_skip(chip)`` sees skipped candidates.
    """
    taken = set() if taken is None else taken
    failed: set[int] = set(skip_sources)
    for chip in planner.candidates(start_seq, frozenset(skip_sources)):
        k = chip.source_index
        if k in failed:
            continue
        if (chip.row, chip.col) in taken:
            if on_skip:
                on_skip(chip)
            continue
        try:
            rgb = reader.read(chip)
        except RasterError as e:
            if on_source_error is None:
                raise
            failed.add(k)
            on_source_error(e, k)
            continue
        if chip.valid_fraction < planner.params.min_valid or chip.valid_fraction == 0.0:
            if on_skip:
                on_skip(chip)
            continue
        taken.add((chip.row, chip.col))
        yield chip, rgb
