"""The chip manifest: one GeoPackage layer ``chips`` of footprint polygons in the grid CRS.

Columns: ``faiss_id`` (row in the index), ``chip_id``, ``source``, ``row``/``col`` (grid cell; XYZ:
tile y/x), ``win_col_off``/``win_row_off``/``win_width``/``win_height`` (the footprint's bounding
window in the source raster's pixels, fractional), ``x``/``y`` (centre, grid CRS), ``lon``/``lat``
(centre, EPSG:4326), ``gsd_m`` (ground metres per chip pixel), ``valid_fraction``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd  # no pandas-stubs in the environment

from tiling.chips import Chip

LAYER = "chips"
# GeoPackage 1.2: what QGIS 3.22 (GDAL 3.6) reads without a "partially supported" warning; newer
# GDALs (in the pyogrio wheel) would otherwise write 1.4.
GPKG_OPTIONS = {"VERSION": "1.2"}
BATCH_ROWS = 65_536  # rows per GeoPackage write: what memory holds while streaming a manifest
COLUMNS = ["faiss_id", "chip_id", "source", "row", "col", "win_col_off", "win_row_off", "win_width",
           "win_height", "x", "y", "lon", "lat", "gsd_m", "valid_fraction", "minx", "miny", "maxx", "maxy"]


def chip_records(chips: Iterable[Chip]) -> list[dict]:
    """Plain dict rows (JSON-serialisable) for chips; ``faiss_id`` is assigned when writing."""
    return [{
        "chip_id": c.chip_id, "source": c.source, "row": c.row, "col": c.col,
        "win_col_off": c.window.col_off, "win_row_off": c.window.row_off, "win_width": c.window.width,
        "win_height": c.window.height,
        "x": c.x, "y": c.y, "lon": c.lon, "lat": c.lat, "gsd_m": c.gsd_m, "valid_fraction": round(c.valid_fraction, 4),
        "minx": c.footprint[0], "miny": c.footprint[1], "maxx": c.footprint[2], "maxy": c.footprint[3],
    } for c in chips]


def write_manifest(records: Iterable[dict], crs: str, path: str | os.PathLike, batch: int = BATCH_ROWS) -> Path:
    """Write the ``chips`` layer atomically (temporary file in the same folder, then renamed), streamed in
    batches of ``batch`` rows so memory holds one batch whatever the chip count."""
    from pyogrio import write_dataframe

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        first = 0
        for part in _batches(records, batch):
            gdf = _frame(part, crs, first)
            if first == 0:
                write_dataframe(gdf, tmp, layer=LAYER, driver="GPKG", dataset_options=GPKG_OPTIONS)
            else:
                write_dataframe(gdf, tmp, layer=LAYER, driver="GPKG", append=True)
            first += len(part)
        if first == 0:
            write_dataframe(_frame([], crs, 0), tmp, layer=LAYER, driver="GPKG", dataset_options=GPKG_OPTIONS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    part: list[dict] = []
    for rec in records:
        part.append(rec)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _frame(records: list[dict], crs: str, first: int):
    """One batch of rows as a GeoDataFrame (footprint polygons; ``faiss_id`` from ``first``)."""
    import geopandas as gpd
    import shapely

    df = pd.DataFrame.from_records(records, columns=COLUMNS[1:])
    df.insert(0, "faiss_id", np.arange(first, first + len(df), dtype=np.int64))
    geom = shapely.box(df["minx"].to_numpy(float), df["miny"].to_numpy(float), df["maxx"].to_numpy(float),
                       df["maxy"].to_numpy(float))
    return gpd.GeoDataFrame(df.drop(columns=["minx", "miny", "maxx", "maxy"]), geometry=geom, crs=crs)


def read_manifest(path: str | os.PathLike):
    """The ``chips`` layer as a GeoDataFrame sorted by ``faiss_id``."""
    import geopandas as gpd

    gdf = gpd.read_file(path, layer=LAYER, engine="pyogrio")
    return gdf.sort_values("faiss_id").reset_index(drop=True)
