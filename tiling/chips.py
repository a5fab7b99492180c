"""Orthophotos to georeferenced chips: planning (geometry only) and reading, the rasters of a run as one surface.

Behaviour, each decision documented here and tested:

* **Grid**: chips are cells of a :class:`~tiling.grid.GridSpec` lattice; each chip is resampled to
  ``out_size`` pixels covering exactly its footprint (bilinear by default), so chip pixel
  ``(i, j)`` is centred at ``(minx + (j + .5) * gsd, maxy - (i + .5) * gsd)`` in the grid CRS.
* **Mosaic**: the rasters of a run are one surface. Each grid cell is a candidate once, whatever
  the number of rasters covering it (:mod:`tiling.footprint`: cells near each raster's valid data,
  row by row), and its chip is composited from every raster covering it: each raster's pixels are
  resampled to the chip and used where that raster is valid and no earlier-given raster already
  was (first given wins per pixel). A mosaic of tiles therefore gives the cells and, within
  resampling tolerance at the seams, the pixels of the raster they were cut from.
* **Reads**: rasters in the grid CRS are read straight from the file; rasters in another CRS
  through a GDAL ``WarpedVRT`` in the grid CRS (with a warped alpha for validity). A grid row of
  chips is read as one window per raster (at most :data:`SEGMENT_PX` pixels wide: a segment), so a
  block is decoded once for all the chips that touch it (GDAL's block cache, capped at
  :data:`GDAL_CACHE_MB`, keeps it for the next row); chips at least 2x coarser than the raster are
  read decimated by an integer factor (overviews when present); each chip is then resampled to its
  exact sub-pixel footprint by Pillow. :func:`iter_chips` spreads the rows over worker processes
  (every core) in bounded batches, results in run order, so memory stays bounded whatever the
  raster size.
* **Validity**: a chip pixel is invalid when no raster's mask says valid (nodata value, alpha band,
  internal mask, outside the raster) or, for rasters without any of these, when all its bands are 0
  (a black collar). Chips whose valid fraction is below ``min_valid`` (default 0.5) are skipped;
  in kept chips invalid pixels are black (0). A chip's ``source`` is the first raster that gave it
  valid pixels.
* **Edges**: a cell partly outside the rasters is padded with invalid pixels (never shifted
  inward), so its footprint is always exactly its cell; the validity rule decides whether it is kept.
* **Failures**: a raster whose window cannot be read or reprojected (a truncated file, a GDAL warp
  error) is reported once and then contributes only the chips it could be read for; the other
  rasters still fill those cells, so a failing raster leaves no hole where another has data. The
  outcome depends only on the data, not on timing, workers or resume points.
* **Bands**: red/green/blue by colour interpretation when present, else bands 1-3; one band (grey
  or 16-bit panchromatic) is repeated to three; a palette band is expanded; alpha is a mask.
* **Bit depth**: uint8 is used as is. Any other type (uint16, int16, float) is stretched linearly to
  0..255 between the 2nd and 98th percentiles of the valid pixels of all such rasters of the run
  together, one stretch per band (so adjacent tiles agree), computed once from decimated reads (at
  most :data:`STATS_SIZE` pixels per raster on the long side, fewer when there are many rasters;
  overviews when present).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio  # rasterio ships no type information
from pyproj import CRS, Transformer
from rasterio import windows
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from saig_core.errors import SaigError
from tiling.footprint import Layout, RowIndex, RowPlan, dilate, mask_shape
from tiling.grid import GridSpec, choose_grid

GDAL_CACHE_MB = 256  # GDAL's block cache in this process while planning and reading
GDAL_CACHE_BYTES = GDAL_CACHE_MB * 2 ** 20  # rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64: bytes, not MB
STATS_SIZE = 1024
SEGMENT_PX = 4096  # widest window (source pixels) read at once for a row of chips
TASK_CELLS = 320  # candidates per task handed to a worker process (fewer when SHARED_MB is short)
SHARED_MB = 512  # shared memory for the pixels of the tasks in flight
PARALLEL_MIN = 600  # fewer candidates than this are read in this process (no worker start-up)
BLOCK_CACHE = 96  # decoded blocks a reader keeps (512 px RGB: 72 MB): two block rows of a 12,000 px wide raster
MARGIN = 3  # read pixels around a segment (each side, after decimation): the resampling filter's support
_WGS84 = CRS.from_epsg(4326)
# what a GDAL read or warp raises for a bad file (WarpOperationError is a RasterioError)
READ_ERRORS = (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError)


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
    collar_rule: bool
    pixel_size_m: float
    lonlat_bounds: tuple[float, float, float, float]
    _ds: rasterio.io.DatasetReader | None = field(repr=False)  # for planning (readers open their own)

    @property
    def is_8bit(self) -> bool:
        """uint8 bands or a palette: used as they are (no contrast stretch)."""
        return self.palette is not None or np.dtype(self.dtype) == np.uint8

    @property
    def dtype(self) -> str:
        """The data type of the bands read."""
        if self._ds is None:
            return str(self.__dict__["_dtype"])
        return str(self._ds.dtypes[self.bands[0] - 1])

    def close(self) -> None:
        """Close the planning dataset."""
        if self._ds is not None:
            self._ds.close()

    def __getstate__(self) -> dict:  # sent to worker processes without the open dataset
        state = dict(self.__dict__)
        state["_dtype"] = self.dtype if self._ds is not None else state.get("_dtype")
        state["_ds"] = None
        return state


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
    try:
        to_wgs = Transformer.from_crs(crs, _WGS84, always_xy=True)
        left, bottom, right, top = ds.bounds
        lonlat = to_wgs.transform_bounds(left, bottom, right, top, densify_pts=21)
        pixel_size_m = _pixel_size_m(ds, crs)
    except Exception as e:  # noqa: BLE001 - pyproj raises several kinds (e.g. a Mars CRS: another body)
        reason = _short(e).split("proj_create_operations: ")[-1]
        raise RasterError(path, f"its CRS ({crs.name}) cannot be related to the Earth's (EPSG:4326): {reason}") \
            from None
    if not all(math.isfinite(v) for v in (*lonlat, pixel_size_m)):
        raise RasterError(path, "its extent cannot be transformed to EPSG:4326")
    return SourceRaster(path, index, crs, bands, palette, collar_rule, pixel_size_m, lonlat, ds)


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


def _band_sample(src: SourceRaster, size: int) -> list[np.ndarray]:
    """Valid values of each band from a decimated read (at most ``size`` pixels on the long side)."""
    ds = src._ds
    assert ds is not None
    scale = min(1.0, size / max(ds.width, ds.height))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            data = ds.read(src.bands, out_shape=(len(src.bands), *shape), resampling=Resampling.nearest)
            mask = ds.read_masks(src.bands[0], out_shape=shape, resampling=Resampling.nearest) > 0
    except READ_ERRORS as e:
        raise RasterError(src.path, f"cannot be read; the file may be truncated or corrupt ({_short(e)})") from None
    out = []
    for band in data:
        v = band[mask].astype(np.float64)
        out.append(v[np.isfinite(v)])
    return out


def run_stretch(sources: Sequence[SourceRaster], on_error=None) -> list[tuple[float, float]] | None:
    """One linear stretch per band (2nd..98th percentile) over the valid pixels of every raster of the run
    that is not 8-bit, so adjacent tiles agree; None when every raster is 8-bit. A raster that cannot be
    sampled is passed to ``on_error`` (or raised)."""
    wide = [s for s in sources if not s.is_8bit]
    if not wide:
        return None
    size = max(64, int(STATS_SIZE / math.sqrt(len(wide))))
    pooled: list[list[np.ndarray]] = [[] for _ in range(max(len(s.bands) for s in wide))]
    for s in wide:
        try:
            sample = _band_sample(s, size)
        except RasterError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        for b, values in enumerate(sample):
            pooled[b].append(values)
    stretch = []
    for parts in pooled:
        values = np.concatenate(parts) if parts else np.empty(0)
        if values.size == 0:
            stretch.append((0.0, 1.0))
            continue
        lo, hi = (float(v) for v in np.percentile(values, [2.0, 98.0]))
        stretch.append((lo, hi if hi > lo else lo + 1.0))
    return stretch


def _short(e: Exception) -> str:
    return str(e).split("\n")[0][:300]


def open_view(src: SourceRaster, ds, grid: GridSpec):
    """``ds`` itself when the raster is in the grid CRS, else a ``WarpedVRT`` of it in the grid CRS (bilinear;
    a warped alpha marks validity unless the raster declares nodata).

    The VRT's pixels lie on a lattice anchored at the grid origin, their size GDAL's suggested
    resolution rounded to 4 significant digits, so the warped tiles of one mosaic share one pixel
    lattice and every point of a seam belongs to exactly one of them (no gap, no double cover).
    """
    if src.crs == grid.crs:
        return ds
    from rasterio.transform import Affine
    from rasterio.warp import calculate_default_transform, transform_bounds

    dst = grid.crs.to_wkt()
    default, _, _ = calculate_default_transform(ds.crs, dst, ds.width, ds.height, *ds.bounds)
    res = float(f"{max(default.a, -default.e):.4g}")
    left, bottom, right, top = transform_bounds(ds.crs, dst, *ds.bounds, densify_pts=21)
    ox, oy = grid.origin
    x0, y0 = ox + math.floor((left - ox) / res) * res, oy + math.ceil((top - oy) / res) * res
    width, height = math.ceil((right - x0) / res), math.ceil((y0 - bottom) / res)
    has_alpha = ColorInterp.alpha in ds.colorinterp
    return WarpedVRT(ds, crs=dst, transform=Affine(res, 0.0, x0, 0.0, -res, y0), width=width, height=height,
                     resampling=Resampling.bilinear, add_alpha=ds.nodata is None and not has_alpha)


def _layout(src: SourceRaster, grid: GridSpec) -> Layout:
    """The raster's bounds on the grid and its coarse valid mask there (see :mod:`tiling.footprint`)."""
    ds = src._ds
    assert ds is not None
    view = open_view(src, ds, grid)
    left, bottom, right, top = view.bounds
    bounds = (float(left), float(bottom), float(right), float(top))
    h, w = mask_shape(bounds, min(grid.stride, grid.chip_size) / 2)
    try:
        if h * w <= view.width * view.height:
            mask = view.read_masks(src.bands[0], out_shape=(h, w), resampling=Resampling.average) > 0
            if src.collar_rule:
                data = view.read(src.bands, out_shape=(len(src.bands), h, w), resampling=Resampling.average)
                mask &= data.any(axis=0)
        else:  # a raster smaller than the mask: every pixel may hold data
            mask = np.ones((h, w), bool)
    except READ_ERRORS:  # a damaged file: every cell is a candidate, its chip reads report the damage
        mask = np.ones((h, w), bool)
    finally:
        if view is not ds:
            view.close()
    return Layout(src.index, bounds, dilate(mask), ((bounds[2] - bounds[0]) / w, (bounds[3] - bounds[1]) / h))


