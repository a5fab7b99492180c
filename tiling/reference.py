"""A reference index folder opened for searching, reading only what each query needs.

:func:`open_index` gives a :class:`Reference`: the metadata, the FAISS index (inverted lists memory-mapped
when they are on disk), the exact vectors for re-ranking (read by row) and the chip manifest, which
comes in two forms (:func:`write_manifest`):

* ``chips.gpkg`` (small runs, and what QGIS opens): one GeoPackage layer, read whole when the index is
  opened;
* ``chips.parquet/`` (big indexes): GeoParquet parts of :data:`PART_ROWS` rows in faiss-id order, row
  groups of :data:`ROW_GROUP` rows, geometry = chip centre in the grid CRS. Only the row groups asked
  for are read: by id (``faiss_id // ROW_GROUP``) or by place (row groups whose ``x``/``y`` statistics,
  read once from the file footers, intersect the window). Rows are in chip-plan order (per raster,
  row-major cells), so a window touches few row groups.

:func:`query` is what ``saig locate`` asks per photo: candidates and heatmap scores that agree (the
heatmap window is scored with the same exact scores and merged into the ranking, so its maximum is
the top-1 candidate for every index kind), never decoding the whole index for one photo.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saig_core.errors import SaigError
from tiling import search

MANIFEST_GPKG, MANIFEST_PARQUET = "chips.gpkg", "chips.parquet"
PART_ROWS = 1 << 20  # rows per GeoParquet part file
ROW_GROUP = 1 << 13  # rows per row group: the unit of a read (small: a photo reads a few dozen)
ROW_GROUP_CACHE = 64  # row groups kept in memory by a reader (most recently used; ~0.5 MB each)
VERIFY_MAX_BYTES = 256 << 20  # opening an index hashes files up to this size; larger ones are size-checked
HEAT_ALL_MAX = search.FLAT_MAX  # up to this many chips a heatmap without a prior covers every chip
HEAT_NEIGHBOURHOOD = 8  # else: chips within this many strides of each top candidate
FIELDS = ("faiss_id", "chip_id", "row", "col", "x", "y", "lon", "lat")  # what locate reads per chip
INDEX_FILE, METADATA_FILE = "index.faiss", "metadata.json"


@dataclass
class Chips:
    """Rows of the manifest (numpy columns of :data:`FIELDS`), in the order asked for."""

    faiss_id: np.ndarray
    chip_id: np.ndarray
    row: np.ndarray
    col: np.ndarray
    x: np.ndarray
    y: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return int(self.faiss_id.size)

    def take(self, where: np.ndarray) -> Chips:
        """The rows at positions (or boolean mask) ``where``."""
        return Chips(*(getattr(self, f)[where] for f in FIELDS))

    @classmethod
    def from_frame(cls, df) -> Chips:
        """From a (Geo)DataFrame holding the :data:`FIELDS` columns."""
        return cls(*(df[f].to_numpy().astype(np.int64) if f in ("faiss_id", "row", "col") else df[f].to_numpy()
                     for f in FIELDS))

    @classmethod
    def concat(cls, parts: list[Chips]) -> Chips:
        """Rows of several tables, in order."""
        if not parts:
            return cls(*(np.empty(0, np.int64 if f in ("faiss_id", "row", "col") else object if f == "chip_id"
                                  else np.float64) for f in FIELDS))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def write_manifest(records: Iterable[dict], crs: str, folder: str | os.PathLike, fmt: str = "gpkg") -> list[str]:
    """Write the chip manifest into the index folder; returns the files written (relative to ``folder``).

    ``gpkg``: ``chips.gpkg`` (:func:`tiling.manifest.write_manifest`). ``parquet``:
    ``chips.parquet/part-NNNNN.parquet``, streamed part by part (memory holds one part), each written
    under a temporary name, then renamed.
    """
    from tiling.manifest import write_manifest as write_gpkg

    folder = Path(folder)
    if fmt == "gpkg":
        write_gpkg(records, crs, folder / MANIFEST_GPKG)
        return [MANIFEST_GPKG]
    if fmt != "parquet":
        raise ValueError(f"unknown manifest format {fmt!r}; choose gpkg or parquet")
    out = folder / MANIFEST_PARQUET
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    part: list[dict] = []
    first = 0
    for rec in records:
        part.append(rec)
        if len(part) == PART_ROWS:
            files.append(_write_part(out, len(files), part, first, crs))
            first, part = first + len(part), []
    if part or not files:
        files.append(_write_part(out, len(files), part, first, crs))
    return [f"{MANIFEST_PARQUET}/{name}" for name in files]


def _write_part(out: Path, number: int, records: list[dict], first: int, crs: str) -> str:
    """One GeoParquet part: the manifest columns, geometry = centre point (grid CRS), zstd, row groups."""
    import geopandas as gpd
    import pandas as pd  # no pandas-stubs in the environment
    import shapely

    from tiling.manifest import COLUMNS

    df = pd.DataFrame.from_records(records, columns=COLUMNS[1:]).drop(columns=["minx", "miny", "maxx", "maxy"])
    df.insert(0, "faiss_id", np.arange(first, first + len(df), dtype=np.int64))
    gdf = gpd.GeoDataFrame(df, geometry=shapely.points(df["x"].to_numpy(float), df["y"].to_numpy(float)), crs=crs)
    name = f"part-{number:05d}.parquet"
    tmp = out / f".{name}.tmp-{os.getpid()}"
    try:
        gdf.to_parquet(tmp, index=False, compression="zstd", row_group_size=ROW_GROUP)
        os.replace(tmp, out / name)
    finally:
        tmp.unlink(missing_ok=True)
    return name


class GpkgManifest:
    """``chips.gpkg`` read whole (small runs)."""

    def __init__(self, path: Path) -> None:
        from tiling.manifest import read_manifest

        self.path = path
        self.all = Chips.from_frame(read_manifest(path))
        self.count = len(self.all)

    def by_id(self, ids: np.ndarray) -> Chips:
        """Rows of these faiss ids (rows are in faiss-id order)."""
        return self.all.take(np.asarray(ids, np.int64))

    def in_bounds(self, bounds: tuple[float, float, float, float]) -> Chips:
        """Chips whose centre lies in ``bounds`` (minx, miny, maxx, maxy, grid CRS)."""
        a = self.all
        return a.take(np.flatnonzero((a.x >= bounds[0]) & (a.y >= bounds[1]) & (a.x <= bounds[2]) & (a.y <= bounds[3])))


class ParquetManifest:
    """``chips.parquet/`` read by row group (see the module docstring); holds the row groups' bounding boxes
    (from the file footers) and the :data:`ROW_GROUP_CACHE` most recently read row groups."""

    def __init__(self, folder: Path) -> None:
        import pyarrow.parquet as pq

        self.folder = folder
        self.parts = sorted(folder.glob("part-*.parquet"))
        if not self.parts:
            raise SaigError(f"{folder}: no part-*.parquet file")
        self._files = [pq.ParquetFile(p) for p in self.parts]
        boxes, self._where = [], []
        for k, f in enumerate(self._files):
            names = f.schema_arrow.names
            ix, iy = names.index("x"), names.index("y")
            for g in range(f.metadata.num_row_groups):
                rg = f.metadata.row_group(g)
                sx, sy = rg.column(ix).statistics, rg.column(iy).statistics
                boxes.append((sx.min, sy.min, sx.max, sy.max) if rg.num_rows else (np.inf, np.inf, -np.inf, -np.inf))
                self._where.append((k, g, rg.num_rows))
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.count = int(sum(n for _, _, n in self._where))
        self._first = np.cumsum([0] + [n for _, _, n in self._where[:-1]])  # first faiss id of each row group
        self._cache: OrderedDict[int, Chips] = OrderedDict()

    def _group(self, n: int) -> Chips:
        """Row group ``n`` (global numbering), from the cache or the file."""
        if n in self._cache:
            self._cache.move_to_end(n)
            return self._cache[n]
        k, g, _ = self._where[n]
        table = self._files[k].read_row_group(g, columns=list(FIELDS))
        chips = Chips(*(table.column(f).to_numpy(zero_copy_only=False) for f in FIELDS))
        self._cache[n] = chips
        if len(self._cache) > ROW_GROUP_CACHE:
            self._cache.popitem(last=False)
        return chips

    def by_id(self, ids: np.ndarray) -> Chips:
        """Rows of these faiss ids, reading only their row groups."""
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"{self.folder}: faiss id out of range 0..{self.count - 1}")
        group = np.searchsorted(self._first, ids, side="right") - 1  # row groups as the files hold them
        out = Chips.concat([])
        parts, order = [], []
        for n in np.unique(group):
            at = np.flatnonzero(group == n)
            chips = self._group(int(n))
            parts.append(chips.take(ids[at] - int(chips.faiss_id[0])))
            order.append(at)
        if parts:
            out = Chips.concat(parts).take(np.argsort(np.concatenate(order), kind="stable"))
        return out

    def in_bounds(self, bounds: tuple[float, float, float, float]) -> Chips:
        """Chips whose centre lies in ``bounds`` (grid CRS), reading only the row groups that can hold one."""
        b = self.boxes
        hit = np.flatnonzero((b[:, 0] <= bounds[2]) & (b[:, 2] >= bounds[0]) & (b[:, 1] <= bounds[3])
                             & (b[:, 3] >= bounds[1]))
        parts = []
        for n in hit:
            c = self._group(int(n))
            parts.append(c.take(np.flatnonzero((c.x >= bounds[0]) & (c.y >= bounds[1]) & (c.x <= bounds[2])
                                               & (c.y <= bounds[3]))))
        return Chips.concat(parts)


def read_metadata(index_dir: Path) -> dict:
    """``metadata.json`` of an index folder, checked to be one (errors name the file)."""
    from tiling.index import IndexFolderError

    meta_path = index_dir / METADATA_FILE
    if not index_dir.is_dir():
        raise IndexFolderError(f"{index_dir}: not an index folder (no such directory)", index_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise IndexFolderError(f"{meta_path}: missing; {index_dir} is not a complete index", meta_path) from None
    except ValueError as e:
        raise IndexFolderError(f"{meta_path}: not valid JSON ({e})", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != "saig-index":
        raise IndexFolderError(f"{meta_path}: not a SAIG index metadata file", meta_path)
    return meta


def verify_files(index_dir: Path, meta: dict, max_hash_bytes: int | None = VERIFY_MAX_BYTES) -> None:
    """Check every file the metadata lists: sha256 up to ``max_hash_bytes`` (None: all), else its recorded size."""
    from tiling.index import IndexFolderError, sha256_file

    sizes = meta.get("file_sizes", {})
    for name, expected in meta.get("files", {}).items():
        path = index_dir / name
        if not path.is_file():
            raise IndexFolderError(f"{path}: missing (listed in {METADATA_FILE})", path)
        size = path.stat().st_size
        if name in sizes and size != sizes[name]:
            raise IndexFolderError(f"{path}: {size} bytes, {METADATA_FILE} records {sizes[name]}: the file was "
                                   "modified or is truncated", path)
        if max_hash_bytes is not None and size > max_hash_bytes and name in sizes:
            continue  # size-checked above; `saig index info` hashes it
        got = sha256_file(path)
        if got != expected:
            raise IndexFolderError(f"{path}: checksum mismatch (expected sha256 {expected[:16]}..., got "
                                   f"{got[:16]}...): the file was modified or is corrupt", path)


class Reference:
    """An index folder opened for searching (see the module docstring); close it (or use ``with``)."""

    def __init__(self, index_dir: str | os.PathLike) -> None:
        self.dir = Path(index_dir)
        self.meta = read_metadata(self.dir)
        verify_files(self.dir, self.meta)
        self.meta["path"] = str(self.dir)
        self.crs: str = self.meta["crs"]
        self.grid: dict = self.meta["grid"]
        self.faiss = search.read_index(self.dir / INDEX_FILE)
        vectors = self.meta.get("faiss", {}).get("vectors")
        self.store = (search.VectorStore(self.dir / vectors["file"], *vectors["shape"]) if vectors else None)
        self.manifest: GpkgManifest | ParquetManifest = (
            ParquetManifest(self.dir / MANIFEST_PARQUET) if (self.dir / MANIFEST_PARQUET).is_dir()
            else GpkgManifest(self.dir / MANIFEST_GPKG))
        self.count = int(self.faiss.ntotal)
        if self.manifest.count != self.count:
            raise SaigError(f"{self.dir}: the manifest has {self.manifest.count} chips but the FAISS index "
                            f"{self.count}")

    def close(self) -> None:
        """Release the vector file."""
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, q: np.ndarray, k: int, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) of one or more queries (exact re-ranking when the index has vectors)."""
        return search.search(self.faiss, q, k, subset, store=self.store)

    def scores(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores of the queries against chips ``ids`` (the same scores the search reports)."""
        return search.scores_for(self.faiss, q, ids, store=self.store)

    def chips_by_id(self, ids: np.ndarray) -> Chips:
        """Manifest rows of these faiss ids, in that order."""
        return self.manifest.by_id(ids)

    def chips_in_window(self, bounds: tuple[float, float, float, float]) -> Chips:
        """Chips whose centre lies in ``bounds`` (minx, miny, maxx, maxy in the grid CRS)."""
        return self.manifest.in_bounds(bounds)

    def chips_within(self, lon: float, lat: float, radius_m: float) -> tuple[Chips, np.ndarray]:
        """Chips whose centre is within ``radius_m`` (geodesic, WGS 84) of (lon, lat) in EPSG:4326, and
        their distances: the grid-CRS box around the point (with a margin for the projection's scale
        error) is read, then filtered exactly."""
        from pyproj import Geod, Transformer

        x, y = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True).transform(lon, lat)
        pad = radius_m * 1.02 + float(self.grid["chip_size"])
        chips = self.chips_in_window((x - pad, y - pad, x + pad, y + pad))
        _, _, dist = Geod(ellps="WGS84").inv(np.full(len(chips), lon), np.full(len(chips), lat), chips.lon, chips.lat)
        keep = np.flatnonzero(np.asarray(dist) <= radius_m)
        return chips.take(keep), np.asarray(dist)[keep]

    def neighbourhoods(self, ids: np.ndarray, strides: int = HEAT_NEIGHBOURHOOD) -> Chips:
        """Chips within ``strides`` grid steps (square) of each chip in ``ids``: a heatmap window."""
        centre = self.chips_by_id(ids)
        step = float(self.grid["stride"]) * (strides + 0.5)
        parts = [self.chips_in_window((cx - step, cy - step, cx + step, cy + step))
                 for cx, cy in zip(centre.x, centre.y, strict=True)]
        chips = Chips.concat(parts)
        _, first = np.unique(chips.faiss_id, return_index=True)
        return chips.take(np.sort(first))


def open_index(index_dir: str | os.PathLike) -> Reference:
    """Open an index folder for searching (checks its metadata and files; errors name the file)."""
    return Reference(index_dir)


@dataclass
class QueryResult:
    """One photo's answer: candidates best first (scores, ids, their manifest rows, distances to the
    photo's position when known) and the heatmap chips with their scores (None: no heatmap)."""

    scores: np.ndarray
    ids: np.ndarray
    chips: Chips
    distance_m: np.ndarray | None
    heat_chips: Chips | None
    heat_scores: np.ndarray | None


def query(ref: Reference, q: np.ndarray, k: int, position: tuple[float, float] | None = None,
          prior_radius_m: float | None = None, heatmap: bool = False) -> QueryResult:
    """Candidates (and heatmap scores) of one query descriptor ``q`` (1, D).

    With ``prior_radius_m`` and a ``position`` (lon, lat, EPSG:4326) only chips within that radius are
    searched (exactly) and the heatmap covers them; raises SaigError when there is none. Otherwise the
    whole index is searched; the heatmap covers every chip up to :data:`HEAT_ALL_MAX` chips, else the
    neighbourhoods of the top candidates. Heatmap chips are merged into the ranking, so the heatmap's
    maximum is the top-1 candidate.
    """
    heat = None
    if prior_radius_m is not None and position is not None:
        window, _ = ref.chips_within(position[0], position[1], prior_radius_m)
        if len(window) == 0:
            raise SaigError(f"no chip of the index lies within {prior_radius_m:g} m of the photo's EXIF position "
                            f"({position[1]:.6f}, {position[0]:.6f})")
        scores, ids = ref.search(q, k, window.faiss_id)
        heat = window if heatmap else None
    else:
        scores, ids = ref.search(q, k)
        if heatmap:
            keep = ids[0] >= 0
            heat = (ref.chips_by_id(np.arange(ref.count)) if ref.count <= HEAT_ALL_MAX
                    else ref.neighbourhoods(ids[0][keep]))
    scores, ids = scores[0], ids[0]
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    heat_scores = None
    if heat is not None:
        heat_scores = ref.scores(q, heat.faiss_id)[0]
        scores, ids = _merge(scores, ids, heat_scores, heat.faiss_id, k)
    chips = ref.chips_by_id(ids)
    distance = None
    if position is not None and len(chips):
        from pyproj import Geod

        _, _, d = Geod(ellps="WGS84").inv(np.full(len(chips), position[0]), np.full(len(chips), position[1]),
                                          chips.lon, chips.lat)
        distance = np.asarray(d, np.float64)
    return QueryResult(scores, ids, chips, distance, heat, heat_scores)


def _merge(scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two scored id lists, best first, ties by id; an id in both keeps its score from ``more``
    (the heatmap's), so the heatmap and the candidates show the very same number."""
    all_ids = np.concatenate([np.asarray(more_ids, np.int64), ids])
    all_scores = np.concatenate([more_scores, scores]).astype(np.float32)
    uniq, first = np.unique(all_ids, return_index=True)
    s = all_scores[first]
    order = np.lexsort((uniq, -s))[:k]
    return s[order], uniq[order]