class ChipPlanner:
    """The deterministic plan of a run: the grid, each raster's footprint on it, the candidate cells
    row by row, and the run's contrast stretch (geometry and statistics only; no chip is read)."""

    def __init__(self, sources: list[SourceRaster], params: ChipParams, progress=None) -> None:
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
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):  # (GDAL's default cache is 5 % of the RAM)
            self.layouts = [_layout(s, self.grid) for s in sources]
        self.stretch = run_stretch(sources)
        self._progress = progress
        self._rows: RowIndex | None = None

    def ground_chip_size(self, lonlat_bounds: tuple[float, float, float, float]) -> float:
        """Ground metres of a chip's side over these bounds (XYZ tiles shrink with the cosine of latitude)."""
        if self.grid.kind != "xyz":
            return self.grid.chip_size
        lat = (lonlat_bounds[1] + lonlat_bounds[3]) / 2
        return self.grid.chip_size * math.cos(math.radians(lat))

    @property
    def row_index(self) -> RowIndex:
        """The grid rows with their candidate counts (computed on first use, with progress)."""
        if self._rows is None:
            self._rows = RowIndex(self.grid, self.layouts, self._progress)
        return self._rows

    def count(self) -> int:
        """How many candidate chips (grid cells near valid data, each once) the run has."""
        return self.row_index.total

    def rows(self, start_seq: int = 0, stop_seq: int | None = None):
        """Row plans covering candidates ``start_seq .. stop_seq`` in run order (row-major)."""
        return self.row_index.rows(start_seq, stop_seq)

    def __getstate__(self) -> dict:  # worker processes get the plan, not the progress callback
        state = dict(self.__dict__)
        state["_progress"] = None
        self.row_index  # noqa: B018 - computed once here, not again in every worker
        state["_rows"] = self._rows
        return state


@dataclass
class _Cell:
    """A chip being composited: its pixels so far and which are valid."""

    rgb: np.ndarray
    valid: np.ndarray
    source: int = -1  # first raster that gave valid pixels


class ChipReader:
    """Reads and composites the chips of grid rows; one instance per thread or process (datasets are not
    shared). ``errors`` collects the first read error of each raster."""

    def __init__(self, planner: ChipPlanner) -> None:
        self.planner = planner
        self.resampling = Resampling[planner.params.resampling]
        self._stack = ExitStack()
        self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        self._views: dict[int, object] = {}
        self.errors: dict[int, RasterError] = {}
        self._blocks: OrderedDict = OrderedDict()  # decoded blocks, most recent last (see _read_window)
        self._to_wgs = Transformer.from_crs(planner.grid.crs, _WGS84, always_xy=True)

    def close(self) -> None:
        """Close every dataset this reader opened, then leave its GDAL environment."""
        self._views.clear()
        self._stack.close()

    def __enter__(self) -> ChipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _view(self, k: int):
        view = self._views.get(k)
        if view is None:
            src = self.planner.sources[k]
            try:
                ds = self._stack.enter_context(rasterio.open(src.path))
                view = self._stack.enter_context(open_view(src, ds, self.planner.grid)) if src.crs != \
                    self.planner.grid.crs else ds
            except READ_ERRORS as e:
                raise RasterError(src.path, f"cannot be opened again ({_short(e)})") from None
            self._views[k] = view
        return view

    def read_row(self, plan: RowPlan, start_seq: int = 0, stop_seq: int | None = None,
                 ) -> tuple[list[tuple[Chip, np.ndarray]], int]:
        """The valid chips (with pixels) of one row's candidates within ``start_seq .. stop_seq``, and how
        many of those candidates were skipped (below ``min_valid``)."""
        n = plan.cols.size
        a = max(0, start_seq - plan.seq0)
        b = n if stop_seq is None else min(n, stop_seq - plan.seq0)
        if b <= a:
            return [], 0
        h, w = self.planner.out_h, self.planner.out_w
        cells = {i: _Cell(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), bool)) for i in range(a, b)}
        for k, covers in plan.cover:
            wanted = [i for i in range(a, b) if covers[i] and not cells[i].valid.all()]
            if wanted:
                self._composite(k, plan, wanted, cells)
        return self._finish(plan, cells)

    def _finish(self, plan: RowPlan, cells: dict[int, _Cell]) -> tuple[list[tuple[Chip, np.ndarray]], int]:
        grid, params = self.planner.grid, self.planner.params
        idx = np.array(sorted(cells), np.int64)
        fp = grid.footprint(np.full(idx.size, plan.row), plan.cols[idx])
        cx, cy = (fp[:, 0] + fp[:, 2]) / 2, (fp[:, 1] + fp[:, 3]) / 2
        lon, lat = self._to_wgs.transform(cx, cy)
        cos = np.cos(np.radians(lat)) if grid.kind == "xyz" else np.ones_like(cx)
        out, skipped = [], 0
        for m, i in enumerate(idx):
            cell = cells[int(i)]
            fraction = float(cell.valid.mean())
            if fraction == 0.0 or fraction < params.min_valid:
                skipped += 1
                continue
            col = int(plan.cols[i])
            src = self.planner.sources[cell.source]
            footprint = (float(fp[m, 0]), float(fp[m, 1]), float(fp[m, 2]), float(fp[m, 3]))
            chip_id = f"{grid.zoom}/{col}/{plan.row}" if grid.kind == "xyz" else f"r{plan.row}c{col}"
            chip = Chip(plan.seq0 + int(i), chip_id, str(src.path), src.index, plan.row, col,
                        self._source_window(src, footprint), footprint, float(cx[m]), float(cy[m]),
                        float(lon[m]), float(lat[m]), float(grid.chip_size * cos[m] / self.planner.out_w), fraction)
            out.append((chip, cell.rgb))
        return out, skipped

    def _source_window(self, src: SourceRaster, fp: tuple[float, float, float, float]) -> Window:
        """The footprint's bounding window in the source file's pixels (fractional)."""
        ds = self._view(src.index)
        if src.crs == self.planner.grid.crs:
            win = windows.from_bounds(*fp, transform=ds.transform)
            return Window(*(round(float(v), 4) for v in (win.col_off, win.row_off, win.width, win.height)))
        t = np.linspace(0.0, 1.0, 5)
        ex = np.concatenate([fp[0] + (fp[2] - fp[0]) * t, np.full(5, fp[2]), fp[0] + (fp[2] - fp[0]) * t,
                             np.full(5, fp[0])])
        ey = np.concatenate([np.full(5, fp[3]), fp[3] + (fp[1] - fp[3]) * t, np.full(5, fp[1]),
                             fp[3] + (fp[1] - fp[3]) * t])
        sx, sy = Transformer.from_crs(self.planner.grid.crs, src.crs, always_xy=True).transform(ex, ey)
        inv = ~ds.src_transform
        pc = inv.a * np.asarray(sx) + inv.b * np.asarray(sy) + inv.c
        pr = inv.d * np.asarray(sx) + inv.e * np.asarray(sy) + inv.f
        return Window(*(round(float(v), 4) for v in (pc.min(), pr.min(), pc.max() - pc.min(), pr.max() - pr.min())))

    def _composite(self, k: int, plan: RowPlan, wanted: list[int], cells: dict[int, _Cell]) -> None:
        """Add raster ``k``'s pixels to the wanted cells, a segment of the row at a time; a segment that fails
        is retried chip by chip, and what still fails is left to the other rasters (and reported)."""
        src = self.planner.sources[k]
        try:
            view = self._view(k)
            for segment in _segments(self._geometry(view, plan, wanted)):
                try:
                    self._read_segment(src, view, segment, cells)
                except READ_ERRORS as e:
                    self._failed(src, e)
                    for one in segment:
                        try:
                            self._read_segment(src, view, [one], cells)
                        except READ_ERRORS:
                            continue
        except RasterError as e:
            self.errors.setdefault(k, e)

    def _failed(self, src: SourceRaster, e: Exception) -> None:
        if src.index in self.errors:
            return
        what = "be reprojected to the grid CRS" if isinstance(e, rasterio.errors.WarpOperationError) else "be read"
        self.errors[src.index] = RasterError(
            src.path, f"part of it cannot {what}; the file may be truncated or corrupt ({_short(e)}); "
                      "the other rasters fill its chips")

    def _geometry(self, view, plan: RowPlan, wanted: list[int]) -> list[_Piece]:
        """Where each wanted chip lies in the view's pixels (only the chip pixels whose centres are inside)."""
        grid = self.planner.grid
        t = view.transform
        h, w = self.planner.out_h, self.planner.out_w
        px_w, px_h = grid.chip_size / t.a / w, grid.chip_size / -t.e / h
        row_off = (grid.origin[1] - plan.row * grid.stride - t.f) / t.e
        i0, i1 = _inside(row_off, px_h, h, view.height)
        pieces = []
        for i in wanted:
            col_off = (grid.origin[0] + float(plan.cols[i]) * grid.stride - t.c) / t.a
            j0, j1 = _inside(col_off, px_w, w, view.width)
            if j1 > j0 and i1 > i0:
                pieces.append(_Piece(i, j0, j1, i0, i1, col_off + j0 * px_w, row_off + i0 * px_h,
                                     col_off + j1 * px_w, row_off + i1 * px_h, px_w, px_h))
        return pieces

    def _read_segment(self, src: SourceRaster, view, segment: list[_Piece], cells: dict[int, _Cell]) -> None:
        """One window read (decimated by an integer factor for coarse chips) for a run of chips of one row."""
        first = segment[0]
        # chips 4x coarser or more are read decimated by an integer factor of at most half the ratio (GDAL
        # averages, using overviews); Pillow does the rest with its antialiasing filter
        fx, fy = max(1, int(first.px_w / 2)), max(1, int(first.px_h / 2))
        # the chips' region plus a margin for the resampling filter, so a chip's pixels do not depend on
        # which segment it was read in (nor on tasks, workers or resume points)
        mx, my = MARGIN * fx, MARGIN * fy
        # (decimation blocks anchored at pixel 0 of the raster: the same blocks whatever the segment)
        c0 = max(0, (math.floor(min(p.x0 for p in segment) + 1e-6) - mx) // fx * fx)
        c1 = min(view.width, c0 + -(-(math.ceil(max(p.x1 for p in segment) - 1e-6) + mx - c0) // fx) * fx)
        r0 = max(0, (math.floor(first.y0 + 1e-6) - my) // fy * fy)
        r1 = min(view.height, r0 + -(-(math.ceil(first.y1 - 1e-6) + my - r0) // fy) * fy)
        rw, rh = -(-(c1 - c0) // fx), -(-(r1 - r0) // fy)
        raw, mask = _read_window(src, view, Window(c0, r0, c1 - c0, r1 - r0), (rh, rw), self._blocks)
        sx, sy = rw / (c1 - c0), rh / (r1 - r0)
        hwc = np.moveaxis(raw, 0, -1) if raw.dtype == np.uint8 and raw.shape[0] == 3 else None  # a view
        for p in segment:
            bx0, bx1 = (p.x0 - c0) * sx, (p.x1 - c0) * sx
            a, b = max(0, math.floor(bx0) - 3), min(rw, math.ceil(bx1) + 3)  # the chip's part (+ filter support)
            box = (max(0.0, bx0 - a), max(0.0, (p.y0 - r0) * sy), min(b - a, bx1 - a), min(rh, (p.y1 - r0) * sy))
            # (an edge chip pixel whose centre is inside may reach past the raster edge: clamped)
            size = (p.j1 - p.j0, p.i1 - p.i0)
            if hwc is not None:  # RGB uint8: one Pillow resize, already (h, w, 3)
                crop = np.ascontiguousarray(hwc[:, a:b])
                rgb = _resize_rgb(crop, box, size, self.resampling)
                # (only a source pixel black in every band can make a chip pixel black: checked cheaply first)
                black = src.collar_rule and not (crop[..., 0] | crop[..., 1] | crop[..., 2]).min()
                valid = None if mask is None or mask[:, a:b].all() else \
                    _resample(mask[None, :, a:b], box, size, Resampling.nearest)[0] > 0
                if black:
                    lit = rgb.any(axis=-1)
                    valid = lit if valid is None else valid & lit
            else:
                data = _resample(raw[:, :, a:b], box, size, self.resampling)
                valid = np.ones(data.shape[1:], bool) if mask is None else \
                    _resample(mask[None, :, a:b], box, size, Resampling.nearest)[0] > 0
                if src.collar_rule:
                    valid &= data.any(axis=0)
                rgb = _to_rgb8(src, data, self.planner.stretch)
            _fill(cells[p.cell], p, rgb, valid, src.index)


def _fill(cell: _Cell, p: _Piece, rgb: np.ndarray, valid: np.ndarray | None, source: int) -> None:
    """Composite: the piece's valid pixels fill the cell's pixels that are not yet valid (None: all valid)."""
    region = cell.valid[p.i0:p.i1, p.j0:p.j1]
    if valid is None and not region.any():  # the common case: a whole, fresh region
        cell.rgb[p.i0:p.i1, p.j0:p.j1] = rgb
        region[...] = True
    else:
        fill = ~region if valid is None else valid & ~region
        if not fill.any():
            return
        cell.rgb[p.i0:p.i1, p.j0:p.j1][fill] = rgb[fill]
        region |= fill
    if cell.source < 0:
        cell.source = source


def _read_window(src: SourceRaster, view, win: Window, shape: tuple[int, int],
                 blocks: OrderedDict) -> tuple[np.ndarray, np.ndarray | None]:
    """(bands, h, w) data and (h, w) mask of a window, decimated to ``shape`` when smaller (GDAL average,
    overviews). Whole-resolution reads of a tiled file go block by block through ``blocks``, the
    reader's own cache of the last :data:`BLOCK_CACHE` decoded blocks (GDAL decodes a JPEG tile again on
    every request), so each block is decoded once for all the rows of chips touching it. The mask is
    None when the raster has none (every pixel valid; the collar rule decides)."""
    nb = len(src.bands)
    rh, rw = shape
    mask = None
    if (rw, rh) != (int(win.width), int(win.height)):
        raw = view.read(src.bands, window=win, out_shape=(nb, rh, rw), resampling=Resampling.average)
        if not src.collar_rule:
            mask = view.read_masks(src.bands[0], window=win, out_shape=(rh, rw), resampling=Resampling.nearest)
        return raw, mask
    bh, bw = view.block_shapes[0]
    if isinstance(view, WarpedVRT) or bw >= view.width:  # warped or striped: one read
        raw = view.read(src.bands, window=win)
        return raw, None if src.collar_rule else view.read_masks(src.bands[0], window=win)
    c0, r0, w, h = int(win.col_off), int(win.row_off), int(win.width), int(win.height)
    # pixel-interleaved (h, w, bands) underneath, as blocks are cached: chips are cut by contiguous copies
    raw = np.moveaxis(np.empty((h, w, nb), view.dtypes[src.bands[0] - 1]), -1, 0)
    mask = None if src.collar_rule else np.empty((h, w), np.uint8)
    for br in range(r0 // bh, (r0 + h - 1) // bh + 1):
        for bc in range(c0 // bw, (c0 + w - 1) // bw + 1):
            block = Window(bc * bw, br * bh, min(bw, view.width - bc * bw), min(bh, view.height - br * bh))
            ya, yb = max(r0, br * bh), min(r0 + h, br * bh + block.height)
            xa, xb = max(c0, bc * bw), min(c0 + w, bc * bw + block.width)
            part = (slice(ya - br * bh, yb - br * bh), slice(xa - bc * bw, xb - bc * bw))
            data, valid = _block(src, view, block, blocks)
            raw[:, ya - r0:yb - r0, xa - c0:xb - c0] = data[:, part[0], part[1]]
            if mask is not None and valid is not None:
                mask[ya - r0:yb - r0, xa - c0:xb - c0] = valid[part]
    return raw, mask


def _block(src: SourceRaster, view, block: Window, cache: OrderedDict) -> tuple[np.ndarray, np.ndarray | None]:
    """One decoded block (and its mask) through the reader's LRU cache."""
    key = (src.index, int(block.col_off), int(block.row_off))
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    data = np.moveaxis(np.ascontiguousarray(np.moveaxis(view.read(src.bands, window=block), 0, -1)), -1, 0)
    valid = None if src.collar_rule else view.read_masks(src.bands[0], window=block)
    cache[key] = (data, valid)
    if len(cache) > BLOCK_CACHE:
        cache.popitem(last=False)
    return data, valid


def _resize_rgb(crop: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
                resampling: Resampling) -> np.ndarray:
    """(h, w, 3) uint8 -> (size[1], size[0], 3) of the sub-pixel ``box``, in Pillow."""
    from PIL import Image

    h, w, _ = crop.shape
    if size == (w, h) and all(abs(a - b) < 1e-6 for a, b in zip(box, (0, 0, w, h), strict=True)):
        return crop
    return np.asarray(Image.fromarray(crop, "RGB").resize(size, _PIL_FILTERS.get(resampling, 2), box=box))


@dataclass
class _Piece:
    """The part of one chip a raster can give: chip pixels [i0, i1) x [j0, j1), their source region."""

    cell: int
    j0: int
    j1: int
    i0: int
    i1: int
    x0: float
    y0: float
    x1: float
    y1: float
    px_w: float
    px_h: float


def _segments(pieces: list[_Piece]) -> Iterator[list[_Piece]]:
    """Runs of neighbouring chips of a row whose source regions fit in one window of SEGMENT_PX."""
    run: list[_Piece] = []
    for p in pieces:
        if run and (p.x1 - run[0].x0 > SEGMENT_PX or p.x0 > run[-1].x1 + SEGMENT_PX / 8):
            yield run
            run = []
        run.append(p)
    if run:
        yield run


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


def _to_rgb8(src: SourceRaster, data: np.ndarray, stretch: list[tuple[float, float]] | None) -> np.ndarray:
    """(bands, h, w) source values -> (h, w, 3) uint8: palette, the run's stretch, grey repeated."""
    if src.palette is not None:
        return src.palette[np.clip(data[0], 0, len(src.palette) - 1).astype(np.intp)]
    if not src.is_8bit and stretch is not None:
        out = np.empty(data.shape, np.uint8)
        for b, band in enumerate(data):
            lo, hi = stretch[min(b, len(stretch) - 1)]
            scaled = np.clip((band.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
            out[b] = np.nan_to_num(scaled, nan=0.0).astype(np.uint8)
        data = out
    else:
        data = data.astype(np.uint8, copy=False)
    rgb = np.repeat(data, 3, axis=0) if data.shape[0] == 1 else data
    return np.ascontiguousarray(np.moveaxis(rgb, 0, -1))


def read_area(sources: Sequence[SourceRaster], crs: str, transform, shape: tuple[int, int],
              stretch: list[tuple[float, float]] | None) -> tuple[np.ndarray, np.ndarray]:
    """The rasters' mosaic resampled (bilinear) onto one pixel grid: ``transform`` (an Affine, north-up) and
    ``shape`` (h, w) in ``crs``; returns (h, w, 3) uint8 and the (h, w) validity.

    Each raster is read through a GDAL ``WarpedVRT`` onto exactly that grid (with a warped alpha unless it
    declares nodata or alpha); as for chips, the first raster given wins per pixel, a raster without any
    mask treats black as invalid, and bit depth goes through the run's ``stretch``. This is how aerial
    views at any position are cut on the fly (``tiling.refine``), not from the chip grid.
    """
    h, w = shape
    rgb = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    bounds = (transform.c, transform.f + h * transform.e, transform.c + w * transform.a, transform.f)
    west, south, east, north = Transformer.from_crs(crs, _WGS84, always_xy=True).transform_bounds(
        *bounds, densify_pts=5)
    for src in sources:
        sw, ss, se, sn = src.lonlat_bounds
        if sw <= se and west <= east and (se < west or sw > east or sn < south or ss > north):
            continue  # no overlap (the test is skipped across the antimeridian)
        ds = src._ds
        if ds is None:
            raise RasterError(src.path, "is closed")
        add_alpha = ds.nodata is None and ColorInterp.alpha not in ds.colorinterp
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), WarpedVRT(
                    ds, crs=crs, transform=transform, width=w, height=h, resampling=Resampling.bilinear,
                    add_alpha=add_alpha) as vrt:
                data = vrt.read(src.bands)
                mask = vrt.read_masks(src.bands[0]) > 0
        except READ_ERRORS as e:
            raise RasterError(src.path, f"cannot be read or reprojected here ({_short(e)})") from None
        if src.collar_rule:
            mask &= data.any(axis=0)
        take = mask & ~valid
        if take.any():
            rgb[take] = _to_rgb8(src, data, stretch)[take]
            valid |= take
        if valid.all():
            break
    return rgb, valid


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


_WORKER: ChipReader | None = None
_SLOTS: np.ndarray | None = None  # the shared pixel slots, (slots, chips per task, h, w, 3) uint8
_SHM = None


def _worker_init(planner: ChipPlanner, shm_name: str, shape: tuple[int, ...]) -> None:
    """A worker: its own reader, and the parent's shared pixel slots (chips are not pickled)."""
    from multiprocessing import shared_memory

    global _WORKER, _SLOTS, _SHM
    _WORKER = ChipReader(planner)
    _SHM = shared_memory.SharedMemory(name=shm_name)
    _SLOTS = np.ndarray(shape, np.uint8, buffer=_SHM.buf)


def _worker_task(start: int, stop: int, slot: int) -> tuple[list[Chip], int, dict[int, RasterError]]:
    """Cut candidates ``start .. stop``: pixels into the shared slot, chips (metadata) returned."""
    assert _WORKER is not None and _SLOTS is not None
    chips: list[Chip] = []
    skipped = 0
    for plan in _WORKER.planner.rows(start, stop):
        got, n = _WORKER.read_row(plan, start, stop)
        for chip, rgb in got:
            _SLOTS[slot, len(chips)] = rgb
            chips.append(chip)
        skipped += n
    errors, _WORKER.errors = _WORKER.errors, {}
    return chips, skipped, errors


def usable_cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """Worker processes for ``saig tile``: every core from 4 cores up, else 1 (this process): on 2 cores the
    parent (copying chips out, writing the manifest) and the workers compete, and benchmarks/tiling.py
    measured no gain there."""
    cores = usable_cores()
    return cores if cores >= 4 else 1


def iter_chips(planner: ChipPlanner, reader: ChipReader | None = None, start_seq: int = 0,
               stop_seq: int | None = None, on_skip=None, on_source_error=None,
               workers: int = 1) -> Iterator[tuple[Chip, np.ndarray]]:
    """Valid chips with their pixels, in run order, from candidate ``start_seq`` up to ``stop_seq``.

    ``on_skip(n)`` hears of skipped candidates; a raster's first read error goes to
    ``on_source_error(RasterError, source_index)`` (raised when no handler is given) and the other
    rasters fill its chips. ``workers`` > 1 reads in that many processes (bounded batches in flight);
    small runs are read here whatever ``workers`` says.
    """
    stop = planner.count() if stop_seq is None else min(stop_seq, planner.count())
    reported: set[int] = set()

    def handle(skipped: int, errors: dict[int, RasterError]) -> None:
        if skipped and on_skip:
            on_skip(skipped)
        for k, e in sorted(errors.items()):
            if k in reported:
                continue
            reported.add(k)
            if on_source_error is None:
                raise e
            on_source_error(e, k)

    if workers > 1 and stop - start_seq >= PARALLEL_MIN:
        yield from _iter_parallel(planner, start_seq, stop, workers, handle)
        return
    own = reader is None
    reader = reader if reader is not None else ChipReader(planner)
    try:
        for plan in planner.rows(start_seq, stop):
            chips, skipped = reader.read_row(plan, start_seq, stop)
            errors, reader.errors = reader.errors, {}
            handle(skipped, errors)
            yield from chips
    finally:
        if own:
            reader.close()


def _iter_parallel(planner: ChipPlanner, start: int, stop: int, workers: int,
                   handle) -> Iterator[tuple[Chip, np.ndarray]]:
    """Tasks over a process pool, ``workers + 2`` in flight, in order; each task's pixels come back through
    its own slot of shared memory (at most :data:`SHARED_MB` in all), so only chip metadata is pickled."""
    import multiprocessing as mp
    import threading
    from collections import deque
    from multiprocessing import shared_memory

    # fork when this process runs no other thread (saig tile): instant start; else (the index build's reading
    # thread, torch's) a fork server, whose children inherit no threads
    methods = mp.get_all_start_methods()
    method = "fork" if "fork" in methods and threading.active_count() == 1 else \
        "forkserver" if "forkserver" in methods else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["tiling.chips"])
    slots = workers + 2
    chip_bytes = planner.out_h * planner.out_w * 3
    per_task = max(8, min(TASK_CELLS, SHARED_MB * 2 ** 20 // (slots * chip_bytes)))
    shape = (slots, per_task, planner.out_h, planner.out_w, 3)
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
    try:
        pixels = np.ndarray(shape, np.uint8, buffer=shm.buf)
        bounds = iter(range(start, stop, per_task))
        with ctx.Pool(workers, initializer=_worker_init, initargs=(planner, shm.name, shape)) as pool:
            pending: deque = deque()
            for slot, a in zip(range(slots), bounds, strict=False):
                pending.append((pool.apply_async(_worker_task, (a, min(stop, a + per_task), slot)), slot))
            while pending:
                result, slot = pending.popleft()
                chips, skipped, errors = result.get()
                handle(skipped, errors)
                for k, chip in enumerate(chips):
                    yield chip, pixels[slot, k].copy()
                more = next(bounds, None)  # the slot is free again
                if more is not None:
                    pending.append((pool.apply_async(_worker_task, (more, min(stop, more + per_task), slot)), slot))
        del pixels
    finally:
        shm.close()
        shm.unlink()
